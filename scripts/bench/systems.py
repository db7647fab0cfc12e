"""The systems the benchmarks compare, each set up, restarted cold and torn down the same way everywhere.

- ``WeedServer``: ``weed mini`` (master, volume, filer, S3) with every port pinned and checked,
  restartable on the same ports.
- ``System`` and its kinds, for the scripts that run several systems through the same loop:
  ``Local`` (a plain directory), ``MemFS`` (memfs.py over a source directory), ``LakeSystem`` (an
  embedded lake over 9 local peer directories), ``SeaweedFS`` (``weed mount`` over ``weed mini``)
  and ``JuiceFS`` (SQLite metadata; objects in a local directory or in a second weed mini's S3).
  Each has start / cold (every daemon stopped, on-disk caches emptied, syncfs, drop_caches,
  restarted) / abort / teardown (idempotent, returns the problems left) and its CPU groups.

The lakefs-fuse set-ups themselves (a lake, its peer servers) are in lakes.py.

May import: lakes.py, common.py and the standard library.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import (
    BenchError,
    Caches,
    Child,
    Daemon,
    close_fds_under,
    cmdline,
    descendants,
    file_size,
    free_ports,
    fs_of,
    is_mountpoint,
    lazy_unmount,
    listening_ports,
    log,
    noproxy_env,
    port_free,
    read_ahead_of,
    read_from,
    run_tool,
    syncfs,
    tail,
)
from lakes import Lake, wait_until

GRPC_OFFSET = 10000          # weed's default http -> grpc port offset (weed mount relies on it for the filer)
MEMFS = Path(__file__).resolve().parent / "memfs.py"


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


def empty_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for p in path.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# ------------------------------------------------------------------ SeaweedFS

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
        bindable = all(port_free(p, reuse=True) and port_free(p + GRPC_OFFSET, reuse=True) for p in self.ports.values())
        if self.ports and not bindable:
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
        # the admin server is optional; not required
        want = {p for k, p in P.items() if k != "admin"} | {p + GRPC_OFFSET for k, p in P.items() if k != "admin"}
        try:
            wait_until(lambda: want <= listening_ports(child.pid) and self._bucket_ready(), child, "weed mini",
                       90, 0.2)
        except BenchError as exc:
            raise BenchError(f"{exc}\n(listening on {sorted(listening_ports(child.pid))}, pinned {sorted(want)}; "
                             "a moved port means one was taken)") from None

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
        problems = [f"weed mini {c.pid} survived SIGKILL" for c in self.children if not c.stop(signal.SIGINT, 30)]
        self.current = None
        return problems

    def daemons(self) -> list[Daemon]:
        return [c.d for c in self.children]


# ------------------------------------------------------------------ systems run through one loop

class System:
    key = "?"
    writes = True          # data is written through the mount (memfs loads local's copy instead)

    def __init__(self, root: Path, caches: Caches):
        self.root = root
        self.caches = caches
        self.mnt = root / "mnt"
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
        self.caches.drop()

    def _stop_mounts(self, children: list[Child], what: str, sig: int) -> list[str]:
        close_fds_under(self.mnt)
        problems = [f"{what} {c.pid} survived SIGKILL" for c in children if not c.stop(sig, 30)]
        lazy_unmount(self.mnt)
        return problems

    def _still_mounted(self) -> list[str]:
        return [f"{self.mnt} is still mounted"] if is_mountpoint(self.mnt) else []


class Local(System):
    key = "local"

    @property
    def top(self) -> Path:
        return self.root / "data"

    def start(self) -> None:
        self.top.mkdir(parents=True, exist_ok=True)
        self.facts["where"] = f"{self.top} on {'{} ({})'.format(*fs_of(self.top)[:2])}"

    def cold(self) -> None:
        self.drop()

    def read_ahead(self) -> int | None:
        return None


class MemFS(System):
    """memfs.py serving a copy of ``src`` from RAM (started in the foreground, as our child)."""
    key = "memfs"
    writes = False

    def __init__(self, root: Path, caches: Caches, src: Path):
        super().__init__(root, caches)
        self.src = src
        self.log = self.root / "memfs.log"
        self.children: list[Child] = []
        self.current: Child | None = None

    def start(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        self._mount()

    def _mount(self) -> None:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        off = file_size(self.log)
        child = Child("memfs", [sys.executable, str(MEMFS), str(self.src), str(self.mnt), "--foreground"],
                      self.log, deathsig="TERM")
        self.children.append(child)
        self.current = child

        def ready() -> bool:
            m = re.search(rf"^ready pid={child.pid} .*read_ahead_kb=(\S+)", read_from(self.log, off), re.MULTILINE)
            if m and is_mountpoint(self.mnt):
                self.facts["ready"] = m.group(0)
            return "ready" in self.facts and is_mountpoint(self.mnt)
        self.facts.pop("ready", None)
        wait_until(ready, child, "memfs", 600)  # loading the source is part of the start

    def cold(self) -> None:
        child, self.current = self.current, None
        if child is not None:
            close_fds_under(self.mnt)
            if not child.stop(signal.SIGTERM, 30):
                raise BenchError(f"memfs {child.pid} survived SIGKILL")
            if child.d.status:
                log(f"WARNING: memfs exited with wait status {child.d.status}")
            if is_mountpoint(self.mnt):
                lazy_unmount(self.mnt)
                raise BenchError(f"memfs exited but {self.mnt} was still mounted (lazily unmounted)")
        self.drop()
        self._mount()

    def abort(self, why: str) -> None:
        log(f"aborting memfs ({why}): SIGKILL, lazy unmount")
        if self.current and self.current.alive():
            self.current.send(signal.SIGKILL)
        lazy_unmount(self.mnt)

    def teardown(self) -> list[str]:
        self.current = None
        return self._stop_mounts(self.children, "memfs", signal.SIGTERM) + self._still_mounted()

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {"mount": [c.d for c in self.children]}

    def daemon_log(self) -> Path | None:
        return self.log

    def logs(self) -> dict[str, Path]:
        return {"memfs.log": self.log}


class LakeSystem(System):
    """An embedded lake, ``--ec 6+3`` over 9 local peer directories (data/p0..p8)."""
    key = "lakefs"

    def __init__(self, root: Path, caches: Caches, cli: list[str], format_args: list[str], mount_args: list[str]):
        super().__init__(root, caches)
        peers = [x for i in range(9) for x in ("--peer", str(root / "data" / f"p{i}"))]
        self.lake = Lake(self.root, cli, ["--ec", "6+3", *peers, *format_args], mount_args)
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
        return self.lake.teardown()

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {"mount": list(self.lake.daemons)}

    def daemon_log(self) -> Path | None:
        return self.lake.log_path

    def logs(self) -> dict[str, Path]:
        return {"mount.log": self.lake.log_path}


class SeaweedFS(System):
    """``weed mount`` of bucket ``lake`` (``/buckets/lake``) over ``weed mini``."""
    key = "seaweedfs"

    def __init__(self, root: Path, caches: Caches, weed: str, mount_opts: list[str]):
        super().__init__(root, caches)
        self.weed = weed
        self.mount_opts = mount_opts
        self.mini = WeedServer(self.root, weed, noproxy_env(), "lake")
        self.cache = self.root / "cache"
        self.log = self.root / "mount.log"
        self.mounts: list[Child] = []
        self.current: Child | None = None

    def start(self) -> None:
        self.start_store()
        self.mount()

    def start_store(self) -> None:
        for d in (self.mnt, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.mini.start()
        self.facts["ports"] = ", ".join(f"{k} {v}" for k, v in self.mini.ports.items())

    def mount(self) -> None:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        argv = [self.weed, "-logtostderr", "mount", f"-filer=127.0.0.1:{self.mini.ports['filer']}",
                "-filer.path=/buckets/lake", f"-dir={self.mnt}", f"-cacheDir={self.cache}",
                f"-localSocket={self.root / 'mount.sock'}", *self.mount_opts]
        child = Child("weed mount", argv, self.log, deathsig="INT", env=self.mini.env)
        self.mounts.append(child)
        self.current = child
        wait_until(lambda: is_mountpoint(self.mnt), child, "weed mount", 60)
        os.stat(self.mnt)  # completes the FUSE handshake

    def umount(self) -> None:
        child, self.current = self.current, None
        if child is None:
            return
        close_fds_under(self.mnt)
        child.send(signal.SIGINT)  # weed mount unmounts itself (after flushing) and exits
        if not child.d.reap(120):
            raise BenchError(f"weed mount {child.pid} still running 120s after SIGINT:\n{child.tail()}")
        if is_mountpoint(self.mnt):
            raise BenchError(f"weed mount exited but {self.mnt} is still mounted")
        if child.d.status:
            log(f"WARNING: weed mount exited with wait status {child.d.status}")

    def empty_cache(self) -> None:
        empty_dir(self.cache)

    def cold(self) -> None:
        self.umount()
        self.mini.stop()
        self.empty_cache()
        self.drop()
        self.mini.start()
        self.mount()

    def abort(self, why: str) -> None:
        log(f"aborting weed mount ({why}): SIGQUIT (goroutine dump), SIGKILL, lazy unmount")
        c = self.current
        if c and c.alive():
            c.send(signal.SIGQUIT)  # Go: goroutine dump to stderr (mount.log), then exit
            c.d.reap(3)
            c.send(signal.SIGKILL)
        lazy_unmount(self.mnt)

    def teardown(self) -> list[str]:
        self.current = None
        problems = self._stop_mounts(self.mounts, "weed mount", signal.SIGINT)
        return problems + self.mini.teardown() + self._still_mounted()

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        return {"mount": [c.d for c in self.mounts], "store": self.mini.daemons()}

    def logs(self) -> dict[str, Path]:
        return {"mount.log": self.log, "mini.log": self.mini.log}


class JuiceFS(System):
    """JuiceFS with SQLite metadata; objects in SeaweedFS's S3 gateway (a second ``weed mini``) when
    ``weed`` is given, else in a local directory (``--storage file``). ``mount -d --backup-meta 0``."""
    key = "juicefs"

    def __init__(self, root: Path, caches: Caches, exe: str, *, weed: str | None, mount_opts: list[str],
                 name: str):
        super().__init__(root, caches)
        self.exe = exe
        self.name = name
        self.mount_opts = mount_opts
        self.key_id = name + secrets.token_hex(4)
        self.secret = secrets.token_hex(16)
        self.env = noproxy_env(AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.secret)
        self.mini = WeedServer(self.root / "s3", weed, self.env, "jfs") if weed else None
        self.db = f"sqlite3://{self.root / 'jfs.db'}"
        self.store = self.root / "store"
        self.cache = self.root / "cache"
        self.log = self.root / "juicefs.log"
        self.daemons: list[Daemon] = []

    def url(self) -> str:
        return f"http://127.0.0.1:{self.mini.ports['s3']}/jfs"

    def jfs(self, *args: str, timeout: float = 120) -> str:
        return run_tool([self.exe, *args], f"juicefs {args[0]}", env=self.env, timeout=timeout, cwd=self.root).stdout

    def start(self) -> None:
        for d in (self.mnt, self.cache, self.store):
            d.mkdir(parents=True, exist_ok=True)
        if self.mini:
            self.mini.start()
            store = ["--storage", "s3", "--bucket", self.url(), "--access-key", self.key_id,
                     "--secret-key", self.secret]
        else:
            store = ["--storage", "file", "--bucket", f"{self.store}/"]
        self.jfs("format", "--no-update", *store, self.db, self.name)
        self._mount()
        opts = f" {' '.join(self.mount_opts)}" if self.mount_opts else ""
        if self.mini:
            self.facts["setup"] = (f"`juicefs format --storage s3 --bucket {self.url()}` (SeaweedFS S3 of a 2nd "
                                   f"weed mini), meta {self.db}, mount -d --backup-meta 0 "
                                   f"--cache-dir {self.cache}{opts}")
        else:
            self.facts["store"] = f"SQLite {self.root / 'jfs.db'}; objects: --storage file {self.store}/ (local disk)"
            self.facts["options"] = "defaults (attr/entry/dir-entry cache 1 s, trash 1 day), --backup-meta 0" + opts

    def _mount(self) -> None:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        metrics = free_ports(1)[0]
        bucket = ["--bucket", self.url()] if self.mini else []
        try:
            # --log first: juicefs rewrites its argv in place, and the log path identifies its processes
            self.jfs("mount", "--log", str(self.log), "-d", "--no-usage-report", "--no-syslog",
                     "--cache-dir", str(self.cache), "--backup-meta", "0", "--metrics", f"127.0.0.1:{metrics}",
                     *bucket, *self.mount_opts, self.db, str(self.mnt))
        finally:
            self._track()
        if not is_mountpoint(self.mnt):
            raise BenchError(f"juicefs mount returned but {self.mnt} is not a mountpoint:\n{tail(self.log)}")
        os.stat(self.mnt)

    def _track(self) -> None:
        known = {d.pid for d in self.daemons} | {c.pid for c in (self.mini.children if self.mini else [])}
        for pid in descendants():
            if pid not in known and str(self.log) in cmdline(pid):
                self.daemons.append(Daemon(pid, sampled=True))
                self.facts.setdefault("processes", f"pid {pid}: {cmdline(pid)[:120]}")

    def _umount(self) -> None:
        close_fds_under(self.mnt)
        if is_mountpoint(self.mnt):
            self.jfs("umount", str(self.mnt), timeout=180)
        for d in self.daemons:
            if d.alive() and not d.reap(30):
                log(f"juicefs process {d.pid} still running 30s after umount")
                d.stop("juicefs")
        if is_mountpoint(self.mnt):
            raise BenchError(f"juicefs umount returned but {self.mnt} is still mounted")

    def cold(self) -> None:
        self._umount()
        if self.mini:
            self.mini.stop()
        empty_dir(self.cache)
        self.drop()
        if self.mini:
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
        self._track()
        try:
            self._umount()
        except BenchError as exc:
            problems.append(f"{exc}; lazy unmount")
        for d in self.daemons:
            d.reap(10)
            if not d.stop("juicefs"):
                problems.append(f"juicefs process {d.pid} survived SIGKILL")
        lazy_unmount(self.mnt)
        return problems + (self.mini.teardown() if self.mini else []) + self._still_mounted()

    def cpu_groups(self) -> dict[str, list[Daemon]]:
        self._track()
        return {"mount": list(self.daemons), **({"store": self.mini.daemons()} if self.mini else {})}

    def logs(self) -> dict[str, Path]:
        return {"juicefs.log": self.log, **({"mini.log": self.mini.log} if self.mini else {})}
