"""Bulk ingest: ``lakefs-fuse import SRC DEST`` copies a local tree into a lake without FUSE.

*Small files go in batches.* Files up to :data:`SMALL_FILE` (and a quarter of the lake's chunk
size) are cut into batches of up to :data:`BATCH_FILES` files and one chunk's worth of bytes,
one EC profile each (their directories'). A batch is read by a worker thread, stored on the peers
as one chunk (``put_chunk``: erasure coding and shard writes), then created by ONE metadata
command, :class:`~..meta.commands.ImportFiles` -- one RocksDB WriteBatch, on a cluster one Raft
entry -- instead of a lookup, a ``mknod`` and a share of a ``commit`` per file. ``jobs`` batches
are in flight at once (each worker's chunk upload and command overlap the others'; a cluster
lake's metadata client spreads the commands over its sessions, and the leader's group commit
shares their fsyncs). The command's results are per file: a name that exists by then, or any
other refusal, fails that file alone, and the report names it. A batch whose chunk or command
fails (peers full, metadata unavailable past ``--meta-timeout``) reports each of its files as
not imported -- it may have committed after all; a rerun skips what is there.

Before any batch, each destination directory is listed once: a file already there with the same
size is skipped (a rerun resumes), one with another size (or with ``overwrite``) is unlinked and
imported again, a non-file of the same name fails. Bigger files are written through the same
:class:`~.vfs.VFS` a mount uses (packing, erasure coding, placement and metadata commands are
exactly a mount's), ``jobs`` at a time beside the batches. At the end every buffer is sealed and
the shards and metadata are synced, so a finished import is durable; an interrupted one leaves
whole files only.

Symbolic links are copied as links (the link and its target text, never what it points to: a
link to a directory does not become a copy of that directory). What a lake cannot hold -- sockets,
FIFOs, devices -- and what cannot be read is not copied, and the report lists each one.
"""

from __future__ import annotations

import errno
import os
import stat as st
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .. import errors as E
from ..lake.records import record_of
from ..meta.commands import ImportFile, ImportFiles
from ..meta.schema import ROOT_INO, Inode
from ..meta.state import EC_XATTR
from ..mount.vfs import VFS, Ctx

PIECE = 1 << 20
#: Files up to this size (and up to a quarter of the lake's chunk size) are imported in batches.
SMALL_FILE = 1 << 20
#: Most files in one batch: one chunk, one ``import_files`` command (one Raft entry).
BATCH_FILES = 256


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
                      on_file: Callable[[int], None] | None = None, tree: SourceTree | None = None) -> ImportReport:
    """Copy ``src`` (a local directory) to ``dest`` (a path inside the lake, created if missing).
    ``tree``: what :func:`scan` found there, if the caller scanned already."""
    ctx = Ctx(os.getuid(), os.getgid(), os.getpid(), 0o022)
    if tree is None:
        tree = await trio.to_thread.run_sync(scan, src)
    report = ImportReport(not_copied=tree.not_copied)
    top = await _mkdirs(vfs, ROOT_INO, Path(dest.strip("/")) if dest.strip("/") else Path(), ctx)
    inos: dict[Path, int] = {Path(): top}

    async def mkdir(rel: Path) -> None:
        inos[rel] = await _mkdirs(vfs, inos[rel.parent], Path(rel.name), ctx)
    for depth in sorted({len(rel.parts) for rel in tree.dirs}):  # parents first, siblings at once
        await _each([(rel,) for rel in tree.dirs if len(rel.parts) == depth], mkdir, jobs)
    report.dirs += len(tree.dirs)
    for rel in tree.symlinks:
        await _symlink(vfs, src, rel, inos[rel.parent], ctx, report)
    small, big = await _sort_files(vfs, tree.files, inos, overwrite, ctx, report, on_file, jobs)
    batches = _batches(small, small_limit(vfs.chunk_size))

    async def one(rel: Path, size: int) -> None:  # a big file: written through the VFS like a mount's
        parent, name = inos[rel.parent], os.fsencode(rel.name)
        try:
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
            report.failed.append((str(rel), _why(exc)))
        finally:
            if on_file:
                on_file(size)

    too_old: list[bool] = []

    async def batch(b: _Batch) -> None:
        try:
            await _import_batch(vfs, src, b, inos, ctx, report, on_file)
        except _ServersTooOld:  # (raised below, outside the nurseries: one line at the CLI)
            too_old.append(True)
            scope.cancel()

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_each, [(b,) for b in batches], batch, jobs)
            nursery.start_soon(_each, big, one, jobs)
    if too_old:
        raise E.UserError("the metadata servers run an older lakefs-fuse that does not know import_files: "
                          "upgrade them before importing")
    return report


