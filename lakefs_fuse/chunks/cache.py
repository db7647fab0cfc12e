"""In-memory cache of immutable chunk ranges, and the admission policy it shares with the disk tier.

Chunks never change once sealed, so cached ranges never need invalidation -- only eviction.
Entries are (chunk id, offset) -> bytes; a lookup finds any entry of the chunk that covers the
wanted range.

Which entries stay is decided by :class:`TinyLfuPolicy` (W-TinyLFU, sized in bytes), not by
plain LRU: training jobs read their dataset in epochs, and an epoch bigger than the cache makes
LRU evict every range just before it is wanted again (0 % hits). The policy keeps a small
recency *window* (LRU) in front of a *main* area (segmented LRU: probation + protected). What
falls out of the window is a candidate for the main area; once the cache is full it gets in
only if a :class:`FrequencySketch` says it was used more often than the main area's victim(s),
ties going to the victim. So a cyclic scan keeps a stable part of itself resident (hit ratio
close to capacity / scan size) and a one-time scan cannot displace a hot set.
:mod:`.diskcache` uses the same policy for the local-disk tier.

The memory tier is called from the trio thread only and takes no lock; the policy object
itself is not thread-safe (the disk tier wraps it in its lock).

Imports nothing from the project.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import NamedTuple

import xxhash

RangeKey = tuple[int, int]  # (chunk id, offset of the range within the chunk)

_M64 = (1 << 64) - 1
_KEY = struct.Struct("<QQ")
_HALVE = bytes(i >> 1 for i in range(256))


class FrequencySketch:
    """Approximate access counts of range keys: a count-min sketch with periodic aging.

    ``DEPTH`` rows of ``width`` saturating counters (at most 15, one byte each), indexed by
    double hashing of one xxh3 digest. Conservative update (only the smallest counters grow)
    keeps over-estimates down. :meth:`age` halves every counter so that popularity from long
    ago fades: the owner calls it every ~10 x entries additions (a fixed period, so a hot key
    seen 5 times still ties a newcomer after two periods of scanning).

    The hash depends only on the key's integers, so a sketch saved by one process means the
    same in the next (the disk tier keeps it across remounts).
    """

    DEPTH = 4
    MAX_COUNT = 15

    def __init__(self, width: int):
        self.width = 1 << max(0, width - 1).bit_length()  # a power of two
        self._mask = self.width - 1
        self._rows = bytearray(self.DEPTH * self.width)
        self.additions = 0

    def _slots(self, key: RangeKey) -> list[int]:
        h = xxhash.xxh3_64_intdigest(_KEY.pack(key[0] & _M64, key[1] & _M64))
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
        return [row * self.width + ((h1 + row * h2) & self._mask) for row in range(self.DEPTH)]

    def add(self, key: RangeKey) -> None:
        rows = self._rows
        slots = self._slots(key)
        low = min(rows[s] for s in slots)
        if low < self.MAX_COUNT:
            for s in slots:
                if rows[s] == low:
                    rows[s] = low + 1
        self.additions += 1

    def estimate(self, key: RangeKey) -> int:
        rows = self._rows
        return min(rows[s] for s in self._slots(key))

    def age(self) -> None:
        self._rows = bytearray(self._rows.translate(_HALVE))
        self.additions = 0

    def to_bytes(self) -> bytes:
        return struct.pack("<II", self.width, min(self.additions, 0xFFFFFFFF)) + bytes(self._rows)

    @classmethod
    def from_bytes(cls, data: bytes, width: int) -> FrequencySketch | None:
        """The sketch ``to_bytes`` wrote, or None when it does not fit a sketch of ``width``."""
        sketch = cls(width)
        if len(data) != 8 + len(sketch._rows):
            return None
        saved_width, additions = struct.unpack_from("<II", data)
        if saved_width != sketch.width or max(data[8:], default=0) > cls.MAX_COUNT:
            return None
        sketch._rows[:] = data[8:]
        sketch.additions = additions
        return sketch


class Displaced(NamedTuple):
    """Keys that :meth:`TinyLfuPolicy.admit` pushed out; the caller deletes their bytes."""

    evicted: list[RangeKey]  # main-area victims that lost to a more frequent candidate
    rejected: list[RangeKey]  # candidates leaving the window that lost to the victims


def sketch_width_for(capacity: int) -> int:
    """Sketch width for a cache of ``capacity`` bytes: one counter per 64 KiB, 4096..1 Mi."""
    return min(max(capacity // (64 * 1024), 4096), 1 << 20)


class TinyLfuPolicy:
    """W-TinyLFU over byte sizes: which keys stay resident and which go.

    Knows keys and sizes only; the caller stores the bytes. A new key always enters the window.
    Keys falling out of the window's LRU end are candidates for the main area: while it has
    room they go in; when it is full, the candidate's estimated frequency must *beat* every
    victim it would displace (probation's LRU end first, then protected's), else the candidate
    is dropped. A hit in probation promotes to protected; protected overflow is demoted back
    to probation's MRU end. A candidate that was reused while in the window has been referenced
    twice, so it enters the main area as protected: a hot set that lives in the window is not
    first in line for eviction once a scan pushes it out.

    A burst is one access: a hit on one of the last ``BURST`` distinct keys touched is neither
    counted in the sketch nor a promotion. The daemon asks for a whole extent once per FUSE
    read, so one sequential read of a 4 MiB extent is ~32 gets, interleaved with the reads of
    other readers; counting them all would make every range read once look hot. (A hot set
    smaller than ``BURST`` is undercounted, but it is always among the most recent keys anyway.)

    The sketch halves its counters every ``10 x max(64, entries)`` counted accesses.
    """

    BURST = 16

    def __init__(self, capacity: int, *, window_fraction: float = 0.01, protected_fraction: float = 0.8,
                 sketch_width: int | None = None):
        if capacity < 0 or not 0 <= window_fraction <= 1 or not 0 <= protected_fraction <= 1:
            raise ValueError("capacity >= 0 and fractions within [0, 1]")
        self.capacity = capacity
        self.window_max = int(capacity * window_fraction)
        self.protected_max = int((capacity - self.window_max) * protected_fraction)
        self.sketch = FrequencySketch(sketch_width or sketch_width_for(capacity))
        self._window: OrderedDict[RangeKey, int] = OrderedDict()
        self._probation: OrderedDict[RangeKey, int] = OrderedDict()
        self._protected: OrderedDict[RangeKey, int] = OrderedDict()
        self._window_bytes = self._probation_bytes = self._protected_bytes = 0
        self._reused: set[RangeKey] = set()  # window keys hit outside a burst
        self._recent: OrderedDict[RangeKey, None] = OrderedDict()  # the last BURST keys touched

    @property
    def used(self) -> int:
        return self._window_bytes + self._probation_bytes + self._protected_bytes

    def __len__(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)

    def __contains__(self, key: RangeKey) -> bool:
        return key in self._window or key in self._probation or key in self._protected

    def record_miss(self, key: RangeKey) -> None:
        self._touch(key)
        self._count(key)

    def record_hit(self, key: RangeKey) -> None:
        fresh = self._touch(key)
        if fresh:
            self._count(key)
        if key in self._window:
            self._window.move_to_end(key)
            if fresh:
                self._reused.add(key)
        elif key in self._protected:
            self._protected.move_to_end(key)
        elif fresh and key in self._probation:
            self._probation_bytes -= self._probation[key]
            self._protect(key, self._probation.pop(key))

    def _touch(self, key: RangeKey) -> bool:
        """Note an access; False when it continues a burst on the same key."""
        fresh = key not in self._recent
        self._recent[key] = None
        self._recent.move_to_end(key)
        if len(self._recent) > self.BURST:
            self._recent.popitem(last=False)
        return fresh

    def _count(self, key: RangeKey) -> None:
        self.sketch.add(key)
        if self.sketch.additions >= 10 * max(64, len(self)):
            self.sketch.age()

    def _protect(self, key: RangeKey, size: int) -> None:
        self._protected[key] = size
        self._protected_bytes += size
        while self._protected_bytes > self.protected_max and len(self._protected) > 1:
            demoted, dsize = self._protected.popitem(last=False)
            self._protected_bytes -= dsize
            self._probation[demoted] = dsize
            self._probation_bytes += dsize

    def admit(self, key: RangeKey, size: int) -> Displaced:
        """Make ``key`` (not resident) resident; return what left, possibly ``key`` itself."""
        if key in self:
            raise ValueError(f"{key} is already resident")
        out = Displaced([], [])
        self._window[key] = size
        self._window_bytes += size
        while self._window_bytes > self.window_max and self._window:
            cand, csize = self._window.popitem(last=False)
            self._window_bytes -= csize
            reused = cand in self._reused
            self._reused.discard(cand)
            excess = self.used + csize - self.capacity
            if excess > 0:
                victims = self._victims(excess)
                freq = self.sketch.estimate(cand)
                if victims is None or any(freq <= self.sketch.estimate(v) for v in victims):
                    out.rejected.append(cand)
                    continue
                for v in victims:
                    self.remove(v)
                out.evicted.extend(victims)
            if reused:
                self._protect(cand, csize)
            else:
                self._probation[cand] = csize
                self._probation_bytes += csize
        # The main area can be over its share (restored at open before the window filled).
        out.evicted.extend(self._shrink_main())
        return out

    def restore(self, key: RangeKey, size: int) -> list[RangeKey]:
        """Put ``key`` straight into probation (reopening a disk cache, oldest first), no admission
        test; return the keys evicted to stay within capacity (the oldest restored)."""
        if key in self:
            raise ValueError(f"{key} is already resident")
        self._probation[key] = size
        self._probation_bytes += size
        return self._shrink_main()

    def remove(self, key: RangeKey) -> bool:
        for seg in (self._window, self._probation, self._protected):
            size = seg.pop(key, None)
            if size is not None:
                if seg is self._window:
                    self._window_bytes -= size
                    self._reused.discard(key)
                elif seg is self._probation:
                    self._probation_bytes -= size
                else:
                    self._protected_bytes -= size
                return True
        return False

    def _victims(self, excess: int) -> list[RangeKey] | None:
        """The main-area keys to drop to free ``excess`` bytes, coldest first; None if it cannot."""
        victims: list[RangeKey] = []
        freed = 0
        for seg in (self._probation, self._protected):
            for key, size in seg.items():
                if freed >= excess:
                    return victims
                victims.append(key)
                freed += size
        return victims if freed >= excess else None

    def _shrink_main(self) -> list[RangeKey]:
        evicted = []
        while self.used > self.capacity and (self._probation or self._protected):
            seg = self._probation or self._protected
            key = next(iter(seg))
            self.remove(key)
            evicted.append(key)
        return evicted


class RangeCache:
    """Memory tier: ranges as ``bytes``, at most ``budget`` bytes, W-TinyLFU eviction.

    The window is larger than the disk tier's (20 %): it must hold the extents readers are in
    the middle of, and those they just finished (each FUSE read asks for its whole extent
    again), so that admission never drops a range while it is being read. A scan still keeps
    the main 80 % (hit ratio ~0.4 on a cyclic scan twice the budget).
    """

    def __init__(self, budget: int, *, window_fraction: float = 0.2):
        self.budget = budget
        self._policy = TinyLfuPolicy(budget, window_fraction=window_fraction)
        self._data: dict[RangeKey, bytes | bytearray] = {}  # bytearray: as the chunk client read it
        self._by_chunk: dict[int, set[int]] = {}
        self.hits = self.misses = self.evictions = 0

    @property
    def used(self) -> int:
        return self._policy.used

    def get(self, chunk_id: int, offset: int, length: int) -> memoryview | None:
        exact = self._data.get((chunk_id, offset))  # the usual hit: the extent that was put
        if exact is not None and length <= len(exact):
            self._policy.record_hit((chunk_id, offset))
            self.hits += 1
            return memoryview(exact)[:length]
        for start in self._by_chunk.get(chunk_id, ()):
            data = self._data[(chunk_id, start)]
            if start <= offset and offset + length <= start + len(data):
                self._policy.record_hit((chunk_id, start))
                self.hits += 1
                return memoryview(data)[offset - start:offset - start + length]
        self._policy.record_miss((chunk_id, offset))
        self.misses += 1
        return None

    def holds(self, chunk_id: int, offset: int, length: int) -> bool:
        """Whether the range was put as such (counts nothing, changes no recency; a range held
        inside a larger entry is not looked for: this is the cheap check of a hint)."""
        exact = self._data.get((chunk_id, offset))
        return exact is not None and length <= len(exact)

    def put(self, chunk_id: int, offset: int, data: bytes | bytearray) -> None:
        if len(data) > self.budget // 4:
            return
        key = (chunk_id, offset)
        old = self._data.get(key)
        if old is not None:
            if len(old) >= len(data):
                return  # chunks are immutable: the same bytes, or more of them, are already here
            self._forget(key)
            self._policy.remove(key)
        displaced = self._policy.admit(key, len(data))
        self._data[key] = data
        self._by_chunk.setdefault(chunk_id, set()).add(offset)
        for gone in displaced.evicted + displaced.rejected:
            self._forget(gone)
            self.evictions += 1

    def drop_chunk(self, chunk_id: int) -> None:
        for off in self._by_chunk.pop(chunk_id, ()):
            del self._data[(chunk_id, off)]
            self._policy.remove((chunk_id, off))

    def _forget(self, key: RangeKey) -> None:
        del self._data[key]
        starts = self._by_chunk[key[0]]
        starts.discard(key[1])
        if not starts:
            del self._by_chunk[key[0]]
