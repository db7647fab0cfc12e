"""POSIX semantics over the metadata client, the writer and the chunk client.

Owns: kernel lookup counts, open handles, unlink-until-last-close, the read path with
sequential read-ahead and the in-memory chunk-range cache, keep_cache decisions, statfs.
Returns :class:`~lakefs_fuse.meta.schema.Inode` attributes (never pyfuse3 types) and raises
:class:`~lakefs_fuse.errors.LakeError` subclasses; ``operations`` adapts both to pyfuse3.

Everything here runs on the single trio thread: code between two ``await`` is atomic.
Where an ``await`` sits inside a multi-step mutation, a comment says what may interleave.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat as st
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields, replace

import trio

from .. import errors as E
from ..chunks.cache import RangeCache
from ..chunks.client import ChunkClient
from ..chunks.diskcache import DiskCache
from ..chunks.layout import ChunkLayout
from ..chunks.store import LocalDirStore
from ..config import MountConfig
from ..lake.compact import Compactor
from ..meta.client import MetaClient
from ..meta.schema import ROOT_INO, Extent, Inode
from ..meta.state import NAME_MAX
from .pagecache import PageCachePusher
from .prefetch import CONTROL_INO, CONTROL_NAME, AheadBudget, Credentials, PlanStats, ReadPlan
from .writer import Writer

log = logging.getLogger(__name__)

O_ACCMODE = os.O_ACCMODE
#: The extents one read found in a cache / had to fetch: [hits, misses] (per-process hit ratio).
_TALLY: ContextVar[list | None] = ContextVar("lakefs_read_tally", default=None)


@dataclass(frozen=True, slots=True)
class Ctx:
    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


@dataclass(slots=True)
class Handle:
    ino: int
    flags: int
    pid: int = 0           # the process that opened it (metrics: time and bytes per process)
    profile: tuple[int, int] | None = None  # EC profile new data is written with (None: the lake's)
    next_off: int = 0      # where a sequential reader would read next
    window: int = 0        # read-ahead window (bytes); 0 = not sequential yet
    ahead_to: int = 0      # read-ahead has been started up to this file offset
    wrote: bool = False


@dataclass(slots=True)
class DirHandle:
    ino: int


@dataclass(slots=True)
class ControlHandle:
    """An open control file. ``.prefetch``: text written to it is handed to the read plan line by
    line; reads show the plan's progress. ``.stats`` and ``.config`` are read-only reports."""

    ino: int = CONTROL_INO
    pending: str = ""
    report: bytes = b""  # what a read from offset 0 saw; later offsets read the same snapshot
    cred: Credentials | None = None  # .prefetch: whose plan this handle writes and shows


def _covers(exts: list[Extent], size: int) -> bool:
    """The extents hold bytes [0, size) without a hole (sorted by file offset)."""
    pos = 0
    for e in exts:
        if e.file_off != pos:
            return False
        pos = e.end
    return pos == size


#: Hidden files in the mount root, answered by the daemon (never in the metadata, never listed):
#: name -> (inode number, mode). Inode numbers count down from 2**63 - 2; metadata counts up from 2.
STATS_INO, CONFIG_INO = (1 << 63) - 3, (1 << 63) - 4
CONTROL_FILES = {CONTROL_NAME: (CONTROL_INO, 0o666), b".stats": (STATS_INO, 0o444), b".config": (CONFIG_INO, 0o444)}
CONTROL_INOS = {ino: mode for ino, mode in CONTROL_FILES.values()}


#: POSIX ACLs are refused (EOPNOTSUPP) rather than stored without effect: honouring them needs the
#: kernel's FUSE_POSIX_ACL mode plus inheritance and mask <-> group-bit rules done here. An ACL a
#: lake stored before is neither shown nor listed (it never had an effect); it can be removed.
POSIX_ACL_XATTRS = frozenset({b"system.posix_acl_access", b"system.posix_acl_default"})


def _control_inode(ino: int) -> Inode:
    return Inode(ino, st.S_IFREG | CONTROL_INOS[ino], 1, 0, 0)


@dataclass(slots=True)
class Stats:
    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    prefetches: int = 0
    readahead_skipped: int = 0
    readahead_resets: int = 0
    disk_hits: int = 0
    disk_puts_skipped: int = 0


