"""The delete-queue pass and orphan-shard sweep (``lakefs-fuse gc``).

gc deletes what nothing references: chunks in the delete queue (their shards, then their
records), and *orphan shards* -- shard files/objects on a peer whose chunk has no record, or whose
record places that shard on another peer (left behind by a crash between writing shards and
committing, or by a move). A shard is only an orphan if its chunk id was already allocated before
the scan began; on a cluster lake (which live mounts may be writing) a candidate must also still be
an orphan after ``--grace`` seconds. ``--dry-run`` lists and deletes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..chunks.layout import ChunkLayout
from ..errors import NotFound
from .lake import Lake

log = logging.getLogger(__name__)



@dataclass
class GcReport:
    queued_chunks: int = 0          # chunks in the delete queue found
    deleted_chunks: int = 0
    orphan_shards: list = field(default_factory=list)   # [peer, chunk, index, size]
    deleted_shards: int = 0
    unreachable_peers: list = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict:
        return {"queued_chunks": self.queued_chunks, "deleted_chunks": self.deleted_chunks,
                "orphan_shards": self.orphan_shards, "orphan_bytes": sum(o[3] for o in self.orphan_shards),
                "deleted_shards": self.deleted_shards, "unreachable_peers": self.unreachable_peers,
                "dry_run": self.dry_run}


async def gc(lake: Lake, *, dry_run: bool = False, grace: float = 0.0,
             on_shard: Callable[[], None] | None = None) -> GcReport:
    report = GcReport(dry_run=dry_run)
    if lake.sm is not None:  # never delete on the word of metadata that cannot be read whole
        await trio.to_thread.run_sync(lake.sm.verify)
    # 1. the delete queue
    queue = await lake.meta.delete_queue(1 << 30)
    report.queued_chunks = len(queue)
    done = []
    for chunk_id, _queued in queue:
        try:
            rec = await lake.meta.chunk(chunk_id)
        except NotFound:
            done.append(chunk_id)
            continue
        if rec.refs > 0:
            done.append(chunk_id)
            continue
        if not dry_run:
            await lake.chunks.delete_chunk(ChunkLayout.from_wire(rec.to_wire()))
        done.append(chunk_id)
        report.deleted_chunks += 0 if dry_run else 1
    if done and not dry_run:
        await lake.meta.apply(["gc_done", done], sync=True)
    # 2. orphan shards
    high = await _chunk_counter(lake)
    candidates = await _orphan_shards(lake, high, report, on_shard)
    if candidates and grace > 0:
        await trio.sleep(grace)
        again = await _orphan_shards(lake, high, GcReport(), None)
        keep = {tuple(c[:3]) for c in again}
        candidates = [c for c in candidates if tuple(c[:3]) in keep]
    report.orphan_shards = candidates
    if not dry_run:
        for peer, chunk_id, index, _size in candidates:
            try:
                await lake.chunks.stores[peer].delete(chunk_id, index)
                report.deleted_shards += 1
            except Exception as exc:  # a peer that went away: the orphan stays for the next run
                log.warning("gc: could not delete shard %d/%d on peer %d: %s", chunk_id, index, peer, exc)
    return report


async def _chunk_counter(lake: Lake) -> int:
    """Chunk ids below this were allocated before now (the next id to be handed out)."""
    return await lake.meta.next_chunk_id()


async def _orphan_shards(lake: Lake, high: int, report: GcReport, on_shard) -> list[list]:
    placed: dict[int, list[int] | None] = {}
    out = []
    for peer_id, store in sorted(lake.chunks.stores.items()):
        after = (-1, -1)
        while True:
            try:
                page = await store.list(after, 1000)
            except Exception as exc:
                report.unreachable_peers.append([peer_id, str(exc)])
                break
            if not page:
                break
            for chunk_id, index, size in page:
                if on_shard:
                    on_shard()
                if chunk_id >= high:
                    continue  # allocated after the scan began: a write in flight
                if chunk_id not in placed:
                    try:
                        placed[chunk_id] = list((await lake.meta.chunk(chunk_id)).peers)
                    except NotFound:
                        placed[chunk_id] = None
                peers = placed[chunk_id]
                if peers is None or index >= len(peers) or peers[index] != peer_id:
                    out.append([peer_id, chunk_id, index, size])
            after = tuple(page[-1][:2])
    return out

