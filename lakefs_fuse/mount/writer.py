"""The write path: per-inode dirty buffers sealed into immutable, packed chunks.

Writes land in a :class:`DirtyFile` (sorted, non-overlapping byte segments). Data is
*sealed* -- packed into a chunk, erasure-coded, stored on the peers, then committed with one
metadata command carrying every extent, size and mtime in that chunk -- when:

* a file has a whole chunk of dirty bytes (large sequential writes stream out while the
  writer keeps writing),
* the file is flushed (close), fsynced or truncated, or the mount is unmounted,
* dirty data is older than ``max_age`` seconds (a bound on what a daemon crash can lose),
* dirty memory exceeds the budget: writers then wait (backpressure).

Flushes that arrive together are packed into shared chunks (group commit), so small files
written concurrently cost one chunk, not one each.

Ordering: uploads of different seals run in parallel, but each seal commits only after
every earlier seal touching one of its inodes has finished, so newer bytes always shadow
older ones. Until its commit, a seal's bytes stay readable from memory (``inflight``).

A failed seal (no peer has room, too many peers down) records the error on its inodes;
the next flush/fsync/close of those files reports it (like the kernel's writeback errors).
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass, field

import trio

from ..chunks.client import ChunkClient
from ..errors import LakeError
from ..meta.client import MetaClient

log = logging.getLogger(__name__)


class DirtyFile:
    """Unsealed bytes of one file: sorted, non-overlapping ``[start, bytearray]`` segments."""

    __slots__ = ("starts", "segs", "nbytes", "mtime_ns", "since", "profile")

    def __init__(self, profile: tuple[int, int] | None = None) -> None:
        self.profile = profile  # the file's EC profile (None: the lake's); chunks hold one profile
        self.starts: list[int] = []
        self.segs: list[bytearray] = []
        self.nbytes = 0
        self.mtime_ns = 0
        self.since = time.monotonic()

    def end(self) -> int:
        return self.starts[-1] + len(self.segs[-1]) if self.starts else 0

    def write(self, off: int, data: bytes) -> int:
        """Merge ``data`` at ``off``; returns the growth in buffered bytes."""
        end = off + len(data)
        before = self.nbytes
        # Fast path: appending right after the last segment (sequential writes).
        if self.starts and self.starts[-1] + len(self.segs[-1]) == off:
            self.segs[-1] += data
            self.nbytes += len(data)
            return len(data)
        lo = bisect.bisect_left(self.starts, off)
        if lo > 0 and self.starts[lo - 1] + len(self.segs[lo - 1]) >= off:
            lo -= 1
        hi = lo
        while hi < len(self.starts) and self.starts[hi] <= end:
            hi += 1
        if lo == hi:
            self.starts.insert(lo, off)
            self.segs.insert(lo, bytearray(data))
            self.nbytes += len(data)
            return len(data)
        new_start = min(off, self.starts[lo])
        new_end = max(end, self.starts[hi - 1] + len(self.segs[hi - 1]))
        merged = bytearray(new_end - new_start)
        for i in range(lo, hi):
            s = self.starts[i] - new_start
            merged[s:s + len(self.segs[i])] = self.segs[i]
            self.nbytes -= len(self.segs[i])
        merged[off - new_start:end - new_start] = data
        self.starts[lo:hi] = [new_start]
        self.segs[lo:hi] = [merged]
        self.nbytes += len(merged)
        return self.nbytes - before

    def overlay(self, buf: bytearray, off: int) -> None:
        """Copy dirty bytes that fall in [off, off+len(buf)) over ``buf``."""
        end = off + len(buf)
        i = max(0, bisect.bisect_right(self.starts, off) - 1)
        while i < len(self.starts) and self.starts[i] < end:
            s, seg = self.starts[i], self.segs[i]
            a, b = max(s, off), min(s + len(seg), end)
            if a < b:
                buf[a - off:b - off] = seg[a - s:b - s]
            i += 1

    def take(self, limit: int) -> list[tuple[int, bytes]]:
        """Remove and return up to ``limit`` bytes from the lowest offsets."""
        out: list[tuple[int, bytes]] = []
        while self.starts and limit > 0:
            s, seg = self.starts[0], self.segs[0]
            if len(seg) <= limit:
                out.append((s, bytes(seg)))
                limit -= len(seg)
                del self.starts[0], self.segs[0]
                self.nbytes -= len(seg)
            else:
                out.append((s, bytes(seg[:limit])))
                self.segs[0] = seg[limit:]
                self.starts[0] = s + limit
                self.nbytes -= limit
                limit = 0
        return out

    def truncate(self, size: int) -> int:
        """Drop bytes at or beyond ``size``; returns the bytes dropped."""
        dropped = 0
        while self.starts and self.starts[-1] >= size:
            dropped += len(self.segs.pop())
            self.starts.pop()
        if self.starts and self.starts[-1] + len(self.segs[-1]) > size:
            keep = size - self.starts[-1]
            dropped += len(self.segs[-1]) - keep
            del self.segs[-1][keep:]
        self.nbytes -= dropped
        return dropped


@dataclass
class Seal:
    seq: int
    parts: list[tuple[int, int, memoryview]]  # (ino, file_off, data): views into payload
    mtimes: dict[int, int]
    payload: bytes
    profile: tuple[int, int] | None = None
    done: trio.Event = field(default_factory=trio.Event)
    prev: list[trio.Event] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(d) for _, _, d in self.parts)


class Writer:
    def __init__(self, meta: MetaClient, chunks: ChunkClient, *, chunk_size: int, budget: int,
                 max_age: float = 5.0, pack_delay: float = 0.0):
        self.meta = meta
        self.chunks = chunks
        self.chunk_size = chunk_size
        self.budget = budget
        self.max_age = max_age
        self.pack_delay = pack_delay
        self.closed: dict[int, float] = {}  # ino -> when it was closed with data waiting to pack
        self.dirty: dict[int, DirtyFile] = {}
        self.inflight: dict[int, list[Seal]] = {}
        self.errors: dict[int, LakeError] = {}
        self.buffered = 0  # dirty + inflight bytes
        self._seq = 0
        self._space = trio.Condition()
        self._chunk_ids: list[int] = []
        self._nursery: trio.Nursery | None = None
        self.seals_committed = 0

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._age_flusher)

    # -------------------------------------------------------------- buffering

    async def write(self, ino: int, off: int, data: bytes, profile: tuple[int, int] | None = None) -> None:
        if self.buffered + len(data) > self.budget:
            await self._make_room(len(data))
        df = self.dirty.get(ino)
        if df is None:
            df = self.dirty[ino] = DirtyFile(profile)
        self.buffered += df.write(off, data)
        df.mtime_ns = time.time_ns()
        while df.nbytes >= self.chunk_size:
            self._start_seal([(ino, o, d) for o, d in df.take(self.chunk_size)], {ino: df.mtime_ns}, df.profile)
        if not df.nbytes:
            del self.dirty[ino]
            self.closed.pop(ino, None)

    async def _make_room(self, want: int) -> None:
        async with self._space:
            while self.buffered + want > self.budget and self.buffered > 0:
                # seal the largest dirty files first; then wait for uploads to drain
                for ino in sorted(self.dirty, key=lambda i: self.dirty[i].nbytes, reverse=True)[:4]:
                    self._seal_inodes([ino])
                await self._space.wait()

    def end(self, ino: int) -> int:
        """Highest buffered end offset of ``ino`` (0 if nothing is buffered)."""
        end = 0
        df = self.dirty.get(ino)
        if df is not None:
            end = df.end()
        for seal in self.inflight.get(ino, ()):
            for i, o, d in seal.parts:
                if i == ino:
                    end = max(end, o + len(d))
        return end

    def mtime(self, ino: int) -> int:
        df = self.dirty.get(ino)
        return df.mtime_ns if df is not None else 0

    def has_data(self, ino: int) -> bool:
        return ino in self.dirty or ino in self.inflight

    def overlay(self, ino: int, buf: bytearray, off: int) -> None:
        end = off + len(buf)
        for seal in self.inflight.get(ino, ()):  # oldest first
            for i, o, d in seal.parts:
                if i == ino and o < end and o + len(d) > off:
                    a, b = max(o, off), min(o + len(d), end)
                    buf[a - off:b - off] = d[a - o:b - o]
        df = self.dirty.get(ino)
        if df is not None:
            df.overlay(buf, off)

    def pieces(self, ino: int, off: int, size: int) -> list[tuple[int, bytes]]:
        """Copies of the buffered bytes of ``ino`` in [off, off+size), oldest first."""
        out: list[tuple[int, bytes]] = []
        end = off + size
        for seal in self.inflight.get(ino, ()):
            for i, o, d in seal.parts:
                if i == ino and o < end and o + len(d) > off:
                    a, b = max(o, off), min(o + len(d), end)
                    out.append((a, bytes(d[a - o:b - o])))
        df = self.dirty.get(ino)
        if df is not None:
            i = max(0, bisect.bisect_right(df.starts, off) - 1)
            while i < len(df.starts) and df.starts[i] < end:
                s, seg = df.starts[i], df.segs[i]
                a, b = max(s, off), min(s + len(seg), end)
                if a < b:
                    out.append((a, bytes(seg[a - s:b - s])))
                i += 1
        return out

    def truncate(self, ino: int, size: int) -> None:
        df = self.dirty.get(ino)
        if df is not None:
            self.buffered -= df.truncate(size)
            if not df.nbytes:
                del self.dirty[ino]
                self.closed.pop(ino, None)

    def discard(self, ino: int) -> None:
        """The inode is gone: drop its unsealed bytes (in-flight seals commit to nothing)."""
        self.closed.pop(ino, None)
        df = self.dirty.pop(ino, None)
        if df is not None:
            self.buffered -= df.nbytes
        self.errors.pop(ino, None)

    # ----------------------------------------------------------------- sealing

    def _seal_inodes(self, inos: list[int], *, full_only: bool = False) -> None:
        """Take the dirty bytes of ``inos`` and pack them into as few chunks as possible; files
        with different EC profiles never share a chunk.

        ``full_only``: stop before starting a chunk that would not be filled; what is left
        stays dirty (and waiting) for the next round.
        """
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for ino in inos:
            df = self.dirty.get(ino)
            groups.setdefault(df.profile if df is not None else None, []).append(ino)
        for profile, group in groups.items():
            self._seal_group(group, profile, full_only)

    def _seal_group(self, inos: list[int], profile: tuple[int, int] | None, full_only: bool) -> None:
        parts: list[tuple[int, int, bytes]] = []
        mtimes: dict[int, int] = {}
        room = self.chunk_size
        left = sum(self.dirty[i].nbytes for i in inos if i in self.dirty)
        for ino in inos:
            df = self.dirty.get(ino)
            if df is None:
                self.closed.pop(ino, None)
                continue
            while df.nbytes:
                if full_only and room == self.chunk_size and left < self.chunk_size:
                    break
                before = df.nbytes
                mtimes[ino] = df.mtime_ns
                for off, data in df.take(room):
                    parts.append((ino, off, data))
                    room -= len(data)
                left -= before - df.nbytes
                if room == 0:
                    self._start_seal(parts, mtimes, profile)
                    parts, mtimes, room = [], {}, self.chunk_size
            if not df.nbytes:
                del self.dirty[ino]
                self.closed.pop(ino, None)
        if parts:
            self._start_seal(parts, mtimes, profile)

    def _start_seal(self, parts: list[tuple[int, int, bytes]], mtimes: dict[int, int],
                    profile: tuple[int, int] | None = None) -> None:
        self._seq += 1
        # One copy of the bytes while the seal is in flight: the chunk payload, with the
        # parts (still served to readers until the commit) as views into it.
        payload = b"".join(d for _, _, d in parts)
        views, pos = [], 0
        for ino, off, data in parts:
            views.append((ino, off, memoryview(payload)[pos:pos + len(data)]))
            pos += len(data)
        seal = Seal(self._seq, views, dict(mtimes), payload, profile)
        seen = set()
        for ino, _, _ in parts:
            if ino in seen:
                continue
            seen.add(ino)
            pending = self.inflight.setdefault(ino, [])
            if pending:
                seal.prev.append(pending[-1].done)
            pending.append(seal)
        assert self._nursery is not None, "Writer.start() was not called"
        self._nursery.start_soon(self._run_seal, seal)

    async def _next_chunk_id(self) -> int:
        if not self._chunk_ids:
            first = await self.meta.apply(["alloc_chunks", 64])
            self._chunk_ids = list(range(first + 63, first - 1, -1))
        return self._chunk_ids.pop()

    async def _run_seal(self, seal: Seal) -> None:
        inos = {ino for ino, _, _ in seal.parts}
        try:
            chunk_id = await self._next_chunk_id()
            extents, pos = [], 0
            for ino, off, data in seal.parts:
                extents.append([ino, off, len(data), chunk_id, pos])
                pos += len(data)
            layout = await self.chunks.put_chunk(chunk_id, seal.payload, seal.profile)
            for ev in seal.prev:
                await ev.wait()
            await self.meta.apply(["commit", layout.to_wire(), extents, seal.mtimes, time.time_ns()])
            self.seals_committed += 1
        except LakeError as exc:
            log.error("seal of %d bytes for inodes %s failed: %s", seal.nbytes, sorted(inos), exc)
            for ino in inos:
                self.errors[ino] = exc
        except Exception as exc:  # never let a seal take the mount down
            log.exception("seal of inodes %s failed unexpectedly", sorted(inos))
            err = LakeError(f"write-back failed: {exc}")
            for ino in inos:
                self.errors[ino] = err
        finally:
            for ev in seal.prev:  # keep commit order even when this seal failed early
                await ev.wait()
            for ino in inos:
                pending = self.inflight.get(ino)
                if pending:
                    pending.remove(seal)
                    if not pending:
                        del self.inflight[ino]
            self.buffered -= seal.nbytes
            seal.done.set()
            async with self._space:
                self._space.notify_all()

    async def close(self, ino: int) -> None:
        """A handle of ``ino`` was closed: seal now, or queue it for packing (``pack_delay``)."""
        if self.pack_delay <= 0:
            await self.flush(ino)
            return
        err = self.errors.pop(ino, None)
        if err is not None:
            raise err
        if ino not in self.dirty:
            return
        self.closed.setdefault(ino, time.monotonic())
        waiting = sum(self.dirty[i].nbytes for i in self.closed if i in self.dirty)
        if waiting >= self.chunk_size:
            self._seal_inodes(list(self.closed), full_only=True)

    async def flush(self, ino: int) -> None:
        """Seal and commit everything written to ``ino`` so far; raise its pending error."""
        await trio.sleep(0)  # let flushes that arrive together join one packed seal
        self._seal_inodes(self._flush_group(ino))
        pending = self.inflight.get(ino)
        if pending:
            await pending[-1].done.wait()
        err = self.errors.pop(ino, None)
        if err is not None:
            raise err

    def _flush_group(self, ino: int) -> list[int]:
        """``ino`` plus other small dirty files, so close() of many small files packs them."""
        group = [ino]
        room = self.chunk_size - (self.dirty[ino].nbytes if ino in self.dirty else 0)
        others = list(self.closed) + [i for i in self.dirty if i not in self.closed]
        for other in others:
            df = self.dirty.get(other)
            if df is not None and other != ino and df.nbytes <= room:
                group.append(other)
                room -= df.nbytes
        return group

    async def flush_all(self) -> None:
        self._seal_inodes(list(self.dirty))
        for pending in list(self.inflight.values()):
            if pending:
                await pending[-1].done.wait()

    async def _age_flusher(self) -> None:
        tick = max(0.05, min(1.0, self.max_age / 2, self.pack_delay / 4 if self.pack_delay > 0 else 1.0))
        while True:
            await trio.sleep(tick)
            now = time.monotonic()
            if self.closed and now - min(self.closed.values()) > self.pack_delay:
                self._seal_inodes(list(self.closed))
            old = [ino for ino, df in self.dirty.items() if now - df.since > self.max_age]
            if old:
                self._seal_inodes(old)