class VFS:
    def __init__(self, meta: MetaClient, chunks: ChunkClient, config: MountConfig, *, chunk_size: int,
                 gc_grace: float = 30.0, shared: bool = False, disk_cache: DiskCache | None = None,
                 page_store=None):
        self.meta = meta
        #: Dataset mode: files the read plan fetched are stored in the kernel's page cache with
        #: ``page_store`` (pyfuse3.notify_store), so the loader's reads never reach the daemon.
        self.pusher = PageCachePusher(page_store) if page_store is not None and config.dataset else None
        #: Local disk tier below the memory cache (None: off). Its I/O runs in worker threads.
        self.disk = disk_cache
        self._disk_limiter = trio.CapacityLimiter(4)
        self._disk_puts = 0  # background puts in flight (beyond a bound, new ones are skipped)
        #: Other mounts use the same metadata (a cluster lake): orphans may be theirs.
        self.shared = shared
        self.chunks = chunks
        self.cfg = config
        self.chunk_size = chunk_size
        self.gc_grace = gc_grace
        self.writer = Writer(meta, chunks, chunk_size=chunk_size, budget=config.dirty_budget,
                             pack_delay=config.pack_delay)
        self.cache = RangeCache(config.memory_cache)
        self.compactor = Compactor(meta, chunks, self.writer.next_chunk_id, chunk_size=chunk_size,
                                   interval=config.compact_interval)
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        self.handles: dict[int, Handle | DirHandle | ControlHandle] = {}
        self._next_fh = 1
        self._layouts: OrderedDict[int, ChunkLayout] = OrderedDict()
        self._listings: OrderedDict[tuple[int, int, int], tuple[float, list]] = OrderedDict()
        self._cached_attrs: dict[int, tuple[int, int]] = {}  # ino -> (size, mtime) the page cache holds
        #: Dataset mode: files the kernel was given whole (read or pushed) and has not forgotten;
        #: the read plan does not fetch them again (a second epoch runs from the page cache).
        self._kernel_has: set[int] = set()
        #: Inodes whose link count this mount brought to 0, freed at their last forget/close.
        self._unlinked: set[int] = set()
        self._resolving = 0  # lookups and listings waiting for the metadata
        self._deferred: set[int] = set()  # releases waiting for them (_maybe_release)
        #: Shared lakes: unlinked inodes to free when their grace ends (monotonic time).
        self._release_at: dict[int, float] = {}
        self.shared_grace = config.entry_timeout + 5.0
        self._nursery: trio.Nursery | None = None
        self._ahead_limiter = trio.CapacityLimiter(8)
        #: Bytes being fetched ahead of readers: sequential read-ahead and the read plan share it.
        self.ahead = AheadBudget(config.readahead_budget)
        # Local peers answer in microseconds and the daemon is CPU-bound on them: two fetches in
        # flight keep the disk busy; peer servers have network latency to hide, so eight.
        local = all(isinstance(s, LocalDirStore) for s in chunks.stores.values())
        self._plan_parallel = 2 if local else 8
        #: Read plans (.prefetch), one per user, each resolved with its writer's permissions.
        self.plans: dict[int, ReadPlan] = {}
        #: Where a read-only mount takes plans (the daemon's socket; the kernel refuses to open
        #: .prefetch for writing there). Shown in `cat .prefetch`.
        self.plan_socket: str | None = None
        self.stats = Stats()
        #: What `cat .stats` and `cat .config` show (the daemon plugs in its metrics; these are
        #: the fallbacks for a VFS without one, e.g. in-process tests).
        self.stats_source: Callable[[], bytes] = lambda: json.dumps(asdict(self.stats), indent=1).encode() + b"\n"
        self.config_source: Callable[[], bytes] = \
            lambda: json.dumps({"mountpoint": str(config.mountpoint)}).encode() + b"\n"
        self._nospace_logged = self._statfs_logged = -1e9
        #: Told (pid, bytes, extents from a cache, extents fetched) after every read (metrics, `top`).
        self.on_read: Callable[[int, int, int, int], None] | None = None

    # --------------------------------------------------------------- lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.writer.start(nursery)
        for plan in self.plans.values():
            nursery.start_soon(plan.run)
        if not self.shared:
            # After a restart nothing can reference an orphan: free what a crash left behind.
            # (On a shared lake another mount may still have it open.)
            for ino in await self.meta.orphans():
                await self.meta.apply(["release", ino, time.time_ns()])
        if not self.cfg.read_only and await self.meta.stored_data() is None:
            await self.meta.apply(["init_usage"])  # a lake from before `df` counted its own data
        nursery.start_soon(self._gc_loop)
        if self.shared:
            nursery.start_soon(self._release_loop)
        if not self.cfg.read_only and self.cfg.compact_interval > 0:
            nursery.start_soon(self.compactor.run)

    async def shutdown(self) -> None:
        if self.pusher is not None:
            await trio.to_thread.run_sync(self.pusher.close)
        await self.writer.shutdown()
        for ino, count in list(self.lookups.items()):
            if count:
                self.lookups[ino] = 0
                await self._maybe_release(ino)
        await self._durable()

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise E.NameTooLong()

    def _overlay_attr(self, inode: Inode) -> Inode:
        if self.writer.has_data(inode.ino):
            inode.size = max(inode.size, self.writer.end(inode.ino))
            inode.buffered = self.writer.buffered_bytes(inode.ino)
            mt = self.writer.mtime(inode.ino)
            if mt > inode.mtime_ns:
                inode.mtime_ns = inode.ctime_ns = mt
        return inode

    def _ref(self, inode: Inode) -> Inode:
        self.lookups[inode.ino] = self.lookups.get(inode.ino, 0) + 1
        return self._overlay_attr(inode)

    async def _maybe_release(self, ino: int, *, due: bool = False) -> None:
        """Free an unlinked inode once neither the kernel nor a handle references it.

        Not while a lookup or listing is waiting for the metadata: its answer may name this
        inode, and the kernel would then open a freed inode (ENOENT for a file that was only
        replaced by a rename); the release waits for those answers. On a shared lake other
        mounts may have just looked the inode up, so it is freed only ``shared_grace`` seconds
        after this mount saw its link count reach 0 (``due``: that time has come).
        """
        if self.lookups.get(ino, 0) > 0 or self.opens.get(ino, 0) > 0 or ino == ROOT_INO:
            return
        if self._resolving:
            self._deferred.add(ino)
            return
        self.lookups.pop(ino, None)
        self._cached_attrs.pop(ino, None)
        if not self.shared and ino not in self._unlinked:
            return  # only this mount changes an embedded lake: it saw every link count reach 0
        try:
            inode = await self.meta.getattr(ino)
        except E.NotFound:
            self._unlinked.discard(ino)
            self._release_at.pop(ino, None)
            return
        if inode.nlink == 0:
            if self.shared and not due:
                self._release_at.setdefault(ino, time.monotonic() + self.shared_grace)
                return
            if self.lookups.get(ino, 0) > 0 or self.opens.get(ino, 0) > 0:
                return  # looked up again while we asked
            self._release_at.pop(ino, None)
            self.writer.discard(ino)
            await self.meta.apply(["release", ino, time.time_ns()])
            self._unlinked.discard(ino)

    @contextlib.contextmanager
    def _resolving_names(self):
        """Around a lookup or listing: inodes it may return are not freed meanwhile."""
        self._resolving += 1
        try:
            yield
        finally:
            self._resolving -= 1
            if not self._resolving and self._deferred and self._nursery is not None:
                deferred, self._deferred = self._deferred, set()
                for ino in deferred:  # runs after the caller has taken its references
                    self._nursery.start_soon(self._release_quietly, ino, False)

    async def _release_quietly(self, ino: int, due: bool) -> None:
        try:
            await self._maybe_release(ino, due=due)
        except E.LakeError as exc:  # metadata unreachable: the orphan stays until reclaimed
            log.warning("inode %d: could not release it: %s", ino, exc)

    async def _release_loop(self) -> None:
        """Shared lakes: free unlinked inodes whose grace has passed (see _maybe_release)."""
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            for ino in [i for i, at in self._release_at.items() if at <= now]:
                await self._release_quietly(ino, True)

    @staticmethod
    def _now() -> int:
        return time.time_ns()

    # -------------------------------------------------------------- namespace

    async def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Inode:
        self._check_name(name)
        if parent == ROOT_INO and name in CONTROL_FILES:
            return _control_inode(CONTROL_FILES[name][0])
        with self._resolving_names():
            if name == b".":
                return self._ref(await self.meta.getattr(parent))
            if name == b"..":
                pinode = await self.meta.getattr(parent)
                return self._ref(await self.meta.getattr(pinode.parent or ROOT_INO))
            return self._ref(await self.meta.lookup(parent, name))

    async def forget(self, items: list[tuple[int, int]]) -> None:
        unused = []
        for ino, n in items:
            if ino in CONTROL_INOS:
                continue
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups[ino] = 0
                unused.append(ino)
                # The kernel dropped the inode and with it every cached page of the file.
                self._cached_attrs.pop(ino, None)
                self._kernel_has.discard(ino)
        for ino in unused:
            try:
                await self._maybe_release(ino)
            except E.LakeError as exc:  # metadata unreachable: the orphan stays until reclaimed
                log.warning("inode %d: could not release it: %s", ino, exc)

    async def getattr(self, ino: int) -> Inode:
        if ino in CONTROL_INOS:
            return _control_inode(ino)
        return self._overlay_attr(await self.meta.getattr(ino))

    async def setattr(self, ino: int, changes: dict, ctx: Ctx) -> Inode:
        """``changes`` keys: mode, uid, gid, size, atime_ns, mtime_ns (UTIME_NOW already resolved)."""
        if ino == CONTROL_INO:
            return _control_inode(ino)  # e.g. the truncate of open(".prefetch", "w"): nothing to do
        if ino in CONTROL_INOS:
            raise E.NotPermitted("the mount's status files are read-only")
        if self.cfg.read_only:
            raise E.LakeError("read-only mount", err=errno.EROFS)
        touch = False  # a truncate that changes the size readers see sets mtime (and ctime)
        # Commit buffered writes first so the truncate/utimens applies after them.
        if ("size" in changes or "mtime_ns" in changes) and self.writer.has_data(ino):
            if "size" in changes:
                # Decided before the flush: buffered bytes count in the size readers saw, and
                # once committed, the metadata's size may already be the new one.
                seen = self._overlay_attr(await self.meta.getattr(ino)).size
                touch = "mtime_ns" not in changes and seen != changes["size"]
                self.writer.truncate(ino, changes["size"])
            await self.writer.flush(ino)
        inode = await self.meta.getattr(ino)
        if "mode" in changes and ctx.uid != 0 and ctx.gid != inode.gid and not inode.is_dir:
            changes["mode"] &= ~st.S_ISGID  # unprivileged chmod cannot keep setgid of a foreign group
        if ("uid" in changes or "gid" in changes) and inode.mode & (st.S_ISUID | st.S_ISGID) \
                and not inode.is_dir and "mode" not in changes:
            mode = inode.mode & ~st.S_ISUID
            if inode.mode & st.S_IXGRP:
                mode &= ~st.S_ISGID
            changes["mode"] = mode & 0o7777
        now = self._now()
        if touch:
            changes["mtime_ns"] = now
        await self.meta.apply(["setattr", ino, changes, now])
        if "size" in changes:
            self._cached_attrs.pop(ino, None)
        return self._overlay_attr(await self.meta.getattr(ino))

    async def readlink(self, ino: int) -> bytes:
        return await self.meta.readlink(ino)

    def _writable(self) -> None:
        if self.cfg.read_only:
            raise E.LakeError("read-only mount", err=errno.EROFS)

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Inode:
        self._writable()
        self._check_name(name)
        if parent == ROOT_INO and name in CONTROL_FILES:
            raise E.Exists("the mount's control file")
        ino, data = await self.meta.apply(["mknod", parent, name, mode, rdev,
                                           ctx.uid, ctx.gid, self._now()])
        return self._ref(Inode.from_bytes(ino, data))  # the command answers with the new inode

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Inode:
        return await self.mknod(parent, name, st.S_IFDIR | (mode & 0o7777), 0, ctx)

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Inode:
        self._writable()
        self._check_name(name)
        ino, data = await self.meta.apply(["symlink", parent, name, target, ctx.uid, ctx.gid, self._now()])
        return self._ref(Inode.from_bytes(ino, data))

    async def link(self, ino: int, parent: int, name: bytes, ctx: Ctx) -> Inode:
        self._writable()
        self._check_name(name)
        ino, data = await self.meta.apply(["link", ino, parent, name, self._now()])
        return self._ref(Inode.from_bytes(ino, data))

    @staticmethod
    def _not_control(parent: int, name: bytes) -> None:
        if parent == ROOT_INO and name in CONTROL_FILES:
            raise E.NotPermitted("the mount's control files cannot be removed or renamed")

    async def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        self._check_name(name)
        self._not_control(parent, name)
        ino, nlink = await self.meta.apply(["unlink", parent, name, self._now()])
        if nlink == 0:
            self._unlinked.add(ino)
            await self._maybe_release(ino)

    async def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        self._check_name(name)
        ino, _ = await self.meta.apply(["rmdir", parent, name, self._now()])
        self._unlinked.add(ino)
        await self._maybe_release(ino)

    async def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int,
                     ctx: Ctx) -> None:
        self._writable()
        self._check_name(name)
        self._check_name(newname)
        self._not_control(parent, name)
        self._not_control(newparent, newname)
        _moved, replaced, replaced_nlink = await self.meta.apply(
            ["rename", parent, name, newparent, newname, flags, self._now()])
        if replaced and replaced_nlink == 0:
            self._unlinked.add(replaced)
            await self._maybe_release(replaced)

    # ----------------------------------------------------------------- files

    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx) -> tuple[int, Inode, bool]:
        inode = await self.mknod(parent, name, st.S_IFREG | (mode & 0o7777), 0, ctx)
        fh, _keep, direct = await self._open_handle(inode, flags, ctx.pid)
        return fh, inode, direct

    async def open(self, ino: int, flags: int, ctx: Ctx) -> tuple[int, bool, bool]:
        """Returns (fh, keep_cache, direct_io)."""
        if ino in CONTROL_INOS:
            if ino != CONTROL_INO and (flags & O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
                raise E.LakeError("the mount's status files are read-only", err=errno.EACCES)
            cred = Credentials.of_process(ctx.uid, ctx.gid, ctx.pid) if ino == CONTROL_INO else None
            return self._new_handle(ControlHandle(ino, cred=cred)), False, True
        plan = self.plans.get(ctx.uid)
        if plan is not None and plan.active:
            plan.opened(ino)
        if flags & O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            self._writable()
        inode = self._overlay_attr(await self.meta.getattr(ino))  # buffered bytes count too
        if inode.is_dir:
            raise E.IsADir()
        if flags & os.O_TRUNC and flags & O_ACCMODE != os.O_RDONLY and inode.size:
            inode = await self.setattr(ino, {"size": 0}, ctx)
        return await self._open_handle(self._overlay_attr(inode), flags, ctx.pid)

    async def _open_handle(self, inode: Inode, flags: int, pid: int = 0) -> tuple[int, bool, bool]:
        fh = self._new_handle(Handle(inode.ino, flags, pid, profile=inode.profile))
        self.opens[inode.ino] = self.opens.get(inode.ino, 0) + 1
        seen = (inode.size, inode.mtime_ns)
        keep = self._cached_attrs.get(inode.ino) == seen
        self._cached_attrs[inode.ino] = seen
        direct = bool(flags & getattr(os, "O_DIRECT", 0o40000))
        return fh, keep, direct

    def _new_handle(self, h: Handle | DirHandle | ControlHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        return fh

    def handle_pid(self, fh: int) -> int:
        h = self.handles.get(fh)
        return h.pid if isinstance(h, Handle) else 0

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if not isinstance(h, Handle):
            raise E.LakeError("bad file handle", err=errno.EBADF)
        return h

    async def write(self, fh: int, off: int, data: bytes) -> int:
        h = self.handles.get(fh)
        if not isinstance(h, Handle):
            if isinstance(h, ControlHandle) and h.ino == CONTROL_INO:
                text = h.pending + bytes(data).decode("utf-8", errors="surrogateescape")
                complete, _, h.pending = text.rpartition("\n")
                if complete:
                    self.take_plan(h.cred, complete)
                return len(data)
            h = self._handle(fh)  # raises EBADF
        if h.flags & O_ACCMODE == os.O_RDONLY:
            raise E.LakeError("not open for writing", err=errno.EBADF)
        if off + len(data) > (1 << 62):
            raise E.LakeError("file too large", err=errno.EFBIG)
        err = self.writer.take_error(h.ino)
        if err is not None:  # an earlier write-back of this file failed (or is failing): say so now
            raise err
        try:
            need = self.chunks.min_writable_peers()
            if self.chunks.writable_peers() < need:
                # A chunk is committed with at least k+1 shards on distinct peers; accepting bytes
                # that cannot be placed would only lose them after close() has returned.
                raise E.NoSpace(f"only {self.chunks.writable_peers()} peers are up; writes need {need} "
                                f"({self.chunks.down_reasons()})")
            await self.writer.write(h.ino, off, data, h.profile)  # admission: ENOSPC before accepting
            h.wrote = True  # (counted once accepted: a refused write stored nothing)
            self.stats.writes += 1
            self.stats.write_bytes += len(data)
        except E.NoSpace as exc:
            now = time.monotonic()
            if now - self._nospace_logged >= 10:  # one line per 10 s, not one per write
                self._nospace_logged = now
                log.warning("writes refused with ENOSPC: %s", exc)
            raise
        return len(data)

    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if isinstance(h, ControlHandle):
            if h.pending:
                self.take_plan(h.cred, h.pending)
                h.pending = ""
            return
        if self.cfg.read_only:
            # Nothing is ever buffered here. ENOSYS makes the kernel stop sending FLUSH for the
            # rest of the mount: one request less at every close (the control file's last
            # unterminated line is then taken at release).
            raise E.LakeError("flush not needed on a read-only mount", err=errno.ENOSYS)
        if isinstance(h, Handle) and h.flags & O_ACCMODE != os.O_RDONLY \
                and (self.writer.has_data(h.ino) or self.writer.has_error(h.ino)):
            await self.writer.close(h.ino)

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        await self.writer.flush(h.ino)
        await self._durable()

    async def _durable(self) -> None:
        """Shards first, then the metadata that points at them."""
        try:
            await self.chunks.sync()
        except Exception as exc:  # a peer that cannot sync is a failed write-back
            raise E.LakeError(f"shard sync failed: {exc}") from exc
        await self.meta.sync()

    async def fsyncdir(self, fh: int) -> None:
        """fsync of a directory: commit every buffered write of the mount and sync metadata.

        (Entries are committed when created; syncing all data as well is what makes
        ``fsync(dirfd)`` a cheap "everything so far is durable" barrier, used by the CLI.)
        """
        await self.writer.flush_all()
        await self._durable()

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if isinstance(h, ControlHandle) and h.pending:
            self.take_plan(h.cred, h.pending)
        if not isinstance(h, Handle):
            return
        n = self.opens.get(h.ino, 1) - 1
        if n > 0:
            self.opens[h.ino] = n
        else:
            self.opens.pop(h.ino, None)
        if h.wrote:
            try:
                await self.writer.close(h.ino)
            except E.LakeError as exc:  # the bytes stay buffered and retried (writer docstring)
                log.error("inode %d: data written before close is not stored yet: %s", h.ino, exc)
            try:
                inode = await self.meta.getattr(h.ino)
                self._cached_attrs[h.ino] = (inode.size, inode.mtime_ns)
            except E.NotFound:
                pass
        await self._maybe_release(h.ino)

    # ------------------------------------------------------------------ read

    async def _layout(self, chunk_id: int) -> ChunkLayout:
        layout = self._layouts.get(chunk_id)
        if layout is None:
            rec = await self.meta.chunk(chunk_id)
            layout = ChunkLayout.from_wire(rec.to_wire())
            self._layouts[chunk_id] = layout
            if len(self._layouts) > 65536:
                self._layouts.popitem(last=False)
        return layout

    def forget_layout(self, chunk_id: int) -> None:
        """A chunk's shards moved (repair): read its record afresh next time."""
        self._layouts.pop(chunk_id, None)

    async def _extent_bytes(self, ext: Extent) -> bytes:
        """The whole byte range of one extent (a small file is fetched whole; big files by chunk):
        from the memory cache, else the disk cache, else the peers (then both caches keep it)."""
        tally = _TALLY.get()
        hit = self.cache.get(ext.chunk_id, ext.chunk_off, ext.length)
        if hit is not None:
            if tally is not None:
                tally[0] += 1
            return hit  # type: ignore[return-value]
        if self.disk is not None:
            async with self._disk_limiter:
                data = await trio.to_thread.run_sync(self.disk.get, ext.chunk_id, ext.chunk_off, ext.length)
            if data is not None:
                self.stats.disk_hits += 1
                self.cache.put(ext.chunk_id, ext.chunk_off, data)
                if tally is not None:
                    tally[0] += 1
                return data
        if tally is not None:
            tally[1] += 1
        layout = await self._layout(ext.chunk_id)
        data = await self.chunks.read(layout, ext.chunk_off, ext.length)
        if len(data) != ext.length:
            raise E.DataUnavailable(f"chunk {ext.chunk_id} is shorter than its extent")
        self.cache.put(ext.chunk_id, ext.chunk_off, data)
        if self.disk is not None and self._nursery is not None:
            if self._disk_puts < 16:  # the disk tier never slows a reader down: skip when behind
                self._disk_puts += 1
                self._nursery.start_soon(self._disk_put, ext.chunk_id, ext.chunk_off, data)
            else:
                self.stats.disk_puts_skipped += 1
        return data

    async def _disk_put(self, chunk_id: int, offset: int, data) -> None:
        try:
            async with self._disk_limiter:
                await trio.to_thread.run_sync(self.disk.put, chunk_id, offset, data)
        except Exception as exc:  # the cache is an optimization: a failing disk only logs
            log.warning("disk cache put failed: %s", exc)
        finally:
            self._disk_puts -= 1

    async def _piece(self, ext: Extent, a: int, b: int) -> bytes | memoryview:
        """File bytes [a, b) of extent ``ext``: from its whole (cached) range, or -- when the
        whole range cannot be decoded -- just these bytes, which may sit on healthy shards."""
        try:
            data = await self._extent_bytes(ext)
        except E.DataUnavailable:
            layout = await self._layout(ext.chunk_id)
            return await self.chunks.read(layout, ext.chunk_off + a - ext.file_off, b - a)
        return memoryview(data)[a - ext.file_off:b - ext.file_off]

    async def _read_committed(self, ino: int, off: int, size: int) -> bytearray | memoryview:
        end = off + size
        exts = await self.meta.extents(ino, off // self.chunk_size, (end - 1) // self.chunk_size)
        wanted = [e for e in exts if e.file_off < end and e.end > off]
        if len(wanted) == 1 and wanted[0].file_off <= off and wanted[0].end >= end:
            return await self._piece(wanted[0], off, end)  # the common case: a view, no copy
        buf = bytearray(size)

        async def fill(ext: Extent) -> None:
            a, b = max(ext.file_off, off), min(ext.end, end)
            buf[a - off:b - off] = await self._piece(ext, a, b)

        if len(wanted) == 1:
            await fill(wanted[0])
        elif wanted:
            async with trio.open_nursery() as nursery:
                for ext in wanted:
                    nursery.start_soon(fill, ext)
        return buf

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        h = self.handles.get(fh)
        if not isinstance(h, Handle):
            if isinstance(h, ControlHandle):
                # One snapshot per read from the start: a reader needing several requests must not
                # get the head of one report and the tail of a longer, newer one.
                if off == 0 or not h.report:
                    h.report = self._control_report(h)
                return h.report[off:off + size]
            h = self._handle(fh)  # raises EBADF
        inode = self._overlay_attr(await self.meta.getattr(h.ino))
        if off >= inode.size or size <= 0:
            return b""
        size = min(size, inode.size - off)
        self.stats.reads += 1
        self.stats.read_bytes += size
        # Buffered bytes are copied *before* the extents are looked up: a seal that commits
        # while _read_committed awaits leaves the writer's buffers, and its extents may be
        # newer than the lookup; the copy still carries its bytes.
        earlier = self.writer.pieces(h.ino, off, size) if self.writer.has_data(h.ino) else None
        tally = [0, 0]
        token = _TALLY.set(tally)
        try:
            data = await self._read_committed(h.ino, off, size)
        finally:
            _TALLY.reset(token)  # read-ahead started below is nobody's read
        if self.on_read is not None:
            self.on_read(h.pid, size, tally[0], tally[1])
        if earlier or self.writer.has_data(h.ino):
            if not isinstance(data, bytearray):
                data = bytearray(data)
            for start, piece in earlier or ():
                data[start - off:start - off + len(piece)] = piece
            self.writer.overlay(h.ino, data, off)
        self._read_ahead(h, off, size, inode.size)
        if self.pusher is not None and off == 0 and size == inode.size:
            self._kernel_has.add(h.ino)  # a small file read whole: its pages are in the kernel now
        return data

    def _control_report(self, h: ControlHandle) -> bytes:
        if h.ino == STATS_INO:
            return self.stats_source()
        if h.ino == CONFIG_INO:
            return self.config_source()
        return self.plan_report(h.cred)  # .prefetch, e.g. `cat .prefetch`

    # ------------------------------------------------------------- read plans

    def _plan_of(self, cred: Credentials) -> ReadPlan:
        """``cred``'s user's read plan, made on first use (its task runs in the VFS nursery)."""
        plan = self.plans.get(cred.uid)
        if plan is None:
            plan = self.plans[cred.uid] = ReadPlan(
                self.meta.lookup, self._fetch_file, files_ahead=self.cfg.prefetch_files,
                bytes_ahead=self.cfg.prefetch_bytes, parallel=self._plan_parallel, budget=self.ahead,
                cred=cred, stat=self.meta.getattr)
            if self._nursery is not None:
                self._nursery.start_soon(plan.run)
        return plan

    def take_plan(self, cred: Credentials, text: str) -> None:
        """Lines of a read plan written by ``cred`` (to .prefetch, or to the daemon's socket)."""
        plan = self._plan_of(cred)
        plan.cred = cred  # the user's groups as of their latest write
        plan.take(text)

    def plan_report(self, cred: Credentials) -> bytes:
        """The progress of the caller's own plan (JSON). The mount-wide counters, which move with
        every user's reads and plans, only for root and the daemon's own user."""
        status = self._plan_of(cred).report()
        status["plan_socket"] = self.plan_socket
        if cred.uid in (0, os.geteuid()):
            status["read_requests"] = self.stats.reads  # READs that reached the daemon
            if self.pusher is not None:
                status["page_cache"] = asdict(self.pusher.stats)
        return json.dumps(status, indent=1).encode() + b"\n"

    def plan_totals(self) -> PlanStats:
        """Every user's plan counters summed (metrics)."""
        total = PlanStats()
        for plan in self.plans.values():
            for f in fields(PlanStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(plan.stats, f.name))
        return total

    def set_read_only(self, read_only: bool) -> bool:
        """Follow the kernel's read-only flag after ``mount -o remount,ro|rw``; returns the new state.
        A dataset mount stays read-only: its caches hold attributes and listings for an hour."""
        read_only = read_only or self.cfg.dataset
        if read_only != self.cfg.read_only:
            self.cfg = replace(self.cfg, read_only=read_only)
        return read_only

    def _read_ahead(self, h: Handle, off: int, size: int, file_size: int) -> None:
        """Per-handle sequential read-ahead: the window doubles while reads stay sequential."""
        tolerance = 256 * 1024
        if h.next_off - tolerance <= off <= h.next_off + tolerance and off > 0:
            h.window = min(max(h.window * 2, self.chunk_size), self.cfg.readahead_max)
        elif off != 0 or h.next_off != 0:
            if h.window:
                self.stats.readahead_resets += 1
            h.window = 0
            h.ahead_to = 0
        h.next_off = off + size
        if not h.window or self._nursery is None:
            return
        start = max(h.ahead_to, off + size)
        stop = min(off + size + h.window, file_size)
        if stop - start < self.chunk_size // 2 and stop < file_size:
            return
        if start < stop:
            if not self.ahead.take(stop - start):
                self.stats.readahead_skipped += 1  # over the global budget: the reader fetches itself
                return
            h.ahead_to = stop
            self.stats.prefetches += 1
            self._nursery.start_soon(self._prefetch, h.ino, start, stop)

    async def _prefetch(self, ino: int, start: int, stop: int) -> None:
        try:
            exts = await self.meta.extents(ino, start // self.chunk_size, (stop - 1) // self.chunk_size)
            async with trio.open_nursery() as nursery:
                for ext in exts:
                    if ext.file_off < stop and ext.end > start:
                        nursery.start_soon(self._prefetch_one, ext)
        except Exception as exc:  # prefetch errors never fail a read that did not need the data
            log.debug("read-ahead of inode %d failed: %s", ino, exc)
        finally:
            self.ahead.give(stop - start)

    async def _fetch_file(self, ino: int) -> int:
        """A whole file into the memory cache (sampler-order prefetch) and, in dataset mode, into
        the kernel's page cache; returns its bytes."""
        if self.pusher is not None and ino in self._kernel_has:
            return 0
        inode = await self.meta.getattr(ino)
        if not inode.size:
            return 0
        exts = await self.meta.extents(ino, 0, (inode.size - 1) // self.chunk_size)
        parts: list = [b""] * len(exts)

        async def one(i: int, ext: Extent) -> None:
            parts[i] = await self._extent_bytes(ext)

        async with trio.open_nursery() as nursery:
            for i, ext in enumerate(exts):
                nursery.start_soon(one, i, ext)
        if self.pusher is not None and _covers(exts, inode.size):
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if self.pusher.push(ino, data):
                # The kernel will hold exactly these bytes: the next open may keep them.
                self._cached_attrs[ino] = (inode.size, inode.mtime_ns)
                self._kernel_has.add(ino)
        return sum(e.length for e in exts)

    async def _prefetch_one(self, ext: Extent) -> None:
        async with self._ahead_limiter:
            try:
                await self._extent_bytes(ext)
            except Exception as exc:
                log.debug("read-ahead of chunk %d failed: %s", ext.chunk_id, exc)

    # --------------------------------------------------------------- directories

    async def opendir(self, ino: int, ctx: Ctx) -> int:
        inode = await self.meta.getattr(ino)
        if not inode.is_dir:
            raise E.NotADir()
        return self._new_handle(DirHandle(ino))

    async def readdir(self, fh: int, start: int, limit: int = 256) -> list[tuple[bytes, Inode, int]]:
        """Entries after offset ``start``: '.' is offset 1, '..' 2, then cookie + 2.

        The caller reports how many it could use with :meth:`readdir_used` (lookup counts).
        """
        h = self.handles.get(fh)
        if not isinstance(h, DirHandle):
            raise E.LakeError("bad directory handle", err=errno.EBADF)
        out: list[tuple[bytes, Inode, int]] = []
        with self._resolving_names():  # the caller takes its references before any release runs
            if start < 1:
                out.append((b".", await self.meta.getattr(h.ino), 1))
            if start < 2:
                me = await self.meta.getattr(h.ino)
                out.append((b"..", await self.meta.getattr(me.parent or ROOT_INO), 2))
            for name, inode, cookie in await self._readdir_page(h.ino, max(0, start - 2), limit):
                out.append((name, self._overlay_attr(inode), cookie + 2))
        return out

    async def _readdir_page(self, ino: int, after: int, limit: int) -> list[tuple[bytes, Inode, int]]:
        """A page of a listing; in dataset mode pages are kept for the entry timeout, so a second
        scan of a big tree (an ImageFolder per epoch) does not touch the metadata at all."""
        if not self.cfg.dataset:
            return await self.meta.readdir(ino, after, limit)
        key = (ino, after, limit)
        hit = self._listings.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            self._listings.move_to_end(key)
            return hit[1]
        page = await self.meta.readdir(ino, after, limit)
        self._listings[key] = (now + self.cfg.entry_timeout, page)
        while len(self._listings) > 4096:  # ~1M entries at 256 per page
            self._listings.popitem(last=False)
        return page

    def readdir_used(self, name: bytes, ino: int) -> None:
        if name not in (b".", b".."):
            self.lookups[ino] = self.lookups.get(ino, 0) + 1

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # ---------------------------------------------------------------- xattrs

    async def setxattr(self, ino: int, name: bytes, value: bytes, ctx: Ctx) -> None:
        self._writable()
        if ino in CONTROL_INOS:
            raise E.NotPermitted("the mount's control files have no extended attributes")
        if name in POSIX_ACL_XATTRS:
            raise E.LakeError("POSIX ACLs are not supported", err=errno.EOPNOTSUPP)
        await self.meta.apply(["setxattr", ino, name, value, 0, self._now()])

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if ino in CONTROL_INOS or name in POSIX_ACL_XATTRS:
            raise E.NoData()  # getfacl then shows the mode, which is what the kernel enforces
        return await self.meta.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        if ino in CONTROL_INOS:
            return []
        return [n for n in await self.meta.listxattr(ino) if n not in POSIX_ACL_XATTRS]

    async def removexattr(self, ino: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        await self.meta.apply(["removexattr", ino, name, self._now()])

    # ---------------------------------------------------------------- misc

    async def access(self, ino: int, mode: int, ctx: Ctx) -> bool:
        inode = _control_inode(ino) if ino in CONTROL_INOS else await self.meta.getattr(ino)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(inode.mode & 0o111) or inode.is_dir
        if ctx.uid == inode.uid:
            bits = (inode.mode >> 6) & 7
        elif ctx.gid == inode.gid:
            bits = (inode.mode >> 3) & 7
        else:
            bits = inode.mode & 7
        return (bits & mode) == mode

    async def statfs(self) -> dict:
        """The lake's own data as used, what the peers can still take (net of parity and of
        bytes this mount has buffered) as available: not the host disks' other usage."""
        k, m = self.chunks.k, self.chunks.m
        free = self.writer.free_space()
        if free is None:
            _total, free = await self.chunks.capacity()
        if self.chunks.unanswered and time.monotonic() - self._statfs_logged >= 60:
            self._statfs_logged = time.monotonic()  # df leaves them out: say which and why, once a minute
            log.warning("statfs: %d of %d peers did not report their free space: %s", len(self.chunks.unanswered),
                        len(self.chunks.stores), self.chunks.down_reasons())
        avail = max(0, free) * k // (k + m)
        used = (await self.meta.stored_data() or 0) + self.writer.buffered
        bsize = 4096
        used_inodes = await self.meta.count_inodes()
        files = max(1 << 32, used_inodes * 2)
        return {
            "f_bsize": 1 << 20, "f_frsize": bsize,
            "f_blocks": -(-(used + avail) // bsize),
            "f_bfree": avail // bsize,
            "f_bavail": avail // bsize,
            "f_files": files, "f_ffree": files - used_inodes, "f_favail": files - used_inodes,
            "f_namemax": NAME_MAX,
        }

    # ------------------------------------------------------------------ GC

    async def _gc_loop(self) -> None:
        while True:
            await trio.sleep(max(1.0, self.gc_grace / 3))
            try:
                await self.collect_garbage()
            except E.LakeError as exc:  # e.g. no metadata majority: one line a pass, the next one retries
                log.warning("garbage collection pass failed: %s", exc)
            except Exception:
                log.exception("garbage collection pass failed")

    async def collect_garbage(self, grace: float | None = None) -> int:
        """Delete shards of chunks that nothing has referenced for ``grace`` seconds."""
        grace = self.gc_grace if grace is None else grace
        cutoff = self._now() - int(grace * 1e9)
        done = []
        for chunk_id, queued in await self.meta.delete_queue(256):
            if queued > cutoff:
                continue
            try:
                rec = await self.meta.chunk(chunk_id)
            except E.NotFound:
                done.append(chunk_id)
                continue
            if rec.refs > 0:
                done.append(chunk_id)
                continue
            await self.chunks.delete_chunk(ChunkLayout.from_wire(rec.to_wire()))
            self.cache.drop_chunk(chunk_id)
            if self.disk is not None:
                await trio.to_thread.run_sync(self.disk.drop_chunk, chunk_id)
            self._layouts.pop(chunk_id, None)
            done.append(chunk_id)
        if done:
            await self.meta.apply(["gc_done", done])
        return len(done)
