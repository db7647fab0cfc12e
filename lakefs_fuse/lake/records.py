"""The one conversion between metadata's chunk record and the chunk client's layout.

``meta`` and ``chunks`` do not know each other, so each has its own type for a sealed chunk:
:class:`~lakefs_fuse.meta.schema.ChunkRecord` (where the metadata says its shards are, plus
its reference count) and :class:`~lakefs_fuse.chunks.layout.ChunkLayout` (what the chunk client
reads and writes by). Both share one wire form -- ``[chunk_id, length, k, m, shard_len, peers,
checksums]`` -- and the lake layer, which joins the two, converts through it here and nowhere
else.

Imports: ``meta.schema`` and ``chunks.layout`` only.
"""

from __future__ import annotations

from ..chunks.layout import ChunkLayout
from ..meta.schema import ChunkRecord


def layout_of(rec: ChunkRecord) -> ChunkLayout:
    """The chunk client's layout of a recorded chunk (its own copies of the peer and checksum
    lists: repair may change the layout's without touching the record)."""
    return ChunkLayout.from_wire(rec.to_wire())


def record_of(layout: ChunkLayout) -> ChunkRecord:
    """The record of a freshly sealed chunk, for :class:`~lakefs_fuse.meta.commands.Commit` and
    :class:`~lakefs_fuse.meta.commands.Relocate` (no references yet: its extents count them)."""
    return ChunkRecord.from_wire(layout.to_wire())
