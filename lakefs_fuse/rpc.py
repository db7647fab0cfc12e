"""Calls over the wire protocol: the pipelined client, the server loop, and the connection owner.

:mod:`lakefs_fuse.wire` owns frames and the handshake; this module puts requests on them. It is
base layer like ``wire``: the standard library, trio, msgpack and ``wire`` only.

RPC: a request header is {"v", "id", "op", "a": args}; the response reuses the id and carries
either {"ok": True, "r": result} or {"ok": False, "err": message, "errno": n}. One connection
carries many requests at once and answers may come back in any order. A request with "nr": true
is one-way: the server answers nothing (Raft's messages, which carry their own replies).

Failure policy: a bad frame ends that connection only. The server logs one line and keeps
serving everyone else; the client fails every pending call with :class:`~.wire.ConnectionLost`.
A call whose timeout fires while its *request* is still being written (a large payload to a
congested peer) takes the whole connection down (the stream is out of sync, see ``wire``); a
timeout while waiting for the *answer* does not.

Three pieces:

* :class:`RpcClient` -- one authenticated connection; a reader task matches answers to calls.
* :func:`serve` -- accept connections, authenticate, answer requests concurrently (bounded).
* :class:`Connections` -- what a client object (a storage peer's store, the metadata service)
  keeps: connections by address, made on demand and remade after they break, and the nursery
  their reader tasks live in. The owner provides that nursery: ``async with connections`` opens
  one for the block, :meth:`Connections.bind` lends one of the owner's.

Logs go to ``lakefs_fuse.wire``: one name for the whole protocol.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from .wire import (
    DEFAULT_MAX_PAYLOAD,
    PROTOCOL_VERSION,
    AuthError,
    ConnectionLost,
    FileSlice,
    FramedStream,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    client_handshake,
    parse_address,
    require_secret,
    server_handshake,
)

logger = logging.getLogger("lakefs_fuse.wire")

#: ``handler(op, args, payload)`` -> (result, payload); a :class:`~.wire.FileSlice` payload is sent
#: from its file with ``sendfile`` and released once sent.
Handler = Callable[[str, dict, bytearray], Awaitable[tuple[dict, bytes | bytearray | memoryview | FileSlice]]]


# ----------------------------------------------------------------------------------------------
# Client


#: Where a call wants its answer's payload (see :meth:`RpcClient.call`): buffers, or a function of
#: the answer's result and payload size that returns buffers (or None: "give it to me as bytes").
Into = list[memoryview] | Callable[[dict, int], list[memoryview] | None]


class _PendingCall:
    """A call waiting for its answer. As a :class:`~.wire.Sink` its ``views`` take the answer's
    payload while ``open`` (the caller has not left)."""

    __slots__ = ("done", "into", "lost", "open", "response", "views")

    def __init__(self, into: Into | None = None):
        self.done = trio.Event()
        self.response: tuple[dict, bytearray] | None = None
        self.lost: str | None = None
        self.into = into
        self.views: list[memoryview] = []
        self.open = True

    def buffers(self, result: dict, size: int) -> list[memoryview] | None:
        """The buffers for a successful answer's payload of ``size`` bytes, or None."""
        into = self.into
        if into is None:
            return None
        if callable(into):
            try:
                views = into(result, size)
            except Exception:  # noqa: BLE001 -- a malformed answer: the caller gets the bytes and judges
                logger.debug("call buffers refused an answer", exc_info=True)
                return None
        else:
            views = into
        return views if views is not None and sum(len(v) for v in views) == size else None


def _check_response(header: dict) -> int:
    """Return the response's id, or raise ProtocolError if it is not a well-formed response."""
    call_id, ok = header.get("id"), header.get("ok")
    if type(call_id) is not int or type(ok) is not bool:
        raise ProtocolError("response without an integer id and a boolean ok")
    if ok and not isinstance(header.get("r", {}), dict):
        raise ProtocolError("response result is not a map")
    if not ok and (type(header.get("errno", 0)) is not int or not isinstance(header.get("err", ""), str)):
        raise ProtocolError("error response with a malformed err/errno")
    return call_id


