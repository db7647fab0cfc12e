"""Compaction: copy the live bytes out of mostly-dead chunks, so deleted data is reclaimed.

A chunk is immutable and shared by the files packed into it; its shards are deleted only when
no extent points into it any more. Under churn (files written together, most of them deleted
or overwritten later) a chunk stays alive for a small survivor and keeps megabytes nobody can
read. The compactor asks the metadata for chunks whose files use at most ``max_live`` of their
bytes, reads the used bytes (verified like any read), packs them into new chunks and commits
each with the ``relocate`` command. ``relocate`` moves a piece only where it is still stored
where the copy was taken from, so a write, truncate or delete that races the compactor always
wins (the copy of that piece just goes unused). The old chunks are then unreferenced and take
the usual way out: the delete queue, then GC after its grace period.

It runs in the mount daemon of a writable mount, every ``interval`` seconds, a bounded batch
per pass. Finding candidates reads every extent of the lake (seconds for a million files), so
the interval is minutes by default; `status` shows chunk bytes against the bytes files use.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import trio

from ..chunks.client import ChunkClient
from ..errors import LakeError
from ..meta.client import MetaClient
from ..meta.commands import Relocate, RelocateMove
from .records import layout_of, record_of

log = logging.getLogger(__name__)


@dataclass
class CompactStats:
    passes: int = 0
    chunks_rewritten: int = 0
    bytes_moved: int = 0
    #: From the last pass: bytes in chunks, and bytes of them that files use.
    chunk_bytes: int = 0
    live_bytes: int = 0


class Compactor:
    def __init__(self, meta: MetaClient, chunks: ChunkClient, next_chunk_id, *, chunk_size: int,
                 max_live: float = 0.5, interval: float = 300.0, batch: int = 64):
        self.meta = meta
        self.chunks = chunks
        self.next_chunk_id = next_chunk_id  # the writer's allocator: compaction chunks are new chunks
        self.chunk_size = chunk_size
        self.max_live = max_live
        self.interval = interval
        self.batch = batch
        self.min_dead = 64 * 1024  # rewriting a chunk to save less is not worth its writes
        self.stats = CompactStats()

    async def run(self) -> None:
        await trio.sleep(self.interval * random.uniform(0.5, 1.0))  # mounts of one lake spread out
        while True:
            try:
                await self.compact_once()
            except LakeError as exc:  # metadata or peers unavailable: the next pass tries again
                log.warning("compaction pass failed: %s", exc)
            except Exception:
                log.exception("compaction pass failed")
            await trio.sleep(self.interval)

    async def compact_once(self) -> int:
        """One pass: rewrite up to ``batch`` sparse chunks; returns the bytes moved."""
        found = await self.meta.sparse_chunks(self.max_live, self.batch, self.min_dead)
        self.stats.passes += 1
        self.stats.chunk_bytes, self.stats.live_bytes = found["chunk_bytes"], found["live_bytes"]
        groups: dict[tuple[int, int], list] = {}  # chunks of one EC profile are packed together
        for chunk_id, _length, _live, pieces in found["chunks"]:
            try:
                rec = await self.meta.chunk(chunk_id)
            except LakeError:
                continue  # collected meanwhile
            m = rec.m
            k = self.chunks.k if m == self.chunks.m else rec.k
            groups.setdefault((max(k, rec.k), m), []).append((layout_of(rec), pieces))
        moved = 0
        for profile, items in groups.items():
            moved += await self._rewrite(profile, items)
        self.stats.chunks_rewritten += len(found["chunks"])
        self.stats.bytes_moved += moved
        if moved:
            log.info("compaction: moved %d KiB out of %d sparse chunks", moved >> 10, len(found["chunks"]))
        return moved

    async def _rewrite(self, profile: tuple[int, int], items: list) -> int:
        payload = bytearray()
        moves: list[RelocateMove] = []
        moved = 0
        for layout, pieces in items:
            for ino, file_off, length, chunk_off in pieces:
                if len(payload) + length > self.chunk_size:
                    moved += await self._commit(profile, payload, moves)
                    payload, moves = bytearray(), []
                data = await self.chunks.read(layout, chunk_off, length)
                if len(data) != length:
                    raise LakeError(f"chunk {layout.chunk_id} is shorter than its extent")
                moves.append(RelocateMove(ino, file_off, length, layout.chunk_id, chunk_off, len(payload)))
                payload += data
        if moves:
            moved += await self._commit(profile, payload, moves)
        return moved

    async def _commit(self, profile: tuple[int, int], payload: bytearray, moves: list[RelocateMove]) -> int:
        chunk_id = await self.next_chunk_id()
        layout = await self.chunks.put_chunk(chunk_id, bytes(payload), profile)
        await self.chunks.sync()  # the copy is durable before any file points at it
        return await self.meta.apply(Relocate(record_of(layout), moves, time.time_ns()))
