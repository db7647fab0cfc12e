"""``async with Lake.connect(...)``: a cluster lake opened inside trio, its connections owned by the block.

One trio run holds a one-member metadata cluster and two peer servers; the lake is formatted on
them (``format_remote``, in a thread: it runs trio of its own), opened with ``Lake.connect``,
used, and closed. Nothing of it may outlive the block, and no connection task is a trio system task.
"""

from __future__ import annotations

import os
import socket
from functools import partial

import pytest
import trio

from lakefs_fuse.chunks.peer_server import PeerServer
from lakefs_fuse.config import LakeConfig
from lakefs_fuse.lake.lake import Lake, format_remote
from lakefs_fuse.meta.server import MetaServer

SECRET = b"lake-connect-secret-" + b"y" * 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
def test_a_cluster_lake_opens_inside_trio_and_its_connections_end_with_the_block(tmp_path, system_tasks):
    spawned = system_tasks
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    secret_file.chmod(0o600)
    address = f"127.0.0.1:{_free_port()}"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            member = MetaServer(1, tmp_path / "meta", address, SECRET, peers={1: address})
            await nursery.start(member.run)
            peers = [PeerServer(tmp_path / f"p{i}", durable=False) for i in range(2)]
            ports = [await nursery.start(partial(p.serve, "127.0.0.1", 0, SECRET)) for p in peers]
            config = LakeConfig(ec_k=1, ec_m=1, chunk_size=1 << 20, min_shard=65536)
            await trio.to_thread.run_sync(partial(format_remote, [address], config,
                                                  [f"127.0.0.1:{p}" for p in ports], secret_file))
            spawned.clear()  # (format_remote's own runs are not under test here)
            async with Lake.connect([address], secret_file) as lake:
                assert (await lake.meta.format_record())["ec_k"] == 1
                payload = os.urandom(200_000)
                layout = await lake.chunks.put_chunk(await lake.meta.next_chunk_id(), payload)
                assert await lake.chunks.read(layout, 0, layout.length) == payload
                service = lake.meta.service
                assert service._connections._nursery is not None  # the lake's, not a system task's
                assert not [n for n in spawned if n.endswith("-connections")], spawned
            assert service._connections._nursery is None and not service._connections._pools
            assert all(s._pool._nursery is None for s in lake.chunks.stores.values())
            nursery.cancel_scope.cancel()

    trio.run(main)
