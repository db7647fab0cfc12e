"""Wire protocol: framing, handshake, pipelined RPC and a server that survives bad clients.

Every test runs its own ``trio.run`` under a ``trio.fail_after`` deadline; network tests bind
127.0.0.1 on a kernel-chosen port.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import random
import struct
from functools import partial

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakefs_fuse import rpc, wire
from lakefs_fuse.rpc import RpcClient
from lakefs_fuse.wire import (
    AuthError,
    ConnectionLost,
    FramedStream,
    ProtocolError,
    RemoteError,
)

SECRET = b"correct horse battery staple 42"
WRONG = b"incorrect horse battery staple 4"
PREFIX = struct.Struct("!II")
MiB = 1024 * 1024


# ----------------------------------------------------------------------------------------------
# Helpers


class Service:
    """A test handler: echo, errors, hangs, and a record of concurrency."""

    def __init__(self):
        self.running = 0
        self.most_running = 0
        self.hanging = trio.Event()
        self.answer_order: list[int] = []

    async def __call__(self, op: str, args: dict, payload: bytearray):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if op == "echo":
                if args.get("sleep"):
                    await trio.sleep(args["sleep"])
                if "i" in args:
                    self.answer_order.append(args["i"])
                return {"args": args, "size": len(payload)}, payload
            if op == "missing":
                raise FileNotFoundError(errno.ENOENT, "no such shard")
            if op == "bug":
                raise RuntimeError("handler bug")
            if op == "slow-upstream":
                with trio.fail_after(0.01):
                    await trio.sleep_forever()
            if op == "hang":
                self.hanging.set()
                await trio.sleep_forever()
            if op == "bad-result":
                return {"obj": object()}, b""
            if op == "huge":
                return {}, bytes(args["n"])
            raise KeyError(op)
        finally:
            self.running -= 1


def run_with_server(body, handler=None, deadline: float = 20, **serve_kwargs):
    """Run ``body(port, nursery, handler)`` next to a server; tear everything down afterwards."""
    handler = handler or Service()

    async def main():
        with trio.fail_after(deadline):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    partial(rpc.serve, handler, "127.0.0.1", 0, SECRET, **serve_kwargs))
                await body(port, nursery, handler)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def read_until_closed(stream: trio.SocketStream, within: float = 5.0) -> None:
    """Drain a raw connection until the server closes it (EOF or reset); fail after ``within``."""
    with trio.fail_after(within):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return


async def send_raw(stream: trio.SocketStream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError):  # the server may already have hung up on us
        await stream.send_all(data)


async def authenticated_raw(port: int) -> trio.SocketStream:
    """A TCP stream that has passed the handshake, for writing hand-made frames."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await wire.client_handshake(FramedStream(stream), SECRET)
    return stream


def frame(header: dict, payload: bytes = b"") -> bytes:
    body = msgpack.packb(header, use_bin_type=True)
    return PREFIX.pack(len(body), len(payload)) + body + payload


async def good_client_works(port: int, nursery: trio.Nursery) -> None:
    client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
    result, payload = await client.call("echo", {"x": 1}, b"still alive")
    assert result["args"] == {"x": 1} and payload == b"still alive"
    await client.aclose()


def wire_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lakefs_fuse.wire" and r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------------------------
# RPC round trips


@pytest.mark.timeout(30)
def test_round_trip_payload_sizes():
    async def body(port, nursery, _):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        for size in (0, 1, MiB):
            data = random.Random(size).randbytes(size)
            result, payload = await client.call("echo", {"n": size}, data)
            assert result == {"args": {"n": size}, "size": size}
            assert isinstance(payload, bytearray) and payload == data
        # bytearray and memoryview payloads go out without being turned into bytes first
        _, payload = await client.call("echo", None, memoryview(bytearray(b"abc")))
        assert payload == b"abc"
        await client.aclose()
        assert client.closed

    run_with_server(body)


@pytest.mark.timeout(30)
def test_pipelined_calls_answered_out_of_order():
    order = random.Random(7).sample(range(50), 50)  # how long each call sleeps, shuffled

    async def body(port, nursery, service):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        results = {}

        async def one(i):
            payload = bytes([i]) * (i * 100)
            result, echoed = await client.call("echo", {"i": i, "sleep": order[i] * 0.004}, payload)
            results[i] = (result["args"]["i"], bytes(echoed))

        async with trio.open_nursery() as calls:
            for i in range(50):
                calls.start_soon(one, i)
        assert results == {i: (i, bytes([i]) * (i * 100)) for i in range(50)}
        assert service.answer_order != sorted(service.answer_order)  # really out of order
        assert service.most_running > 1  # really concurrent on one connection
        await client.aclose()

    run_with_server(body)


