"""The machinery every benchmark script in scripts/bench shares, written once (the bottom layer).

Owns:

- units, the payload every script writes and verifies (``Payload``: 32 MiB of random bytes; big
  files are 1 MiB blocks stamped with their index, small files are stamped slices of the pool),
  and the way results are printed (``human``, ``cell``, ``ratio``);
- probes of this machine: CPU (``system_cpu``, ``self_cpu``), the backing disk (``DiskStats``),
  mounts (``is_mountpoint``, ``fs_of``), processes (``descendants``, ``cmdline``, ``proc_io``), loopback
  ports, bdi read-ahead, and cache dropping (``Caches``);
- child processes: ``Daemon`` (CPU of a process from /proc, final figures from wait4() -- the
  scripts make themselves child subreapers, so daemonized mounts are reaped here) and ``Child`` (a
  long-running process of ours: own session, parent-death signal, log file);
- the lakefs-fuse CLI invocation (``find_cli``, ``run_tool``) and the other tools' (``find_tool``).

Above it: runner.py (the watchdog, a measured phase, the run skeleton of a main(): preflight,
teardown, the leftovers check) and systems.py (setting up each system measured: local directory,
memfs, lakefs-fuse embedded / over peers / over Raft, SeaweedFS, JuiceFS).

May import: the standard library only. Imported by every script here, memfs.py included.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = MiB                      # I/O buffer of the big-file loops
POOL = 32 * MiB                  # random bytes every payload is cut from
STAMP = struct.Struct("<8sQ")    # 16-byte header: magic + block/file index (makes every block unique)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
T0 = time.monotonic()
_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(Exception):
    """A failure the script explains in one line (no traceback)."""


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ units and printing

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


def cell(v: float | None, fmt: str = "{:,.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def ratio(x: float | None, y: float | None, suffix: str = "", bold: bool = True) -> str:
    """x / y to two decimals (bold, as the reports lead with it), '-' when either is missing."""
    if not x or not y:
        return "-"
    return f"**{x / y:.2f}**{suffix}" if bold else f"{x / y:.2f}{suffix}"


def split_opts(values: list[str]) -> list[str]:
    return [x for v in values for x in shlex.split(v)]


# ------------------------------------------------------------------ the payload

class Payload:
    """The bytes a benchmark writes and verifies, the same for every system it measures."""

    def __init__(self, block_magic: bytes, file_magic: bytes | None = None):
        self.block_magic, self.file_magic = block_magic, file_magic or block_magic
        self.pool = os.urandom(POOL)
        # 32 distinct 1 MiB blocks; block i is blocks[i % 32] with a 16-byte stamp written in place.
        self.blocks = [bytearray(self.pool[j * BLOCK:(j + 1) * BLOCK]) for j in range(POOL // BLOCK)]

    def write_big(self, path: Path, nblocks: int) -> None:
        """1 MiB write()s, then fsync."""
        blocks = self.blocks
        with open(path, "wb", buffering=0) as f:
            for i in range(nblocks):
                buf = blocks[i % len(blocks)]
                STAMP.pack_into(buf, 0, self.block_magic, i)
                view = memoryview(buf)
                while view:
                    view = view[f.write(view):]
            os.fsync(f.fileno())

    def read_big(self, path: Path, nblocks: int, *, full: bool = True) -> None:
        """Sequential 1 MiB reads; every byte compared with what was written (``full``), or the
        stamp and a 64-byte sample of each block."""
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
                if full:
                    STAMP.pack_into(ref, 0, self.block_magic, i)
                    if buf != ref:
                        bad = next(k for k in range(BLOCK) if buf[k] != ref[k])
                        raise BenchError(f"{path}: WRONG DATA in block {i} (first difference at byte {bad})")
                else:
                    j = 16 + (i * 4099) % (BLOCK - 80)
                    if STAMP.unpack_from(buf)[1] != i or buf[j:j + 64] != ref[j:j + 64]:
                        raise BenchError(f"{path}: wrong data in block {i}")
                i += 1
        if i != nblocks:
            raise BenchError(f"{path}: read {i} blocks, expected {nblocks}")

    def file_parts(self, i: int, size: int) -> list:
        off = (i * 104729) % (POOL - size)
        return [STAMP.pack(self.file_magic, i), memoryview(self.pool)[off:off + size - STAMP.size]]

    def write_files(self, root: Path, rels: list[str], size: int) -> None:
        """File i (``rels[i]``) written with one writev (open / write / close each)."""
        for d in sorted({rel.rsplit("/", 1)[0] for rel in rels if "/" in rel}):
            (root / d).mkdir(parents=True, exist_ok=True)
        for i, rel in enumerate(rels):
            parts = self.file_parts(i, size)
            fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                done = os.writev(fd, parts)
                if done != size:  # finish a short write
                    rest = memoryview(b"".join(bytes(x) for x in parts))[done:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
            finally:
                os.close(fd)

    def check_file(self, i: int, size: int, data: bytes | bytearray, got: int, name: str) -> None:
        """File i as read (``got`` bytes into ``data``): its size, stamp and a 64-byte sample from
        its middle; BenchError naming ``name`` otherwise."""
        j = STAMP.size + (size - STAMP.size) // 2
        ref = self.file_parts(i, size)[1]
        if got != size or STAMP.unpack_from(data)[1] != i or data[j:j + 64] != ref[j - 16:j + 48]:
            raise BenchError(f"{name}: wrong size or data ({got} bytes)")

    def read_file_into(self, path: Path, i: int, size: int, buf: bytearray) -> None:
        """File i read whole (os.open + readv into ``buf``, one byte longer than the file, +
        close) and checked."""
        view = memoryview(buf)
        fd = os.open(path, os.O_RDONLY)
        try:
            got = 0
            while n := os.readv(fd, [view[got:]]):
                got += n
        finally:
            os.close(fd)
        self.check_file(i, size, buf, got, str(path))

    def read_files(self, root: Path, rels: list[str], size: int, seed: int) -> None:
        """Every file read whole (os.open + readv into one buffer + close) in a shuffled order."""
        order = list(range(len(rels)))
        random.Random(seed).shuffle(order)
        buf = bytearray(size + 1)
        for i in order:
            self.read_file_into(root / rels[i], i, size, buf)


def tree_paths(files: int, classes: int) -> list[str]:
    """File i lives in class directory i % classes, named as an ImageFolder would list it."""
    return [f"class_{i % classes:02d}/{i:06d}.bin" for i in range(files)]


# ------------------------------------------------------------------ this machine

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


def memtotal() -> str:
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        return human(kb * KiB)
    except (OSError, StopIteration, ValueError):
        return "?"


def mountinfo() -> dict[str, tuple[str, str]]:
    """mount point -> (filesystem type, source)."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, r = left.split(), right.split()
            if len(parts) > 4:
                out[parts[4].replace("\\040", " ")] = (r[0] if r else "?", r[1] if len(r) > 1 else "?")
    return out


