"""The client's side of the trio thread: paths, permissions and the kernel's order of errors, over
the same :class:`~lakefs_fuse.mount.vfs.VFS` a mount serves.

A mount gets paths cut into (directory inode, name) steps, permission checks
(``default_permissions``) and the precedence of errors from the kernel; here :class:`Session`
does that part itself and then calls the VFS exactly as ``mount/operations.py`` does, so the
bytes, the commands and the errors are the mount's. What the kernel would refuse before asking
the daemon is refused here in the same order (walk: ENOENT, ENOTDIR, EACCES on a directory without
search permission; open: EEXIST, EISDIR, EROFS, EACCES; create: EROFS, then EACCES; unlink,
rmdir, rename: the parents walked, then EROFS, then the names looked up).

A follower (an embedded lake read beside the mount that owns it) catches up with the mount's
commits before it resolves a path: what the mount committed before the call is seen.

Every method runs on the client's trio thread (:mod:`.portal`) and raises
:class:`~lakefs_fuse.errors.LakeError`; :mod:`.lake` turns those into ``OSError``.
Imports the mount layer (VFS, credentials), lake and meta (the inode record); never pyfuse3.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .. import errors as E
from ..lake.lake import Lake
from ..meta.schema import ROOT_INO, Inode
from ..meta.state import NAME_MAX
from ..mount.control import is_control_name
from ..mount.prefetch import Credentials
from ..mount.vfs import VFS, Ctx

#: Symlinks followed in one walk before ELOOP (the kernel's limit).
MAX_SYMLINKS = 40
#: Bytes one read call asks the VFS for (a whole 4 MiB chunk).
READ_PIECE = 4 << 20
#: Files :meth:`Session.read_files` reads at once (a batch of samples).
READ_PARALLEL = 8
#: Entries per readdir page.
PAGE = 1024
O_ACCMODE = os.O_ACCMODE


def _err(err: int, message: str) -> E.LakeError:
    return E.LakeError(message, err=err)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: credentials for permission checks and the VFS's context (its umask is read at
    each create, :func:`umask`)."""

    cred: Credentials
    ctx: Ctx

    @classmethod
    def of_process(cls) -> Caller:
        """The calling process's effective ids and groups (kept while they stay the same)."""
        key = (os.getpid(), os.geteuid(), os.getegid())
        cached = _CALLERS.get(key)
        if cached is None:
            groups = frozenset(os.getgroups())
            cached = cls(Credentials(key[1], key[2], groups), Ctx(key[1], key[2], key[0], 0))
            _CALLERS.clear()
            _CALLERS[key] = cached
        return cached


_CALLERS: dict[tuple[int, int, int], Caller] = {}


def umask() -> int:
    """The process's umask without changing it (os.umask would, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def split(path: str | bytes) -> tuple[bool, list[bytes]]:
    """(ends with a slash, components) of a lake path; '' and '/' are the root."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise E.Invalid("embedded null byte")
    return raw.endswith(b"/"), [p for p in raw.split(b"/") if p and p != b"."]


