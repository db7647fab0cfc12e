"""Scrub, repair and status of a lake: the work that joins chunk records and shards.

* **scrub** reads every shard of every chunk whole and checks it against the checksum
  recorded at write time: ``ok``, ``missing``, ``corrupt`` or ``unreachable`` (peer down).
* **repair** rebuilds every shard that is not ``ok`` from k healthy ones, stores it on a
  peer that holds no other shard of the chunk (placement order, zone spread, skipping peers
  that are down or removed) and records the move with one ``move_shard`` command. A chunk
  with more than m bad shards is reported as lost; nothing is written for it.
* **status** counts shards per peer from the chunk records and lists the chunks with a shard on
  a peer that is down or missing from its peer's listing (degraded), without reading shards: a
  shard that is there but corrupt is found only by scrub, which reads every byte.

All three walk the chunk records in id order in pages; ``start_after`` resumes a run that was
stopped (the CLI prints the cursor). Repair is idempotent: a second run finds nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..chunks.layout import ChunkLayout
from ..chunks.placement import place, place_spare
from ..chunks.store import ShardStore
from ..errors import DataUnavailable, LakeError
from ..meta.commands import MoveShard
from .lake import Lake
from .records import layout_of

log = logging.getLogger(__name__)
PAGE = 256
#: A scrub report names at most this many bad shards and this many files they belong to (the
#: counts in ``bad`` are always complete).
BAD_SHARDS_LISTED = 1000
FILES_LISTED = 100


@dataclass
class Report:
    chunks: int = 0
    shards: int = 0
    bad: dict[str, int] = field(default_factory=dict)      # health -> count
    repaired: int = 0
    lost: list[int] = field(default_factory=list)           # chunk ids with > m bad shards
    failed: list[tuple[int, str]] = field(default_factory=list)
    cursor: int = -1                                        # last chunk id done
    bad_shards: list[list] = field(default_factory=list)    # [chunk, index, peer, health], bounded
    files: list[dict] = field(default_factory=list)         # {"path", "chunks"} using bad shards, bounded

    def to_json(self) -> dict:
        return {"chunks": self.chunks, "shards": self.shards, "bad": self.bad, "repaired": self.repaired,
                "lost": self.lost, "failed": [list(f) for f in self.failed], "cursor": self.cursor,
                "bad_shards": self.bad_shards, "files": self.files}


async def _layouts(lake: Lake, start_after: int):
    after = start_after
    while True:
        page = await lake.meta.chunks(after, PAGE)
        if not page:
            return
        for rec in page:
            yield layout_of(rec)
        after = page[-1].chunk_id


async def count_chunks(lake: Lake) -> int:
    return sum([1 async for _ in _layouts(lake, -1)])


async def scrub(lake: Lake, *, start_after: int = -1, on_chunk: Callable[[int], None] | None = None,
                repair: bool = False) -> Report:
    report = Report(cursor=start_after)
    limiter = trio.CapacityLimiter(4)  # chunks checked at once
    if repair and lake.sm is not None:  # repair records moves: only in metadata readable whole
        await trio.to_thread.run_sync(lake.sm.verify)

    async def one(layout: ChunkLayout) -> None:
        async with limiter:
            health = await lake.chunks.verify(layout)
            bad = [i for i, h in enumerate(health) if h != "ok"]
            report.shards += len(health)
            for i in bad:
                report.bad[health[i]] = report.bad.get(health[i], 0) + 1
                if len(report.bad_shards) < BAD_SHARDS_LISTED:
                    report.bad_shards.append([layout.chunk_id, i, layout.peers[i], health[i]])
            if bad and len(bad) > layout.m:
                report.lost.append(layout.chunk_id)
            elif bad and repair:
                await _repair_chunk(lake, layout, bad, report)
            report.chunks += 1
            if on_chunk:
                on_chunk(layout.chunk_id)

    batch: list[ChunkLayout] = []
    async for layout in _layouts(lake, start_after):
        batch.append(layout)
        if len(batch) >= PAGE:
            await _run_batch(one, batch)
            report.cursor = batch[-1].chunk_id
            batch = []
    if batch:
        await _run_batch(one, batch)
        report.cursor = batch[-1].chunk_id
    report.lost.sort()
    report.bad_shards.sort()
    if report.bad_shards:
        report.files = await _files_using(lake, {b[0] for b in report.bad_shards})
    return report


async def _files_using(lake: Lake, chunk_ids: set[int]) -> list[dict]:
    """The files (paths) whose data lies in ``chunk_ids``: one pass over the extents and the
    directory entries (a cluster lake's from a snapshot), only when a scrub found bad shards."""
    from ..meta.fsck import files_of_chunks
    from .view import MetadataView
    async with MetadataView(lake) as sm:
        return await trio.to_thread.run_sync(files_of_chunks, sm, chunk_ids, FILES_LISTED)


async def _run_batch(fn, batch: list[ChunkLayout]) -> None:
    async with trio.open_nursery() as nursery:
        for layout in batch:
            nursery.start_soon(fn, layout)


def _targets(lake: Lake, layout: ChunkLayout, bad: list[int]) -> dict[int, int]:
    keep = [p for i, p in enumerate(layout.peers) if i not in bad]
    usable = [c for c in lake.chunks.choices if getattr(lake.chunks.stores[c.peer_id], "up", True)]
    # (zones of the kept shards' peers count even when those peers are down: ``zone_of`` has all)
    spare = place_spare(layout.chunk_id, usable, len(bad), keep, layout.width, lake.chunks.zone_of)
    if len(spare) < len(bad):
        # No spare peer: put a shard back where it was if that peer answers (corrupt/missing
        # shard on a live peer), never on a peer that already holds another shard of the chunk.
        for i in bad:
            if len(spare) >= len(bad):
                break
            if layout.peers[i] not in spare and layout.peers[i] not in keep and \
                    getattr(lake.chunks.stores.get(layout.peers[i]), "up", False):
                spare.append(layout.peers[i])
    if len(spare) < len(bad):
        raise LakeError(f"chunk {layout.chunk_id}: no peer free to take {len(bad)} rebuilt shard(s)")
    return dict(zip(bad, spare, strict=False))


async def _repair_chunk(lake: Lake, layout: ChunkLayout, bad: list[int], report: Report) -> None:
    try:
        targets = _targets(lake, layout, bad)
        placed, unplaced = await lake.chunks.rebuild(layout, bad, targets)
    except (LakeError, DataUnavailable) as exc:
        report.failed.append((layout.chunk_id, str(exc)))
        log.warning("repair of chunk %d failed: %s", layout.chunk_id, exc)
        return
    if unplaced:  # one finding per chunk, naming every shard left out
        why = "; ".join(f"shard {index}: {reason}" for index, reason in sorted(unplaced.items()))
        report.failed.append((layout.chunk_id, why))
        log.warning("repair of chunk %d incomplete: %s", layout.chunk_id, why)
    for index, peer in placed.items():
        old = layout.peers[index]
        moved = await lake.meta.apply(MoveShard(layout.chunk_id, index, old, peer), sync=True)
        if moved:
            report.repaired += 1
            if old != peer and old in lake.chunks.stores:  # drop the bad copy where it was, if reachable
                try:
                    await lake.chunks.stores[old].delete(layout.chunk_id, index)
                except Exception as exc:  # the peer may be down: its copy is garbage either way
                    log.debug("could not delete old shard %d/%d on peer %d: %s", layout.chunk_id, index, old, exc)


async def peer_liveness(lake: Lake, timeout: float = 5.0) -> dict[int, dict[str, object]]:
    """peer id -> ``{"reachable": True, "total", "avail"}`` or ``{"reachable": False[, "error"]}``,
    every store asked for its capacity at once, each within ``timeout`` seconds. For listings: a
    peer that is down is reported, never raised."""
    out: dict[int, dict[str, object]] = {}

    async def one(pid: int, store: ShardStore) -> None:
        row: dict[str, object] = {"reachable": False}
        with trio.move_on_after(timeout):
            try:
                total, avail = await store.capacity()
                row = {"reachable": True, "total": total, "avail": avail}
            except Exception as exc:  # a status listing reports, it does not fail
                row["error"] = str(exc)
        out[pid] = row

    async with trio.open_nursery() as nursery:
        for pid, store in lake.chunks.stores.items():
            nursery.start_soon(one, pid, store)
    return out


async def status(lake: Lake) -> dict:
    """Peers with their shard counts and liveness, and the chunks that are degraded."""
    live = await peer_liveness(lake)
    present = await _listings(lake, [pid for pid, row in live.items() if row.get("reachable")])
    shard_counts: dict[int, int] = {}
    missing_counts: dict[int, int] = {}
    degraded, lost, chunks = [], [], 0
    async for layout in _layouts(lake, -1):
        chunks += 1
        bad = 0
        for index, pid in enumerate(layout.peers):
            shard_counts[pid] = shard_counts.get(pid, 0) + 1
            if not live.get(pid, {}).get("reachable"):
                bad += 1
            elif pid in present and layout.chunk_id * 256 + index not in present[pid]:
                bad += 1
                missing_counts[pid] = missing_counts.get(pid, 0) + 1
        if bad > layout.m:
            lost.append(layout.chunk_id)
        elif bad:
            degraded.append(layout.chunk_id)
    peers = []
    for p in lake.peer_records:
        row = {"id": p.peer_id, "kind": p.kind, "address": lake.peer_address(p), "zone": p.zone,
               "weight": p.weight, "state": p.state, "shards": shard_counts.get(p.peer_id, 0),
               "missing": missing_counts.get(p.peer_id, 0)}
        row.update(live.get(p.peer_id, {"reachable": False}))
        peers.append(row)
    usage = await lake.meta.sparse_chunks(0.0, 0)  # totals only: bytes in chunks vs used by files
    return {"peers": peers, "chunks": chunks, "degraded": degraded, "unreadable": lost,
            "missing_shards": sum(missing_counts.values()),
            "chunk_bytes": usage["chunk_bytes"], "live_bytes": usage["live_bytes"],
            "delete_queue": len(await lake.meta.delete_queue(100000)),
            "ec": f"{lake.config.ec_k}+{lake.config.ec_m}"}


async def _listings(lake: Lake, peer_ids: list[int]) -> dict[int, set[int]]:
    """The shards each peer holds (``chunk_id * 256 + index``), from its listing; a peer that
    cannot be listed is left out (its shards count as present)."""
    out: dict[int, set[int]] = {}

    async def one(pid: int) -> None:
        store, after = lake.chunks.stores[pid], (-1, -1)
        found: set[int] = set()
        try:
            while page := await store.list(after, 10000):
                found.update(chunk * 256 + index for chunk, index, _size in page)
                after = page[-1][0], page[-1][1]
        except Exception as exc:  # a status listing reports, it does not fail
            log.warning("status: cannot list the shards of peer %d: %s", pid, exc)
            return
        out[pid] = found

    async with trio.open_nursery() as nursery:
        for pid in peer_ids:
            if hasattr(lake.chunks.stores.get(pid), "list"):
                nursery.start_soon(one, pid)
    return out


async def repair_pending(lake: Lake, *, delay: float, forget_layout: Callable[[int], None] | None = None) -> Report:
    """Background repair inside a daemon: fix what is known to be broken, cheaply.

    Candidates are the chunks the chunk client saw missing shards in (partial writes, degraded
    reads) and the chunks with a shard on a peer that has been down for at least ``delay``
    seconds (found from the chunk records alone; a peer that is back sooner costs nothing).
    Of those, shards that are missing or corrupt, or unreachable on a long-down peer, are
    rebuilt elsewhere.
    """
    now = trio.current_time()
    # Only remote stores track outages (``PeerHealth.down_since``); a local directory is never down.
    down_since = {pid: getattr(store, "down_since", None) for pid, store in lake.chunks.stores.items()}
    long_down = {pid for pid, since in down_since.items() if since is not None and now - since >= delay}
    wanted = lake.chunks.repair_queue()
    report = Report()
    if not wanted and not long_down:
        return report  # the common case: nothing known to be broken, no scan
    async for layout in _layouts(lake, -1):
        if layout.chunk_id not in wanted and not long_down.intersection(layout.peers):
            continue
        health = await lake.chunks.verify(layout)
        bad = [i for i, h in enumerate(health)
               if h in ("missing", "corrupt") or (h == "unreachable" and layout.peers[i] in long_down)]
        report.chunks += 1
        if not bad:
            if all(h == "ok" for h in health):
                lake.chunks.repaired(layout.chunk_id)
            continue
        if len(bad) > layout.m:
            report.lost.append(layout.chunk_id)
            continue
        before = report.repaired
        await _repair_chunk(lake, layout, bad, report)
        if report.repaired > before:
            if forget_layout:
                forget_layout(layout.chunk_id)
            if all(h == "ok" or i in bad for i, h in enumerate(health)):
                lake.chunks.repaired(layout.chunk_id)
    if report.repaired:
        log.info("background repair rebuilt %d shard(s) in %d chunk(s)", report.repaired, report.chunks)
    return report


async def rebalance(lake: Lake, *, start_after: int = -1, on_chunk: Callable[[int], None] | None = None,
                    max_moves: int | None = None) -> Report:
    """Move shards to where placement wants them today.

    For every chunk, the rendezvous order over the peers that take new shards (removed peers
    have no weight) says which peers should hold it. A shard on a removed peer, or on a peer
    outside that set while a wanted peer holds nothing of the chunk, is copied (verified
    against its checksum) to the wanted peer, recorded with ``move_shard``, then deleted
    where it was. Adding a peer therefore draws roughly its share of shards; removing one
    drains it. Idempotent and resumable (``start_after``).
    """
    report = Report(cursor=start_after)
    usable = [c for c in lake.chunks.choices if getattr(lake.chunks.stores[c.peer_id], "up", True)]
    placeable = {c.peer_id for c in lake.chunks.choices}
    moves = 0
    async for layout in _layouts(lake, start_after):
        report.chunks += 1
        wanted = place(layout.chunk_id, usable, layout.width)
        free = [p for p in wanted if p not in layout.peers]
        for index, peer in enumerate(layout.peers):
            if not free or (max_moves is not None and moves >= max_moves):
                break
            if peer in wanted and peer in placeable:
                continue
            target = free.pop(0)
            try:
                data = await lake.chunks.read_shard(layout, index)
                await lake.chunks.stores[target].put(layout.chunk_id, index, memoryview(data))
            except Exception as exc:  # one shard that cannot move does not stop the run
                report.failed.append((layout.chunk_id, f"shard {index}: {exc}"))
                continue
            if await lake.meta.apply(MoveShard(layout.chunk_id, index, peer, target), sync=True):
                moves += 1
                report.repaired += 1
                layout.peers[index] = target
                try:
                    await lake.chunks.stores[peer].delete(layout.chunk_id, index)
                except Exception as exc:  # unreachable old peer: its copy is garbage now
                    log.debug("could not delete moved shard on peer %d: %s", peer, exc)
        report.cursor = layout.chunk_id
        if on_chunk:
            on_chunk(layout.chunk_id)
    return report
