"""The in-process Python client (issue 13) against live mounts of the same embedded lake.

The mount is the reference: bytes, attributes, listings and errors the client gives must be the
ones the kernel and the daemon give for the same calls.

* a follower client (beside the mount that owns the lake) reads what the mount wrote -- bytes,
  stat fields, listings -- and sees files the mount commits later;
* errors, as root and as ``nobody``: a writable client gives the writable mount's errors, a
  read-only client (follower, or ``read_only=True``) gives a ``--read-only`` mount's;
* a writable client when no mount holds the lake, and the lock between client and mount;
* ``torch.save`` / ``torch.load`` through the client and the mount.

Forks and cluster lakes: ``test_client_shared.py``; bad input, interpreter exit, a full disk:
``test_client_edges.py``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lakefs_fuse.client import connect

from conftest import LiveLake, cli, is_mountpoint, needs_fuse, wait_for, write_synced_file

pytestmark = [needs_fuse, pytest.mark.timeout(300)]

MiB = 1 << 20
NOBODY = 65534


# ------------------------------------------------------------------------------ helpers


class OnMount:
    """The calls the client offers, made with ``os`` and ``open`` on paths under a mount: the
    reference every client result is compared with."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _p(self, path: str) -> str:
        return f"{self.root}/{path}"  # (not pathlib: it drops a trailing slash)

    def open(self, path: str, mode: str = "rb"):
        return open(self._p(path), mode)  # noqa: SIM115 -- the caller closes it

    def stat(self, path: str) -> os.stat_result:
        return os.stat(self._p(path))

    def listdir(self, path: str = "") -> list[str]:
        return os.listdir(self._p(path))

    def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path))

    def remove(self, path: str) -> None:
        os.remove(self._p(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    def rename(self, src: str, dst: str) -> None:
        os.rename(self._p(src), self._p(dst))

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self._p(path))


Op = Callable[[object], object]


def outcome(fs: object, op: Op) -> object:
    """What ``op(fs)`` gives: "ok" (a file it opened is closed again) or (exception class, errno)."""
    try:
        got = op(fs)
    except OSError as exc:
        return type(exc).__name__, errno.errorcode.get(exc.errno or 0, exc.errno)
    if hasattr(got, "close"):
        got.close()
    return "ok"


def outcomes(fs: object, ops: dict[str, Op]) -> dict[str, object]:
    return {name: outcome(fs, op) for name, op in ops.items()}


# Calls that fail on a writable lake as well as on a read-only one (the tree: see _populate).
FAILING: dict[str, Op] = {
    "open missing": lambda fs: fs.open("nope", "rb"),
    "stat missing": lambda fs: fs.stat("nope"),
    "open in a missing dir": lambda fs: fs.open("nodir/f", "rb"),
    "stat in a missing dir": lambda fs: fs.stat("nodir/f"),
    "listdir missing": lambda fs: fs.listdir("nodir"),
    "open a file as dir": lambda fs: fs.open("f/x", "rb"),
    "stat a file as dir": lambda fs: fs.stat("f/x"),
    "stat file/": lambda fs: fs.stat("f/"),
    "create under a file": lambda fs: fs.open("f/x", "wb"),
    "listdir a file": lambda fs: fs.listdir("f"),
    "open dir rb": lambda fs: fs.open("d", "rb"),
    "open dir wb": lambda fs: fs.open("d", "wb"),
    "open dir ab": lambda fs: fs.open("d", "ab"),
    "open dir r+b": lambda fs: fs.open("d", "r+b"),
    "mkdir existing dir": lambda fs: fs.mkdir("d"),
    "mkdir existing file": lambda fs: fs.mkdir("f"),
    "xb existing": lambda fs: fs.open("f", "xb"),
    "xb existing dir": lambda fs: fs.open("d", "xb"),
    "rmdir non-empty": lambda fs: fs.rmdir("d"),
    "rmdir a file": lambda fs: fs.rmdir("f"),
    "rmdir missing": lambda fs: fs.rmdir("nope"),
    "remove a dir": lambda fs: fs.remove("d"),
    "remove missing": lambda fs: fs.remove("nope"),
    "remove in a missing dir": lambda fs: fs.remove("nodir/f"),
    "rename missing": lambda fs: fs.rename("nope", "x"),
    "rename dir over file": lambda fs: fs.rename("empty", "f"),
    "rename file over dir": lambda fs: fs.rename("f", "empty"),
    "rename over non-empty dir": lambda fs: fs.rename("empty", "d"),
    "rename dir into itself": lambda fs: fs.rename("d", "d/sub"),
    "mkdir in a missing dir": lambda fs: fs.mkdir("nodir/x"),
    "create in a missing dir": lambda fs: fs.open("nodir/x", "wb"),
    "name too long": lambda fs: fs.stat("n" * 256),
    "create name too long": lambda fs: fs.open("n" * 256, "wb"),
    "open f/": lambda fs: fs.open("f/", "rb"),
    "create new/": lambda fs: fs.open("new/", "wb"),
    "remove f/": lambda fs: fs.remove("f/"),
    "rename f to g/": lambda fs: fs.rename("f", "g/"),
    "rename f/ to g": lambda fs: fs.rename("f/", "g"),
    "mkdir d/": lambda fs: fs.mkdir("d/"),
    "open the root": lambda fs: fs.open("", "rb"),
    "open d/..": lambda fs: fs.open("d/..", "wb"),
    "open d/": lambda fs: fs.open("d/", "rb"),
    "symlink over a file": lambda fs: fs.symlink("f", "pub"),
    "symlink l/": lambda fs: fs.symlink("f", "l/"),
}

# The calls of FAILING that only read: a read-only lake answers them as a writable one.
READS = ("open missing", "stat missing", "open in a missing dir", "stat in a missing dir", "listdir missing",
         "open a file as dir", "stat a file as dir", "stat file/", "listdir a file", "open dir rb")

# Changes that succeed on a writable lake: run only where the lake is read-only (EROFS).
CHANGES: dict[str, Op] = {
    "create": lambda fs: fs.open("new", "wb"),
    "truncate": lambda fs: fs.open("f", "wb"),
    "append": lambda fs: fs.open("f", "ab"),
    "read-write": lambda fs: fs.open("f", "r+b"),
    "xb new": lambda fs: fs.open("new", "xb"),
    "mkdir": lambda fs: fs.mkdir("newdir"),
    "remove": lambda fs: fs.remove("f"),
    "rmdir": lambda fs: fs.rmdir("empty"),
    "rename": lambda fs: fs.rename("f", "g"),
    "rename over a file": lambda fs: fs.rename("f", "pub"),
}

# As nobody: the root-owned 0600 file ``secret`` and 0700 directory ``private``, a 0755 root.
AS_NOBODY: dict[str, Op] = {
    "read a 0600 file": lambda fs: fs.open("secret", "rb"),
    "write a 0600 file": lambda fs: fs.open("secret", "r+b"),
    "truncate a 0600 file": lambda fs: fs.open("secret", "wb"),
    "stat a 0600 file": lambda fs: fs.stat("secret"),
    "read a 0644 file": lambda fs: fs.open("pub", "rb"),
    "listdir a 0700 dir": lambda fs: fs.listdir("private"),
    "stat in a 0700 dir": lambda fs: fs.stat("private/inner"),
    "open in a 0700 dir": lambda fs: fs.open("private/inner", "rb"),
    "missing in a 0700 dir": lambda fs: fs.stat("private/nope"),
    "create in a 0755 root dir": lambda fs: fs.open("new", "wb"),
    "mkdir in a 0755 root dir": lambda fs: fs.mkdir("newdir"),
    "remove from a 0755 root dir": lambda fs: fs.remove("secret"),
    "rename in a 0755 root dir": lambda fs: fs.rename("pub", "pub2"),
}


def _populate(mnt: Path) -> None:
    write_synced_file(mnt / "f", b"data")
    write_synced_file(mnt / "pub", b"public")
    (mnt / "d").mkdir()
    write_synced_file(mnt / "d" / "inner", b"in")
    (mnt / "empty").mkdir()
    write_synced_file(mnt / "secret", b"s")
    os.chmod(mnt / "secret", 0o600)
    (mnt / "private").mkdir(mode=0o700)
    write_synced_file(mnt / "private" / "inner", b"i")
    os.chmod(mnt, 0o755)


_libc = ctypes.CDLL(None, use_errno=True)
_SYS = {"x86_64": (116, 119, 117), "aarch64": (159, 149, 147)}  # setgroups, setresgid, setresuid


def as_nobody(fn: Callable[[], object]) -> object:
    """``fn()`` run in a thread whose own credentials are nobody's (effective uid and gid 65534,
    no groups): the kernel checks a mount's permissions, and the client its own, against them.

    Raw syscalls change only the calling thread (glibc's wrappers would change every thread of
    the process, the client's trio thread with its open lake files too); the thread ends with
    them, so the test process stays root. The lake's own files are private to root, so a whole
    process as nobody could not open the lake at all."""
    numbers = _SYS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no syscall numbers for {platform.machine()}")
    setgroups, setresgid, setresuid = numbers
    box: dict[str, object] = {}

    def run() -> None:
        for nr, args in ((setgroups, (0, None)), (setresgid, (-1, NOBODY, -1)), (setresuid, (-1, NOBODY, -1))):
            if _libc.syscall(nr, *args) != 0:
                box["error"] = OSError(ctypes.get_errno(), "cannot become nobody")
                return
        assert os.geteuid() == NOBODY and os.getgroups() == []
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="as-nobody")
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the calls as nobody did not finish"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