@pytest.mark.timeout(30)
def test_server_bounds_requests_in_flight_per_connection():
    async def body(port, nursery, service):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        async with trio.open_nursery() as calls:
            for _ in range(12):
                calls.start_soon(partial(client.call, "echo", {"sleep": 0.02}))
        assert service.most_running == 3
        await client.aclose()

    run_with_server(body, max_inflight_per_conn=3)


@pytest.mark.timeout(30)
def test_remote_errors_carry_errno_and_connection_survives(caplog):
    async def body(port, nursery, _):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        with pytest.raises(RemoteError) as missing:
            await client.call("missing")
        assert missing.value.errno == errno.ENOENT and "no such shard" in str(missing.value)
        assert (await client.call("echo", {}, b"1"))[1] == b"1"

        with pytest.raises(RemoteError) as bug:
            await client.call("bug")
        assert bug.value.errno == errno.EIO
        # an answer msgpack cannot encode is also a handler bug, answered with EIO
        with pytest.raises(RemoteError) as unencodable:
            await client.call("bad-result")
        assert unencodable.value.errno == errno.EIO
        # a handler whose own upstream call timed out reports ETIMEDOUT, not a bug
        with pytest.raises(RemoteError) as slow:
            await client.call("slow-upstream")
        assert slow.value.errno == errno.ETIMEDOUT
        assert (await client.call("echo", {}, b"2"))[1] == b"2"
        assert not client.closed
        await client.aclose()
        await good_client_works(port, nursery)

    with caplog.at_level(logging.DEBUG, logger="lakefs_fuse.wire"):
        run_with_server(body)
    bug_logs = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert any("handler bug" in str(r.exc_info[1]) for r in bug_logs)


@pytest.mark.timeout(30)
def test_oversized_answer_is_an_error_not_a_dead_connection():
    async def body(port, nursery, _):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        with pytest.raises(RemoteError) as too_big:
            await client.call("huge", {"n": 5000})
        assert too_big.value.errno == errno.EMSGSIZE
        assert (await client.call("huge", {"n": 4000}))[1] == bytes(4000)
        # and a request that is too big for the client's own limit is refused before sending
        small = await RpcClient.connect("127.0.0.1", port, SECRET, nursery, max_payload=10)
        with pytest.raises(wire.FrameTooLarge):
            await small.call("echo", {}, bytes(11))
        assert (await small.call("echo", {}, bytes(10)))[1] == bytes(10)
        await small.aclose()
        await client.aclose()

    run_with_server(body, max_payload=4096)


@pytest.mark.timeout(30)
def test_call_timeout_leaves_the_connection_usable():
    async def body(port, nursery, _):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        with pytest.raises(trio.TooSlowError):
            await client.call("hang", timeout=0.2)
        result, payload = await client.call("echo", {"after": True}, b"ok", timeout=5)
        assert result["args"] == {"after": True} and payload == b"ok"
        await client.aclose()

    run_with_server(body)


@pytest.mark.timeout(30)
def test_server_killed_mid_call_raises_connection_lost():
    service = Service()

    async def main():
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                server_scope = trio.CancelScope()

                async def run_server(task_status):
                    with server_scope:
                        await rpc.serve(service, "127.0.0.1", 0, SECRET, task_status=task_status)

                port = await nursery.start(run_server)
                client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
                errors = []

                async def pending_call():
                    try:
                        await client.call("hang", timeout=15)
                    except ConnectionLost as exc:
                        errors.append(exc)

                with trio.fail_after(5):
                    async with trio.open_nursery() as calls:
                        calls.start_soon(pending_call)
                        await service.hanging.wait()
                        server_scope.cancel()
                assert len(errors) == 1
                assert client.closed
                with pytest.raises(ConnectionLost):
                    await client.call("echo")

    trio.run(main)


