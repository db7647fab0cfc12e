"""The wire protocol spoken between mounts, storage peers and metadata servers: frames and trust.

This module owns the frame format, its limits and errors, the cluster secret (loading, its
fingerprint, the HMAC handshake that proves both ends hold it), ``HOST:PORT`` addresses and TLS
contexts. Calls over frames -- the pipelined client, the server loop and the connection owner
-- live one floor up in :mod:`lakefs_fuse.rpc`. Both are the project's bottom layer: they import
only the standard library, trio and msgpack, and know nothing about chunks or metadata.

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

Failure policy: a malformed, oversized, truncated or unauthenticated frame ends that connection
only (:class:`ProtocolError`, :class:`AuthError`); a stream that broke mid-frame raises
:class:`ConnectionLost`. Every network step runs under a timeout.

Cancellation caveat: trio cannot tell how much of a cancelled ``send_all`` reached the socket.
If a send is cancelled (or fails) after it started writing a frame, the byte stream is out of
sync, so :class:`FramedStream` closes it (see :mod:`lakefs_fuse.rpc` for what that means to a call).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import secrets
import select
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeGuard

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

# A worker thread sending a file gives up when the other side has not taken a byte for this long.
_SEND_STALL = 30.0

_CHALLENGE_BYTES = 32
_MIN_SECRET_BYTES = 16

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


@dataclass(slots=True)
class FileSlice:
    """A payload that is a range of an open file, sent with ``os.sendfile`` (never read into this
    process) over a plain TCP connection, or read and sent over TLS. ``release`` runs once the
    frame is out or has failed (the owner keeps ``fd`` open until then)."""

    fd: int
    offset: int
    count: int
    release: Callable[[], None]
    #: The range is in the page cache (so sending it needs no disk): it is sent from the event
    #: loop. Otherwise a worker thread sends it, and may wait for the disk.
    resident: bool = False

    def __len__(self) -> int:
        return self.count


class Sink(Protocol):
    """Where a receiver wants a payload put: ``views`` (writable, their lengths summing to the
    payload's) while ``open``; once ``open`` turns False (its caller gave up) the rest of the
    payload is read and dropped, and ``views`` is never written again."""

    views: list[memoryview]
    open: bool


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


def require_secret(secret) -> None:
    """Refuse anything but a non-empty bytes secret (before a connection is made with it)."""
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


class FramedStream(trio.abc.AsyncResource):
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
        # A plain TCP stream's socket: payloads are read straight into their buffers (readv) and
        # file payloads sent with sendfile. None under TLS (bytes must pass through the SSL layer).
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._discard: memoryview | None = None  # where a payload nobody waits for any more goes

    @property
    def bytes_received(self) -> int:
        """Bytes read from the stream so far (0 tells a silent probe from a failed peer)."""
        return self._bytes_received

    @property
    def sending(self) -> bool:
        """A frame is being written right now."""
        return self._send_lock.locked()

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
                await self._send_failed(exc)
                raise

    async def send_file(self, header: dict, source: FileSlice) -> None:
        """Write one frame whose payload is the file range ``source``, then ``source.release()``
        (also when anything fails). On plain TCP the bytes go from the page cache to the socket
        (``os.sendfile``): from the event loop when the range is ``resident``, else from a worker
        thread, which may wait for the disk (it writes the frame's header first). Under TLS they
        are read (in a thread), then sent; a read that fails raises ValueError before anything is
        written, as an unencodable frame does."""
        try:
            body = _encode_header(header)
            if source.count > self.max_payload:
                raise FrameTooLarge(f"payload is {source.count} bytes; this connection allows {self.max_payload}")
            head = _PREFIX.pack(len(body), source.count) + body
            data = None
            if self._sock is None:
                try:
                    data = await trio.to_thread.run_sync(_pread_exact, source.fd, source.offset, source.count)
                except OSError as exc:  # nothing written yet: the caller can still answer with an error
                    raise ValueError(f"cannot read the file range to send: {exc}") from exc
            async with self._send_lock:
                if self._send_broken is not None:
                    raise ConnectionLost(self._send_broken)
                await trio.lowlevel.checkpoint_if_cancelled()
                try:
                    if data is not None:
                        await self.stream.send_all(head)
                        await self.stream.send_all(data)
                    elif source.resident:
                        await self.stream.send_all(head)
                        await self._sendfile(source.fd, source.offset, source.count)
                    else:
                        assert self._sock is not None
                        await trio.to_thread.run_sync(_send_file_blocking, self._sock.fileno(), head,
                                                      source.fd, source.offset, source.count)
                except BaseException as exc:
                    await self._send_failed(exc)
                    raise
        finally:
            source.release()

    async def _sendfile(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes of file ``fd`` from ``offset`` to the socket, on the event loop (the
        caller holds the send lock and knows the range is in the page cache)."""
        sock = self._sock
        assert sock is not None
        while count:
            try:
                n = os.sendfile(sock.fileno(), fd, offset, count)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            if not n:
                raise OSError(errno.EIO, "file ended before the range being sent")
            offset += n
            count -= n

    async def _send_failed(self, exc: BaseException) -> None:
        """A frame write failed part-way: the stream is out of sync, so it is closed; a broken or
        closed stream is reported as ConnectionLost (raised from here), anything else re-raised
        by the caller."""
        self._send_broken = f"connection unusable: a frame write was interrupted ({exc!r})"
        await trio.aclose_forcefully(self.stream)
        if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, OSError)):
            raise ConnectionLost(f"connection lost while sending: {exc!r}") from exc

    # -- receiving -------------------------------------------------------------------------------

    async def receive(self, *, max_payload: int | None = None,
                      sink: Callable[[dict, int], Sink | None] | None = None) -> tuple[dict, bytearray]:
        """Read one frame. ``max_payload`` may lower the connection's limit for this frame.

        ``sink(header, payload_len)`` may name buffers for the payload (a :class:`Sink`): it is
        then read straight into them and the returned payload is empty. Otherwise the payload
        comes back in a new bytearray.

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
        target = sink(header, payload_len) if sink is not None and payload_len else None
        if target is not None:
            await self._receive_into(target, payload_len)
            return header, bytearray()
        payload = bytearray(payload_len)
        if payload_len:
            await self._receive_into(_Whole(payload), payload_len)
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

    async def _receive_into(self, target: Sink, size: int) -> None:
        """Read a payload of ``size`` bytes into ``target``: what already arrived with the header
        is copied, the rest read straight into its buffers (one ``readv`` per wakeup on plain
        TCP; through the stream and copied under TLS)."""
        try:
            got = min(size, len(self._received))
            if got:
                with memoryview(self._received) as early:
                    _scatter(target, 0, early[:got])
                del self._received[:got]
            while got < size:
                if self._sock is None:
                    data = await self._receive_some(max(_RECEIVE_CHUNK, min(size - got, _MAX_RECEIVE)))
                    if not data:
                        raise ConnectionLost("peer closed the connection in the middle of a payload")
                    take = min(size - got, len(data))
                    with memoryview(data) as src:
                        _scatter(target, got, src[:take])
                        if take < len(data):  # the start of the next frame
                            self._received += src[take:]
                    got += take
                    continue
                await trio.lowlevel.wait_readable(self._sock)
                try:  # (no await between choosing the buffers and filling them)
                    n = os.readv(self._sock.fileno(), self._buffers(target, got, size))
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise ConnectionLost(f"connection broken: {exc!r}") from exc
                if not n:
                    raise ConnectionLost("peer closed the connection in the middle of a payload")
                self._bytes_received += n
                got += n
        except BaseException as exc:
            # Part of the payload is gone; whatever comes next is not a frame boundary.
            self._mark_lost(ConnectionLost(f"a payload read was interrupted ({exc!r})"))
            raise

    def _buffers(self, target: Sink, got: int, size: int) -> list[memoryview]:
        """The buffers for payload bytes [got, size): the rest of ``target``'s views, or a scratch
        buffer once its receiver has gone (its views must not be written after it returned)."""
        if not target.open:
            if self._discard is None:
                self._discard = memoryview(bytearray(_MAX_RECEIVE))
            return [self._discard[:size - got]]
        out = []
        for view in target.views:
            if got >= len(view):
                got -= len(view)
                continue
            out.append(view[got:] if got else view)
            got = 0
        return out

    async def _receive_some(self, max_bytes: int) -> bytes | bytearray:
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


class _Whole:
    """A sink that is one new buffer (a payload nobody named buffers for)."""

    __slots__ = ("open", "views")

    def __init__(self, buffer: bytearray):
        self.views = [memoryview(buffer)]
        self.open = True


def _scatter(target: Sink, pos: int, data: memoryview) -> None:
    """Copy ``data`` into ``target``'s views from payload offset ``pos`` on (nothing once closed)."""
    if not target.open:
        return
    for view in target.views:
        if pos >= len(view):
            pos -= len(view)
            continue
        take = min(len(view) - pos, len(data))
        view[pos:pos + take] = data[:take]
        data = data[take:]
        pos = 0
        if not data:
            return


