"""The delete-queue pass and orphan-shard sweep (``lakefs-fuse gc``).

Owns the one delete-queue pass (:func:`drain_delete_queue`), which the ``gc`` command and every
mount's background collector (:func:`collect_every`) run. Imports the lake, meta and chunks layers.

gc deletes what nothing references: chunks in the delete queue (their shards, then their
records), and *orphan shards* -- shard files/objects on a peer whose chunk has no record, or whose
record places that shard on another peer (left behind by a crash between writing shards and
committing, or by a move). A shard is only an orphan if its chunk id was already allocated before
the scan began; on a cluster lake (which live mounts may be writing) a candidate must also still be
an orphan after ``--grace`` seconds. ``--dry-run`` lists and deletes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ..chunks.client import ChunkClient
from ..errors import LakeError, NotFound
from ..meta.client import MetaClient
from ..meta.commands import GcDone
from .lake import Lake
from .records import layout_of

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


@dataclass
class DrainResult:
    queued: int = 0   # delete-queue entries read
    deleted: int = 0  # chunks whose shards were deleted
    done: int = 0     # entries taken off the queue (deleted, or referenced again, or gone)


async def drain_delete_queue(meta: MetaClient, chunks: ChunkClient, *, limit: int = 1 << 30,
                             older_than_ns: int | None = None, dry_run: bool = False, sync: bool = False,
                             on_deleted: Callable[[int], Awaitable[None]] | None = None) -> DrainResult:
    """One pass over the delete queue: the shards of every queued chunk that nothing references
    are deleted, then its entries are taken off the queue in one ``gc_done``. The one pass both
    ``lakefs-fuse gc`` and a mount's background collector (:func:`collect_every`) run.

    ``limit``: read at most this many entries; ``older_than_ns``: skip entries queued after this
    wall-clock time (a grace period: a reader may still be reading the chunk); ``dry_run``: count,
    delete nothing, change nothing; ``on_deleted``: told each deleted chunk id (caches drop it).
    """
    result = DrainResult()
    queue = await meta.delete_queue(limit)
    result.queued = len(queue)
    done = []
    for chunk_id, queued in queue:
        if older_than_ns is not None and queued > older_than_ns:
            continue
        try:
            rec = await meta.chunk(chunk_id)
        except NotFound:
            done.append(chunk_id)
            continue
        if rec.refs > 0:
            done.append(chunk_id)
            continue
        if not dry_run:
            await chunks.delete_chunk(layout_of(rec))
            result.deleted += 1
            if on_deleted is not None:
                await on_deleted(chunk_id)
        done.append(chunk_id)
    if done and not dry_run:
        await meta.apply(GcDone(done), sync=sync)
    result.done = len(done)
    return result


async def collect_every(interval: float, collect: Callable[[], Awaitable[int]]) -> None:
    """A mount's background collector: run ``collect`` (a :func:`drain_delete_queue` pass) every
    ``interval`` seconds, forever; a failing pass logs one line and the next one retries."""
    while True:
        await trio.sleep(interval)
        try:
            await collect()
        except LakeError as exc:  # e.g. no metadata majority
            log.warning("garbage collection pass failed: %s", exc)
        except Exception:
            log.exception("garbage collection pass failed")


async def gc(lake: Lake, *, dry_run: bool = False, grace: float = 0.0,
             on_shard: Callable[[], None] | None = None) -> GcReport:
    report = GcReport(dry_run=dry_run)
    if lake.sm is not None:  # never delete on the word of metadata that cannot be read whole
        await trio.to_thread.run_sync(lake.sm.verify)
    # 1. the delete queue
    drained = await drain_delete_queue(lake.meta, lake.chunks, dry_run=dry_run, sync=True)
    report.queued_chunks, report.deleted_chunks = drained.queued, drained.deleted
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
            after = page[-1][0], page[-1][1]
    return out

