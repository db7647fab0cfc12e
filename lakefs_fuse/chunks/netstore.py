"""A storage peer on the network, behind the chunk client's :class:`ShardStore` interface.

Each peer gets a small pool of authenticated, pipelined connections (``wire.RpcClient``).
A peer whose connection fails or whose request times out is marked down (``health``).

Remote errnos map back to the shard exceptions the chunk client understands: ENOENT ->
:class:`ShardMissing`, EBADMSG -> :class:`ShardCorrupt`, ENOSPC -> :class:`PeerFull`.
"""

from __future__ import annotations

import errno
import logging

import trio

from .. import wire
from .health import PeerHealth
from .shardfile import ShardCorrupt, ShardMissing
from .store import PeerFull, PeerUnavailable

log = logging.getLogger(__name__)

class NetStore(PeerHealth):
    def __init__(self, peer_id: int, address: str, secret: bytes, *, call_timeout: float = 10.0,
                 connect_timeout: float = 3.0, connections: int = 2, ssl_context=None):
        self.peer_id = peer_id
        self.address = address
        self.host, self.port = wire.parse_address(address)
        self.secret = secret
        self.ssl_context = ssl_context
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.connections = connections
        self._clients: list[wire.RpcClient] = []
        self._next = 0
        self._nursery: trio.Nursery | None = None
        self._connecting: trio.Lock | None = None
        self._init_health()
        self._unsynced = False  # shards were put since the last sync

    # ------------------------------------------------------------ connections

    async def _owner_nursery(self) -> trio.Nursery:
        """A nursery for the connections' reader tasks that lives as long as the trio run."""
        if self._nursery is None:
            ready = trio.Event()

            async def owner() -> None:
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        ready.set()
                        await trio.sleep_forever()
                except Exception:  # a broken connection task must not end the daemon
                    log.exception("peer %s: connection tasks failed", self.address)
                finally:
                    self._nursery = None
                    self._clients = []
                    ready.set()

            trio.lowlevel.spawn_system_task(owner, name=f"peer-{self.peer_id}-connections")
            await ready.wait()
            if self._nursery is None:
                raise PeerUnavailable(f"peer {self.address}: cannot start connection tasks")
        return self._nursery

    async def _client(self) -> wire.RpcClient:
        if not self.up:
            raise PeerUnavailable(f"peer {self.address} is down ({self.last_error})")
        self._clients = [c for c in self._clients if not c.closed]
        if len(self._clients) >= self.connections:
            self._next = (self._next + 1) % len(self._clients)
            return self._clients[self._next]
        if self._connecting is None:
            self._connecting = trio.Lock()
        async with self._connecting:
            self._clients = [c for c in self._clients if not c.closed]
            if len(self._clients) >= self.connections:
                return self._clients[0]
            if not self.up:
                raise PeerUnavailable(f"peer {self.address} is down ({self.last_error})")
            nursery = await self._owner_nursery()
            try:
                client = await wire.RpcClient.connect(self.host, self.port, self.secret, nursery,
                                                      connect_timeout=self.connect_timeout,
                                                      ssl_context=self.ssl_context)
            except wire.SecretRejected as exc:
                self._mark_down(f"authentication failed: {exc}")
                raise PeerUnavailable(f"peer {self.address}: authentication failed (wrong secret?)") from exc
            except (OSError, trio.TooSlowError, wire.ProtocolError, ConnectionError) as exc:
                self._mark_down(f"cannot connect: {exc or type(exc).__name__}")
                raise PeerUnavailable(f"peer {self.address}: cannot connect: {exc}") from exc
            self._clients.append(client)
            return client

    async def call(self, op: str, args: dict | None = None, payload=b"", *, timeout: float | None = None):
        client = await self._client()
        try:
            result = await client.call(op, args or {}, payload, timeout=timeout or self.call_timeout)
        except wire.RemoteError as exc:
            self._mark_up()
            raise _from_remote(self.address, exc) from None
        except trio.TooSlowError:
            self._mark_down(f"{op} timed out")
            await _close_quietly(client)
            raise PeerUnavailable(f"peer {self.address}: {op} timed out") from None
        except (wire.ConnectionLost, wire.ProtocolError, OSError, ConnectionError) as exc:
            self._mark_down(f"{op} failed: {exc or type(exc).__name__}")
            await _close_quietly(client)
            raise PeerUnavailable(f"peer {self.address}: {exc}") from None
        self._mark_up()
        return result

    # ------------------------------------------------------------- ShardStore

    async def put(self, chunk_id: int, index: int, payload: bytes | memoryview) -> None:
        await self.call("put", {"c": chunk_id, "i": index}, payload)
        self._unsynced = True

    async def get_into(self, chunk_id: int, index: int, offset: int, length: int, out: memoryview) -> None:
        _, data = await self.call("get", {"c": chunk_id, "i": index, "o": offset, "n": length})
        if len(data) != length:
            raise ShardCorrupt(f"peer {self.address}: short read of chunk {chunk_id} shard {index}")
        out[:length] = data

    async def verify(self, chunk_id: int, index: int, checksum: int) -> str:
        try:
            result, _ = await self.call("verify", {"c": chunk_id, "i": index, "sum": checksum})
        except PeerUnavailable:
            return "unreachable"
        return str(result.get("h", "unreachable"))

    async def delete(self, chunk_id: int, index: int) -> None:
        await self.call("delete", {"c": chunk_id, "i": index})

    async def sync(self) -> None:
        """A barrier only where shards were put since the last one: an idle dead peer holds
        nothing unsynced and must not fail everyone's fsync."""
        if not self._unsynced:
            return
        await self.call("sync")
        self._unsynced = False

    async def capacity(self) -> tuple[int, int]:
        result, _ = await self.call("stat")
        return int(result["total"]), int(result["avail"])

    async def stat(self) -> dict:
        result, _ = await self.call("stat")
        return result

    async def list(self, after: tuple[int, int] = (-1, -1), limit: int = 1000) -> list[tuple[int, int, int]]:
        result, _ = await self.call("list", {"after": list(after), "limit": limit})
        return [tuple(r) for r in result.get("s", [])]

    async def aclose(self) -> None:
        for client in self._clients:
            await _close_quietly(client)
        self._clients = []


def _from_remote(address: str, exc: wire.RemoteError) -> Exception:
    if exc.errno == errno.ENOENT:
        return ShardMissing(f"peer {address}: {exc}")
    if exc.errno == errno.EBADMSG:
        return ShardCorrupt(f"peer {address}: {exc}")
    if exc.errno == errno.ENOSPC:
        return PeerFull(f"peer {address}: {exc}")
    return PeerUnavailable(f"peer {address}: {exc}")


async def _close_quietly(client: wire.RpcClient) -> None:
    with trio.move_on_after(1):
        try:
            await client.aclose()
        except Exception:  # closing a broken connection may fail; it is gone either way
            pass
