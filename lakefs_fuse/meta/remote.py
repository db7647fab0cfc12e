"""The client side of the metadata servers: :class:`RemoteMeta`, a :class:`~.client.MetaClient`.

:class:`MetaService` finds the leader and keeps one pipelined connection to it. Its connections
and its call watcher live in its owner's nursery: ``async with MetaService(...)``, or
``service.bind(nursery)`` (``rpc.Connections``). A call goes to the server believed to lead; an
answer ``{"redirect": 1, "leader": addr}`` sends it there (or,
with no leader known, to the next server after a backoff of 50 ms doubling to 1 s); a
connection that breaks or a call that times out moves on the same way. A call that has found
no leader within ``op_timeout`` fails with EIO -- operations never hang. Inside a
:func:`~.budget.metadata_budget` (every FUSE request opens one) all calls share one
``op_timeout`` of waiting, so a request making several calls still fails after one.

*A leader that stops answering* (SIGSTOP, a long GC pause, a dead host whose connections stay
half-open) fails nothing by itself: its socket accepts requests and never answers, while the
other members elect a new leader within about a second. A watcher task therefore keeps the start
time of every outstanding call to the leader (``LEADER_OPS``); once one has waited
``probe_after`` (1 s, well above a healthy leader's answer time and above the election
timeout), it asks every member ``status`` (each answer awaited at most 0.5 s) and again every
0.25 s while the call is outstanding. If the
answer with the highest term names another leader, the connection to the silent member is
closed: every call pending on it fails at once and is re-sent to the new leader with the same
``(client id, seq)``. That is safe for the same reason a retry after a timeout is: the command
may sit uncommitted in the silent leader's log, or be committed already; either way the session
table applies it once, in log order, on every member (a copy appended twice is answered from
the table the second time; one from an older ``seq`` than the client's latest is refused), and a
deposed leader's uncommitted entry is overwritten, never committed. A leader that answers
``status`` but not the call is slow, not gone, and keeps the call. One that the others still
name, silent on our connection but answering ``status`` over a new one, sits behind a half-open
connection: its calls are re-sent over the new connection.

Commands are exactly-once: each goes out as ``(client id, seq)`` and is retried with the *same*
pair, so a command the old leader committed just before dying is not applied twice -- the new
leader's session table answers the retry with the stored result. A session carries one
command at a time; :class:`RemoteMeta` keeps a pool of sessions (``sessions``) so commands from
concurrent FUSE requests are in flight together.

Queries are linearizable: the leader answers after a ReadIndex round (see ``raft.py``).
"""

from __future__ import annotations

import errno
import itertools
import logging
import secrets
import weakref
from typing import Any

import trio

from .. import errors as E
from .. import rpc, wire
from ..config import META_TIMEOUT
from . import schema as S
from .budget import current_budget
from .commands import Command
from .raftlog import unpack
from .schema import ChunkRecord, Extent, Inode, PeerRecord

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
#: Seconds a call may wait for its answer before the members are asked who leads.
PROBE_AFTER = 1.0
#: While a call stays unanswered, the members are asked again this often ...
PROBE_EVERY = 0.25
#: ... and each member's answer is awaited this long.
PROBE_TIMEOUT = 0.5
#: Ops only the leader serves: a call of one of these may move to another member. (``status``,
#: ``hello`` and ``members`` describe the member asked, so they stay where they were sent.)
LEADER_OPS = frozenset({"apply", "query", "dump", "add", "remove"})


class Unavailable(E.LakeError):
    """No metadata server could answer within the deadline."""

    errno = errno.EIO


