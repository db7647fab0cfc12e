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
from ..chunks.store import LocalDirStore, PeerUnavailable
from ..config import LakeConfig
from ..errors import UserError
from ..errors import LakeError
from ..meta.client import LocalMeta
from ..meta.remote import MetaService, RemoteMeta
from ..meta.schema import ChunkRecord, PeerRecord
from ..meta.state import StateMachine

MARKER = "lake.json"
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
        if tls_ca is not None:
            try:
                wire.client_tls_context(str(tls_ca))
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise UserError(f"TLS CA file {tls_ca}: {exc}") from None
        _create(data_dir, config, [], nets, secret_file, tls_ca)
        return
    if peer_dirs:
        dirs = [Path(p).resolve() for p in peer_dirs]
        if len(set(dirs)) != len(dirs):
            raise UserError("--peer directories must be distinct")
    else:
        dirs = [data_dir.resolve() / "peers" / f"p{i}" for i in range(max(DEFAULT_PEERS, config.ec_k + config.ec_m))]
    config.validate(len(dirs))
    _create(data_dir, config, dirs, [], secret_file, None)


def _create(data_dir: Path, config: LakeConfig, dirs: list[Path], nets: list[tuple[str, str, str]],
            secret_file: Path | None, tls_ca: Path | None) -> None:
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        _format_into(data_dir, config, dirs, nets, secret_file, tls_ca)
    except BaseException:
        if created:  # leave nothing half-formatted behind
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            shutil.rmtree(data_dir / "meta", ignore_errors=True)
        raise


def _format_into(data_dir: Path, config: LakeConfig, dirs: list[Path], nets: list[tuple[str, str, str]],
                 secret_file: Path | None, tls_ca: Path | None) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        if any(x for x in d.iterdir() if x.name != "tmp"):
            raise UserError(f"peer directory {d} is not empty")
    sm = StateMachine(str(data_dir / "meta"), create=True)
    try:
        now = time.time_ns()
        sm.apply(["format", asdict(config), now, os.getuid(), os.getgid()], sync=True)
        for i, d in enumerate(dirs):
            # Placement weight follows capacity (TB of the peer's file system), so a bigger disk
            # takes proportionally more shards.
            stv = os.statvfs(d)
            weight = round(max(0.001, stv.f_blocks * stv.f_frsize / 1e12), 3)
            sm.apply(["register_peer", i, ["dir", str(d), "", weight, "up", {}]], sync=True)
        for i, (kind, address, zone) in enumerate(nets):
            sm.apply(["register_peer", i, [kind, address, zone, 1.0, "up", {}]], sync=True)
    finally:
        sm.close()
    write_marker(data_dir, secret_file, {"tls_ca": str(Path(tls_ca).resolve())} if tls_ca is not None else {})


def write_marker(data_dir: Path, secret_file: Path | None, extra: dict) -> None:
    """The lake's marker file (a new uuid), written last: a directory is a lake once it exists.
    The cluster secret is ``secret_file`` (recorded) or a new random ``<data>/secret``."""
    marker = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "uuid": str(uuid.uuid4()), **extra}
    if secret_file is not None:
        marker["secret_file"] = str(Path(secret_file).resolve())
    else:
        fd = os.open(data_dir / "secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    tmp = data_dir / (MARKER + ".tmp")
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

    async def run() -> None:
        service = MetaService(addresses, secret, op_timeout=15.0)
        meta = RemoteMeta(service, sessions=1)
        try:
            record = {**asdict(config), "secret_fp": wire.fingerprint(secret), "uuid": str(uuid.uuid4())}
            try:
                await meta.apply(["format", record, time.time_ns(), os.getuid(), os.getgid()])
            except LakeError as exc:
                if exc.errno == errno.EEXIST:
                    raise UserError(f"the metadata servers {','.join(addresses)} already hold a lake") from None
                raise UserError(f"metadata servers {','.join(addresses)}: {exc}") from None
            for i, (kind, address, zone) in enumerate(nets):
                await meta.apply(["register_peer", i, [kind, address, zone, 1.0, "up", {}]])
        finally:
            await service.aclose()

    trio.run(run)


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
                 tls_ca: str | None = None, meta=None, meta_addresses: list[str] | None = None):
        self.data_dir = data_dir
        self.sm = sm
        self.meta = meta if meta is not None else LocalMeta(sm)
        self.meta_addresses = meta_addresses
        #: Identifies the lake (chunk ids are only unique within one): names its disk cache.
        self.uuid: str | None = None
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
                stores[p.peer_id] = NetStore(p.peer_id, p.address, secret, ssl_context=ssl_context)
                continue
            try:
                stores[p.peer_id] = LocalDirStore(p.peer_id, p.address, limiter=limiter)
            except PeerUnavailable:
                pass  # a missing peer directory is a lost peer: reads go degraded
        self.chunks = ChunkClient(stores, k=config.ec_k, m=config.ec_m, min_shard=config.min_shard,
                                  zones={p.peer_id: p.zone for p in peers},
                                  weights={p.peer_id: p.weight for p in peers if p.state == "up"},
                                  threads=io_threads)
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, data_dir: Path, *, io_threads: int = 16, read_only: bool = False,
             lock: bool = False) -> "Lake":
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
            secret = _load_lake_secret(data_dir, marker)
            lake = cls(data_dir, sm, config, peers, io_threads=io_threads, secret=secret,
                       tls_ca=marker.get("tls_ca"))
        except BaseException:
            sm.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        lake._lock_fd = lock_fd
        lake.uuid = marker.get("uuid")
        return lake

    @classmethod
    def open_remote(cls, addresses: list[str], secret_file: Path, *, tls_ca: Path | None = None,
                    io_threads: int = 16, op_timeout: float = 30.0, snapshot_to: Path | None = None) -> "Lake":
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
        lake = cls(None, sm, lake_config(fmt), peers, io_threads=io_threads, secret=secret,
                   tls_ca=str(tls_ca) if tls_ca else None, meta=meta, meta_addresses=list(addresses))
        lake._snapshot_dir = Path(snapshot_to) if snapshot_to is not None else None
        lake.uuid = fmt.get("uuid") or hashlib.sha256(",".join(sorted(addresses)).encode()).hexdigest()[:32]
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

    @staticmethod
    def layout_of(rec: ChunkRecord) -> ChunkLayout:
        return ChunkLayout.from_wire(rec.to_wire())
