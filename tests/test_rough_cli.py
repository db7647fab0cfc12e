"""Rough edges where a user, a full disk or a slow server meets the data (issue 11, points 14-18, 21).

Each test names the point it covers. The cluster.sh tests start real peer and metadata servers on
loopback ports picked here from free ones, and always stop them (and anything left under their
directory) in ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import stat as st
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, _alive, cli, is_mountpoint, needs_fuse, registered_pid, take_down, wait_for

CLUSTER = REPO / "scripts" / "cluster.sh"


def one_line_error(res, *needles):
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert lines[0].strip() != "lakefs-fuse:"


# ------------------------------------------------------------------ scripts/cluster.sh (point 14)


def free_base(offsets) -> int:
    """A base port such that base+offset is free on 127.0.0.1 for every offset (below the
    ephemeral range, so no outgoing connection takes one between here and the servers' bind)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000)
        socks = []
        try:
            for off in offsets:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range found")


def cluster(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def processes_under(directory: Path) -> list[int]:
    """Pids of processes whose command line names ``directory`` (servers this test started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def stop_cluster(directory: Path, env: dict) -> None:
    """Teardown: the script's stop, then SIGKILL of anything it left (by pid)."""
    if directory.exists():
        cluster("stop", str(directory), env=env, timeout=90)
    for pid in processes_under(directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not [p for p in processes_under(directory) if _alive(p)], 30, f"servers under {directory} to exit")


def pid_files(directory: Path) -> dict[str, int]:
    return {f.stem: int(f.read_text()) for f in directory.glob("*.pid")}


@pytest.mark.timeout(200)
def test_cluster_refuses_taken_ports_and_checks_servers_before_format(tmp_path):
    base = free_base(range(3))
    env = {"LAKEFS_FUSE_RUNTIME": str(tmp_path / "run")}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    try:
        res = cluster("start", "--port", str(base), "3", str(a), env=env)
        assert res.returncode == 0, res.stderr
        assert "cluster started" in res.stdout
        a_pids = pid_files(a)
        # A second cluster on the same ports must not start, and must not format onto a's servers.
        res = cluster("start", "--port", str(base), "3", str(b), env=env)
        assert res.returncode != 0 and "cluster started" not in res.stdout
        assert f"127.0.0.1:{base}" in res.stderr and "in use" in res.stderr, res.stderr
        assert not (b / "lake" / "lake.json").exists()
        assert not [p for p in processes_under(b) if _alive(p)]
        assert pid_files(a) == a_pids and all(_alive(p) for p in a_pids.values())
        # A port taken by something else in the middle of the range: refused before anything starts.
        base2 = free_base(range(3))
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", base2 + 1))
            s.listen()
            res = cluster("start", "--port", str(base2), "3", str(c), env=env)
        assert res.returncode != 0 and "cluster started" not in res.stdout
        assert f"127.0.0.1:{base2 + 1}" in res.stderr, res.stderr
        assert not (c / "lake" / "lake.json").exists()
        assert not [p for p in processes_under(c) if _alive(p)]
    finally:
        for d in (a, b, c):
            stop_cluster(d, env)


@pytest.mark.timeout(200)
def test_cluster_restart_of_a_partly_running_cluster_status_and_stop(tmp_path):
    base = free_base(range(3))
    env = {"LAKEFS_FUSE_RUNTIME": str(tmp_path / "run")}
    d = tmp_path / "c"
    try:
        res = cluster("start", "--port", str(base), "3", str(d), env=env)
        assert res.returncode == 0, res.stderr
        assert cluster("status", str(d), env=env).returncode == 0
        before = pid_files(d)
        assert set(before) == {"peer0", "peer1", "peer2"}
        os.kill(before["peer1"], signal.SIGTERM)
        wait_for(lambda: not _alive(before["peer1"]), 30, "peer1 to stop")
        res = cluster("status", str(d), env=env)
        assert res.returncode != 0, res.stdout
        assert "peer1" in res.stderr, res.stderr
        # start again: the running servers keep their pid files; only peer1 is started
        res = cluster("start", "3", str(d), env=env)  # no --port: the cluster's own ports are remembered
        assert res.returncode == 0, res.stderr
        after = pid_files(d)
        assert after["peer0"] == before["peer0"] and after["peer2"] == before["peer2"]
        assert after["peer1"] != before["peer1"] and _alive(after["peer1"])
        assert cluster("status", str(d), env=env).returncode == 0
        res = cluster("stop", str(d), env=env)
        assert res.returncode == 0, res.stderr
        assert not [p for p in after.values() if _alive(p)]  # stop waits for them
        assert cluster("status", str(d), env=env).returncode != 0
    finally:
        stop_cluster(d, env)


@pytest.mark.timeout(200)
def test_cluster_secret_is_private_from_the_start_and_mount_command_is_absolute(tmp_path):
    base = free_base(range(3))
    # A chmod that does nothing: the secret must be created private, not made private afterwards.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "chmod").write_text("#!/bin/sh\nexit 0\n")
    (fake / "chmod").chmod(0o755)
    env = {"LAKEFS_FUSE_RUNTIME": str(tmp_path / "run"), "PATH": f"{fake}:{os.environ['PATH']}"}
    work = tmp_path / "work"
    work.mkdir()
    d = work / "rel"
    try:
        res = cluster("start", "--port", str(base), "3", "rel", env=env, cwd=work)  # a relative DIR
        assert res.returncode == 0, res.stderr
        assert st.S_IMODE((d / "secret").stat().st_mode) == 0o600
        words = shlex.split((d / "mount-command").read_text())
        assert Path(words[0]).is_absolute() and os.access(words[0], os.X_OK), words
        assert words[1] == "mount" and words[2] == str(d / "mnt")
        assert words[words.index("--data") + 1] == str(d / "lake")
    finally:
        stop_cluster(d, env)


@needs_fuse
@pytest.mark.timeout(300)
def test_cluster_stop_unmounts_every_mount_of_the_lake(tmp_path):
    base = free_base([0, 1, 2, 100, 101, 102])
    env = {"LAKEFS_FUSE_RUNTIME": str(tmp_path / "run")}
    d = tmp_path / "c"
    second = tmp_path / "second"
    second.mkdir()
    mounts = [d / "mnt", second]
    pids: list[int | None] = []
    try:
        res = cluster("start", "--port", str(base), "3", str(d), "3", env=env, timeout=200)
        assert res.returncode == 0, res.stderr
        command = shlex.split((d / "mount-command").read_text())
        for mnt in mounts:
            args = [*command[:2], str(mnt), *command[3:], "--no-disk-cache"]
            res = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
            assert res.returncode == 0, res.stderr
            pids.append(registered_pid(tmp_path / "run", mnt))
        (d / "mnt" / "f").write_bytes(b"x" * 1000)
        res = cluster("stop", str(d), env=env, timeout=200)
        assert res.returncode == 0, res.stderr
        for mnt in mounts:
            assert not is_mountpoint(mnt), f"{mnt} left mounted"
        assert not [p for p in pids if p and _alive(p)]
    finally:
        for mnt, pid in zip(mounts, pids + [None] * len(mounts), strict=False):
            take_down(mnt, pid)
        stop_cluster(d, env)


# ------------------------------------------------------------------ a mount left dead (point 15)


@needs_fuse
@pytest.mark.timeout(180)
def test_mount_over_a_dead_mount_recovers_it(live):
    (live.mnt / "kept").write_bytes(b"before the crash")
    fd = os.open(live.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    pid = live.pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), 30, "daemon to die")
    with pytest.raises(OSError):
        os.listdir(live.mnt)  # Transport endpoint is not connected
    assert is_mountpoint(live.mnt)
    res = cli("mount", str(live.mnt), "--data", str(live.data), env=live.env, timeout=90)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert live.pid() not in (None, pid)
    assert (live.mnt / "kept").read_bytes() == b"before the crash"


# ------------------------------------------------------------------ errors that say nothing (point 16)


def test_stat_and_ls_of_a_missing_path_with_data_name_it(tmp_path):
    lake = tmp_path / "lake"
    cli("format", "--data", str(lake), check=True)
    one_line_error(cli("stat", "nope/x", "--data", str(lake)), "nope/x", "No such file")
    one_line_error(cli("ls", "missing", "--data", str(lake)), "missing", "No such file")
    one_line_error(cli("stat", "nope", "--data", str(lake), "--json"), "nope", "No such file")


@needs_fuse
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
@pytest.mark.timeout(120)
def test_mount_without_access_to_dev_fuse_names_the_cause(tmp_path):
    lake, mnt = tmp_path / "lake", tmp_path / "mnt"
    mnt.mkdir()
    env = {"LAKEFS_FUSE_RUNTIME": str(tmp_path / "run")}
    cli("format", "--data", str(lake), check=True, env=env)
    # In a private mount namespace of its own, /dev/fuse is remounted nodev: opening it fails with
    # EACCES there, as for a user without permission on it. Nothing outside the namespace changes.
    inner = (f"mount --bind /dev/fuse /dev/fuse && mount -o remount,bind,nodev /dev/fuse && "
             f"exec {shlex.quote(sys.executable)} -m lakefs_fuse.cli mount {shlex.quote(str(mnt))} "
             f"--data {shlex.quote(str(lake))}")
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner], capture_output=True,
                         text=True, timeout=90, cwd=REPO, env={**os.environ, **env})
    if "mount --bind" in res.stderr or "unshare:" in res.stderr:
        pytest.skip(f"cannot set up a private mount namespace: {res.stderr.strip()}")
    one_line_error(res, "/dev/fuse", "Permission denied")
    assert not is_mountpoint(mnt)