@pytest.fixture
def shared_lake():
    """An embedded lake in a directory every user may traverse (pytest's tmp_path is 0700), so
    another user reaches its mount; always torn down."""
    root = Path(tempfile.mkdtemp(prefix="lakefs-client-"))
    root.chmod(0o755)
    lake = LiveLake(root)
    try:
        yield lake
    finally:
        lake.teardown()
        left = is_mountpoint(lake.mnt)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, "mount left behind"


def _stat_fields(s: os.stat_result) -> dict[str, int]:
    return {k: getattr(s, k) for k in ("st_size", "st_mode", "st_uid", "st_gid", "st_nlink", "st_mtime_ns",
                                       "st_ctime_ns", "st_ino")}


def _entry_fields(e) -> tuple:
    """What an os.DirEntry tells, following links and not."""
    try:
        followed: object = _stat_fields(e.stat())
    except FileNotFoundError:
        followed = "ENOENT"
    return (e.is_dir(), e.is_file(), e.is_symlink(), e.is_dir(follow_symlinks=False),
            e.is_file(follow_symlinks=False), e.inode(), followed, _stat_fields(e.stat(follow_symlinks=False)))


def _walk_sorted(rows) -> list[tuple[str, list[str], list[str]]]:
    return sorted((os.path.normpath(top), sorted(dirs), sorted(files)) for top, dirs, files in rows)


