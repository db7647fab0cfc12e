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

Admission (no silent loss): a write is accepted only while the peers' free space, net of
what this mount has already promised to store, covers it. Every buffered byte carries its
worst-case cost on disk (parity shards, shard headers, block rounding: the file sealed
alone, which packing only lowers); a seal's exact cost replaces it when it is cut, and what
was stored since the last look at the peers' free space is subtracted until the next one
(:class:`SpaceAccount`). A write that does not fit fails with ENOSPC, before any byte of it
is accepted.

A seal that fails anyway (a peer filled up behind our back, too many peers down, metadata
unreachable) keeps its bytes -- still readable, still counted in the dirty budget -- and is
retried with a backoff, in its place in the commit order. Meanwhile every flush/fsync/close
of its files reports the error (like the kernel's writeback errors); nothing is dropped
unless the file is deleted. At unmount a failing seal gets one last attempt; the daemon's
unmount path refuses to unmount while data cannot be stored (``lakefs-fuse umount``).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from ..chunks.client import ChunkClient
from ..chunks.layout import ChunkLayout
from ..errors import LakeError, NoSpace
from ..lake.records import record_of
from ..meta.client import MetaClient
from ..meta.commands import AllocChunks, Commit, CommitExtent
from ..meta.schema import Inode

log = logging.getLogger(__name__)


class DirtyFile:
    """Unsealed bytes of one file: sorted, non-overlapping ``[start, bytearray]`` segments."""

    __slots__ = ("starts", "segs", "nbytes", "mtime_ns", "since", "profile", "cost")

    def __init__(self, profile: tuple[int, int] | None = None) -> None:
        self.profile = profile  # the file's EC profile (None: the lake's); chunks hold one profile
        self.cost = 0  # bytes on the peers' disks reserved for these bytes (Writer._recost)
        self.starts: list[int] = []
        self.segs: list[bytearray] = []
        self.nbytes = 0
        self.mtime_ns = 0
        self.since = time.monotonic()

    def end(self) -> int:
        return self.starts[-1] + len(self.segs[-1]) if self.starts else 0

    def write(self, off: int, data: bytes | memoryview) -> int:
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

    def segments(self, off: int, end: int) -> Iterator[tuple[int, bytearray]]:
        """The segments that may hold bytes in [off, end), as (start, segment)."""
        i = max(0, bisect.bisect_right(self.starts, off) - 1)
        while i < len(self.starts) and self.starts[i] < end:
            yield self.starts[i], self.segs[i]
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


class SpaceAccount:
    """Free space on the peers as this mount sees it: the last sample of the peers' own figure,
    less what was stored since that sample began (the sample may or may not include it, so
    counting it again errs on the side of ENOSPC, never of accepting too much)."""

    def __init__(self) -> None:
        self.sampled: int | None = None  # raw bytes the peers had free (None: not known yet)
        self.stored = 0                  # raw bytes stored by seals, ever (a running counter)
        self._stored_at_sample = 0

    def begin_sample(self) -> int:
        return self.stored

    def end_sample(self, available: int, mark: int) -> None:
        self.sampled = available
        self._stored_at_sample = mark

    def free(self) -> int | None:
        if self.sampled is None:
            return None
        return self.sampled - (self.stored - self._stored_at_sample)


@dataclass
class Seal:
    seq: int
    parts: list[tuple[int, int, memoryview]]  # (ino, file_off, data): views into payload
    mtimes: dict[int, int]
    payload: bytes
    profile: tuple[int, int] | None = None
    cost: int = 0  # bytes it takes on the peers' disks
    done: trio.Event = field(default_factory=trio.Event)
    prev: list[trio.Event] = field(default_factory=list)
    #: The last attempt's error while the seal is failing (its bytes are kept and retried).
    error: LakeError | None = None
    #: Inodes deleted since the seal was cut: when it holds nothing else, it stops retrying.
    gone: set[int] = field(default_factory=set)

    @property
    def nbytes(self) -> int:
        return sum(len(d) for _, _, d in self.parts)

    @property
    def inos(self) -> set[int]:
        return {ino for ino, _, _ in self.parts}


#: Backoff between attempts of a failing seal (seconds): first, cap.
RETRY_FIRST, RETRY_MAX = 0.5, 15.0


class Writer:
    def __init__(self, meta: MetaClient, chunks: ChunkClient, *, chunk_size: int, budget: int,
                 pack_delay: float, max_age: float = 5.0, space_interval: float = 1.0):
        self.meta = meta
        self.chunks = chunks
        self.chunk_size = chunk_size
        self.budget = budget
        self.max_age = max_age
        self.pack_delay = pack_delay
        self.closed: dict[int, float] = {}  # ino -> when it was closed with data waiting to pack
        self.dirty: dict[int, DirtyFile] = {}
        self.inflight: dict[int, list[Seal]] = {}
        #: Errors of seals that ended without storing their bytes, reported at the next
        #: flush/fsync/close/write of the file (failing seals report their own ``error``).
        self._errors: dict[int, LakeError] = {}
        self.buffered = 0  # dirty + inflight bytes
        #: Bytes on the peers' disks promised to buffered data (dirty: worst case; sealed: exact).
        self.reserved = 0
        self.space = SpaceAccount()
        self.space_interval = space_interval
        self._seq = 0
        self._space = trio.Condition()
        self._progress = trio.Event()  # set (and replaced) whenever a seal finishes or fails
        self._retry_now = trio.Event()  # wakes failing seals from their backoff
        self._final = False  # unmounting: a failing seal gets one more attempt, then gives up
        self._chunk_ids: list[int] = []
        self._nursery: trio.Nursery | None = None
        self.seals_committed = 0
        self.seals_failed = 0  # failed attempts (each is retried)
        self.seals_lost = 0    # seals given up at unmount (their bytes are lost; logged)

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._age_flusher)
        nursery.start_soon(self._watch_space)

    # -------------------------------------------------------------- admission

    def _file_cost(self, nbytes: int, profile: tuple[int, int] | None) -> int:
        """Worst-case bytes on disk for ``nbytes`` of one file sealed alone (packing with other
        files only lowers it): whole chunks plus one partial chunk."""
        full, rest = divmod(nbytes, self.chunk_size)
        cost = full * self.chunks.stored_bytes(self.chunk_size, profile) if full else 0
        return cost + self.chunks.stored_bytes(rest, profile)

    def _recost(self, df: DirtyFile) -> None:
        cost = self._file_cost(df.nbytes, df.profile)
        self.reserved += cost - df.cost
        df.cost = cost

    def free_space(self) -> int | None:
        """Bytes the peers can still take beyond what this mount has promised (None: unknown)."""
        free = self.space.free()
        return None if free is None else free - self.reserved

    def admit(self, ino: int, size: int, profile: tuple[int, int] | None) -> None:
        """Raise NoSpace unless ``size`` more bytes of ``ino`` fit on the peers."""
        free = self.space.free()
        if free is None:
            return
        df = self.dirty.get(ino)
        before = df.nbytes if df is not None else 0
        cost = self._file_cost(before + size, df.profile if df is not None else profile)
        if self.reserved - (df.cost if df is not None else 0) + cost > free:
            raise NoSpace(f"the lake's peers are full ({max(0, free - self.reserved) >> 20} MiB "
                          f"left after {self.reserved >> 20} MiB promised to buffered writes)")

    async def _watch_space(self) -> None:
        """Keep a recent figure of the peers' free space for :meth:`admit`."""
        warned = False
        while True:
            mark = self.space.begin_sample()
            try:
                _total, avail = await self.chunks.capacity()
                self.space.end_sample(avail, mark)
                warned = False
            except Exception as exc:  # a failing figure keeps the last one; say so once
                if not warned:
                    log.warning("cannot read the peers' free space: %s", exc)
                    warned = True
            await trio.sleep(self.space_interval)

    # -------------------------------------------------------------- errors

    def pending_error(self, ino: int) -> LakeError | None:
        """The write-back error ``ino`` has now: a failing seal's, or one not reported yet."""
        for seal in self.inflight.get(ino, ()):
            if seal.error is not None:
                return seal.error
        return self._errors.get(ino)

    def take_error(self, ino: int) -> LakeError | None:
        """Like :meth:`pending_error`, but an error of a seal that has ended is reported once."""
        err = self._errors.pop(ino, None)
        return err if err is not None else self.pending_error(ino)

    def has_error(self, ino: int) -> bool:
        return self.pending_error(ino) is not None

    # -------------------------------------------------------------- buffering

    async def write(self, ino: int, off: int, data: bytes | memoryview, profile: tuple[int, int] | None = None) -> None:
        """Buffer ``data``; raises NoSpace (nothing accepted) when the peers cannot take it."""
        self.admit(ino, len(data), profile)
        if self.buffered + len(data) > self.budget:
            await self._make_room(len(data))
            self.admit(ino, len(data), profile)  # the world moved while we waited
        df = self.dirty.get(ino)
        if df is None:
            df = self.dirty[ino] = DirtyFile(profile)
        self.buffered += df.write(off, data)
        df.mtime_ns = time.time_ns()
        while df.nbytes >= self.chunk_size:
            self._start_seal([(ino, o, d) for o, d in df.take(self.chunk_size)], {ino: df.mtime_ns}, df.profile)
        self._recost(df)
        if not df.nbytes:
            del self.dirty[ino]
            self.closed.pop(ino, None)

    async def _make_room(self, want: int) -> None:
        async with self._space:
            while self.buffered + want > self.budget and self.buffered > 0:
                # seal the largest dirty files first; then wait for uploads to drain
                for ino in sorted(self.dirty, key=lambda i: self.dirty[i].nbytes, reverse=True)[:4]:
                    self._seal_inodes([ino])
                seals = {id(s): s for pending in self.inflight.values() for s in pending}.values()
                if not self.dirty and seals and all(s.error is not None for s in seals):
                    # Everything buffered is failing to store: waiting would never end.
                    raise next(iter(seals)).error  # type: ignore[misc]
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

    def buffered_bytes(self, ino: int) -> int:
        """Bytes of ``ino`` not committed yet, dirty and in flight (``st_blocks`` counts them)."""
        df = self.dirty.get(ino)
        n = df.nbytes if df is not None else 0
        for seal in self.inflight.get(ino, ()):
            n += sum(len(d) for i, _o, d in seal.parts if i == ino)
        return n

    def has_data(self, ino: int) -> bool:
        return ino in self.dirty or ino in self.inflight

    def _buffered(self, ino: int, off: int, end: int) -> Iterator[tuple[int, memoryview | bytearray]]:
        """The buffered bytes of ``ino`` in [off, end) as (file offset, bytes), oldest first: in-flight
        seals in commit order, then the dirty segments (newer bytes come later and win)."""
        runs: list[tuple[int, memoryview | bytearray]] = [
            (o, d) for seal in self.inflight.get(ino, ()) for i, o, d in seal.parts if i == ino]
        df = self.dirty.get(ino)
        if df is not None:
            runs.extend(df.segments(off, end))
        for o, d in runs:
            a, b = max(o, off), min(o + len(d), end)
            if a < b:
                yield a, d[a - o:b - o]

    def overlay(self, ino: int, buf: bytearray, off: int) -> None:
        """Copy the buffered bytes of ``ino`` that fall in [off, off+len(buf)) over ``buf``."""
        for a, piece in self._buffered(ino, off, off + len(buf)):
            buf[a - off:a - off + len(piece)] = piece

    def pieces(self, ino: int, off: int, size: int) -> list[tuple[int, bytes]]:
        """Copies of the buffered bytes of ``ino`` in [off, off+size), oldest first."""
        return [(a, bytes(piece)) for a, piece in self._buffered(ino, off, off + size)]

    def overlay_attr(self, inode: Inode) -> Inode:
        """``inode`` as readers see it: buffered bytes count in its size, blocks and mtime."""
        if self.has_data(inode.ino):
            inode.size = max(inode.size, self.end(inode.ino))
            inode.buffered = self.buffered_bytes(inode.ino)
            mt = self.mtime(inode.ino)
            if mt > inode.mtime_ns:
                inode.mtime_ns = inode.ctime_ns = mt
        return inode

    def truncate(self, ino: int, size: int) -> None:
        df = self.dirty.get(ino)
        if df is not None:
            self.buffered -= df.truncate(size)
            self._recost(df)
            if not df.nbytes:
                del self.dirty[ino]
                self.closed.pop(ino, None)

    def discard(self, ino: int) -> None:
        """The inode is gone: drop its unsealed bytes (in-flight seals commit to nothing, and a
        failing seal that held only deleted files stops retrying)."""
        self.closed.pop(ino, None)
        df = self.dirty.pop(ino, None)
        if df is not None:
            self.buffered -= df.nbytes
            self.reserved -= df.cost
        self._errors.pop(ino, None)
        for seal in self.inflight.get(ino, ()):
            seal.gone.add(ino)
        self._wake_retries()

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
                    self._recost(df)  # before the seal reserves its own, exact cost
                    self._start_seal(parts, mtimes, profile)
                    parts, mtimes, room = [], {}, self.chunk_size
            self._recost(df)
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
        seal = Seal(self._seq, views, dict(mtimes), payload, profile,
                    cost=self.chunks.stored_bytes(len(payload), profile))
        self.reserved += seal.cost
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

    async def next_chunk_id(self) -> int:
        """A fresh chunk id (also for the compactor's chunks)."""
        return await self._next_chunk_id()

    async def _next_chunk_id(self) -> int:
        if not self._chunk_ids:
            first = await self.meta.apply(AllocChunks(64))
            self._chunk_ids = list(range(first + 63, first - 1, -1))
        return self._chunk_ids.pop()

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _wake_retries(self) -> None:
        self._retry_now.set()
        self._retry_now = trio.Event()

    async def _run_seal(self, seal: Seal) -> None:
        """Store and commit one seal; on failure keep its bytes and try again (see the module
        docstring) until it commits, its files are all deleted, or the mount ends."""
        inos = seal.inos
        chunk_id: int | None = None
        layout = None
        delay = RETRY_FIRST
        stored = False
        try:
            while True:
                if seal.gone >= inos:
                    log.info("seal of %d bytes dropped: its files %s were deleted", seal.nbytes, sorted(inos))
                    await self._drop_stored(layout)
                    break
                try:
                    if chunk_id is None:
                        chunk_id = await self._next_chunk_id()
                    if layout is None:
                        layout = await self.chunks.put_chunk(chunk_id, seal.payload, seal.profile)
                        self.space.stored += seal.cost
                    for ev in seal.prev:
                        await ev.wait()
                    extents: list[CommitExtent] = []
                    pos = 0
                    for ino, off, data in seal.parts:
                        extents.append(CommitExtent(ino, off, len(data), chunk_id, pos))
                        pos += len(data)
                    await self.meta.apply(Commit(record_of(layout), extents, seal.mtimes, time.time_ns()))
                    stored = True
                    self.seals_committed += 1
                    if seal.error is not None:
                        log.warning("seal of %d bytes for inodes %s stored after %s", seal.nbytes,
                                    sorted(inos), "earlier failures")
                    break
                except Exception as exc:  # never let a seal take the mount down
                    err = exc if isinstance(exc, LakeError) else LakeError(f"write-back failed: {exc}")
                    self.seals_failed += 1
                    if seal.error is None or self._final:
                        if isinstance(exc, LakeError):
                            log.error("seal of %d bytes for inodes %s failed: %s; keeping the bytes "
                                      "and retrying", seal.nbytes, sorted(inos), exc)
                        else:
                            log.exception("seal of inodes %s failed unexpectedly; keeping the bytes "
                                          "and retrying", sorted(inos))
                    seal.error = err
                    self._signal_progress()
                    if self._final:
                        self.seals_lost += 1
                        log.error("unmounting: %d bytes written to inodes %s could not be stored and are "
                                  "lost: %s", seal.nbytes, sorted(inos - seal.gone), err)
                        for ino in inos - seal.gone:
                            self._errors[ino] = err
                        await self._drop_stored(layout)
                        break
                    with trio.move_on_after(delay):
                        await self._retry_now.wait()
                    delay = min(delay * 2, RETRY_MAX)
        finally:
            for ev in seal.prev:  # keep commit order even when this seal ended early
                await ev.wait()
            for ino in inos:
                pending = self.inflight.get(ino)
                if pending:
                    pending.remove(seal)
                    if not pending:
                        del self.inflight[ino]
            self.buffered -= seal.nbytes
            self.reserved -= seal.cost
            seal.error = None if stored else seal.error
            seal.done.set()
            self._signal_progress()
            async with self._space:
                self._space.notify_all()

    async def _drop_stored(self, layout: ChunkLayout | None) -> None:
        """Shards of a seal that will never be committed: nothing can reference them."""
        if layout is None:
            return
        try:
            await self.chunks.delete_chunk(layout)
        except Exception as exc:  # the shards stay as orphans; `lakefs-fuse gc` frees them
            log.warning("chunk %d: could not delete the shards of a dropped seal: %s", layout.chunk_id, exc)

    async def close(self, ino: int) -> None:
        """A handle of ``ino`` was closed: seal now, or queue it for packing (``pack_delay``)."""
        if self.pack_delay <= 0:
            await self.flush(ino)
            return
        err = self.take_error(ino)
        if err is not None:
            raise err
        if ino not in self.dirty:
            return
        self.closed.setdefault(ino, time.monotonic())
        waiting = sum(self.dirty[i].nbytes for i in self.closed if i in self.dirty)
        if waiting >= self.chunk_size:
            self._seal_inodes(list(self.closed), full_only=True)

    async def flush(self, ino: int) -> None:
        """Seal and commit everything written to ``ino`` so far; raise its write-back error
        (while a seal of the file is failing, at once: its bytes stay buffered and retried)."""
        await trio.sleep(0)  # let flushes that arrive together join one packed seal
        self._seal_inodes(self._flush_group(ino))
        while True:
            err = self.take_error(ino)
            if err is not None:
                raise err
            pending = self.inflight.get(ino)
            if not pending:
                return
            await self._progress.wait()

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
        """Seal and commit everything buffered; raise the first write-back error (a failing
        seal's: its bytes stay buffered and retried)."""
        self._seal_inodes(list(self.dirty))
        while self.inflight:
            for pending in self.inflight.values():
                for seal in pending:
                    if seal.error is not None:
                        raise seal.error
            await self._progress.wait()

    async def shutdown(self) -> None:
        """Unmount: seal everything, give failing seals one last attempt now, wait for all."""
        self._seal_inodes(list(self.dirty))
        self._final = True
        self._wake_retries()
        while self.inflight:
            await self._progress.wait()

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
