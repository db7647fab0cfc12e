"""The CLI as a user meets it: one clear line and a non-zero exit for every mistake."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest

from conftest import LiveLake, cli, is_mountpoint, needs_fuse, wait_for


def one_line_error(res, *needles):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_format_errors(tmp_path):
    one_line_error(cli("format", "--data", str(tmp_path / "a"), "--ec", "4x2"), "K+M")
    one_line_error(cli("format", "--data", str(tmp_path / "a"), "--ec", "8+4", "--peer", str(tmp_path / "p1"),
                       "--peer", str(tmp_path / "p2")), "needs at least 12 peers")
    one_line_error(cli("format", "--data", str(tmp_path / "a"), "--chunk-size", "3q"), "not a size")
    assert not (tmp_path / "a").exists()
    cli("format", "--data", str(tmp_path / "a"), check=True)
    one_line_error(cli("format", "--data", str(tmp_path / "a")), "already holds a lake")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    one_line_error(cli("format", "--data", str(tmp_path / "junk")), "not empty")


def test_format_with_peer_dirs_and_offline_ls(tmp_path):
    peers = [str(tmp_path / f"disk{i}") for i in range(5)]
    cli("format", "--data", str(tmp_path / "lake"), "--ec", "3+2", *sum((["--peer", p] for p in peers), []),
        check=True)
    res = cli("ls", "/", "--data", str(tmp_path / "lake"), "--json", check=True)
    assert json.loads(res.stdout) == []


@needs_fuse
@pytest.mark.timeout(180)
def test_mount_errors(tmp_path):
    lake = LiveLake(tmp_path / "l")
    env = lake.env
    one_line_error(cli("mount", str(tmp_path / "nope"), "--data", str(lake.data), env=env), "does not exist")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    one_line_error(cli("mount", str(full), "--data", str(lake.data), env=env), "not empty")
    (tmp_path / "notlake").mkdir()
    one_line_error(cli("mount", str(lake.mnt), "--data", str(tmp_path / "notlake"), env=env), "not a lakefs-fuse lake")
    bad = tmp_path / "bad"
    cli("format", "--data", str(bad), check=True)
    for f in (bad / "meta").iterdir():
        if f.name.startswith(("MANIFEST", "CURRENT")):
            f.write_bytes(b"garbage")
    one_line_error(cli("mount", str(lake.mnt), "--data", str(bad), env=env), "metadata")
    one_line_error(cli("umount", str(lake.mnt), env=env), "not mounted")
    one_line_error(cli("umount", "/proc", env=env), "not a lakefs-fuse mount")
    try:
        lake.mount()
        one_line_error(cli("mount", str(lake.mnt), "--data", str(lake.data), env=env), "already a mountpoint")
        other = tmp_path / "other"
        other.mkdir()
        one_line_error(cli("mount", str(other), "--data", str(lake.data), env=env), "already mounted")
        with open(lake.mnt / "held", "w"):
            one_line_error(cli("umount", str(lake.mnt), "--wait", "0", env=env), "busy")
        lake.umount()
    finally:
        lake.teardown()
    assert not is_mountpoint(lake.mnt)


@needs_fuse
@pytest.mark.timeout(180)
def test_sigterm_flushes_and_unmounts(tmp_path):
    lake = LiveLake(tmp_path / "l")
    try:
        lake.mount()
        data = os.urandom(3_000_000)
        fd = os.open(lake.mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        assert os.write(fd, data) == len(data)
        os.kill(lake.pid(), signal.SIGTERM)  # handle still open: the daemon must flush it
        wait_for(lambda: not is_mountpoint(lake.mnt), 60, "SIGTERM to unmount")
        wait_for(lambda: lake.pid() is None, 60, "daemon to exit")
        with contextlib.suppress(OSError):  # the file system is gone: the close may report that
            os.close(fd)
        lake.mount()
        assert (lake.mnt / "f").read_bytes() == data
        lake.umount()
    except OSError:
        pytest.fail("I/O failed around SIGTERM:\n" + lake.log())
    finally:
        lake.teardown()


@needs_fuse
@pytest.mark.timeout(120)
def test_stat_and_ls_through_the_mount(live):
    (live.mnt / "d").mkdir()
    (live.mnt / "d" / "img.jpg").write_bytes(os.urandom(110_000))
    res = cli("stat", str(live.mnt / "d" / "img.jpg"), "--json", env=live.env, check=True)
    info = json.loads(res.stdout)
    assert info["size"] == 110_000 and info["health"] == "ok"
    shards = info["extents"][0]["shards"]
    assert info["extents"][0]["ec"] == "2+2" and len({s["peer"] for s in shards}) == 4
    res = cli("ls", "-l", str(live.mnt / "d"), env=live.env, check=True)
    assert "img.jpg" in res.stdout and "health=ok" in res.stdout
    one_line_error(cli("stat", "/etc/hostname", env=live.env), "not inside a lakefs-fuse mount")
    one_line_error(cli("stat", str(live.mnt / "nope"), env=live.env), "No such file")
