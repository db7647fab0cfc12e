"""Chunk layer without a kernel: layout, placement, shard files, the client's degraded reads."""

from __future__ import annotations

import itertools
import os
import random

import pytest
import trio

from lakefs_fuse.chunks.client import ChunkClient
from lakefs_fuse.chunks.layout import ChunkLayout, data_shards_for, shard_len_for
from lakefs_fuse.chunks.placement import PeerChoice, place, place_spare
from lakefs_fuse.chunks.shardfile import ShardCorrupt, ShardMissing, ShardReader, write_shard
from lakefs_fuse.chunks.store import LocalDirStore, PeerFull, ShardDir
from lakefs_fuse.errors import DataUnavailable, NoSpace

MiB = 1 << 20


def test_small_chunks_use_fewer_data_shards():
    assert data_shards_for(100_000, 4, 65536) == 2
    assert data_shards_for(10, 6, 65536) == 1
    assert data_shards_for(4 * MiB, 6, 65536) == 6
    assert shard_len_for(4 * MiB, 6) % 64 == 0 and shard_len_for(4 * MiB, 6) * 6 >= 4 * MiB


def test_covering_touches_only_needed_data_shards():
    lay = ChunkLayout(1, 4 * MiB, 4, 2, MiB, [0, 1, 2, 3, 4, 5], [0] * 6)
    assert lay.covering(100, 1000) == [(0, 100, 1000)]
    assert lay.covering(MiB - 10, 20) == [(0, MiB - 10, 10), (1, 0, 10)]
    assert lay.covering(4 * MiB - 5, 100) == [(3, MiB - 5, 5)]


def test_placement_distinct_stable_and_zone_spread():
    peers = [PeerChoice(i, zone=f"z{i % 3}") for i in range(9)]
    for cid in range(200):
        chosen = place(cid, peers, 6)
        assert len(set(chosen)) == 6
        zones = [f"z{p % 3}" for p in chosen]
        assert max(zones.count(z) for z in set(zones)) == 2  # spread evenly over 3 zones
        assert chosen == place(cid, peers, 6)
    # adding a peer moves only a fraction of first choices (rendezvous property)
    more = peers + [PeerChoice(9, zone="z0")]
    moved = sum(place(c, peers, 1) != place(c, more, 1) for c in range(2000))
    assert 50 < moved < 450


def test_placement_weights_bias_choice():
    peers = [PeerChoice(0, weight=1.0), PeerChoice(1, weight=4.0)]
    firsts = [place(c, peers, 1)[0] for c in range(4000)]
    assert firsts.count(1) > 2.5 * firsts.count(0)


def test_shard_file_detects_corruption(tmp_path):
    payload = os.urandom(200_000)
    path = str(tmp_path / "s")
    write_shard(path, str(tmp_path), 7, 3, payload)
    r = ShardReader(path, 7, 3)
    assert r.read(70_000, 1000) == payload[70_000:71_000]
    r.close()
    with open(path, "r+b") as f:  # flip a byte inside block 2 of the payload
        f.seek(os.path.getsize(path) - len(payload) + 2 * 65536 + 5)
        f.write(b"\xff" if payload[2 * 65536 + 5] != 0xff else b"\x00")
    r = ShardReader(path, 7, 3)
    assert r.read(0, 1000) == payload[:1000]  # other blocks still verify
    with pytest.raises(ShardCorrupt):
        r.read(2 * 65536, 10)
    r.close()
    with pytest.raises(ShardCorrupt):
        ShardReader(path, 8, 3)  # wrong chunk id
    with pytest.raises(ShardMissing):
        ShardReader(str(tmp_path / "nope"), 7, 3)


def make_client(tmp_path, n=6, k=4, m=2):
    stores = {}
    for i in range(n):
        d = tmp_path / f"p{i}"
        d.mkdir()
        stores[i] = LocalDirStore(i, str(d), durable=False, reserve=0)
    return ChunkClient(stores, k=k, m=m, min_shard=65536), stores


