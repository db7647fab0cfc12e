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
import contextlib
import ctypes
import datetime
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = MiB                      # I/O buffer for B1 (and the read buffer for B2)
POOL = 32 * MiB                  # random bytes every payload is cut from
STAMP = struct.Struct("<8sQ")    # 16-byte header: magic + block/file index (makes every block unique)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.monotonic()


def parse_size(text: str) -> int:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1G, 256M, 110K)")
    unit = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * unit)


def human(n: float) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div:
            v = n / div
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


# ------------------------------------------------------------------ system helpers

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (falls back to a global sync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def set_subreaper() -> bool:
    try:
        return _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (AttributeError, OSError):
        return False


def system_cpu() -> float:
    """Busy CPU seconds of the whole machine (all cores; idle, iowait and steal excluded)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def mountinfo() -> dict[str, str]:
    """mount point -> filesystem type."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if len(parts) > 4:
                out[parts[4].replace("\\040", " ")] = right.split()[0] if right else "?"
    return out


def is_mountpoint(path: Path) -> bool:
    return str(Path(path).resolve()) in mountinfo()


def fs_of(path: Path) -> tuple[str, str]:
    """(mount point, fstype) of the filesystem holding ``path``."""
    p, best = str(Path(path).resolve()), ("/", "?")
    for mnt, fstype in mountinfo().items():
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, fstype)
    return best


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


class DiskStats:
    """Counters of the block device behind a path, from /proc/diskstats (None if unknown)."""

    def __init__(self, path: Path):
        self.name = None
        dev = os.stat(path).st_dev
        try:
            name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
        except OSError:
            return
        if name in self._read():
            self.name = name

    @staticmethod
    def _read() -> dict[str, list[int]]:
        out = {}
        try:
            with open("/proc/diskstats") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 14:
                        out[parts[2]] = [int(x) for x in parts[3:]]
        except OSError:
            pass
        return out

    def sample(self) -> list[int] | None:
        return self._read().get(self.name) if self.name else None

    @staticmethod
    def delta(a: list[int] | None, b: list[int] | None, wall: float) -> tuple:
        """(busy fraction, written MB, flushes or None)."""
        if not a or not b:
            return None, None, None
        busy = (b[9] - a[9]) / 1000.0 / wall if wall > 0 else None
        written = (b[6] - a[6]) * 512 / 1e6
        flushes = (b[15] - a[15]) if len(a) > 15 and len(b) > 15 else None
        return busy, written, flushes


class Caches:
    def __init__(self):
        self.ok: bool | None = None

    def drop(self) -> None:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            if self.ok is None:
                self.ok = True
        except OSError as exc:
            if self.ok is not False:
                log(f"WARNING: cannot drop caches ({exc.strerror}); 'cold' reads may be served from "
                    "the page cache (run as root)")
            self.ok = False


# ------------------------------------------------------------------ the lake

class Daemon:
    """One mount daemon's CPU time: live from /proc, final from wait4() once reaped."""

    def __init__(self, pid: int):
        self.pid = pid
        self.rusage = None
        self.status: int | None = None
        self.last = 0.0
        self.last_main = 0.0

    @staticmethod
    def _stat_cpu(path: str) -> float | None:
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return None

    def cpu(self) -> float:
        """All threads, user+sys seconds."""
        if self.rusage is not None:
            return self.rusage.ru_utime + self.rusage.ru_stime
        v = self._stat_cpu(f"/proc/{self.pid}/stat")
        self.last = self.last if v is None else v
        self.main_cpu()
        return self.last

    def main_cpu(self) -> float:
        """The main thread only (trio loop: FUSE dispatch and Python logic; to_thread work such as
        EC coding, checksums and shard I/O runs on worker threads). Last sample once exited."""
        if self.rusage is None:
            v = self._stat_cpu(f"/proc/{self.pid}/task/{self.pid}/stat")
            self.last_main = self.last_main if v is None else v
        return self.last_main

    def reap(self, timeout: float) -> bool:
        """Wait for the daemon to exit (collect its rusage if it is our child). True if gone."""
        deadline = time.monotonic() + timeout
        while True:
            if self.rusage is not None:
                return True
            self.cpu()
            try:
                pid, status, ru = os.wait4(self.pid, os.WNOHANG)
                if pid == self.pid:
                    self.rusage, self.status = ru, status
                    return True
            except ChildProcessError:  # not our child (no subreaper): watch /proc instead
                if not pid_alive(self.pid):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def alive(self) -> bool:
        if self.rusage is not None:
            return False
        self.reap(0)
        return self.rusage is None and pid_alive(self.pid)


