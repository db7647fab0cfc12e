"""Shard damage on a live lake: flipped bytes, deleted shard files, too many bad shards.

A 6 MiB file is a 4 MiB and a 2 MiB chunk, each EC 4+2 (4 data + 2 parity shard files on 6
peers). With up to m = 2 bad shards per chunk every byte must still read back correctly
(degraded reads decode from the survivors), and ``lakefs-fuse stat --json`` must name the bad
shards ('corrupt' / 'missing'). With 3 bad shards the covered range must fail with EIO --
never wrong bytes -- and the daemon must stay up and keep serving everything else.

Shard files live at ``<peer>/<chunk_id & 0xff:02x>/<chunk_id:016x>.<index>``; their payload
starts after a header of 24 + 8 * nblocks + 8 bytes (64 KiB blocks, see chunks/shardfile.py),
so a flip past the header hits a block whose checksum no longer matches.
"""

from __future__ import annotations

import errno
import json
import os
import random
import struct
from pathlib import Path

import pytest

from conftest import LiveLake, _alive, cli, needs_fuse, write_synced_file

MiB = 1 << 20
BLOCK = 64 * 1024


def stat_json(lake: LiveLake, name: str, *, via_mount: bool) -> dict:
    if via_mount:
        res = cli("stat", str(lake.mnt / name), "--json", env=lake.env)
    else:
        res = cli("stat", f"/{name}", "--data", str(lake.data), "--json", env=lake.env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def chunks_of(info: dict) -> dict[int, dict]:
    """chunk id -> {'ec', 'file_offset', 'length', 'shards': [(index, path, health)]}."""
    out: dict[int, dict] = {}
    for ext in info["extents"]:
        cid = ext["chunk"]
        entry = out.setdefault(cid, {"ec": ext["ec"], "file_offset": ext["file_offset"], "length": 0,
                                     "chunk_length": ext["chunk_length"], "shards": []})
        entry["length"] += ext["length"]
        if not entry["shards"]:
            for s in ext["shards"]:
                path = Path(s["address"]) / f"{cid & 0xff:02x}" / f"{cid:016x}.{s['index']}"
                entry["shards"].append((s["index"], path, s["health"]))
    return out


def health(info: dict) -> dict[tuple[int, int], str]:
    return {(cid, i): h for cid, c in chunks_of(info).items() for i, _p, h in c["shards"]}


def flip_payload(path: Path, rng: random.Random) -> None:
    """Flip bytes in the payload (never the header) of one shard file."""
    raw = bytearray(path.read_bytes())
    length = struct.unpack_from("<I", raw, 16)[0]
    header = 24 + 8 * (-(-length // BLOCK)) + 8
    assert len(raw) == header + length, f"{path}: unexpected shard layout"
    for off in {0, length // 2, length - 1, rng.randrange(length)}:
        raw[header + off] ^= 0xFF
    path.write_bytes(bytes(raw))


def assert_alive(lake: LiveLake) -> None:
    pid = lake.pid()
    assert pid and _alive(pid), f"daemon died:\n{lake.log()}"


@needs_fuse
@pytest.mark.timeout(120)
def test_two_bad_shards_per_chunk_are_tolerated_and_reported(live):
    rng = random.Random(42)
    a = rng.randbytes(6 * MiB)
    b = rng.randbytes(6 * MiB)
    write_synced_file(live.mnt / "a", a)
    write_synced_file(live.mnt / "b", b)
    live.umount()

    info = stat_json(live, "a", via_mount=False)
    chunks = chunks_of(info)
    assert len(chunks) == 2 and all(c["ec"] == "4+2" for c in chunks.values()), chunks
    assert all(h == "ok" for h in health(info).values())
    # chunk 1: two data shards; chunk 2: a data and a parity shard
    victims = {}
    for (cid, c), picks in zip(sorted(chunks.items()), ((0, 1), (3, 5)), strict=False):
        for index in picks:
            _i, path, _h = c["shards"][index]
            flip_payload(path, rng)
            victims[(cid, index)] = "corrupt"

    binfo = stat_json(live, "b", via_mount=False)
    bchunks = sorted(chunks_of(binfo).items())
    cid1, c1 = bchunks[0]
    c1["shards"][2][1].unlink()  # one missing ...
    flip_payload(c1["shards"][5][1], rng)  # ... and one corrupt shard in the same chunk
    cid2, c2 = bchunks[1]
    c2["shards"][0][1].unlink()
    bvictims = {(cid1, 2): "missing", (cid1, 5): "corrupt", (cid2, 0): "missing"}

    live.mount()
    assert (live.mnt / "a").read_bytes() == a, "degraded read of a returned wrong bytes"
    assert (live.mnt / "b").read_bytes() == b, "degraded read of b returned wrong bytes"
    # ranges that sit entirely inside a damaged data shard, read without kernel read-ahead
    fd = os.open(live.mnt / "a", os.O_RDONLY | os.O_DIRECT)
    try:
        for off, n in ((0, 4096), (MiB + 12345, 70_000), (4 * MiB + 3 * 512 * 1024 + 100, 1000)):
            assert os.pread(fd, n, off) == a[off:off + n], f"range {off}+{n}"
    finally:
        os.close(fd)

    for name, expect in (("a", victims), ("b", bvictims)):
        got = health(stat_json(live, name, via_mount=True))
        bad = {k: v for k, v in got.items() if v != "ok"}
        assert bad == expect, f"{name}: stat reports {bad}, expected {expect}"
    info = stat_json(live, "a", via_mount=True)
    assert info["health"].startswith("4 bad shard(s)") and "unreadable" not in info["health"], info["health"]
    assert_alive(live)


@needs_fuse
@pytest.mark.timeout(120)
def test_three_bad_shards_fail_with_eio_and_the_daemon_survives(live):
    rng = random.Random(3)
    c = rng.randbytes(6 * MiB)
    other = rng.randbytes(1 * MiB)
    write_synced_file(live.mnt / "c", c)
    write_synced_file(live.mnt / "other", other)
    live.umount()

    chunks = sorted(chunks_of(stat_json(live, "c", via_mount=False)).items())
    cid, first = chunks[0]
    assert first["ec"] == "4+2" and first["file_offset"] == 0 and first["length"] == 4 * MiB
    shard_len = first["chunk_length"] // 4  # 1 MiB of the file per data shard
    for index in (0, 1, 4):  # data shards 0 and 1, parity 4: one more than m = 2
        flip_payload(first["shards"][index][1], rng)

    live.mount()
    with open(live.mnt / "c", "rb") as f, pytest.raises(OSError) as exc:
        f.read()
    assert exc.value.errno == errno.EIO, exc.value

    fd = os.open(live.mnt / "c", os.O_RDONLY | os.O_DIRECT)
    try:
        for off, n in ((0, 4096), (shard_len + 100, 5000)):  # inside the corrupt data shards
            with pytest.raises(OSError) as exc:
                os.pread(fd, n, off)
            assert exc.value.errno == errno.EIO, f"range {off}+{n}: {exc.value}"
        # Ranges held by the healthy data shards 2 and 3 of that chunk are still served:
        # when the whole extent cannot be decoded the VFS falls back to the exact range.
        for off, n in ((2 * shard_len, 4096), (3 * shard_len + 5, 100_000)):
            assert os.pread(fd, n, off) == c[off:off + n], f"range {off}+{n}"
        # the second chunk is untouched and reads fine
        assert os.pread(fd, 2 * MiB, 4 * MiB) == c[4 * MiB:]
    finally:
        os.close(fd)

    # the daemon is up and serves everything else
    assert_alive(live)
    assert (live.mnt / "other").read_bytes() == other
    os.stat(live.mnt / "other")
    (live.mnt / "new").write_bytes(b"still writable")
    assert (live.mnt / "new").read_bytes() == b"still writable"

    info = stat_json(live, "c", via_mount=True)
    bad = {k: v for k, v in health(info).items() if v != "ok"}
    assert bad == {(cid, 0): "corrupt", (cid, 1): "corrupt", (cid, 4): "corrupt"}, bad
    assert "1 chunk(s) unreadable" in info["health"], info["health"]
    log = (live.data / "mount.log").read_text()
    assert "unexpected error" not in log and "Traceback" not in log, log[-6000:]


@needs_fuse
@pytest.mark.timeout(120)
def test_small_file_uses_ec_2_plus_2_and_tolerates_two_bad_shards(live):
    rng = random.Random(5)
    small = rng.randbytes(100_000)
    write_synced_file(live.mnt / "small", small)
    live.umount()

    chunks = chunks_of(stat_json(live, "small", via_mount=False))
    assert len(chunks) == 1
    (cid, ch), = chunks.items()
    assert ch["ec"] == "2+2" and len(ch["shards"]) == 4, ch  # 100 KB: 2 data shards of 64 KiB min
    flip_payload(ch["shards"][0][1], rng)  # a data shard
    ch["shards"][3][1].unlink()  # a parity shard

    live.mount()
    assert (live.mnt / "small").read_bytes() == small
    got = {k: v for k, v in health(stat_json(live, "small", via_mount=True)).items() if v != "ok"}
    assert got == {(cid, 0): "corrupt", (cid, 3): "missing"}, got

    # a third bad shard: the data shard 0 range is lost -> EIO, never wrong bytes
    live.umount()
    flip_payload(ch["shards"][1][1], rng)
    live.mount()
    with pytest.raises(OSError) as exc:
        (live.mnt / "small").read_bytes()
    assert exc.value.errno == errno.EIO
    assert_alive(live)
    os.stat(live.mnt)
