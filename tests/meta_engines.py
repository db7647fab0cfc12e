"""The engines the shared metadata suite (``test_meta_suite.py``) runs against, and the harness
that lets plain test functions drive an async :class:`~lakefs_fuse.meta.client.MetaClient`.

* :class:`Portal` -- one trio loop in a thread of its own for a whole test module; the engines
  live on it, and a test thread calls into it and blocks for the answer;
* :class:`SyncMeta` -- a MetaClient seen from the test thread: ``meta.lookup(root, b"f")`` runs
  ``await client.lookup(...)`` on the portal; ``meta.do(op, *args)`` applies one command;
* :class:`RaftCluster` -- three in-process :class:`~lakefs_fuse.meta.server.MetaServer` replicas
  on loopback ports, and a :class:`~lakefs_fuse.meta.remote.RemoteMeta` talking to them;
* :func:`format_lake` -- the same lake on every engine (4+2, 1 MiB chunks, six peers);
* :func:`command` -- the one place a metadata command is built from an op and its arguments.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import trio

from lakefs_fuse.meta.commands import Command, decode
from lakefs_fuse.meta.remote import MetaService, RemoteMeta
from lakefs_fuse.meta.schema import ROOT_INO
from lakefs_fuse.meta.server import MetaServer

from test_metacluster import free_ports  # below the ephemeral range

CS = 1 << 20
FORMAT = {"ec_k": 4, "ec_m": 2, "chunk_size": CS, "min_shard": 65536}
PEERS = 6
SECRET = b"meta-suite-secret-" + b"x" * 14


def command(op: str, *args) -> Command:
    """The typed metadata command ``op`` with its arguments in wire order (the catalogue decodes
    them into its dataclass). Every mutation of the suite is built here (and only here)."""
    return decode([op, *args])


class Portal:
    """A trio loop in a thread of its own: the home of the engines while the module runs."""

    def __init__(self) -> None:
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="meta-suite-loop", daemon=True)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def __enter__(self) -> Portal:
        self._thread.start()
        assert self._ready.wait(10), "the trio loop did not start"
        return self

    def call(self, afn, *args, **kwargs):
        """Run ``afn(*args, **kwargs)`` on the loop and wait for its result (or exception)."""
        return trio.from_thread.run(functools.partial(afn, *args, **kwargs), trio_token=self.token)

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the trio loop did not stop"


class SyncMeta:
    """A MetaClient seen from the test thread: each method call runs on the portal's loop.
    ``root`` is this test's own directory; ``engine`` names the engine."""

    def __init__(self, client, portal: Portal, engine: str) -> None:
        self.client = client
        self.portal = portal
        self.engine = engine
        self.root = ROOT_INO

    def __getattr__(self, name: str):
        method = getattr(self.client, name)
        return functools.partial(self.portal.call, method)

    def do(self, op: str, *args, sync: bool = False):
        """Apply one command; returns its result."""
        return self.portal.call(self.client.apply, command(op, *args), sync=sync)


def format_lake(meta: SyncMeta) -> None:
    """The same lake on every engine: 4+2 with 1 MiB chunks on six directory peers."""
    meta.do("format", FORMAT, 1, os.getuid(), os.getgid())
    for peer in range(PEERS):
        meta.do("register_peer", peer, ["dir", f"/peers/{peer}", "", 1.0, "up", {}])


class RaftCluster:
    """Three MetaServers on loopback, running on the portal's loop, and a RemoteMeta to them."""

    def __init__(self, portal: Portal, root: Path) -> None:
        self.portal = portal
        ports = free_ports(3)
        self.members = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.root = root
        self.servers: list[MetaServer] = []
        self.scope: trio.CancelScope | None = None
        self.stopped = threading.Event()
        self.service: MetaService | None = None
        self.client: RemoteMeta | None = None

    async def _run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as self.scope:
                async with trio.open_nursery() as nursery:
                    for node_id, address in self.members.items():
                        server = MetaServer(node_id, self.root / f"meta{node_id}", address, SECRET,
                                            peers=self.members)
                        self.servers.append(server)
                        nursery.start_soon(server.run)
                    task_status.started()
        finally:
            self.stopped.set()

    async def start(self) -> RemoteMeta:
        await self.portal.nursery.start(self._run)
        self.service = MetaService(list(self.members.values()), SECRET, op_timeout=20)
        self.service.bind(self.portal.nursery)  # its connections live on the portal's loop
        return RemoteMeta(self.service)

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.release()
        if self.scope is not None:
            self.scope.cancel()
