"""Crash consistency: kill -9 the mount daemon in the middle of a large copy.

What a daemon crash (the process, not the machine) must leave behind:

* every file that was fsynced before the crash is intact (sha256);
* a file that was closed (not fsynced) may wait ``--pack-delay`` (2 s) in the daemon to be
  packed with other small files, so a crash right after close() may lose it; once its
  commit shows in the metadata (read through a read-only view while the daemon runs) it
  must survive a process crash, which loses nothing the OS already has. Files closed just
  before the crash must be intact, empty or a correct prefix -- never garbage;
* the file being copied when the daemon died is absent, or shorter than the source and
  never wrong: its bytes equal the source's at the same offsets. Seals of one file commit
  in order (each waits for the previous one), so what survives is a prefix of the committed
  seals -- no holes -- and the test holds the file to that: a zero byte where the source has
  data is corruption, not an allowed hole;
* the metadata opens cleanly (``lakefs-fuse ls --data`` / ``stat --data`` after unmount), and
  every committed chunk of the surviving files has all its shards;
* the lake takes fresh writes after the remount.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from lakefs_fuse.lake.lake import Lake

from conftest import _alive, cli, needs_fuse, wait_for, write_synced_file

MiB = 1 << 20

COPIER = r"""
import os, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as s, open(dst, "wb") as d:
    while True:
        buf = s.read(1 << 20)
        if not buf:
            break
        d.write(buf)
print("copy finished", flush=True)
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def committed_sizes(data_dir, names) -> dict[str, int]:
    """Sizes as the metadata on disk has them (a read-only view beside the running daemon)."""
    lake = Lake.open(data_dir, read_only=True)
    try:
        out = {}
        for name in names:
            try:
                out[name] = lake.sm.lookup(1, name.encode()).size
            except Exception:
                out[name] = None
        return out
    finally:
        lake.close()


def assert_prefix(name: str, got: bytes, want: bytes) -> None:
    assert len(got) <= len(want), f"{name}: {len(got)} bytes, longer than the {len(want)} written"
    if got != want[:len(got)]:
        i = next(i for i in range(len(got)) if got[i] != want[i])
        raise AssertionError(f"{name}: garbage at offset {i} of {len(got)} "
                             f"({got[i:i + 4096].count(0)}/4096 zero bytes there)")


