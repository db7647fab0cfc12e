"""The wire protocol spoken between mounts, storage peers and metadata servers.

This module owns framing, the cluster-secret handshake, a pipelined RPC client and the server
loop. It is the project's bottom layer: it imports only the standard library, trio and msgpack,
and knows nothing about chunks or metadata — ops are plain strings, arguments plain dicts.

Frame layout::

    !II prefix (8 bytes) = (header_len, payload_len)
    header  : header_len bytes of msgpack, a map whose "v" is PROTOCOL_VERSION
    payload : payload_len raw bytes (never msgpack-wrapped: wrapping measured ~2x slower)

Both lengths are checked against their limits as soon as the prefix arrives, before anything is
allocated or waited for, so a hostile prefix costs nothing.

Handshake (mutual HMAC-SHA256 over the cluster secret, nothing else accepted until it succeeds)::

    server -> {"op": "hello",   "challenge": C}                              C: 32 random bytes
    client -> {"op": "auth",    "nonce": N, "mac": HMAC(s, "client"|C|N)}    N: 32 random bytes
    server -> {"op": "welcome", "mac": HMAC(s, "server"|N|C)}   or {"op": "denied"} and close

The "client"/"server" labels stop a peer from reflecting one side's proof back as the other's;
fresh random C and N stop replays. Handshake frames must have empty payloads.

RPC: a request header is {"v", "id", "op", "a": args}; the response reuses the id and carries
either {"ok": True, "r": result} or {"ok": False, "err": message, "errno": n}. One connection
carries many requests at once and answers may come back in any order. A request with "nr": true
is one-way: the server answers nothing (Raft's messages, which carry their own replies).

Failure policy: a malformed, oversized, truncated or unauthenticated frame ends that connection
only. The server logs one line and keeps serving everyone else; the client fails every pending
call with :class:`ConnectionLost`. Every network step runs under a timeout.

Cancellation caveat: trio cannot tell how much of a cancelled ``send_all`` reached the socket.
If a send is cancelled (or fails) after it started writing a frame, the byte stream is out of
sync, so :class:`FramedStream` closes it. For :class:`RpcClient` this means a call whose timeout
fires while its *request* is still being written (a large payload to a congested peer) takes
the whole connection down; a timeout while waiting for the *answer* does not.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import msgpack
import trio

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_HEADER = 64 * 1024
# Room for one 64 MiB shard plus a little framing slack.
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024 + 4096

_PREFIX = struct.Struct("!II")
# Receive size while reading prefixes/headers: big enough to pick up several small pipelined
# frames per syscall. Payload reads ask for up to _MAX_RECEIVE at once (never more, because
# socket.recv allocates its full max_bytes up front before shrinking the result).
_RECEIVE_CHUNK = 64 * 1024
_MAX_RECEIVE = 1024 * 1024
# Payloads up to this size are glued to the header and written with one syscall; larger ones are
# written straight from the caller's buffer so they are never copied.
_COALESCE_LIMIT = 64 * 1024

_CHALLENGE_BYTES = 32
_MIN_SECRET_BYTES = 16

Handler = Callable[[str, dict, bytearray], Awaitable[tuple[dict, bytes | bytearray | memoryview]]]


class ProtocolError(Exception):
    """The peer broke the protocol (malformed, oversized, wrong version); the connection is closed."""


class AuthError(ProtocolError):
    """The handshake failed: wrong secret, garbage, or the peer took too long."""


class SecretRejected(AuthError):
    """The other side answered, and one of us does not hold the cluster secret: retrying is futile
    (unlike a handshake that timed out or was cut, which is a plain AuthError)."""


class RemoteError(Exception):
    """The server ran the request and answered with an error; ``errno`` says which."""

    def __init__(self, message: str, errno: int = 0):
        super().__init__(message)
        self.errno = errno


class ConnectionLost(ConnectionError):
    """The connection closed or broke while a call was pending (or before a new one started)."""


class FrameTooLarge(ValueError):
    """A frame we were asked to send exceeds MAX_HEADER or the connection's max_payload.

    Raised before anything is written, so the connection is still usable.
    """


# ----------------------------------------------------------------------------------------------
# Secrets and addresses


def load_secret(path) -> bytes:
    """Read a cluster secret file; trailing whitespace (an editor's newline) is not part of it."""
    with open(path, "rb") as f:
        secret = f.read().rstrip()
    if len(secret) < _MIN_SECRET_BYTES:
        raise ValueError(
            f"cluster secret in {path} is {len(secret)} bytes; it must be at least {_MIN_SECRET_BYTES} "
            "(create one with: head -c 32 /dev/urandom | base64 > FILE)")
    try:
        if os.stat(path).st_mode & 0o077:
            logger.warning("cluster secret %s is readable by other users; chmod 600 it", path)
    except OSError:  # the file was readable a moment ago; a failed stat is not worth failing over
        pass
    return secret


def fingerprint(secret: bytes) -> str:
    """A short id of a secret, safe to print or store, to tell which secret a node was given."""
    return hashlib.sha256(b"lakefs-fuse-secret:" + bytes(secret)).hexdigest()[:16]


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (which means ``default_host``)."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not host or not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [IPV6]:PORT, e.g. [::1]:7000")
        port_text = rest[1:]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT or :PORT, e.g. 127.0.0.1:7000")
        if ":" in host:
            raise ValueError(f"bad address {text!r}: put IPv6 addresses in brackets, e.g. [::1]:7000")
        host = host or default_host
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"bad address {text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def _require_secret(secret) -> None:
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ValueError("the cluster secret must be non-empty bytes (see load_secret)")


