"""POSIX semantics over the metadata client: the facade ``operations`` calls.

Owns the POSIX rules of the namespace operations (lookup, create, unlink, rename, links, xattrs,
access, statfs), open/close/flush/fsync, the write entry point (ENOSPC before a byte is
accepted) and the listing cache of dataset mode. The rest it delegates, each to one owner:

* :mod:`.inodes` -- the kernel's lookup counts and unlink-until-last-close;
* :mod:`.handles` -- handle numbers and open counts per inode;
* :mod:`.reader` -- the read path: layouts, memory -> disk -> peer tiers, read-ahead;
* :mod:`.writer` -- buffered writes sealed into chunks, write-back errors, free-space admission;
* :mod:`.control` -- ``.prefetch``, ``.stats``, ``.config`` and the read plans;
* :mod:`.pagecache` -- what the kernel's page cache holds (``keep_cache``), dataset-mode pushes;
* :func:`lakefs_fuse.lake.gc.drain_delete_queue` -- the background garbage collection pass.

Returns :class:`~lakefs_fuse.meta.schema.Inode` attributes (never pyfuse3 types) and raises
:class:`~lakefs_fuse.errors.LakeError` subclasses; ``operations`` adapts both to pyfuse3.
Imports the lake, meta and chunks layers and its sibling modules; never pyfuse3.

Everything here runs on the single trio thread: code between two ``await`` is atomic.
Where an ``await`` sits inside a multi-step mutation, a comment says what may interleave.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as st
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import trio

from .. import errors as E
from ..chunks.client import ChunkClient
from ..chunks.diskcache import DiskCache
from ..chunks.store import LocalDirStore
from ..config import MountConfig
from ..lake.compact import Compactor
from ..lake.gc import collect_every, drain_delete_queue
from ..meta.client import MetaClient
from ..meta.commands import (
    AttrChanges,
    InitUsage,
    Link,
    Mknod,
    Removexattr,
    Rename,
    Rmdir,
    Setattr,
    Setxattr,
    Symlink,
    Unlink,
)
from ..meta.schema import ROOT_INO, Inode
from ..meta.state import NAME_MAX
from .control import CONTROL_FILES, ControlFiles, control_inode, is_control, is_control_name
from .handles import ControlHandle, DirHandle, Handle, HandleTable
from .inodes import InodeRefs
from .pagecache import KernelPages, PageCachePusher
from .prefetch import Credentials
from .reader import Buffer, Reader, Stats
from .writer import Writer

log = logging.getLogger(__name__)

O_ACCMODE = os.O_ACCMODE


@dataclass(frozen=True, slots=True)
class Ctx:
    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022


#: POSIX ACLs are refused (EOPNOTSUPP) rather than stored without effect: honouring them needs the
#: kernel's FUSE_POSIX_ACL mode plus inheritance and mask <-> group-bit rules done here. An ACL a
#: lake stored before is neither shown nor listed (it never had an effect); it can be removed.
POSIX_ACL_XATTRS = frozenset({b"system.posix_acl_access", b"system.posix_acl_default"})


def open_disk_cache(cfg: MountConfig, lake_id: str | None, *, busy_level: int = logging.WARNING) -> DiskCache | None:
    """The disk cache of a mount (or client), in a directory of its own per lake; None when off
    or when another process has it (logged at ``busy_level``) or it cannot be opened."""
    if cfg.cache_dir is None:
        return None
    directory = cfg.cache_dir / (lake_id or "lake")
    try:
        cache = DiskCache(directory, cfg.cache_size, free_floor=cfg.cache_free_floor)
    except E.Busy:
        log.log(busy_level, "disk cache %s is used by another process of this lake; running without one",
                directory)
        return None
    except OSError as exc:
        log.warning("cannot open the disk cache %s (%s); running without one", directory, exc)
        return None
    log.info("disk cache %s: %d MiB of %d MiB used", directory, cache.stats()["used"] >> 20, cfg.cache_size >> 20)
    return cache


def _delegate(owner: str, name: str) -> property:
    """An attribute kept by the component ``owner`` (read and set through the VFS)."""
    return property(lambda self: getattr(getattr(self, owner), name),
                    lambda self, value: setattr(getattr(self, owner), name, value))


class VFS:
    def __init__(self, meta: MetaClient, chunks: ChunkClient, config: MountConfig, *, chunk_size: int,
                 gc_grace: float = 30.0, shared: bool = False, disk_cache: DiskCache | None = None,
                 page_store=None):
        self.meta = meta
        self.chunks = chunks
        self.cfg = config
        self.chunk_size = chunk_size
        self.gc_grace = gc_grace
        #: Other mounts use the same metadata (a cluster lake): orphans may be theirs.
        self.shared = shared
        #: Dataset mode: files the read plan fetched are stored in the kernel's page cache with
        #: ``page_store`` (pyfuse3.notify_store), so the loader's reads never reach the daemon.
        self.pusher = PageCachePusher(page_store) if page_store is not None and config.dataset else None
        self.stats = Stats()
        self.writer = Writer(meta, chunks, chunk_size=chunk_size, budget=config.dirty_budget,
                             pack_delay=config.pack_delay)
        self.kernel = KernelPages()
        self.reader = Reader(meta, chunks, self.writer, config, chunk_size=chunk_size, stats=self.stats,
                             kernel=self.kernel, disk_cache=disk_cache, pusher=self.pusher)
        # Local peers answer in microseconds and the daemon is CPU-bound on them: two fetches in
        # flight keep the disk busy; peer servers have network latency to hide, so eight.
        local = all(isinstance(s, LocalDirStore) for s in chunks.stores.values())
        self.control = ControlFiles(meta, self.reader.fetch_file, config, parallel=2 if local else 8,
                                    budget=self.reader.ahead, stats=self.stats, pusher=self.pusher)
        self.compactor = Compactor(meta, chunks, self.writer.next_chunk_id, chunk_size=chunk_size,
                                   interval=config.compact_interval)
        self.handles = HandleTable()
        self.refs = InodeRefs(meta, self.writer, self.handles, self.kernel, shared=shared,
                              shared_grace=config.entry_timeout + 5.0)
        #: The kernel's lookup count per inode (kept by ``refs``).
        self.lookups = self.refs.lookups
        self._listings: OrderedDict[tuple[int, int, int], tuple[float, list]] = OrderedDict()
        self._nospace_logged = self._statfs_logged = -1e9

    # The daemon's hooks, kept by their owners: the reader reports reads, the control files show
    # the daemon's metrics and take plans from its socket.
    on_read = _delegate("reader", "on_read")
    stats_source = _delegate("control", "stats_source")
    config_source = _delegate("control", "config_source")
    plan_socket = _delegate("control", "plan_socket")

    def take_plan(self, cred: Credentials, text: str) -> None:
        self.control.take_plan(cred, text)

    def plan_report(self, cred: Credentials) -> bytes:
        return self.control.plan_report(cred)

    def forget_layout(self, chunk_id: int) -> None:
        """A chunk's shards moved (repair): read its record afresh next time."""
        self.reader.forget_layout(chunk_id)

    def handle_pid(self, fh: int) -> int:
        return self.handles.pid(fh)

    def set_read_only(self, read_only: bool) -> bool:
        """Follow the kernel's read-only flag after ``mount -o remount,ro|rw``; returns the new state.
        A dataset mount stays read-only: its caches hold attributes and listings for an hour."""
        read_only = read_only or self.cfg.dataset
        if read_only != self.cfg.read_only:
            self.cfg = replace(self.cfg, read_only=read_only)
        return read_only

    # --------------------------------------------------------------- lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        self.writer.start(nursery)
        self.reader.start(nursery)
        self.control.start(nursery)
        # Frees what a crash left behind (embedded lakes). A read-only VFS leaves the lake as it
        # is: it may be the Python client reading beside the mount that owns the lake.
        await self.refs.start(nursery, free_orphans=not self.cfg.read_only)
        if not self.cfg.read_only and await self.meta.stored_data() is None:
            await self.meta.apply(InitUsage())  # a lake from before `df` counted its own data
        nursery.start_soon(collect_every, max(1.0, self.gc_grace / 3), self.collect_garbage)
        if not self.cfg.read_only and self.cfg.compact_interval > 0:
            nursery.start_soon(self.compactor.run)

    async def shutdown(self) -> None:
        if self.pusher is not None:
            await trio.to_thread.run_sync(self.pusher.close)
        await self.writer.shutdown()
        await self.refs.forget_all()
        await self._durable()

    # ----------------------------------------------------------------- helpers

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise E.NameTooLong()

    def _overlay_attr(self, inode: Inode) -> Inode:
        return self.writer.overlay_attr(inode)

    def _ref(self, inode: Inode) -> Inode:
        self.refs.ref(inode.ino)
        return self._overlay_attr(inode)

    @staticmethod
    def _now() -> int:
        return time.time_ns()

    # -------------------------------------------------------------- namespace

    async def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Inode:
        self._check_name(name)
        if is_control_name(parent, name):
            return control_inode(CONTROL_FILES[name][0])
        with self.refs.resolving():
            if name == b".":
                return self._ref(await self.meta.getattr(parent))
            if name == b"..":
                pinode = await self.meta.getattr(parent)
                return self._ref(await self.meta.getattr(pinode.parent or ROOT_INO))
            return self._ref(await self.meta.lookup(parent, name))

    async def forget(self, items: list[tuple[int, int]]) -> None:
        await self.refs.forget([(ino, n) for ino, n in items if not is_control(ino)])

    async def getattr(self, ino: int) -> Inode:
        if is_control(ino):
            return control_inode(ino)
        return self._overlay_attr(await self.meta.getattr(ino))

    async def setattr(self, ino: int, changes: AttrChanges, ctx: Ctx) -> Inode:
        """``changes`` keys: mode, uid, gid, size, atime_ns, mtime_ns (UTIME_NOW already resolved)."""
        if is_control(ino):
            return self.control.setattr(ino)
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
        await self.meta.apply(Setattr(ino, changes, now))
        if "size" in changes:
            self.kernel.changed(ino)
        return self._overlay_attr(await self.meta.getattr(ino))

    async def readlink(self, ino: int) -> bytes:
        return await self.meta.readlink(ino)

    def _writable(self) -> None:
        if self.cfg.read_only:
            raise E.LakeError("read-only mount", err=errno.EROFS)

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Inode:
        self._writable()
        self._check_name(name)
        if is_control_name(parent, name):
            raise E.Exists("the mount's control file")
        ino, data = await self.meta.apply(Mknod(parent, name, mode, rdev, ctx.uid, ctx.gid, self._now()))
        return self._ref(Inode.from_bytes(ino, data))  # the command answers with the new inode

    async def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Inode:
        return await self.mknod(parent, name, st.S_IFDIR | (mode & 0o7777), 0, ctx)

    async def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Inode:
        self._writable()
        self._check_name(name)
        ino, data = await self.meta.apply(Symlink(parent, name, target, ctx.uid, ctx.gid, self._now()))
        return self._ref(Inode.from_bytes(ino, data))

    async def link(self, ino: int, parent: int, name: bytes, ctx: Ctx) -> Inode:
        self._writable()
        self._check_name(name)
        ino, data = await self.meta.apply(Link(ino, parent, name, self._now()))
        return self._ref(Inode.from_bytes(ino, data))

    @staticmethod
    def _not_control(parent: int, name: bytes) -> None:
        if is_control_name(parent, name):
            raise E.NotPermitted("the mount's control files cannot be removed or renamed")

    async def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        self._check_name(name)
        self._not_control(parent, name)
        ino, nlink = await self.meta.apply(Unlink(parent, name, self._now()))
        if nlink == 0:
            await self.refs.unlinked(ino)

    async def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        self._check_name(name)
        ino, _ = await self.meta.apply(Rmdir(parent, name, self._now()))
        await self.refs.unlinked(ino)

    async def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int,
                     ctx: Ctx) -> None:
        self._writable()
        self._check_name(name)
        self._check_name(newname)
        self._not_control(parent, name)
        self._not_control(newparent, newname)
        _moved, replaced, replaced_nlink = await self.meta.apply(
            Rename(parent, name, newparent, newname, flags, self._now()))
        if replaced and replaced_nlink == 0:
            await self.refs.unlinked(replaced)

    # ----------------------------------------------------------------- files

    async def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx) -> tuple[int, Inode, bool]:
        inode = await self.mknod(parent, name, st.S_IFREG | (mode & 0o7777), 0, ctx)
        fh, _keep, direct = await self._open_handle(inode, flags, ctx.pid)
        return fh, inode, direct

    async def open(self, ino: int, flags: int, ctx: Ctx) -> tuple[int, bool, bool]:
        """Returns (fh, keep_cache, direct_io)."""
        if is_control(ino):
            return self.handles.add(self.control.open(ino, flags, ctx.uid, ctx.gid, ctx.pid)), False, True
        self.control.file_opened(ctx.uid, ino)
        if flags & O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            self._writable()
        inode = self._overlay_attr(await self.meta.getattr(ino))  # buffered bytes count too
        if inode.is_dir:
            raise E.IsADir()
        if flags & os.O_TRUNC and flags & O_ACCMODE != os.O_RDONLY and inode.size:
            inode = await self.setattr(ino, {"size": 0}, ctx)
        opened = await self._open_handle(self._overlay_attr(inode), flags, ctx.pid)
        if not opened[1] and flags & O_ACCMODE != os.O_WRONLY:  # a read will come to us, not the page cache
            self.reader.opened(ino, inode.size)
        return opened

    async def _open_handle(self, inode: Inode, flags: int, pid: int = 0) -> tuple[int, bool, bool]:
        fh = self.handles.add(Handle(inode.ino, flags, pid, profile=inode.profile))
        keep = self.kernel.keep_on_open(inode.ino, inode.size, inode.mtime_ns)
        direct = bool(flags & getattr(os, "O_DIRECT", 0o40000))
        return fh, keep, direct

    async def write(self, fh: int, off: int, data: bytes | memoryview) -> int:
        h = self.handles.get(fh)
        if isinstance(h, ControlHandle):
            return self.control.write(h, data)
        h = self.handles.file(fh)
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
            self.control.flush(h)
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
        h = self.handles.file(fh)
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
        h = self.handles.pop(fh)
        if isinstance(h, ControlHandle):
            self.control.flush(h)  # its last, unterminated line
        if not isinstance(h, Handle):
            return
        if h.wrote:
            try:
                await self.writer.close(h.ino)
            except E.LakeError as exc:  # the bytes stay buffered and retried (writer docstring)
                log.error("inode %d: data written before close is not stored yet: %s", h.ino, exc)
            try:
                inode = await self.meta.getattr(h.ino)
                self.kernel.remember(h.ino, inode.size, inode.mtime_ns)
            except E.NotFound:
                pass
        await self.refs.maybe_release(h.ino)

    async def read(self, fh: int, off: int, size: int) -> Buffer:
        h = self.handles.get(fh)
        if isinstance(h, ControlHandle):
            return self.control.read(h, off, size)
        h = self.handles.file(fh)
        return await self.reader.read(h.ino, off, size, pid=h.pid, ahead=h.ahead)

    # --------------------------------------------------------------- directories

    async def opendir(self, ino: int, ctx: Ctx) -> int:
        inode = await self.meta.getattr(ino)
        if not inode.is_dir:
            raise E.NotADir()
        return self.handles.add(DirHandle(ino))

    async def readdir(self, fh: int, start: int, limit: int = 256) -> list[tuple[bytes, Inode, int]]:
        """Entries after offset ``start``: '.' is offset 1, '..' 2, then cookie + 2.

        The caller reports how many it could use with :meth:`readdir_used` (lookup counts).
        """
        h = self.handles.directory(fh)
        out: list[tuple[bytes, Inode, int]] = []
        with self.refs.resolving():  # the caller takes its references before any release runs
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
            self.refs.ref(ino)

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh)

    # ---------------------------------------------------------------- xattrs

    async def setxattr(self, ino: int, name: bytes, value: bytes, ctx: Ctx) -> None:
        self._writable()
        if is_control(ino):
            raise E.NotPermitted("the mount's control files have no extended attributes")
        if name in POSIX_ACL_XATTRS:
            raise E.LakeError("POSIX ACLs are not supported", err=errno.EOPNOTSUPP)
        await self.meta.apply(Setxattr(ino, name, value, 0, self._now()))

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        if is_control(ino) or name in POSIX_ACL_XATTRS:
            raise E.NoData()  # getfacl then shows the mode, which is what the kernel enforces
        return await self.meta.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        if is_control(ino):
            return []
        return [n for n in await self.meta.listxattr(ino) if n not in POSIX_ACL_XATTRS]

    async def removexattr(self, ino: int, name: bytes, ctx: Ctx) -> None:
        self._writable()
        await self.meta.apply(Removexattr(ino, name, self._now()))

    # ---------------------------------------------------------------- misc

    async def access(self, ino: int, mode: int, ctx: Ctx) -> bool:
        inode = control_inode(ino) if is_control(ino) else await self.meta.getattr(ino)
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

    async def collect_garbage(self, grace: float | None = None) -> int:
        """Delete shards of chunks that nothing has referenced for ``grace`` seconds."""
        if self.cfg.read_only:
            return 0  # changes nothing (see start); a remount read-write collects again
        grace = self.gc_grace if grace is None else grace
        drained = await drain_delete_queue(self.meta, self.chunks, limit=256,
                                           older_than_ns=self._now() - int(grace * 1e9),
                                           on_deleted=self.reader.drop_chunk)
        return drained.done
