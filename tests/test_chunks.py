"""Chunk layer without a kernel: layout, placement, shard files, the client's degraded reads."""

from __future__ import annotations

import itertools
import os
import random

import pytest
import trio

from lakefs_fuse.chunks.client import ChunkClient
from lakefs_fuse.chunks.layout import ChunkLayout, data_shards_for, shard_len_for
from lakefs_fuse.chunks.placement import PeerChoice, place
from lakefs_fuse.chunks.shardfile import ShardCorrupt, ShardMissing, ShardReader, write_shard
from lakefs_fuse.chunks.store import LocalDirStore, PeerFull
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