class Lake:
    def __init__(self, root: Path, cli: list[str], format_args: list[str], mount_args: list[str]):
        self.root = root
        self.data = root / "data"
        self.mnt = root / "mnt"
        self.runtime = root / "run"
        self.cli_cmd = cli
        self.format_args = format_args
        self.mount_args = mount_args
        self.env = {**os.environ, "LAKEFS_FUSE_RUNTIME": str(self.runtime), "LAKEFS_FUSE_DATA": str(self.data)}
        self.daemons: list[Daemon] = []
        self.current: Daemon | None = None
        self.format_msg = ""

    def cli(self, *args: str, timeout: float = 120) -> str:
        try:
            res = subprocess.run([*self.cli_cmd, *args], capture_output=True, text=True, timeout=timeout,
                                 env=self.env, cwd=REPO, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`lakefs-fuse {' '.join(args)}` did not finish within {timeout:.0f}s") from None
        if res.returncode != 0:
            raise BenchError(f"`lakefs-fuse {' '.join(args)}` failed ({res.returncode}): "
                             f"{(res.stderr or res.stdout).strip()}")
        return res.stdout.strip()

    def format(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.format_msg = self.cli("format", "--data", str(self.data), *self.format_args)

    def _registered_pid(self) -> int | None:
        mnt = str(self.mnt.resolve())
        for f in self.runtime.glob("*.json"):
            try:
                info = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if info.get("mountpoint") == mnt:
                return int(info["pid"])
        return None

    def mount(self) -> Daemon:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        try:
            self.cli("mount", str(self.mnt), "--data", str(self.data), *self.mount_args, timeout=120)
        finally:  # even if the CLI failed, a daemon may be running: track it for teardown
            pid = self._registered_pid()
            if pid and not any(d.pid == pid for d in self.daemons):
                self.current = Daemon(pid)
                self.daemons.append(self.current)
        if not is_mountpoint(self.mnt):
            raise BenchError(f"mount reported success but {self.mnt} is not a mountpoint")
        if self.current is None:
            raise BenchError(f"no daemon registered in {self.runtime} for {self.mnt}")
        return self.current

    def umount(self) -> None:
        self.cli("umount", str(self.mnt), timeout=300)
        if is_mountpoint(self.mnt):
            raise BenchError(f"umount returned but {self.mnt} is still mounted")
        if self.current is not None:
            if not self.current.reap(60):
                raise BenchError(f"daemon {self.current.pid} still running 60s after unmount")
            if self.current.status:
                log(f"WARNING: daemon {self.current.pid} exited with wait status {self.current.status}")
            self.current = None

    def abort(self, why: str) -> None:
        """Called from the watchdog: dump daemon stacks into the log, then kill the connection."""
        live = [d for d in self.daemons if d.rusage is None and pid_alive(d.pid)]
        for d in live:
            try:
                os.kill(d.pid, signal.SIGUSR1)  # faulthandler: all thread stacks -> mount.log
            except ProcessLookupError:
                pass
        time.sleep(2)
        log(f"aborting the mount ({why}): SIGKILL daemon(s) {[d.pid for d in live]}, lazy unmount")
        for d in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30)

    def teardown(self) -> list[str]:
        """Lazy unmount, SIGTERM, SIGKILL; returns problems left over (empty when clean)."""
        problems = []
        if is_mountpoint(self.mnt):
            try:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"fusermount3 -u -z failed: {exc}")
        pid = self._registered_pid()
        if pid and not any(d.pid == pid for d in self.daemons):
            self.daemons.append(Daemon(pid))
        for d in self.daemons:
            d.reap(10)  # after the lazy unmount, give a live daemon a moment to flush and exit by itself
            for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
                if not d.alive():
                    break
                log(f"teardown: {sig.name} -> daemon {d.pid}")
                try:
                    os.kill(d.pid, sig)
                except ProcessLookupError:
                    break
                d.reap(wait)
            if d.alive():
                problems.append(f"daemon {d.pid} survived SIGKILL")
        if is_mountpoint(self.mnt):
            problems.append(f"{self.mnt} is still mounted")
        self.current = None
        return problems

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.data / "mount.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no mount.log)"


# ------------------------------------------------------------------ measurement

