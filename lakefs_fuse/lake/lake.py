"""A lake on disk: open or format the data directory of an embedded lake.

Layout of a data directory::

    lake.json        marker: format name, version, uuid (the config itself lives in metadata)
    meta/            RocksDB of the metadata state machine
    peers/p0..p5     default local peer directories (``--peer DIR`` puts them elsewhere)
    lock             flock held by the one mount daemon using the lake
    mount.log        the daemon's log

This module joins ``meta`` and ``chunks``: it reads the peer records from metadata and
builds the chunk client over them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import trio

from .. import wire
from ..chunks.client import ChunkClient
from ..chunks.layout import ChunkLayout
from ..chunks.netstore import NetStore
from ..chunks.s3store import S3Address, S3Store, is_s3_address
from ..chunks.store import OWNER_FILE, ForeignLake, LocalDirStore, PeerUnavailable, read_owner, write_owner
from ..config import DEFAULT_PEER_WEIGHT, LakeConfig
from ..errors import LakeError, UserError
from ..meta.client import LocalMeta
from ..meta.remote import MetaService, RemoteMeta
from ..meta.schema import ChunkRecord, PeerRecord
from ..meta.state import StateMachine
from ..private import make_private, owner_only_umask

log = logging.getLogger(__name__)

MARKER = "lake.json"
#: Files of a data directory only its owner may read (``meta/`` is made private by StateMachine).
PRIVATE_FILES = (MARKER, "secret", "lock", "mount.log")
FORMAT_NAME = "lakefs-fuse-lake"
FORMAT_VERSION = 1
DEFAULT_PEERS = 6


def is_lake(data_dir: Path) -> bool:
    return (data_dir / MARKER).is_file()


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
    if secret_file is not None:
        try:
            wire.load_secret(secret_file)
        except (OSError, ValueError) as exc:
            raise UserError(f"secret file {secret_file}: {exc}") from None
    if net_peers:
        nets = [parse_net_peer(t) for t in net_peers]
        if len({a for _, a, _ in nets}) != len(nets):
            raise UserError("peer addresses must be distinct")
        config.validate(len(nets))
        check_s3_peers(nets)
        ssl_context = None
        if tls_ca is not None:
            try:
                ssl_context = wire.client_tls_context(str(tls_ca))
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise UserError(f"TLS CA file {tls_ca}: {exc}") from None
        lake_id = str(uuid.uuid4())
        secret = wire.load_secret(secret_file) if secret_file is not None else None
        if secret is None and any(kind == "net" for kind, _, _ in nets):
            raise UserError("a lake on peer servers needs --secret-file (the secret the peers were started with)")
        claim_net_peers(nets, secret or b"", lake_id, ssl_context, dry=True)
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


def claim_net_peers(nets: list[tuple[str, str, str]], secret: bytes, lake_id: str, ssl_context=None,
                    *, dry: bool = False) -> None:
    """Contact every peer server and bucket: reachable, sharing our secret (servers), and holding
    no other lake's shards -- or one line per peer that is not (format never writes a lake onto
    bad peers). Unless ``dry``, each peer then belongs to ``lake_id``."""
    problems = _remote_owner_problems(nets, secret, lake_id, ssl_context, dry=dry, timeout=5.0)
    if problems:
        raise UserError("\n".join(f"peer {a}: {why}" for a, why in sorted(problems.items())))


def _remote_owner_problems(nets: list[tuple[str, str, str]], secret: bytes, lake_id: str, ssl_context=None,
                           *, dry: bool, timeout: float) -> dict[str, str]:
    """address -> what is wrong, for the peer servers and buckets among ``nets``."""
    problems: dict[str, str] = {}

    async def one(kind: str, address: str) -> None:
        if kind == "net":
            store = NetStore(-1, address, secret, call_timeout=timeout, connect_timeout=timeout,
                             ssl_context=ssl_context, lake_id=lake_id)
        else:
            store = S3Store(-1, address)
        try:
            with trio.fail_after(timeout + 1):
                if kind == "net":
                    await store.claim(dry=dry)
                else:
                    await store.claim(lake_id, dry=dry)
        except ForeignLake:
            problems[address] = "holds the shards of another lake (give this lake peers of its own)"
        except PeerUnavailable as exc:
            text = str(exc)
            problems[address] = ("refused our secret (the peer was started with another --secret-file)"
                                 if "authentication" in text else text.replace(f"peer {address}: ", ""))
        except trio.TooSlowError:
            problems[address] = f"did not answer within {timeout:.0f}s"
        finally:
            await store.aclose()

    async def probe() -> None:
        async with trio.open_nursery() as nursery:
            for kind, address, _zone in nets:
                if kind in ("net", "s3"):
                    nursery.start_soon(one, kind, address)
    if any(kind in ("net", "s3") for kind, _, _ in nets):
        trio.run(probe)
    return problems


def check_remote_owners(peers: list[PeerRecord], secret: bytes | None, lake_id: str, ssl_context=None) -> None:
    """At a writable open: refuse (one line) if a peer server or bucket holds another lake's shards,
    and claim the ones nobody owns yet (lakes formatted before owners were recorded). A peer that
    does not answer now is not held against the lake (reads go degraded, writes elsewhere)."""
    nets = [(p.kind, p.address, p.zone) for p in peers if p.kind in ("net", "s3") and p.state == "up"]
    problems = _remote_owner_problems(nets, secret or b"", lake_id, ssl_context, dry=False, timeout=3.0)
    foreign = sorted(a for a, why in problems.items() if "another lake" in why)
    if foreign:
        raise UserError(f"peer {foreign[0]} holds the shards of another lake, not of this one ({lake_id})"
                        + (f"; so do {len(foreign) - 1} more" if len(foreign) > 1 else ""))
    for address, why in sorted(problems.items()):
        log.warning("peer %s: %s", address, why)


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
        sm.apply(["format", asdict(config), now, os.getuid(), os.getgid()], sync=True)
        for i, d in enumerate(dirs):
            # One rule for every peer (format and 'peer add'): the default weight, so each takes an
            # equal share; 'peer weight' changes it. (Weighing by disk size gave a small disk
            # 0.001, and so nothing.)
            weight = DEFAULT_PEER_WEIGHT
            # Peers inside the data directory are recorded relative to it: a copy of the whole
            # directory is then a lake with storage of its own, not a second writer of ours.
            address = os.path.relpath(d, here) if d.is_relative_to(here) else str(d)
            sm.apply(["register_peer", i, ["dir", address, "", weight, "up", {}]], sync=True)
        for i, (kind, address, zone) in enumerate(nets):
            sm.apply(["register_peer", i, [kind, address, zone, DEFAULT_PEER_WEIGHT, "up", {}]], sync=True)
    finally:
        sm.close()
    write_marker(data_dir, secret_file, {"tls_ca": str(Path(tls_ca).resolve())} if tls_ca is not None else {},
                 lake_id=lake_id)


def write_marker(data_dir: Path, secret_file: Path | None, extra: dict, lake_id: str | None = None) -> None:
    """The lake's marker file, written last: a directory is a lake once it exists. It holds the
    lake's identity (``uuid``, its shards' owner) and where it was made (``path``: a copy is told
    from a move by the original still being there). The cluster secret is ``secret_file``
    (recorded) or a new random ``<data>/secret``."""
    marker = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "uuid": lake_id or str(uuid.uuid4()),
              "path": str(Path(data_dir).resolve()), **extra}
    if secret_file is not None:
        marker["secret_file"] = str(Path(secret_file).resolve())
    else:
        fd = os.open(data_dir / "secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    tmp = data_dir / (MARKER + ".tmp")
    with owner_only_umask():
        tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, data_dir / MARKER)


def lake_config(fmt: dict) -> LakeConfig:
    """The LakeConfig fields of a format record (which also holds e.g. the secret's fingerprint)."""
    return LakeConfig(**{k: v for k, v in fmt.items() if k in LakeConfig.__dataclass_fields__})


def cluster_secret(secret_file: Path | None) -> bytes:
    if secret_file is None:
        raise UserError("a lake on metadata servers needs --secret-file (the cluster secret)")
    try:
        return wire.load_secret(secret_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"secret file {secret_file}: {exc}") from None


async def _fetch_remote(addresses: list[str], secret: bytes) -> tuple[dict, list[PeerRecord]]:
    service = MetaService(addresses, secret, op_timeout=15.0)
    meta = RemoteMeta(service, sessions=1)
    try:
        return await meta.format_record(), await meta.peers()
    except LakeError as exc:
        if exc.errno == errno.ENOENT:
            raise UserError(f"the metadata servers {','.join(addresses)} hold no lake yet; "
                            "run 'lakefs-fuse format --meta ...'") from None
        raise UserError(f"metadata servers {','.join(addresses)}: {exc}") from None
    finally:
        await service.aclose()


async def snapshot_remote(addresses: list[str], secret: bytes, path: Path) -> StateMachine:
    """Copy a cluster's whole metadata into a local RocksDB at ``path`` (dataset mode)."""
    from ..meta.server import MAX_PAYLOAD, ReplicatedState
    service = MetaService(addresses, secret, op_timeout=60.0, call_timeout=60.0, max_payload=MAX_PAYLOAD)
    try:
        _, body = await service.call("dump", timeout=120.0)
    except LakeError as exc:
        raise UserError(f"metadata servers {','.join(addresses)}: cannot take a snapshot: {exc}") from None
    finally:
        await service.aclose()
    state = ReplicatedState(path)  # starts empty
    state.restore(bytes(body))
    return state.sm


def format_remote(addresses: list[str], config: LakeConfig, net_peers: list[str], secret_file: Path | None,
                  tls_ca: Path | None = None) -> None:
    """Format a lake on a metadata cluster, with peer servers ``net_peers`` (``HOST:PORT[@ZONE]``)."""
    secret = cluster_secret(secret_file)
    if not net_peers:
        raise UserError("a lake on metadata servers needs --net-peer servers or --s3-peer buckets "
                        "(shards must be reachable from every mount)")
    nets = [parse_net_peer(t) for t in net_peers]
    if len({a for _, a, _ in nets}) != len(nets):
        raise UserError("peer addresses must be distinct")
    config.validate(len(nets))
    check_s3_peers(nets)
    lake_id = str(uuid.uuid4())
    ssl_context = None
    if tls_ca is not None:
        try:
            ssl_context = wire.client_tls_context(str(tls_ca))
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise UserError(f"TLS CA file {tls_ca}: {exc}") from None
    claim_net_peers(nets, secret, lake_id, ssl_context, dry=True)

    async def run() -> None:
        service = MetaService(addresses, secret, op_timeout=15.0)
        meta = RemoteMeta(service, sessions=1)
        try:
            record = {**asdict(config), "secret_fp": wire.fingerprint(secret), "uuid": lake_id}
            try:
                await meta.apply(["format", record, time.time_ns(), os.getuid(), os.getgid()])
            except LakeError as exc:
                if exc.errno == errno.EEXIST:
                    raise UserError(f"the metadata servers {','.join(addresses)} already hold a lake") from None
                raise UserError(f"metadata servers {','.join(addresses)}: {exc}") from None
            for i, (kind, address, zone) in enumerate(nets):
                await meta.apply(["register_peer", i, [kind, address, zone, DEFAULT_PEER_WEIGHT, "up", {}]])
        finally:
            await service.aclose()

    trio.run(run)
    claim_net_peers(nets, secret, lake_id, ssl_context)


def peer_root(data_dir: Path | None, address: str) -> str:
    """A local peer directory's path: recorded relative to the data directory (the default peers
    inside it) or absolute (``--peer DIR`` elsewhere)."""
    if data_dir is None or os.path.isabs(address):
        return address
    return str(Path(data_dir).resolve() / address)


def _settle_identity(data_dir: Path, marker: dict, peers: list[PeerRecord]) -> tuple[dict, dict[int, str]]:
    """Make sure this lake writes only to storage that is its own; returns the (updated) marker
    and where each local peer directory is now.

    A data directory remembers where it was made (``path``). Found elsewhere while a lake with
    the same id is still there, it is a *copy*: it takes a new id, and its peer directories
    inside it (copies too) become its own; storage outside it is the original's, so the copy
    refuses to open (one line). Found elsewhere with the original gone, it was *moved*: it keeps
    its id. Every local peer directory must belong to this lake (``lake-owner.json``); one
    that belongs to another lake is refused, an unclaimed one (a lake made before owners were
    recorded) is claimed. Peer paths recorded absolute inside the old place follow the lake.
    """
    here = data_dir.resolve()
    recorded = Path(marker["path"]) if marker.get("path") else None
    moved_from = recorded if recorded is not None and recorded != here else None
    original = None
    if moved_from is not None:
        try:
            other = json.loads((moved_from / MARKER).read_text())
        except (OSError, ValueError):
            other = None
        if other is not None and other.get("uuid") == marker.get("uuid"):
            original = moved_from
    roots: dict[int, str] = {}
    for p in peers:
        if p.kind in ("net", "s3"):
            if original is not None:
                raise UserError(f"{here} is a copy of the lake in {original} and shares its peer {p.address}: "
                                "writing here would change that lake's files; mount the original, or give "
                                "the copy storage of its own (format a new lake and copy the files in)")
            continue
        root = peer_root(data_dir, p.address)
        if moved_from is not None and Path(root).is_relative_to(moved_from):
            root = str(here / Path(root).relative_to(moved_from))  # a legacy absolute path inside the lake
        roots[p.peer_id] = root
    outside = [r for r in roots.values() if not Path(r).is_relative_to(here)]
    if original is not None and outside:
        raise UserError(f"{here} is a copy of the lake in {original} and shares its peer directory {outside[0]}: "
                        "writing here would change that lake's files; mount the original, or give the copy "
                        "storage of its own (format a new lake and copy the files in)")
    lake_id = str(uuid.uuid4()) if original is not None else marker["uuid"]
    for root in roots.values():
        if not os.path.isdir(root):
            continue  # a lost peer: reads go degraded
        try:
            owner = read_owner(root)
        except PeerUnavailable as exc:
            raise UserError(str(exc)) from None
        if owner == lake_id:
            continue
        if owner is not None and not (original is not None and owner == marker["uuid"]):
            raise UserError(f"peer directory {root} holds the shards of another lake ({owner}); "
                            f"this lake is {lake_id}")
        write_owner(root, lake_id)
    if original is not None or moved_from is not None or recorded is None:
        if original is not None:
            log.warning("%s is a copy of the lake in %s: it is a lake of its own now (id %s)",
                        here, original, lake_id)
        marker = {**marker, "uuid": lake_id, "path": str(here)}
        tmp = data_dir / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1) + "\n")
        os.replace(tmp, data_dir / MARKER)
    return marker, roots


