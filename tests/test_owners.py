"""Who runs a remote store's background tasks: its owner's nursery, never a trio system task.

A peer server's store (``NetStore``) and a bucket's (``S3Store``) start a probe when a request
finds the peer down (``chunks/health.py``). The probe runs in the nursery of whoever owns the
store (``async with store``, or ``store.bind(nursery)``: an open lake binds its stores); a store
nobody owns starts none, and a peer-server store with no owner refuses to connect at all.
"""

from __future__ import annotations

import socket

import pytest
import trio

from lakefs_fuse.chunks import health
from lakefs_fuse.chunks.netstore import NetStore
from lakefs_fuse.chunks.s3store import S3Store
from lakefs_fuse.chunks.store import PeerUnavailable

SECRET = b"owners-secret-" + b"z" * 18


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probes(nursery: trio.Nursery) -> list[str]:
    return [t.name for t in nursery.child_tasks if t.name.startswith("probe of")]


async def _find_down_then_due(store) -> None:
    """Mark the store down with a failed request, then let the probe backoff pass."""
    with pytest.raises(PeerUnavailable):
        await store.stat()
    assert store.down
    await trio.sleep(health.BACKOFF_MIN + 0.1)


@pytest.mark.timeout(60)
def test_a_down_peer_servers_probe_runs_in_the_stores_own_nursery(system_tasks):
    async def main() -> None:
        async with NetStore(0, f"127.0.0.1:{_closed_port()}", SECRET, connect_timeout=1.0) as store:
            await _find_down_then_due(store)
            with pytest.raises(PeerUnavailable, match="is down"):
                await store.call("stat", read=True)  # a read fails at once; the probe starts
            nursery = store._pool.owner_nursery
            assert nursery is not None and _probes(nursery) == [f"probe of {store.name}"]
        assert store._pool.owner_nursery is None
    trio.run(main)
    assert not system_tasks, system_tasks


@pytest.mark.timeout(60)
def test_a_down_buckets_probe_runs_in_its_owners_nursery(system_tasks):
    async def main() -> None:
        store = S3Store(0, f"s3://bucket?endpoint=http://127.0.0.1:{_closed_port()}",
                        connect_timeout=0.5, read_timeout=0.5)
        async with trio.open_nursery() as nursery:
            store.bind(nursery)
            await _find_down_then_due(store)
            with pytest.raises(PeerUnavailable, match="is down"):  # a read fails at once; the probe starts
                await store.get_into(1, 0, 0, 1, memoryview(bytearray(1)))
            assert _probes(nursery) == [f"probe of {store.name}"]
            await store.release()
            nursery.cancel_scope.cancel()
        await store.aclose()
    trio.run(main)
    assert not system_tasks, system_tasks


@pytest.mark.timeout(60)
def test_a_bucket_nobody_owns_starts_no_probe(system_tasks):
    async def main() -> None:
        async with S3Store(0, f"s3://bucket?endpoint=http://127.0.0.1:{_closed_port()}",
                           connect_timeout=0.5, read_timeout=0.5) as owned:
            assert owned._owner_nursery() is not None
        assert owned._owner_nursery() is None  # the block's end took its nursery back
        store = S3Store(0, f"s3://bucket?endpoint=http://127.0.0.1:{_closed_port()}",
                        connect_timeout=0.5, read_timeout=0.5)
        await _find_down_then_due(store)
        with pytest.raises(PeerUnavailable, match="is down"):
            await store.stat()
        assert not store._probing
        await store.aclose()
    trio.run(main)
    assert not system_tasks, system_tasks


@pytest.mark.timeout(30)
def test_a_peer_server_store_with_no_owner_refuses_to_connect():
    async def main() -> None:
        store = NetStore(0, f"127.0.0.1:{_closed_port()}", SECRET)
        with pytest.raises(RuntimeError, match="no owner"):
            await store.stat()
    trio.run(main)
