"""In-memory cache of immutable chunk ranges.

Chunks never change once sealed, so cached ranges never need invalidation -- only eviction.
Entries are (chunk id, offset, length) ranges; a lookup finds any entry of the chunk that
covers the wanted range. Eviction is LRU by bytes (issue 5 brings a scan-resistant policy
and the local disk tier).
"""

from __future__ import annotations

from collections import OrderedDict


class RangeCache:
    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self._lru: OrderedDict[tuple[int, int], bytes] = OrderedDict()  # (chunk, off) -> data
        self._by_chunk: dict[int, set[int]] = {}
        self.hits = self.misses = self.evictions = 0

    def get(self, chunk_id: int, offset: int, length: int) -> memoryview | None:
        for start in self._by_chunk.get(chunk_id, ()):
            data = self._lru[(chunk_id, start)]
            if start <= offset and offset + length <= start + len(data):
                self._lru.move_to_end((chunk_id, start))
                self.hits += 1
                return memoryview(data)[offset - start:offset - start + length]
        self.misses += 1
        return None

    def put(self, chunk_id: int, offset: int, data: bytes) -> None:
        if len(data) > self.budget // 4:
            return
        key = (chunk_id, offset)
        old = self._lru.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._lru[key] = data
        self._by_chunk.setdefault(chunk_id, set()).add(offset)
        self.used += len(data)
        while self.used > self.budget and self._lru:
            (cid, off), victim = self._lru.popitem(last=False)
            self.used -= len(victim)
            self.evictions += 1
            starts = self._by_chunk[cid]
            starts.discard(off)
            if not starts:
                del self._by_chunk[cid]

    def drop_chunk(self, chunk_id: int) -> None:
        for off in self._by_chunk.pop(chunk_id, ()):
            self.used -= len(self._lru.pop((chunk_id, off)))
