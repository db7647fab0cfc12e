"""lakefs-fuse as the benchmarks set it up: a lake driven through the CLI, its peer and metadata servers.

- ``Lake``: one lake under a directory (data/, mnt/, run/), formatted, mounted and unmounted
  through the CLI; its mount daemons tracked as ``Daemon``s from the runtime directory's
  registrations (so their CPU and peak RSS are known); a watchdog abort (SIGUSR1: thread stacks
  into the mount log; SIGKILL; lazy unmount) and a forceful, idempotent teardown.
- ``PeerCluster``: N ``lakefs-fuse peer serve`` processes on loopback (port 0, read back from their
  logs; optional zones z0..z2; one cluster secret), for a lake formatted over them.
- ``MetaGroup``: N ``lakefs-fuse meta serve`` processes on loopback forming one Raft group, ready
  once every member listens and ``meta status`` reports a leader.

May import: common.py and the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

from common import (
    BenchError,
    Child,
    Daemon,
    close_fds_under,
    free_ports,
    is_mountpoint,
    log,
    pid_alive,
    port_open,
    read_from,
    run_tool,
)


def wait_until(ready, child: Child, what: str, seconds: float, step: float = 0.05) -> None:
    """Poll ``ready()`` until true; BenchError (with the child's log tail) if it exits or time runs out."""
    deadline = time.monotonic() + seconds
    while not ready():
        if not child.alive():
            raise BenchError(f"{what} exited:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after {seconds:.0f}s:\n{child.tail()}")
        time.sleep(step)


class Lake:
    """A lake under ``root`` (data/, mnt/, run/ -- the runtime directory where mounts register),
    driven through the CLI. ``embedded``: its metadata lives in data/ (``--data``); otherwise the
    format and mount arguments say where (``--meta``)."""

    def __init__(self, root: Path, cli: list[str], format_args: list[str], mount_args: list[str], *,
                 embedded: bool = True, env: dict | None = None):
        self.root = root
        self.data = root / "data"
        self.mnt = root / "mnt"
        self.runtime = root / "run"
        self.cli_cmd = cli
        self.format_args = format_args
        self.mount_args = mount_args
        self.embedded = embedded
        self.env = {**(env or os.environ), "LAKEFS_FUSE_RUNTIME": str(self.runtime)}
        if embedded:
            self.env["LAKEFS_FUSE_DATA"] = str(self.data)
        self.daemons: list[Daemon] = []
        self.current: Daemon | None = None
        self.format_msg = ""

    @property
    def log_path(self) -> Path:
        if self.embedded:
            return self.data / "mount.log"
        return self.runtime / ("mount-" + str(self.mnt.resolve()).strip("/").replace("/", "_") + ".log")

    def cli(self, *args: str, timeout: float = 120) -> str:
        return run_tool([*self.cli_cmd, *args], "lakefs-fuse " + " ".join(args), env=self.env,
                        timeout=timeout).stdout.strip()

    def _where(self) -> list[str]:
        return ["--data", str(self.data)] if self.embedded else []

    def format(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.format_msg = self.cli("format", *self._where(), *self.format_args)

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

    def _track(self) -> None:
        pid = self._registered_pid()
        if pid and not any(d.pid == pid for d in self.daemons):
            self.current = Daemon(pid)
            self.daemons.append(self.current)

    def mount(self) -> Daemon:
        if is_mountpoint(self.mnt):
            raise BenchError(f"{self.mnt} is already mounted")
        try:
            self.cli("mount", str(self.mnt), *self._where(), *self.mount_args, timeout=120)
        finally:  # even if the CLI failed, a daemon may be running: track it for teardown
            self._track()
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

    def live(self) -> list[Daemon]:
        return [d for d in self.daemons if d.rusage is None and pid_alive(d.pid)]

    def abort(self, why: str) -> None:
        """From the watchdog: dump daemon stacks into the log, then kill the connection."""
        live = self.live()
        for d in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGUSR1)  # faulthandler: all thread stacks -> the mount log
        time.sleep(2)
        log(f"aborting the mount ({why}): SIGKILL daemon(s) {[d.pid for d in live]}, lazy unmount")
        for d in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(d.pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30)

    def teardown(self) -> list[str]:
        """Lazy unmount, SIGTERM, SIGKILL; returns problems left over (empty when clean)."""
        problems = []
        close_fds_under(self.mnt)
        if is_mountpoint(self.mnt):
            try:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"fusermount3 -u -z failed: {exc}")
        self._track()
        for d in self.daemons:
            d.reap(10)  # after the lazy unmount, give a live daemon a moment to flush and exit by itself
            if not d.stop("mount daemon"):
                problems.append(f"daemon {d.pid} survived SIGKILL")
        if is_mountpoint(self.mnt):
            problems.append(f"{self.mnt} is still mounted")
        self.current = None
        return problems