@pytest.mark.timeout(30)
def test_aclose_fails_pending_calls_and_ends_the_reader():
    async def body(port, nursery, service):
        errors = []
        with trio.fail_after(5):
            async with trio.open_nursery() as client_nursery:  # exits only once the reader is gone
                client = await RpcClient.connect("127.0.0.1", port, SECRET, client_nursery)

                async def pending_call():
                    try:
                        await client.call("hang")
                    except ConnectionLost as exc:
                        errors.append(exc)

                client_nursery.start_soon(pending_call)
                await service.hanging.wait()
                await client.aclose()
        assert len(errors) == 1
        with pytest.raises(ConnectionLost):
            await client.call("echo")

    run_with_server(body)


# ----------------------------------------------------------------------------------------------
# Authentication


@pytest.mark.timeout(30)
def test_wrong_secret_is_rejected_and_server_stays_up(caplog):
    async def body(port, nursery, _):
        with pytest.raises(AuthError, match="rejected"):
            await RpcClient.connect("127.0.0.1", port, WRONG, nursery)
        # the same through the bare handshake
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with pytest.raises(AuthError):
            await wire.client_handshake(FramedStream(stream), WRONG)
        await stream.aclose()
        await good_client_works(port, nursery)

    run_with_server(body)
    assert any("authentication failed" in r.getMessage() for r in wire_warnings(caplog))


@pytest.mark.timeout(30)
def test_client_rejects_a_server_with_another_secret():
    async def main():
        with trio.fail_after(10):
            client_side, server_side = trio.testing.memory_stream_pair()
            outcomes = {}

            async def side(name, handshake, stream, secret):
                try:
                    await handshake(FramedStream(stream), secret, timeout=2)
                    outcomes[name] = "ok"
                except AuthError as exc:
                    outcomes[name] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(side, "client", wire.client_handshake, client_side, SECRET)
                nursery.start_soon(side, "server", rpc.server_handshake, server_side, WRONG)
            assert isinstance(outcomes["client"], AuthError)
            assert isinstance(outcomes["server"], AuthError)

            # and with matching secrets both sides succeed
            client_side, server_side = trio.testing.memory_stream_pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(side, "client", wire.client_handshake, client_side, SECRET)
                nursery.start_soon(side, "server", rpc.server_handshake, server_side, SECRET)
            assert outcomes == {"client": "ok", "server": "ok"}

    trio.run(main)


@pytest.mark.timeout(30)
def test_handshake_times_out_against_a_silent_peer():
    async def main():
        with trio.fail_after(10):
            _, server_side = trio.testing.memory_stream_pair()
            with pytest.raises(AuthError, match="timed out"):
                await rpc.server_handshake(FramedStream(server_side), SECRET, timeout=0.2)

    trio.run(main)


# ----------------------------------------------------------------------------------------------
# Hostile raw clients


def _garbage() -> bytes:
    return b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256))


def _before_auth_request() -> bytes:
    return frame({"v": 1, "id": 1, "op": "echo", "a": {}}, b"sneaky")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make_bytes", [
    _garbage,
    lambda: PREFIX.pack(wire.MAX_HEADER + 1, 0) + b"\x80" * 64,
    lambda: PREFIX.pack(1, 10**9),
    lambda: PREFIX.pack(20, 0) + b"\x81\xa1v",  # truncated, then we close our side
    _before_auth_request,
], ids=["garbage", "header-too-big", "payload-too-big", "truncated", "request-before-auth"])
def test_bad_bytes_before_auth_close_only_that_connection(make_bytes, caplog):
    async def body(port, nursery, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await send_raw(stream, make_bytes())
        await stream.send_eof()
        await read_until_closed(stream)
        await stream.aclose()
        await good_client_works(port, nursery)

    run_with_server(body)
    assert len(wire_warnings(caplog)) == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make_bytes, eof", [
    (_garbage, False),
    (lambda: PREFIX.pack(wire.MAX_HEADER + 1, 0), False),
    (lambda: PREFIX.pack(4, 5000) + b"\x81\xa1v\x01", False),  # header {"v": 1}, payload over 4096
    (lambda: frame({"v": 1, "id": 1, "op": "echo"}, b"x" * 100)[:-10], True),
    (lambda: frame({"v": 2, "id": 1, "op": "echo"}), False),
    (lambda: frame({"v": 1, "op": "echo"}), False),  # no id to answer to
    (lambda: frame(["not", "a", "map"]), False),
], ids=["garbage", "header-too-big", "payload-too-big", "truncated", "bad-version", "no-id", "not-a-map"])
def test_bad_frames_after_auth_close_only_that_connection(make_bytes, eof, caplog):
    async def body(port, nursery, _):
        stream = await authenticated_raw(port)
        await send_raw(stream, make_bytes())
        if eof:
            await stream.send_eof()
        await read_until_closed(stream)
        await stream.aclose()
        await good_client_works(port, nursery)

    run_with_server(body, max_payload=4096)
    assert len(wire_warnings(caplog)) == 1


