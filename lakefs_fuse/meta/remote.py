"""The client side of the metadata servers: :class:`RemoteMeta`, a :class:`~.client.MetaClient`.

:class:`MetaService` finds the leader and keeps one pipelined connection to it. A call goes to
the server believed to lead; an answer ``{"redirect": 1, "leader": addr}`` sends it there (or,
with no leader known, to the next server after a backoff of 50 ms doubling to 1 s); a
connection that breaks or a call that times out moves on the same way. A call that has found
no leader within ``op_timeout`` fails with EIO -- operations never hang.

Commands are exactly-once: each goes out as ``(client id, seq)`` and is retried with the *same*
pair, so a command the old leader committed just before dying is not applied twice -- the new
leader's session table answers the retry with the stored result. A session carries one
command at a time; :class:`RemoteMeta` keeps a pool of sessions (``sessions``) so commands from
concurrent FUSE requests are in flight together.

Queries are linearizable: the leader answers after a ReadIndex round (see ``raft.py``).
"""

from __future__ import annotations

import errno
import logging
import secrets
from typing import Any

import trio

from .. import errors as E
from .. import wire
from . import schema as S
from .raftlog import unpack
from .schema import ChunkRecord, Extent, Inode, PeerRecord

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0


class Unavailable(E.LakeError):
    """No metadata server could answer within the deadline."""

    errno = errno.EIO


