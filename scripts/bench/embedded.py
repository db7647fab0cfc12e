#!/usr/bin/env python3
"""Throughput benchmark: an embedded lakefs-fuse lake against a plain local directory.

Machines are noisy, so every number is measured twice in the same invocation -- once on a
local directory (the baseline) and once through a mounted embedded lake on the *same*
filesystem -- and the report leads with the ratio lakefs / local.

  B1   sequential write of one big file (1 MiB blocks, then fsync), cold sequential read,
       then a warm re-read (kernel page cache kept through FUSE keep_cache).
  B2   many small files (default 10,000 x 110 KB in 10 class directories): write, barrier
       (local: syncfs; lake: unmount + syncfs), then a cold read of every file, whole, in
       shuffled order (fixed seed) -- the access pattern of a training-data loader.

"Cold" means: local -> syncfs + drop_caches; lake -> unmount + syncfs + drop_caches + mount,
so neither the kernel page cache nor the daemon's memory cache holds the data.

Per phase it records wall time, this process's CPU (user+sys: the syscall side), the mount
daemon's CPU (wait4() rusage -- this script makes itself a child subreaper so the daemonized
mount is reaped here -- or /proc/<pid>/stat samples), and the backing disk's busy time,
written MB and flush (fsync/FUA) count from /proc/diskstats. Disk numbers are device-wide.

Usage (root, /dev/fuse and fusermount3 needed; drop_caches needs root)::

    .venv/bin/python scripts/bench/embedded.py                 # 1 GiB, 10,000 x 110 KB
    .venv/bin/python scripts/bench/embedded.py --quick         # 256 MiB, 2,000 x 110 KB
    .venv/bin/python scripts/bench/embedded.py --out bench.md --keep

The mount is always unmounted and its daemon stopped (lazy unmount, SIGTERM, SIGKILL) in a
``finally``, on errors and Ctrl-C too; a phase that exceeds --phase-timeout gets the
daemon's thread stacks dumped into DATA/mount.log (SIGUSR1) and is then aborted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import runner
from common import BLOCK, DiskStats, MiB, Payload, cell, human, log, ratio, syncfs, tree_paths
from lakes import Lake
from runner import Phase, common_options, data_defaults, files_options, lake_options, preflight, rss_line, size_option

LOCAL, LAKEFS = "local", "lakefs"
DAEMON = "lakefs daemon"


class Bench(runner.Bench):
    def __init__(self, args, argv: list[str] | None):
        super().__init__(args, argv, "embedded.py", "lakefs-bench.")
        self.local = self.workdir / "local"
        self.lake = Lake(self.workdir / "lake", self.cli, args.format_arg, args.mount_arg)
        self.payload = Payload(b"LKFBENCH", b"LKFBFILE")
        self.paths = tree_paths(args.files, args.classes)

    def run_phase(self, name: str, target: str, fn, **kw) -> Phase:
        if target == LAKEFS:
            kw.update(groups=lambda: {DAEMON: list(self.lake.daemons)} if self.lake.daemons else {},
                      main=lambda: list(self.lake.daemons))
        return self.phases.run(name, target, fn, abort=self.lake.abort, **kw)

    def cold_local(self) -> None:
        syncfs(self.local)
        self.caches.drop()

    def b1_write(self, path: Path, nblocks: int) -> None:
        self.payload.write_big(path, nblocks)

    def b1_read(self, path: Path, nblocks: int) -> None:
        self.payload.read_big(path, nblocks, full=False)

    def b2_write(self, root: Path) -> None:
        self.payload.write_files(root, self.paths, self.args.file_size)

    def b2_read(self, root: Path) -> None:
        self.payload.read_files(root, self.paths, self.args.file_size, self.args.seed)

    # ---- the whole run

    def run(self) -> None:
        a = self.args
        nblocks = a.size // BLOCK
        b2_bytes = a.files * a.file_size
        self.local.mkdir(parents=True)
        self.lake.format()
        if os.stat(self.local).st_dev != os.stat(self.lake.data).st_dev:
            log("WARNING: local baseline and lake data are on different filesystems")
        self.phases.disk = DiskStats(self.workdir)

        # B1 local
        big = self.local / "big.bin"
        self.settle()
        self.run_phase("B1 write+fsync", LOCAL, lambda: self.b1_write(big, nblocks), nbytes=a.size)
        self.run_phase("B1 cold prep (syncfs+drop)", LOCAL, self.cold_local)
        self.run_phase("B1 read cold", LOCAL, lambda: self.b1_read(big, nblocks), nbytes=a.size)
        self.run_phase("B1 read warm", LOCAL, lambda: self.b1_read(big, nblocks), nbytes=a.size)

        # B1 lake
        lbig = self.lake.mnt / "big.bin"
        self.settle()
        self.run_phase("mount (fresh lake)", LAKEFS, self.lake.mount)
        self.run_phase("B1 write+fsync", LAKEFS, lambda: self.b1_write(lbig, nblocks), nbytes=a.size)
        self.run_phase("B1 unmount", LAKEFS, self.lake.umount)
        self.run_phase("B1 cold prep (syncfs+drop)", LAKEFS, lambda: (syncfs(self.lake.data), self.caches.drop()))
        self.run_phase("mount", LAKEFS, self.lake.mount)
        self.run_phase("B1 read cold", LAKEFS, lambda: self.b1_read(lbig, nblocks), nbytes=a.size)
        self.run_phase("B1 read warm", LAKEFS, lambda: self.b1_read(lbig, nblocks), nbytes=a.size,
                       note="2nd open: keep_cache")
        self.run_phase("unmount", LAKEFS, self.lake.umount)
        if not a.keep:  # free the page cache and disk space the big files hold
            big.unlink()

        # B2 local
        lroot = self.local / "files"
        self.settle()
        self.run_phase("B2 write", LOCAL, lambda: self.b2_write(lroot), nbytes=b2_bytes, nfiles=a.files)
        self.run_phase("B2 barrier (syncfs)", LOCAL, lambda: syncfs(self.local))
        self.run_phase("B2 cold prep (drop)", LOCAL, self.caches.drop)
        self.run_phase("B2 read cold shuffled", LOCAL, lambda: self.b2_read(lroot), nbytes=b2_bytes,
                       nfiles=a.files)

        # B2 lake
        mroot = self.lake.mnt / "files"
        self.settle()
        self.run_phase("mount", LAKEFS, self.lake.mount)
        self.run_phase("B2 write", LAKEFS, lambda: self.b2_write(mroot), nbytes=b2_bytes, nfiles=a.files)
        self.run_phase("B2 barrier (unmount+syncfs)", LAKEFS,
                       lambda: (self.lake.umount(), syncfs(self.lake.data)))
        self.run_phase("B2 cold prep (drop)", LAKEFS, self.caches.drop)
        self.run_phase("mount", LAKEFS, self.lake.mount)
        self.run_phase("B2 read cold shuffled", LAKEFS, lambda: self.b2_read(mroot), nbytes=b2_bytes,
                       nfiles=a.files)
        self.run_phase("unmount", LAKEFS, self.lake.umount)

    # ---- report

    def report(self, header: list[str]) -> str:
        a, get = self.args, self.phases.get
        disk = self.phases.disk
        out = ["# lakefs-fuse embedded benchmark", ""]
        out += [f"- {h}" for h in header]
        out += [f"- cold caches: {self.caches.status()}",
                "- daemon CPU: " + ("wait4() rusage of the daemon (this script is its subreaper), incl. unmount flush"
                                    if self.subreaper else
                                    "/proc/<pid>/stat samples (misses CPU spent after the last sample)"),
                "- MB = 10^6 bytes; ratio = lakefs / local (throughput: >1 means lakefs is faster)", ""]
        if self.failures:
            out += [f"**RUN FAILED:** {'; '.join(self.failures)}", ""]

        rows = []

        def row(label, metric, local, lake, fn):
            lv = fn(local) if local else None
            kv = fn(lake) if lake else None
            rows.append(f"| {label} | {metric} | {cell(lv)} | {cell(kv)} | {ratio(kv, lv)} |")

        size_lbl = human(a.size)
        for name, label in (("B1 write+fsync", f"B1 seq write {size_lbl} (1 MiB blocks) + fsync"),
                            ("B1 read cold", f"B1 seq read {size_lbl}, cold"),
                            ("B1 read warm", f"B1 seq read {size_lbl}, warm (page cache)")):
            row(label, "MB/s", get(name, LOCAL), get(name, LAKEFS), lambda p: p.mbps)
        n = f"{a.files:,} x {human(a.file_size)}"
        w_l, w_k = get("B2 write", LOCAL), get("B2 write", LAKEFS)
        barrier = {id(w_l): get("B2 barrier (syncfs)", LOCAL), id(w_k): get("B2 barrier (unmount+syncfs)", LAKEFS)}
        row(f"B2 write {n} (to close)", "files/s", w_l, w_k, lambda p: p.fps)
        row(f"B2 write {n} (to close)", "MB/s", w_l, w_k, lambda p: p.mbps)

        def with_barrier(p, unit):
            b = barrier.get(id(p))
            if b is None:
                return None
            t = p.wall + b.wall
            return p.nfiles / t if unit == "files" else p.nbytes / t / 1e6
        row(f"B2 write {n} + barrier (local syncfs / lake unmount+syncfs)", "files/s", w_l, w_k,
            lambda p: with_barrier(p, "files"))
        row(f"B2 write {n} + barrier", "MB/s", w_l, w_k, lambda p: with_barrier(p, "MB"))
        r_l, r_k = get("B2 read cold shuffled", LOCAL), get("B2 read cold shuffled", LAKEFS)
        row(f"B2 read {n}, cold, shuffled", "files/s", r_l, r_k, lambda p: p.fps)
        row(f"B2 read {n}, cold, shuffled", "MB/s", r_l, r_k, lambda p: p.mbps)

        out += ["## Results", "", "| Benchmark | Metric | local | lakefs | lakefs/local |",
                "|---|---|---:|---:|---:|", *rows, ""]

        out += ["## Phases", "",
                "Client CPU = this process (user+sys, i.e. the syscall side); daemon CPU = mount daemon "
                "(all threads; 'main thread' = the trio loop running FUSE dispatch and Python logic, the rest is "
                "worker threads: EC coding, checksums, shard I/O; the main-thread figure misses the last ~20 ms "
                "before a daemon exits); other CPU = everything else busy on the machine meanwhile (noise: other "
                "work, kernel writeback, the CLI); disk columns are device-wide for the backing disk"
                + (f" `{disk.name}`" if disk and disk.name else " (unknown device)") + ".", "",
                "| # | Phase | Target | Wall s | Rate | Client CPU s | Daemon CPU s (% of wall) | "
                "of it main thread s | Other CPU s | Disk busy | Disk write MB | Disk flushes | Note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases.phases, 1):
            rate = [f"{ph.mbps:,.0f} MB/s"] if ph.mbps else []
            rate += [f"{ph.fps:,.0f} files/s"] if ph.fps else []
            dcpu = ph.cpu.get(DAEMON)
            dc = "-" if dcpu is None else f"{dcpu:.2f} ({100 * dcpu / ph.wall:.0f}%)"
            busy = "-" if ph.disk_busy is None else f"{100 * ph.disk_busy:.0f}%"
            out.append(f"| {i} | {ph.name} | {ph.system} | {ph.wall:.2f} | {', '.join(rate) or '-'} | "
                       f"{ph.client_cpu:.2f} | {dc} | {cell(ph.main_cpu, '{:.2f}')} | {ph.other_cpu:.2f} | {busy} | "
                       f"{cell(ph.disk_write_mb, '{:,.0f}')} | {cell(ph.disk_flushes, '{:,}')} | {ph.note} |")
        rss = rss_line("Daemon", self.lake.daemons)
        return "\n".join(out + ([""] + rss if rss else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    size_option(ap, "B1")
    files_options(ap, "B2", "shuffle seed for the B2 read order")
    ap.add_argument("--quick", action="store_true", help="256 MiB and 2,000 files")
    common_options(ap, phase_timeout=600, keep_what="data")
    lake_options(ap, examples=True)
    args = ap.parse_args(argv)
    data_defaults(ap, args)

    bench = Bench(args, argv)
    need = 3 * args.size + 4 * args.files * args.file_size + 512 * MiB
    status = bench.execute(lambda: preflight(bench.workdir, need), bench.lake.teardown,
                           lambda: {"mount.log": bench.lake.log_path})
    header = bench.header([bench.lakefs_line(f"lake: {bench.lake.format_msg or '?'}", args.mount_arg)], [
        f"B1: {human(args.size)}; B2: {args.files:,} files x {args.file_size:,} B in {args.classes} "
        f"directories, read order shuffled with seed {args.seed}"])
    bench.write_out(bench.report(header))
    return status


if __name__ == "__main__":
    sys.exit(main())
