#!/usr/bin/env python3
"""memfs: a read-only, in-memory pyfuse3 filesystem -- the "ceiling" for a Python FUSE daemon.

At start it copies every directory and regular file under SRC_DIR into RAM (symlinks, devices and
the like are skipped), then mounts the copy read-only at MOUNTPOINT and serves it with the
cheapest answers a pyfuse3 daemon can give:

  - entry and attribute timeouts of 60 s (the kernel rarely asks again),
  - ``keep_cache`` on every open (a second read of a file is the page cache's business),
  - the mount's bdi ``read_ahead_kb`` raised to 1024 once the daemon has answered its first request
    (written earlier, the kernel resets it when it completes the FUSE handshake), so buffered reads
    reach the daemon as 1 MiB requests,
  - reads answered with ``memoryview`` slices of the loaded bytes (no copy in Python),
  - ``O_DIRECT`` opens served with ``direct_io``; any open for writing fails with EROFS.

Every handler turns an unexpected exception into EIO (pyfuse3 ends the session -- and leaves a dead
mount -- when anything but ``FUSEError`` escapes a handler).

Usage::

    python scripts/bench/memfs.py SRC_DIR MOUNTPOINT               # daemonize; returns once live
    python scripts/bench/memfs.py SRC_DIR MOUNTPOINT --foreground  # stay attached

Readiness: the line ``ready pid=<pid> files=<n> bytes=<n> read_ahead_kb=<kb>`` on stdout (in the
foreground; the daemonizing parent prints the child's line and exits 0), and, with
``--ready-file PATH``, the same line written to PATH. SIGTERM / SIGINT / SIGHUP unmount and exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pyfuse3
import trio
from common import bdi_read_ahead

log = logging.getLogger("memfs")
TIMEOUT = 60.0             # entry and attribute cache timeout (s)
READ_AHEAD_KB = 1024
BLKSIZE = 1 << 20


def guarded(fn):
    """Answer EIO instead of letting a non-FUSEError end the FUSE session."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


class Node:
    __slots__ = ("attr", "data", "entries", "ino", "names", "parent", "view")

    def __init__(self, ino: int, parent: int, attr: pyfuse3.EntryAttributes):
        self.ino = ino
        self.parent = parent
        self.attr = attr
        self.data: bytes | None = None          # regular files
        self.view: memoryview | None = None
        self.names: dict[bytes, int] | None = None      # directories: name -> inode
        self.entries: list[tuple[bytes, int]] | None = None  # directories, sorted (readdir order)


def _attr(ino: int, st: os.stat_result, size: int) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
    a.generation = 0
    a.entry_timeout = TIMEOUT
    a.attr_timeout = TIMEOUT
    a.st_mode = st.st_mode & ~0o222 if not stat.S_ISDIR(st.st_mode) else st.st_mode
    a.st_nlink = 2 if stat.S_ISDIR(st.st_mode) else 1
    a.st_uid = st.st_uid
    a.st_gid = st.st_gid
    a.st_rdev = 0
    a.st_size = size
    a.st_blksize = BLKSIZE
    a.st_blocks = (size + 511) // 512
    a.st_atime_ns = st.st_atime_ns
    a.st_mtime_ns = st.st_mtime_ns
    a.st_ctime_ns = st.st_ctime_ns
    return a


class Tree:
    """The loaded copy of SRC_DIR: inode number -> Node."""

    def __init__(self, src: Path):
        self.nodes: dict[int, Node] = {}
        self.files = 0
        self.bytes = 0
        self._next = pyfuse3.ROOT_INODE + 1
        root_st = os.stat(src)
        root = Node(pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE, _attr(pyfuse3.ROOT_INODE, root_st, 4096))
        self.nodes[root.ino] = root
        self._load_dir(root, os.fsencode(src))

    def _load_dir(self, node: Node, path: bytes) -> None:
        node.names = {}
        subdirs = []
        with os.scandir(path) as it:
            for de in it:
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    child = Node(self._next, node.ino, _attr(self._next, st, 4096))
                    subdirs.append((child, de.path))
                elif stat.S_ISREG(st.st_mode):
                    with open(de.path, "rb", buffering=0) as f:
                        data = f.read()
                    child = Node(self._next, node.ino, _attr(self._next, st, len(data)))
                    child.data = data
                    child.view = memoryview(data)
                    self.files += 1
                    self.bytes += len(data)
                else:
                    continue  # symlinks, fifos, sockets, devices: not served
                self._next += 1
                self.nodes[child.ino] = child
                node.names[de.name] = child.ino
        node.entries = sorted(node.names.items())
        nsub = len(subdirs)
        node.attr.st_nlink = 2 + nsub
        for child, p in subdirs:
            self._load_dir(child, p)


