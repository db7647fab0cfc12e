"""Shared fixtures: live mounts in subprocesses that always come down.

A :class:`LiveLake` mounts through the real CLI (``lakefs-fuse mount``, which daemonizes),
waits for the mount with a deadline, and is torn down in a ``finally``: lazy unmount, then
SIGTERM, then SIGKILL of the daemon. Live tests skip when /dev/fuse or root is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "lakefs_fuse.cli"]

fuse_ok = os.path.exists("/dev/fuse") and os.geteuid() == 0 and bool(
    subprocess.run(["which", "fusermount3"], capture_output=True).stdout)
needs_fuse = pytest.mark.skipif(not fuse_ok, reason="needs /dev/fuse, fusermount3 and root")


def wait_for(cond, timeout: float, what: str, interval: float = 0.02):
    """Poll ``cond`` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def write_synced_file(path, data: bytes) -> None:
    """Write one file alone and fsync it (so it gets chunks of its own, committed at once)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def is_mountpoint(path: Path) -> bool:
    p = str(Path(path).resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == p for line in f if len(line.split()) > 1)


def cli(*args: str, env: dict | None = None, timeout: float = 120, check: bool = False,
        input: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})}, cwd=REPO, input=input)
    if check and res.returncode != 0:
        raise AssertionError(f"lakefs-fuse {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


class LiveLake:
    def __init__(self, root: Path, *, format_args: tuple[str, ...] = ()):
        self.root = root
        self.data = root / "data"
        self.mnt = root / "mnt"
        self.runtime = root / "run"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.env = {"LAKEFS_FUSE_RUNTIME": str(self.runtime), "LAKEFS_FUSE_DATA": str(self.data)}
        if format_args is not None:
            cli("format", "--data", str(self.data), *format_args, env=self.env, check=True)

    def pid(self) -> int | None:
        return registered_pid(self.runtime, self.mnt)

    def mount(self, *args: str) -> None:
        cli("mount", str(self.mnt), "--data", str(self.data), *args, env=self.env, check=True, timeout=90)
        assert is_mountpoint(self.mnt)

    def umount(self) -> None:
        cli("umount", str(self.mnt), env=self.env, check=True, timeout=90)
        assert not is_mountpoint(self.mnt)

    def remount(self) -> None:
        self.umount()
        self.mount()

    def kill9(self) -> None:
        """Crash the daemon (no flush), then clear the dead mount."""
        pid = self.pid()
        assert pid, "no daemon registered"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(pid), 30, "daemon to die")
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        wait_for(lambda: not is_mountpoint(self.mnt), 30, "dead mount to go away")
        for f in self.runtime.glob("*.json"):
            f.unlink()

    def teardown(self) -> None:
        take_down(self.mnt, self.pid())

    def log(self) -> str:
        try:
            return (self.data / "mount.log").read_text()[-6000:]
        except OSError:
            return ""


def registered_pid(runtime: Path, mnt: Path) -> int | None:
    """The pid of the daemon serving ``mnt``, from the mount registry in ``runtime``."""
    for f in Path(runtime).glob("*.json"):
        try:
            info = json.loads(f.read_text())
        except ValueError:
            continue
        if info.get("mountpoint") == str(Path(mnt).resolve()):
            return info["pid"]
    return None


def take_down(mnt: Path, pid: int | None) -> None:
    """Teardown of a live mount: lazy unmount, then SIGTERM, then SIGKILL of its daemon."""
    if is_mountpoint(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
    if pid:
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            if not _alive(pid):
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait  # polling a deadline for the daemon to exit
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def live(tmp_path):
    """A formatted embedded lake (default 4+2 on 6 peers), mounted; always torn down."""
    lake = LiveLake(tmp_path)
    try:
        lake.mount()
        yield lake
    finally:
        lake.teardown()
        if is_mountpoint(lake.mnt):
            pytest.fail("mount left behind")


HELPER = Path("/sbin/mount.fuse.lakefs")


@pytest.fixture
def helper():
    """The mount helper installed in /sbin for the test (and removed after, unless it was there)."""
    existed = HELPER.exists()
    if existed and "installed by lakefs-fuse" not in HELPER.read_text(errors="replace"):
        pytest.skip(f"{HELPER} belongs to something else")
    cli("install-mount-helper", check=True)
    try:
        yield HELPER
    finally:
        if not existed:
            cli("install-mount-helper", "--remove", check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB file system of its own (tmpfs) for full-disk tests, always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def make_live(tmp_path):
    """Factory for lakes with other format arguments; every one is torn down."""
    made: list[LiveLake] = []

    def make(*format_args: str, mount: bool = True, name: str = "lake") -> LiveLake:
        lake = LiveLake(tmp_path / name, format_args=format_args)
        made.append(lake)
        if mount:
            lake.mount()
        return lake

    try:
        yield make
    finally:
        for lake in made:
            lake.teardown()


def pytest_collection_modifyitems(config, items):
    """Tag every live-mount test with the ``mount`` marker (``-m "not mount"`` skips them)."""
    for item in items:
        live = {"live", "make_live"} & set(getattr(item, "fixturenames", ()))
        fuse_skip = any(m.name == "skipif" and "fuse" in str(m.kwargs.get("reason", ""))
                        for m in item.iter_markers())
        if live or fuse_skip:
            item.add_marker(pytest.mark.mount)


@pytest.fixture
def system_tasks(monkeypatch) -> list[str]:
    """Names of the trio system tasks started while the test runs (there should be none)."""
    spawned: list[str] = []
    real_spawn = trio.lowlevel.spawn_system_task

    def spawn(fn, *args, name=None, **kwargs):
        spawned.append(str(name))
        return real_spawn(fn, *args, name=name, **kwargs)

    monkeypatch.setattr(trio.lowlevel, "spawn_system_task", spawn)
    return spawned
