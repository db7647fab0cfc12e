"""Bulk ingest: ``lakefs-fuse import SRC DEST`` copies a local tree into a lake without FUSE.

The importer drives the same :class:`~.vfs.VFS` a mount uses -- so packing, erasure coding,
placement and metadata commands are exactly a mount's -- but without the kernel in between:
no 7 FUSE requests per small file, and files are read from disk by ``jobs`` worker threads while
the writer packs whatever arrives together into shared chunks (the pack delay is the writer's
grouping window). At the end every buffer is sealed and the shards and metadata are synced, so a
finished import is durable. An interrupted one leaves whole files only: each file is committed
as a unit, and a rerun skips files that are already there with the same size.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from .. import errors as E
from ..meta.schema import ROOT_INO
from .vfs import VFS, Ctx

PIECE = 1 << 20


@dataclass
class ImportReport:
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] | None = None

    def to_json(self) -> dict:
        return {"files": self.files, "bytes": self.bytes, "dirs": self.dirs, "skipped": self.skipped,
                "failed": [list(f) for f in (self.failed or [])]}


def scan(src: Path) -> tuple[list[Path], list[tuple[Path, int]]]:
    """Directories (parents first) and regular files with their sizes under ``src``."""
    dirs: list[Path] = []
    files: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        base = Path(dirpath)
        for d in dirnames:
            dirs.append((base / d).relative_to(src))
        for f in sorted(filenames):
            p = base / f
            try:
                s = p.lstat()
            except OSError:
                continue
            if st.S_ISREG(s.st_mode):
                files.append((p.relative_to(src), s.st_size))
    return dirs, files


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
    report = ImportReport(failed=[])
    dirs, files = await trio.to_thread.run_sync(scan, src)
    top = await _mkdirs(vfs, ROOT_INO, Path(dest.strip("/")) if dest.strip("/") else Path(), ctx)
    inos: dict[Path, int] = {Path(): top}
    for rel in dirs:
        inos[rel] = await _mkdirs(vfs, inos[rel.parent], Path(rel.name), ctx)
        report.dirs += 1

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