@pytest.mark.timeout(30)
def test_probe_that_connects_and_leaves_is_not_a_warning(caplog):
    async def body(port, nursery, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        # closing with the server's hello unread makes the kernel send a reset instead
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.sleep(0.1)
        await stream.aclose()
        await trio.sleep(0.1)
        await good_client_works(port, nursery)

    run_with_server(body)
    assert wire_warnings(caplog) == []


@pytest.mark.timeout(30)
def test_silent_client_is_dropped_after_the_handshake_timeout():
    async def body(port, nursery, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await read_until_closed(stream, within=5)
        await stream.aclose()
        await good_client_works(port, nursery)

    run_with_server(body, handshake_timeout=0.3)


# ----------------------------------------------------------------------------------------------
# FramedStream over in-memory streams


def feed(chunks: list[bytes], *, max_payload: int, close: bool = True):
    """Write ``chunks`` (yielding between them) into a FramedStream; collect frames and the end."""
    frames: list[tuple[dict, bytearray]] = []
    ending: list[BaseException] = []

    async def main():
        with trio.fail_after(5):
            to_reader, from_writer = trio.testing.memory_stream_one_way_pair()
            back_send, _ = trio.testing.memory_stream_one_way_pair()
            fs = FramedStream(trio.StapledStream(back_send, from_writer), max_payload=max_payload)

            async def writer():
                for chunk in chunks:
                    await to_reader.send_all(chunk)
                    await trio.lowlevel.checkpoint()  # let the reader see each chunk separately
                if close:
                    await to_reader.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                try:
                    while True:
                        frames.append(await fs.receive())
                except (ProtocolError, EOFError, ConnectionLost) as exc:
                    ending.append(exc)
                nursery.cancel_scope.cancel()

    trio.run(main)
    return frames, ending[0]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


header_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                          st.text(max_size=8), st.binary(max_size=8))
headers = st.dictionaries(st.text(max_size=4), header_values, max_size=4)


@pytest.mark.timeout(30)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(headers, st.binary(max_size=600)), max_size=5),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_frames_survive_any_chunking(messages, cuts):
    data = b"".join(frame({**h, "v": 1}, p) for h, p in messages)
    frames, ending = feed(split(data, cuts), max_payload=600)
    assert isinstance(ending, EOFError)
    assert [(h, bytes(p)) for h, p in frames] == [({**h, "v": 1}, p) for h, p in messages]


