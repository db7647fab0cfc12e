"""POSIX edge cases of issue 11: truncate times over buffered bytes, st_blocks of sparse files,
POSIX ACLs (refused, since nothing here would enforce them).

Live-mount tests go through the ``make_live``/``live`` fixtures (always unmounted); the state
machine and the VFS are also driven directly where no kernel is needed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as st
import subprocess
import time

import pytest
import trio

from lakefs_fuse import errors as E
from lakefs_fuse.config import LakeConfig, MountConfig
from lakefs_fuse.lake.lake import Lake, format_lake
from lakefs_fuse.meta import schema as S
from lakefs_fuse.meta.commands import Setxattr
from lakefs_fuse.meta.schema import ROOT_INO, Inode
from lakefs_fuse.meta.state import StateMachine
from lakefs_fuse.mount.vfs import VFS, Ctx

from conftest import needs_fuse

pytestmark = pytest.mark.timeout(240)

CS = 1 << 20
CTX = Ctx(0, 0, 1, 0o022)
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
#: The xattr form of user::rw- group::r-- other::r-- (version 2; tag, perm, id per entry).
MINIMAL_ACL = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000400ffffffff")


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


# ------------------------------------------------------------ truncate times (point 6)


def _assert_times_since(s: os.stat_result, before: int, what: str) -> None:
    assert s.st_mtime_ns >= before, f"{what}: mtime {s.st_mtime_ns} is older than the truncate ({before})"
    assert s.st_ctime_ns >= before, f"{what}: ctime {s.st_ctime_ns} is older than the truncate ({before})"


@needs_fuse
@pytest.mark.parametrize("pack_delay", ["0", "2"])
def test_shrinking_truncate_of_buffered_bytes_sets_mtime_and_ctime(make_live, pack_delay):
    lake = make_live(mount=False)
    lake.mount("--pack-delay", pack_delay)
    m = lake.mnt

    # ftruncate on a descriptor whose bytes are all still buffered: to a shorter size, then to 0
    fd = os.open(m / "a", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"x" * 10000)
        before = time.time_ns()
        os.ftruncate(fd, 100)
        s = os.fstat(fd)
        assert s.st_size == 100
        _assert_times_since(s, before, "ftruncate to 100")
        os.write(fd, b"y" * 5000)
        before = time.time_ns()
        os.ftruncate(fd, 0)
        s = os.fstat(fd)
        assert s.st_size == 0
        _assert_times_since(s, before, "ftruncate to 0")
    finally:
        os.close(fd)
    a_truncated = before
    _assert_times_since(os.stat(m / "a"), a_truncated, "stat after close")

    # closed files whose bytes may still wait to be packed (--pack-delay 2)
    truncated = {}
    for name, shrink in (("b", lambda p: os.truncate(p, 10)),
                         ("c", lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))),
                         ("d", lambda p: subprocess.run(["truncate", "-s", "7", str(p)], check=True))):
        p = m / name
        p.write_bytes(b"z" * 20000)
        before = time.time_ns()
        shrink(p)
        s = os.stat(p)
        assert s.st_size in (10, 0, 7), name
        _assert_times_since(s, before, f"truncate of {name}")
        truncated[name] = before

    # after everything is committed the times still stand (no later commit moves them back)
    fd = os.open(m, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    lake.remount()
    _assert_times_since(os.stat(m / "a"), a_truncated, "a after remount")
    for name, before in truncated.items():
        _assert_times_since(os.stat(m / name), before, f"{name} after remount")


def test_ftruncate_keeps_mtime_monotonic_in_process(tmp_path):
    """The same rule on the VFS directly (no kernel): a truncate that changes the size readers see
    sets mtime/ctime to the time of the truncate, also when the bytes were never committed."""
    data = tmp_path / "lake"
    format_lake(data, LakeConfig(ec_k=4, ec_m=2, chunk_size=CS))

    async def body(vfs: VFS):
        fh, inode, _ = await vfs.create(ROOT_INO, b"f", 0o644, os.O_RDWR, CTX)
        created = inode.mtime_ns
        await vfs.write(fh, 0, b"q" * 3000)
        before = time.time_ns()
        after = await vfs.setattr(inode.ino, {"size": 0}, CTX)
        assert after.size == 0
        assert after.mtime_ns >= before > created and after.ctime_ns >= before
        await vfs.write(fh, 0, b"r" * 3000)
        before = time.time_ns()
        after = await vfs.setattr(inode.ino, {"size": 1000}, CTX)
        assert after.size == 1000 and after.mtime_ns >= before and after.ctime_ns >= before
        # the same size again changes nothing but ctime (POSIX: only a size change sets mtime)
        same = await vfs.setattr(inode.ino, {"size": 1000}, CTX)
        assert same.mtime_ns == after.mtime_ns
        await vfs.release(fh)

    _run_vfs(tmp_path, data, body)


def _run_vfs(tmp_path, data, body, *, read_only: bool = False):
    async def session():
        lake = Lake.open(data)
        cfg = MountConfig(mountpoint=tmp_path, data_dir=data, pack_delay=2.0, read_only=read_only)
        vfs = VFS(lake.meta, lake.chunks, cfg, chunk_size=CS, gc_grace=0)
        try:
            async with trio.open_nursery() as nursery:
                await vfs.start(nursery)
                with trio.fail_after(60):
                    await body(vfs)
                await vfs.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            lake.close()

    trio.run(session)


# ------------------------------------------------------------------ st_blocks (point 7)


@pytest.fixture
def sm(tmp_path):
    s = StateMachine(str(tmp_path / "meta"), create=True)
    s.apply(["format", {"ec_k": 4, "ec_m": 2, "chunk_size": CS, "min_shard": 65536}, 1, 0, 0])
    yield s
    s.close()


def _chunk(cid, length=CS):
    return [cid, length, 4, 2, length // 4, [0, 1, 2, 3, 4, 5], [0] * 6]


def _extent_bytes(sm, ino) -> int:
    return sum(e.length for e in sm.extents(ino, 0, 1 << 40))


def test_stored_bytes_follow_commits_overwrites_and_truncates(sm):
    f = sm.apply(["mknod", ROOT_INO, b"f", st.S_IFREG | 0o644, 0, 0, 0, 10])[0]
    assert sm.getattr(f).stored == 0 and sm.getattr(f).blocks == 0
    sm.apply(["commit", _chunk(1), [[f, 0, 4096, 1, 0], [f, 3 * CS, 4096, 1, 4096]], {}, 20])
    assert sm.getattr(f).size == 3 * CS + 4096
    assert sm.getattr(f).stored == 8192 == _extent_bytes(sm, f) and sm.getattr(f).blocks == 16
    # an overwrite inside stored bytes adds nothing; one that runs into a hole adds the new part
    sm.apply(["commit", _chunk(2), [[f, 2048, 4096, 2, 0]], {}, 21])
    assert sm.getattr(f).stored == 8192 + 2048 == _extent_bytes(sm, f)
    # across a file-index boundary
    sm.apply(["commit", _chunk(3, 2 * CS), [[f, CS - 100, 300, 3, 0]], {}, 22])
    assert sm.getattr(f).stored == 8192 + 2048 + 300 == _extent_bytes(sm, f)
    sm.apply(["setattr", f, {"size": CS + 50}, 23])
    assert sm.getattr(f).stored == 6144 + 150 == _extent_bytes(sm, f)
    assert sm.getattr(f).blocks == (6144 + 150 + 511) // 512
    sm.apply(["setattr", f, {"size": 10 * CS}, 24])  # growing adds a hole, not bytes
    assert sm.getattr(f).stored == 6144 + 150
    # fsck dropping an extent whose chunk is gone: the range becomes a hole
    sm.apply(["commit", None, [[f, 5 * CS, 700, 77, 0]], {}, 25])  # chunk 77 has no record
    assert sm.getattr(f).stored == 6144 + 150 + 700
    assert sm.apply(["fsck", [["drop_extent", f, 5, 5 * CS]], 26]) == 1
    assert sm.getattr(f).stored == 6144 + 150 == _extent_bytes(sm, f)


def test_inode_record_without_the_counter_falls_back_then_upgrades(sm):
    f = sm.apply(["mknod", ROOT_INO, b"old", st.S_IFREG | 0o644, 0, 0, 0, 10])[0]
    sm.apply(["commit", _chunk(1), [[f, 0, 1000, 1, 0]], {}, 20])
    sm.apply(["setattr", f, {"size": 5 * CS}, 21])
    # rewrite the inode as a lake made before the counter existed wrote it (ten fields)
    inode = sm.getattr(f)
    sm.db[S.inode_key(f)] = S.pack([inode.mode, inode.nlink, inode.uid, inode.gid, inode.size,
                                    inode.atime_ns, inode.mtime_ns, inode.ctime_ns, inode.rdev, inode.parent])
    old = sm.getattr(f)
    assert old.blocks == (5 * CS + 511) // 512  # unknown: counted from the size, as before
    sm.apply(["setattr", f, {"mode": 0o600}, 22])  # a command that does not touch extents keeps it unknown
    assert sm.getattr(f).blocks == (5 * CS + 511) // 512
    sm.apply(["commit", _chunk(2), [[f, 4000, 1000, 2, 0]], {}, 23])  # one that does counts them
    assert sm.getattr(f).stored == 2000 == _extent_bytes(sm, f)
    assert sm.getattr(f).blocks == 4
    # an inode with an EC profile (eleven fields) keeps it through the upgrade
    inode = sm.getattr(f)
    inode.ec = 2 << 8 | 1
    assert Inode.from_bytes(f, inode.to_bytes()).ec == inode.ec
    assert Inode.from_bytes(f, inode.to_bytes()).stored == 2000


@needs_fuse
def test_st_blocks_counts_stored_bytes_of_a_sparse_file(live):
    p = live.mnt / "sparse"
    with open(p, "wb") as f:
        f.write(b"a" * 4096)
        f.seek(4 << 20)
        f.write(b"b" * 4096)
        f.seek(8_000_000 - 4096)
        f.write(b"c" * 4096)
        f.flush()
        assert os.fstat(f.fileno()).st_blocks == 24  # still buffered
        os.fsync(f.fileno())
        assert os.fstat(f.fileno()).st_size == 8_000_000
        assert os.fstat(f.fileno()).st_blocks == 24  # committed
    with open(p, "r+b") as f:
        f.write(b"A" * 100)  # inside stored bytes
        f.seek(8192)
        f.write(b"z" * 512)  # into a hole
        f.flush()
        os.fsync(f.fileno())
    assert os.stat(p).st_blocks == 25
    os.truncate(p, (4 << 20) + 1024)
    assert os.stat(p).st_blocks == (4096 + 512 + 1024) // 512
    live.remount()
    assert os.stat(p).st_blocks == 11
    dense = live.mnt / "dense"
    dense.write_bytes(b"d" * 10000)
    assert os.stat(dense).st_blocks == 20


# ---------------------------------------------------------------------- ACLs (point 22)


def test_posix_acls_are_refused_and_old_ones_hidden(tmp_path):
    data = tmp_path / "lake"
    format_lake(data, LakeConfig(ec_k=4, ec_m=2, chunk_size=CS))
    acl = MINIMAL_ACL

    async def body(vfs: VFS):
        fh, inode, _ = await vfs.create(ROOT_INO, b"f", 0o644, os.O_RDWR, CTX)
        await vfs.release(fh)
        for name in (ACL_ACCESS.encode(), ACL_DEFAULT.encode()):
            with pytest.raises(E.LakeError) as exc:
                await vfs.setxattr(inode.ino, name, acl, CTX)
            assert exc.value.errno == errno.EOPNOTSUPP
        await vfs.setxattr(inode.ino, b"user.k", b"v", CTX)  # other names are unaffected
        # an ACL a lake stored before this rule is not shown (it never had an effect)
        await vfs.meta.apply(Setxattr(inode.ino, ACL_ACCESS.encode(), acl, 0, 1))
        with pytest.raises(E.NoData):
            await vfs.getxattr(inode.ino, ACL_ACCESS.encode())
        assert await vfs.listxattr(inode.ino) == [b"user.k"]
        await vfs.removexattr(inode.ino, ACL_ACCESS.encode(), CTX)  # but it can be removed

    _run_vfs(tmp_path, data, body)


@needs_fuse
@pytest.mark.skipif(not shutil.which("setfacl"), reason="needs setfacl/getfacl (Debian package acl)")
def test_setfacl_says_not_supported_and_getfacl_shows_the_mode(live):
    m = live.mnt
    f = m / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o640)
    res = subprocess.run(["setfacl", "-m", "u:1234:rw", str(f)], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "Operation not supported" in res.stderr, res
    assert st.S_IMODE(os.stat(f).st_mode) == 0o640
    os.mkdir(m / "d")
    res = subprocess.run(["setfacl", "-d", "-m", "g:1234:rx", str(m / "d")], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode != 0 and "Operation not supported" in res.stderr, res
    assert errno_of(os.setxattr, f, ACL_ACCESS, MINIMAL_ACL) == errno.EOPNOTSUPP
    res = subprocess.run(["getfacl", "-c", str(f)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res
    assert res.stdout.split() == ["user::rw-", "group::r--", "other::---"]
    (m / "d" / "new").write_bytes(b"")
    assert ACL_ACCESS not in os.listxattr(m / "d" / "new")