class Peer:
    """One ``lakefs-fuse peer serve`` on 127.0.0.1, port 0 (the port is read from its log)."""

    PATTERN = re.compile(r"serving .* on 127\.0\.0\.1:(\d+)")

    def __init__(self, root: Path, i: int, secret: Path, cli: list[str], zone: str | None, env: dict | None):
        self.i = i
        self.name = f"peer{i}"
        self.zone = zone
        self.dir = root / self.name
        self.log = root / f"{self.name}.log"
        self.secret = secret
        self.cli = cli
        self.env = env
        self.port = 0
        self.child: Child | None = None

    def start(self) -> None:
        zone = ["--zone", self.zone] if self.zone else []
        self.child = Child(self.name, [*self.cli, "peer", "serve", "--data", str(self.dir), "--listen",
                                       "127.0.0.1:0", *zone, "--secret-file", str(self.secret)],
                           self.log, deathsig="TERM", env=self.env)

    def bound(self) -> bool:
        found = self.PATTERN.findall(read_from(self.log, 0))
        if found:
            self.port = int(found[-1])
        return bool(found)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" + (f"@{self.zone}" if self.zone else "")

    def kill9(self) -> None:
        if self.child and self.child.alive():
            self.child.send(signal.SIGKILL)
            self.child.d.reap(10)


class PeerCluster:
    """``n`` peer servers under ``root``/peers sharing ``root``/secret; zones z0, z1, z2 (peer i in
    z{i % 3}) when ``zones``. ``start`` returns once every peer listens."""

    def __init__(self, root: Path, cli: list[str], n: int, *, zones: bool = True, env: dict | None = None):
        self.root = root
        self.secret = root / "secret"
        self.peers = [Peer(root / "peers", i, self.secret, cli, f"z{i % 3}" if zones else None, env)
                      for i in range(n)]

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        for p in self.peers:
            p.start()
        deadline = time.monotonic() + 60
        for p in self.peers:
            wait_until(p.bound, p.child, p.name, max(0.0, deadline - time.monotonic()))

    def net_args(self) -> list[str]:
        return [x for p in self.peers for x in ("--net-peer", p.address)]

    def children(self) -> list[Child]:
        return [p.child for p in self.peers if p.child]

    def teardown(self) -> list[str]:
        return [f"{c.name} (pid {c.pid}) survived SIGKILL" for c in self.children() if not c.stop(signal.SIGTERM, 15)]




class MetaGroup:
    """``n`` metadata servers (one Raft group) under ``root``/m1..mN, sharing the cluster ``secret``."""

    def __init__(self, root: Path, cli: list[str], n: int, secret: Path, env: dict):
        self.root, self.cli, self.n, self.secret, self.env = root, cli, n, secret, env
        self.servers: list[Child] = []
        self.ports: list[int] = []

    @property
    def addrs(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def where(self) -> list[str]:
        """The format / mount arguments that name this group."""
        return ["--meta", ",".join(self.addrs), "--secret-file", str(self.secret)]

    def start_servers(self) -> list[Child]:
        self.ports = free_ports(self.n)
        members = ",".join(f"{i}={a}" for i, a in enumerate(self.addrs, 1))
        for i, addr in enumerate(self.addrs, 1):
            self.servers.append(Child(f"meta server {i}", [
                *self.cli, "meta", "serve", "--id", str(i), "--data", str(self.root / f"m{i}"), "--listen", addr,
                "--peers", members, "--secret-file", str(self.secret)], self.root / f"m{i}.log", env=self.env))
        return self.servers

    def status(self, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """``meta status`` (exit 1-3 -- no quorum, no leader yet -- are answers, not failures)."""
        return run_tool([*self.cli, "meta", "status", *self.where(), *extra], "lakefs-fuse meta status",
                        env=self.env, timeout=timeout, ok=(0, 1, 2, 3))

    def status_text(self, timeout: float = 30) -> str:
        try:
            return self.status(timeout=timeout).stdout.strip()
        except BenchError as exc:
            return str(exc)

    def wait_leader(self) -> float:
        """Wait until every member listens, then until there is a leader; seconds from listening to leader."""
        for s, port in zip(self.servers, self.ports, strict=True):
            wait_until(lambda port=port: port_open(port), s, s.name, 60)
        t_listen = time.monotonic()
        while True:
            res = self.status()
            if res.returncode == 0:
                return time.monotonic() - t_listen
            dead = [s for s in self.servers if not s.alive()]
            if dead:
                raise BenchError(f"{dead[0].name} exited ({dead[0].d.exit_code()}):\n{dead[0].tail()}")
            if time.monotonic() > t_listen + 60:
                raise BenchError(f"no Raft leader 60s after all meta servers listened; last `meta status` "
                                 f"({res.returncode}):\n{res.stdout}{res.stderr}")

    @staticmethod
    def leader(status_text: str) -> str | None:
        """The leader's member id in a ``meta status`` table."""
        for line in status_text.splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "leader":
                return parts[0]
        return None

    def commit_index(self) -> int | None:
        """The leader's Raft commit index (None if unknown)."""
        try:
            rows = json.loads(self.status("--json").stdout)
        except (BenchError, ValueError):
            return None
        return next((r["commit_index"] for r in rows if r.get("role") == "leader"), None)

    def teardown(self) -> list[str]:
        problems = []
        for s in self.servers:
            if not s.alive() and s.d.exit_code() not in (0, -15):
                problems.append(f"{s.name} had exited with status {s.d.exit_code()} before teardown")
            if not s.stop(wait=15):
                problems.append(f"{s.name} (pid {s.pid}) survived SIGKILL")
        return problems