def is_mountpoint(path: Path) -> bool:
    return str(Path(path).resolve()) in mountinfo()


def mounted_under(root: Path) -> list[str]:
    return [m for m in mountinfo() if m.startswith(str(root))]


def fs_of(path: Path) -> tuple[str, str, str]:
    """(mount point, fstype, source) of the filesystem holding ``path``."""
    p, best = str(Path(path).resolve()), ("/", "?", "?")
    for mnt, (fstype, source) in mountinfo().items():
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, fstype, source)
    return best


def lazy_unmount(mnt: Path) -> None:
    if is_mountpoint(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)


def close_fds_under(mnt: Path) -> None:
    """An interrupt between open() and close() leaks a descriptor and keeps the mount busy."""
    prefix = str(mnt) + "/"
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                os.close(int(fd))


def bdi_read_ahead(mnt: Path) -> Path:
    dev = os.stat(mnt).st_dev
    return Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")


def read_ahead_of(mnt: Path) -> int | None:
    try:
        return int(bdi_read_ahead(mnt).read_text())
    except (OSError, ValueError):
        return None


class DiskStats:
    """Counters of the block device behind a path, from /proc/diskstats (device-wide; None if unknown)."""

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
        with contextlib.suppress(OSError), open("/proc/diskstats") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 14:
                    out[parts[2]] = [int(x) for x in parts[3:]]
        return out

    def sample(self) -> list[int] | None:
        return self._read().get(self.name) if self.name else None

    @staticmethod
    def delta(a: list[int] | None, b: list[int] | None, wall: float) -> tuple:
        """(busy fraction, read MB, written MB, flushes or None)."""
        if not a or not b:
            return None, None, None, None
        busy = (b[9] - a[9]) / 1000.0 / wall if wall > 0 else None
        flushes = (b[15] - a[15]) if len(a) > 15 and len(b) > 15 else None
        return busy, (b[2] - a[2]) * 512 / 1e6, (b[6] - a[6]) * 512 / 1e6, flushes