class RpcClient:
    """One authenticated, pipelined connection.

    Calls are matched to answers by id, so any number may be in flight; a reader task (started in
    the nursery given to :meth:`connect`) routes answers. When the connection ends, every pending
    and later call raises ConnectionLost; make a new client to reconnect. The reader never
    raises into that nursery, and it exits once the connection is closed.
    """

    def __init__(self, fs: FramedStream, peer: str):
        """Use :meth:`connect`; this only wraps an already authenticated stream."""
        self._fs = fs
        self._peer = peer
        self._ids = itertools.count(1)
        self._pending: dict[int, _PendingCall] = {}
        self._lost: str | None = None

    @classmethod
    async def connect(cls, host: str, port: int, secret: bytes, nursery: trio.Nursery, *,
                      connect_timeout: float = 5.0, max_payload: int = DEFAULT_MAX_PAYLOAD,
                      ssl_context: ssl.SSLContext | None = None) -> RpcClient:
        """Open TCP (and TLS, given ``ssl_context``) and authenticate, each within ``connect_timeout``.

        Raises OSError (refused, unreachable, TLS failure), trio.TooSlowError (connect timed
        out) or AuthError (handshake failed or timed out). TLS protects the bytes on the wire;
        the HMAC handshake inside it still proves both ends know the cluster secret.
        """
        require_secret(secret)
        with trio.fail_after(connect_timeout):
            tcp = await trio.open_tcp_stream(host, port)
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            tls = stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
            try:
                with trio.fail_after(connect_timeout):
                    await tls.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                await trio.aclose_forcefully(tls)
                raise OSError(f"TLS handshake with {host}:{port} failed: {exc.__cause__ or exc}") from exc
            except BaseException:
                await trio.aclose_forcefully(tls)
                raise
        fs = FramedStream(stream, max_payload=max_payload)
        try:
            await client_handshake(fs, secret, timeout=connect_timeout)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        client = cls(fs, f"{host}:{port}")
        nursery.start_soon(client._route_responses, name=f"wire-client-reader {host}:{port}")
        return client

    @property
    def closed(self) -> bool:
        return self._lost is not None

    @property
    def bytes_received(self) -> int:
        """Bytes read from the connection so far: a long answer shows its progress here."""
        return self._fs.bytes_received

    @property
    def sending(self) -> bool:
        """A frame is being written right now (a long request is still going out)."""
        return self._fs.sending

    async def call(self, op: str, args: dict | None = None, payload: bytes | bytearray | memoryview = b"",
                   *, timeout: float = 10.0, into: Into | None = None) -> tuple[dict, bytearray]:
        """Send one request and wait for its answer: returns (result, payload).

        ``into``: buffers for the answer's payload, or ``into(result, size)`` returning them once
        the answer's header is in. A successful answer whose payload is exactly their total size
        is read straight into them (the returned payload is then empty); any other answer comes
        back as usual. They are never written after this call returns.

        Raises RemoteError if the server answered with an error, trio.TooSlowError after
        ``timeout`` seconds (a late answer is dropped), ConnectionLost if the connection ends.
        """
        if not isinstance(op, str) or not (args is None or isinstance(args, dict)):
            raise TypeError("call(op, args): op must be a str and args a dict or None")
        if self._lost is not None:
            raise ConnectionLost(f"{self._peer}: {self._lost}")
        call_id = next(self._ids)
        pending = self._pending[call_id] = _PendingCall(into)
        try:
            with trio.fail_after(timeout):
                await self._fs.send({"v": PROTOCOL_VERSION, "id": call_id, "op": op,
                                     "a": {} if args is None else args}, payload)
                await pending.done.wait()
        finally:
            pending.open = False  # the reader stops writing into ``into`` from here on
            del self._pending[call_id]
        if pending.response is None:
            raise ConnectionLost(f"{self._peer}: {pending.lost}")
        header, body = pending.response
        if header["ok"]:
            return header.get("r", {}), body
        raise RemoteError(header.get("err", "remote error"), header.get("errno", 0))

    async def post(self, op: str, args: dict | None = None,
                   payload: bytes | bytearray | memoryview = b"") -> None:
        """Send a one-way request: the header says ``"nr": true`` and the server sends no answer
        (a failure is only logged there). For messages such as Raft's, whose protocol carries its
        own replies. Raises ConnectionLost if the connection has ended.
        """
        if self._lost is not None:
            raise ConnectionLost(f"{self._peer}: {self._lost}")
        await self._fs.send({"v": PROTOCOL_VERSION, "id": next(self._ids), "op": op, "nr": True,
                             "a": {} if args is None else args}, payload)

    async def _route_responses(self) -> None:
        reason = "connection closed"
        try:
            while True:
                header, payload = await self._fs.receive(sink=self._sink)
                pending = self._pending.get(_check_response(header))
                if pending is not None:  # None: the caller timed out and left
                    pending.response = (header, payload)
                    pending.done.set()
        except EOFError:
            reason = "server closed the connection"
        except ConnectionLost as exc:
            reason = str(exc)
        except ProtocolError as exc:
            reason = f"protocol error from server: {exc}"
            logger.warning("%s: %s; closing the connection", self._peer, reason)
        except Exception as exc:  # a bug here must not crash the caller's nursery
            reason = f"unexpected error in the response reader: {exc!r}"
            logger.exception("%s: %s", self._peer, reason)
        finally:
            self._fail_pending(reason)
            await trio.aclose_forcefully(self._fs)

    def _sink(self, header: dict, size: int) -> _PendingCall | None:
        """The waiting call whose buffers take this answer's payload, if it named buffers of
        exactly this size and the answer is a success."""
        pending = self._pending.get(header.get("id"))  # type: ignore[arg-type]
        if pending is None or header.get("ok") is not True:
            return None
        result = header.get("r", {})
        views = pending.buffers(result if isinstance(result, dict) else {}, size)
        if views is None:
            return None
        pending.views = views
        return pending

    def _fail_pending(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        for pending in self._pending.values():
            if pending.response is None:
                pending.lost = self._lost
                pending.done.set()

    async def aclose(self) -> None:
        """Close the connection; pending calls raise ConnectionLost and the reader task exits."""
        self._fail_pending("client closed")
        await trio.aclose_forcefully(self._fs)


# ----------------------------------------------------------------------------------------------
# Server


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, trio.TooSlowError):  # the handler's own call to someone else timed out
        return errno_codes.ETIMEDOUT
    code = getattr(exc, "errno", None)
    return code if type(code) is int and code > 0 else None


