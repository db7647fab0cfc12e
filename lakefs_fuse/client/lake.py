"""``lakefs_fuse.connect``: a lake in the calling process, with os-like calls and file objects.

:class:`LakeClient` is the synchronous face: each call is handed to the lake's trio thread
(:mod:`.portal`) and runs there through :class:`~.session.Session` over the same VFS a mount
serves -- the same metadata commands, chunk client, memory and disk caches, read-ahead, read
plans and write-back. Errors are ``OSError`` with the errno a mount gives for the same call.

How a lake is opened (:func:`connect`):

* ``data=DIR`` (an embedded lake): writable when no mount or other client holds the lake (the
  client takes the lake's lock, as a mount does); otherwise -- or with ``read_only=True`` -- a
  *follower*: it reads what the mount has committed (a closed file is committed at once with the
  mount's ``--pack-delay 0``, else within the delay; ``fsync`` commits at once), and every change
  is refused with EROFS. ``read_only=False`` insists on writing (EBUSY while a mount holds it).
* ``meta="H:P,..."`` with ``secret_file`` (a cluster lake): read and written beside any number of
  mounts, close-to-open: a file closed here is seen by every open after it, anywhere.

A client writes with ``pack_delay=0`` unless told otherwise: ``close()`` returns once the file's
bytes are committed (the chunk's shards written, the metadata pointing at them), so a process
that exits right after loses nothing. :meth:`LakeClient.close` (or the end of a ``with`` block, or
interpreter exit) syncs the lake.

Fork safety: a child process (a DataLoader worker) must not use the parent's trio thread,
sockets or RocksDB handle. Every call checks the process id; the first call in a child opens the
lake afresh there (an embedded lake the parent holds for writing is then opened as a follower)
and abandons the inherited objects without closing them (:func:`.portal.abandon`). At the fork
itself the child drops its copies of the lake locks' descriptors (an idle child must not keep a
closed lake locked), and a multiprocessing child closes what it opened at its exit (it ends with
``os._exit``: no ``atexit``). :meth:`LakeClient.close` closes the files still open first, so
their buffered bytes are written, as the interpreter writes those of files left open at exit.

Imports the mount layer (VFS, disk cache, config), lake, and the client's own modules.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import logging
import os
import stat as st
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from .. import errors as E
from ..config import META_TIMEOUT, MiB, MountConfig, default_cache_dir, parse_addresses, parse_size
from ..errors import InUse, UserError
from ..lake.lake import Lake, in_use
from ..meta.schema import Inode
from ..mount.vfs import VFS, open_disk_cache
from .errmap import oserror as _oserror
from .files import RawLakeFile, open_mode
from .portal import Portal, PortalClosed, abandon
from .session import Caller, Session

T = TypeVar("T")
PathArg = str | bytes | os.PathLike[str]

#: Memory cache of chunk ranges per client process (a mount's default is 512 MiB; DataLoader
#: workers each have their own).
CLIENT_MEMORY_CACHE = 256 * MiB


def _fspath(path: PathArg) -> str | bytes:
    """The path as str or bytes; ValueError for a NUL byte, as every ``os`` call and ``open`` give."""
    p = os.fspath(path)
    if isinstance(p, str) and p.startswith("lakefs://"):
        raise ValueError(f"{p}: a lake path, not a URL (fsspec takes URLs: fsspec.open('lakefs://...'))")
    if ("\0" if isinstance(p, str) else b"\0") in p:  # type: ignore[operator]
        raise ValueError("embedded null byte")
    return p


@dataclass(frozen=True)
class ClientConfig:
    """What :func:`connect` was given: enough to open the same lake again (in a forked child)."""

    data: Path | None = None
    meta: tuple[str, ...] = ()
    secret_file: Path | None = None
    tls_ca: Path | None = None
    read_only: bool | None = None
    memory_cache: int = CLIENT_MEMORY_CACHE
    cache_dir: Path | None = None
    cache_size: int = 10 * 1024 * MiB
    pack_delay: float = 0.0
    meta_timeout: float = META_TIMEOUT
    settings: dict[str, Any] = field(default_factory=dict)

    def mount_config(self, read_only: bool) -> MountConfig:
        cfg = MountConfig.unmounted(pack_delay=self.pack_delay)
        return replace(cfg, data_dir=self.data, meta=self.meta, secret_file=self.secret_file, tls_ca=self.tls_ca,
                       read_only=read_only, memory_cache=self.memory_cache, cache_dir=self.cache_dir,
                       cache_size=self.cache_size, meta_timeout=self.meta_timeout, **self.settings)


@contextlib.asynccontextmanager
async def open_session(cc: ClientConfig) -> AsyncIterator[Session]:
    """The lake ``cc`` names, opened in this trio run, with a started VFS over it."""
    import trio

    if cc.meta:
        lake_cm = Lake.connect(list(cc.meta), cc.secret_file, tls_ca=cc.tls_ca, op_timeout=cc.meta_timeout)
        read_only = bool(cc.read_only)
    else:
        assert cc.data is not None, "connect() checked that a lake was named"
        follow = cc.read_only is True or (cc.read_only is None and in_use(cc.data))
        try:
            lake = Lake.open(cc.data, lock=not follow, follow=follow)
        except InUse:
            if cc.read_only is None:  # lost a race with a mount
                lake = Lake.open(cc.data, follow=True)
                follow = True
            else:
                raise
        lake_cm = lake.closing()
        read_only = follow
    async with lake_cm as lake:
        cfg = cc.mount_config(read_only)
        if not read_only:  # a lake never writes into storage that holds another lake's shards
            await lake.check_remote_owners()
        disk = open_disk_cache(cfg, lake.uuid, busy_level=logging.DEBUG)  # a mount or a sibling has it
        vfs = VFS(lake.meta, lake.chunks, cfg, chunk_size=lake.config.chunk_size, shared=bool(cc.meta),
                  disk_cache=disk)
        # A mount's open-time read hint overlaps the disk with the kernel's round trip to the next
        # READ; the client reads right after its open, in the same call, so the hint would only
        # cost (measured: 1,000 cold 110 KiB files, -80..110 us of CPU and +8..34 % files/s off).
        vfs.reader.hint_opens = False
        sm = lake.sm
        catch_up = sm.catch_up if sm is not None and not cc.meta and read_only else None
        try:
            async with trio.open_nursery() as nursery:
                await vfs.start(nursery)
                yield Session(lake, vfs, catch_up=catch_up)
                if not read_only:
                    await vfs.shutdown()  # seal what is buffered; sync shards, then metadata
                nursery.cancel_scope.cancel()
        finally:
            if disk is not None:
                disk.close()


_OPEN: weakref.WeakSet[LakeClient] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    """Interpreter exit: every client still open seals and syncs what it holds."""
    for client in list(_OPEN):
        with contextlib.suppress(Exception):
            client.close()


def _release_locks_in_child() -> None:
    """After a fork, in the child: drop its copies of the lake locks' descriptors at once. A child
    that never uses its inherited client (a DataLoader worker of another dataset, a subprocess
    helper) would otherwise keep an embedded lake locked after the parent closed it."""
    for client in list(_OPEN):  # (no lock taken: another thread of the parent may have held it)
        session = client._session
        if session is not None:
            with contextlib.suppress(Exception):
                session.lake.forked()


os.register_at_fork(after_in_child=_release_locks_in_child)


def _close_at_child_exit(client: LakeClient) -> None:
    """In a multiprocessing child (a DataLoader worker) the client is closed by multiprocessing's
    exit hook: such a child ends with ``os._exit``, which runs no ``atexit`` function, and a
    follower left open would leave its files in the temporary directory (one per worker per
    epoch) and a writer its buffered bytes unsealed."""
    import multiprocessing
    from multiprocessing import util

    if multiprocessing.parent_process() is None:
        return
    ref = weakref.ref(client)

    def close() -> None:
        c = ref()
        if c is not None:
            with contextlib.suppress(Exception):
                c.close()

    util.Finalize(client, close, exitpriority=10)


def lake_error_of(exc: BaseException) -> E.LakeError | None:
    """The lake error ``exc`` is or carries: the lake's shutdown runs in a nursery, which wraps
    what it raises (a seal that could not store its bytes) in an exception group."""
    if isinstance(exc, E.LakeError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = lake_error_of(inner)
            if found is not None:
                return found
    return None


def _unpickled(config: ClientConfig) -> LakeClient:
    return LakeClient(config, open_now=False)


class LakeClient:
    """An opened lake. Use :func:`connect` to make one; ``with connect(...) as lake:`` closes it."""

    def __init__(self, config: ClientConfig, *, open_now: bool = True):
        self.config = config
        self._lock = threading.Lock()
        self._portal: Portal[Session] | None = None
        self._session: Session | None = None
        self._closed = False
        #: File objects :meth:`open` returned in this process, flushed and closed by :meth:`close`.
        self._files: weakref.WeakSet[Any] = weakref.WeakSet()
        if open_now:
            self._portal_now()
        with _OPEN_LOCK:
            _OPEN.add(self)

    def __reduce__(self) -> tuple[Any, tuple[ClientConfig]]:
        """Pickled (a dataset sent to spawned workers), a client travels as its ``connect``
        arguments and opens the lake in the receiving process at its first call."""
        return _unpickled, (self.config,)

    # ------------------------------------------------------------------ plumbing

    def _portal_now(self) -> tuple[Portal[Session], Session]:
        """The portal of this process: opened again after a fork (the parent's is abandoned)."""
        portal, session = self._portal, self._session
        if portal is not None and session is not None and portal.pid == os.getpid():
            return portal, session
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on a closed lake")
            portal, session = self._portal, self._session
            if portal is not None and portal.pid != os.getpid():
                # A forked child: the parent's thread, sockets and RocksDB handle are not ours.
                abandon(portal)
                self._files = weakref.WeakSet()  # the parent's: its buffers are not ours to flush
                if session is not None:
                    abandon(session)
                    session.lake.forked()  # the inherited lock fd (the lock stays the parent's)
                portal = session = None
            if portal is None or session is None:
                config = self.config
                portal = Portal(lambda: open_session(config))
                try:
                    session = portal.start()
                except UserError as exc:
                    raise OSError(exc.errno, str(exc)) from None  # EBUSY, ENOENT, EINVAL
                self._portal, self._session = portal, session
                _close_at_child_exit(self)
            return portal, session

    def _call(self, fn: Any, *args: Any, path: object = None) -> Any:
        portal, _session = self._portal_now()
        try:
            return portal.call(fn, *args)
        except E.LakeError as exc:
            raise _oserror(exc, path) from None
        except PortalClosed as exc:
            raise ValueError(str(exc)) from None

    @property
    def session(self) -> Session:
        return self._portal_now()[1]

    @property
    def read_only(self) -> bool:
        """Whether changes are refused (EROFS): asked for, or a follower beside a mount."""
        return self.session.read_only

    def close(self) -> None:
        """Close the files still open (their buffers written, as the interpreter does for files
        left open at exit), seal and sync what this process wrote, then close the lake. Raises if
        bytes that were accepted could not be stored."""
        failure = self._close_files()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            portal = self._portal
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if portal is not None and portal.pid == os.getpid():
            try:
                portal.close()
            except BaseException as exc:
                lake_error = lake_error_of(exc)
                if lake_error is None:
                    raise
                raise _oserror(lake_error) from None
        if failure is not None:
            raise failure

    def _close_files(self) -> OSError | None:
        """Close this process's open files; the first write-back error, if any."""
        portal = self._portal
        if self._closed or portal is None or portal.pid != os.getpid():
            return None
        failure = None
        for f in list(self._files):
            try:
                f.close()
            except OSError as exc:
                failure = failure or exc
            except ValueError:
                pass  # closed meanwhile by another thread
        return failure

    def __enter__(self) -> LakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = ",".join(self.config.meta) if self.config.meta else str(self.config.data)
        return f"<LakeClient {where}{' closed' if self._closed else ''}>"

    # ------------------------------------------------------------------ queries

    def stat(self, path: PathArg, *, follow_symlinks: bool = True) -> os.stat_result:
        p = _fspath(path)
        return stat_result(self._call(self.session.stat, p, Caller.of_process(), follow_symlinks, path=p))

    def lstat(self, path: PathArg) -> os.stat_result:
        return self.stat(path, follow_symlinks=False)

    def _stat_or_none(self, path: PathArg) -> os.stat_result | None:
        """For exists/isdir/isfile: None where the name is not there (a NUL byte is in no name,
        as ``os.path.exists`` says)."""
        p = os.fspath(path)
        if ("\0" if isinstance(p, str) else b"\0") in p:  # type: ignore[operator]
            return None
        try:
            return self.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, path: PathArg) -> bool:
        return self._stat_or_none(path) is not None

    def isdir(self, path: PathArg) -> bool:
        s = self._stat_or_none(path)
        return s is not None and st.S_ISDIR(s.st_mode)

    def isfile(self, path: PathArg) -> bool:
        s = self._stat_or_none(path)
        return s is not None and st.S_ISREG(s.st_mode)

    def readlink(self, path: PathArg) -> str:
        p = _fspath(path)
        return os.fsdecode(self._call(self.session.readlink, p, Caller.of_process(), path=p))

    def _entries(self, path: PathArg) -> tuple[str | bytes, list[tuple[bytes, Inode]]]:
        p = _fspath(path)
        return p, self._call(self.session.listdir, p, Caller.of_process(), path=p)

    def listdir(self, path: PathArg = "") -> list[str] | list[bytes]:
        p, entries = self._entries(path)
        if isinstance(p, bytes):
            return [name for name, _ in entries]
        return [os.fsdecode(name) for name, _ in entries]

    def scandir(self, path: PathArg = "") -> Iterator[DirEntry]:
        """Entries with their attributes, read with the listing (no call per ``stat()``)."""
        p, entries = self._entries(path)
        return iter([DirEntry(p, name, inode, self) for name, inode in entries])

    def walk(self, top: PathArg = "", topdown: bool = True, onerror: Any = None,
             followlinks: bool = False) -> Iterator[tuple[str, list[str], list[str]]]:
        """os.walk over the lake: one listing call per directory (plus a stat per symlink). As
        os.walk, a link to a directory is listed among the directories and entered only with
        ``followlinks``."""
        top_s = os.fsdecode(_fspath(top))
        try:
            entries = list(self.scandir(top_s))
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            return
        dirs: list[str] = []
        files: list[str] = []
        links: set[str] = set()
        for e in entries:
            try:
                is_dir = e.is_dir()
            except OSError:  # a link the client cannot follow (absolute, a loop): not a directory
                is_dir = False
            (dirs if is_dir else files).append(e.name)
            if is_dir and e.is_symlink():
                links.add(e.name)
        if topdown:
            yield top_s, dirs, files
        for name in dirs:  # (topdown: as the caller left the list)
            if followlinks or name not in links:
                yield from self.walk(_join(top_s, name), topdown, onerror, followlinks)
        if not topdown:
            yield top_s, dirs, files

    # -------------------------------------------------------------------- files

    def open(self, path: PathArg, mode: str = "rb", buffering: int = -1, encoding: str | None = None,
             errors: str | None = None, newline: str | None = None) -> Any:
        """A file object, as the builtin ``open`` gives: ``rb``, ``wb``, ``ab``, ``xb``, ``r+b``
        (binary: BufferedReader/Writer/Random over :class:`~.files.RawLakeFile`) and their text
        forms (TextIOWrapper). ``close()`` reports write-back errors, as close(2) does on a mount."""
        p = _fspath(path)
        flags, binary, readable, writable = open_mode(mode)
        if binary and encoding is not None:
            raise ValueError("binary mode doesn't take an encoding argument")
        raw = RawLakeFile(self, p, flags, readable=readable, writable=writable)
        if buffering == 0:
            if not binary:
                raw.close()
                raise ValueError("can't have unbuffered text I/O")
            self._files.add(raw)
            return raw
        size = buffering if buffering > 1 else 1 << 20
        buffered: io.BufferedIOBase
        if readable and writable:
            buffered = io.BufferedRandom(raw, size)
        elif writable:
            buffered = io.BufferedWriter(raw, size)
        else:
            buffered = io.BufferedReader(raw, size)
        if binary:
            self._files.add(buffered)
            return buffered
        text = io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, newline=newline)
        text.mode = mode  # type: ignore[misc]
        self._files.add(text)
        return text

    def read_bytes(self, path: PathArg) -> bytes:
        """A whole file in one call (open, read, close): the fastest way to read a sample."""
        p = _fspath(path)
        return self._call(self.session.read_file, p, Caller.of_process(), path=p)

    def read_many(self, paths: Iterable[PathArg]) -> list[bytes]:
        """Whole files, read concurrently in one call: a batch of samples (what
        ``LakeImageFolder.__getitems__`` uses). Raises the first failing path's OSError."""
        ps = [_fspath(p) for p in paths]
        got = self._call(self.session.read_files, ps, Caller.of_process())
        for p, item in zip(ps, got, strict=True):
            if isinstance(item, E.LakeError):
                raise _oserror(item, p)
        return got

    def write_bytes(self, path: PathArg, data: bytes) -> int:
        with self.open(path, "wb") as f:
            return f.write(data)

    def prefetch(self, paths: Iterable[PathArg], *, reset: bool = True) -> None:
        """These files are opened next, in this order: fetch each just ahead of its open (the
        mount's read plan; see ``lakefs_fuse.torch``)."""
        ps = [_fspath(p) for p in paths]
        self._call(self.session.prefetch, ps, Caller.of_process(), reset)

    # ------------------------------------------------------------------ changes

    def mkdir(self, path: PathArg, mode: int = 0o777) -> None:
        p = _fspath(path)
        self._call(self.session.mkdir, p, mode, Caller.of_process(), path=p)

    def makedirs(self, path: PathArg, mode: int = 0o777, exist_ok: bool = False) -> None:
        p = os.fsdecode(_fspath(path))
        parts = [x for x in p.split("/") if x and x != "."]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            try:
                self.mkdir(sub, mode)
            except FileExistsError:
                if i == len(parts) and not (exist_ok and self.isdir(sub)):
                    raise
                if i < len(parts) and not self.isdir(sub):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), sub) from None

    def remove(self, path: PathArg) -> None:
        p = _fspath(path)
        self._call(self.session.remove, p, Caller.of_process(), False, path=p)

    unlink = remove

    def rmdir(self, path: PathArg) -> None:
        p = _fspath(path)
        self._call(self.session.remove, p, Caller.of_process(), True, path=p)

    def rename(self, src: PathArg, dst: PathArg) -> None:
        """Atomic, and replaces ``dst`` as os.rename does (on a cluster lake, for every mount)."""
        s, d = _fspath(src), _fspath(dst)
        self._call(self.session.rename, s, d, Caller.of_process(), path=s)

    replace = rename

    def symlink(self, target: PathArg, path: PathArg) -> None:
        p = _fspath(path)
        self._call(self.session.symlink, _fspath(target), p, Caller.of_process(), path=p)

    def chmod(self, path: PathArg, mode: int) -> None:
        p = _fspath(path)
        self._call(self.session.chmod, p, mode, Caller.of_process(), path=p)


