"""Disk tier of chunk ranges (chunks/diskcache.py) and the W-TinyLFU policy it shares with the
memory tier (chunks/cache.py): real files in tmp_path, injected corruption and crashes,
threads, and simulated traces compared with plain LRU."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import pytest

from lakefs_fuse import errors as E
from lakefs_fuse.chunks.cache import RangeCache
from lakefs_fuse.chunks.diskcache import BLOCK, DiskCache, entry_size, header_size

ROOT = Path(__file__).resolve().parent.parent


def payload(chunk_id: int, offset: int, length: int) -> bytes:
    """The bytes of a range: a pure function of the key, as immutable chunks are."""
    return random.Random(chunk_id * 1_000_003 + offset).randbytes(length)


def open_cache(path: Path, capacity: int, **kw) -> DiskCache:
    kw.setdefault("free_floor", 0)  # the test machine's /tmp may be small
    return DiskCache(path, capacity, **kw)


def entry_files(path: Path) -> list[Path]:
    return [Path(e.path) for d in os.scandir(path / "entries") for e in os.scandir(d.path) if e.is_file()]


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in entry_files(path))


def flip_byte(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x5A]))


# -- basic behaviour ------------------------------------------------------------------------------


def test_hit_miss_and_sub_range_hits(tmp_path):
    data = payload(7, 4096, 3 * BLOCK + 1000)
    with open_cache(tmp_path, 10 << 20) as cache:
        assert cache.get(7, 4096, 10) is None
        cache.put(7, 4096, data)
        assert cache.get(7, 4096, len(data)) == data
        assert cache.get(7, 4096 + 5, 100) == data[5:105]
        assert cache.get(7, 4096 + BLOCK - 10, 20) == data[BLOCK - 10:BLOCK + 10]  # across a block edge
        assert cache.get(7, 4096 + 2 * BLOCK, BLOCK + 1000) == data[2 * BLOCK:]  # the short last block
        assert cache.get(7, 4096 + len(data) - 1, 1) == data[-1:]
        assert cache.get(7, 4095, 10) is None  # starts before the entry
        assert cache.get(7, 4096, len(data) + 1) is None  # runs past it
        assert cache.get(8, 4096, 10) is None  # another chunk
        s = cache.stats()
        assert (s["hits"], s["misses"], s["entries"], s["puts"]) == (5, 4, 1, 1)
        assert s["bytes_hit"] == len(data) + 100 + 20 + BLOCK + 1000 + 1
        assert s["used"] == entry_size(len(data)) == disk_bytes(tmp_path)


def test_puts_of_the_same_range_are_idempotent_and_longer_replaces(tmp_path):
    with open_cache(tmp_path, 10 << 20) as cache:
        cache.put(1, 0, payload(1, 0, 5000))
        cache.put(1, 0, payload(1, 0, 5000))
        cache.put(1, 100, payload(1, 0, 5000)[100:200])  # covered by what is stored
        assert cache.stats()["puts"] == 1 and len(entry_files(tmp_path)) == 1
        cache.put(1, 0, payload(1, 0, 9000))  # more of the same range: replaces the shorter
        assert cache.get(1, 6000, 3000) == payload(1, 0, 9000)[6000:]
        assert cache.stats()["entries"] == 1 and disk_bytes(tmp_path) == entry_size(9000)


def test_entries_survive_close_and_reopen(tmp_path):
    keys = [(c, o, 1000 + 37 * c) for c in range(20) for o in (0, 1 << 20)]
    with open_cache(tmp_path, 10 << 20) as cache:
        for c, o, n in keys:
            cache.put(c, o, payload(c, o, n))
        before = cache.stats()
    assert (tmp_path / "sketch").exists()
    with open_cache(tmp_path, 10 << 20) as cache:
        after = cache.stats()
        assert (after["entries"], after["used"]) == (before["entries"], before["used"]) == (40, disk_bytes(tmp_path))
        for c, o, n in keys:
            assert cache.get(c, o, n) == payload(c, o, n)


def test_drop_chunk_forgets_every_range_of_it(tmp_path):
    with open_cache(tmp_path, 10 << 20) as cache:
        for off in (0, 10_000, 20_000):
            cache.put(3, off, payload(3, off, 500))
        cache.put(4, 0, payload(4, 0, 500))
        cache.drop_chunk(3)
        assert all(cache.get(3, off, 500) is None for off in (0, 10_000, 20_000))
        assert cache.get(4, 0, 500) == payload(4, 0, 500)
        assert cache.stats()["used"] == entry_size(500) == disk_bytes(tmp_path)


def test_a_second_open_of_the_directory_is_busy(tmp_path):
    with open_cache(tmp_path, 1 << 20), pytest.raises(E.Busy):
        open_cache(tmp_path, 1 << 20)
    open_cache(tmp_path, 1 << 20).close()  # released at close


# -- corruption and crashes -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["payload", "block table", "fixed header", "header checksum"])
def test_a_flipped_byte_is_a_miss_drops_the_entry_and_a_put_repairs(tmp_path, where):
    n = 2 * BLOCK + 10
    data = payload(9, 0, n)
    at = {"payload": header_size(n) + BLOCK + 17, "block table": 32 + 8 + 3, "fixed header": 20,
          "header checksum": header_size(n) - 2}[where]
    with open_cache(tmp_path, 10 << 20) as cache:
        cache.put(9, 0, data)
        [path] = entry_files(tmp_path)
        flip_byte(path, at)
        assert cache.get(9, 0, n) is None
        s = cache.stats()
        assert (s["corrupt"], s["entries"], s["used"], s["hits"]) == (1, 0, 0, 0)
        assert not path.exists()
        cache.put(9, 0, data)
        assert cache.get(9, 0, n) == data
        assert cache.stats()["corrupt"] == 1


def test_sub_range_reads_verify_only_the_blocks_they_touch(tmp_path):
    n = 3 * BLOCK
    data = payload(2, 0, n)
    with open_cache(tmp_path, 10 << 20) as cache:
        cache.put(2, 0, data)
        [path] = entry_files(tmp_path)
        flip_byte(path, header_size(n) + 2 * BLOCK + 5)  # in the third block
        assert cache.get(2, 100, BLOCK) == data[100:BLOCK + 100]  # blocks 0-1 are intact: right bytes
        assert cache.get(2, 2 * BLOCK, 10) is None
        assert cache.stats()["corrupt"] == 1 and not path.exists()


def test_a_vanished_or_unreadable_file_is_a_miss_not_an_error(tmp_path):
    with open_cache(tmp_path, 10 << 20) as cache:
        cache.put(5, 0, payload(5, 0, 100))
        cache.put(6, 0, payload(6, 0, 100))
        a, b = sorted(entry_files(tmp_path))
        a.unlink()
        b.write_bytes(b"")  # truncated behind the cache's back
        assert cache.get(5, 0, 100) is None and cache.get(6, 0, 100) is None
        assert cache.stats()["corrupt"] == 2 and cache.stats()["entries"] == 0


def test_crash_debris_is_cleaned_at_open_and_never_read_as_data(tmp_path):
    with open_cache(tmp_path, 10 << 20) as cache:
        for c in range(4):
            cache.put(c, 0, payload(c, 0, BLOCK + 100))
    good = sorted(entry_files(tmp_path))
    ent = tmp_path / "entries"
    (tmp_path / "tmp" / "0000000000000063-0.5.tmp").write_bytes(b"half a header")
    # a torn entry: right name, too short (renamed before its blocks reached the disk)
    torn = ent / "64" / f"{100:016x}-0-{BLOCK + 100:x}"
    torn.write_bytes(good[0].read_bytes()[:500])
    # right size, but zeros: what a power loss may leave after a rename without fsync
    zeros = ent / "65" / f"{101:016x}-0-{BLOCK + 100:x}"
    zeros.write_bytes(bytes(entry_size(BLOCK + 100)))
    # another entry's bytes under this key's name: the header check catches it
    impostor = ent / "66" / f"{102:016x}-0-{BLOCK + 100:x}"
    impostor.write_bytes(good[1].read_bytes())
    foreign = [ent / "00" / "notes.txt", ent / "07" / f"{1:016x}-0-10", ent / "01" / f"{1:016x}-00-10"]
    for p in foreign:  # not our names, or in the wrong fan-out directory
        p.write_bytes(b"x" * 10)
    (tmp_path / "sketch").write_bytes(b"garbage")
    with open_cache(tmp_path, 10 << 20) as cache:
        assert list((tmp_path / "tmp").iterdir()) == []
        assert not torn.exists() and not any(p.exists() for p in foreign)
        assert cache.get(100, 0, 10) is None
        assert cache.get(101, 0, 10) is None and cache.get(102, 0, 10) is None  # size fits, checksum not
        assert cache.stats()["corrupt"] == 2 and not zeros.exists() and not impostor.exists()
        for c in range(4):
            assert cache.get(c, 0, BLOCK + 100) == payload(c, 0, BLOCK + 100)
        assert cache.stats()["used"] == disk_bytes(tmp_path)


_WRITER = """
import random, sys
from lakefs_fuse.chunks.diskcache import DiskCache
cache = DiskCache(sys.argv[1], 64 << 20, free_floor=0)
for i in range(10_000):
    n = 200_000 + 7919 * (i % 50)
    cache.put(i, 0, random.Random(i * 1_000_003).randbytes(n))
    print(i, flush=True)