class MetaService:
    """Leader-following calls to a metadata cluster."""

    def __init__(self, addresses: list[str], secret: bytes, *, ssl_context=None,
                 op_timeout: float = 30.0, call_timeout: float = 10.0, connect_timeout: float = 2.0,
                 max_payload: int = wire.DEFAULT_MAX_PAYLOAD):
        if not addresses:
            raise E.UserError("no metadata server addresses given")
        for a in addresses:
            try:
                wire.parse_address(a)
            except ValueError as exc:
                raise E.UserError(f"metadata server {a!r}: {exc}") from None
        self.addresses = list(dict.fromkeys(addresses))
        self.secret = secret
        self.ssl_context = ssl_context
        self.op_timeout = op_timeout
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.max_payload = max_payload
        self.leader: str | None = None
        self._rr = 0
        self._clients: dict[str, wire.RpcClient] = {}
        self._connecting: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self.redirects = 0
        self.retries = 0

    async def _owner_nursery(self) -> trio.Nursery:
        """A nursery for connection reader tasks that lives as long as the trio run."""
        if self._nursery is None:
            ready = trio.Event()

            async def owner() -> None:
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        ready.set()
                        await trio.sleep_forever()
                finally:
                    self._nursery = None
                    self._clients.clear()
                    ready.set()

            trio.lowlevel.spawn_system_task(owner, name="meta-connections")
            await ready.wait()
        assert self._nursery is not None
        return self._nursery

    async def _client(self, address: str) -> wire.RpcClient:
        client = self._clients.get(address)
        if client is not None and not client.closed:
            return client
        lock = self._connecting.setdefault(address, trio.Lock())
        async with lock:
            client = self._clients.get(address)
            if client is not None and not client.closed:
                return client
            host, port = wire.parse_address(address)
            client = await wire.RpcClient.connect(host, port, self.secret, await self._owner_nursery(),
                                                  connect_timeout=self.connect_timeout,
                                                  max_payload=self.max_payload, ssl_context=self.ssl_context)
            self._clients[address] = client
            return client

    def _learn(self, address: str | None) -> None:
        if address and address not in self.addresses:
            self.addresses.append(address)  # a member added after we started
        self.leader = address

    async def call(self, op: str, args: dict | None = None, payload: bytes = b"", *,
                   timeout: float | None = None) -> tuple[dict, bytearray]:
        """Call ``op`` on the leader; follow redirects and retry until ``timeout`` (op_timeout)."""
        deadline = trio.current_time() + (self.op_timeout if timeout is None else timeout)
        delay = BACKOFF_MIN
        problem = "no metadata server answered"
        hops = 0
        while True:
            address = self.leader or self.addresses[self._rr % len(self.addresses)]
            remaining = deadline - trio.current_time()
            try:
                client = await self._client(address)
                res, body = await client.call(op, args, payload,
                                              timeout=max(0.05, min(self.call_timeout, remaining)))
            except wire.RemoteError as exc:  # the operation itself failed: a definite answer
                raise E.from_errno(exc.errno, str(exc)) from None
            except wire.SecretRejected as exc:
                raise E.LakeError(f"metadata server {address} refused us: {exc} (wrong cluster secret?)",
                                  err=errno.EACCES) from None
            except (OSError, wire.ConnectionLost, wire.ProtocolError, trio.TooSlowError) as exc:
                problem = f"{address}: {str(exc) or type(exc).__name__}"
                client = self._clients.pop(address, None)
                if client is not None and not isinstance(exc, trio.TooSlowError):
                    await client.aclose()
                self.leader = None
                self._rr += 1
            else:
                if not res.get("redirect"):
                    self.leader = address
                    return res, body
                hint = res.get("leader")
                self.redirects += 1
                if hint and hint != address and hops < 2 * len(self.addresses):
                    hops += 1
                    self._learn(hint)
                    continue
                problem = f"{address}: no leader elected"
                self.leader = None
                self._rr += 1
            self.retries += 1
            if trio.current_time() + delay >= deadline:
                raise Unavailable(f"metadata service unavailable: {problem}")
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            hops = 0

    async def call_each(self, op: str, args: dict | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """Call ``op`` on every known server (no redirects): address -> result or the error text."""
        out: dict[str, Any] = {}

        async def one(address: str) -> None:
            try:
                with trio.fail_after(timeout):
                    client = await self._client(address)
                    out[address] = (await client.call(op, args, timeout=timeout))[0]
            except (OSError, wire.ConnectionLost, wire.ProtocolError, wire.RemoteError,
                    trio.TooSlowError) as exc:
                out[address] = f"unreachable: {str(exc) or type(exc).__name__}"
                self._clients.pop(address, None)

        async with trio.open_nursery() as nursery:
            for address in list(self.addresses):
                nursery.start_soon(one, address)
        return out

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()


class _Session:
    __slots__ = ("client_id", "seq")

    def __init__(self) -> None:
        self.client_id = secrets.randbits(62)
        self.seq = 0


def _inode(raw: list) -> Inode:
    return Inode.from_bytes(raw[0], raw[1])


def _chunk(raw: list) -> ChunkRecord:
    return ChunkRecord.from_bytes(raw[0], raw[1])


class RemoteMeta:
    """:class:`~.client.MetaClient` over a metadata cluster. Every result is committed state."""

    def __init__(self, service: MetaService, *, sessions: int = 16):
        self.service = service
        self._free: list[_Session] = [_Session() for _ in range(sessions)]
        self._available = trio.Semaphore(sessions)

    async def apply(self, cmd: list, *, sync: bool = False):
        # Committed means stored on a majority with fsync: every command is durable, so
        # ``sync`` needs nothing more.
        async with self._available:
            session = self._free.pop()
            try:
                session.seq += 1
                _, body = await self.service.call("apply", {"c": session.client_id, "s": session.seq},
                                                  S.pack(cmd))
            finally:
                self._free.append(session)
        return unpack(body)

    async def _query(self, name: str, *args: Any) -> Any:
        _, body = await self.service.call("query", {"q": name}, S.pack(list(args)))
        return unpack(body)

    async def sync(self) -> None:
        return None

    async def format_record(self) -> dict:
        return await self._query("format_record")

    async def getattr(self, ino: int) -> Inode:
        return _inode(await self._query("getattr", ino))

    async def lookup(self, parent: int, name: bytes) -> Inode:
        return _inode(await self._query("lookup", parent, name))

    async def readdir(self, ino: int, after_cookie: int, limit: int) -> list[tuple[bytes, Inode, int]]:
        rows = await self._query("readdir", ino, after_cookie, limit)
        return [(name, Inode.from_bytes(child, data), cookie) for name, child, data, cookie in rows]

    async def extents(self, ino: int, first_index: int, last_index: int) -> list[Extent]:
        return [Extent(*e) for e in await self._query("extents", ino, first_index, last_index)]

    async def readlink(self, ino: int) -> bytes:
        return await self._query("readlink", ino)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self._query("getxattr", ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self._query("listxattr", ino)

    async def chunk(self, chunk_id: int) -> ChunkRecord:
        return _chunk(await self._query("chunk", chunk_id))

    async def chunks(self, after: int = -1, limit: int = 1000) -> list[ChunkRecord]:
        return [_chunk(r) for r in await self._query("chunks", after, limit)]

    async def peers(self) -> list[PeerRecord]:
        return [PeerRecord.from_bytes(pid, data) for pid, data in await self._query("peers")]

    async def orphans(self) -> list[int]:
        return await self._query("orphans")

    async def delete_queue(self, limit: int = 1000) -> list[tuple[int, int]]:
        return [tuple(x) for x in await self._query("delete_queue", limit)]

    async def count_inodes(self) -> int:
        return await self._query("count_inodes")

    async def next_chunk_id(self) -> int:
        return await self._query("next_chunk_id")

    def close(self) -> None:
        pass  # connections end with the trio run that owns them
