"""Geometry of a chunk's shards (contiguous layout) and the record of where they live.

A sealed chunk of ``length`` bytes is cut into ``k`` contiguous data shards of ``shard_len``
bytes each (the last zero-padded) plus ``m`` parity shards. Byte ``x`` of the chunk is byte
``x % shard_len`` of data shard ``x // shard_len``, so a range read touches only the data
shards that cover it -- usually one for a small file. Chunks shorter than ``k * min_shard``
use fewer data shards (same ``m``): same fault tolerance, fewer files and round trips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SHARD_ALIGN = 64  # shard lengths are multiples of this (the ISA-L path slices exactly then)


def data_shards_for(length: int, k: int, min_shard: int) -> int:
    if length <= 0:
        return 1
    return max(1, min(k, -(-length // min_shard)))


def shard_len_for(length: int, k: int) -> int:
    s = -(-max(length, 1) // k)
    return -(-s // SHARD_ALIGN) * SHARD_ALIGN


@dataclass(slots=True)
class ChunkLayout:
    """Where a sealed chunk's shards are: ``peers[i]`` holds shard i; ``checksums[i]`` its xxh3-64.

    The wire form (``to_wire``) is the list the metadata stores in its chunk record.
    """

    chunk_id: int
    length: int
    k: int
    m: int
    shard_len: int
    peers: list[int]
    checksums: list[int]

    def to_wire(self) -> list[Any]:
        return [self.chunk_id, self.length, self.k, self.m, self.shard_len, list(self.peers), list(self.checksums)]

    @classmethod
    def from_wire(cls, w: Sequence[Any]) -> ChunkLayout:
        return cls(w[0], w[1], w[2], w[3], w[4], list(w[5]), list(w[6]))

    @property
    def width(self) -> int:
        return self.k + self.m

    def covering(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """Data shards covering chunk bytes [offset, offset+length): (index, shard_off, n)."""
        out = []
        pos, end = offset, min(offset + length, self.length)
        while pos < end:
            index = pos // self.shard_len
            shard_off = pos - index * self.shard_len
            n = min(end - pos, self.shard_len - shard_off)
            out.append((index, shard_off, n))
            pos += n
        return out