def test_roundtrip_and_degraded_reads(tmp_path):
    client, stores = make_client(tmp_path)
    data = os.urandom(4 * MiB - 12345)

    async def main():
        lay = await client.put_chunk(1, data)
        assert (lay.k, lay.m) == (4, 2) and len(set(lay.peers)) == 6
        assert await client.read(lay, 0, len(data)) == data
        rng = random.Random(1)
        for lost in itertools.combinations(range(6), 2):
            for idx in lost:
                os.rename(stores[lay.peers[idx]].shard_path(1, idx), str(tmp_path / f"hide{idx}"))
            for _ in range(3):
                a = rng.randrange(len(data))
                b = min(len(data), a + rng.randrange(1, 3 * MiB))
                assert await client.read(lay, a, b - a) == data[a:b]
            for idx in lost:
                os.rename(str(tmp_path / f"hide{idx}"), stores[lay.peers[idx]].shard_path(1, idx))
        assert client.degraded_reads > 0
        health = await client.verify(lay)
        assert health == ["ok"] * 6
        for idx in (0, 1, 4):
            os.unlink(stores[lay.peers[idx]].shard_path(1, idx))
        with pytest.raises(DataUnavailable):
            await client.read(lay, 0, 100)
        assert (await client.verify(lay)).count("missing") == 3

    trio.run(main)


def test_single_flight_shares_one_fetch(tmp_path):
    client, stores = make_client(tmp_path)
    calls = []
    for s in stores.values():
        real = s.get_into

        def counting(*a, _real=real):
            calls.append(a[:4])
            return _real(*a)
        s.get_into = counting
    data = os.urandom(100_000)

    async def main():
        lay = await client.put_chunk(5, data)
        results = []

        async def reader():
            results.append(await client.read(lay, 0, len(data)))
        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(reader)
        assert results == [data] * 5
        assert 0 < len(calls) <= lay.k  # one fetch per covering shard, not five
    trio.run(main)


def test_full_peer_gets_skipped_and_no_space_when_too_few(tmp_path):
    client, stores = make_client(tmp_path, n=7)

    def full(*a):
        raise PeerFull("full")
    victim = next(iter(stores.values()))
    victim.put = full

    async def main():
        lay = await client.put_chunk(3, b"x" * 300_000)
        assert victim.peer_id not in lay.peers and len(set(lay.peers)) == lay.width
        assert await client.read(lay, 0, 300_000) == b"x" * 300_000
        for s in list(stores.values())[1:3]:
            s.put = full
        with pytest.raises(NoSpace):
            await client.put_chunk(4, b"y" * 300_000)
    trio.run(main)


def test_shard_read_into_place_checks_whole_blocks(tmp_path):
    """Ranges are read straight into the caller's buffer, but every block they touch is checked
    whole: a flipped byte outside the range, in a block the range touches, is still caught."""
    block = 65536
    payload = os.urandom(5 * block + 12345)
    path = str(tmp_path / "s")
    write_shard(path, str(tmp_path), 9, 1, payload)
    r = ShardReader(path, 9, 1)
    rng = random.Random(5)
    ranges = [(0, len(payload)), (0, block), (block, 2 * block), (10, 20), (block - 1, 2), (3 * block + 7, block),
              (5 * block, 12345), (5 * block + 100, 12245), (len(payload) - 1, 1)]
    ranges += [(a, rng.randrange(1, len(payload) - a + 1)) for a in (rng.randrange(len(payload)) for _ in range(200))]
    for off, n in ranges:
        out = bytearray(n + 3)
        r.read_into(off, n, memoryview(out))
        assert out[:n] == payload[off:off + n] and out[n:] == b"\0\0\0", (off, n)
    r.close()
    data_off = os.path.getsize(path) - len(payload)
    with open(path, "r+b") as f:  # flip a byte at the start of block 2 and one at the end of block 3
        for pos in (2 * block + 3, 4 * block - 2):
            f.seek(data_off + pos)
            f.write(bytes([payload[pos] ^ 0xFF]))
    r = ShardReader(path, 9, 1)
    for off, n in ((2 * block + 10, 100), (3 * block, 100), (block + 5, block), (4 * block - 100, 50)):
        with pytest.raises(ShardCorrupt):  # the flip is outside [off, off+n) but inside a block it touches
            r.read(off, n)
    assert r.read(block, block) == payload[block:2 * block]  # untouched blocks still read
    assert r.read(4 * block, 10) == payload[4 * block:4 * block + 10]
    r.close()