class Caches:
    """drop_caches (3: page cache + dentries/inodes; 2: dentries/inodes only); warns once without root."""

    def __init__(self, level: int = 3, consequence: str = "'cold' reads may be served from the page cache"):
        self.level, self.consequence = level, consequence
        self.ok: bool | None = None

    def drop(self) -> bool:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write(f"{self.level}\n")
            if self.ok is None:
                self.ok = True
            return True
        except OSError as exc:
            if self.ok is not False:
                log(f"WARNING: cannot drop caches ({exc.strerror}); {self.consequence} (run as root)")
            self.ok = False
            return False

    def status(self) -> str:
        return "drop_caches OK" if self.ok else "drop_caches NOT available -- cold reads may be warm"


def drop_all_caches() -> None:
    """sync + drop every cache; for scripts that require root (fails loudly otherwise)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# ------------------------------------------------------------------ processes

def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, user+sys CPU seconds) of every live (non-zombie) process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def descendants() -> dict[int, float]:
    """Live descendants of this process -> their CPU seconds (daemonized mounts are reparented to
    us, a child subreaper, so they count too)."""
    table = proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, list(kids.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1]
        todo += kids.get(pid, [])
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
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


def reap_orphans() -> None:
    """Collect whatever exited after being reparented to us."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


class Daemon:
    """One process's CPU time: live from /proc, final from wait4() once reaped. ``sampled``: /proc
    only -- wait4() rusage includes the children a process reaped (juicefs's supervisor reaps its
    mount process), which are sampled on their own; misses the CPU spent after the last sample."""

    def __init__(self, pid: int, *, sampled: bool = False):
        self.pid = pid
        self.sampled = sampled
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
            return self.last if self.sampled else self.rusage.ru_utime + self.rusage.ru_stime
        v = self._stat_cpu(f"/proc/{self.pid}/stat")
        self.last = self.last if v is None else v
        self.main_cpu()
        return self.last

    def main_cpu(self) -> float:
        """The main thread only (for a lakefs daemon: the trio loop -- FUSE dispatch and Python logic;
        EC coding, checksums and shard I/O run on worker threads). Last sample once exited."""
        if self.rusage is None:
            v = self._stat_cpu(f"/proc/{self.pid}/task/{self.pid}/stat")
            self.last_main = self.last_main if v is None else v
        return self.last_main

    def reap(self, timeout: float) -> bool:
        """Wait for the process to exit (collect its rusage if it is our child). True if gone."""
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

    def exit_code(self) -> int | None:
        return None if self.status is None else os.waitstatus_to_exitcode(self.status)

    def stop(self, name: str, sig: int = signal.SIGTERM, wait: float = 20.0) -> bool:
        """SIGCONT (a stopped process would not act on ``sig``), ``sig``, wait, SIGKILL, wait.
        True once the process is gone."""
        with contextlib.suppress(ProcessLookupError):
            if self.alive():
                os.kill(self.pid, signal.SIGCONT)
        for s, w in ((sig, wait), (signal.SIGKILL, 10.0)):
            if not self.alive():
                return True
            if s == signal.SIGKILL:
                log(f"{name} (pid {self.pid}) still running after {signal.Signals(sig).name}: SIGKILL")
            try:
                os.kill(self.pid, s)
            except ProcessLookupError:
                return True
            self.reap(w)
        return not self.alive()


class Child:
    """A long-running process of ours: own session (Ctrl-C reaches only this script, which then
    stops it in order), parent-death signal, log file, CPU and exit status via ``Daemon``."""

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
        self.d = Daemon(self.pid)  # never proc.wait()/poll(): Daemon.reap collects the rusage with wait4

    def alive(self) -> bool:
        return self.d.alive()

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, wait: float = 20.0) -> bool:
        return self.d.stop(self.name, sig, wait)

    def tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def log_counts(text: str) -> tuple[int, int]:
    """(WARNING lines, ERROR or CRITICAL lines) of a daemon log."""
    lines = text.splitlines()
    return (sum(" WARNING " in ln for ln in lines),
            sum(" ERROR " in ln or " CRITICAL " in ln for ln in lines))


