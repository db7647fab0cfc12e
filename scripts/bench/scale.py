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

Root (drop_caches, FUSE). Mounts and temp data are removed in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
CLI = [sys.executable, "-m", "lakefs_fuse.cli"]
MiB, GiB = 1 << 20, 1 << 30
#: cold: a fresh default mount, every kernel cache dropped; seen: the same files once more on that
#: mount after dropping the kernel's caches again (the daemon's RocksDB block cache keeps what it
#: read); dataset: a fresh ``--dataset`` mount, caches dropped first.
PHASES = ("cold", "seen", "dataset")


def cli(*args: str, env: dict) -> None:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"lakefs-fuse {' '.join(args)} failed: {res.stderr.strip()}")


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def populate(data: Path, files: int, per_dir: int = 1000) -> None:
    """``files`` empty files in directories of ``per_dir``, written with the metadata commands."""
    from lakefs_fuse.meta.state import StateMachine
    sm = StateMachine(str(data / "meta"))
    try:
        now = time.time_ns()
        dirs = -(-files // per_dir)
        for d in range(dirs):
            dino, _ = sm.apply(["mknod", 1, b"d%05d" % d, 0o40755, 0, 0, 0, now])
            for i in range(min(per_dir, files - d * per_dir)):
                sm.apply(["mknod", dino, b"f%07d" % (d * per_dir + i), 0o100644, 0, 0, 0, now])
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


def daemon_pid(mnt: Path) -> int:
    res = subprocess.run(["pgrep", "-f", f"mount -f.*{mnt}"], capture_output=True, text=True)
    pids = [int(x) for x in res.stdout.split()]
    if not pids:
        raise SystemExit("mount daemon not found")
    return pids[0]


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--stats", type=int, default=5_000, help="stats per lake (each file once; <= --small)")
    ap.add_argument("--big-gib", type=float, default=10.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (drop_caches, FUSE)")
    work = Path(tempfile.mkdtemp(prefix="lakefs-scale-bench.", dir="/var/tmp"))
    env = {**os.environ, "LAKEFS_FUSE_RUNTIME": str(work / "run")}
    mnt = work / "mnt"
    mnt.mkdir()
    try:
        lat: dict[tuple[int, str], list[float]] = {}
        for files in (args.small, args.files):
            data = work / f"lake{files}"
            cli("format", "--data", str(data), env=env)
            t = time.monotonic()
            populate(data, files)
            print(f"{files:,} files created in the metadata in {time.monotonic() - t:.0f}s", flush=True)
            for phase in PHASES:
                if phase != "seen":  # "seen" reuses the mount of "cold"
                    drop_caches()
                    cli("mount", str(mnt), "--data", str(data), *(["--dataset"] if phase == "dataset" else []),
                        env=env)
                    os.stat(mnt / "d00000")
                else:
                    drop_caches()
                try:
                    samples = sorted(stat_latency(mnt, files, args.stats, seed=1))
                finally:
                    if phase != "cold":
                        cli("umount", str(mnt), env=env)
                lat[files, phase] = samples
                print(f"  stat over {files:,} files, {phase}: p50 {samples[len(samples) // 2] * 1e6:.0f} us, "
                      f"p99 {samples[int(len(samples) * 0.99)] * 1e6:.0f} us, "
                      f"mean {statistics.fmean(samples) * 1e6:.0f} us", flush=True)
            shutil.rmtree(data, ignore_errors=True)
        for phase in PHASES:
            small, big = lat[args.small, phase], lat[args.files, phase]
            print(f"stat latency {args.files:,} / {args.small:,} files, {phase}: p50 "
                  f"{big[len(big) // 2] / small[len(small) // 2]:.2f}, mean "
                  f"{statistics.fmean(big) / statistics.fmean(small):.2f}", flush=True)
        if args.big_gib <= 0:
            return 0

        data = work / "lakebig"
        cli("format", "--data", str(data), env=env)
        cli("mount", str(mnt), "--data", str(data), env=env)
        try:
            pid = daemon_pid(mnt)
            peak = {"rss": 0}
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak["rss"] = max(peak["rss"], vm(pid, "VmRSS"))
                    stop.wait(0.2)
            threading.Thread(target=sample, daemon=True).start()
            size = int(args.big_gib * GiB)
            block = os.urandom(MiB)
            t = time.monotonic()
            with open(mnt / "big", "wb") as f:
                for _ in range(size // MiB):
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
            wrote = time.monotonic() - t
            drop_caches()
            t = time.monotonic()
            with open(mnt / "big", "rb", buffering=0) as f:
                while f.read(MiB):
                    pass
            read = time.monotonic() - t
            stop.set()
            hwm = vm(pid, "VmHWM")
        finally:
            cli("umount", str(mnt), env=env)
        print(f"{args.big_gib:g} GiB written in {wrote:.0f}s, read in {read:.0f}s; daemon peak RSS "
              f"{max(hwm, peak['rss']) / MiB:.0f} MiB (budgets: memory cache 512 MiB + dirty 256 MiB "
              f"+ read-ahead 256 MiB in flight)")
        return 0
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