def test_shard_dir_keeps_files_open_but_never_serves_a_replaced_or_removed_file(tmp_path):
    root = tmp_path / "peer"
    root.mkdir()
    d = ShardDir(0, str(root), durable=False, reserve=0, open_files=4)
    a, b = os.urandom(300_000), os.urandom(300_000)
    d.put(1, 0, a)
    assert d.get(1, 0, 1000, 5000) == a[1000:6000]
    assert d.get(1, 0, 200_000, 90_000) == a[200_000:290_000]
    assert (d.open.opens, d.open.hits) == (1, 1)  # the second read reused the open file
    d.put(1, 0, b)  # a put (repair) renames a new file over the name: read afresh
    assert d.get(1, 0, 1000, 5000) == b[1000:6000]
    # another process replaces the file under the same name: the name is checked before reuse
    write_shard(d.shard_path(1, 0), d.tmp, 1, 0, a, durable=False)
    assert d.get(1, 0, 1000, 5000) == a[1000:6000]
    # ... or removes it: a missing shard, not the old bytes
    os.unlink(d.shard_path(1, 0))
    with pytest.raises(ShardMissing):
        d.get(1, 0, 0, 10)
    d.put(1, 0, a)
    assert d.get(1, 0, 0, 10) == a[:10]
    # a byte flipped in place is caught by the file kept open, which is then given up
    path = d.shard_path(1, 0)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - len(a) + 7)
        f.write(bytes([a[7] ^ 1]))
    with pytest.raises(ShardCorrupt):
        d.get(1, 0, 0, 100)
    assert len(d.open) == 0
    d.delete(1, 0)
    with pytest.raises(ShardMissing):
        d.get(1, 0, 0, 10)
    # bounded: at most open_files descriptors, all given back by close()
    fds_before = len(os.listdir("/proc/self/fd"))
    for cid in range(2, 12):
        d.put(cid, 0, a[:70_000])
        assert d.get(cid, 0, 0, 70_000) == a[:70_000]
    assert len(d.open) == 4 and len(os.listdir("/proc/self/fd")) == fds_before + 4
    d.close()
    assert len(d.open) == 0 and len(os.listdir("/proc/self/fd")) == fds_before


def test_advise_opens_lazily_and_the_read_checks_the_header(tmp_path):
    root = tmp_path / "peer"
    root.mkdir()
    d = ShardDir(0, str(root), durable=False, reserve=0)
    data = os.urandom(400_000)
    d.put(3, 2, data)
    d.advise(3, 2, 150_000, 110_000, len(data))  # opened, header not read yet
    assert len(d.open) == 1
    assert d.get(3, 2, 150_000, 110_000) == data[150_000:260_000]
    assert d.open.opens == 1
    d.advise(3, 2, 0, 10, len(data))  # held open: only the hint
    d.advise(4, 0, 0, 10, 100)  # no such shard: nothing happens
    assert len(d.open) == 1
    os.makedirs(os.path.dirname(d.shard_path(5, 0)), exist_ok=True)
    write_shard(d.shard_path(5, 0), d.tmp, 6, 0, data, durable=False)  # holds another chunk
    d.advise(5, 0, 0, 100, len(data))
    with pytest.raises(ShardCorrupt):
        d.get(5, 0, 0, 100)
    d.close()


def test_small_reads_across_two_local_shards_take_the_straight_path(tmp_path):
    """A range over two data shards of local peers is read without a nursery (piece after piece)
    and, when a piece fails, still decodes around it."""
    client, stores = make_client(tmp_path)
    data = os.urandom(4 * MiB - 4096)

    async def main():
        lay = await client.put_chunk(7, data)
        edge = lay.shard_len
        assert await client.read(lay, edge - 50_000, 100_000) == data[edge - 50_000:edge + 50_000]
        os.unlink(stores[lay.peers[1]].shard_path(7, 1))
        assert await client.read(lay, edge - 50_000, 100_000) == data[edge - 50_000:edge + 50_000]
        assert client.degraded_reads == 1
    trio.run(main)


def test_a_spare_peer_keeps_the_zone_rule():
    """A replacement for one shard of a 6+3 chunk over 3 zones (at most 3 shards per zone) goes to
    the zone holding fewer than 3 of the others, counting holders that are down (not offered)."""
    peers = [PeerChoice(pid, f"z{pid % 3}") for pid in range(12)]
    zone_of = {p.peer_id: p.zone for p in peers}
    for chunk_id in range(300):
        layout = place(chunk_id, peers, 9)
        lost = layout[0]
        holders = layout[1:]
        up = [p for p in peers if p.peer_id != lost]
        spare = place_spare(chunk_id, up, 1, holders, 9, zone_of)
        assert spare and spare[0] not in layout and zone_of[spare[0]] == zone_of[lost]
        # a holder that is down still counts for its zone: the spare never joins a full zone
        down = holders[0]
        spare = place_spare(chunk_id, [p for p in up if p.peer_id != down], 1, holders, 9, zone_of)
        assert zone_of[spare[0]] == zone_of[lost]
        # ``exclude`` (peers that refused) is never offered; with no room left in that zone, any peer
        free = [p.peer_id for p in up if p.zone == zone_of[lost] and p.peer_id not in holders]
        spare = place_spare(chunk_id, up, 1, holders, 9, zone_of, exclude=free)
        assert spare and spare[0] not in free and spare[0] not in layout
