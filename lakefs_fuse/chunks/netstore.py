"""A storage peer on the network, behind the chunk client's :class:`ShardStore` interface.

Each peer gets a small pool of authenticated, pipelined connections (``rpc.Connections``).
A peer whose connection fails or whose request times out is marked down (``health``); a timeout
also closes its connections, failing the requests in flight to it at once. The probe that decides
when it is back is a ``stat``; the space watcher's ``capacity`` is one too, with the same short
timeout, so a peer that froze is noticed within seconds even by a mount that only writes.
Messages name the peer by the lake's id and its address.

The connections' reader tasks and the probes live in the owner's nursery: ``async with
NetStore(...)``, or ``store.bind(nursery)`` (an open lake binds all its stores to one, see
``lake.Lake``). A store with neither refuses to connect (RuntimeError: a caller to fix).

Remote errnos map back to the shard exceptions the chunk client understands: ENOENT ->
:class:`ShardMissing`, EBADMSG -> :class:`ShardCorrupt`, ENOSPC -> :class:`PeerFull`.
"""

from __future__ import annotations

import errno
import logging
import struct

import trio

from .. import rpc, wire
from .health import PROBE_TIMEOUT, PeerHealth
from .shardfile import ShardCorrupt, ShardMissing, block_span, check_blocks
from .store import ForeignLake, PeerFull, PeerUnavailable

log = logging.getLogger(__name__)


class _NoAnswer(Exception):
    """The peer did not answer: could not connect, timed out, or the connection broke."""

    def __init__(self, why: str, message: str, *, timed_out: bool = False):
        super().__init__(message)
        self.why = why  # for last_error
        self.timed_out = timed_out


class _Unsupported(Exception):
    """The peer does not know this op (an older server)."""