@st.composite
def near_valid_streams(draw):
    """Frames with plausible structure and random defects: lengths, versions, truncation."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        header = draw(headers)
        if draw(st.booleans()):
            header["v"] = draw(st.one_of(st.just(1), st.just(True), header_values))
        body = msgpack.packb(draw(st.one_of(st.just(header), header_values)), use_bin_type=True)
        payload = draw(st.binary(max_size=300))
        header_len = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32 - 1), st.integers(0, 80)))
        payload_len = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32 - 1), st.integers(0, 2000)))
        out += PREFIX.pack(header_len, payload_len) + body + payload
    if draw(st.booleans()):
        out = out[:draw(st.integers(0, len(out)))]
    return out


@pytest.mark.timeout(30)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), near_valid_streams()),
       st.lists(st.integers(0, 10_000), max_size=6),
       st.integers(0, 1024))
def test_frame_parser_only_returns_frames_or_protocol_outcomes(data, cuts, max_payload):
    frames, ending = feed(split(data, cuts), max_payload=max_payload)
    assert isinstance(ending, (ProtocolError, EOFError, ConnectionLost))
    for header, payload in frames:
        assert isinstance(header, dict) and type(header["v"]) is int and header["v"] == 1
        assert isinstance(payload, bytearray) and len(payload) <= max_payload


@pytest.mark.timeout(30)
def test_huge_claimed_payload_fails_at_once_without_waiting_for_data():
    # The writer never closes: if the parser waited for (or allocated) the claimed gigabyte,
    # feed() would hit its deadline instead.
    frames, ending = feed([PREFIX.pack(10, 10**9)], max_payload=1024, close=False)
    assert frames == [] and isinstance(ending, ProtocolError)
    _, ending = feed([PREFIX.pack(wire.MAX_HEADER + 1, 0)], max_payload=1024, close=False)
    assert isinstance(ending, ProtocolError)


@pytest.mark.timeout(30)
def test_payload_limit_is_inclusive_and_eof_kinds_differ():
    ok = frame({"v": 1}, b"x" * 1024)
    frames, ending = feed([ok], max_payload=1024)
    assert len(frames) == 1 and isinstance(ending, EOFError)
    _, ending = feed([frame({"v": 1}, b"x" * 1025)], max_payload=1024)
    assert isinstance(ending, ProtocolError)
    _, ending = feed([ok[:-1]], max_payload=1024)
    assert isinstance(ending, ConnectionLost)
    _, ending = feed([ok[:3]], max_payload=1024)
    assert isinstance(ending, ConnectionLost)


@pytest.mark.timeout(30)
def test_send_refuses_oversized_frames_before_writing():
    async def main():
        with trio.fail_after(5):
            a, b = trio.testing.memory_stream_pair()
            sender, receiver = FramedStream(a, max_payload=100), FramedStream(b)
            with pytest.raises(wire.FrameTooLarge):
                await sender.send({"op": "x"}, bytes(101))
            with pytest.raises(wire.FrameTooLarge):
                await sender.send({"blob": bytes(wire.MAX_HEADER)})
            await sender.send({"op": "x"}, bytearray(b"fine"))  # "v" is filled in
            header, payload = await receiver.receive()
            assert header == {"v": 1, "op": "x"} and payload == b"fine"

    trio.run(main)


# ----------------------------------------------------------------------------------------------
# Secrets and addresses


def test_load_secret(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"tooshort\n")
    with pytest.raises(ValueError, match="at least 16"):
        wire.load_secret(short)
    good = tmp_path / "good"
    good.write_bytes(SECRET + b"\n \n")
    good.chmod(0o600)
    assert wire.load_secret(good) == SECRET
    padded = tmp_path / "padded"  # 15 bytes plus a newline is still too short
    padded.write_bytes(b"x" * 15 + b"\n")
    with pytest.raises(ValueError):
        wire.load_secret(padded)


def test_fingerprint_is_stable_and_distinguishes_secrets():
    fp = wire.fingerprint(SECRET)
    assert fp == wire.fingerprint(bytes(SECRET)) and len(fp) == 16
    assert int(fp, 16) >= 0
    assert fp != wire.fingerprint(WRONG)
    assert SECRET.hex()[:16] != fp


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.5:7000", ("10.0.0.5", 7000)),
    ("peer-1.example:80", ("peer-1.example", 80)),
    ("[::1]:9000", ("::1", 9000)),
    (":7100", ("127.0.0.1", 7100)),
    (" localhost:0 ", ("localhost", 0)),
])
def test_parse_address(text, expected):
    assert wire.parse_address(text) == expected


def test_parse_address_default_host():
    assert wire.parse_address(":5", default_host="0.0.0.0") == ("0.0.0.0", 5)


@pytest.mark.parametrize("text", ["", "7000", "host", "host:", "host:http", "host:65536", "host:-1",
                                  "::1:80", "[::1]", "[::1]80", "[]:80", "host:७"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError, match="bad address"):
        wire.parse_address(text)


def test_post_is_one_way_and_its_failures_stay_on_the_server():
    seen = []

    async def handler(op, args, payload):
        seen.append((op, bytes(payload)))
        if op == "boom":
            raise ValueError("handler bug")
        return {"x": 1}, b""

    async def main():
        async with trio.open_nursery() as nursery:
            port = await nursery.start(rpc.serve, handler, "127.0.0.1", 0, SECRET)
            client = await rpc.RpcClient.connect("127.0.0.1", port, SECRET, nursery)
            sent = client._fs._bytes_received
            await client.post("note", {}, b"abc")
            await client.post("boom", {}, b"")
            res, _ = await client.call("ping", {})  # answered in order after the posts were handled
            assert res == {"x": 1}
            assert [op for op, _ in seen] == ["note", "boom", "ping"]
            assert not client._pending
            # Only the ping's answer came back: the posts produced no frames.
            assert client._fs._bytes_received - sent < 100
            await client.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