def _join(top: str, name: str) -> str:
    return f"{top.rstrip('/')}/{name}" if top.strip("/") else name


def stat_result(inode: Inode) -> os.stat_result:
    """An os.stat_result of a lake inode (st_dev 0; blocks of 512 bytes; 1 MiB blksize, as a mount)."""
    def secs(ns: int) -> int:
        return ns // 1_000_000_000

    return os.stat_result((inode.mode, inode.ino, 0, inode.nlink, inode.uid, inode.gid, inode.size,
                           secs(inode.atime_ns), secs(inode.mtime_ns), secs(inode.ctime_ns),
                           inode.atime_ns / 1e9, inode.mtime_ns / 1e9, inode.ctime_ns / 1e9,
                           inode.atime_ns, inode.mtime_ns, inode.ctime_ns,
                           1 << 20, inode.blocks, inode.rdev))


class DirEntry:
    """One entry of :meth:`LakeClient.scandir`, like ``os.DirEntry``: its attributes came with the
    listing; only a symbolic link, when followed, costs a ``stat`` of its target (kept, as
    os.DirEntry keeps it). A link to nothing is neither a directory nor a file."""

    __slots__ = ("_client", "_inode", "_target", "name", "path")

    def __init__(self, parent: str | bytes, name: bytes, inode: Inode, client: LakeClient):
        if isinstance(parent, bytes):
            self.name: Any = name
            self.path: Any = parent.rstrip(b"/") + b"/" + name if parent.strip(b"/") else name
        else:
            self.name = os.fsdecode(name)
            self.path = _join(parent, self.name)
        self._inode = inode
        self._client = client
        self._target: os.stat_result | None = None

    def inode(self) -> int:
        return self._inode.ino

    def _mode(self, follow_symlinks: bool) -> int:
        if not (follow_symlinks and st.S_ISLNK(self._inode.mode)):
            return self._inode.mode
        try:
            return self.stat().st_mode
        except FileNotFoundError:
            return 0

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return st.S_ISDIR(self._mode(follow_symlinks))

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return st.S_ISREG(self._mode(follow_symlinks))

    def is_symlink(self) -> bool:
        return st.S_ISLNK(self._inode.mode)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if follow_symlinks and st.S_ISLNK(self._inode.mode):
            if self._target is None:
                self._target = self._client.stat(self.path)
            return self._target
        return stat_result(self._inode)

    def __fspath__(self) -> Any:
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


