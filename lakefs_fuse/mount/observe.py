"""What the mount daemon exposes about itself: Prometheus families, ``.stats`` and ``.config``.

Everything here reads counters the VFS, the caches, the chunk client and the read plan keep anyway;
see :mod:`lakefs_fuse.metrics` for the HTTP side and the FUSE request histogram.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..metrics import FamilyCollector, FuseRecorder, counter, gauge, labelled, new_registry, render
from .vfs import VFS


class MountObserver:
    """The registry of one mount: FUSE requests, data path counters, caches, peers, read plan."""

    def __init__(self, vfs: VFS, *, lake_info: dict | None = None):
        self.vfs = vfs
        self.lake_info = lake_info or {}
        #: The background repair's tally (:meth:`count_repair`, called by ``daemon.BackgroundRepair``).
        self.repair = {"passes": 0, "shards_rebuilt": 0, "failed": 0, "lost_chunks": 0}
        self.registry = new_registry()
        self.recorder = FuseRecorder(self.registry)
        self.registry.register(FamilyCollector(self._families))
        # .stats shows what /metrics shows plus the per-process view (`lakefs-fuse top`).
        self._stats_registry = CollectorRegistry(auto_describe=False)
        self._stats_registry.register(_Union(self.registry, FamilyCollector(self.recorder.process_families)))

    # ---------------------------------------------------------------- files in the mount

    def stats_text(self) -> bytes:
        return render(self._stats_registry)

    def config_text(self) -> bytes:
        cfg = self.vfs.cfg
        out = {}
        for f in fields(cfg):
            value = getattr(cfg, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        out["lake"] = self.lake_info
        return json.dumps(out, indent=1, sort_keys=True).encode() + b"\n"

    # ---------------------------------------------------------------- families

    def count_repair(self, report) -> None:
        """Add one background repair pass (a :class:`~..lake.repair.Report`) to the tally:
        ``failed`` counts chunk repairs retried next pass, ``lost_chunks`` is as of the last pass
        (more bad shards than parity)."""
        self.repair["passes"] += 1
        self.repair["shards_rebuilt"] += report.repaired
        self.repair["failed"] += len(report.failed)
        self.repair["lost_chunks"] = len(report.lost)

    def _families(self) -> Iterator[Metric]:
        vfs = self.vfs
        s = vfs.stats
        yield counter("lakefs_read_bytes", "Bytes returned to readers by the daemon", s.read_bytes)
        yield counter("lakefs_written_bytes", "Bytes written by applications", s.write_bytes)
        yield counter("lakefs_readahead_started", "Sequential read-ahead fetches started", s.prefetches)
        yield counter("lakefs_readahead_skipped", "Read-ahead not started: the in-flight budget was full",
                      s.readahead_skipped)
        yield counter("lakefs_readahead_resets", "Read-ahead windows reset by a seek", s.readahead_resets)
        ahead = vfs.reader.ahead
        yield gauge("lakefs_ahead_inflight_bytes", "Bytes being fetched ahead of readers now", ahead.used)
        yield gauge("lakefs_ahead_budget_bytes", "In-flight budget of read-ahead and read plans", ahead.limit)
        yield gauge("lakefs_dirty_bytes", "Written bytes not yet sealed into chunks", vfs.writer.buffered)

        mem = vfs.reader.cache
        tiers = [("memory", mem.hits, mem.misses, mem.evictions, mem.used, mem.budget)]
        if vfs.reader.disk is not None:
            d = vfs.reader.disk.stats()
            tiers.append(("disk", d["hits"], d["misses"], d["evictions"], d["used"], d["capacity"]))
        yield labelled(CounterMetricFamily, "lakefs_cache_hits", "Chunk-range cache hits by tier", ["tier"],
                       [([t[0]], t[1]) for t in tiers])
        yield labelled(CounterMetricFamily, "lakefs_cache_misses", "Chunk-range cache misses by tier", ["tier"],
                       [([t[0]], t[2]) for t in tiers])
        yield labelled(CounterMetricFamily, "lakefs_cache_evictions", "Ranges evicted by tier", ["tier"],
                       [([t[0]], t[3]) for t in tiers])
        yield labelled(GaugeMetricFamily, "lakefs_cache_used_bytes", "Bytes held by tier", ["tier"],
                       [([t[0]], t[4]) for t in tiers])
        yield labelled(GaugeMetricFamily, "lakefs_cache_capacity_bytes", "Capacity by tier", ["tier"],
                       [([t[0]], t[5]) for t in tiers])

        plan = vfs.control.plan_totals()
        yield counter("lakefs_plan_paths", "Paths handed to the read plan (.prefetch)", plan.received)
        yield counter("lakefs_plan_prefetched_files", "Files fetched ahead of the loader", plan.prefetched)
        yield counter("lakefs_plan_prefetched_bytes", "Bytes fetched ahead of the loader", plan.prefetched_bytes)
        yield counter("lakefs_plan_failed", "Plan prefetches that failed (the reader fetched itself)", plan.failed)
        if vfs.pusher is not None:
            yield counter("lakefs_page_cache_pushed_files", "Files stored in the kernel's page cache ahead of reads",
                          vfs.pusher.stats.pushed)

        chunks = vfs.chunks
        yield counter("lakefs_degraded_reads", "Chunk reads that had to decode from parity", chunks.degraded_reads)
        yield counter("lakefs_partial_writes", "Chunks committed without all their shards", chunks.partial_writes)
        yield gauge("lakefs_chunks_needing_repair", "Chunks this mount knows to miss shards", chunks.repair_queue_size)
        rep = self.repair
        yield counter("lakefs_repair_shards_rebuilt", "Shards the background repair rebuilt elsewhere",
                      rep["shards_rebuilt"])
        yield counter("lakefs_repair_failures", "Chunk repairs that failed (retried next pass)", rep["failed"])
        yield gauge("lakefs_repair_lost_chunks", "Chunks the last repair pass found beyond parity (unreadable)",
                    rep["lost_chunks"])
        yield gauge("lakefs_peers_down", "Peers this mount treats as down now",
                    sum(1 for s in list(chunks.stores.values()) if getattr(s, "down", False)))
        yield gauge("lakefs_peers_slow", "Peers left out of reads until they answer a probe (a read waited too long)",
                    sum(1 for s in list(chunks.stores.values()) if getattr(s, "slow", False)))
        yield gauge("lakefs_peers_full", "Peers that refused a shard for lack of space and took none since",
                    chunks.full_count())
        peers = sorted(list(chunks.peer_stats.items()))
        rows = [(str(pid), ps) for pid, ps in peers]
        yield labelled(CounterMetricFamily, "lakefs_peer_requests", "Shard requests by peer and op",
                       ["peer", "op"], [([p, "get"], ps.gets) for p, ps in rows]
                       + [([p, "put"], ps.puts) for p, ps in rows])
        yield labelled(CounterMetricFamily, "lakefs_peer_errors", "Failed shard requests by peer and op",
                       ["peer", "op"],
                       [([p, "get"], ps.get_errors) for p, ps in rows]
                       + [([p, "put"], ps.put_errors) for p, ps in rows])
        yield labelled(CounterMetricFamily, "lakefs_peer_request_seconds", "Seconds spent in shard requests",
                       ["peer", "op"],
                       [([p, "get"], ps.get_seconds) for p, ps in rows]
                       + [([p, "put"], ps.put_seconds) for p, ps in rows])
        yield labelled(GaugeMetricFamily, "lakefs_peer_up", "1 while the peer is reachable", ["peer"],
                       [([str(pid)], float(not getattr(store, "down", False)))
                        for pid, store in sorted(chunks.stores.items())])


class _Union:
    """Several collectors (or registries) as one."""

    def __init__(self, *sources):
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()