class MemFS(pyfuse3.Operations):
    # flush, access, getxattr & co. are left to pyfuse3's defaults, which answer ENOSYS: the kernel then
    # stops sending FLUSH and xattr requests altogether (access is never sent: default_permissions).
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree):
        super().__init__()
        self.tree = tree
        self.nodes = tree.nodes
        self.requests = 0

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    @guarded
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if parent.names is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return parent.attr
        if name == b"..":
            return self._node(parent.parent).attr
        ino = parent.names.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.nodes[ino].attr

    async def forget(self, inode_list):
        return None  # nothing is ever freed; forget has no reply, so it must not raise anything

    @guarded
    async def getattr(self, inode, ctx=None):
        self.requests += 1
        return self._node(inode).attr

    @guarded
    async def setattr(self, inode, attr, fields, fh, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    @guarded
    async def opendir(self, inode, ctx):
        if self._node(inode).names is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @guarded
    async def readdir(self, fh, start_id, token):
        node = self._node(fh)
        entries = node.entries or []
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.nodes[ino].attr, i + 1):
                return

    @guarded
    async def releasedir(self, fh):
        return None

    @guarded
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.data is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        direct = bool(flags & getattr(os, "O_DIRECT", 0o40000))
        return pyfuse3.FileInfo(fh=inode, keep_cache=not direct, direct_io=direct)

    @guarded
    async def read(self, fh, off, size):
        view = self._node(fh).view
        if view is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return view[off:off + size]  # slicing a memoryview copies nothing; past the end -> empty

    @guarded
    async def release(self, fh):
        return None

    @guarded
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = BLKSIZE
        s.f_blocks = -(-self.tree.bytes // BLKSIZE)
        s.f_bfree = 0
        s.f_bavail = 0
        s.f_files = len(self.nodes)
        s.f_ffree = 0
        s.f_favail = 0
        s.f_namemax = 255
        return s


def raise_read_ahead(mnt: Path, kb: int, deadline: float) -> int | None:
    """Write read_ahead_kb until it reads back as ``kb`` (the handshake may still reset it)."""
    path = bdi_read_ahead(mnt)
    value = None
    while True:
        try:
            path.write_text(str(kb))
            value = int(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot set %s: %s", path, exc)
            return None
        if value == kb or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for signum in sigs:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _become_ready(mnt: Path, tree: Tree, announce) -> None:
    # A stat answered by us means the kernel has finished the FUSE handshake (INIT); only
    # afterwards does a read_ahead_kb write stick.
    await trio.to_thread.run_sync(os.stat, mnt)
    ra = await trio.to_thread.run_sync(raise_read_ahead, mnt, READ_AHEAD_KB, time.monotonic() + 5)
    if ra != READ_AHEAD_KB:
        log.warning("read_ahead_kb of %s is %s, not %d", mnt, ra, READ_AHEAD_KB)
    announce(f"ready pid={os.getpid()} files={tree.files} bytes={tree.bytes} read_ahead_kb={ra}")


async def _main(mnt: Path, tree: Tree, announce) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals)
        nursery.start_soon(_become_ready, mnt, tree, announce)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def serve(src: Path, mnt: Path, announce) -> int:
    t0 = time.monotonic()
    tree = Tree(src)
    log.info("loaded %d files, %d bytes, %d inodes from %s in %.1fs", tree.files, tree.bytes,
             len(tree.nodes), src, time.monotonic() - t0)
    options = set(pyfuse3.default_options) | {"fsname=memfs", "subtype=memfs", "ro"}
    pyfuse3.init(MemFS(tree), str(mnt), options)
    status = 0
    try:
        trio.run(_main, mnt, tree, announce)
    except BaseException:
        log.exception("memfs main loop failed")
        status = 1
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmount failed")
        log.info("memfs for %s stopped", mnt)
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="directory to load into RAM")
    ap.add_argument("mountpoint", type=Path, help="empty directory to mount on")
    ap.add_argument("--foreground", "-f", action="store_true", help="do not daemonize")
    ap.add_argument("--ready-file", type=Path, default=None, help="also write the ready line to this file")
    ap.add_argument("--log", type=Path, default=None, help="log file when daemonized (default: none)")
    ap.add_argument("--timeout", type=float, default=600, help="daemonizing parent: seconds to wait for readiness")
    args = ap.parse_args(argv)
    src, mnt = args.src.resolve(), args.mountpoint.resolve()
    if not src.is_dir():
        ap.error(f"{src} is not a directory")
    if not mnt.is_dir():
        ap.error(f"{mnt} is not a directory")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s memfs[%(process)d] %(message)s")

    def write_ready_file(line: str) -> None:
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(line + "\n")
            os.replace(tmp, args.ready_file)

    if args.foreground:
        def announce(line: str) -> None:
            write_ready_file(line)
            print(line, flush=True)
        return serve(src, mnt, announce)

    # Daemonize: the child reports readiness (or its failure) through a pipe; the parent waits.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        status = 1
        try:
            os.setsid()
            nul = os.open(os.devnull, os.O_RDWR)
            os.dup2(nul, 0)
            out = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if args.log else nul
            os.dup2(out, 1)
            os.dup2(out, 2)

            def announce(line: str) -> None:
                write_ready_file(line)
                try:
                    os.write(wfd, (line + "\n").encode())
                    os.close(wfd)
                except OSError:
                    pass
            status = serve(src, mnt, announce)
        except BaseException:
            log.exception("memfs failed")
        finally:
            os._exit(status)
    os.close(wfd)
    deadline = time.monotonic() + args.timeout
    buf = b""
    os.set_blocking(rfd, False)
    while time.monotonic() < deadline and b"\n" not in buf:
        try:
            chunk = os.read(rfd, 4096)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        if not chunk:
            break
        buf += chunk
    os.close(rfd)
    line = buf.decode(errors="replace").strip()
    if line.startswith("ready"):
        print(line, flush=True)
        return 0
    print(f"memfs did not become ready ({'exited' if not buf else line!r}); see its log", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return 1


if __name__ == "__main__":
    sys.exit(main())