# ----------------------------------------------------------------------------------------------
# Framing


def _encode_header(header: dict) -> bytes:
    if not isinstance(header, dict):
        raise TypeError(f"frame header must be a dict, not {type(header).__name__}")
    if "v" not in header:
        header = {"v": PROTOCOL_VERSION, **header}
    body = msgpack.packb(header, use_bin_type=True)
    if len(body) > MAX_HEADER:
        raise FrameTooLarge(f"frame header is {len(body)} bytes; the limit is {MAX_HEADER}")
    return body


def _decode_header(data) -> dict:
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 -- untrusted bytes: msgpack raises several types, all "garbage"
        raise ProtocolError(f"undecodable frame header: {exc!r}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"frame header is a {type(header).__name__}, not a map")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # type() check: True == 1
        raise ProtocolError(f"unsupported protocol version {version!r} (we speak {PROTOCOL_VERSION})")
    return header


class FramedStream:
    """Frames over one trio stream: concurrent senders, one receiver at a time.

    Received prefix/header bytes live in one reused buffer (with whatever followed them in the
    same read); each payload gets a fresh bytearray sized from the prefix and filled in place.
    Once the byte stream is out of sync (a bad frame, an interrupted payload read or write),
    every later operation fails instead of parsing garbage.
    """

    def __init__(self, stream: trio.abc.Stream, *, max_payload: int = DEFAULT_MAX_PAYLOAD):
        if max_payload < 0:
            raise ValueError("max_payload must be >= 0")
        self.stream = stream
        self.max_payload = max_payload
        self._send_lock = trio.Lock()
        self._received = bytearray()  # bytes read from the stream but not yet handed out
        self._bytes_received = 0  # lifetime total; 0 tells a silent probe from a failed peer
        self._receive_broken: BaseException | None = None
        self._send_broken: str | None = None

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, header: dict, payload: bytes | bytearray | memoryview = b"") -> None:
        """Write one frame. Safe to call from many tasks at once.

        A header msgpack cannot encode (TypeError/ValueError/OverflowError) or a frame over the
        limits (FrameTooLarge) fails before anything is written. "v" is added if missing.
        """
        body = _encode_header(header)
        view = payload if isinstance(payload, bytes) else memoryview(payload).cast("B")
        if len(view) > self.max_payload:
            raise FrameTooLarge(f"payload is {len(view)} bytes; this connection allows {self.max_payload}")
        head = _PREFIX.pack(len(body), len(view)) + body
        async with self._send_lock:
            if self._send_broken is not None:
                raise ConnectionLost(self._send_broken)
            # If our deadline has already passed, fail here, before a single byte is written,
            # rather than inside send_all where it would cost the whole connection.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                if len(view) <= _COALESCE_LIMIT:
                    await self.stream.send_all(head + view if view else head)
                else:
                    await self.stream.send_all(head)
                    await self.stream.send_all(view)
            except BaseException as exc:
                self._send_broken = f"connection unusable: a frame write was interrupted ({exc!r})"
                await trio.aclose_forcefully(self.stream)
                if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
                    raise ConnectionLost(f"connection lost while sending: {exc!r}") from exc
                raise

    # -- receiving -------------------------------------------------------------------------------

    async def receive(self, *, max_payload: int | None = None) -> tuple[dict, bytearray]:
        """Read one frame. ``max_payload`` may lower the connection's limit for this frame.

        Raises ProtocolError for a bad frame, EOFError when the peer closed cleanly between
        frames, ConnectionLost when it closed or broke mid-frame.
        """
        if self._receive_broken is not None:
            raise type(self._receive_broken)(f"stream already failed: {self._receive_broken}")
        limit = self.max_payload if max_payload is None else min(max_payload, self.max_payload)
        try:
            # Nothing is consumed from the buffer until the header has decoded, so a cancellation
            # while waiting for prefix or header bytes leaves the stream intact.
            await self._fill(_PREFIX.size)
            header_len, payload_len = _PREFIX.unpack_from(self._received)
            if header_len > MAX_HEADER:
                raise ProtocolError(f"frame header of {header_len} bytes exceeds the {MAX_HEADER} limit")
            if payload_len > limit:
                raise ProtocolError(f"frame payload of {payload_len} bytes exceeds the {limit} limit")
            end = _PREFIX.size + header_len
            await self._fill(end)
            # Copying the header (tiny in practice, <= 64 KiB) keeps no view on the buffer alive,
            # which would forbid resizing it.
            header = _decode_header(self._received[_PREFIX.size:end])
            del self._received[:end]
        except ProtocolError as exc:
            self._receive_broken = exc
            raise
        payload = await self._receive_payload(payload_len)
        return header, payload

    async def _fill(self, size: int) -> None:
        """Receive until the buffer holds at least ``size`` bytes."""
        while len(self._received) < size:
            data = await self._receive_some(_RECEIVE_CHUNK)
            if not data:
                if not self._received:
                    raise EOFError("peer closed the connection")
                raise self._mark_lost(ConnectionLost("peer closed the connection in the middle of a frame"))
            self._received += data

    async def _receive_payload(self, size: int) -> bytearray:
        payload = bytearray(size)
        got = min(size, len(self._received))
        payload[:got] = self._received[:got]
        del self._received[:got]
        if got == size:
            return payload
        try:
            with memoryview(payload) as dest:
                while got < size:
                    want = size - got
                    data = await self._receive_some(max(_RECEIVE_CHUNK, min(want, _MAX_RECEIVE)))
                    if not data:
                        raise ConnectionLost("peer closed the connection in the middle of a payload")
                    take = min(want, len(data))
                    with memoryview(data) as src:
                        dest[got:got + take] = src[:take]
                        if take < len(data):  # the start of the next frame
                            self._received += src[take:]
                    got += take
        except BaseException as exc:
            # Part of the payload is gone; whatever comes next is not a frame boundary.
            self._mark_lost(ConnectionLost(f"a payload read was interrupted ({exc!r})"))
            raise
        return payload

    async def _receive_some(self, max_bytes: int) -> bytes:
        try:
            data = await self.stream.receive_some(max_bytes)
            self._bytes_received += len(data)
            return data
        except trio.BrokenResourceError as exc:
            raise self._mark_lost(ConnectionLost(f"connection broken: {exc!r}")) from exc
        except trio.ClosedResourceError as exc:
            raise self._mark_lost(ConnectionLost("connection was closed locally")) from exc

    def _mark_lost(self, exc: ConnectionLost) -> ConnectionLost:
        if self._receive_broken is None:
            self._receive_broken = exc
        return exc

    async def aclose(self) -> None:
        self._send_broken = self._send_broken or "connection closed locally"
        await self.stream.aclose()