class MetaService:
    """Leader-following calls to a metadata cluster."""

    def __init__(self, addresses: list[str], secret: bytes, *, ssl_context=None,
                 op_timeout: float = META_TIMEOUT, call_timeout: float = 10.0, connect_timeout: float = 2.0,
                 max_payload: int = wire.DEFAULT_MAX_PAYLOAD, probe_after: float = PROBE_AFTER):
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
        #: One connection per member, and the nursery of their reader tasks and of the watcher.
        self._connections = rpc.Connections(
            secret, name="meta", connect_timeout=connect_timeout, max_payload=max_payload, ssl_context=ssl_context,
            on_open=lambda nursery: nursery.start_soon(self._watch_calls, name="meta-call-watcher"))
        self.redirects = 0
        self.retries = 0
        self.probe_after = probe_after
        #: Calls waiting for an answer: token -> (address, connection, start time); see _watch_calls.
        self._outstanding: dict[int, tuple[str, rpc.RpcClient, float]] = {}
        self._tokens = itertools.count()
        self._call_started = trio.Event()
        #: The highest term in which a probe saw a leader (0: none yet).
        self._leader_term = 0
        #: Connections the watcher closed to move their calls (see _cut).
        self._moved: weakref.WeakSet[rpc.RpcClient] = weakref.WeakSet()
        #: Times calls were moved off a member that stopped answering (see the module docstring).
        self.failovers = 0

    def bind(self, nursery: trio.Nursery) -> None:
        """Run the connections and the call watcher in the owner's ``nursery`` (``rpc.Connections``)."""
        self._connections.bind(nursery)

    async def release(self) -> None:
        """Close the connections and give the owner's nursery back."""
        await self._connections.release()

    async def __aenter__(self) -> MetaService:
        """``async with MetaService(...) as service``: connections and watcher live for the block."""
        await self._connections.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._connections.__aexit__(*exc_info)

    async def _client(self, address: str, connect_timeout: float | None = None) -> rpc.RpcClient:
        return await self._connections.get(address, connect_timeout=connect_timeout)

    def _forget_client(self, address: str, client: rpc.RpcClient | None) -> None:
        """Stop using ``client`` for ``address`` (not a newer connection made meanwhile)."""
        self._connections.forget(address, client)

    def _learn(self, address: str | None) -> None:
        if address and address not in self.addresses:
            self.addresses.append(address)  # a member added after we started
        self.leader = address

    async def call(self, op: str, args: dict | None = None, payload: bytes = b"", *,
                   timeout: float | None = None) -> tuple[dict, bytearray]:
        """Call ``op`` on the leader; follow redirects and retry until ``timeout`` (op_timeout),
        or until the caller's :func:`~.budget.metadata_budget` is spent, whichever comes first."""
        allowed = self.op_timeout if timeout is None else timeout
        budget = current_budget()
        if budget is not None:
            left = budget.left(self.op_timeout)
            if left <= 0:
                raise Unavailable(f"metadata service unavailable: this request already waited "
                                  f"{budget.spent:.1f}s for it")
            allowed = min(allowed, left)
        started = trio.current_time()
        try:
            return await self._call(op, args, payload, started + allowed)
        finally:
            if budget is not None:
                budget.charge(trio.current_time() - started)

    async def _call(self, op: str, args: dict | None, payload: bytes, deadline: float) -> tuple[dict, bytearray]:
        delay = BACKOFF_MIN
        problem = "no metadata server answered"
        hops = 0
        while True:
            address = self.leader or self.addresses[self._rr % len(self.addresses)]
            remaining = deadline - trio.current_time()
            client = None
            try:
                client = await self._client(address, max(0.05, min(self.connect_timeout, remaining)))
                remaining = deadline - trio.current_time()
                token = next(self._tokens)
                if op in LEADER_OPS:
                    self._outstanding[token] = (address, client, trio.current_time())
                    self._call_started.set()
                try:
                    res, body = await client.call(op, args, payload,
                                                  timeout=max(0.05, min(self.call_timeout, remaining)))
                finally:
                    self._outstanding.pop(token, None)
            except wire.RemoteError as exc:  # the operation itself failed: a definite answer
                raise E.from_errno(exc.errno, str(exc)) from None
            except wire.SecretRejected as exc:
                raise E.LakeError(f"metadata server {address} refused us: {exc} (wrong cluster secret?)",
                                  err=errno.EACCES) from None
            except (OSError, wire.ConnectionLost, wire.ProtocolError, trio.TooSlowError) as exc:
                problem = f"{address}: {str(exc) or type(exc).__name__}"
                self._forget_client(address, client)
                if client is not None and not isinstance(exc, trio.TooSlowError):
                    await client.aclose()
                if client in self._moved and trio.current_time() < deadline:
                    # The watcher found where to go (a new leader, or a new connection to this
                    # one) and closed this connection: re-send there now, same (client id, seq).
                    self.retries += 1
                    continue
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

    async def _watch_calls(self) -> None:
        """Runs beside the connections: probes the members while a call goes unanswered."""
        while True:
            if not self._outstanding:
                self._call_started = trio.Event()
                await self._call_started.wait()
                continue
            now = trio.current_time()
            oldest = min(start for _, _, start in self._outstanding.values())
            if now < oldest + self.probe_after:
                await trio.sleep_until(oldest + self.probe_after)
                continue
            stalled = {address for address, _, start in self._outstanding.values() if now - start >= self.probe_after}
            try:
                await self._probe(stalled)
            except Exception:  # noqa: BLE001 -- a bug here must not take the connections down
                log.exception("asking the metadata members who leads failed")
            await trio.sleep(PROBE_EVERY)

    async def _probe(self, stalled: set[str]) -> None:
        """Ask every member who leads; move calls stalled on a member that does not lead, or on a
        connection to the leader that no longer carries anything."""
        newest: tuple[int, str] | None = None  # (term, leader address) of the highest term heard
        answered: set[str] = set()
        # Bytes each stalled connection had received: a long answer arriving slowly is progress.
        marks = {client: client.bytes_received for address, client, _ in self._outstanding.values()
                 if address in stalled}

        async def ask(address: str) -> None:
            nonlocal newest
            try:
                with trio.fail_after(PROBE_TIMEOUT):
                    client = await self._client(address, PROBE_TIMEOUT)
                    res, _ = await client.call("status", timeout=PROBE_TIMEOUT)
            except (OSError, wire.ConnectionLost, wire.ProtocolError, wire.RemoteError, trio.TooSlowError):
                return  # silent or unreachable: that member's view is not known
            answered.add(address)
            term, leader = res.get("term"), res.get("leader_address")
            if type(term) is int and isinstance(leader, str) and (newest is None or term > newest[0]):
                newest = (term, leader)

        async with trio.open_nursery() as nursery:
            for address in list(self.addresses):
                nursery.start_soon(ask, address)
        if newest is None:
            return  # no member knows a leader yet (an election is under way): ask again soon
        term, leader = newest
        if term < self._leader_term:
            return  # only members with an outdated view answered
        self._leader_term = term
        # One leader per term: a stalled member other than the newest term's leader is a deposed
        # leader or a follower. The leader itself may just be slow (it then answers status).
        silent = stalled - {leader}
        if silent:
            self._learn(leader)
            log.warning("metadata member(s) %s stopped answering and %s leads in term %d: "
                        "re-sending their pending calls there", ", ".join(sorted(silent)), leader, term)
            await self._cut(silent)
        elif leader in stalled and leader not in answered and self._carries_nothing(leader, marks) \
                and await self._answers_afresh(leader):
            # Silent on our connection, alive on a new one: the old connection is half-open.
            log.warning("the connection to metadata leader %s stopped carrying answers: "
                        "re-sending its pending calls on a new one", leader)
            await self._cut({leader}, keep=self._connections.pooled(leader))

    def _carries_nothing(self, address: str, marks: dict[rpc.RpcClient, int]) -> bool:
        """No byte came in on the stalled connections to ``address`` while the members were asked,
        and none is going out (a status answer queued behind a long transfer is not silence)."""
        clients = {client for a, client, _ in self._outstanding.values() if a == address}
        return bool(clients) and all(client in marks and client.bytes_received == marks[client]
                                     and not client.sending for client in clients)

    async def _answers_afresh(self, address: str) -> bool:
        """Does ``address`` answer ``status`` as the leader over a new connection? It then
        replaces the connection in use (a frozen member cannot finish the handshake)."""
        client = None
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                client = await self._connections.connect(address, connect_timeout=PROBE_TIMEOUT)
                res, _ = await client.call("status", timeout=PROBE_TIMEOUT)
        except (OSError, wire.ConnectionLost, wire.ProtocolError, wire.RemoteError, trio.TooSlowError):
            res = {}
        if client is None or res.get("role") != "leader":  # (no client: the connect failed, res is {})
            if client is not None:
                await client.aclose()
            return False
        self._connections.replace(address, client)
        return True

    async def _cut(self, addresses: set[str], keep: rpc.RpcClient | None = None) -> None:
        """Close the connections to ``addresses`` (but ``keep``): their pending calls fail at once,
        and ``_call`` re-sends them (to ``self.leader``) without a backoff."""
        cut = {client for address, client, _ in self._outstanding.values() if address in addresses}
        for address in addresses:
            if self._connections.pooled(address) is not keep:
                cut.update(self._connections.drop(address))
        cut.discard(keep)
        self.failovers += 1
        for client in cut:
            self._moved.add(client)
            await client.aclose()

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
                self._connections.drop(address)

        async with trio.open_nursery() as nursery:
            for address in list(self.addresses):
                nursery.start_soon(one, address)
        return out

    async def aclose(self) -> None:
        """Close the connections (a later call reconnects)."""
        await self._connections.aclose()


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

    async def apply(self, cmd: Command, *, sync: bool = False) -> Any:
        # Committed means stored on a majority with fsync: every command is durable, so
        # ``sync`` needs nothing more.
        wire_form = cmd.to_wire()  # the one place a client encodes a command
        async with self._available:
            session = self._free.pop()
            try:
                session.seq += 1
                try:
                    _, body = await self.service.call("apply", {"c": session.client_id, "s": session.seq},
                                                      S.pack(wire_form))
                except E.LakeError as exc:
                    if exc.errno != errno.ESTALE:
                        raise
                    # The servers expired this session (unused for longer than their session_ttl,
                    # meta/sessions.py): the refusal says the command was not applied, and it was
                    # first sent just now, so it goes again as the first command of a new session.
                    session.client_id, session.seq = secrets.randbits(62), 1
                    _, body = await self.service.call("apply", {"c": session.client_id, "s": 1},
                                                      S.pack(wire_form))
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

    async def stored_data(self) -> int | None:
        return await self._query("stored_data")

    async def sparse_chunks(self, max_live: float, limit: int, min_dead: int = 0) -> dict:
        return await self._query("sparse_chunks", max_live, limit, min_dead)

    async def next_chunk_id(self) -> int:
        return await self._query("next_chunk_id")

    def close(self) -> None:
        pass  # connections end with their owner's async with (rpc.Connections)
