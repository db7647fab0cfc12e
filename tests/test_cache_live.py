"""The read caches on a live mount: the local disk cache (--cache-dir), warmup, and what must
never happen -- stale or corrupt bytes, a cache over its size, a read failing that the cache could serve."""

from __future__ import annotations

import os
import random

import pytest

from conftest import cli, needs_fuse

MiB = 1 << 20


def cache_files(cache_dir):
    return [os.path.join(d, f) for d, _, fs in os.walk(cache_dir) for f in fs if "/entries/" in d + "/"]


def write_files(mnt, n, size, seed=1):
    rng = random.Random(seed)
    files = {}
    (mnt / "d").mkdir(exist_ok=True)
    for i in range(n):
        data = rng.randbytes(size)
        (mnt / "d" / f"f{i}").write_bytes(data)
        files[f"d/f{i}"] = data
    return files


def read_with_peers_away(lake, cache, files: dict[str, bytes]) -> None:
    """Remount (empty memory cache), take every peer away, and read ``files`` from the disk cache."""
    lake.umount()
    lake.mount("--cache-dir", str(cache))
    os.rename(lake.data / "peers", lake.data / "peers.away")
    try:
        for rel, data in files.items():
            assert (lake.mnt / rel).read_bytes() == data, rel
    finally:
        os.rename(lake.data / "peers.away", lake.data / "peers")


@needs_fuse
@pytest.mark.timeout(240)
def test_warmup_then_peers_gone_reads_come_from_the_disk_cache(make_live, tmp_path):
    cache = tmp_path / "cache"
    lake = make_live(mount=False)
    lake.mount("--cache-dir", str(cache))
    files = write_files(lake.mnt, 40, 300_000)
    lake.umount()
    lake.mount("--cache-dir", str(cache))
    res = cli("warmup", str(lake.mnt / "d"), env=lake.env)
    assert res.returncode == 0 and "warmed 40 files" in res.stdout, res.stderr
    read_with_peers_away(lake, cache, files)  # the memory cache goes with the remount; the disk cache stays


@needs_fuse
@pytest.mark.timeout(240)
def test_corrupt_cache_entries_are_detected_and_refetched(make_live, tmp_path):
    cache = tmp_path / "cache"
    lake = make_live(mount=False)
    lake.mount("--cache-dir", str(cache))
    files = write_files(lake.mnt, 10, 200_000, seed=2)
    lake.umount()
    lake.mount("--cache-dir", str(cache))
    for rel in files:
        (lake.mnt / rel).read_bytes()
    lake.umount()
    entries = cache_files(cache)
    assert entries, "nothing reached the disk cache"
    for path in entries:  # flip one payload byte near the end of every entry
        with open(path, "r+b") as f:
            f.seek(-10, os.SEEK_END)
            b = f.read(1)
            f.seek(-10, os.SEEK_END)
            f.write(bytes([b[0] ^ 0xFF]))
    lake.mount("--cache-dir", str(cache))
    for rel, data in files.items():
        assert (lake.mnt / rel).read_bytes() == data, rel  # detected, dropped, fetched from the peers
    read_with_peers_away(lake, cache, files)  # the refetched ranges were cached again, correctly


@needs_fuse
@pytest.mark.timeout(240)
def test_disk_cache_stays_within_its_size_and_never_serves_stale_bytes(make_live, tmp_path):
    cache = tmp_path / "cache"
    lake = make_live(mount=False)
    lake.mount("--cache-dir", str(cache), "--cache-size", "16M")
    files = write_files(lake.mnt, 24, 2 * MiB, seed=3)  # 48 MiB through a 16 MiB cache
    lake.umount()
    lake.mount("--cache-dir", str(cache), "--cache-size", "16M")
    for _ in range(2):
        for rel, data in files.items():
            assert (lake.mnt / rel).read_bytes() == data
    assert sum(os.path.getsize(p) for p in cache_files(cache)) <= 16 * MiB + 64 * 1024
    # Overwrite a cached file: its new bytes live in new chunks, so no cache can serve the old ones.
    new = os.urandom(2 * MiB)
    (lake.mnt / "d/f0").write_bytes(new)
    assert (lake.mnt / "d/f0").read_bytes() == new
    lake.umount()
    lake.mount("--cache-dir", str(cache), "--cache-size", "16M")
    assert (lake.mnt / "d/f0").read_bytes() == new


def test_cache_options_are_checked(tmp_path):
    res = cli("mount", str(tmp_path), "--data", str(tmp_path / "lake"), "--cache-dir", str(tmp_path / "c"),
              "--cache-size", "1M")
    assert res.returncode == 1 and "cache size" in res.stderr