class _ServersTooOld(Exception):
    """The metadata servers refused ``import_files`` as an unknown command."""


async def _each(items: list, run: Callable, n: int) -> None:
    """``await run(*item)`` for every item, ``n`` at a time."""
    send, receive = trio.open_memory_channel(n)

    async def worker(channel: trio.MemoryReceiveChannel) -> None:
        async with channel:
            async for item in channel:
                await run(*item)

    async with trio.open_nursery() as nursery:
        async with receive:
            for _ in range(n):
                nursery.start_soon(worker, receive.clone())
        async with send:
            for item in items:
                await send.send(item)


def _why(exc: BaseException) -> str:
    return str(exc) or os.strerror(getattr(exc, "errno", None) or errno.EIO)


def small_limit(chunk_size: int) -> int:
    """Files up to this size are imported in batches (one chunk each); bigger ones one at a time."""
    return min(SMALL_FILE, chunk_size // 4)


@dataclass
class _Batch:
    """Small files that go into one chunk and one ``import_files`` command."""

    profile: tuple[int, int] | None     # their directories' EC profile (a chunk has one)
    files: list[tuple[Path, int]] = field(default_factory=list)
    nbytes: int = 0


def _batches(files: list[tuple[Path, int, tuple[int, int] | None]], limit: int) -> list[_Batch]:
    """Cut ``files`` (path, size, profile) into batches of at most :data:`BATCH_FILES` files and
    ``4 * limit`` bytes, one EC profile each, in the order given."""
    out: list[_Batch] = []
    open_: dict[tuple[int, int] | None, _Batch] = {}
    for rel, size, profile in files:
        b = open_.get(profile)
        if b is None or len(b.files) >= BATCH_FILES or b.nbytes + size > 4 * limit:
            b = open_[profile] = _Batch(profile)
            out.append(b)
        b.files.append((rel, size))
        b.nbytes += size
    return out


async def _sort_files(vfs: VFS, files: list[tuple[Path, int]], inos: dict[Path, int], overwrite: bool, ctx: Ctx,
                      report: ImportReport, on_file: Callable[[int], None] | None, jobs: int
                      ) -> tuple[list[tuple[Path, int, tuple[int, int] | None]], list[tuple[Path, int]]]:
    """Decide each file's fate against what its directory holds (one listing per directory, ``jobs``
    directories at once): skipped (same size, no ``overwrite``), failed (exists and is not a file),
    replaced (the old one unlinked first), or imported -- small ones in batches, big ones one at a
    time."""
    limit = small_limit(vfs.chunk_size)
    listings: dict[int, dict[bytes, Inode]] = {}
    profiles: dict[int, tuple[int, int] | None] = {}

    async def look(parent: int) -> None:
        listings[parent] = await _listing(vfs, parent)
        profiles[parent] = (await vfs.meta.getattr(parent)).profile
    await _each([(ino,) for ino in {inos[rel.parent] for rel, _ in files}], look, jobs)
    small: list[tuple[Path, int, tuple[int, int] | None]] = []
    big: list[tuple[Path, int]] = []
    for rel, size in files:
        parent, name = inos[rel.parent], os.fsencode(rel.name)
        existing = listings[parent].get(name)
        try:
            if existing is not None:
                if not overwrite and existing.is_reg and existing.size == size:
                    report.skipped += 1
                    if on_file:
                        on_file(size)
                    continue
                if not existing.is_reg:
                    raise E.Exists("exists and is not a regular file")
                await vfs.unlink(parent, name, ctx)
        except (E.LakeError, OSError) as exc:
            report.failed.append((str(rel), _why(exc)))
            if on_file:
                on_file(size)
            continue
        if size <= limit:
            small.append((rel, size, profiles[parent]))
        else:
            big.append((rel, size))
    return small, big


async def _listing(vfs: VFS, ino: int) -> dict[bytes, Inode]:
    """Every entry of directory ``ino``: name -> inode."""
    out: dict[bytes, Inode] = {}
    cookie = 0
    while page := await vfs.meta.readdir(ino, cookie, 1000):
        for name, inode, _cookie in page:
            out[name] = inode
        cookie = page[-1][2]  # the next page starts after the last entry
    return out


def _read_batch(src: Path, files: list[tuple[Path, int]], limit: int) -> list[bytes | OSError]:
    """The bytes of each file, or why it could not be read (in a worker thread)."""
    out: list[bytes | OSError] = []
    base = os.fspath(src)
    for rel, _size in files:
        try:
            with open(os.path.join(base, rel), "rb", buffering=0) as f:
                data = f.readall()
            if len(data) > limit:
                raise OSError(errno.EFBIG, "grew while being imported; import it again")
            out.append(data)
        except OSError as exc:
            out.append(exc)
    return out


async def _import_batch(vfs: VFS, src: Path, b: _Batch, inos: dict[Path, int], ctx: Ctx, report: ImportReport,
                        on_file: Callable[[int], None] | None) -> None:
    """Read a batch's files, store them as one chunk, create them with one ``import_files``."""
    contents = await trio.to_thread.run_sync(_read_batch, src, b.files, small_limit(vfs.chunk_size))
    entries: list[ImportFile] = []
    sent: list[tuple[Path, int]] = []
    parts: list[bytes] = []
    pos = 0
    chunk_id = 0
    try:
        for (rel, size), data in zip(b.files, contents, strict=True):
            if isinstance(data, OSError):
                report.failed.append((str(rel), _why(data)))
                if on_file:
                    on_file(size)
                continue
            if data and not chunk_id:
                chunk_id = await vfs.writer.next_chunk_id()
            entries.append(ImportFile(inos[rel.parent], os.fsencode(rel.name), 0o644 & ~ctx.umask, ctx.uid, ctx.gid,
                                      [[0, len(data), chunk_id, pos]] if data else []))
            sent.append((rel, len(data)))
            parts.append(data)
            pos += len(data)
        if not entries:
            return
        chunks = []
        if pos:
            layout = await vfs.chunks.put_chunk(chunk_id, b"".join(parts), b.profile)
            chunks.append(record_of(layout))
        del parts[:]
        results = await vfs.meta.apply(ImportFiles(chunks, entries, time.time_ns()))
    except (E.LakeError, OSError) as exc:
        if isinstance(exc, E.Invalid) and "unknown metadata command" in str(exc):
            raise _ServersTooOld() from None
        # Not known to be committed: a rerun imports whatever is missing (and skips the rest).
        for rel, size in sent:
            report.failed.append((str(rel), f"not imported: {_why(exc)}"))
            if on_file:
                on_file(size)
        return
    for (rel, size), result in zip(sent, results, strict=True):
        if isinstance(result, int):
            report.files += 1
            report.bytes += size
        else:
            report.failed.append((str(rel), f"{result[1]} (errno {result[0]})"))
        if on_file:
            on_file(size)


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