def _describe_peer(stream) -> str:
    stream = getattr(stream, "transport_stream", stream)  # under TLS, the TCP stream beneath
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except (AttributeError, OSError, ValueError, TypeError):
        return "unknown peer"


def _parse_request(header: dict) -> tuple[int, str, dict]:
    call_id, op, args = header.get("id"), header.get("op"), header.get("a")
    if type(call_id) is not int or call_id < 0:
        raise ProtocolError(f"request without a valid id: {call_id!r}")
    if not isinstance(op, str):
        raise ProtocolError(f"request {call_id} has no op name")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(f"request {call_id} ({op}) has arguments that are not a map")
    return call_id, op, args


@dataclass(slots=True)
class ServerStats:
    """Connections a server saw and how they ended (metrics: refused clients, bad frames)."""

    connections: int = 0
    authenticated: int = 0
    auth_failures: int = 0
    protocol_errors: int = 0


class _ServerConnection:
    """One accepted connection: handshake, then answer requests concurrently until it ends."""

    def __init__(self, stream: trio.abc.Stream, handler: Handler, secret: bytes, *,
                 max_payload: int, max_inflight: int, handshake_timeout: float,
                 stats: ServerStats | None = None):
        self.stats = stats if stats is not None else ServerStats()
        self.stream = stream
        self.fs = FramedStream(stream, max_payload=max_payload)
        self.handler = handler
        self.secret = secret
        self.max_inflight = max_inflight
        self.handshake_timeout = handshake_timeout
        self.peer = _describe_peer(stream)

    async def run(self) -> None:
        # Exactly one log line per connection end, and nothing may escape to serve_listeners
        # (an exception there would take the whole server down).
        self.stats.connections += 1
        try:
            await server_handshake(self.fs, self.secret, timeout=self.handshake_timeout)
            logger.debug("%s: authenticated", self.peer)
            self.stats.authenticated += 1
            await self._serve_requests()
        except AuthError as exc:
            self.stats.auth_failures += 1
            # A peer that connects and leaves without sending a byte (a port probe, a health
            # check; it may reset rather than close) is not worth a warning. Anything it did send
            # that failed the handshake is.
            quiet = self.fs.bytes_received == 0 and isinstance(exc.__cause__, (EOFError, ConnectionLost))
            logger.log(logging.DEBUG if quiet else logging.WARNING,
                       "%s: authentication failed, closing: %s", self.peer, exc)
        except EOFError:
            logger.debug("%s: client closed the connection", self.peer)
        except ConnectionLost as exc:
            logger.warning("%s: connection lost: %s", self.peer, exc)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            logger.warning("%s: protocol error, closing: %s", self.peer, exc)
        except Exception:
            logger.exception("%s: unexpected error; closing this connection", self.peer)
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _serve_requests(self) -> None:
        # A free slot is taken *before* reading the next request, so a client that floods us
        # stops being read (TCP pushes back) instead of piling up tasks.
        slots = trio.Semaphore(self.max_inflight)
        ended: BaseException | None = None
        async with trio.open_nursery() as requests:
            try:
                while True:
                    await slots.acquire()
                    header, payload = await self.fs.receive()
                    call_id, op, args = _parse_request(header)
                    requests.start_soon(self._answer, slots, call_id, op, args, payload, header.get("nr") is True)
            except (EOFError, ProtocolError, ConnectionLost) as exc:
                # Caught inside the nursery so it is not wrapped in an ExceptionGroup; nobody is
                # left to read answers, so in-flight requests are cancelled.
                ended = exc
            requests.cancel_scope.cancel()
        if ended is not None:
            raise ended

    async def _answer(self, slots: trio.Semaphore, call_id: int, op: str, args: dict,
                      payload: bytearray, quiet: bool = False) -> None:
        try:
            if quiet:  # a one-way request (RpcClient.post): no answer, failures only logged
                try:
                    await self.handler(op, args, payload)
                except Exception as exc:  # noqa: BLE001 -- logged by _error_response
                    self._error_response(call_id, op, exc)
                return
            out: bytes | bytearray | memoryview | FileSlice = b""
            try:
                result, out = await self.handler(op, args, payload)
                if not isinstance(result, dict):
                    raise TypeError(f"handler for {op!r} returned a {type(result).__name__} result, not a dict")
                response = {"v": PROTOCOL_VERSION, "id": call_id, "ok": True, "r": result}
            except Exception as exc:  # noqa: BLE001 -- any handler failure becomes an error answer (logged there)
                if isinstance(out, FileSlice):
                    out.release()
                response, out = self._error_response(call_id, op, exc), b""
            try:
                if isinstance(out, FileSlice):
                    sending, out = out, b""
                    await self.fs.send_file(response, sending)
                else:
                    await self.fs.send(response, out)
            except (TypeError, ValueError, OverflowError) as exc:
                # The handler's answer cannot be framed (unencodable result, payload too big);
                # nothing was written, so the client can still get a proper error.
                logger.error("%s: cannot send the answer to %r: %s", self.peer, op, exc)
                code = errno_codes.EMSGSIZE if isinstance(exc, FrameTooLarge) else errno_codes.EIO
                await self.fs.send({"v": PROTOCOL_VERSION, "id": call_id, "ok": False,
                                    "err": f"server could not encode the answer: {exc}", "errno": code})
        except ConnectionLost:
            pass  # the read loop sees the same broken connection and logs it once
        finally:
            slots.release()

    def _error_response(self, call_id: int, op: str, exc: Exception) -> dict:
        code = _errno_of(exc)
        if code is None:
            logger.error("%s: handler for %r failed; answering EIO", self.peer, op, exc_info=exc)
            code = errno_codes.EIO
        else:
            logger.debug("%s: %r -> errno %d: %s", self.peer, op, code, exc)
        return {"v": PROTOCOL_VERSION, "id": call_id, "ok": False,
                "err": str(exc) or type(exc).__name__, "errno": code}