def connect(data: PathArg | None = None, *, meta: str | Iterable[str] | None = None,
            secret_file: PathArg | None = None, tls_ca: PathArg | None = None, read_only: bool | None = None,
            memory_cache: int | str = CLIENT_MEMORY_CACHE, cache_dir: PathArg | None = None,
            disk_cache: bool | None = None, cache_size: int | str = 10 * 1024 * MiB, pack_delay: float = 0.0,
            meta_timeout: float = META_TIMEOUT, **settings: Any) -> LakeClient:
    """Open a lake in this process: ``connect(data="/srv/lake")`` (embedded) or
    ``connect(meta="10.0.0.1:7000,...", secret_file="/etc/lakefs/secret")`` (a cluster).

    ``read_only``: None (default) writes when the lake is free, else reads beside its mount;
    True reads only; False writes or fails (EBUSY). ``memory_cache``/``cache_dir``/``cache_size``:
    the chunk caches (a cluster lake uses the mount's default cache directory unless
    ``disk_cache=False``; an embedded one none unless ``cache_dir`` is given). ``pack_delay``:
    seconds a closed small file may wait to share a chunk (0: committed at close). Other
    ``settings`` are MountConfig fields (``readahead_max``, ``prefetch_files``, ...).
    """
    if (data is None) == (meta is None):
        raise ValueError("connect() takes exactly one of data=DIR (an embedded lake) or meta='HOST:PORT,...'")
    addresses: tuple[str, ...] = ()
    if meta is not None:
        try:
            addresses = tuple(parse_addresses(meta if isinstance(meta, str) else ",".join(meta), "meta"))
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if secret_file is None:
            raise ValueError("a cluster lake needs secret_file= (the cluster secret)")
    size = parse_size(memory_cache) if isinstance(memory_cache, str) else int(memory_cache)
    csize = parse_size(cache_size) if isinstance(cache_size, str) else int(cache_size)
    cdir = Path(os.fsdecode(cache_dir)).resolve() if cache_dir is not None else None
    if disk_cache is False:
        cdir = None
    elif cdir is None and (addresses or disk_cache):
        cdir = default_cache_dir()
    unknown = set(settings) - set(MountConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"connect() got unexpected settings: {', '.join(sorted(unknown))}")
    cc = ClientConfig(data=Path(os.fsdecode(data)).resolve() if data is not None else None, meta=addresses,
                      secret_file=Path(os.fsdecode(secret_file)).resolve() if secret_file is not None else None,
                      tls_ca=Path(os.fsdecode(tls_ca)).resolve() if tls_ca is not None else None,
                      read_only=read_only, memory_cache=size, cache_dir=cdir, cache_size=csize,
                      pack_delay=pack_delay, meta_timeout=meta_timeout, settings=dict(settings))
    try:
        cc.mount_config(bool(read_only)).validate()
    except UserError as exc:
        raise ValueError(str(exc)) from None
    return LakeClient(cc)