"""


def test_a_writer_killed_mid_put_leaves_no_wrong_bytes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        for _ in range(40):  # let it store ~40 ranges, then kill it wherever it is
            assert proc.stdout.readline(), "writer died on its own"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    with open_cache(tmp_path, 64 << 20) as cache:
        assert list((tmp_path / "tmp").iterdir()) == []
        hits = 0
        for i in range(200):
            n = 200_000 + 7919 * (i % 50)
            got = cache.get(i, 0, n)
            if got is not None:
                assert got == payload(i, 0, n)
                hits += 1
        assert hits >= 40 and cache.stats()["corrupt"] == 0


# -- limits ---------------------------------------------------------------------------------------


def test_capacity_holds_after_every_put(tmp_path):
    rnd = random.Random(3)
    capacity = 300_000
    with open_cache(tmp_path, capacity) as cache:
        for _ in range(400):
            c, n = rnd.randrange(60), rnd.choice([100, 5_000, 20_000, 70_000])
            if cache.get(c, 0, n) is None:
                cache.put(c, 0, payload(c, 0, n))
            if rnd.random() < 0.02:
                cache.drop_chunk(rnd.randrange(60))
            s = cache.stats()
            assert s["used"] <= capacity
            assert disk_bytes(tmp_path) == s["used"] and len(entry_files(tmp_path)) == s["entries"]
        assert cache.stats()["evictions"] + cache.stats()["rejected"] > 0


def test_capacity_holds_when_reopened_smaller(tmp_path):
    with open_cache(tmp_path, 1 << 20) as cache:
        for c in range(30):
            cache.put(c, 0, payload(c, 0, 20_000))
    # Age is the entry's mtime; puts within one clock tick share it, so state the ages outright.
    for f in entry_files(tmp_path):
        chunk = int(f.name.split("-")[0], 16)
        os.utime(f, ns=(1_700_000_000_000_000_000 + chunk * 10**9,) * 2)
    with open_cache(tmp_path, 200_000) as cache:
        s = cache.stats()
        assert 0 < s["used"] <= 200_000 and s["used"] == disk_bytes(tmp_path)
        assert cache.get(29, 0, 20_000) == payload(29, 0, 20_000)  # the newest stay, the oldest go
        assert cache.get(0, 0, 20_000) is None


def test_oversized_ranges_are_skipped(tmp_path):
    with open_cache(tmp_path, 100_000, max_entry_fraction=0.25) as cache:
        cache.put(1, 0, payload(1, 0, 30_000))
        assert cache.get(1, 0, 1) is None
        assert cache.stats()["skipped"] == 1 and entry_files(tmp_path) == []


def test_free_space_floor_skips_puts(tmp_path):
    free = {"bytes": 10 << 20}
    seen = []

    def fake_free(path: Path) -> int:
        seen.append(path)
        return free["bytes"]

    with DiskCache(tmp_path, 50 << 20, free_floor=10 << 20, free_space=fake_free) as cache:
        cache.put(1, 0, payload(1, 0, 1000))  # would leave less than the floor
        assert cache.get(1, 0, 1000) is None and cache.stats()["skipped"] == 1
        free["bytes"] = (10 << 20) + entry_size(1000)  # exactly the floor left after writing
        cache.put(1, 0, payload(1, 0, 1000))
        assert cache.get(1, 0, 1000) == payload(1, 0, 1000)
        assert cache.stats()["skipped"] == 1 and seen[0] == tmp_path


# -- threads --------------------------------------------------------------------------------------


def test_concurrent_threads_only_ever_see_the_bytes_that_were_put(tmp_path):
    keys = [(c, o, n) for c in range(12) for o, n in ((0, 3000), (5000, 2 * BLOCK + 7), (300_000, 40_000))]
    data = {(c, o): payload(c, o, n) for c, o, n in keys}
    capacity = 600_000  # well below the ~2.5 MB of all keys: constant eviction and admission
    errors: list[BaseException] = []
    reads = [0]
    with open_cache(tmp_path, capacity) as cache:

        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            deadline = time.monotonic() + 2.0
            try:
                while time.monotonic() < deadline:
                    c, o, n = rnd.choice(keys)
                    op = rnd.random()
                    if op < 0.45:
                        cache.put(c, o, data[(c, o)])
                    elif op < 0.98:
                        a = rnd.randrange(n)
                        b = rnd.randrange(a, n + 1)
                        got = cache.get(c, o + a, b - a)
                        if got is not None:
                            assert got == data[(c, o)][a:b], (c, o, a, b)
                            reads[0] += 1
                    else:
                        cache.drop_chunk(c)
                    assert cache.stats()["used"] <= capacity
            except BaseException as e:  # noqa: BLE001 -- reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[0]
        s = cache.stats()
        assert reads[0] > 100 and s["corrupt"] == 0
        assert s["used"] == disk_bytes(tmp_path) <= capacity and s["entries"] == len(entry_files(tmp_path))
        assert list((tmp_path / "tmp").iterdir()) == []


# -- policy: simulated traces ---------------------------------------------------------------------

SIZE = 1000  # payload bytes of every range in the traces
ENTRY = entry_size(SIZE)


class LruSim:
    """Plain LRU by bytes: the baseline."""

    def __init__(self, capacity: int):
        self.capacity, self.used, self._d = capacity, 0, OrderedDict()

    def access(self, key, size: int) -> bool:
        if key in self._d:
            self._d.move_to_end(key)
            return True
        self._d[key] = size
        self.used += size
        while self.used > self.capacity:
            self.used -= self._d.popitem(last=False)[1]
        return False


def disk_access(cache: DiskCache, chunk_id: int) -> bool:
    if cache.get(chunk_id, 0, SIZE) is not None:
        return True
    cache.put(chunk_id, 0, payload(chunk_id, 0, SIZE))
    return False


def memory_access(cache: RangeCache, chunk_id: int) -> bool:
    if cache.get(chunk_id, 0, SIZE) is not None:
        return True
    cache.put(chunk_id, 0, payload(chunk_id, 0, SIZE))
    return False


def hit_ratio(trace, access) -> float:
    return sum(access(k) for k in trace) / len(trace)


def zipf_trace(n_keys: int, length: int, seed: int, s: float = 1.0) -> list[int]:
    rnd = random.Random(seed)
    ranks = list(range(n_keys))
    rnd.shuffle(ranks)  # popularity unrelated to chunk id
    weights = [1 / (i + 1) ** s for i in range(n_keys)]
    return [ranks[i] for i in rnd.choices(range(n_keys), weights=weights, k=length)]


def test_cyclic_scan_twice_the_capacity_keeps_hitting(tmp_path):
    n = 100
    loop = list(range(2 * n))
    lru = LruSim(n * ENTRY)
    with open_cache(tmp_path, n * ENTRY) as cache:
        hit_ratio(loop, lambda k: disk_access(cache, k))  # first pass: all misses
        lru_first = hit_ratio(loop, lambda k: lru.access(k, ENTRY))
        ratio = hit_ratio(loop * 6, lambda k: disk_access(cache, k))
        lru_ratio = hit_ratio(loop * 6, lambda k: lru.access(k, ENTRY))
        assert cache.stats()["used"] <= n * ENTRY
    assert lru_first == 0 and lru_ratio == 0
    assert ratio >= 0.35, ratio


def test_zipf_workload_at_least_as_good_as_lru(tmp_path):
    trace = zipf_trace(2000, 12_000, seed=11)
    lru = LruSim(100 * ENTRY)
    lru_ratio = hit_ratio(trace, lambda k: lru.access(k, ENTRY))
    with open_cache(tmp_path, 100 * ENTRY) as cache:
        ratio = hit_ratio(trace, lambda k: disk_access(cache, k))
    assert ratio >= lru_ratio - 0.02, (ratio, lru_ratio)


def test_hot_set_survives_a_big_one_time_scan(tmp_path):
    hot = list(range(30))
    with open_cache(tmp_path, 100 * ENTRY) as cache:
        hit_ratio(hot * 5, lambda k: disk_access(cache, k))
        hit_ratio(range(1000, 3000), lambda k: disk_access(cache, k))  # 20x the capacity, once
        assert hit_ratio(hot, lambda k: disk_access(cache, k)) >= 0.9
    lru = LruSim(100 * ENTRY)
    hit_ratio(hot * 5 + list(range(1000, 3000)), lambda k: lru.access(k, ENTRY))
    assert hit_ratio(hot, lambda k: lru.access(k, ENTRY)) == 0


def test_hot_set_keeps_its_standing_across_a_remount(tmp_path):
    hot = list(range(30))
    with open_cache(tmp_path, 100 * ENTRY) as cache:
        hit_ratio(hot * 5 + list(range(1000, 1100)), lambda k: disk_access(cache, k))
    with open_cache(tmp_path, 100 * ENTRY) as cache:  # hot entries are now mixed into probation
        hit_ratio(range(2000, 3000), lambda k: disk_access(cache, k))
        assert hit_ratio(hot, lambda k: disk_access(cache, k)) >= 0.9


def test_memory_tier_is_scan_resistant_too():
    n = 100
    cache = RangeCache(n * SIZE)
    loop = list(range(2 * n))
    hit_ratio(loop, lambda k: memory_access(cache, k))
    assert hit_ratio(loop * 6, lambda k: memory_access(cache, k)) >= 0.35
    assert cache.used <= cache.budget

    cache = RangeCache(n * SIZE)
    hot = list(range(10_000, 10_030))
    hit_ratio(hot * 5, lambda k: memory_access(cache, k))
    hit_ratio(range(3000), lambda k: memory_access(cache, k))
    assert hit_ratio(hot, lambda k: memory_access(cache, k)) >= 0.9

    trace = zipf_trace(2000, 20_000, seed=12)
    lru = LruSim(n * SIZE)
    cache = RangeCache(n * SIZE)
    assert hit_ratio(trace, lambda k: memory_access(cache, k)) >= hit_ratio(trace, lambda k: lru.access(k, SIZE)) - 0.02


def test_memory_tier_keeps_a_range_that_is_being_read():
    """Each FUSE read asks for its whole extent again: the burst must neither be dropped
    mid-read nor make the extent look hot to the sketch."""
    cache = RangeCache(80 * SIZE)  # a 16-range window
    for k in range(1000):  # a one-time scan by 4 readers: fetch a range, read 7 more pieces 4 ranges later
        if cache.get(k, 0, SIZE) is None:
            cache.put(k, 0, payload(k, 0, SIZE))
        if k >= 4:
            for _ in range(7):
                assert cache.get(k - 4, 0, SIZE) is not None, k
    assert cache.hits == 7 * 996 and cache.misses == 1000
    assert max(cache._policy.sketch.estimate((k, 0)) for k in range(900, 996)) <= 1
