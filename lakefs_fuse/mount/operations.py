"""The pyfuse3 adapter: unpack arguments, await the VFS, pack the result. Nothing else.

Every handler goes through :func:`fuse_errors`: a :class:`LakeError` becomes its errno; any
other exception is logged with its traceback and answered with EIO, because an exception
other than ``FUSEError`` escaping a handler ends ``pyfuse3.main`` and kills the mount. It also
opens the request's metadata budget: all metadata calls of one request share one
``--meta-timeout`` of waiting (``meta/budget.py``; not for embedded metadata, whose calls never wait).
In-process tests set ``LAKEFS_FUSE_STRICT=1`` to re-raise instead.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import time

import pyfuse3

from ..errors import LakeError, NotFound
from ..meta.budget import metadata_budget
from ..meta.client import LocalMeta
from ..meta.commands import AttrChanges
from ..meta.schema import Inode
from ..metrics import FuseRecorder
from .vfs import VFS, Ctx

log = logging.getLogger(__name__)
STRICT = os.environ.get("LAKEFS_FUSE_STRICT") == "1"


#: Requests that carry a file handle instead of a request context: their process is the opener's.
_BY_HANDLE = frozenset({"read", "write", "flush", "release", "fsync"})


def fuse_errors(fn):
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        err = 0
        try:
            if not self.budgeted:  # embedded metadata: calls never wait for a service
                return await fn(self, *args, **kwargs)
            with metadata_budget():
                return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError as exc:
            err = exc.errno
            raise
        except LakeError as exc:
            err = exc.errno
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            err = errno.EIO
            log.exception("unexpected error in %s", op)
            if STRICT:
                raise
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if self.recorder is not None:
                self.recorder.record(op, time.perf_counter() - t0, err, self._pid(op, args))
    return wrapper


def _ctx(ctx) -> Ctx:
    return Ctx(ctx.uid, ctx.gid, ctx.pid, ctx.umask)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: VFS, recorder: FuseRecorder | None = None):
        super().__init__()
        self.vfs = vfs
        self.on_init = None
        #: FUSE request latency/errors by op and time per process (metrics, .stats, `top`).
        self.recorder = recorder
        #: Requests share a metadata budget only when metadata calls can wait (a metadata service):
        #: with the embedded lake's local state machine there is nothing to bound.
        self.budgeted = not isinstance(vfs.meta, LocalMeta)

    def _pid(self, op: str, args: tuple) -> int:
        if not args:
            return 0
        pid = getattr(args[-1], "pid", None)  # the RequestContext, last when a request has one
        if pid is not None:
            return pid
        return self.vfs.handle_pid(args[0]) if op in _BY_HANDLE else 0

    def init(self):
        if self.on_init is not None:
            self.on_init()

    def entry(self, inode: Inode) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode.ino
        e.generation = 0
        e.entry_timeout = self.vfs.cfg.entry_timeout
        e.attr_timeout = self.vfs.cfg.attr_timeout
        e.st_mode = inode.mode
        e.st_nlink = inode.nlink
        e.st_uid = inode.uid
        e.st_gid = inode.gid
        e.st_rdev = inode.rdev
        e.st_size = inode.size
        e.st_blksize = 1 << 20
        e.st_blocks = inode.blocks
        e.st_atime_ns = inode.atime_ns
        e.st_mtime_ns = inode.mtime_ns
        e.st_ctime_ns = inode.ctime_ns
        return e

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        try:
            inode = await self.vfs.lookup(parent_inode, name, _ctx(ctx) if ctx else Ctx())
        except NotFound:
            if not self.vfs.cfg.dataset:
                raise
            # Dataset mode: the kernel caches "no such name" too (an entry with inode 0).
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = self.vfs.cfg.entry_timeout
            return e
        return self.entry(inode)

    async def forget(self, inode_list):
        # forget gets no reply: any exception here, FUSEError included, would end the FUSE session.
        try:
            await self.vfs.forget(list(inode_list))
        except Exception:
            log.exception("forget failed")

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        return self.entry(await self.vfs.getattr(inode))

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        changes: AttrChanges = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_size:
            changes["size"] = attr.st_size
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        return self.entry(await self.vfs.setattr(inode, changes, _ctx(ctx)))

    @fuse_errors
    async def readlink(self, inode, ctx):
        return await self.vfs.readlink(inode)

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self.entry(await self.vfs.mknod(parent_inode, name, mode, rdev, _ctx(ctx)))

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self.entry(await self.vfs.mkdir(parent_inode, name, mode, _ctx(ctx)))

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        await self.vfs.unlink(parent_inode, name, _ctx(ctx))

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        await self.vfs.rmdir(parent_inode, name, _ctx(ctx))

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        return self.entry(await self.vfs.symlink(parent_inode, name, target, _ctx(ctx)))

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.vfs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, _ctx(ctx))

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self.entry(await self.vfs.link(inode, new_parent_inode, new_name, _ctx(ctx)))

    @fuse_errors
    async def open(self, inode, flags, ctx):
        fh, keep, direct = await self.vfs.open(inode, flags, _ctx(ctx))
        if not keep and self.vfs.shared:
            # Another mount may have changed the file: drop the kernel's cached size so a read
            # past it asks us (attribute-only invalidation takes no inode lock, so it is safe here).
            with contextlib.suppress(OSError):  # ENOENT: the kernel has already forgotten the inode
                pyfuse3.invalidate_inode(inode, attr_only=True)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep, direct_io=direct)

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, inode, direct = await self.vfs.create(parent_inode, name, mode, flags, _ctx(ctx))
        return pyfuse3.FileInfo(fh=fh, direct_io=direct), self.entry(inode)

    @fuse_errors
    async def read(self, fh, off, size):
        return await self.vfs.read(fh, off, size)

    @fuse_errors
    async def write(self, fh, off, buf):
        return await self.vfs.write(fh, off, buf)

    @fuse_errors
    async def flush(self, fh):
        await self.vfs.flush(fh)

    @fuse_errors
    async def release(self, fh):
        await self.vfs.release(fh)

    @fuse_errors
    async def fsync(self, fh, datasync):
        await self.vfs.fsync(fh, datasync)

    @fuse_errors
    async def opendir(self, inode, ctx):
        return await self.vfs.opendir(inode, _ctx(ctx))

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        while True:
            entries = await self.vfs.readdir(fh, start_id)
            if not entries:
                return
            for name, inode, next_id in entries:
                if not pyfuse3.readdir_reply(token, name, self.entry(inode), next_id):
                    return
                self.vfs.readdir_used(name, inode.ino)
                start_id = next_id

    @fuse_errors
    async def releasedir(self, fh):
        await self.vfs.releasedir(fh)

    @fuse_errors
    async def fsyncdir(self, fh, datasync):
        await self.vfs.fsyncdir(fh)

    @fuse_errors
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        for key, value in (await self.vfs.statfs()).items():
            setattr(s, key, value)
        return s

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        await self.vfs.setxattr(inode, name, value, _ctx(ctx))

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        return await self.vfs.getxattr(inode, name)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        return await self.vfs.listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        await self.vfs.removexattr(inode, name, _ctx(ctx))

    @fuse_errors
    async def access(self, inode, mode, ctx):
        return await self.vfs.access(inode, mode, _ctx(ctx))
