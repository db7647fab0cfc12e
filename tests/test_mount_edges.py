"""Mount edges (issue 11): how the kernel and mount(8) see a mount -- ``ro``, the source name, the
standard options, remount, unmount of a busy mount -- read plans on a mount other users share, and
owner-only metadata files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import CLI, REPO, LiveLake, is_mountpoint, needs_fuse, take_down, wait_for

NOBODY = 65534


def mount_line(mnt: Path) -> tuple[str, list[str]]:
    """(source, options) of the mount at ``mnt`` in /proc/self/mounts (escapes decoded)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        src, where, _fstype, opts = line.split()[:4]
        if where.encode().decode("unicode_escape") == str(mnt.resolve()):
            return src.encode().decode("unicode_escape"), opts.split(",")
    raise AssertionError(f"{mnt} is not mounted")


def plan_report(mnt: Path) -> dict:
    return json.loads((mnt / ".prefetch").read_text())


def as_user(uid: int, *cmd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` as another user with no supplementary groups."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def shared_root():
    """A directory every user can traverse (pytest's tmp_path is 0700), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="lakefs-edges-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ ro, source, options, remount

@needs_fuse
@pytest.mark.timeout(240)
def test_read_only_mounts_are_ro_in_the_kernel_and_still_take_plans(make_live):
    from lakefs_fuse.torch import prefetch
    lake = make_live(mount=False)
    lake.mount()
    assert "rw" in mount_line(lake.mnt)[1]
    (lake.mnt / "f").write_bytes(b"data")
    lake.umount()
    for flag in ("--read-only", "--dataset"):
        lake.mount(flag)
        assert "ro" in mount_line(lake.mnt)[1], flag
        with pytest.raises(OSError) as err:
            (lake.mnt / "g").write_bytes(b"x")
        assert err.value.errno == errno.EROFS
        # The kernel refuses to open .prefetch for writing; plans go over the daemon's socket.
        with pytest.raises(OSError) as err:
            os.open(lake.mnt / ".prefetch", os.O_WRONLY)
        assert err.value.errno == errno.EROFS
        assert prefetch([lake.mnt / "f", lake.mnt / "nothing"])
        report = wait_for(lambda: (r := plan_report(lake.mnt))["resolved"] + r["unresolved"] == 2 and r, 20,
                          "the plan sent over the socket")
        assert report["resolved"] == 1 and report["planned"] == 2, report
        assert (lake.mnt / "f").read_bytes() == b"data"
        lake.umount()


@needs_fuse
@pytest.mark.timeout(240)
def test_the_source_names_the_lake(make_live):
    a, b = make_live(name="a"), make_live(name="b")
    for lake in (a, b):
        assert mount_line(lake.mnt)[0] == str(lake.data.resolve())
        res = subprocess.run(["findmnt", "-n", "-o", "TARGET", "-S", str(lake.data)], capture_output=True,
                             text=True, timeout=30)
        assert res.stdout.split() == [str(lake.mnt.resolve())], res


@needs_fuse
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8)")
def test_mount_helper_as_mount8_and_fstab_drive_it(helper, tmp_path):
    lake = LiveLake(tmp_path / "lake")
    env = {**os.environ, **lake.env}

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)

    try:
        res = run("mount", "-t", "fuse.lakefs", str(lake.data), str(lake.mnt), "-o",
                  "defaults,default_permissions,rw,noatime,nodev,nosuid,noexec,auto,nouser,_netdev,nofail,"
                  "x-systemd.requires=network-online.target,comment=x,pack_delay=0")
        assert res.returncode == 0, res.stderr
        assert res.stdout == "" and res.stderr == ""  # a mount helper is silent on success
        src, opts = mount_line(lake.mnt)
        assert src == str(lake.data.resolve())
        assert {"rw", "noatime", "nodev", "nosuid", "noexec"} <= set(opts), opts
        (lake.mnt / "a").write_bytes(b"before")

        res = run("mount", "-o", "remount,ro", str(lake.mnt))
        assert res.returncode == 0 and res.stdout == "", res.stderr
        assert "ro" in mount_line(lake.mnt)[1] and {"noexec", "nosuid"} <= set(mount_line(lake.mnt)[1])
        assert json.loads((lake.mnt / ".config").read_text())["read_only"] is True
        with pytest.raises(OSError) as err:
            (lake.mnt / "b").write_bytes(b"x")
        assert err.value.errno == errno.EROFS

        res = run("mount", "-o", "remount,rw", str(lake.mnt))
        assert res.returncode == 0 and res.stdout == "", res.stderr
        assert "rw" in mount_line(lake.mnt)[1]
        assert json.loads((lake.mnt / ".config").read_text())["read_only"] is False
        (lake.mnt / "b").write_bytes(b"after")
        res = run("umount", str(lake.mnt))
        assert res.returncode == 0, res.stderr
        wait_for(lambda: lake.pid() is None, 60, "the daemon to finish")

        fstab = tmp_path / "fstab"
        fstab.write_text(f"{lake.data}  {lake.mnt}  fuse.lakefs  ro,dataset,_netdev  0 0\n")
        res = run("mount", "-T", str(fstab), str(lake.mnt))
        assert res.returncode == 0 and res.stdout == "", res.stderr
        assert "ro" in mount_line(lake.mnt)[1] and (lake.mnt / "b").read_bytes() == b"after"
        res = run("mount", "-T", str(fstab), "-o", "remount,rw", str(lake.mnt))
        assert res.returncode != 0 and "dataset" in res.stderr, res.stderr  # a dataset mount stays read-only
        assert "ro" in mount_line(lake.mnt)[1]
        lake.umount()
    finally:
        take_down(lake.mnt, lake.pid())


@needs_fuse
@pytest.mark.timeout(180)
def test_umount_waits_for_a_mount_that_is_briefly_busy(live, tmp_path):
    (live.mnt / "d").mkdir()
    holder = subprocess.Popen(["sleep", "600"], cwd=live.mnt / "d")
    errors = tmp_path / "umount.err"
    try:
        with open(errors, "w") as err:
            umount = subprocess.Popen([*CLI, "umount", str(live.mnt)], stdout=subprocess.DEVNULL, stderr=err,
                                      env={**os.environ, **live.env}, cwd=REPO)
        try:
            # It says who holds the mount, and waits instead of failing at once.
            wait_for(lambda: str(holder.pid) in errors.read_text() or umount.poll() is not None, 30,
                     "umount to name the process holding the mount")
            assert umount.poll() is None, errors.read_text()
            holder.kill()
            holder.wait(timeout=30)
            assert umount.wait(timeout=60) == 0, errors.read_text()
        finally:
            if umount.poll() is None:
                umount.kill()
                umount.wait()
        assert not is_mountpoint(live.mnt)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# ------------------------------------------------------------------ read plans and other users

@needs_fuse
@pytest.mark.timeout(300)
def test_read_plans_are_per_user_and_resolved_with_the_writers_permissions(shared_root):
    lake = LiveLake(shared_root)
    nobody_env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    plan = "private/a.bin\nprivate/none.bin\npublic/b.bin\npublic/c.bin\n"
    try:
        lake.mount("--allow-other")
        for d, mode in (("private", 0o700), ("public", 0o755)):
            (lake.mnt / d).mkdir()
            (lake.mnt / d).chmod(mode)
        for rel, mode in (("private/a.bin", 0o644), ("public/b.bin", 0o644), ("public/c.bin", 0o600)):
            (lake.mnt / rel).write_bytes(os.urandom(5000))
            (lake.mnt / rel).chmod(mode)

        def nobody_report() -> dict:
            res = as_user(NOBODY, "cat", str(lake.mnt / ".prefetch"))
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        res = as_user(NOBODY, "sh", "-c", f"printf '{plan}' > {lake.mnt}/.prefetch")
        assert res.returncode == 0, res.stderr
        report = wait_for(lambda: (r := nobody_report())["resolved"] + r["unresolved"] == 4 and r, 20,
                          "nobody's plan to resolve")
        # Only public/b.bin may be read by nobody: a file in a 0700 directory, a missing one and a
        # 0600 file all look the same, and nothing nobody may not read is fetched for it.
        assert report["resolved"] == 1 and report["unresolved"] == 3, report
        assert "page_cache" not in report and "read_requests" not in report  # the mount's, not nobody's
        assert plan_report(lake.mnt)["planned"] == 0  # root has no plan; nobody's is not shown to root
        with open(lake.mnt / ".prefetch", "w") as f:
            f.write("private/a.bin\n")
        wait_for(lambda: plan_report(lake.mnt)["resolved"] == 1, 20, "root's plan")
        assert nobody_report()["planned"] == 4 and nobody_report()["resolved"] == 1
        lake.umount()

        # A read-only mount: the plan goes over the daemon's socket, with the same checks.
        lake.mount("--read-only", "--allow-other")
        code = ("import json, sys; from lakefs_fuse.torch import prefetch; "
                f"sys.exit(0 if prefetch([{str(lake.mnt)!r} + '/' + p for p in {plan.split()!r}]) else 3)")
        res = as_user(NOBODY, "/usr/bin/python3", "-c", code, env=nobody_env)
        assert res.returncode == 0, res.stderr
        report = wait_for(lambda: (r := nobody_report())["resolved"] + r["unresolved"] == 4 and r, 20,
                          "nobody's plan over the socket")
        assert report["resolved"] == 1, report
        assert plan_report(lake.mnt)["planned"] == 0
        lake.umount()
    finally:
        take_down(lake.mnt, lake.pid())


# ------------------------------------------------------------------ owner-only metadata

def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def _loosen(root: Path) -> None:
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def _assert_owner_only(root: Path, names: list[str]) -> None:
    modes = _modes(root)
    assert modes["."] == 0o700, (root, oct(modes["."]))
    for name in names:
        assert name in modes, (name, sorted(modes))
    for name, mode in modes.items():
        if name == "." or not any(name == n or name.startswith(n + "/") for n in names):
            continue
        want = 0o700 if (root / name).is_dir() else 0o600
        assert mode == want, (name, oct(mode))


@needs_fuse
@pytest.mark.timeout(240)
def test_lake_metadata_secret_and_log_are_owner_only(make_live):
    lake = make_live(mount=False)
    private = ["lake.json", "secret", "meta"]
    _assert_owner_only(lake.data, private)
    _loosen(lake.data)  # a lake made before the fix
    lake.mount()
    _assert_owner_only(lake.data, private + ["lock", "mount.log"])
    # The daemon's umask never reaches the files users create: the kernel gives their modes.
    old = os.umask(0)
    try:
        (lake.mnt / "d").mkdir(0o777)
        fd = os.open(lake.mnt / "d" / "f", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(lake.mnt / "d").st_mode) == 0o777
    assert stat.S_IMODE(os.stat(lake.mnt / "d" / "f").st_mode) == 0o666
    lake.umount()
    _assert_owner_only(lake.data, private + ["lock", "mount.log"])


def test_metadata_server_state_is_owner_only(tmp_path):
    from lakefs_fuse.meta.server import MetaServer
    data = tmp_path / "m1"

    def open_close() -> None:
        server = MetaServer(1, data, "127.0.0.1:0", b"s" * 32, peers={1: "127.0.0.1:0"})
        server.close()

    open_close()
    _assert_owner_only(data, ["raft", "state", "server.json"])
    _loosen(data)
    open_close()
    _assert_owner_only(data, ["raft", "state", "server.json"])