@needs_fuse
@pytest.mark.timeout(120)
def test_kill9_during_large_copy(live, tmp_path):
    rng = random.Random(1234)
    synced = {f"synced{i}": rng.randbytes(8 * MiB) for i in range(3)}
    closed = {f"closed{i}": rng.randbytes(MiB + 1000 * i) for i in range(3)}
    for name, data in synced.items():
        write_synced_file(live.mnt / name, data)
    for name, data in closed.items():
        (live.mnt / name).write_bytes(data)  # closed, never fsynced
    # the pack delay bounds how long closed data waits: it must reach the metadata soon
    want = {name: len(data) for name, data in closed.items()}
    wait_for(lambda: committed_sizes(live.data, closed) == want, 20, "closed files to be committed")
    digests = {name: sha(data) for name, data in {**synced, **closed}.items()}

    src = tmp_path / "source.bin"
    with open(src, "wb") as f:
        for _ in range(25):
            f.write(rng.randbytes(8 * MiB))  # 200 MiB of random bytes
    src_size = src.stat().st_size

    big = live.mnt / "big"
    copier = subprocess.Popen([sys.executable, "-c", COPIER, str(src), str(big)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: big.exists() and big.stat().st_size >= 40 * MiB, 60, "copy to reach 40 MiB")
        assert copier.poll() is None, "the copy finished before the crash: nothing was tested"
        size_at_kill = big.stat().st_size
        live.kill9()
        try:
            copier.wait(timeout=30)
        except subprocess.TimeoutExpired:
            copier.kill()
            copier.wait(timeout=10)
    finally:
        if copier.poll() is None:
            copier.kill()
            copier.wait(timeout=10)
    assert copier.returncode != 0, "the copier should have seen the mount die"

    live.mount()
    for name, digest in digests.items():
        data = (live.mnt / name).read_bytes()
        assert sha(data) == digest, f"{name} ({'fsynced' if name in synced else 'closed, committed'}) " \
                                    f"changed by the crash: {len(data)} bytes, expected {len((synced | closed)[name])}"

    names = sorted(os.listdir(live.mnt))
    assert set(names) <= set(digests) | {"big"}, names
    observed = "absent"
    if "big" in names:
        size = big.stat().st_size
        assert size <= src_size, f"big is longer ({size}) than its source ({src_size})"
        with open(big, "rb") as got, open(src, "rb") as want:
            pos = 0
            while pos < size:
                a, b = got.read(4 * MiB), want.read(4 * MiB)
                a_len = len(a)
                assert a_len == min(4 * MiB, size - pos), f"short read at {pos}: {a_len}"
                if a != b[:a_len]:
                    i = next(i for i in range(a_len) if a[i] != b[i])
                    zeros = a[i:i + 4096].count(0)
                    raise AssertionError(f"big is corrupt at offset {pos + i} (size {size}, {zeros}/4096 "
                                         f"zero bytes there; {size_at_kill} bytes were visible at the kill)")
                pos += a_len
        observed = f"{size} of {src_size} bytes, a correct prefix ({size_at_kill} visible at the kill)"
    print(f"after kill -9: big is {observed}")

    # the lake takes new writes after the crash
    fresh = rng.randbytes(5 * MiB + 17)
    write_synced_file(live.mnt / "fresh", fresh)
    assert (live.mnt / "fresh").read_bytes() == fresh
    live.umount()

    # metadata opens cleanly without a mount, and every surviving chunk has all its shards
    res = cli("ls", "/", "--data", str(live.data), "--json", "-l", env=live.env)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == set(names) | {"fresh"}, rows.keys()
    for name, row in rows.items():
        assert row["health"] == "ok", f"{name}: {row['health']}"
    assert rows["fresh"]["size"] == len(fresh)
    for name in digests:
        assert rows[name]["size"] == len((synced | closed)[name])

    live.mount()
    assert (live.mnt / "fresh").read_bytes() == fresh
    assert sha((live.mnt / "synced0").read_bytes()) == digests["synced0"]
    pid = live.pid()
    assert pid and _alive(pid)


@needs_fuse
@pytest.mark.timeout(120)
def test_kill9_with_unflushed_writes_then_orphans(live):
    """A crash with a file open, unlinked-but-open and dirty: the remount starts clean.

    An unlinked file still open at the crash is an orphan in the metadata; the next mount
    must release it (its inode and chunks), and everything that was closed stays readable.
    """
    keep = os.urandom(3 * MiB)
    write_synced_file(live.mnt / "keep", keep)
    just_closed = {f"just{i}": os.urandom(50_000 * (i + 1)) for i in range(4)}
    for name, data in just_closed.items():
        (live.mnt / name).write_bytes(data)  # closed right before the crash, never fsynced
    doomed = live.mnt / "doomed"
    doomed.write_bytes(os.urandom(2 * MiB))
    fd_doomed = os.open(doomed, os.O_RDWR)
    os.unlink(doomed)  # open but unlinked: an orphan until closed
    fd_dirty = os.open(live.mnt / "dirty", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd_dirty, b"d" * 100_000)  # buffered in the daemon, never flushed
    try:
        assert os.fstat(fd_doomed).st_nlink == 0
        live.kill9()
    finally:
        for fd in (fd_doomed, fd_dirty):
            with contextlib.suppress(OSError):
                os.close(fd)
    live.mount()
    assert (live.mnt / "keep").read_bytes() == keep
    assert "doomed" not in os.listdir(live.mnt)
    kept = {}
    for name, data in just_closed.items():
        if (live.mnt / name).exists():
            got = (live.mnt / name).read_bytes()
            assert_prefix(name, got, data)
            kept[name] = len(got)
    print(f"closed just before the crash, after remount: {kept} of {[len(d) for d in just_closed.values()]}")
    dirty = live.mnt / "dirty"
    if dirty.exists():  # created before the crash; its unflushed bytes may be lost, never garbage
        data = dirty.read_bytes()
        assert data in (b"", b"d" * 100_000), f"dirty holds {len(data)} unexpected bytes"
    live.umount()
    res = cli("ls", "/", "--data", str(live.data), "--json", env=live.env)
    assert res.returncode == 0, res.stderr
    # the orphan was released by the remount: no inode left that no name points to
    lake = Lake.open(live.data, read_only=True)
    try:
        assert lake.sm.orphans() == [], f"orphans left after remount: {lake.sm.orphans()}"
    finally:
        lake.close()