def _take_lock(data_dir: Path) -> int:
    """The lake's exclusive lock: one mount daemon per embedded lake."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{data_dir} is already mounted by another lakefs-fuse process") from None
    return fd


def _load_lake_secret(data_dir: Path, marker: dict) -> bytes | None:
    path = Path(marker["secret_file"]) if marker.get("secret_file") else data_dir / "secret"
    if not path.exists():
        return None
    try:
        return wire.load_secret(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cluster secret {path}: {exc}") from None


def in_use(data_dir: Path) -> bool:
    """Does a running daemon hold the lake's lock?"""
    try:
        fd = os.open(Path(data_dir) / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class Lake:
    """An opened lake: metadata (embedded, or a cluster of metadata servers), chunk client, config.

    ``sm`` is the local state machine of an embedded lake (None in a cluster); ``meta`` is the
    :class:`~lakefs_fuse.meta.client.MetaClient` every layer uses either way.
    """

    def __init__(self, data_dir: Path | None, sm: StateMachine | None, config: LakeConfig,
                 peers: list[PeerRecord], *, io_threads: int = 16, secret: bytes | None = None,
                 tls_ca: str | None = None, meta=None, meta_addresses: list[str] | None = None,
                 lake_id: str | None = None, peer_roots: dict[int, str] | None = None):
        self.data_dir = data_dir
        self.sm = sm
        self.meta = meta if meta is not None else LocalMeta(sm)
        self.meta_addresses = meta_addresses
        #: Identifies the lake (chunk ids are only unique within one): names its disk cache and
        #: owns its peers' shards.
        self.uuid: str | None = lake_id
        self.config = config
        self.peer_records = peers
        self.secret = secret
        ssl_context = None
        if tls_ca:
            try:
                ssl_context = wire.client_tls_context(tls_ca)
            except (OSError, ValueError) as exc:
                raise UserError(f"TLS CA file {tls_ca}: {exc}") from None
        self.tls_context = ssl_context
        stores = {}
        limiter = trio.CapacityLimiter(io_threads)  # local shard I/O threads, shared by all peers
        for p in peers:
            if p.kind == "s3":
                stores[p.peer_id] = S3Store(p.peer_id, p.address)
                continue
            if p.kind == "net":
                if secret is None:
                    raise UserError(f"{data_dir or 'the lake'}: the lake has network peers but no cluster secret")
                stores[p.peer_id] = NetStore(p.peer_id, p.address, secret, ssl_context=ssl_context,
                                             lake_id=lake_id)
                continue
            try:
                root = (peer_roots or {}).get(p.peer_id) or peer_root(data_dir, p.address)
                stores[p.peer_id] = LocalDirStore(p.peer_id, root, limiter=limiter)
            except PeerUnavailable:
                pass  # a missing peer directory is a lost peer: reads go degraded
        self.chunks = ChunkClient(stores, k=config.ec_k, m=config.ec_m, min_shard=config.min_shard,
                                  zones={p.peer_id: p.zone for p in peers},
                                  weights={p.peer_id: p.weight for p in peers if p.state == "up"},
                                  threads=io_threads)
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, data_dir: Path, *, io_threads: int = 16, read_only: bool = False,
             lock: bool = False) -> Lake:
        """Open a lake; ``lock`` takes its exclusive lock first (the mount daemon does)."""
        data_dir = Path(data_dir)
        if not data_dir.exists():
            raise UserError(f"{data_dir} does not exist")
        if not is_lake(data_dir):
            raise UserError(f"{data_dir} is not a lakefs-fuse lake (no {MARKER}; run 'lakefs-fuse format')")
        try:
            marker = json.loads((data_dir / MARKER).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{data_dir}/{MARKER} is unreadable: {exc}") from None
        if marker.get("format") != FORMAT_NAME or marker.get("version") != FORMAT_VERSION:
            raise UserError(f"{data_dir} holds an unsupported lake format {marker.get('format')} "
                            f"v{marker.get('version')}")
        make_private(data_dir, PRIVATE_FILES)  # a lake made before they were owner-only
        lock_fd = _take_lock(data_dir) if lock else None
        try:
            sm = StateMachine(str(data_dir / "meta"), read_only=read_only)
        except Exception as exc:  # rocksdict raises plain Exception for corrupt/locked DBs
            if lock_fd is not None:
                os.close(lock_fd)
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "lock" in msg.lower():
                raise UserError(f"{data_dir} is in use by another process ({msg})") from None
            raise UserError(f"{data_dir}: metadata cannot be opened: {msg}") from None
        try:
            config = lake_config(sm.format_record())
            peers = sm.peers()
        except Exception as exc:
            sm.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise UserError(f"{data_dir}: metadata is corrupt or not formatted: {exc}") from None
        try:
            roots: dict[int, str] = {}
            if not read_only:
                marker, roots = _settle_identity(data_dir, marker, peers)
            secret = _load_lake_secret(data_dir, marker)
            lake = cls(data_dir, sm, config, peers, io_threads=io_threads, secret=secret,
                       tls_ca=marker.get("tls_ca"), lake_id=marker.get("uuid"), peer_roots=roots)
        except BaseException:
            sm.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        lake._lock_fd = lock_fd
        return lake

    @classmethod
    def open_remote(cls, addresses: list[str], secret_file: Path, *, tls_ca: Path | None = None,
                    io_threads: int = 16, op_timeout: float = 30.0, snapshot_to: Path | None = None) -> Lake:
        """Open a lake whose metadata lives on metadata servers (``--meta``).

        With ``snapshot_to`` (dataset mode) the whole metadata is copied there once and read
        locally from then on; the lake is then read-only and does not see later changes.
        """
        secret = cluster_secret(secret_file)
        fmt, peers = trio.run(_fetch_remote, addresses, secret)
        fp = fmt.get("secret_fp")
        if fp and fp != wire.fingerprint(secret):
            raise UserError(f"{secret_file} is not this lake's cluster secret (fingerprint {fp})")
        sm = None
        if snapshot_to is not None:
            sm = trio.run(snapshot_remote, addresses, secret, Path(snapshot_to))
        meta = LocalMeta(sm) if sm is not None else RemoteMeta(MetaService(addresses, secret, op_timeout=op_timeout))
        lake_id = fmt.get("uuid") or hashlib.sha256(",".join(sorted(addresses)).encode()).hexdigest()[:32]
        lake = cls(None, sm, lake_config(fmt), peers, io_threads=io_threads, secret=secret,
                   tls_ca=str(tls_ca) if tls_ca else None, meta=meta, meta_addresses=list(addresses),
                   lake_id=lake_id)
        lake._snapshot_dir = Path(snapshot_to) if snapshot_to is not None else None
        return lake

    def close(self) -> None:
        if self.sm is None:
            return
        self.sm.close()
        self.sm = None
        if getattr(self, "_snapshot_dir", None) is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_remote_owners(self) -> None:
        """See :func:`check_remote_owners` (the mount calls this before it goes live)."""
        if self.uuid is not None:
            check_remote_owners(self.peer_records, self.secret, self.uuid, self.tls_context)

    def peer_address(self, p: PeerRecord) -> str:
        """Where a peer is, for people: a local peer directory's full path (records keep the
        default ones relative to the data directory), else its recorded address."""
        if p.kind != "dir":
            return p.address
        store = self.chunks.stores.get(p.peer_id)
        return getattr(store, "root", None) or peer_root(self.data_dir, p.address)

    @staticmethod
    def layout_of(rec: ChunkRecord) -> ChunkLayout:
        return ChunkLayout.from_wire(rec.to_wire())

    async def refresh_peers(self) -> bool:
        """Follow ``peer add/remove/weight`` made while this lake is open (a cluster lake's peer
        records live in the replicated metadata): a new peer server or bucket gets a store, and
        weights and states decide where new shards go from now on. Returns whether anything
        changed. (An embedded lake's peers change only while it is unmounted.)"""
        records = await self.meta.peers()
        if records == self.peer_records:
            return False
        added = {}
        for p in records:
            if p.peer_id in self.chunks.stores:
                continue
            if p.kind == "s3":
                added[p.peer_id] = S3Store(p.peer_id, p.address)
            elif p.kind == "net" and self.secret is not None:
                added[p.peer_id] = NetStore(p.peer_id, p.address, self.secret, ssl_context=self.tls_context,
                                            lake_id=self.uuid)
            else:
                log.warning("peer %d (%s %s) was added while the lake is open; a remount uses it",
                            p.peer_id, p.kind, p.address)
        old = {p.peer_id: p for p in self.peer_records}
        for p in records:
            if old.get(p.peer_id) != p:
                log.info("peer %d (%s) is now %s, weight %s", p.peer_id, p.address, p.state, p.weight)
        self.chunks.set_peers(added, zones={p.peer_id: p.zone for p in records},
                              weights={p.peer_id: p.weight for p in records if p.state == "up"})
        self.peer_records = records
        return True
