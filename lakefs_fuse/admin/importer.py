"""Bulk ingest: ``lakefs-fuse import SRC DEST`` copies a local tree into a lake without FUSE.

The importer drives the same :class:`~.vfs.VFS` a mount uses -- so packing, erasure coding,
placement and metadata commands are exactly a mount's -- but without the kernel in between:
no 7 FUSE requests per small file, and files are read from disk by ``jobs`` worker threads while
the writer packs whatever arrives together into shared chunks (the pack delay is the writer's
grouping window). At the end every buffer is sealed and the shards and metadata are synced, so a
finished import is durable. An interrupted one leaves whole files only: each file is committed
as a unit, and a rerun skips files that are already there with the same size.

Symbolic links are copied as links (the link and its target text, never what it points to: a
link to a directory does not become a copy of that directory). What a lake cannot hold -- sockets,
FIFOs, devices -- and what cannot be read is not copied, and the report lists each one.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .. import errors as E
from ..meta.schema import ROOT_INO
from ..meta.state import EC_XATTR
from ..mount.vfs import VFS, Ctx

PIECE = 1 << 20


@dataclass
class ImportReport:
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0        # already there (same size; a link with the same target)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_copied: list[tuple[str, str]] = field(default_factory=list)  # sockets, devices, unreadable directories...

    def to_json(self) -> dict:
        return {"files": self.files, "bytes": self.bytes, "dirs": self.dirs, "symlinks": self.symlinks,
                "skipped": self.skipped, "failed": [list(f) for f in self.failed],
                "not_copied": [list(f) for f in self.not_copied]}


@dataclass
class SourceTree:
    """What :func:`scan` found under a source directory, paths relative to it."""

    dirs: list[Path]                    # parents first
    files: list[tuple[Path, int]]       # regular files, with their sizes
    symlinks: list[Path]                # to files, to directories, dangling: all copied as links
    not_copied: list[tuple[str, str]]   # (path, why): what a lake cannot hold or could not be read


_NOT_COPIED = {st.S_IFSOCK: "a socket", st.S_IFIFO: "a FIFO", st.S_IFCHR: "a character device",
               st.S_IFBLK: "a block device"}


def scan(src: Path) -> SourceTree:
    """Everything under ``src``, sorted by what the import does with it."""
    tree = SourceTree([], [], [], [])

    def unlistable(exc: OSError) -> None:
        where = Path(exc.filename).relative_to(src) if exc.filename else Path()
        tree.not_copied.append((str(where), f"cannot list this directory: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(src, onerror=unlistable):
        base = Path(dirpath)
        # os.walk counts a link to a directory as a directory (and does not enter it)
        links = {d for d in dirnames if (base / d).is_symlink()}
        dirnames[:] = sorted(d for d in dirnames if d not in links)
        for d in dirnames:
            tree.dirs.append((base / d).relative_to(src))
        for f in sorted([*filenames, *links]):
            p = base / f
            try:
                s = p.lstat()
            except OSError as exc:
                tree.not_copied.append((str(p.relative_to(src)), exc.strerror or str(exc)))
                continue
            if st.S_ISREG(s.st_mode):
                tree.files.append((p.relative_to(src), s.st_size))
            elif st.S_ISLNK(s.st_mode):
                tree.symlinks.append(p.relative_to(src))
            else:
                tree.not_copied.append((str(p.relative_to(src)), _NOT_COPIED.get(st.S_IFMT(s.st_mode), "not a file")))
    return tree


async def _mkdirs(vfs: VFS, parent: int, rel: Path, ctx: Ctx) -> int:
    """mkdir -p of ``rel`` under ``parent``; returns the directory's inode."""
    ino = parent
    for part in rel.parts:
        name = os.fsencode(part)
        try:
            child = await vfs.meta.lookup(ino, name)
            if not child.is_dir:
                raise E.NotADir(f"{rel}: {part} exists and is not a directory")
        except E.NotFound:
            child = await vfs.mkdir(ino, name, 0o755, ctx)
        ino = child.ino
    return ino


async def import_tree(vfs: VFS, src: Path, dest: str, *, jobs: int = 8, overwrite: bool = False,
                      on_file: Callable[[int], None] | None = None) -> ImportReport:
    """Copy ``src`` (a local directory) to ``dest`` (a path inside the lake, created if missing)."""
    ctx = Ctx(os.getuid(), os.getgid(), os.getpid(), 0o022)
    tree = await trio.to_thread.run_sync(scan, src)
    report = ImportReport(not_copied=tree.not_copied)
    files = tree.files
    top = await _mkdirs(vfs, ROOT_INO, Path(dest.strip("/")) if dest.strip("/") else Path(), ctx)
    inos: dict[Path, int] = {Path(): top}
    for rel in tree.dirs:
        inos[rel] = await _mkdirs(vfs, inos[rel.parent], Path(rel.name), ctx)
        report.dirs += 1
    for rel in tree.symlinks:
        await _symlink(vfs, src, rel, inos[rel.parent], ctx, report)

    async def one(rel: Path, size: int) -> None:
        parent, name = inos[rel.parent], os.fsencode(rel.name)
        try:
            try:
                existing = await vfs.meta.lookup(parent, name)
            except E.NotFound:
                existing = None
            if existing is not None:
                if not overwrite and existing.is_reg and existing.size == size:
                    report.skipped += 1
                    return
                if not existing.is_reg:
                    raise E.Exists("exists and is not a regular file")
                await vfs.unlink(parent, name, ctx)
            data = await trio.to_thread.run_sync((src / rel).read_bytes)
            fh, inode, _ = await vfs.create(parent, name, 0o644, os.O_WRONLY, ctx)
            try:
                view = memoryview(data)
                for off in range(0, len(view), PIECE):
                    await vfs.write(fh, off, view[off:off + PIECE])
                await vfs.flush(fh)
            finally:
                await vfs.release(fh)
                await vfs.forget([(inode.ino, 1)])  # create counted a kernel reference
            report.files += 1
            report.bytes += len(data)
        except (E.LakeError, OSError) as exc:
            report.failed.append((str(rel), str(exc) or os.strerror(getattr(exc, "errno", errno.EIO))))
        finally:
            if on_file:
                on_file(size)

    send, receive = trio.open_memory_channel(jobs * 4)

    async def worker(items: trio.MemoryReceiveChannel) -> None:
        async with items:
            async for rel, size in items:
                await one(rel, size)

    async with trio.open_nursery() as nursery:
        async with receive:
            for _ in range(jobs):
                nursery.start_soon(worker, receive.clone())
        async with send:
            for item in files:
                await send.send(item)
    return report