# ----------------------------------------------------------------------------------------------
# Handshake


def _mac(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(bytes(secret), label + first + second, hashlib.sha256).digest()


def _is_token(value) -> bool:
    return isinstance(value, bytes) and len(value) == _CHALLENGE_BYTES


@contextlib.contextmanager
def _handshake(timeout: float):
    """Run one side of the handshake under ``timeout``; every failure becomes an AuthError."""
    try:
        with trio.fail_after(timeout):
            yield
    except AuthError:
        raise
    except trio.TooSlowError:
        raise AuthError(f"handshake timed out after {timeout}s") from None
    except (ProtocolError, EOFError, ConnectionLost) as exc:
        raise AuthError(f"handshake failed: {exc}") from exc


async def client_handshake(fs: FramedStream, secret: bytes, *, timeout: float = 5.0) -> None:
    """Prove we hold the cluster secret and check that the server does too."""
    _require_secret(secret)
    with _handshake(timeout):
        hello, _ = await fs.receive(max_payload=0)
        challenge = hello.get("challenge")
        if hello.get("op") != "hello" or not _is_token(challenge):
            raise AuthError("server did not open with a valid hello")
        nonce = secrets.token_bytes(_CHALLENGE_BYTES)
        await fs.send({"v": PROTOCOL_VERSION, "op": "auth", "nonce": nonce,
                       "mac": _mac(secret, b"client", challenge, nonce)})
        reply, _ = await fs.receive(max_payload=0)
        if reply.get("op") == "denied":
            raise SecretRejected(f"server rejected our cluster secret (fingerprint {fingerprint(secret)})")
        proof = reply.get("mac")
        if reply.get("op") != "welcome" or not isinstance(proof, bytes):
            raise AuthError("server sent a malformed handshake reply")
        if not hmac.compare_digest(proof, _mac(secret, b"server", nonce, challenge)):
            raise SecretRejected("server could not prove it holds our cluster secret")


async def server_handshake(fs: FramedStream, secret: bytes, *, timeout: float = 5.0) -> None:
    """Check that the client holds the cluster secret, then prove that we do."""
    _require_secret(secret)
    challenge = secrets.token_bytes(_CHALLENGE_BYTES)
    with _handshake(timeout):
        await fs.send({"v": PROTOCOL_VERSION, "op": "hello", "challenge": challenge})
        auth, _ = await fs.receive(max_payload=0)
        nonce, proof = auth.get("nonce"), auth.get("mac")
        if auth.get("op") != "auth" or not _is_token(nonce) or not isinstance(proof, bytes):
            raise AuthError(f"client sent {auth.get('op')!r} instead of a valid auth frame")
        if not hmac.compare_digest(proof, _mac(secret, b"client", challenge, nonce)):
            # Telling the client lets it report "wrong secret" rather than a bare disconnect.
            with contextlib.suppress(ConnectionLost, OSError):
                await fs.send({"v": PROTOCOL_VERSION, "op": "denied"})
            raise AuthError("client does not hold our cluster secret")
        await fs.send({"v": PROTOCOL_VERSION, "op": "welcome",
                       "mac": _mac(secret, b"server", nonce, challenge)})


# ----------------------------------------------------------------------------------------------
# Client


class _PendingCall:
    __slots__ = ("done", "lost", "response")

    def __init__(self):
        self.done = trio.Event()
        self.response: tuple[dict, bytearray] | None = None
        self.lost: str | None = None


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
        _require_secret(secret)
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_hostname=host)
            try:
                with trio.fail_after(connect_timeout):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                await trio.aclose_forcefully(stream)
                raise OSError(f"TLS handshake with {host}:{port} failed: {exc.__cause__ or exc}") from exc
            except BaseException:
                await trio.aclose_forcefully(stream)
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
        return self._fs._bytes_received

    @property
    def sending(self) -> bool:
        """A frame is being written right now (a long request is still going out)."""
        return self._fs._send_lock.locked()

    async def call(self, op: str, args: dict | None = None, payload: bytes | bytearray | memoryview = b"",
                   *, timeout: float = 10.0) -> tuple[dict, bytearray]:
        """Send one request and wait for its answer: returns (result, payload).

        Raises RemoteError if the server answered with an error, trio.TooSlowError after
        ``timeout`` seconds (a late answer is dropped), ConnectionLost if the connection ends.
        """
        if not isinstance(op, str) or not (args is None or isinstance(args, dict)):
            raise TypeError("call(op, args): op must be a str and args a dict or None")
        if self._lost is not None:
            raise ConnectionLost(f"{self._peer}: {self._lost}")
        call_id = next(self._ids)
        pending = self._pending[call_id] = _PendingCall()
        try:
            with trio.fail_after(timeout):
                await self._fs.send({"v": PROTOCOL_VERSION, "id": call_id, "op": op,
                                     "a": {} if args is None else args}, payload)
                await pending.done.wait()
        finally:
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
                header, payload = await self._fs.receive()
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