@dataclass
class Phase:
    name: str
    target: str
    wall: float = 0.0
    client_cpu: float = 0.0
    daemon_cpu: float | None = None
    daemon_main_cpu: float | None = None
    disk_busy: float | None = None
    disk_write_mb: float | None = None
    disk_flushes: int | None = None
    other_cpu: float = 0.0
    nbytes: int = 0
    nfiles: int = 0
    note: str = ""


class Watchdog(threading.Thread):
    def __init__(self, bench: Bench):
        super().__init__(daemon=True, name="watchdog")
        self.bench = bench
        self.lock = threading.Lock()
        self.deadline: float | None = None
        self.phase = ""
        self.fired: str | None = None
        self.stop = threading.Event()

    def arm(self, phase: str, seconds: float) -> None:
        with self.lock:
            self.phase, self.deadline = phase, time.monotonic() + seconds

    def disarm(self) -> None:
        with self.lock:
            self.deadline = None

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with self.lock:
                late = self.deadline is not None and time.monotonic() > self.deadline
                phase = self.phase
                if late:
                    self.deadline = None
            if late:
                self.fired = phase
                log(f"TIMEOUT: phase '{phase}' exceeded {self.bench.args.phase_timeout:.0f}s")
                if self.bench.lake.daemons:
                    try:
                        self.bench.lake.abort(f"phase '{phase}' timed out")
                    except Exception as exc:  # never let the watchdog die silently
                        log(f"abort failed: {exc!r}")


