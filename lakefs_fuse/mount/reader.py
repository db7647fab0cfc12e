"""The read path: file bytes from the memory cache, the disk cache or the peers, and read-ahead.

Owns: the chunk layouts read so far (an LRU of chunk records), the memory -> disk -> peer tiers
(:meth:`Reader.extent_bytes`: a hit in memory answers at once; a disk hit is copied into memory;
bytes fetched from the peers go into both, the disk put in the background and skipped when the
disk falls behind), the per-handle sequential read-ahead (:class:`ReadAhead`: the window doubles
while reads stay sequential, up to ``readahead_max``, and resets on a seek), the in-flight budget
read-ahead shares with the read plans (:class:`~.prefetch.AheadBudget`), and whole-file fetches
for the read plan (:meth:`Reader.fetch_file`, which in dataset mode also hands the file to the
kernel's page cache), and the open-time hint (:meth:`Reader.opened`: the local peers start
reading a file's first extents from disk while the open is answered).

A read copies the writer's buffered bytes of the range *before* it looks up the extents and lays
them over the committed bytes after: a seal that commits meanwhile is still seen (see
:meth:`Reader.read`). Bytes are never wrong: a short chunk raises
:class:`~lakefs_fuse.errors.DataUnavailable`; an extent whose whole range cannot be decoded is read
again for just the bytes asked for, which may sit on healthy shards.

Runs on the trio thread; disk I/O goes to worker threads. Imports the chunks and meta layers,
the writer (for buffered bytes) and the page-cache helpers; never pyfuse3.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import trio

from .. import errors as E
from ..chunks.cache import RangeCache
from ..chunks.client import ChunkClient
from ..chunks.diskcache import DiskCache
from ..chunks.layout import ChunkLayout
from ..config import MountConfig
from ..lake.records import layout_of
from ..meta.client import MetaClient
from ..meta.schema import Extent
from .pagecache import KernelPages, PageCachePusher
from .prefetch import AheadBudget
from .writer import Writer

log = logging.getLogger(__name__)

#: File bytes as the tiers hand them out: cache hits are views, fetched bytes are fresh buffers.
Buffer = bytes | bytearray | memoryview

#: An open hints the local peers to read this much of the file ahead (the kernel's first read
#: request is at most 1 MiB; a read fetches the whole extents it touches, a small file's at once).
OPEN_AHEAD = 1 << 20

#: The extents one read found in a cache / had to fetch: [hits, misses] (per-process hit ratio).
_TALLY: ContextVar[list[int] | None] = ContextVar("lakefs_read_tally", default=None)


@dataclass(slots=True)
class Stats:
    """The mount's data-path counters (metrics, ``.stats``): the reader counts reads, read-ahead
    and cache tiers; the VFS counts writes."""

    reads: int = 0
    read_bytes: int = 0
    writes: int = 0
    write_bytes: int = 0
    prefetches: int = 0
    readahead_skipped: int = 0
    readahead_resets: int = 0
    disk_hits: int = 0
    disk_puts_skipped: int = 0


@dataclass(slots=True)
class ReadAhead:
    """Sequential read-ahead state of one open handle."""

    next_off: int = 0      # where a sequential reader would read next
    window: int = 0        # read-ahead window (bytes); 0 = not sequential yet
    ahead_to: int = 0      # read-ahead has been started up to this file offset


def _covers(exts: list[Extent], size: int) -> bool:
    """The extents hold bytes [0, size) without a hole (sorted by file offset)."""
    pos = 0
    for e in exts:
        if e.file_off != pos:
            return False
        pos = e.end
    return pos == size


class Reader:
    def __init__(self, meta: MetaClient, chunks: ChunkClient, writer: Writer, config: MountConfig, *,
                 chunk_size: int, stats: Stats, kernel: KernelPages, disk_cache: DiskCache | None = None,
                 pusher: PageCachePusher | None = None):
        self.meta = meta
        self.chunks = chunks
        self.writer = writer
        self.chunk_size = chunk_size
        self.readahead_max = config.readahead_max
        self.stats = stats
        self.kernel = kernel
        self.pusher = pusher
        self.cache = RangeCache(config.memory_cache)
        #: Local disk tier below the memory cache (None: off). Its I/O runs in worker threads.
        self.disk = disk_cache
        self._disk_limiter = trio.CapacityLimiter(4)
        self._disk_puts = 0  # background puts in flight (beyond a bound, new ones are skipped)
        self._layouts: OrderedDict[int, ChunkLayout] = OrderedDict()
        self._ahead_limiter = trio.CapacityLimiter(8)
        #: Bytes being fetched ahead of readers: sequential read-ahead and the read plan share it.
        self.ahead = AheadBudget(config.readahead_budget)
        #: Opens hint the peers to start reading a file's first bytes from disk (local peers only;
        #: not with a disk cache, which may hold them).
        self.hint_opens = disk_cache is None and any(hasattr(s, "advise") for s in chunks.stores.values())
        #: Told (pid, bytes, extents from a cache, extents fetched) after every read (metrics, `top`).
        self.on_read: Callable[[int, int, int, int], None] | None = None
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Background disk puts and read-ahead run in ``nursery`` (before this: none start)."""
        self._nursery = nursery

    # ------------------------------------------------------------------ reads

    async def read(self, ino: int, off: int, size: int, *, pid: int, ahead: ReadAhead) -> Buffer:
        """Bytes [off, off+size) of ``ino`` as its readers see them (buffered writes included),
        for the handle opened by ``pid`` whose read-ahead state is ``ahead``."""
        inode = self.writer.overlay_attr(await self.meta.getattr(ino))
        if off >= inode.size or size <= 0:
            return b""
        size = min(size, inode.size - off)
        self.stats.reads += 1
        self.stats.read_bytes += size
        # Buffered bytes are copied *before* the extents are looked up: a seal that commits
        # while _read_committed awaits leaves the writer's buffers, and its extents may be
        # newer than the lookup; the copy still carries its bytes.
        earlier = self.writer.pieces(ino, off, size) if self.writer.has_data(ino) else None
        tally = [0, 0]
        token = _TALLY.set(tally)
        try:
            data = await self._read_committed(ino, off, size)
        finally:
            _TALLY.reset(token)  # read-ahead started below is nobody's read
        if self.on_read is not None:
            self.on_read(pid, size, tally[0], tally[1])
        if earlier or self.writer.has_data(ino):
            if not isinstance(data, bytearray):
                data = bytearray(data)
            for start, piece in earlier or ():
                data[start - off:start - off + len(piece)] = piece
            self.writer.overlay(ino, data, off)
        self._read_ahead(ahead, ino, off, size, inode.size)
        if self.pusher is not None and off == 0 and size == inode.size:
            self.kernel.got_whole(ino)  # a small file read whole: its pages are in the kernel now
        return data

    def opened(self, ino: int, size: int) -> None:
        """``ino`` (``size`` bytes) was opened for reading, its pages not in the kernel: right after
        the open is answered (a task: the open's reply does not wait for it), the local peers start
        reading the extents of its first :data:`OPEN_AHEAD` bytes from their disks, so the disk
        works while the reader's read request comes back (and, with several readers, while other
        requests are served); the read then finds the blocks in the page cache or on their way.
        Only a hint: nothing is read into memory here and nothing fails."""
        if self.hint_opens and size > 0 and self._nursery is not None:
            self._nursery.start_soon(self._advise_open, ino, size)

    async def _advise_open(self, ino: int, size: int) -> None:
        try:
            head = min(size, OPEN_AHEAD)
            for ext in await self.meta.extents(ino, 0, (head - 1) // self.chunk_size):
                if ext.file_off < head and not self.cache.holds(ext.chunk_id, ext.chunk_off, ext.length):
                    self.chunks.advise(await self._layout(ext.chunk_id), ext.chunk_off, ext.length)
        except Exception as exc:  # the read that follows reports real problems
            log.debug("open-time read hint for inode %d failed: %s", ino, exc)

    async def _read_committed(self, ino: int, off: int, size: int) -> Buffer:
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

    async def _piece(self, ext: Extent, a: int, b: int) -> Buffer:
        """File bytes [a, b) of extent ``ext``: from its whole (cached) range, or -- when the
        whole range cannot be decoded -- just these bytes, which may sit on healthy shards."""
        try:
            data = await self.extent_bytes(ext)
        except E.DataUnavailable:
            layout = await self._layout(ext.chunk_id)
            return await self.chunks.read(layout, ext.chunk_off + a - ext.file_off, b - a)
        return memoryview(data)[a - ext.file_off:b - ext.file_off]

    # ------------------------------------------------------------------ tiers

    async def _layout(self, chunk_id: int) -> ChunkLayout:
        layout = self._layouts.get(chunk_id)
        if layout is None:
            rec = await self.meta.chunk(chunk_id)
            layout = layout_of(rec)
            self._layouts[chunk_id] = layout
            if len(self._layouts) > 65536:
                self._layouts.popitem(last=False)
        return layout

    def forget_layout(self, chunk_id: int) -> None:
        """A chunk's shards moved (repair): read its record afresh next time."""
        self._layouts.pop(chunk_id, None)

    async def drop_chunk(self, chunk_id: int) -> None:
        """A chunk was deleted (GC): no tier may answer for it any more."""
        self.cache.drop_chunk(chunk_id)
        if self.disk is not None:
            await trio.to_thread.run_sync(self.disk.drop_chunk, chunk_id)
        self._layouts.pop(chunk_id, None)

    async def extent_bytes(self, ext: Extent) -> Buffer:
        """The whole byte range of one extent (a small file is fetched whole; big files by chunk):
        from the memory cache, else the disk cache, else the peers (then both caches keep it)."""
        tally = _TALLY.get()
        hit = self.cache.get(ext.chunk_id, ext.chunk_off, ext.length)
        if hit is not None:
            if tally is not None:
                tally[0] += 1
            return hit
        if self.disk is not None:
            async with self._disk_limiter:
                stored = await trio.to_thread.run_sync(self.disk.get, ext.chunk_id, ext.chunk_off, ext.length)
            if stored is not None:
                self.stats.disk_hits += 1
                self.cache.put(ext.chunk_id, ext.chunk_off, stored)
                if tally is not None:
                    tally[0] += 1
                return stored
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

    async def _disk_put(self, chunk_id: int, offset: int, data: Buffer) -> None:
        try:
            assert self.disk is not None
            async with self._disk_limiter:
                await trio.to_thread.run_sync(self.disk.put, chunk_id, offset, data)
        except Exception as exc:  # the cache is an optimization: a failing disk only logs
            log.warning("disk cache put failed: %s", exc)
        finally:
            self._disk_puts -= 1

    # -------------------------------------------------------------- read-ahead

    def _read_ahead(self, h: ReadAhead, ino: int, off: int, size: int, file_size: int) -> None:
        """Per-handle sequential read-ahead: the window doubles while reads stay sequential."""
        tolerance = 256 * 1024
        if h.next_off - tolerance <= off <= h.next_off + tolerance and off > 0:
            h.window = min(max(h.window * 2, self.chunk_size), self.readahead_max)
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
            self._nursery.start_soon(self._prefetch, ino, start, stop)

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

    async def _prefetch_one(self, ext: Extent) -> None:
        async with self._ahead_limiter:
            try:
                await self.extent_bytes(ext)
            except Exception as exc:
                log.debug("read-ahead of chunk %d failed: %s", ext.chunk_id, exc)

    async def fetch_file(self, ino: int) -> int:
        """A whole file into the memory cache (sampler-order prefetch) and, in dataset mode, into
        the kernel's page cache; returns its bytes."""
        if self.pusher is not None and self.kernel.has_whole(ino):
            return 0
        inode = await self.meta.getattr(ino)
        if not inode.size:
            return 0
        exts = await self.meta.extents(ino, 0, (inode.size - 1) // self.chunk_size)
        parts: list[Buffer] = [b""] * len(exts)

        async def one(i: int, ext: Extent) -> None:
            parts[i] = await self.extent_bytes(ext)

        async with trio.open_nursery() as nursery:
            for i, ext in enumerate(exts):
                nursery.start_soon(one, i, ext)
        if self.pusher is not None and _covers(exts, inode.size):
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if self.pusher.push(ino, data):
                # The kernel will hold exactly these bytes: the next open may keep them.
                self.kernel.remember(ino, inode.size, inode.mtime_ns)
                self.kernel.got_whole(ino)
        return sum(e.length for e in exts)