class NetStore(PeerHealth):
    def __init__(self, peer_id: int, address: str, secret: bytes, *, call_timeout: float = 10.0,
                 connect_timeout: float = 3.0, connections: int = 2, ssl_context=None,
                 lake_id: str | None = None):
        self.peer_id = peer_id
        #: Named in every put and delete: the peer refuses another lake's (peer_server docstring).
        self.lake_id = lake_id
        self.address = address
        self.host, self.port = wire.parse_address(address)
        self.secret = secret
        self.ssl_context = ssl_context
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.connections = connections
        #: The pooled connections to the peer (``connections`` of them) and their reader tasks.
        self._pool = rpc.Connections(secret, name=f"peer-{peer_id}", per_address=connections,
                                            connect_timeout=connect_timeout, ssl_context=ssl_context)
        self._init_health()
        self._unsynced = False  # shards were put since the last sync
        self._getv = True  # the peer knows ``getv`` (until it says it does not)

    # ------------------------------------------------------------ connections

    def bind(self, nursery: trio.Nursery) -> None:
        """Run the connections' reader tasks in the owner's ``nursery`` (see ``rpc.Connections``)."""
        self._pool.bind(nursery)

    async def release(self) -> None:
        """Close the connections and give the owner's nursery back."""
        await self._pool.release()

    async def __aenter__(self) -> NetStore:
        """``async with NetStore(...) as store``: the store's connections live for the block."""
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._pool.__aexit__(*exc_info)

    def _owner_nursery(self) -> trio.Nursery | None:
        """Probes (``health``) run beside the connections, in the owner's nursery."""
        return self._pool.owner_nursery

    async def _client(self, *, probe: bool = False) -> rpc.RpcClient:
        """A pooled connection, or a new one; raises _NoAnswer when none can be made. A probe
        connects even while the peer is marked down."""
        try:
            # (The down check runs again once this task holds the connect lock: the peer may
            # have gone down while it waited.)
            return await self._pool.get(self.address, before_connect=None if probe else self._refuse_if_down)
        except wire.SecretRejected as exc:
            raise _NoAnswer(f"authentication failed: {exc}",
                            f"{self.name}: authentication failed (wrong secret?)") from exc
        except (OSError, trio.TooSlowError, wire.ProtocolError, ConnectionError) as exc:
            raise _NoAnswer(f"cannot connect: {exc or type(exc).__name__}",
                            f"{self.name}: cannot connect: {exc}") from exc

    async def _rpc(self, op: str, args: dict, payload, timeout: float, *, probe: bool = False,
                   into: rpc.Into | None = None):
        """One request, no health bookkeeping: its answer, wire.RemoteError if the peer answered
        with an error, _NoAnswer if it did not answer."""
        client = await self._client(probe=probe)
        try:
            return await client.call(op, args, payload, timeout=timeout, into=into)
        except trio.TooSlowError:
            await rpc.close_quietly(client)
            raise _NoAnswer(f"{op} timed out", f"{self.name}: {op} timed out after {timeout:g} s",
                            timed_out=True) from None
        except (wire.ConnectionLost, wire.ProtocolError, OSError, ConnectionError) as exc:
            await rpc.close_quietly(client)
            raise _NoAnswer(f"{op} failed: {exc or type(exc).__name__}", f"{self.name}: {exc}") from None

    async def call(self, op: str, args: dict | None = None, payload=b"", *, timeout: float | None = None,
                   read: bool = False, into: rpc.Into | None = None):
        """A request with health kept: fails at once while the peer is down (or, for a ``read``,
        slow); any answer marks it up, no answer marks it down. ``into``: see ``RpcClient.call``."""
        await self._admit(read=read)
        try:
            result = await self._rpc(op, args or {}, payload, timeout or self.call_timeout, into=into)
        except wire.RemoteError as exc:
            self._mark_up()
            if exc.errno == errno.EOPNOTSUPP and op == "getv":
                raise _Unsupported(str(exc)) from None
            raise _from_remote(self.name, exc) from None
        except _NoAnswer as exc:
            self._mark_down(exc.why)
            if exc.timed_out:  # frozen or cut off: the other requests in flight would each time out too
                await self._abort_calls()
            raise PeerUnavailable(str(exc)) from None
        self._mark_up()
        return result

    async def _probe(self) -> str | None:
        try:
            await self._rpc("stat", {}, b"", PROBE_TIMEOUT, probe=True)
        except wire.RemoteError:
            return None  # an answer, even an error, means it is there
        except _NoAnswer as exc:
            return exc.why
        return None

    async def _abort_calls(self) -> None:
        await self._pool.close(self.address)

    # ------------------------------------------------------------- ShardStore

    async def put(self, chunk_id: int, index: int, payload: bytes | memoryview) -> None:
        await self.call("put", {"c": chunk_id, "i": index, "l": self.lake_id}, payload)
        self._unsynced = True

    async def get_into(self, chunk_id: int, index: int, offset: int, length: int, out: memoryview) -> None:
        """Shard bytes [offset, offset+length) into ``out``, checked here: the peer sends the whole
        64 KiB blocks holding them straight from its file with their sums (``getv``), the wanted
        bytes land in ``out`` and the edges of the first and last block in scratch buffers."""
        args = {"c": chunk_id, "i": index, "o": offset, "n": length}
        if length and self._getv:
            shape: dict = {}

            def buffers(result: dict, size: int) -> list[memoryview] | None:
                block, shard_len = result["b"], result["L"]
                if type(block) is not int or type(shard_len) is not int or block <= 0 \
                        or offset + length > shard_len:
                    return None
                _first, _last, start, end = block_span(offset, length, block, shard_len)
                if end - start != size:
                    return None
                head, tail = memoryview(bytearray(offset - start)), memoryview(bytearray(end - offset - length))
                shape.update(block=block, length=shard_len, head=head, tail=tail)
                return [head, out[:length], tail]

            try:
                result, data = await self.call("getv", args, read=True, into=buffers)
            except _Unsupported:
                self._getv = False  # a peer from before getv: ask it the old way from now on
            else:
                sums = result.get("s")
                if not shape or data or not isinstance(sums, bytes) or len(sums) % 8:
                    raise ShardCorrupt(f"{self.name}: malformed answer for chunk {chunk_id} shard {index}")
                check_blocks(f"{self.name}: chunk {chunk_id} shard {index}",
                             struct.unpack(f"<{len(sums) // 8}Q", sums), shape["block"], shape["length"],
                             offset, shape["head"], out[:length], shape["tail"])
                return
        _, data = await self.call("get", args, read=True)
        if len(data) != length:
            raise ShardCorrupt(f"{self.name}: short read of chunk {chunk_id} shard {index}")
        out[:length] = data

    async def verify(self, chunk_id: int, index: int, checksum: int) -> str:
        try:
            result, _ = await self.call("verify", {"c": chunk_id, "i": index, "sum": checksum})
        except PeerUnavailable:
            return "unreachable"
        return str(result.get("h", "unreachable"))

    async def delete(self, chunk_id: int, index: int) -> None:
        await self.call("delete", {"c": chunk_id, "i": index, "l": self.lake_id})

    async def claim(self, *, dry: bool = False) -> None:
        """Reachable, authenticated, and ours (or nobody's yet, then ours from now on unless
        ``dry``): else PeerUnavailable / ForeignLake."""
        await self.call("claim", {"l": self.lake_id, "dry": dry})

    async def sync(self) -> None:
        """A barrier only where shards were put since the last one: an idle dead peer holds
        nothing unsynced and must not fail everyone's fsync."""
        if not self._unsynced:
            return
        await self.call("sync")
        self._unsynced = False

    async def capacity(self) -> tuple[int, int]:
        """(total, available) bytes; asked each second by the mount, so its timeout is a probe's."""
        result, _ = await self.call("stat", timeout=min(self.call_timeout, PROBE_TIMEOUT))
        return int(result["total"]), int(result["avail"])

    async def stat(self) -> dict:
        result, _ = await self.call("stat")
        return result

    async def list(self, after: tuple[int, int] = (-1, -1), limit: int = 1000) -> list[tuple[int, int, int]]:
        result, _ = await self.call("list", {"after": list(after), "limit": limit})
        return [tuple(r) for r in result.get("s", [])]

    async def aclose(self) -> None:
        """Close the connections (new calls reconnect)."""
        await self._pool.aclose()


def _from_remote(name: str, exc: wire.RemoteError) -> Exception:
    """The shard exception for an error the peer answered with, named ``name`` (the lake's id and
    the peer's address: the server's own text names only its directory)."""
    if exc.errno == errno.ENOENT:
        return ShardMissing(f"{name}: {exc}")
    if exc.errno == errno.EBADMSG:
        return ShardCorrupt(f"{name}: {exc}")
    if exc.errno == errno.ENOSPC:
        return PeerFull(f"{name}: {exc}")
    if exc.errno == errno.EACCES:
        return ForeignLake(f"{name}: {exc}")
    return PeerUnavailable(f"{name}: {exc}")