def noproxy_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


# ------------------------------------------------------------------ ports

def port_free(port: int, *, reuse: bool = False) -> bool:
    """Nothing bound on 127.0.0.1:port nor on the wildcard; ``reuse``: as a server setting
    SO_REUSEADDR (as Go does) sees it, TIME_WAIT not counting."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


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



# ------------------------------------------------------------------ tools

def find_cli() -> list[str]:
    """The lakefs-fuse command: the venv's entry point, else ``python -m lakefs_fuse.cli``."""
    exe = VENV_BIN / "lakefs-fuse"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lakefs_fuse.cli"]


def find_tool(name: str) -> str | None:
    exe = VENV_BIN / name
    return str(exe) if exe.exists() else shutil.which(name)


def run_tool(argv: list[str], what: str, *, env: dict | None = None, timeout: float = 120,
             ok: tuple[int, ...] = (0,), cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a command to completion; BenchError naming ``what`` on a timeout or an exit status not in ``ok``."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                             stdin=subprocess.DEVNULL, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{what}` did not finish within {timeout:.0f}s") from None
    if res.returncode not in ok:
        raise BenchError(f"`{what}` failed ({res.returncode}): {(res.stderr or res.stdout).strip()[-2000:]}")
    return res


def tool_version(argv: list[str], last_word: bool = False) -> str:
    """First line a ``--version``-like command prints ('?' if it cannot run); ``last_word``: its last word."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
        line = (res.stdout.strip() or res.stderr.strip()).splitlines()[0]
        return line.split()[-1] if last_word else line
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


# ----------------------------------------------------------------------------------------------
# Profiles of a phase


class Profiler:
    """py-spy (``record -r 200 -f raw``: Python stacks) or perf (``record -F 999 -g``: native and
    kernel stacks) recording one process until stopped (SIGINT makes either write its output)."""

    def __init__(self, out_dir: Path, pid: int, tool: str, name: str):
        """Record ``pid`` into ``out_dir``/``name``.raw (py-spy) or .perf.data (perf)."""
        if tool == "py-spy":
            self.out = out_dir / f"{name}.raw"
            argv = [str(VENV_BIN / "py-spy"), "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(self.out)]
        else:
            self.out = out_dir / f"{name}.perf.data"
            argv = ["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", str(self.out)]
        self.child = Child(tool, argv, self.out.with_suffix(".log"), deathsig="INT")
        time.sleep(1.0)  # attached before the phase starts (no readiness signal to wait for)

    def stop(self) -> None:
        self.child.send(signal.SIGINT)
        if not self.child.d.reap(120):
            self.child.stop(signal.SIGKILL, 10)
            raise BenchError(f"{self.child.name} did not exit after SIGINT")


def perf_top(data: Path, n: int = 30) -> list[str]:
    """The top ``n`` symbols (self) of a perf recording, kernel and native together."""
    res = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio",
                          "--percent-limit", "0.5", "-g", "none"], capture_output=True, text=True, timeout=300)
    rows = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return rows[:n] or [res.stderr.strip()[:500]]


_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """'fn (path/to/lakefs_fuse/x.py:12)' -> 'fn (lakefs_fuse/x.py)' (summed by function)."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group(2)
    for marker in ("lakefs_fuse/", "site-packages/", "lib/python"):
        k = path.find(marker)
        if k >= 0:
            path = path[k + (0 if marker == "lakefs_fuse/" else len(marker)):]
            break
    return f"{m.group(1)} ({path.lstrip('/')})"


def profile_top(raw: Path, n: int = 30) -> list[str]:
    """The top ``n`` functions of a py-spy raw (folded) file, by self and by inclusive samples."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        if frames[-1].startswith("WorkerThread._work "):
            continue  # an idle trio worker thread waiting for a job (py-spy cannot tell it is idle)
        total += c
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples (daemon threads not idle; idle trio workers left out)", "", "self %  function"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in self_c.most_common(n)]
    out += ["", "incl %  function"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in incl.most_common(n)]
    return out