class Bench:
    def __init__(self, args, workdir: Path, cli: list[str]):
        self.args = args
        self.workdir = workdir
        self.local = workdir / "local"
        self.lake = Lake(workdir / "lake", cli, args.format_arg, args.mount_arg)
        self.caches = Caches()
        self.disk: DiskStats | None = None
        self.phases: list[Phase] = []
        self.watchdog = Watchdog(self)
        self.subreaper = False
        pool = bytearray(os.urandom(POOL))
        self.pool = bytes(pool)
        # 32 distinct 1 MiB blocks; block i is blocks[i % 32] with a 16-byte stamp written in place.
        self.blocks = [bytearray(self.pool[j * BLOCK:(j + 1) * BLOCK]) for j in range(POOL // BLOCK)]

    # ---- phase bookkeeping

    def run_phase(self, name: str, target: str, fn, *, nbytes: int = 0, nfiles: int = 0, note: str = "") -> Phase:
        ph = Phase(name, target, nbytes=nbytes, nfiles=nfiles, note=note)
        self.watchdog.arm(f"{name} ({target})", self.args.phase_timeout)
        d0 = {id(d): (d.cpu(), d.main_cpu()) for d in self.lake.daemons}
        disk0 = self.disk.sample() if self.disk else None
        s0, c0, t0 = system_cpu(), self_cpu(), time.perf_counter()
        try:
            extra = fn()
        finally:
            ph.wall = time.perf_counter() - t0
            ph.client_cpu = self_cpu() - c0
            busy = system_cpu() - s0
            self.watchdog.disarm()
        disk1 = self.disk.sample() if self.disk else None
        if target == "lakefs" and self.lake.daemons:
            ph.daemon_cpu = sum(d.cpu() - d0.get(id(d), (0.0, 0.0))[0] for d in self.lake.daemons)
            ph.daemon_main_cpu = sum(d.main_cpu() - d0.get(id(d), (0.0, 0.0))[1] for d in self.lake.daemons)
        ph.other_cpu = max(0.0, busy - ph.client_cpu - (ph.daemon_cpu or 0.0))
        ph.disk_busy, ph.disk_write_mb, ph.disk_flushes = DiskStats.delta(disk0, disk1, ph.wall)
        if isinstance(extra, str):
            ph.note = (ph.note + "; " + extra).strip("; ")
        self.phases.append(ph)
        rate = ""
        if ph.nbytes and ph.wall > 0:
            rate = f" {ph.nbytes / ph.wall / 1e6:8.1f} MB/s"
        if ph.nfiles and ph.wall > 0:
            rate += f" {ph.nfiles / ph.wall:8.0f} files/s"
        dcpu = f" daemon CPU {ph.daemon_cpu:.1f}s" if ph.daemon_cpu is not None else ""
        log(f"{name:<34} {target:<6} {ph.wall:7.2f}s{rate}{dcpu}")
        return ph

    def settle(self) -> None:
        """Before a write phase: nothing dirty left over from the previous one, caches empty."""
        syncfs(self.workdir)
        self.caches.drop()

    def cold_local(self) -> None:
        syncfs(self.local)
        self.caches.drop()

    # ---- B1: one big file

    def b1_write(self, path: Path, nblocks: int) -> None:
        blocks = self.blocks
        with open(path, "wb", buffering=0) as f:
            for i in range(nblocks):
                buf = blocks[i % len(blocks)]
                STAMP.pack_into(buf, 0, b"LKFBENCH", i)
                view = memoryview(buf)
                while view:
                    view = view[f.write(view):]
            f.flush()
            os.fsync(f.fileno())

    def b1_read(self, path: Path, nblocks: int) -> None:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        blocks = self.blocks
        i = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                got = 0
                while got < BLOCK:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got == 0:
                    break
                if got != BLOCK or i >= nblocks:
                    raise BenchError(f"{path}: short or long read at block {i} ({got} bytes)")
                ref = blocks[i % len(blocks)]
                j = 16 + (i * 4099) % (BLOCK - 80)
                if STAMP.unpack_from(buf)[1] != i or buf[j:j + 64] != ref[j:j + 64]:
                    raise BenchError(f"{path}: wrong data in block {i}")
                i += 1
        if i != nblocks:
            raise BenchError(f"{path}: read {i} blocks, expected {nblocks}")

    # ---- B2: many small files

    def _names(self, root: Path) -> list[Path]:
        return [root / f"class_{i % self.args.classes:02d}" / f"{i:06d}.bin" for i in range(self.args.files)]

    def _offset(self, i: int) -> int:
        return (i * 104729) % (POOL - self.args.file_size)

    def b2_write(self, root: Path) -> None:
        size, pool = self.args.file_size, memoryview(self.pool)
        for c in range(self.args.classes):
            (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for i, p in enumerate(self._names(root)):
            off = self._offset(i)
            parts = [STAMP.pack(b"LKFBFILE", i), pool[off:off + size - STAMP.size]]
            fd = os.open(p, flags, 0o644)
            try:
                done = os.writev(fd, parts)
                if done != size:  # finish a short write
                    rest = b"".join(bytes(x) for x in parts)[done:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
            finally:
                os.close(fd)

    def b2_read(self, root: Path) -> None:
        size = self.args.file_size
        order = list(enumerate(self._names(root)))
        random.Random(self.args.seed).shuffle(order)
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        j = STAMP.size + (size - STAMP.size) // 2
        for i, p in order:
            fd = os.open(p, os.O_RDONLY)
            try:
                got = 0
                while True:
                    n = os.readv(fd, [view[got:]])
                    if not n:
                        break
                    got += n
            finally:
                os.close(fd)
            off = self._offset(i)
            ref = self.pool[off + j - STAMP.size:off + j - STAMP.size + 64]
            if got != size or STAMP.unpack_from(buf)[1] != i or buf[j:j + 64] != ref:
                raise BenchError(f"{p}: wrong size or data ({got} bytes)")

    # ---- the whole run

    def run(self) -> None:
        a = self.args
        nblocks = a.size // BLOCK
        b2_bytes = a.files * a.file_size
        self.local.mkdir(parents=True)
        self.lake.format()
        if os.stat(self.local).st_dev != os.stat(self.lake.data).st_dev:
            log("WARNING: local baseline and lake data are on different filesystems")
        self.disk = DiskStats(self.workdir)

        # B1 local
        big = self.local / "big.bin"
        self.settle()
        self.run_phase("B1 write+fsync", "local", lambda: self.b1_write(big, nblocks), nbytes=a.size)
        self.run_phase("B1 cold prep (syncfs+drop)", "local", self.cold_local)
        self.run_phase("B1 read cold", "local", lambda: self.b1_read(big, nblocks), nbytes=a.size)
        self.run_phase("B1 read warm", "local", lambda: self.b1_read(big, nblocks), nbytes=a.size)

        # B1 lake
        lbig = self.lake.mnt / "big.bin"
        self.settle()
        self.run_phase("mount (fresh lake)", "lakefs", self.lake.mount)
        self.run_phase("B1 write+fsync", "lakefs", lambda: self.b1_write(lbig, nblocks), nbytes=a.size)
        self.run_phase("B1 unmount", "lakefs", self.lake.umount)
        self.run_phase("B1 cold prep (syncfs+drop)", "lakefs", lambda: (syncfs(self.lake.data), self.caches.drop()))
        self.run_phase("mount", "lakefs", self.lake.mount)
        self.run_phase("B1 read cold", "lakefs", lambda: self.b1_read(lbig, nblocks), nbytes=a.size)
        self.run_phase("B1 read warm", "lakefs", lambda: self.b1_read(lbig, nblocks), nbytes=a.size,
                       note="2nd open: keep_cache")
        self.run_phase("unmount", "lakefs", self.lake.umount)
        if not a.keep:  # free the page cache and disk space the big files hold
            big.unlink()

        # B2 local
        lroot = self.local / "files"
        self.settle()
        self.run_phase("B2 write", "local", lambda: self.b2_write(lroot), nbytes=b2_bytes, nfiles=a.files)
        self.run_phase("B2 barrier (syncfs)", "local", lambda: syncfs(self.local))
        self.run_phase("B2 cold prep (drop)", "local", self.caches.drop)
        self.run_phase("B2 read cold shuffled", "local", lambda: self.b2_read(lroot), nbytes=b2_bytes,
                       nfiles=a.files)

        # B2 lake
        mroot = self.lake.mnt / "files"
        self.settle()
        self.run_phase("mount", "lakefs", self.lake.mount)
        self.run_phase("B2 write", "lakefs", lambda: self.b2_write(mroot), nbytes=b2_bytes, nfiles=a.files)
        self.run_phase("B2 barrier (unmount+syncfs)", "lakefs",
                       lambda: (self.lake.umount(), syncfs(self.lake.data)))
        self.run_phase("B2 cold prep (drop)", "lakefs", self.caches.drop)
        self.run_phase("mount", "lakefs", self.lake.mount)
        self.run_phase("B2 read cold shuffled", "lakefs", lambda: self.b2_read(mroot), nbytes=b2_bytes,
                       nfiles=a.files)
        self.run_phase("unmount", "lakefs", self.lake.umount)

    # ---- report

    def _get(self, name: str, target: str) -> Phase | None:
        for ph in self.phases:
            if ph.name == name and ph.target == target:
                return ph
        return None

    def report(self, header: list[str], failure: str | None) -> str:
        a = self.args
        out = ["# lakefs-fuse embedded benchmark", ""]
        out += [f"- {h}" for h in header]
        out += [f"- cold caches: {'drop_caches OK' if self.caches.ok else 'drop_caches NOT available -- cold reads may be warm'}",
                "- daemon CPU: " + ("wait4() rusage of the daemon (this script is its subreaper), incl. unmount flush"
                                    if self.subreaper else "/proc/<pid>/stat samples (misses CPU spent after the last sample)"),
                "- MB = 10^6 bytes; ratio = lakefs / local (throughput: >1 means lakefs is faster)", ""]
        if failure:
            out += [f"**RUN FAILED:** {failure}", ""]

        rows = []

        def row(label, metric, local, lake, fn):
            lv = fn(local) if local else None
            kv = fn(lake) if lake else None
            ratio = f"**{kv / lv:.2f}**" if lv and kv else "-"
            cell = lambda v: "-" if v is None else f"{v:,.1f}"
            rows.append(f"| {label} | {metric} | {cell(lv)} | {cell(kv)} | {ratio} |")

        size_lbl = human(a.size)
        L, K = "local", "lakefs"
        for name, label in (("B1 write+fsync", f"B1 seq write {size_lbl} (1 MiB blocks) + fsync"),
                            ("B1 read cold", f"B1 seq read {size_lbl}, cold"),
                            ("B1 read warm", f"B1 seq read {size_lbl}, warm (page cache)")):
            row(label, "MB/s", self._get(name, L), self._get(name, K), lambda p: p.nbytes / p.wall / 1e6)
        n = f"{a.files:,} x {human(a.file_size)}"
        w_l, w_k = self._get("B2 write", L), self._get("B2 write", K)
        b_l, b_k = self._get("B2 barrier (syncfs)", L), self._get("B2 barrier (unmount+syncfs)", K)
        row(f"B2 write {n} (to close)", "files/s", w_l, w_k, lambda p: p.nfiles / p.wall)
        row(f"B2 write {n} (to close)", "MB/s", w_l, w_k, lambda p: p.nbytes / p.wall / 1e6)
        barrier = {id(w_l): b_l, id(w_k): b_k}

        def with_barrier(p, unit):
            b = barrier.get(id(p))
            if b is None:
                return None
            t = p.wall + b.wall
            return p.nfiles / t if unit == "files" else p.nbytes / t / 1e6
        row(f"B2 write {n} + barrier (local syncfs / lake unmount+syncfs)", "files/s", w_l, w_k,
            lambda p: with_barrier(p, "files"))
        row(f"B2 write {n} + barrier", "MB/s", w_l, w_k, lambda p: with_barrier(p, "MB"))
        r_l, r_k = self._get("B2 read cold shuffled", L), self._get("B2 read cold shuffled", K)
        row(f"B2 read {n}, cold, shuffled", "files/s", r_l, r_k, lambda p: p.nfiles / p.wall)
        row(f"B2 read {n}, cold, shuffled", "MB/s", r_l, r_k, lambda p: p.nbytes / p.wall / 1e6)

        out += ["## Results", "", "| Benchmark | Metric | local | lakefs | lakefs/local |",
                "|---|---|---:|---:|---:|", *rows, ""]

        out += ["## Phases", "",
                "Client CPU = this process (user+sys, i.e. the syscall side); daemon CPU = mount daemon "
                "(all threads; 'main thread' = the trio loop running FUSE dispatch and Python logic, the rest is "
                "worker threads: EC coding, checksums, shard I/O; the main-thread figure misses the last ~20 ms "
                "before a daemon exits); other CPU = everything else busy on the machine meanwhile (noise: other work, "
                "kernel writeback, the CLI); disk columns are device-wide for the backing disk"
                + (f" `{self.disk.name}`" if self.disk and self.disk.name else " (unknown device)") + ".", "",
                "| # | Phase | Target | Wall s | Rate | Client CPU s | Daemon CPU s (% of wall) | of it main thread s | "
                "Other CPU s | Disk busy | Disk write MB | Disk flushes | Note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases, 1):
            rate = []
            if ph.nbytes and ph.wall:
                rate.append(f"{ph.nbytes / ph.wall / 1e6:,.0f} MB/s")
            if ph.nfiles and ph.wall:
                rate.append(f"{ph.nfiles / ph.wall:,.0f} files/s")
            dc = "-" if ph.daemon_cpu is None else f"{ph.daemon_cpu:.2f} ({100 * ph.daemon_cpu / ph.wall:.0f}%)"
            dm = "-" if ph.daemon_main_cpu is None else f"{ph.daemon_main_cpu:.2f}"
            busy = "-" if ph.disk_busy is None else f"{100 * ph.disk_busy:.0f}%"
            wmb = "-" if ph.disk_write_mb is None else f"{ph.disk_write_mb:,.0f}"
            fl = "-" if ph.disk_flushes is None else f"{ph.disk_flushes:,}"
            out.append(f"| {i} | {ph.name} | {ph.target} | {ph.wall:.2f} | {', '.join(rate) or '-'} | "
                       f"{ph.client_cpu:.2f} | {dc} | {dm} | {ph.other_cpu:.2f} | {busy} | {wmb} | {fl} | {ph.note} |")
        rss = [f"{d.pid}: {d.rusage.ru_maxrss / 1024:.0f} MiB" for d in self.lake.daemons if d.rusage]
        if rss:
            out += ["", f"Daemon peak RSS per mount: {', '.join(rss)}."]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main

def find_cli() -> list[str]:
    exe = REPO / ".venv" / "bin" / "lakefs-fuse"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "lakefs_fuse.cli"]


def preflight(args, workdir: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing")
    if not shutil.which("fusermount3"):
        raise BenchError("fusermount3 is not installed")
    if os.geteuid() != 0:
        log("WARNING: not root: drop_caches will fail, so 'cold' numbers are not cold")
    free = shutil.disk_usage(workdir).free
    need = 3 * args.size + 4 * args.files * args.file_size + 512 * MiB
    if free < need:
        raise BenchError(f"{workdir}: {human(free)} free, need about {human(need)}")
    mnt, fstype = fs_of(workdir)
    if fstype in ("tmpfs", "ramfs"):
        log(f"WARNING: {workdir} is on {fstype}: the baseline is RAM, not disk")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=None, help="B1 file size (default 1G; --quick 256M)")
    ap.add_argument("--files", type=int, default=None, help="B2 file count (default 10000; --quick 2000)")
    ap.add_argument("--file-size", type=parse_size, default=parse_size("110K"), help="B2 file size (default 110K)")
    ap.add_argument("--classes", type=int, default=10, help="B2 class directories (default 10)")
    ap.add_argument("--seed", type=int, default=1234, help="shuffle seed for the B2 read order")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="parent of the fresh run directory (default /var/tmp); baseline and lake go there")
    ap.add_argument("--quick", action="store_true", help="256 MiB and 2,000 files")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (data) afterwards")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    ap.add_argument("--phase-timeout", type=float, default=600, help="abort a phase after this many seconds")
    ap.add_argument("--format-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `lakefs-fuse format` (repeatable, e.g. --format-arg=--ec=8+3)")
    ap.add_argument("--mount-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `lakefs-fuse mount` (repeatable, e.g. --mount-arg=--memory-cache=1G)")
    args = ap.parse_args(argv)
    if args.size is None:
        args.size = 256 * MiB if args.quick else GiB
    if args.files is None:
        args.files = 2000 if args.quick else 10000
    args.size = max(BLOCK, -(-args.size // BLOCK) * BLOCK)
    if not 64 <= args.file_size <= POOL // 2:
        ap.error(f"--file-size must be between 64 B and {human(POOL // 2)}")
    if args.files < 1 or args.classes < 1:
        ap.error("--files and --classes must be positive")

    command = " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]) if argv is None else \
        " ".join(shlex.quote(x) for x in ["embedded.py", *argv])
    parent = args.workdir or Path("/var/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lakefs-bench.", dir=parent)).resolve()
    cli = find_cli()

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored.
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    bench = Bench(args, workdir, cli)
    bench.subreaper = set_subreaper()
    bench.watchdog.start()
    failure, status = None, 0
    log(f"run directory {workdir}")
    try:
        preflight(args, workdir)
        bench.run()
    except KeyboardInterrupt:
        failure, status = "interrupted", 130
        log("interrupted; cleaning up")
    except Exception as exc:
        status = 1
        failure = f"{type(exc).__name__}: {exc}"
        if bench.watchdog.fired:
            failure = f"phase '{bench.watchdog.fired}' timed out after {args.phase_timeout:.0f}s ({failure})"
        log(f"FAILED: {failure}")
        if not isinstance(exc, BenchError):
            traceback.print_exc()
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        bench.watchdog.disarm()
        bench.watchdog.stop.set()
        problems = bench.lake.teardown()
        for p in problems:
            log(f"CLEANUP PROBLEM: {p}")
        if failure:
            log(f"tail of {bench.lake.data / 'mount.log'}:\n{bench.lake.log_tail()}")
        if args.keep:
            log(f"kept {workdir} (local baseline in local/, lake data in lake/data, mountpoint lake/mnt)")
        elif is_mountpoint(bench.lake.mnt):
            log(f"NOT deleting {workdir}: {bench.lake.mnt} is still mounted")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        while True:  # reap anything else that was reparented to us
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if problems and not failure:
            failure, status = "cleanup: " + "; ".join(problems), 1
        for s, h in old.items():
            signal.signal(s, h)

    header = [f"command: `{command}`",
              f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
              f"kernel: {os.uname().release}; nproc: {os.cpu_count()}; memory: {_memtotal()}; "
              f"python: {sys.version.split()[0]}",
              f"lakefs-fuse: {_version(cli)}; lake: {bench.lake.format_msg or '?'}"
              + (f"; mount args: {' '.join(args.mount_arg)}" if args.mount_arg else ""),
              f"workdir: {workdir} on {'%s (%s)' % fs_of(parent)}"
              + (f", device {bench.disk.name}" if bench.disk and bench.disk.name else ""),
              f"B1: {human(args.size)}; B2: {args.files:,} files x {args.file_size:,} B in {args.classes} "
              f"directories, read order shuffled with seed {args.seed}"]
    text = bench.report(header, failure)
    print(text)
    if args.out:
        args.out.write_text(text + (f"\n```\nmount.log tail:\n{bench.lake.log_tail()}\n```\n" if failure else ""))
        log(f"wrote {args.out}")
    return status


def _memtotal() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        return human(kb * KiB)
    except (OSError, StopIteration, ValueError):
        return "?"


def _version(cli: list[str]) -> str:
    try:
        res = subprocess.run([*cli, "--version"], capture_output=True, text=True, timeout=60, cwd=REPO)
        return res.stdout.strip().split()[-1] if res.returncode == 0 and res.stdout.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