class Session:
    """The VFS of one opened lake, reached by paths.

    ``catch_up``: the lake's metadata follows a mount's (``Lake.open(follow=True)``); it runs
    before each walk.
    """

    def __init__(self, lake: Lake, vfs: VFS, *, catch_up: Callable[[], object] | None = None):
        self.lake = lake
        self.vfs = vfs
        self.meta = vfs.meta
        self._catch_up = catch_up

    @property
    def read_only(self) -> bool:
        return self.vfs.cfg.read_only

    # ------------------------------------------------------------------ walking

    def refresh(self) -> None:
        if self._catch_up is not None:
            self._catch_up()

    async def _walk(self, parts: list[bytes], who: Caller, *, follow: bool) -> Inode:
        """The inode ``parts`` name, from the root; ``follow``: a final symlink is followed.

        A relative symlink continues the walk from the directory holding it; an absolute one
        points into the host's tree, which only a mount can reach (EXDEV).
        """
        node = await self.meta.getattr(ROOT_INO)
        dirs = [node]  # the directories walked, for '..'
        todo = parts[::-1]
        links = 0
        while todo:
            name = todo.pop()
            if not node.is_dir:
                raise E.NotADir()
            if not who.cred.may(node, os.X_OK):
                raise _err(errno.EACCES, "search permission denied")
            if name == b"..":
                if len(dirs) > 1:
                    dirs.pop()
                node = dirs[-1]
                continue
            if len(name) > NAME_MAX:
                raise E.NameTooLong()
            child = await self.meta.lookup(node.ino, name)
            if st.S_ISLNK(child.mode) and (follow or todo):
                links += 1
                if links > MAX_SYMLINKS:
                    raise _err(errno.ELOOP, "too many levels of symbolic links")
                target = await self.meta.readlink(child.ino)
                if target.startswith(b"/"):
                    raise _err(errno.EXDEV, "an absolute symlink points outside the lake; "
                                            "only a mount can follow it")
                if not target:
                    raise E.NotFound("an empty symbolic link")
                todo.extend(p for p in reversed(target.split(b"/")) if p and p != b".")
                continue  # from the directory holding the link
            node = child
            if node.is_dir:
                dirs.append(node)
        return self.vfs._overlay_attr(node)  # bytes a write handle buffered count in the size

    async def resolve(self, path: str | bytes, who: Caller, *, follow: bool = True) -> Inode:
        self.refresh()
        slash, parts = split(path)
        node = await self._walk(parts, who, follow=follow or slash)
        if slash and not node.is_dir:
            raise E.NotADir()
        return node

    async def parent_of(self, path: str | bytes, who: Caller) -> tuple[Inode, bytes]:
        """The directory holding the last component of ``path``, and that name."""
        self.refresh()
        _slash, parts = split(path)
        if not parts or parts[-1] == b"..":
            raise _err(errno.EBUSY, "the lake's root (or '..') cannot be created, removed or renamed")
        parent = await self._walk(parts[:-1], who, follow=True)
        if not parent.is_dir:
            raise E.NotADir()
        if not who.cred.may(parent, os.X_OK):
            raise _err(errno.EACCES, "search permission denied")
        if len(parts[-1]) > NAME_MAX:
            raise E.NameTooLong()
        return parent, parts[-1]

    async def _child(self, parent: Inode, name: bytes) -> Inode | None:
        try:
            return await self.meta.lookup(parent.ino, name)
        except E.NotFound:
            return None

    def _writable(self) -> None:
        if self.read_only:
            raise _err(errno.EROFS, "the lake is open read-only")

    def _may_change(self, parent: Inode, who: Caller, victim: Inode | None = None) -> None:
        """Write and search permission on ``parent``; with the sticky bit, owning ``victim`` too."""
        if not who.cred.may(parent, os.W_OK | os.X_OK):
            raise _err(errno.EACCES, "write permission denied on the directory")
        uid = who.cred.uid
        if victim is not None and parent.mode & st.S_ISVTX and uid not in (0, parent.uid, victim.uid):
            raise _err(errno.EPERM, "the directory is sticky and the entry is someone else's")

    # ------------------------------------------------------------------ queries

    async def stat(self, path: str | bytes, who: Caller, follow: bool = True) -> Inode:
        return await self.resolve(path, who, follow=follow)

    async def readlink(self, path: str | bytes, who: Caller) -> bytes:
        node = await self.resolve(path, who, follow=False)
        if not st.S_ISLNK(node.mode):
            raise E.Invalid("not a symbolic link")
        return await self.meta.readlink(node.ino)

    async def listdir(self, path: str | bytes, who: Caller) -> list[tuple[bytes, Inode]]:
        """Every entry of a directory (no '.' or '..'), with its attributes, in listing order."""
        node = await self.resolve(path, who)
        if not node.is_dir:
            raise E.NotADir()
        if not who.cred.may(node, os.R_OK):
            raise _err(errno.EACCES, "read permission denied on the directory")
        out: list[tuple[bytes, Inode]] = []
        after = 0
        while True:
            page = await self.meta.readdir(node.ino, after, PAGE)
            out.extend((name, self.vfs._overlay_attr(inode)) for name, inode, _cookie in page)
            if len(page) < PAGE:
                return out
            after = page[-1][2]

    # -------------------------------------------------------------------- files

    async def open(self, path: str | bytes, flags: int, mode: int, who: Caller) -> tuple[int, Inode]:
        """A handle of the file ``path`` names (created with O_CREAT), and its attributes."""
        slash, parts = split(path)
        if not parts or parts[-1] == b"..":  # the root, or a '..': a directory
            await self.resolve(path, who)
            raise E.IsADir()
        parent, name = await self.parent_of(path, who)
        if slash and flags & os.O_CREAT:
            raise E.IsADir()  # the kernel's answer to creating 'name/', before it looks
        node = await self._child(parent, name)
        writing = flags & O_ACCMODE != os.O_RDONLY
        if node is not None and st.S_ISLNK(node.mode) and not flags & os.O_NOFOLLOW:
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise E.Exists()
            node = await self.resolve(path, who, follow=True)
        if node is not None and slash and not node.is_dir:
            raise E.NotADir()
        if node is None:
            if not flags & os.O_CREAT:
                raise E.NotFound()
            self._writable()
            self._may_change(parent, who)
            if is_control_name(parent.ino, name):
                raise E.Exists("a name the mount keeps for its control files")
            fh, inode, _direct = await self.vfs.create(parent.ino, name, mode & ~umask() & 0o7777,
                                                       flags, who.ctx)
            await self.vfs.forget([(inode.ino, 1)])  # create took a lookup reference for the kernel
            return fh, inode
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise E.Exists()
        if st.S_ISLNK(node.mode):
            raise _err(errno.ELOOP, "the file is a symbolic link (O_NOFOLLOW)")
        if node.is_dir:
            if writing or flags & os.O_CREAT:
                raise E.IsADir()
            raise E.IsADir("a directory cannot be opened as a file here; use listdir")
        if writing or flags & os.O_TRUNC:
            self._writable()
        need = (os.R_OK if flags & O_ACCMODE in (os.O_RDONLY, os.O_RDWR) else 0) | \
               (os.W_OK if writing or flags & os.O_TRUNC else 0)
        if not who.cred.may(node, need):
            raise _err(errno.EACCES, "permission denied")
        if not st.S_ISREG(node.mode):
            raise _err(errno.ENXIO, "only regular files can be opened through the client")
        fh, _keep, _direct = await self.vfs.open(node.ino, flags & ~os.O_CREAT, who.ctx)
        if flags & os.O_TRUNC:  # the open changed the size
            node = await self.meta.getattr(node.ino)
        return fh, self.vfs._overlay_attr(node)

    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        return await self.vfs.read(fh, off, size)

    async def read_to_end(self, fh: int, off: int) -> bytes:
        """Everything from ``off`` to the end of file, read in whole-chunk pieces."""
        pieces = []
        while True:
            got = await self.vfs.read(fh, off, READ_PIECE)
            if not got:
                break
            pieces.append(got)
            off += len(got)
            if len(got) < READ_PIECE:
                # A short read is the end of the file only if the size says so (a hole reads as zeros).
                break
        return pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else b"".join(pieces)

    async def read_file(self, path: str | bytes, who: Caller) -> bytes:
        """A whole file, in one trip to the trio thread: open, read, release."""
        fh, _inode = await self.open(path, os.O_RDONLY, 0, who)
        try:
            return await self.read_to_end(fh, 0)
        finally:
            await self.vfs.release(fh)

    async def read_files(self, paths: list[str | bytes], who: Caller,
                         parallel: int = READ_PARALLEL) -> list[bytes | E.LakeError]:
        """Whole files, ``parallel`` at a time, in one trip to the trio thread: a batch of samples.
        Each item is the file's bytes or the error reading it raised."""
        out: list[bytes | E.LakeError] = [b""] * len(paths)
        limit = trio.Semaphore(parallel)

        async def one(i: int) -> None:
            async with limit:
                try:
                    out[i] = await self.read_file(paths[i], who)
                except E.LakeError as exc:
                    out[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(paths)):
                nursery.start_soon(one, i)
        return out

    async def write(self, fh: int, off: int | None, data: bytes | memoryview) -> int:
        """Write at ``off``, or at the end of file (``None``: O_APPEND)."""
        if off is None:
            off = self.vfs._overlay_attr(await self.meta.getattr(self.vfs.handles.file(fh).ino)).size
        return await self.vfs.write(fh, off, data)

    async def size(self, fh: int) -> int:
        return self.vfs._overlay_attr(await self.meta.getattr(self.vfs.handles.file(fh).ino)).size

    async def truncate(self, fh: int, size: int, who: Caller) -> None:
        self._writable()
        await self.vfs.setattr(self.vfs.handles.file(fh).ino, {"size": size}, who.ctx)

    async def fsync(self, fh: int) -> None:
        await self.vfs.fsync(fh, False)

    async def close(self, fh: int, wrote: bool) -> None:
        """flush (the write-back errors of the file, as close(2) reports them) and release."""
        try:
            if wrote:
                await self.vfs.flush(fh)
        finally:
            await self.vfs.release(fh)

    # ------------------------------------------------------------------ changes

    async def mkdir(self, path: str | bytes, mode: int, who: Caller) -> None:
        parent, name = await self.parent_of(path, who)
        if await self._child(parent, name) is not None:
            raise E.Exists()
        self._writable()
        self._may_change(parent, who)
        if is_control_name(parent.ino, name):
            raise E.Exists("a name the mount keeps for its control files")
        inode = await self.vfs.mkdir(parent.ino, name, mode & ~umask() & 0o7777, who.ctx)
        await self.vfs.forget([(inode.ino, 1)])

    async def remove(self, path: str | bytes, who: Caller, directory: bool) -> None:
        """unlink(2) (``directory=False``) or rmdir(2)."""
        parent, name = await self.parent_of(path, who)
        self._writable()  # the kernel asks for a writable mount before it looks the name up
        node = await self._child(parent, name)
        if node is None:
            raise E.NotFound()
        if directory and not node.is_dir:
            raise E.NotADir()
        if not directory and node.is_dir:
            raise E.IsADir()
        if split(path)[0] and not node.is_dir:
            raise E.NotADir()  # 'file/' names a directory
        self._may_change(parent, who, node)
        if directory:
            await self.vfs.rmdir(parent.ino, name, who.ctx)
        else:
            await self.vfs.unlink(parent.ino, name, who.ctx)

    async def rename(self, src: str | bytes, dst: str | bytes, who: Caller) -> None:
        # The kernel's order: both parents walked, a writable mount asked for, then the names.
        sparent, sname = await self.parent_of(src, who)
        dparent, dname = await self.parent_of(dst, who)
        self._writable()
        node = await self._child(sparent, sname)
        if node is None:
            raise E.NotFound()
        victim = await self._child(dparent, dname)
        if not node.is_dir and (split(src)[0] or split(dst)[0]):
            raise E.NotADir()  # 'file/' names a directory
        self._may_change(sparent, who, node)
        self._may_change(dparent, who, victim)
        if node.is_dir and sparent.ino != dparent.ino and not who.cred.may(node, os.W_OK):
            raise _err(errno.EACCES, "moving a directory rewrites its '..': write permission needed")
        await self.vfs.rename(sparent.ino, sname, dparent.ino, dname, 0, who.ctx)

    async def symlink(self, target: str | bytes, path: str | bytes, who: Caller) -> None:
        parent, name = await self.parent_of(path, who)
        if await self._child(parent, name) is not None:
            raise E.Exists()
        if split(path)[0]:
            raise E.NotFound("'name/' names a directory; a symbolic link is not one")
        self._writable()
        self._may_change(parent, who)
        inode = await self.vfs.symlink(parent.ino, name, os.fsencode(target), who.ctx)
        await self.vfs.forget([(inode.ino, 1)])

    async def chmod(self, path: str | bytes, mode: int, who: Caller) -> None:
        node = await self.resolve(path, who)
        self._writable()
        if who.cred.uid not in (0, node.uid):
            raise _err(errno.EPERM, "only the owner may change the mode")
        await self.vfs.setattr(node.ino, {"mode": mode & 0o7777}, who.ctx)

    # ------------------------------------------------------------------ prefetch

    async def prefetch(self, paths: list[str | bytes], who: Caller, reset: bool) -> None:
        """The read plan: these files are opened next, in this order (the mount's .prefetch)."""
        lines = [b"--reset"] if reset else []
        lines += [b"/".join(split(p)[1]) for p in paths]
        self.vfs.take_plan(who.cred, b"\n".join(lines).decode("utf-8", "surrogateescape") + "\n")