async def serve(handler: Handler, host: str, port: int, secret: bytes, *,
                max_payload: int = DEFAULT_MAX_PAYLOAD, max_inflight_per_conn: int = 64,
                handshake_timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None,
                stats: ServerStats | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on host:port until cancelled; reports the bound port via task_status.

    ``handler(op, args, payload)`` returns ``(result_dict, payload)``. An exception with an
    ``errno`` (OSError, the project's LakeError) is answered with that errno; any other
    exception is logged with its traceback and answered with EIO. The connection stays up.
    With port 0 and a host resolving to several addresses, the first listener's port is reported.
    """
    require_secret(secret)
    if max_inflight_per_conn < 1:
        raise ValueError("max_inflight_per_conn must be >= 1")
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        bound_port = listeners[0].socket.getsockname()[1]

        async def handle_connection(tcp: trio.SocketStream) -> None:
            stream: trio.abc.Stream = tcp
            if ssl_context is not None:  # TLS first; its handshake runs on the first read
                stream = trio.SSLStream(tcp, ssl_context, server_side=True)
            connection = _ServerConnection(stream, handler, secret, max_payload=max_payload,
                                           max_inflight=max_inflight_per_conn,
                                           handshake_timeout=handshake_timeout, stats=stats)
            await connection.run()

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, handle_connection, listeners))
            logger.info("wire server listening on %s:%d", host, bound_port)
            task_status.started(bound_port)
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


# ----------------------------------------------------------------------------------------------
# Connection owner


class Background:
    """A nursery for an owner's background tasks, held open by ``async with`` (its value).

    At the end of the block the tasks are cancelled. An exception from the block passes through
    as it was: a nursery entered around the body would wrap it in an ExceptionGroup.
    """

    def __init__(self) -> None:
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> trio.Nursery:
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack, self._nursery = stack, nursery
        return nursery

    async def __aexit__(self, *exc_info) -> None:
        stack, nursery = self._stack, self._nursery
        self._stack = self._nursery = None
        if stack is not None and nursery is not None:
            nursery.cancel_scope.cancel()
            await stack.aclose()  # not handed the block's exception: it propagates unwrapped


async def close_quietly(client: RpcClient) -> None:
    """Close a connection that may be broken already; it is gone either way."""
    with trio.move_on_after(1), contextlib.suppress(Exception):
        await client.aclose()


class Connections:
    """The connections one client object keeps to its servers, by address, and their nursery.

    :meth:`get` hands out a live connection to an address, making one when the address has fewer
    than ``per_address`` (then in turn); concurrent callers wait for one connect instead of racing.
    A connection that broke is dropped from the pool when next looked at, so the next
    :meth:`get` reconnects. Each :class:`RpcClient`'s reader task runs in the owner's nursery:

    * ``async with connections:`` opens a nursery for the block and, at its end, closes every
      connection and ends the tasks (the body's exception, if any, passes through unwrapped);
    * :meth:`bind` lends a nursery the owner already has (a lake with many stores shares one);
      :meth:`release` takes it back and closes the connections.

    ``on_open(nursery)`` is called whenever a nursery is taken on, to start companion tasks (the
    metadata service's call watcher). A connection asked for while there is no nursery is a
    RuntimeError: every owner opens its connections in an ``async with`` (or lends a nursery).
    """

    def __init__(self, secret: bytes, *, name: str, per_address: int = 1, connect_timeout: float = 5.0,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, ssl_context: ssl.SSLContext | None = None,
                 on_open: Callable[[trio.Nursery], None] | None = None):
        if per_address < 1:
            raise ValueError("per_address must be >= 1")
        self.secret = secret
        self.name = name
        self.per_address = per_address
        self.connect_timeout = connect_timeout
        self.max_payload = max_payload
        self.ssl_context = ssl_context
        self.on_open = on_open
        self._pools: dict[str, list[RpcClient]] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._turn = 0
        self._nursery: trio.Nursery | None = None
        self._background: Background | None = None

    # -- the nursery ---------------------------------------------------------------------------

    def bind(self, nursery: trio.Nursery) -> None:
        """Run the connections' tasks in ``nursery`` (the owner's) from now on."""
        if self._nursery is not None:
            raise RuntimeError(f"{self.name}: the connections already have a nursery")
        self._nursery = nursery
        if self.on_open is not None:
            self.on_open(nursery)

    async def release(self) -> None:
        """Close every connection and give the nursery back (its owner ends it)."""
        await self.aclose()
        self._nursery = None

    async def __aenter__(self) -> Connections:
        background = Background()
        nursery = await background.__aenter__()
        try:
            self.bind(nursery)
        except BaseException:
            await background.__aexit__(None, None, None)
            raise
        self._background = background
        return self

    async def __aexit__(self, *exc_info) -> None:
        background, self._background = self._background, None
        try:
            with trio.CancelScope(shield=True):
                await self.release()
        finally:
            if background is not None:
                await background.__aexit__(*exc_info)  # ends reader tasks and companions

    @property
    def owner_nursery(self) -> trio.Nursery | None:
        """The nursery the connections' tasks run in now, if any (companion tasks may join it)."""
        return self._nursery

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError(f"{self.name}: no owner for the connections' tasks: use 'async with' "
                               "or bind(nursery) first")
        return self._nursery

    # -- connections ---------------------------------------------------------------------------

    def _alive(self, address: str) -> list[RpcClient]:
        pool = [c for c in self._pools.get(address, ()) if not c.closed]
        self._pools[address] = pool
        return pool

    async def get(self, address: str, *, connect_timeout: float | None = None,
                  before_connect: Callable[[], None] | None = None) -> RpcClient:
        """A live connection to ``address``, made if needed. ``before_connect`` runs (and may
        raise) just before a new connection is made, after waiting for the connect lock.

        Raises what :meth:`RpcClient.connect` raises (OSError, trio.TooSlowError, AuthError).
        """
        pool = self._alive(address)
        if len(pool) >= self.per_address:
            self._turn = (self._turn + 1) % len(pool)
            return pool[self._turn]
        async with self._locks.setdefault(address, trio.Lock()):
            pool = self._alive(address)
            if len(pool) >= self.per_address:
                return pool[0]
            if before_connect is not None:
                before_connect()
            client = await self.connect(address, connect_timeout=connect_timeout)
            self._pools.setdefault(address, []).append(client)
            return client

    async def connect(self, address: str, *, connect_timeout: float | None = None) -> RpcClient:
        """A new connection to ``address``, outside the pool (see :meth:`replace`)."""
        host, port = parse_address(address)
        return await RpcClient.connect(
            host, port, self.secret, self._require_nursery(),
            connect_timeout=self.connect_timeout if connect_timeout is None else connect_timeout,
            max_payload=self.max_payload, ssl_context=self.ssl_context)

    def pooled(self, address: str) -> RpcClient | None:
        """The first pooled connection to ``address`` (live or not), if any."""
        pool = self._pools.get(address)
        return pool[0] if pool else None

    def replace(self, address: str, client: RpcClient) -> None:
        """Make ``client`` the pool of ``address`` (the old connections are not closed here)."""
        self._pools[address] = [client]

    def forget(self, address: str, client: RpcClient | None) -> None:
        """Stop handing out ``client`` (not a newer connection made meanwhile)."""
        pool = self._pools.get(address)
        if client is not None and pool and client in pool:
            pool.remove(client)

    def drop(self, address: str) -> list[RpcClient]:
        """Take every pooled connection to ``address`` out of the pool (not closed here)."""
        return self._pools.pop(address, [])

    async def close(self, address: str) -> None:
        """Close the connections to ``address``: their pending calls fail at once."""
        for client in self.drop(address):
            await close_quietly(client)

    async def aclose(self) -> None:
        """Close every connection (the nursery, if any, stays for new ones)."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            for client in pool:
                await close_quietly(client)