# ------------------------------------------------------------------ import keeps symlinks (point 17)


def _lake_entry(data: Path, path: str):
    """(inode, symlink target or None) of a path in an unmounted embedded lake."""
    from lakefs_fuse.lake.lake import Lake
    lake = Lake.open(data, read_only=True)
    try:
        ino = 1
        inode = None
        for part in path.split("/"):
            inode = lake.sm.lookup(ino, part.encode())
            ino = inode.ino
        target = lake.sm.readlink(ino) if st.S_ISLNK(inode.mode) else None
        return inode, target
    finally:
        lake.close()


@pytest.mark.timeout(120)
def test_import_copies_symlinks_and_counts_what_it_skips(tmp_path):
    src = tmp_path / "src"
    (src / "data" / "sub").mkdir(parents=True)
    (src / "data" / "sub" / "a.bin").write_bytes(b"a" * 5000)
    (src / "link-to-file").symlink_to("data/sub/a.bin")
    (src / "link-to-dir").symlink_to("data/sub")
    (src / "data" / "dangling").symlink_to("/nonexistent/target")
    os.mkfifo(src / "data" / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "data" / "sock"))
    lake = tmp_path / "lake"
    cli("format", "--data", str(lake), check=True)
    try:
        res = cli("import", str(src), "in", "--data", str(lake), "--json")
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["files"] == 1 and report["symlinks"] == 3 and report["failed"] == []
        assert sorted(rel for rel, _why in report["not_copied"]) == ["data/pipe", "data/sock"]
        inode, target = _lake_entry(lake, "in/link-to-file")
        assert st.S_ISLNK(inode.mode) and target == b"data/sub/a.bin"
        inode, target = _lake_entry(lake, "in/link-to-dir")  # the link itself, not an empty directory
        assert st.S_ISLNK(inode.mode) and target == b"data/sub"
        assert _lake_entry(lake, "in/data/dangling")[1] == b"/nonexistent/target"
        # A rerun finds the links there; the text summary counts what was not copied.
        res = cli("import", str(src), "in", "--data", str(lake))
        assert res.returncode == 0, res.stderr
        assert "2 not copied" in res.stdout, res.stdout
        assert "data/pipe" in res.stderr and "data/sock" in res.stderr
        res = cli("import", str(src), "in", "--data", str(lake), "--json")
        assert json.loads(res.stdout)["skipped"] == 4  # one file and three links already there
    finally:
        sock.close()


