"""Formatting a lake: an embedded one in a data directory, or one on a metadata cluster.

:func:`format_lake` creates ``<data>`` (``lake.json``, ``meta/``, and by default six peer
directories ``peers/p0..p5``, or the given ``--peer`` directories / remote peers);
:func:`format_remote` writes the format record and the peer records into a metadata cluster.
Both check remote peers the same way first (:func:`_check_net_peers`: distinct, parseable,
enough for the erasure code, buckets answering, peer servers sharing our secret and holding no
other lake's shards) and claim them for the new lake only once it exists.

Imports ``meta`` (state machine, commands, the cluster client), ``chunks`` (stores) and base;
``identity`` for markers and claims.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import ssl
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import trio

from .. import wire
from ..chunks.s3store import S3Address, S3Store, is_s3_address
from ..chunks.store import OWNER_FILE, PeerUnavailable, read_owner, write_owner
from ..config import DEFAULT_PEER_WEIGHT, LakeConfig
from ..errors import LakeError, UserError
from ..meta.commands import Format, RegisterPeer
from ..meta.remote import MetaService, RemoteMeta
from ..meta.schema import PeerRecord
from ..meta.state import StateMachine
from ..private import make_private
from .identity import claim_net_peers, cluster_secret, is_lake, tls_context, write_marker

DEFAULT_PEERS = 6


def parse_net_peer(text: str) -> tuple[str, str, str]:
    """A remote peer: 'HOST:PORT[@ZONE]' (a peer server) or 's3://BUCKET[/PREFIX][?...][@ZONE]' (a
    bucket) -> (kind, address, zone)."""
    if is_s3_address(text):
        address, zone = text, ""
        head, at, tail = text.rpartition("@")
        if at and re.fullmatch(r"[A-Za-z0-9_.-]*", tail):
            address, zone = head, tail
        S3Address(address)  # a UserError names what is wrong with it
        return "s3", address, zone
    address, _, zone = text.partition("@")
    try:
        wire.parse_address(address)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return "net", address, zone


def check_s3_peers(peers: list[tuple[str, str, str]]) -> None:
    """Every bucket answers with our credentials, or one line says which and why."""
    buckets = [address for kind, address, _ in peers if kind == "s3"]
    if not buckets:
        return

    async def probe() -> None:
        for address in buckets:
            store = S3Store(-1, address)
            try:
                await store.stat()
            except PeerUnavailable as exc:
                raise UserError(f"S3 peer {exc}") from None
            finally:
                await store.aclose()
    trio.run(probe)


def _check_net_peers(net_peers: list[str], config: LakeConfig, secret: bytes | None,
                     tls_ca: Path | None) -> tuple[list[tuple[str, str, str]], ssl.SSLContext | None, str]:
    """What both formats ask of remote peers, before anything is written: -> (peers as
    (kind, address, zone), the TLS context, the new lake's id). Each peer is contacted (a dry
    claim): one line per peer that is unreachable, refuses our secret or holds another lake."""
    nets = [parse_net_peer(t) for t in net_peers]
    if len({a for _, a, _ in nets}) != len(nets):
        raise UserError("peer addresses must be distinct")
    config.validate(len(nets))
    check_s3_peers(nets)
    ssl_context = tls_context(tls_ca)
    if secret is None and any(kind == "net" for kind, _, _ in nets):
        raise UserError("a lake on peer servers needs --secret-file (the secret the peers were started with)")
    lake_id = str(uuid.uuid4())
    claim_net_peers(nets, secret or b"", lake_id, ssl_context, dry=True)
    return nets, ssl_context, lake_id


def format_lake(data_dir: Path, config: LakeConfig, peer_dirs: list[str] | None = None,
                net_peers: list[str] | None = None, secret_file: Path | None = None,
                tls_ca: Path | None = None) -> None:
    """Create an empty lake in ``data_dir`` (which must be empty or absent).

    Shards go to ``peer_dirs`` (local directories), to ``net_peers`` (peer servers,
    ``HOST:PORT[@ZONE]``), or by default to 6 directories inside the data dir. The cluster
    secret is ``secret_file`` or a new random ``<data>/secret``.
    """
    data_dir = Path(data_dir)
    if is_lake(data_dir):
        raise UserError(f"{data_dir} already holds a lake")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise UserError(f"{data_dir} is not empty; format needs an empty or new directory")
    if peer_dirs and net_peers:
        raise UserError("give either --peer directories or --net-peer addresses, not both")
    secret = None
    if secret_file is not None:
        try:
            secret = wire.load_secret(secret_file)
        except (OSError, ValueError) as exc:
            raise UserError(f"secret file {secret_file}: {exc}") from None
    if net_peers:
        nets, ssl_context, lake_id = _check_net_peers(net_peers, config, secret, tls_ca)
        _create(data_dir, config, [], nets, secret_file, tls_ca, lake_id)
        claim_net_peers(nets, secret or b"", lake_id, ssl_context)
        return
    if peer_dirs:
        dirs = [Path(p).resolve() for p in peer_dirs]
        if len(set(dirs)) != len(dirs):
            raise UserError("--peer directories must be distinct")
    else:
        dirs = [data_dir.resolve() / "peers" / f"p{i}" for i in range(max(DEFAULT_PEERS, config.ec_k + config.ec_m))]
    config.validate(len(dirs))
    _create(data_dir, config, dirs, [], secret_file, None, str(uuid.uuid4()))


def format_remote(addresses: list[str], config: LakeConfig, net_peers: list[str], secret_file: Path | None,
                  tls_ca: Path | None = None) -> None:
    """Format a lake on a metadata cluster, with peer servers ``net_peers`` (``HOST:PORT[@ZONE]``)."""
    secret = cluster_secret(secret_file)
    if not net_peers:
        raise UserError("a lake on metadata servers needs --net-peer servers or --s3-peer buckets "
                        "(shards must be reachable from every mount)")
    nets, ssl_context, lake_id = _check_net_peers(net_peers, config, secret, tls_ca)

    async def run() -> None:
        async with MetaService(addresses, secret, op_timeout=15.0) as service:
            meta = RemoteMeta(service, sessions=1)
            record = {**asdict(config), "secret_fp": wire.fingerprint(secret), "uuid": lake_id}
            try:
                await meta.apply(Format(record, time.time_ns(), os.getuid(), os.getgid()))
            except LakeError as exc:
                if exc.errno == errno.EEXIST:
                    raise UserError(f"the metadata servers {','.join(addresses)} already hold a lake") from None
                raise UserError(f"metadata servers {','.join(addresses)}: {exc}") from None
            for i, (kind, address, zone) in enumerate(nets):
                await meta.apply(RegisterPeer(PeerRecord(i, kind, address, zone, DEFAULT_PEER_WEIGHT, "up", {})))

    trio.run(run)
    claim_net_peers(nets, secret, lake_id, ssl_context)


def _create(data_dir: Path, config: LakeConfig, dirs: list[Path], nets: list[tuple[str, str, str]],
            secret_file: Path | None, tls_ca: Path | None, lake_id: str) -> None:
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    make_private(data_dir, ())  # metadata, the secret and the log: owner-only
    try:
        _format_into(data_dir, config, dirs, nets, secret_file, tls_ca, lake_id)
    except BaseException:
        if created:  # leave nothing half-formatted behind
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            shutil.rmtree(data_dir / "meta", ignore_errors=True)
        raise


def _format_into(data_dir: Path, config: LakeConfig, dirs: list[Path], nets: list[tuple[str, str, str]],
                 secret_file: Path | None, tls_ca: Path | None, lake_id: str) -> None:
    here = data_dir.resolve()
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        if any(x for x in d.iterdir() if x.name != "tmp"):
            owner = read_owner(str(d)) if (d / OWNER_FILE).exists() else None
            raise UserError(f"peer directory {d} is not empty" + (f" (it holds the shards of lake {owner})"
                                                                 if owner else ""))
        write_owner(str(d), lake_id)
    sm = StateMachine(str(data_dir / "meta"), create=True)
    try:
        now = time.time_ns()
        sm.apply(Format(asdict(config), now, os.getuid(), os.getgid()), sync=True)
        for i, d in enumerate(dirs):
            # One rule for every peer (format and 'peer add'): the default weight, so each takes an
            # equal share; 'peer weight' changes it. (Weighing by disk size gave a small disk
            # 0.001, and so nothing.)
            weight = DEFAULT_PEER_WEIGHT
            # Peers inside the data directory are recorded relative to it: a copy of the whole
            # directory is then a lake with storage of its own, not a second writer of ours.
            address = os.path.relpath(d, here) if d.is_relative_to(here) else str(d)
            sm.apply(RegisterPeer(PeerRecord(i, "dir", address, "", weight, "up", {})), sync=True)
        for i, (kind, address, zone) in enumerate(nets):
            sm.apply(RegisterPeer(PeerRecord(i, kind, address, zone, DEFAULT_PEER_WEIGHT, "up", {})), sync=True)
    finally:
        sm.close()
    write_marker(data_dir, secret_file, {"tls_ca": str(Path(tls_ca).resolve())} if tls_ca is not None else {},
                 lake_id=lake_id)