# ------------------------------------------------------------------- 1. follower reads


@pytest.mark.timeout(300)
def test_follower_reads_what_the_mount_wrote(make_live):
    lake = make_live()  # default --pack-delay (2 s): only fsync commits at once
    m = lake.mnt
    rng = os.urandom
    files = {
        "empty": b"",
        "one": b"x",
        "small/110k.bin": rng(110_000),
        "big/5m.bin": rng(5 * MiB + 123),  # spans two 4 MiB chunks
        "deep/a/b/c/leaf": rng(3000),
    }
    for name in ("small", "big", "deep/a/b/c", "deep/empty-dir"):
        (m / name).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_synced_file(m / name, data)
    # A sparse file: a hole at the start, 10 bytes at 3 MiB, a hole to the end (9 MiB).
    fd = os.open(m / "sparse", os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        os.pwrite(fd, b"0123456789", 3 * MiB)
        os.ftruncate(fd, 9 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    files["sparse"] = (m / "sparse").read_bytes()
    os.symlink("deep/a", m / "link-to-dir")  # relative links: the client follows them too
    os.symlink("small/110k.bin", m / "link-to-file")
    os.symlink("nowhere", m / "deep" / "dangling")
    files["link-to-file"] = files["small/110k.bin"]
    assert len(files["sparse"]) == 9 * MiB and files["sparse"][3 * MiB:3 * MiB + 10] == b"0123456789"

    with connect(data=lake.data) as client:
        assert client.read_only is True  # the mount holds the lake: a follower
        for name, data in files.items():
            with client.open(name, "rb") as f:
                assert f.read() == data, name
            assert client.read_bytes(name) == data, name
            # readinto in odd-sized pieces, and seeks
            with client.open(name, "rb", buffering=0) as raw:
                buf = bytearray(70_001)
                got = bytearray()
                while n := raw.readinto(buf):
                    got += buf[:n]
                assert got == data, name
                if len(data) > 10:
                    raw.seek(-10, os.SEEK_END)
                    assert raw.read(10) == data[-10:]
                    raw.seek(len(data) // 2)
                    assert raw.read(7) == data[len(data) // 2:len(data) // 2 + 7]
        for name in [*files, "small", "deep/a", "deep/empty-dir", "", "link-to-dir", "link-to-dir/b"]:
            assert _stat_fields(client.stat(name)) == _stat_fields(os.stat(m / name)), name
        for name in ("link-to-dir", "link-to-file"):
            assert _stat_fields(client.lstat(name)) == _stat_fields(os.lstat(m / name)), name
            assert client.readlink(name) == os.readlink(m / name)

        # Listings: the same names, and the same order as the kernel's readdir.
        for d in ["", "deep", "deep/a/b/c", "deep/empty-dir"]:
            assert client.listdir(d) == os.listdir(m / d), d
            mine = {e.name: _entry_fields(e) for e in client.scandir(d)}
            with os.scandir(m / d) as it:
                theirs = {e.name: _entry_fields(e) for e in it}
            assert mine == theirs, d
        rows = [(os.path.relpath(top, m), dirs, files_) for top, dirs, files_ in os.walk(m)]
        mine_rows = [(top or ".", dirs, files_) for top, dirs, files_ in client.walk("")]
        assert _walk_sorted(mine_rows) == _walk_sorted(rows)
        assert [r[0] for r in mine_rows] == [os.path.normpath(r[0]) for r in rows]  # same order too
        assert list(client.walk("deep", topdown=False))[-1][0] == "deep"
        linked = [(os.path.relpath(top, m), dirs, files_) for top, dirs, files_ in os.walk(m, followlinks=True)]
        assert _walk_sorted(client.walk("", followlinks=True)) == _walk_sorted(linked)

        # Later changes on the mount reach the same client object: fsync commits at once ...
        write_synced_file(m / "later-synced", b"synced")
        assert client.read_bytes("later-synced") == b"synced"
        # ... a plain close within the pack delay; a rename and a remove as soon as they return.
        (m / "later-closed").write_bytes(b"closed")
        # (the name is committed at create, the bytes when the mount seals them)
        wait_for(lambda: client.exists("later-closed") and client.read_bytes("later-closed") == b"closed", 30,
                 "the closed file's bytes to be committed")
        os.rename(m / "one", m / "deep" / "one-moved")
        os.remove(m / "empty")
        assert not client.exists("one") and not client.exists("empty")
        assert client.read_bytes("deep/one-moved") == b"x"
        assert sorted(client.listdir("")) == sorted(os.listdir(m))


# ------------------------------------------------------------------------- 2. errors


@pytest.mark.timeout(400)
def test_errors_match_the_mount_as_root_and_as_nobody(shared_lake):
    lake = shared_lake
    lake.mount("--allow-other")
    _populate(lake.mnt)
    everything = {**FAILING, **CHANGES}

    mount_rw = OnMount(lake.mnt)
    on_mount_rw = outcomes(mount_rw, FAILING)
    nobody_on_mount_rw = as_nobody(lambda: outcomes(mount_rw, AS_NOBODY))
    # The mount's own answers are the ones POSIX names (so the comparisons below mean something).
    expected = {"open missing": "ENOENT", "open in a missing dir": "ENOENT", "open a file as dir": "ENOTDIR",
                "open dir rb": "EISDIR", "open dir wb": "EISDIR", "mkdir existing dir": "EEXIST",
                "xb existing": "EEXIST", "rmdir non-empty": "ENOTEMPTY"}
    assert {k: on_mount_rw[k][1] for k in expected} == expected
    assert on_mount_rw["open dir rb"][0] == "IsADirectoryError"
    assert nobody_on_mount_rw["read a 0600 file"] == ("PermissionError", "EACCES")
    assert nobody_on_mount_rw["listdir a 0700 dir"] == ("PermissionError", "EACCES")

    with connect(data=lake.data) as follower:
        assert follower.read_only
        on_follower = outcomes(follower, everything)
        nobody_on_follower = as_nobody(lambda: outcomes(follower, AS_NOBODY))
        # The follower reads as the mount does.
        assert {k: on_follower[k] for k in READS} == {k: on_mount_rw[k] for k in READS}

    lake.umount()
    lake.mount("--read-only", "--allow-other")
    mount_ro = OnMount(lake.mnt)
    on_mount_ro = outcomes(mount_ro, everything)
    nobody_on_mount_ro = as_nobody(lambda: outcomes(mount_ro, AS_NOBODY))
    assert {on_mount_ro[k] for k in CHANGES} == {("OSError", "EROFS")}
    assert nobody_on_mount_ro["read a 0600 file"] == ("PermissionError", "EACCES")
    assert nobody_on_mount_ro["create in a 0755 root dir"] == ("OSError", "EROFS")  # EROFS before EACCES
    lake.umount()

    # A follower is a read-only lake: it answers as the --read-only mount, as root and as nobody.
    assert _diff(on_follower, on_mount_ro) == {}
    assert _diff(nobody_on_follower, nobody_on_mount_ro) == {}

    with connect(data=lake.data, read_only=True) as ro:
        assert ro.read_only
        assert _diff(outcomes(ro, everything), on_mount_ro) == {}
        assert _diff(as_nobody(lambda: outcomes(ro, AS_NOBODY)), nobody_on_mount_ro) == {}

    with connect(data=lake.data) as rw:
        assert not rw.read_only  # nothing holds the lake: writable
        assert _diff(outcomes(rw, FAILING), on_mount_rw) == {}
        assert _diff(as_nobody(lambda: outcomes(rw, AS_NOBODY)), nobody_on_mount_rw) == {}
        assert rw.read_bytes("secret") == b"s"  # nothing above changed the tree


def _diff(mine: dict, theirs: dict) -> dict:
    return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


# ------------------------------------------------------------- 3. writable client, lock


@pytest.mark.timeout(300)
def test_writable_client_then_mount_and_the_lock_between_them(make_live):
    lake = make_live(mount=False)
    big = os.urandom(5 * MiB + 7)
    with connect(data=lake.data) as client:
        assert not client.read_only  # nothing holds the lake
        client.makedirs("a/b/c")
        client.makedirs("a/b/c", exist_ok=True)
        with pytest.raises(FileExistsError):
            client.makedirs("a/b")
        client.write_bytes("a/b/c/big", big)
        client.write_bytes("a/old", b"old contents")
        client.write_bytes("a/new", b"new contents")
        client.rename("a/new", "a/old")  # over an existing file
        client.write_bytes("gone", b"x")
        client.remove("gone")
        client.mkdir("gone-dir")
        client.rmdir("gone-dir")
        with client.open("text.txt", "w") as f:
            f.write("héllo\n")
        with client.open("text.txt", "a") as f:
            f.write("again\n")
        with client.open("a/patched", "wb") as f:
            f.write(b"0123456789")
        with client.open("a/patched", "r+b") as f:
            f.seek(3)
            f.write(b"abc")
            f.truncate(8)

        # The client holds the lake like a mount: mounting it fails, in one line.
        res = cli("mount", str(lake.mnt), "--data", str(lake.data), env=lake.env, timeout=90)
        assert res.returncode != 0 and not is_mountpoint(lake.mnt)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert "already mounted" in lines[0] or "in use" in lines[0], lines[0]
        # A second client of the same lake follows the first, and reads what it closed.
        with connect(data=lake.data) as second:
            assert second.read_only
            assert second.read_bytes("a/b/c/big") == big
            with pytest.raises(OSError) as busy:
                connect(data=lake.data, read_only=False)
            assert busy.value.errno == errno.EBUSY

    expected = {"a/b/c/big": big, "a/old": b"new contents", "text.txt": "héllo\nagain\n".encode(),
                "a/patched": b"012abc67"}
    lake.mount()
    m = lake.mnt
    for name, data in expected.items():
        assert (m / name).read_bytes() == data, name
    assert sorted(os.listdir(m)) == ["a", "text.txt"]
    assert sorted(os.listdir(m / "a")) == ["b", "old", "patched"]
    with connect(data=lake.data) as follower:  # what the client wrote, seen alike both ways
        for name in [*expected, "a", "a/b/c", ""]:
            assert _stat_fields(follower.stat(name)) == _stat_fields(os.stat(m / name)), name
    with pytest.raises(OSError) as busy:
        connect(data=lake.data, read_only=False)
    assert busy.value.errno == errno.EBUSY and "already mounted" in str(busy.value)


# --------------------------------------------------------------------- 4. checkpoints


@pytest.mark.timeout(300)
def test_torch_checkpoint_through_the_client_loads_through_the_mount(make_live):
    torch = pytest.importorskip("torch")
    lake = make_live(mount=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    state = {"model": model.state_dict(), "big": torch.randn(1_500_000), "step": 1234}  # ~6 MB: two chunks

    def same(a: dict, b: dict) -> bool:
        return (a["step"] == b["step"] and torch.equal(a["big"], b["big"])
                and a["model"].keys() == b["model"].keys()
                and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]))

    with connect(data=lake.data) as client:
        client.makedirs("ckpt")
        with client.open("ckpt/x.pt", "wb") as f:
            torch.save(state, f)
        with client.open("ckpt/x.pt", "rb") as f:
            assert same(torch.load(f), state)
        saved = client.read_bytes("ckpt/x.pt")
    lake.mount()
    assert (lake.mnt / "ckpt" / "x.pt").read_bytes() == saved
    assert same(torch.load(lake.mnt / "ckpt" / "x.pt"), state)
