"""Model-based test: the same random POSIX operations on the mount and on a local directory.

A Hypothesis ``RuleBasedStateMachine`` applies every operation twice -- once under a live
lakefs-fuse mount, once under a plain local directory (the reference model) -- and requires
the same outcome: both succeed with the same result, or both fail with the same errno.
After every step the two trees are compared: listings, types, sizes, contents, permission
bits, nlink (files and directories: lakefs reports 2 + subdirectories like ext4), symlink
targets, hard-link groups and ``user.*`` extended attributes.

Names come from a small pool so that collisions (EEXIST, ENOTEMPTY, EISDIR, ENOTDIR, rename
over existing files and empty directories, rename of a directory into itself...) are common.
Files are written at random offsets (holes beyond EOF), truncated up and down, held open
across other operations (unlink-while-open, writes through one name read through another),
and the lake is occasionally unmounted and mounted again, after which everything must still
compare equal.

Two bugs it found have deterministic regression tests at the end of this file
(``test_read_racing_a_commit_sees_written_bytes``, ``test_open_o_trunc_truncates_buffered_data``).

One mount serves the whole Hypothesis run (mounting per example would dominate the
runtime); every example works in a fresh sub-directory of it. The lake is formatted with a
256 KiB chunk so that small writes cross chunk boundaries often.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import stat as st
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as S
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import LiveLake, _alive, is_mountpoint, needs_fuse

CHUNK = 256 * 1024

# A small pool of names so that operations collide. Any of them may end up a file, a
# directory or a symlink; nested ones fail with ENOENT/ENOTDIR until their parent exists.
PATHS = ["a", "b", "c", "d", "s", "d/a", "d/b", "c/a", "d/e", "d/e/a"]
DIRS = S.one_of(S.sampled_from(["c", "d", "d/e"]), S.sampled_from(PATHS))
LINKS = S.sampled_from(["s", "d/s"])
TARGETS = S.sampled_from(["a", "b", "d", "d/a", "nowhere"])
XNAMES = ["user.a", "user.b"]

# Offsets and sizes biased towards chunk boundaries; files stay under ~700 KiB so that the
# whole-tree comparison after every step stays cheap.
_BOUNDARY = S.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 7, 2 * CHUNK])
OFFSETS = S.one_of(_BOUNDARY, S.integers(0, 2 * CHUNK + 4096))
LENGTHS = S.one_of(S.integers(1, 64), S.integers(1, 9000), S.sampled_from([CHUNK, CHUNK + 3, 300_000]))
SIZES = S.one_of(_BOUNDARY, S.integers(0, 2 * CHUNK + 4096))

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), src)


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def outcome(fn):
    """('ok', result) or ('err', errno name): what the comparison looks at."""
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, exc.errno))


def user_xattrs(path: str, follow: bool = False) -> dict:
    if not Shared.xattrs:
        return {}
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as exc:
        return {"error": errno.errorcode.get(exc.errno, exc.errno)}
    return {n: os.getxattr(path, n, follow_symlinks=follow) for n in sorted(names) if n.startswith("user.")}


def read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first differing byte at {i} (mount {x:#04x}, local {y:#04x})"
    return f"lengths differ: mount {len(a)}, local {len(b)}"


def snapshot(root: str) -> tuple[dict, dict, set]:
    """(metadata by path, file contents by path, hard-link groups) of the tree under ``root``."""
    meta: dict[str, tuple] = {}
    data: dict[str, bytes] = {}
    by_ino: dict[int, list[str]] = {}

    def walk(rel: str) -> None:
        full = os.path.join(root, rel) if rel else root
        s = os.lstat(full)
        names = sorted(os.listdir(full))
        meta[rel or "."] = ("dir", s.st_nlink, st.S_IMODE(s.st_mode), names, user_xattrs(full))
        for name in names:
            r = f"{rel}/{name}" if rel else name
            p = os.path.join(root, r)
            s = os.lstat(p)
            if st.S_ISDIR(s.st_mode):
                walk(r)
            elif st.S_ISLNK(s.st_mode):
                meta[r] = ("symlink", os.readlink(p), s.st_size)
                by_ino.setdefault(s.st_ino, []).append(r)
            elif st.S_ISREG(s.st_mode):
                meta[r] = ("file", s.st_size, s.st_nlink, st.S_IMODE(s.st_mode), user_xattrs(p))
                data[r] = read_all(p)
                by_ino.setdefault(s.st_ino, []).append(r)
            else:
                meta[r] = ("other", st.S_IFMT(s.st_mode))

    walk("")
    groups = {frozenset(v) for v in by_ino.values() if len(v) > 1}
    return meta, data, groups


class Shared:
    """The one live lake of a Hypothesis run, and a counter for fresh example directories."""

    lake: LiveLake | None = None
    local: Path | None = None
    examples = 0
    remounts = 0
    steps = 0
    outcomes: dict[str, int] = {}
    xattrs = True  # False when the local file system (the model) has no user xattrs


class LakeModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        Shared.examples += 1
        name = f"ex{Shared.examples}"
        self.mroot = str(Shared.lake.mnt / name)
        self.lroot = str(Shared.local / name)
        os.mkdir(self.mroot)
        os.mkdir(self.lroot)
        self.held: list[tuple[int, int, str]] = []  # (mount fd, local fd, path it was opened by)
        self.steps = 0
        self.remounted = False
        self.trace: list[str] = []  # what this example did, for failure messages

    def fail(self, msg: str):
        raise AssertionError(msg + "\n--- operations of this example (mount outcome) ---\n" + "\n".join(self.trace))

    def note(self, what: str, result) -> None:
        r = result[1] if result[0] == "err" else ("ok" if not isinstance(result[1], int) else f"ok {result[1]}")
        if isinstance(result[1], (bytes, tuple)):
            r = "ok"
        self.trace.append(f"{what} -> {r}")

    # ------------------------------------------------------------ helpers

    def both(self, what: str, fn):
        """Run ``fn(root)`` on both sides; require the same outcome; return it."""
        m = outcome(lambda: fn(self.mroot))
        loc = outcome(lambda: fn(self.lroot))
        self.note(what, m)
        if m != loc and m[0] == loc[0] == "ok" and isinstance(m[1], bytes):
            self.fail(f"{what}: results differ: {first_difference(m[1], loc[1])}")
        if m != loc:
            self.fail(f"{what}: mount -> {m!r}, local -> {loc!r}")
        key = what.split()[0] + (" ok" if m[0] == "ok" else " " + str(m[1]))
        Shared.outcomes[key] = Shared.outcomes.get(key, 0) + 1
        return m

    def both_fd(self, what: str, i: int, fn):
        mfd, lfd, path = self.held[i % len(self.held)]
        m = outcome(lambda: fn(mfd))
        loc = outcome(lambda: fn(lfd))
        self.note(f"[fd#{i % len(self.held)} of {path}] {what}", m)
        if m != loc and m[0] == loc[0] == "ok" and isinstance(m[1], bytes):
            self.fail(f"{what} on fd of {path}: {first_difference(m[1], loc[1])}")
        if m != loc:
            self.fail(f"{what} on fd of {path}: mount -> {m!r}, local -> {loc!r}")
        key = "fd-" + what.split()[0] + (" ok" if m[0] == "ok" else " " + str(m[1]))
        Shared.outcomes[key] = Shared.outcomes.get(key, 0) + 1
        return m

    def close_held(self) -> None:
        while self.held:
            mfd, lfd, _ = self.held.pop()
            os.close(mfd)
            os.close(lfd)

    @initialize(seed=S.integers(0, 2**32), n=LENGTHS)
    def start_tree(self, seed, n):
        """Start from a small tree so that most operations find something to work on."""
        data = payload(seed, n)
        self.trace.append(f"start: mkdir d, d/e; write a, d/a with {n} bytes")
        for r in (self.mroot, self.lroot):
            os.mkdir(os.path.join(r, "d"))
            os.mkdir(os.path.join(r, "d", "e"))
            for name in ("a", "d/a"):
                with open(os.path.join(r, name), "wb") as f:
                    f.write(data)

    # ------------------------------------------------------------ namespace

    @rule(path=DIRS)
    def mkdir(self, path):
        self.both(f"mkdir {path}", lambda r: os.mkdir(os.path.join(r, path), 0o755))

    @rule(path=DIRS)
    def rmdir(self, path):
        self.both(f"rmdir {path}", lambda r: os.rmdir(os.path.join(r, path)))

    @rule(path=S.sampled_from(PATHS))
    def unlink(self, path):
        self.both(f"unlink {path}", lambda r: os.unlink(os.path.join(r, path)))

    @rule(src=S.sampled_from(PATHS), dst=S.sampled_from(PATHS))
    def rename(self, src, dst):
        self.both(f"rename {src} -> {dst}", lambda r: os.rename(os.path.join(r, src), os.path.join(r, dst)))

    @rule(src=S.sampled_from(PATHS), dst=S.sampled_from(PATHS),
          flags=S.sampled_from([RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename2(self, src, dst, flags):
        name = "RENAME_NOREPLACE" if flags == RENAME_NOREPLACE else "RENAME_EXCHANGE"
        self.both(f"renameat2({name}) {src} -> {dst}",
                  lambda r: renameat2(os.path.join(r, src), os.path.join(r, dst), flags))

    @rule(src=S.sampled_from(PATHS), dst=S.sampled_from(PATHS))
    def link(self, src, dst):
        self.both(f"link {src} -> {dst}",
                  lambda r: os.link(os.path.join(r, src), os.path.join(r, dst), follow_symlinks=False))

    @rule(dest=TARGETS, path=LINKS)
    def symlink(self, dest, path):
        self.both(f"symlink {path} -> {dest}", lambda r: os.symlink(dest, os.path.join(r, path)))

    @rule(path=S.sampled_from(PATHS), mode=S.sampled_from([0o600, 0o644, 0o755, 0o4755, 0o2711]))
    def chmod(self, path, mode):
        self.both(f"chmod {path} {mode:o}", lambda r: os.chmod(os.path.join(r, path), mode))

    # ---------------------------------------------------------------- data

    @rule(path=S.sampled_from(PATHS), off=OFFSETS, n=LENGTHS, seed=S.integers(0, 2**32),
          how=S.sampled_from(["plain", "append", "trunc", "excl"]))
    def write(self, path, off, n, seed, how):
        data = payload(seed, n)
        flags = os.O_WRONLY | os.O_CREAT | {"plain": 0, "append": os.O_APPEND, "trunc": os.O_TRUNC,
                                            "excl": os.O_EXCL}[how]

        def go(r):
            fd = os.open(os.path.join(r, path), flags, 0o644)
            try:
                if how == "append":
                    return os.write(fd, data)
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        self.both(f"write({how}) {path} @{off} +{n}", go)

    @rule(path=S.sampled_from(PATHS), off=OFFSETS, n=LENGTHS, seed=S.integers(0, 2**32))
    def overwrite(self, path, off, n, seed):
        """The common case again (rules are drawn uniformly): create or write in place."""
        self.write(path, off, n, seed, "plain")

    @rule(path=S.sampled_from(["a", "b", "d/a"]), gap=S.integers(0, CHUNK + 10), n=LENGTHS,
          seed=S.integers(0, 2**32))
    def extend(self, path, gap, n, seed):
        """Write ``gap`` bytes past EOF of a file, leaving a hole."""
        data = payload(seed, n)

        def go(r):
            fd = os.open(os.path.join(r, path), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, data, os.fstat(fd).st_size + gap)
            finally:
                os.close(fd)

        self.both(f"extend {path} gap={gap} +{n}", go)

    @rule(path=S.sampled_from(PATHS), size=SIZES)
    def truncate(self, path, size):
        self.both(f"truncate {path} {size}", lambda r: os.truncate(os.path.join(r, path), size))

    @rule(path=S.sampled_from(PATHS), off=OFFSETS, n=S.integers(0, 400_000))
    def reopen(self, path, off, n):
        """Close-to-open: a fresh open reads the whole file, and a random range of it."""
        def go(r):
            with open(os.path.join(r, path), "rb") as f:
                whole = f.read()
                return whole, os.pread(f.fileno(), n, off)

        m = outcome(lambda: go(self.mroot))
        loc = outcome(lambda: go(self.lroot))
        if m[0] == loc[0] == "ok" and m != loc:
            raise AssertionError(f"reopen {path}: {first_difference(m[1][0], loc[1][0])}; "
                                 f"range @{off}+{n} equal: {m[1][1] == loc[1][1]}")
        assert m == loc, f"reopen {path}: mount -> {m!r}, local -> {loc!r}"

    # ------------------------------------------------------------- xattrs

    @rule(path=S.sampled_from(PATHS), name=S.sampled_from(XNAMES), value=S.binary(max_size=40),
          flags=S.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    def setxattr(self, path, name, value, flags):
        if not Shared.xattrs:
            return
        self.both(f"setxattr {path} {name} flags={flags}",
                  lambda r: os.setxattr(os.path.join(r, path), name, value, flags))

    @rule(path=S.sampled_from(PATHS), name=S.sampled_from(XNAMES))
    def getxattr(self, path, name):
        if not Shared.xattrs:
            return
        self.both(f"getxattr {path} {name}", lambda r: os.getxattr(os.path.join(r, path), name))

    @rule(path=S.sampled_from(PATHS), name=S.sampled_from(XNAMES))
    def removexattr(self, path, name):
        if not Shared.xattrs:
            return
        self.both(f"removexattr {path} {name}", lambda r: os.removexattr(os.path.join(r, path), name))

    # ------------------------------------------------------- open handles

    @precondition(lambda self: len(self.held) < 3)
    @rule(path=S.sampled_from(PATHS), create=S.booleans())
    def hold_open(self, path, create):
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        m = outcome(lambda: os.open(os.path.join(self.mroot, path), flags, 0o644))
        loc = outcome(lambda: os.open(os.path.join(self.lroot, path), flags, 0o644))
        if m[0] == "ok" and loc[0] == "ok":
            self.held.append((m[1], loc[1], path))
            self.trace.append(f"hold open {path} create={create} -> fd#{len(self.held) - 1}")
            return
        self.note(f"hold open {path} create={create}", m)
        for side in (m, loc):
            if side[0] == "ok":
                os.close(side[1])
        if m != loc:
            self.fail(f"open {path}: mount -> {m!r}, local -> {loc!r}")

    @precondition(lambda self: self.held)
    @rule(i=S.integers(0, 2), off=OFFSETS, n=LENGTHS, seed=S.integers(0, 2**32))
    def write_held(self, i, off, n, seed):
        data = payload(seed, n)
        self.both_fd(f"pwrite @{off} +{n}", i, lambda fd: os.pwrite(fd, data, off))

    @precondition(lambda self: self.held)
    @rule(i=S.integers(0, 2), off=OFFSETS, n=S.integers(0, 300_000))
    def read_held(self, i, off, n):
        self.both_fd(f"pread @{off} +{n}", i, lambda fd: os.pread(fd, n, off))

    @precondition(lambda self: self.held)
    @rule(i=S.integers(0, 2), size=SIZES)
    def ftruncate_held(self, i, size):
        self.both_fd(f"ftruncate {size}", i, lambda fd: os.ftruncate(fd, size))

    @precondition(lambda self: self.held)
    @rule(i=S.integers(0, 2))
    def fstat_held(self, i):
        def go(fd):
            s = os.fstat(fd)
            return s.st_size, s.st_nlink, st.S_IMODE(s.st_mode)
        self.both_fd("fstat", i, go)

    @precondition(lambda self: self.held)
    @rule(i=S.integers(0, 2))
    def fsync_held(self, i):
        self.both_fd("fsync", i, os.fsync)

    @precondition(lambda self: self.held)
    @rule(i=S.integers(0, 2))
    def close_one(self, i):
        mfd, lfd, path = self.held.pop(i % len(self.held))
        self.trace.append(f"close fd#{i % (len(self.held) + 1)} of {path}")
        os.close(mfd)
        os.close(lfd)

    # ------------------------------------------------------------- remount

    @precondition(lambda self: self.steps >= 6 and not self.remounted)
    @rule(coin=S.integers(0, 3))
    def remount(self, coin):
        """Rare: unmount (flushing everything) and mount the lake again."""
        if coin:
            return
        self.close_held()
        self.trace.append("close all held fds; unmount; mount")
        Shared.lake.remount()
        Shared.remounts += 1
        self.remounted = True

    # ------------------------------------------------------------ compare

    @invariant()
    def trees_equal(self):
        self.steps += 1
        Shared.steps += 1
        mmeta, mdata, mgroups = snapshot(self.mroot)
        lmeta, ldata, lgroups = snapshot(self.lroot)
        for key in sorted(set(mmeta) | set(lmeta)):
            if mmeta.get(key) != lmeta.get(key):
                self.fail(f"{key}: mount {mmeta.get(key)!r} != local {lmeta.get(key)!r}")
        for key in sorted(ldata):
            if mdata[key] != ldata[key]:
                self.fail(f"content of {key} (size {len(ldata[key])}): {first_difference(mdata[key], ldata[key])}")
        if mgroups != lgroups:
            self.fail(f"hard-link groups: mount {mgroups} != local {lgroups}")

    def teardown(self):
        self.close_held()


@needs_fuse
@pytest.mark.timeout(120)
def test_model(tmp_path):
    Shared.lake = LiveLake(tmp_path / "lake", format_args=("--chunk-size", "256K"))
    Shared.local = tmp_path / "local"
    Shared.local.mkdir()
    Shared.examples = Shared.remounts = Shared.steps = 0
    Shared.outcomes = {}
    try:
        os.setxattr(Shared.local, "user.probe", b"1")
        os.removexattr(Shared.local, "user.probe")
        Shared.xattrs = True
    except OSError:  # e.g. tmpfs without user xattrs: the model cannot judge them
        Shared.xattrs = False
    try:
        Shared.lake.mount()
        run_state_machine_as_test(
            LakeModel,
            # No shrinking: a timing-dependent failure does not replay (Hypothesis then reports
            # it as flaky), and every failure message carries the example's whole operation trace.
            settings=settings(max_examples=40, stateful_step_count=30, deadline=None, database=None,
                              phases=[Phase.explicit, Phase.generate],
                              suppress_health_check=list(HealthCheck), print_blob=True))
        print(f"examples={Shared.examples} steps={Shared.steps} remounts={Shared.remounts}")
        print(sorted(Shared.outcomes.items()))
        ok = Shared.outcomes.get
        # the run must have exercised the interesting paths, not just failed lookups
        assert ok("write(plain) ok", 0) + ok("extend ok", 0) >= 20, Shared.outcomes
        namespace_ok = sum(v for k, v in Shared.outcomes.items() if k.endswith(" ok") and k.split()[0].split("(")[0]
                           in ("mkdir", "rmdir", "unlink", "rename", "renameat2", "link", "symlink"))
        assert namespace_ok >= 10, Shared.outcomes
        assert sum(v for k, v in Shared.outcomes.items() if k.startswith("fd-") and k.endswith(" ok")) >= 1, \
            Shared.outcomes
        # Every example's final tree must survive one more unmount + mount.
        Shared.lake.remount()
        for i in range(1, Shared.examples + 1):
            m, loc = snapshot(str(Shared.lake.mnt / f"ex{i}")), snapshot(str(Shared.local / f"ex{i}"))
            assert m[0] == loc[0], f"ex{i} after the final remount: {m[0]} != {loc[0]}"
            for key in loc[1]:
                assert m[1][key] == loc[1][key], \
                    f"ex{i}/{key} after the final remount: {first_difference(m[1][key], loc[1][key])}"
            assert m[2] == loc[2], f"ex{i}: hard-link groups after the final remount"
        pid = Shared.lake.pid()
        assert pid and _alive(pid), "daemon died during the run"
        Shared.lake.umount()
        log = (Shared.lake.data / "mount.log").read_text()
        assert "Traceback" not in log and "unexpected error" not in log, log[-6000:]
    finally:
        Shared.lake.teardown()
        Shared.lake = None
        assert not is_mountpoint(tmp_path / "lake" / "mnt")


@needs_fuse
@pytest.mark.timeout(120)
def test_read_racing_a_commit_sees_written_bytes(make_live):
    """A read must not lose bytes whose seal commits while the read is fetching other chunks.

    Found by ``test_model``: a file has committed extents in many small chunks (each pwrite
    is fsynced), then a whole chunk's worth of bytes is written, which starts a seal without
    waiting for it. A read of the whole file from another descriptor right away fetches the
    small chunks (awaiting worker threads); if the seal commits in that window, its bytes are
    neither in the extents the read looked up nor in the writer's overlay any more, and the
    read returns zeros (or the file's older bytes) for them. Each iteration hits the window
    with a good chance (~40 % here); 30 make missing it vanishingly unlikely.
    """
    lake = make_live("--chunk-size", "256K")
    rng = random.Random(7)
    bad = []
    for it in range(30):
        path = lake.mnt / f"f{it}"
        expect = bytearray(2 * CHUNK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for i in range(16):
                piece = rng.randbytes(100)
                os.pwrite(fd, piece, i * 8192)
                expect[i * 8192:i * 8192 + 100] = piece
                os.fsync(fd)
            big = rng.randbytes(CHUNK)
            os.pwrite(fd, big, CHUNK)  # a whole chunk: its seal starts now, in the background
            expect[CHUNK:] = big
            got = path.read_bytes()  # a new descriptor: the daemon serves the read
        finally:
            os.close(fd)
        if got != bytes(expect):
            bad.append(f"iteration {it}: {first_difference(got, bytes(expect))}, "
                       f"{sum(1 for a, b in zip(got, expect, strict=False) if a != b)} bytes differ")
        assert path.read_bytes() == bytes(expect), "wrong bytes even after close (committed)"
    assert not bad, "reads racing a commit returned zeros for written bytes:\n" + "\n".join(bad)


@needs_fuse
@pytest.mark.timeout(60)
def test_open_o_trunc_truncates_buffered_data(live):
    """open(O_TRUNC) must empty a file whose bytes are still buffered in the daemon.

    Found by ``test_model``: closed files wait up to ``--pack-delay`` to be packed, and
    during that time the committed size is 0, so ``VFS.open`` (which tests the committed
    ``inode.size``) skipped the truncate. Rewriting a just-written file with shorter
    content -- ``echo x > f`` twice -- then left the old tail in place.
    """
    path = live.mnt / "f"
    path.write_bytes(b"A" * 1000)  # closed: buffered for up to the pack delay
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0, "O_TRUNC left the buffered bytes"
        os.write(fd, b"B" * 10)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"B" * 10
    path.write_bytes(b"C" * 5)  # Path.write_bytes opens with O_TRUNC as well
    assert path.read_bytes() == b"C" * 5
    live.remount()
    assert path.read_bytes() == b"C" * 5