# ------------------------------------------------------------------ environment variables (point 18)


def test_environment_variables_are_named_after_the_options_and_unknown_ones_warned(tmp_path):
    lake = tmp_path / "lake"
    cli("format", "--data", str(lake), check=True)
    nowhere = {"LAKEFS_FUSE_DATA": str(tmp_path / "no-lake-here")}
    res = cli("status", env={**nowhere, "LAKEFS_FUSE_STATUS_DATA": str(lake), "LAKEFS_FUSE_STATUS_JSON": "1"})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ec"] == "4+2"
    assert res.stderr == ""
    res = cli("ls", "/", env={"LAKEFS_FUSE_LS_DATA": str(lake), "LAKEFS_FUSE_LS_JSON": "true"})
    assert res.returncode == 0 and json.loads(res.stdout) == [], res.stderr
    res = cli("info", "/", env={"LAKEFS_FUSE_INFO_DATA": str(lake), "LAKEFS_FUSE_INFO_JSON": "1"})
    assert res.returncode == 0 and json.loads(res.stdout)["type"] == "dir", res.stderr
    # A misspelt or old-style name is one warning line, and the command still runs.
    res = cli("status", "--data", str(lake), env={"LAKEFS_FUSE_STATUS_DATA_DIR": str(lake)})
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "LAKEFS_FUSE_STATUS_DATA_DIR" in lines[0], res.stderr
    assert lines[0].count("LAKEFS_FUSE_STATUS_DATA") == 2, lines[0]  # and the name that works
    # The variables the code reads itself are known.
    known = {"LAKEFS_FUSE_LOG": "INFO", "LAKEFS_FUSE_STRICT": "0", "LAKEFS_FUSE_RUNTIME": str(tmp_path / "run"),
             "LAKEFS_FUSE_CONFIG": "", "LAKEFS_FUSE_MOUNT_CACHE_SIZE": "1G"}
    res = cli("status", "--data", str(lake), env=known)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    example = cli("config", "example", check=True).stdout
    assert "# env: LAKEFS_FUSE_STATUS_DATA\n" in example and "# env: LAKEFS_FUSE_STATUS_JSON\n" in example
    assert "_DATA_DIR" not in example and "_AS_JSON" not in example