def server_tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """TLS for a server: its certificate chain and private key (PEM files)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_tls_context(cafile: str) -> ssl.SSLContext:
    """TLS for a client: trust the CA (or self-signed certificate) in ``cafile``; names are checked."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


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

    def __init__(self, stream: trio.SocketStream, handler: Handler, secret: bytes, *,
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
            quiet = self.fs._bytes_received == 0 and isinstance(exc.__cause__, (EOFError, ConnectionLost))
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
            try:
                result, out = await self.handler(op, args, payload)
                if not isinstance(result, dict):
                    raise TypeError(f"handler for {op!r} returned a {type(result).__name__} result, not a dict")
                response = {"v": PROTOCOL_VERSION, "id": call_id, "ok": True, "r": result}
            except Exception as exc:  # noqa: BLE001 -- any handler failure becomes an error answer (logged there)
                response, out = self._error_response(call_id, op, exc), b""
            try:
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
    _require_secret(secret)
    if max_inflight_per_conn < 1:
        raise ValueError("max_inflight_per_conn must be >= 1")
    listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        bound_port = listeners[0].socket.getsockname()[1]

        async def handle_connection(stream: trio.SocketStream) -> None:
            if ssl_context is not None:  # TLS first; its handshake runs on the first read
                stream = trio.SSLStream(stream, ssl_context, server_side=True)
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
