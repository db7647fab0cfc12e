"""POSIX behaviour through a real mount: errnos, rename flags, links, holes, O_DIRECT, xattrs."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import socket
import stat as st
import subprocess
import sys

import pytest

from conftest import needs_fuse

pytestmark = [needs_fuse, pytest.mark.timeout(180)]

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return 0


def test_files_dirs_and_errnos(live):
    m = live.mnt
    (m / "f").write_bytes(b"abc")
    os.mkdir(m / "d")
    assert errno_of(os.mkdir, m / "d") == errno.EEXIST
    assert errno_of(os.stat, m / "missing") == errno.ENOENT
    assert errno_of(os.rmdir, m / "f") == errno.ENOTDIR
    assert errno_of(os.unlink, m / "d") == errno.EISDIR
    assert errno_of(os.mkdir, m / "f" / "x") == errno.ENOTDIR
    assert errno_of(open, m / ("n" * 256), "w") == errno.ENAMETOOLONG
    (m / ("n" * 255)).write_bytes(b"ok")
    (m / "d" / "inner").write_bytes(b"")
    assert errno_of(os.rmdir, m / "d") == errno.ENOTEMPTY
    assert errno_of(open, m / "d", "w") == errno.EISDIR
    assert errno_of(os.link, m / "d", m / "dl") == errno.EPERM
    os.symlink("loop2", m / "loop1")
    os.symlink("loop1", m / "loop2")
    assert errno_of(os.stat, m / "loop1") == errno.ELOOP
    assert errno_of(os.truncate, m / "f", -1) == errno.EINVAL
    assert os.stat(m / "d").st_nlink == 2 and os.stat(m).st_nlink == 3


def test_rename_noreplace_exchange_and_nlink(live):
    m = live.mnt
    (m / "a").write_bytes(b"A")
    (m / "b").write_bytes(b"B")
    assert errno_of(renameat2, m / "a", m / "b", 1) == errno.EEXIST  # RENAME_NOREPLACE
    renameat2(m / "a", m / "b", 2)  # RENAME_EXCHANGE
    assert (m / "a").read_bytes() == b"B" and (m / "b").read_bytes() == b"A"
    os.mkdir(m / "d1")
    os.mkdir(m / "d2")
    os.mkdir(m / "d1" / "sub")
    os.rename(m / "d1" / "sub", m / "d2" / "sub")
    assert os.stat(m / "d1").st_nlink == 2 and os.stat(m / "d2").st_nlink == 3
    os.mkdir(m / "empty")
    os.rename(m / "d1", m / "empty")  # over an empty dir
    assert not (m / "d1").exists() and (m / "empty").is_dir()
    assert errno_of(os.rename, m / "d2", m / "d2" / "sub" / "x") == errno.EINVAL
    ctime = os.stat(m / "a").st_ctime_ns
    os.rename(m / "a", m / "a2")
    assert os.stat(m / "a2").st_ctime_ns >= ctime


def test_hard_links_and_unlinked_open_file(live):
    m = live.mnt
    data = os.urandom(300_000)
    (m / "f").write_bytes(data)
    os.link(m / "f", m / "g")
    assert os.stat(m / "f").st_nlink == 2
    fd = os.open(m / "f", os.O_RDWR)
    try:
        os.unlink(m / "f")
        os.unlink(m / "g")
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data  # data stays until the last close
        os.pwrite(fd, b"more", len(data))
        os.fsync(fd)
        assert os.pread(fd, 4, len(data)) == b"more"
    finally:
        os.close(fd)
    assert sorted(os.listdir(m)) == []


def test_holes_truncate_append_and_overwrite(live):
    m = live.mnt
    p = m / "sparse"
    with open(p, "wb") as f:
        f.seek(10 * 1024 * 1024)
        f.write(b"end")
    assert os.stat(p).st_size == 10 * 1024 * 1024 + 3
    with open(p, "rb") as f:
        assert f.read(4096) == b"\0" * 4096
        f.seek(10 * 1024 * 1024 - 2)
        assert f.read() == b"\0\0end"
    os.truncate(p, 5)
    assert p.read_bytes() == b"\0" * 5
    os.truncate(p, 100)
    assert p.read_bytes() == b"\0" * 100
    with open(p, "ab") as f:
        f.write(b"tail")
    assert p.read_bytes()[-4:] == b"tail" and os.stat(p).st_size == 104
    with open(p, "r+b") as f:
        f.seek(2)
        f.write(b"XY")
    assert p.read_bytes()[:6] == b"\0\0XY\0\0"
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert p.read_bytes() == b"new"


def test_big_file_roundtrip_survives_remount(live):
    m = live.mnt
    data = os.urandom(9 * 1024 * 1024 + 777)
    (m / "big").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    live.remount()
    assert hashlib.sha256((m / "big").read_bytes()).hexdigest() == digest
    with open(m / "big", "rb") as f:  # random-access reads
        for off in (0, 4 * 1024 * 1024 - 3, 8 * 1024 * 1024 + 100):
            f.seek(off)
            assert f.read(5000) == data[off:off + 5000]


def test_o_direct_reads_and_writes(live):
    p = live.mnt / "direct"
    buf = mmap.mmap(-1, 1 << 20)
    payload = os.urandom(1 << 20)
    buf.write(payload)
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    try:
        assert os.pwritev(fd, [buf], 0) == 1 << 20
        out = mmap.mmap(-1, 1 << 20)
        assert os.preadv(fd, [out], 0) == 1 << 20
        assert bytes(out) == payload
        os.pwrite(fd, b"odd", 3)  # unaligned: served by direct_io, must not kill the daemon
    finally:
        os.close(fd)
    assert p.read_bytes()[:6] == payload[:3] + b"odd"


def test_special_files_symlinks_xattrs(live):
    m = live.mnt
    os.mkfifo(m / "fifo")
    assert st.S_ISFIFO(os.stat(m / "fifo").st_mode)
    os.mknod(m / "chr", 0o600 | st.S_IFCHR, os.makedev(1, 3))
    assert os.stat(m / "chr").st_rdev == os.makedev(1, 3)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(m / "sock"))
    finally:
        s.close()
    assert st.S_ISSOCK(os.stat(m / "sock").st_mode)
    os.symlink("target/path", m / "ln")
    assert os.readlink(m / "ln") == "target/path"
    (m / "x").write_bytes(b"")
    os.setxattr(m / "x", "user.k", b"v1")
    assert os.getxattr(m / "x", "user.k") == b"v1"
    assert errno_of(os.setxattr, m / "x", "user.k", b"v2", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, m / "x", "user.n", b"v", os.XATTR_REPLACE) == errno.ENODATA
    assert os.listxattr(m / "x") == ["user.k"]
    os.removexattr(m / "x", "user.k")
    assert errno_of(os.getxattr, m / "x", "user.k") == errno.ENODATA


def test_chmod_chown_utimens_and_permissions(make_live):
    live = make_live(mount=False)
    live.mount("--allow-other")
    m = live.mnt
    p = m / "f"
    p.write_bytes(b"secret")
    os.chmod(p, 0o600)
    os.chown(p, 1234, 1234)
    s = os.stat(p)
    assert st.S_IMODE(s.st_mode) == 0o600 and (s.st_uid, s.st_gid) == (1234, 1234)
    os.utime(p, ns=(1_000_000_000, 2_000_000_000))
    s = os.stat(p)
    assert (s.st_atime_ns, s.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    os.utime(p)  # UTIME_NOW
    assert os.stat(p).st_mtime_ns > 2_000_000_000
    os.chmod(m, 0o755)
    # default_permissions: another user is refused by the kernel (EACCES)
    # The directory is opened as root (pytest's tmp dirs are 0700), then the checks inside the
    # mount run as an unprivileged user.
    code = ("import os,sys\nd = os.open(sys.argv[1], os.O_RDONLY)\nos.setgid(4321); os.setuid(4321)\n"
            "try:\n os.close(os.open('f', os.O_RDONLY, dir_fd=d))\nexcept PermissionError: sys.exit(13)\n"
            "try:\n os.open('new', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d)\n"
            "except PermissionError: sys.exit(14)\nsys.exit(0)")
    r = subprocess.run([sys.executable, "-c", code, str(m)], timeout=30)
    assert r.returncode == 13
    os.chmod(p, 0o644)
    r = subprocess.run([sys.executable, "-c", code, str(m)], timeout=30)
    assert r.returncode == 14  # may read now, but may not create in a 0755 root-owned dir


def test_readdir_stable_while_directory_changes(live):
    d = live.mnt / "d"
    os.mkdir(d)
    names = [f"f{i:04d}" for i in range(600)]
    for n in names:
        (d / n).write_bytes(b"")
    seen = []
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 10:  # delete some not yet seen, add new ones: nothing seen twice
                for n in names[300:310]:
                    os.unlink(d / n)
                (d / "zzz-new").write_bytes(b"")
    assert len(seen) == len(set(seen))
    # POSIX leaves entries removed/added during the scan unspecified; everything else once
    assert set(names) - set(names[300:310]) <= set(seen)
    assert len(os.listdir(d)) == 591


def test_statfs_reports_capacity(live):
    s = os.statvfs(live.mnt)
    assert s.f_blocks > 0 and 0 < s.f_bavail <= s.f_blocks and s.f_namemax == 255
    local = os.statvfs(live.data)
    # 4+2: usable space is about 4/6 of the underlying file system's
    assert s.f_blocks * s.f_frsize < local.f_blocks * local.f_frsize


def test_small_files_written_together_are_packed(live):
    m = live.mnt
    fds = [os.open(m / f"s{i}", os.O_CREAT | os.O_WRONLY, 0o644) for i in range(20)]
    try:
        for i, fd in enumerate(fds):
            os.write(fd, bytes([i]) * 50_000)
    finally:
        for fd in fds:
            os.close(fd)
    for i in range(20):
        assert (m / f"s{i}").read_bytes() == bytes([i]) * 50_000
    import json

    from conftest import cli
    r = cli("ls", str(m), "--json", env=live.env, check=True)
    rows = json.loads(r.stdout)
    assert len(rows) == 20
    # files closed together share chunks: far fewer chunk files than files
    data_shards = sum(1 for _ in (live.data / "peers").rglob("*.0"))
    assert data_shards < 10, data_shards


def test_fsync_and_keep_cache_second_read(live):
    p = live.mnt / "f"
    data = os.urandom(2 * 1024 * 1024)
    with open(p, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert p.read_bytes() == data
    assert p.read_bytes() == data  # served from the page cache (keep_cache), same bytes


def test_enospc_when_peers_are_full(make_live, tmp_path):
    """Peers on a small tmpfs: writing past its size fails with ENOSPC, committed files stay intact."""
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], check=True)
    try:
        peers = sum((["--peer", str(disk / f"p{i}")] for i in range(6)), [])
        live = make_live("--chunk-size", "1M", *peers)
        try:
            keep = os.urandom(4 * 1024 * 1024)
            with open(live.mnt / "keep", "wb") as f:
                f.write(keep)
                os.fsync(f.fileno())
            failed = None
            try:
                with open(live.mnt / "fill", "wb") as f:
                    for _ in range(80):  # 80 MiB of data cannot fit 48 MiB of disk at 4+2
                        f.write(os.urandom(1024 * 1024))
                    os.fsync(f.fileno())
            except OSError as exc:
                failed = exc.errno
            assert failed == errno.ENOSPC
            assert (live.mnt / "keep").read_bytes() == keep
            assert os.statvfs(live.mnt).f_bavail * os.statvfs(live.mnt).f_frsize < 8 * 1024 * 1024
            os.unlink(live.mnt / "fill")
        finally:
            live.teardown()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