def _pread_exact(fd: int, offset: int, count: int) -> bytearray:
    out = bytearray(count)
    with memoryview(out) as view:
        done = 0
        while done < count:
            n = os.preadv(fd, [view[done:]], offset + done)
            if not n:
                raise OSError(errno.EIO, "file ended before the range being sent")
            done += n
    return out


def _send_file_blocking(sock_fd: int, head: bytes, fd: int, offset: int, count: int) -> None:
    """In a worker thread: ``head``, then ``count`` bytes of file ``fd`` from ``offset``, to the
    (non-blocking) socket. Works on a duplicate of the socket's descriptor, so a connection
    closed meanwhile cannot hand this thread somebody else's descriptor. Raises TimeoutError when
    the other side takes nothing for ``_SEND_STALL`` seconds."""
    out = os.dup(sock_fd)
    try:
        poller = select.poll()
        poller.register(out, select.POLLOUT)
        view = memoryview(head)
        while view:
            try:
                view = view[os.write(out, view):]
            except BlockingIOError:
                _wait_writable(poller)
        while count:
            try:
                n = os.sendfile(out, fd, offset, count)
            except BlockingIOError:
                _wait_writable(poller)
                continue
            if not n:
                raise OSError(errno.EIO, "file ended before the range being sent")
            offset += n
            count -= n
    finally:
        os.close(out)


def _wait_writable(poller: select.poll) -> None:
    if not poller.poll(_SEND_STALL * 1000):
        raise TimeoutError(f"the other side took nothing for {_SEND_STALL:g} s")


# ----------------------------------------------------------------------------------------------
# Handshake


def _mac(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(bytes(secret), label + first + second, hashlib.sha256).digest()


def _is_token(value: object) -> TypeGuard[bytes]:
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
    require_secret(secret)
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
    require_secret(secret)
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
# TLS


def server_tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """TLS for a server: its certificate chain and private key (PEM files)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_tls_context(cafile: str) -> ssl.SSLContext:
    """TLS for a client: trust the CA (or self-signed certificate) in ``cafile``; names are checked."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