# ------------------------------------------------------------------ stat times, setup output (point 21)


def test_stat_prints_times_as_dates_and_keeps_nanoseconds_in_json(tmp_path):
    lake = tmp_path / "lake"
    cli("format", "--data", str(lake), check=True)
    text = cli("stat", "/", "--data", str(lake), check=True).stdout
    for name in ("atime", "mtime", "ctime"):
        assert re.search(rf"^\s*{name}: \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{9}} [+-]\d{{4}}$", text, re.M), text
    info = json.loads(cli("stat", "/", "--data", str(lake), "--json", check=True).stdout)
    assert all(isinstance(info[f"{n}_ns"], int) and info[f"{n}_ns"] > 10**18 for n in ("atime", "mtime", "ctime"))


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="setup.sh is for Debian")
@pytest.mark.timeout(60)
def test_setup_says_what_it_does_before_the_long_pip_install(tmp_path):
    for pkg in ("fuse3", "libfuse3-dev", "pkg-config"):
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in res.stdout:
            pytest.skip(f"{pkg} is not installed: setup.sh would apt-get it")
    # A copy of the script in a tree whose .venv/bin/python only records what it is asked to do.
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "pyproject.toml").write_text("")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text('#!/bin/sh\necho "python $*" >> "$(dirname "$0")/calls"\n')
    (venv_bin / "python").chmod(0o755)
    res = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                         timeout=50, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "-m pip install" in (venv_bin / "calls").read_text()
    said = res.stdout + res.stderr
    assert re.search(r"setup: installing Python packages into .*\.venv", said), said


def test_servers_on_a_port_in_use_say_so_in_one_line(tmp_path):
    """A metadata or peer server whose port is taken fails with one line, not the traceback of the
    exception group its nurseries wrap the OSError in."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        res = cli("meta", "serve", "--id", "1", "--data", str(tmp_path / "m"), "--listen", listen,
                  "--peers", f"1={listen}", "--secret-file", str(secret), timeout=60)
        one_line_error(res, "cannot listen on", listen, "in use")
        res = cli("peer", "serve", "--data", str(tmp_path / "p"), "--listen", listen,
                  "--secret-file", str(secret), timeout=60)
        one_line_error(res, "cannot listen on", listen, "in use")
