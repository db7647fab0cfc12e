"""No silent loss on a full disk (issue 11, point 1).

An embedded lake on a 64 MiB tmpfs: more is offered than fits. Every write()/close() that
returned success must read back identical after a remount, and ENOSPC must reach the writer.
A seal that fails *after* close (the disk filled behind the lake's back) keeps its bytes,
reports the error to fsync, and stores them once room comes back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from pathlib import Path

import pytest

from conftest import LiveLake, cli, is_mountpoint, needs_fuse, wait_for

pytestmark = [needs_fuse, pytest.mark.timeout(240)]

MiB = 1 << 20


def _lake_on(disk: Path, tmp_path: Path) -> LiveLake:
    lake = LiveLake(tmp_path / "lake")
    lake.data = disk / "data"  # the lake (metadata and peers) lives on the small disk
    lake.env["LAKEFS_FUSE_DATA"] = str(lake.data)
    cli("format", "--data", str(lake.data), env=lake.env, check=True)
    return lake


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_write_then_close_on_a_full_disk_keeps_every_acknowledged_file(small_disk, tmp_path):
    lake = _lake_on(small_disk, tmp_path)
    rng = random.Random(11)
    accepted: dict[str, str] = {}
    refused = []
    try:
        lake.mount()  # default --pack-delay: close() returns before the data is sealed
        for i in range(120):  # 120 MiB offered to a 64 MiB disk
            path = lake.mnt / f"f{i:03d}"
            data = rng.randbytes(MiB)
            try:
                with open(path, "wb") as f:
                    f.write(data)
            except OSError as exc:
                refused.append(exc.errno)
                continue
            accepted[path.name] = _sha(data)
        assert refused and set(refused) == {errno.ENOSPC}, refused
        assert len(accepted) >= 20, f"only {len(accepted)} files fit: admission is far too cautious"
        lake.remount()
        for name, digest in accepted.items():
            got = (lake.mnt / name).read_bytes()
            assert _sha(got) == digest, f"{name}: {len(got)} bytes after remount, not what close() accepted"
    finally:
        lake.teardown()
        assert not is_mountpoint(lake.mnt)


def test_seal_failing_after_close_keeps_the_bytes_and_retries(small_disk, tmp_path):
    lake = _lake_on(small_disk, tmp_path)
    rng = random.Random(12)
    files = {f"g{i}": rng.randbytes(MiB + 12345) for i in range(3)}  # < one chunk: waits to pack
    filler = small_disk / "filler"
    try:
        lake.mount("--pack-delay", "30")  # closed files wait to be packed: the disk fills first
        for name, data in files.items():
            with open(lake.mnt / name, "wb") as f:
                f.write(data)  # close() succeeds: the bytes are admitted, not yet sealed
        # Someone else fills the disk before the lake seals them.
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * MiB)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        fd = os.open(lake.mnt / "g0", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as err:
                os.fsync(fd)  # forces the seal: it fails, and fsync says so
            assert err.value.errno == errno.ENOSPC
            for name, data in files.items():  # nothing was dropped: still readable, whole
                assert (lake.mnt / name).stat().st_size == len(data)
                assert (lake.mnt / name).read_bytes() == data
            assert "keeping the bytes and retrying" in lake.log()
            res = cli("umount", str(lake.mnt), env=lake.env)  # would lose them: refused
            assert res.returncode == 1 and "cannot be stored" in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and is_mountpoint(lake.mnt)
            filler.unlink()  # room again: the retried seal stores them
            wait_for(lambda: _fsync_ok(fd), 60, "the retried seal to store the bytes")
        finally:
            os.close(fd)
        lake.remount()
        for name, data in files.items():
            assert (lake.mnt / name).read_bytes() == data, f"{name} changed across the failed seal"
    finally:
        lake.teardown()
        assert not is_mountpoint(lake.mnt)


def _fsync_ok(fd: int) -> bool:
    try:
        os.fsync(fd)
        return True
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        return False