async def _symlink(vfs: VFS, src: Path, rel: Path, parent: int, ctx: Ctx, report: ImportReport) -> None:
    """Copy the link ``src/rel`` as a link; one with the same target already there is kept."""
    name = os.fsencode(rel.name)
    try:
        target = os.fsencode(os.readlink(src / rel))
        try:
            existing = await vfs.meta.lookup(parent, name)
        except E.NotFound:
            existing = None
        if existing is not None:
            if existing.is_lnk and await vfs.meta.readlink(existing.ino) == target:
                report.skipped += 1
                return
            if existing.is_dir:
                raise E.Exists("exists and is a directory")
            await vfs.unlink(parent, name, ctx)
        inode = await vfs.symlink(parent, name, target, ctx)
        await vfs.forget([(inode.ino, 1)])  # symlink counted a kernel reference
        report.symlinks += 1
    except (E.LakeError, OSError) as exc:
        report.failed.append((str(rel), str(exc) or os.strerror(getattr(exc, "errno", errno.EIO))))


# ---------------------------------------------------------------------------- restripe


@dataclass
class RestripeReport:
    files: int = 0          # regular files looked at
    rewritten: int = 0
    bytes: int = 0          # bytes rewritten
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"files": self.files, "rewritten": self.rewritten, "bytes": self.bytes,
                "failed": [list(f) for f in self.failed]}


async def restripe(vfs: VFS, path: str, *, default: tuple[int, int], min_shard: int,
                   on_file: Callable[[], None] | None = None) -> RestripeReport:
    """Rewrite every file under ``path`` whose chunks are not in its EC profile: its directory's
    ``user.lakefs.ec`` when the directory (or one above it) has one -- the file's own is then set to
    match -- else the file's own, else the lake's. New chunks in the right profile replace the old
    ones, which the delete queue then frees. Same bytes, same inode; only files that need it are
    written."""
    from ..chunks.layout import data_shards_for
    report = RestripeReport()
    ctx = Ctx()
    ino = ROOT_INO
    for name in [p for p in path.split("/") if p]:
        ino = (await vfs.lookup(ino, name.encode(), ctx)).ino
        await vfs.forget([(ino, 1)])

    async def walk(ino: int, rel: str, inherited: tuple[int, int] | None) -> None:
        inode = await vfs.getattr(ino)
        if inode.is_dir:
            inherited = inode.profile or inherited
            fh = await vfs.opendir(ino, ctx)
            try:
                start = 0
                while True:
                    page = await vfs.readdir(fh, start)
                    if not page:
                        break
                    for name, child, cookie in page:
                        start = cookie
                        if name not in (b".", b".."):
                            await walk(child.ino, f"{rel}/{name.decode(errors='replace')}", inherited)
            finally:
                await vfs.releasedir(fh)
            return
        if not inode.is_reg:
            return
        report.files += 1
        if inherited and inode.profile != inherited:  # files follow their directory's profile
            await vfs.setxattr(ino, EC_XATTR, b"%d+%d" % inherited, ctx)
            inode = await vfs.getattr(ino)
        k, m = inode.profile or default
        exts = await vfs.meta.extents(ino, 0, 1 << 62) if inode.size else []
        wrong = False
        for cid in {e.chunk_id for e in exts}:
            rec = await vfs.meta.chunk(cid)
            if rec.m != m or rec.k != data_shards_for(rec.length, k, min_shard):
                wrong = True
                break
        if wrong:
            try:
                await _rewrite(vfs, ino, inode.size, ctx)
                report.rewritten += 1
                report.bytes += inode.size
            except E.LakeError as exc:
                report.failed.append((rel, str(exc)))
        if on_file:
            on_file()

    await walk(ino, path.rstrip("/") or "/", await _profile_above(vfs, ino))
    return report


async def _profile_above(vfs: VFS, ino: int) -> tuple[int, int] | None:
    """The EC profile ``ino``'s directory (or the nearest one above with a profile) sets."""
    seen = set()
    while ino != ROOT_INO and ino not in seen:
        seen.add(ino)
        inode = await vfs.getattr(ino)
        parent = inode.parent if inode.is_dir else 0
        if not parent:
            return None  # a file: its own profile decides
        pinode = await vfs.getattr(parent)
        if pinode.profile:
            return pinode.profile
        ino = parent
    return None


async def _rewrite(vfs: VFS, ino: int, size: int, ctx: Ctx) -> None:
    fh, _keep, _direct = await vfs.open(ino, os.O_RDWR, ctx)
    try:
        for off in range(0, size, PIECE):
            data = bytes(await vfs.read(fh, off, min(PIECE, size - off)))
            await vfs.write(fh, off, data)
        await vfs.flush(fh)
    finally:
        await vfs.release(fh)
