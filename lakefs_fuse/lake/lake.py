"""An opened lake: metadata (embedded, or a metadata cluster) and the chunk client, joined.

Layout of an embedded lake's data directory::

    lake.json        marker: format name, version, uuid (the config itself lives in metadata)
    meta/            RocksDB of the metadata state machine
    peers/p0..p5     default local peer directories (``--peer DIR`` puts them elsewhere)
    lock             flock held by the one mount daemon using the lake
    mount.log        the daemon's log

This module joins ``meta`` and ``chunks``: it reads the peer records from metadata and builds the
chunk client over them. :meth:`Lake.open` opens a data directory; ``async with Lake.connect(...)``
a lake on metadata servers. ``async with lake`` (or ``lake.closing()``) owns the lake's network
connections and its stores' probes for a block, in the trio run of the entry point that uses the
lake (``Lake.connect`` does it for its own lake). Formatting lives in ``format.py``, the marker and
whose storage the lake may write in ``identity.py``; their public names are re-exported here for
older imports.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from .. import rpc, wire
from ..chunks.client import ChunkClient
from ..chunks.layout import ChunkLayout
from ..chunks.netstore import NetStore
from ..chunks.s3store import S3Store
from ..chunks.store import LocalDirStore, PeerUnavailable, ShardStore
from ..config import IO_THREADS, META_TIMEOUT, LakeConfig
from ..errors import InUse, LakeError, NoSuchLake, UserError
from ..meta.client import LocalMeta
from ..meta.remote import MetaService, RemoteMeta
from ..meta.schema import ChunkRecord, PeerRecord
from ..meta.state import StateMachine
from ..private import make_private
from .format import DEFAULT_PEERS, format_lake, format_remote, parse_net_peer
from .identity import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MARKER,
    check_remote_owners,
    cluster_secret,
    is_lake,
    peer_root,
    settle_identity,
    tls_context,
    write_marker,
)
from .records import layout_of

#: Older imports (``from lakefs_fuse.lake.lake import format_lake, ...``) keep working.
__all__ = ["DEFAULT_PEERS", "FORMAT_NAME", "FORMAT_VERSION", "MARKER", "PRIVATE_FILES", "Lake", "check_remote_owners",
           "cluster_secret", "format_lake", "format_remote", "in_use", "is_lake", "lake_config", "parse_net_peer",
           "peer_root", "snapshot_remote", "write_marker"]

log = logging.getLogger(__name__)

#: Files of a data directory only its owner may read (``meta/`` is made private by StateMachine).
PRIVATE_FILES = (MARKER, "secret", "lock", "mount.log")


def lake_config(fmt: dict) -> LakeConfig:
    """The LakeConfig fields of a format record (which also holds e.g. the secret's fingerprint)."""
    return LakeConfig(**{k: v for k, v in fmt.items() if k in LakeConfig.__dataclass_fields__})




def _check_secret(fmt: dict, secret_file: Path | None, secret: bytes) -> None:
    """A UserError when ``secret`` is not the cluster's (as its format record says)."""
    fp = fmt.get("secret_fp")
    if fp and fp != wire.fingerprint(secret):
        raise UserError(f"{secret_file} is not this lake's cluster secret (fingerprint {fp})")


async def _fetch_remote(addresses: list[str], secret: bytes) -> tuple[dict, list[PeerRecord]]:
    async with MetaService(addresses, secret, op_timeout=15.0) as service:
        meta = RemoteMeta(service, sessions=1)
        try:
            return await meta.format_record(), await meta.peers()
        except LakeError as exc:
            if exc.errno == errno.ENOENT:
                raise UserError(f"the metadata servers {','.join(addresses)} hold no lake yet; "
                                "run 'lakefs-fuse format --meta ...'") from None
            raise UserError(f"metadata servers {','.join(addresses)}: {exc}") from None


async def snapshot_remote(addresses: list[str], secret: bytes, path: Path) -> StateMachine:
    """Copy a cluster's whole metadata into a local RocksDB at ``path`` (dataset mode)."""
    from ..meta.replica import MAX_PAYLOAD, ReplicatedState
    async with MetaService(addresses, secret, op_timeout=60.0, call_timeout=60.0,
                           max_payload=MAX_PAYLOAD) as service:
        try:
            _, body = await service.call("dump", timeout=120.0)
        except LakeError as exc:
            raise UserError(f"metadata servers {','.join(addresses)}: cannot take a snapshot: {exc}") from None
    state = ReplicatedState(path)  # starts empty
    state.restore(bytes(body))
    return state.sm








def _take_lock(data_dir: Path) -> int:
    """The lake's exclusive lock: one mount daemon per embedded lake."""
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InUse(f"{data_dir} is already mounted by another lakefs-fuse process") from None
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
                 peers: list[PeerRecord], *, io_threads: int = IO_THREADS, secret: bytes | None = None,
                 tls_ca: str | None = None, meta=None, meta_addresses: list[str] | None = None,
                 lake_id: str | None = None, peer_roots: dict[int, str] | None = None):
        self.data_dir = data_dir
        self.sm = sm
        if meta is None:
            assert sm is not None, "a lake has metadata servers or a state machine of its own"
            meta = LocalMeta(sm)
        self.meta = meta
        self.meta_addresses = meta_addresses
        #: Identifies the lake (chunk ids are only unique within one): names its disk cache and
        #: owns its peers' shards.
        self.uuid: str | None = lake_id
        self.config = config
        self.peer_records = peers
        self.secret = secret
        ssl_context = tls_context(tls_ca or None)
        self.tls_context = ssl_context
        stores: dict[int, ShardStore] = {}
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
        #: Removed at close: dataset mode's local copy of a cluster's metadata, or a follower's own files.
        self._snapshot_dir: Path | None = None
        self._nursery: trio.Nursery | None = None  # while ``async with lake``: connections and probes
        self._background: rpc.Background | None = None

    @classmethod
    def open(cls, data_dir: Path, *, io_threads: int = IO_THREADS, read_only: bool = False,
             lock: bool = False, follow: bool = False) -> Lake:
        """Open a lake; ``lock`` takes its exclusive lock first (the mount daemon does).

        ``read_only`` sees the metadata as it was at the open; ``follow`` (read-only too) opens it
        as a follower of the process that writes it, which sees later commits at each
        ``lake.sm.catch_up()`` (the Python client reading beside a mount)."""
        read_only = read_only or follow
        data_dir = Path(data_dir)
        if not data_dir.exists():
            raise NoSuchLake(f"{data_dir} does not exist")
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
        follow_dir = tempfile.mkdtemp(prefix="lakefs-follow.") if follow else None

        def undo() -> None:  # an open that fails leaves no lock and no follower directory
            if lock_fd is not None:
                os.close(lock_fd)
            if follow_dir is not None:
                shutil.rmtree(follow_dir, ignore_errors=True)

        try:
            sm = StateMachine(str(data_dir / "meta"), read_only=read_only, follow=follow_dir)
        except Exception as exc:  # rocksdict raises plain Exception for corrupt/locked DBs
            undo()
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "lock" in msg.lower():
                raise InUse(f"{data_dir} is in use by another process ({msg})") from None
            raise UserError(f"{data_dir}: metadata cannot be opened: {msg}") from None
        try:
            config = lake_config(sm.format_record())
            peers = sm.peers()
        except Exception as exc:
            sm.close()
            undo()
            raise UserError(f"{data_dir}: metadata is corrupt or not formatted: {exc}") from None
        try:
            roots: dict[int, str] = {}
            if not read_only:
                marker, roots = settle_identity(data_dir, marker, peers)
            secret = _load_lake_secret(data_dir, marker)
            lake = cls(data_dir, sm, config, peers, io_threads=io_threads, secret=secret,
                       tls_ca=marker.get("tls_ca"), lake_id=marker.get("uuid"), peer_roots=roots)
        except BaseException:
            sm.close()
            undo()
            raise
        lake._lock_fd = lock_fd
        lake._snapshot_dir = Path(follow_dir) if follow_dir is not None else None  # removed at close
        return lake

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, addresses: list[str], secret_file: Path | None, *, tls_ca: Path | None = None,
                      io_threads: int = IO_THREADS, op_timeout: float = META_TIMEOUT,
                      snapshot_to: Path | None = None) -> AsyncIterator[Lake]:
        """Open a lake whose metadata lives on metadata servers (``--meta``), for the block:
        ``async with Lake.connect(...) as lake``. Its connections live in the block (as with
        ``async with lake``) and the lake is closed at its end.

        With ``snapshot_to`` (dataset mode) the whole metadata is copied there once and read
        locally from then on; the lake is then read-only and does not see later changes.
        """
        secret = cluster_secret(secret_file)
        fmt, peers = await _fetch_remote(addresses, secret)
        _check_secret(fmt, secret_file, secret)
        sm = await snapshot_remote(addresses, secret, Path(snapshot_to)) if snapshot_to is not None else None
        lake = cls._remote(addresses, secret, fmt, peers, sm, tls_ca=tls_ca, io_threads=io_threads,
                           op_timeout=op_timeout, snapshot_to=snapshot_to)
        try:
            async with lake:
                yield lake
        finally:
            lake.close()

    @classmethod
    def _remote(cls, addresses: list[str], secret: bytes, fmt: dict, peers: list[PeerRecord],
                sm: StateMachine | None, *, tls_ca: Path | None, io_threads: int, op_timeout: float,
                snapshot_to: Path | None) -> Lake:
        """The lake of a cluster, from its format record and peers (and dataset-mode snapshot)."""
        meta = LocalMeta(sm) if sm is not None else RemoteMeta(MetaService(addresses, secret, op_timeout=op_timeout))
        lake_id = fmt.get("uuid") or hashlib.sha256(",".join(sorted(addresses)).encode()).hexdigest()[:32]
        lake = cls(None, sm, lake_config(fmt), peers, io_threads=io_threads, secret=secret,
                   tls_ca=str(tls_ca) if tls_ca else None, meta=meta, meta_addresses=list(addresses),
                   lake_id=lake_id)
        lake._snapshot_dir = Path(snapshot_to) if snapshot_to is not None else None
        return lake

    @contextlib.asynccontextmanager
    async def closing(self) -> AsyncIterator[Lake]:
        """``async with lake.closing()``: the lake's connections live in the block (``async with
        lake``) and the lake is closed at its end -- :meth:`connect`'s shape, for a lake opened
        with :meth:`open`."""
        try:
            async with self:
                yield self
        finally:
            self.close()

    async def __aenter__(self) -> Lake:
        """``async with lake``: the lake's connections (metadata service, peer servers) and their
        tasks live in the block; at its end they are closed (the lake itself stays open)."""
        self._background = rpc.Background()
        self._nursery = await self._background.__aenter__()
        for owner in self._connection_owners():
            owner.bind(self._nursery)
        return self

    async def __aexit__(self, *exc_info) -> None:
        background, self._background, self._nursery = self._background, None, None
        try:
            with trio.CancelScope(shield=True):
                for owner in self._connection_owners():
                    await owner.release()
        finally:
            if background is not None:
                await background.__aexit__(*exc_info)

    def _connection_owners(self) -> list:
        """What needs the lake's nursery: the metadata service and the peer-server stores (their
        connections), the peer-server and bucket stores (their probes)."""
        owners: list = [s for s in self.chunks.stores.values() if isinstance(s, (NetStore, S3Store))]
        if isinstance(self.meta, RemoteMeta):
            owners.append(self.meta.service)
        return owners

    def forked(self) -> None:
        """In a forked child that will not use this lake: close the child's copy of the lock's
        descriptor (the lock itself stays the parent's) and nothing else."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        for store in self.chunks.stores.values():
            close = getattr(store, "close", None)  # local peers: the shard files they hold open
            if close is not None:
                close()
        if self.sm is None:
            return
        self.sm.close()
        self.sm = None
        if self._snapshot_dir is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def check_remote_owners(self) -> None:
        """See :func:`check_remote_owners` (the mount awaits this before it goes live)."""
        if self.uuid is not None:
            await check_remote_owners(self.peer_records, self.secret, self.uuid, self.tls_context)

    def peer_address(self, p: PeerRecord) -> str:
        """Where a peer is, for people: a local peer directory's full path (records keep the
        default ones relative to the data directory), else its recorded address."""
        if p.kind != "dir":
            return p.address
        store = self.chunks.stores.get(p.peer_id)
        return getattr(store, "root", None) or peer_root(self.data_dir, p.address)

    @staticmethod
    def layout_of(rec: ChunkRecord) -> ChunkLayout:
        return layout_of(rec)

    async def refresh_peers(self) -> bool:
        """Follow ``peer add/remove/weight`` made while this lake is open (a cluster lake's peer
        records live in the replicated metadata): a new peer server or bucket gets a store, and
        weights and states decide where new shards go from now on. Returns whether anything
        changed. (An embedded lake's peers change only while it is unmounted.)"""
        records = await self.meta.peers()
        if records == self.peer_records:
            return False
        added: dict[int, ShardStore] = {}
        for p in records:
            if p.peer_id in self.chunks.stores:
                continue
            store: S3Store | NetStore
            if p.kind == "s3":
                store = added[p.peer_id] = S3Store(p.peer_id, p.address)
            elif p.kind == "net" and self.secret is not None:
                store = added[p.peer_id] = NetStore(p.peer_id, p.address, self.secret,
                                                    ssl_context=self.tls_context, lake_id=self.uuid)
            else:
                log.warning("peer %d (%s %s) was added while the lake is open; a remount uses it",
                            p.peer_id, p.kind, p.address)
                continue
            if self._nursery is not None:  # the lake owns its stores (async with lake)
                store.bind(self._nursery)
        old = {p.peer_id: p for p in self.peer_records}
        for p in records:
            if old.get(p.peer_id) != p:
                log.info("peer %d (%s) is now %s, weight %s", p.peer_id, p.address, p.state, p.weight)
        self.chunks.set_peers(added, zones={p.peer_id: p.zone for p in records},
                              weights={p.peer_id: p.weight for p in records if p.state == "up"})
        self.peer_records = records
        return True
