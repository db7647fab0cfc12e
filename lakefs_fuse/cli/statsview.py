"""``lakefs-fuse stats`` and ``lakefs-fuse top``: live views of a mount, read from its ``.stats``.

``.stats`` is the mount's Prometheus text (see :mod:`lakefs_fuse.mount.observe`); both commands
sample it twice, ``interval`` apart, and show rates over that interval. ``stats`` shows the whole
mount (throughput, requests by op with their mean latency, cache hit ratio by tier, peers);
``top`` shows each process using the mount: how much of its time it spent waiting on the
filesystem (its *data stall*), its request rate and read rate.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..errors import UserError

MB = 1e6


@dataclass
class Sample:
    """One reading of ``.stats``: every sample by (name, sorted labels), and when it was taken."""

    at: float
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (n, labels), value in self.values.items():
            if n == name:
                out[dict(labels).get(label, "")] += value
        return out

    def rows(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(labels), value) for (n, labels), value in self.values.items() if n == name]


def read_sample(mountpoint: Path) -> Sample:
    path = Path(mountpoint) / ".stats"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{mountpoint} is not a lakefs-fuse mount (it has no .stats)") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    sample = Sample(time.monotonic())
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            sample.values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return sample


def _rate(a: Sample, b: Sample, value_a: float, value_b: float) -> float:
    dt = max(b.at - a.at, 1e-9)
    return max(value_b - value_a, 0.0) / dt


# ---------------------------------------------------------------------------- stats


def mount_summary(a: Sample, b: Sample) -> dict:
    """Rates over the interval between two samples, and totals as of the second."""
    dt = max(b.at - a.at, 1e-9)
    ops = {}
    counts_a = a.by("lakefs_fuse_request_seconds_count", "op")
    counts_b = b.by("lakefs_fuse_request_seconds_count", "op")
    sums_a, sums_b = a.by("lakefs_fuse_request_seconds_sum", "op"), b.by("lakefs_fuse_request_seconds_sum", "op")
    for op, total in counts_b.items():
        n = total - counts_a.get(op, 0.0)
        secs = sums_b.get(op, 0.0) - sums_a.get(op, 0.0)
        ops[op] = {"total": int(total), "per_s": n / dt, "mean_ms": secs / n * 1e3 if n else 0.0}
    errors = {f"{labels.get('op')}:{labels.get('errno')}": int(v)
              for labels, v in b.rows("lakefs_fuse_request_errors_total")}
    cache = {}
    for tier in b.by("lakefs_cache_hits_total", "tier"):
        hits = b.get("lakefs_cache_hits_total", tier=tier) - a.get("lakefs_cache_hits_total", tier=tier)
        misses = b.get("lakefs_cache_misses_total", tier=tier) - a.get("lakefs_cache_misses_total", tier=tier)
        cache[tier] = {"hits": int(b.get("lakefs_cache_hits_total", tier=tier)),
                       "misses": int(b.get("lakefs_cache_misses_total", tier=tier)),
                       "hit_ratio": hits / (hits + misses) if hits + misses else None,
                       "used_bytes": int(b.get("lakefs_cache_used_bytes", tier=tier)),
                       "capacity_bytes": int(b.get("lakefs_cache_capacity_bytes", tier=tier))}
    peers = {}
    for peer, up in sorted(b.by("lakefs_peer_up", "peer").items(), key=lambda kv: int(kv[0] or 0)):
        n = (b.get("lakefs_peer_requests_total", peer=peer, op="get")
             - a.get("lakefs_peer_requests_total", peer=peer, op="get"))
        secs = (b.get("lakefs_peer_request_seconds_total", peer=peer, op="get")
                - a.get("lakefs_peer_request_seconds_total", peer=peer, op="get"))
        peers[peer] = {"up": bool(up), "gets_per_s": n / dt, "get_mean_ms": secs / n * 1e3 if n else 0.0,
                       "errors": int(b.get("lakefs_peer_errors_total", peer=peer, op="get")
                                     + b.get("lakefs_peer_errors_total", peer=peer, op="put"))}
    return {
        "interval_s": dt,
        "read_MBps": _rate(a, b, a.get("lakefs_read_bytes_total"), b.get("lakefs_read_bytes_total")) / MB,
        "write_MBps": _rate(a, b, a.get("lakefs_written_bytes_total"), b.get("lakefs_written_bytes_total")) / MB,
        "read_bytes": int(b.get("lakefs_read_bytes_total")),
        "written_bytes": int(b.get("lakefs_written_bytes_total")),
        "requests_per_s": sum(o["per_s"] for o in ops.values()),
        "ops": ops,
        "errors": errors,
        "cache": cache,
        "degraded_reads": int(b.get("lakefs_degraded_reads_total")),
        "dirty_bytes": int(b.get("lakefs_dirty_bytes")),
        "peers": peers,
    }


def stats_table(mountpoint: Path, s: dict):
    from rich.console import Group
    from rich.table import Table

    head = Table.grid(padding=(0, 3))
    ratios = "  ".join(f"{tier} {c['hit_ratio'] * 100:.0f}%" if c["hit_ratio"] is not None else f"{tier} -"
                       for tier, c in s["cache"].items())
    head.add_row(f"[bold]{mountpoint}[/]", f"read {s['read_MBps']:.1f} MB/s", f"write {s['write_MBps']:.1f} MB/s",
                 f"{s['requests_per_s']:.0f} req/s", f"cache hits: {ratios}", f"degraded reads {s['degraded_reads']}")
    ops = Table(title="FUSE requests", title_justify="left")
    for col in ("op", "req/s", "mean ms", "total"):
        ops.add_column(col, justify="left" if col == "op" else "right")
    for op, o in sorted(s["ops"].items(), key=lambda kv: -kv[1]["per_s"])[:12]:
        ops.add_row(op, f"{o['per_s']:.0f}", f"{o['mean_ms']:.3f}", f"{o['total']:,}")
    peers = Table(title="Peers", title_justify="left")
    for col in ("peer", "up", "gets/s", "mean ms", "errors"):
        peers.add_column(col, justify="left" if col == "peer" else "right")
    for peer, p in s["peers"].items():
        peers.add_row(peer, "yes" if p["up"] else "[red]NO[/]", f"{p['gets_per_s']:.0f}", f"{p['get_mean_ms']:.3f}",
                      str(p["errors"]))
    return Group(head, ops, peers)


# ---------------------------------------------------------------------------- top


def process_rows(a: Sample, b: Sample) -> list[dict]:
    """Per process over the interval: share of time waiting on the filesystem, request and read rates."""
    dt = max(b.at - a.at, 1e-9)
    before = {labels["pid"]: labels for labels, _ in a.rows("lakefs_process_requests_total")}
    rows: list[dict[str, Any]] = []
    for labels, requests in b.rows("lakefs_process_requests_total"):
        pid, comm = labels["pid"], labels.get("comm", "?")
        key = {"pid": pid, "comm": comm}
        seen = pid in before  # a process that started within the interval counts from zero

        def delta(name: str, key=key, seen=seen) -> float:
            return b.get(name, **key) - (a.get(name, **key) if seen else 0.0)

        hits, misses = delta("lakefs_process_cache_hits_total"), delta("lakefs_process_cache_misses_total")
        rows.append({"pid": int(pid), "comm": comm,
                     "cache_hit_pct": 100.0 * hits / (hits + misses) if hits + misses else None,
                     "fs_wait_pct": 100.0 * delta("lakefs_process_fs_seconds_total") / dt,
                     "requests_per_s": delta("lakefs_process_requests_total") / dt,
                     "read_MBps": delta("lakefs_process_read_bytes_total") / dt / MB,
                     "read_bytes": int(b.get("lakefs_process_read_bytes_total", **key)),
                     "requests": int(requests)})
    rows.sort(key=lambda r: (-r["fs_wait_pct"], -r["requests"]))
    return rows


def top_table(mountpoint: Path, summary: dict, rows: list[dict]):
    from rich.console import Group
    from rich.table import Table

    ratio = summary["cache"].get("memory", {}).get("hit_ratio")
    head = f"[bold]{mountpoint}[/]  read {summary['read_MBps']:.1f} MB/s  {summary['requests_per_s']:.0f} req/s  " \
           f"memory cache hits {'-' if ratio is None else f'{ratio * 100:.0f}%'}"
    table = Table()
    for col in ("pid", "command", "fs wait %", "req/s", "read MB/s", "cache hit %", "read total"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for r in rows[:30]:
        hit = "-" if r["cache_hit_pct"] is None else f"{r['cache_hit_pct']:.0f}"
        table.add_row(str(r["pid"]), r["comm"], f"{r['fs_wait_pct']:.1f}", f"{r['requests_per_s']:.0f}",
                      f"{r['read_MBps']:.1f}", hit, f"{r['read_bytes'] / MB:,.1f} MB")
    return Group(head, table)


def run_view(mountpoint: Path, *, interval: float, once: bool, as_json: bool, kind: str) -> None:
    """Sample, show, repeat (until Ctrl-C, or once)."""
    import click
    from rich.console import Console
    from rich.live import Live

    def view(a: Sample, b: Sample):
        summary = mount_summary(a, b)
        if kind == "top":
            rows = process_rows(a, b)
            return {"mount": summary, "processes": rows} if as_json else top_table(mountpoint, summary, rows)
        return summary if as_json else stats_table(mountpoint, summary)

    a = read_sample(mountpoint)
    if once or as_json:
        time.sleep(interval)
        out = view(a, read_sample(mountpoint))
        if as_json:
            click.echo(json.dumps(out, indent=1))
        else:
            Console().print(out)
        return
    console = Console()
    try:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                b = read_sample(mountpoint)
                live.update(view(a, b), refresh=True)
                a = b
    except KeyboardInterrupt:
        pass
