#!/usr/bin/env python3
"""P8: does lakefs-fuse stay flat at scale?

1. stat latency: an embedded lake with 10,000 files and one with 1,000,000 (created straight into
   the metadata with the same ``mknod`` commands a mount sends, 1,000 per directory, so building
   the big one takes a minute instead of an hour of FUSE creates); each mounted, the kernel's caches
   dropped, then 5,000 ``os.stat`` calls of distinct random files (every one a cold lookup) timed
   one by one: p50 / p99 / mean, and the ratio 1M / 10k. Then the same files again after the
   kernel dropped everything once more ("seen": the daemon's metadata block cache still holds them),
   and on a fresh ``--dataset`` mount.
2. memory: the mount daemon's peak RSS (VmHWM) while a file of --big-gib GiB (default 10) is
   written and read back sequentially, next to its configured budgets (memory cache, dirty budget,
   read-ahead budget).

    .venv/bin/python scripts/bench/scale.py                    # 1M files, 10 GiB
    .venv/bin/python scripts/bench/scale.py --files 200000 --big-gib 2     # quicker
    .venv/bin/python scripts/bench/scale.py --big-gib 0                    # stat latency only
    .venv/bin/python scripts/bench/scale.py --quick        # 20,000 vs 2,000 files, 1,000 stats, 256 MiB

Root (drop_caches, FUSE). Mounts and temp data are removed in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, BenchError, GiB, MiB, drop_all_caches, find_cli
from lakes import Lake

sys.path.insert(0, str(REPO))
#: cold: a fresh default mount, every kernel cache dropped; seen: the same files once more on that
#: mount after dropping the kernel's caches again (the daemon's RocksDB block cache keeps what it
#: read); dataset: a fresh ``--dataset`` mount, caches dropped first.
PHASES = ("cold", "seen", "dataset")


def populate(data: Path, files: int, per_dir: int = 1000) -> None:
    """``files`` empty files in directories of ``per_dir``, written with the metadata commands."""
    from lakefs_fuse.meta.commands import Mknod
    from lakefs_fuse.meta.state import StateMachine
    sm = StateMachine(str(data / "meta"))
    try:
        now = time.time_ns()
        dirs = -(-files // per_dir)
        for d in range(dirs):
            dino, _ = sm.apply(Mknod(parent=1, name=b"d%05d" % d, mode=0o40755, rdev=0, uid=0, gid=0, now=now))
            for i in range(min(per_dir, files - d * per_dir)):
                sm.apply(Mknod(parent=dino, name=b"f%07d" % (d * per_dir + i), mode=0o100644, rdev=0, uid=0, gid=0,
                               now=now))
        sm.sync()
    finally:
        sm.close()


def stat_latency(mnt: Path, files: int, n: int, seed: int, per_dir: int = 1000) -> list[float]:
    rng = random.Random(seed)
    out = []
    sample = rng.sample(range(files), n)  # each file once: every stat is a cold lookup
    for d in sorted({i // per_dir for i in sample}):
        os.stat(mnt / f"d{d:05d}")  # directories first (untimed): 1,000 of them vs 10 would skew it
    for i in sample:
        p = mnt / f"d{i // per_dir:05d}" / f"f{i:07d}"
        t = time.perf_counter()
        os.stat(p)
        out.append(time.perf_counter() - t)
    return out


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def stat_phases(lake: Lake, files: int, stats: int, lat: dict) -> None:
    for phase in PHASES:
        drop_all_caches()
        if phase != "seen":  # "seen" reuses the mount of "cold"
            lake.mount_args = ["--dataset"] if phase == "dataset" else []
            lake.mount()
            os.stat(lake.mnt / "d00000")
        try:
            samples = sorted(stat_latency(lake.mnt, files, stats, seed=1))
        finally:
            if phase != "cold":
                lake.umount()
        lat[files, phase] = samples
        print(f"  stat over {files:,} files, {phase}: p50 {samples[len(samples) // 2] * 1e6:.0f} us, "
              f"p99 {samples[int(len(samples) * 0.99)] * 1e6:.0f} us, "
              f"mean {statistics.fmean(samples) * 1e6:.0f} us", flush=True)


def big_file(lake: Lake, gib: float) -> None:
    lake.mount()
    pid = lake.current.pid
    peak = {"rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], vm(pid, "VmRSS"))
            stop.wait(0.2)
    threading.Thread(target=sample, daemon=True).start()
    size = int(gib * GiB)
    block = os.urandom(MiB)
    t = time.monotonic()
    with open(lake.mnt / "big", "wb") as f:
        for _ in range(size // MiB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    wrote = time.monotonic() - t
    drop_all_caches()
    t = time.monotonic()
    with open(lake.mnt / "big", "rb", buffering=0) as f:
        while f.read(MiB):
            pass
    read = time.monotonic() - t
    stop.set()
    hwm = vm(pid, "VmHWM")
    lake.umount()
    print(f"{gib:g} GiB written in {wrote:.0f}s, read in {read:.0f}s; daemon peak RSS "
          f"{max(hwm, peak['rss']) / MiB:.0f} MiB (budgets: memory cache 512 MiB + dirty 256 MiB "
          f"+ read-ahead 256 MiB in flight)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=None, help="the big lake's files (default 1,000,000; --quick 20,000)")
    ap.add_argument("--small", type=int, default=None, help="the small lake's files (default 10,000; --quick 2,000)")
    ap.add_argument("--stats", type=int, default=None,
                    help="stats per lake (each file once; <= --small; default 5,000; --quick 1,000)")
    ap.add_argument("--big-gib", type=float, default=None, help="big file GiB (default 10; --quick 0.25; 0 skips)")
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script end to end")
    args = ap.parse_args()
    for name, full, quick in (("files", 1_000_000, 20_000), ("small", 10_000, 2_000), ("stats", 5_000, 1_000),
                              ("big_gib", 10.0, 0.25)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if os.geteuid() != 0:
        raise SystemExit("run as root (drop_caches, FUSE)")
    work = Path(tempfile.mkdtemp(prefix="lakefs-scale-bench.", dir="/var/tmp"))
    cli = find_cli()
    lake = None
    try:
        lat: dict[tuple[int, str], list[float]] = {}
        for files in (args.small, args.files):
            lake = Lake(work / f"lake{files}", cli, [], [])
            lake.format()
            t = time.monotonic()
            populate(lake.data, files)
            print(f"{files:,} files created in the metadata in {time.monotonic() - t:.0f}s", flush=True)
            stat_phases(lake, files, args.stats, lat)
            shutil.rmtree(lake.data, ignore_errors=True)
        for phase in PHASES:
            small, big = lat[args.small, phase], lat[args.files, phase]
            print(f"stat latency {args.files:,} / {args.small:,} files, {phase}: p50 "
                  f"{big[len(big) // 2] / small[len(small) // 2]:.2f}, mean "
                  f"{statistics.fmean(big) / statistics.fmean(small):.2f}", flush=True)
        if args.big_gib > 0:
            lake = Lake(work / "lakebig", cli, [], [])
            lake.format()
            big_file(lake, args.big_gib)
        return 0
    except BenchError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        if lake is not None:
            lake.teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
