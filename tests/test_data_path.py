"""The peer data path without copies: payloads read into the caller's buffers, shard bytes sent
from their files with ``sendfile`` and checked by the reader.

In-process servers on 127.0.0.1 (kernel-chosen ports); every test runs its own ``trio.run``
under a deadline.
"""

from __future__ import annotations

import errno
import os
from functools import partial

import pytest
import trio

from lakefs_fuse import rpc, wire
from lakefs_fuse.chunks.netstore import NetStore
from lakefs_fuse.chunks.peer_server import PeerServer
from lakefs_fuse.chunks.shardfile import BLOCK, ShardCorrupt, ShardMissing, header_size
from lakefs_fuse.rpc import RpcClient
from lakefs_fuse.wire import FileSlice, FramedStream

SECRET = b"correct horse battery staple 42"
pytestmark = pytest.mark.timeout(60)


def serve_and_run(handler, body, deadline: float = 30):
    async def main():
        with trio.fail_after(deadline):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(partial(rpc.serve, handler, "127.0.0.1", 0, SECRET))
                await body(port, nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)


# ----------------------------------------------------------------------------------------------
# RpcClient.call(into=...)


def test_answer_lands_in_the_callers_buffers_only_when_the_sizes_match():
    async def echo(op, args, payload):
        return {"n": len(payload)}, payload

    async def body(port, nursery):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        data = os.urandom(300_000)
        first, second = bytearray(100_000), bytearray(200_000)
        result, payload = await client.call("echo", {}, data, into=[memoryview(first), memoryview(second)])
        assert result == {"n": 300_000} and payload == b""
        assert bytes(first) + bytes(second) == data
        # the buffers are chosen from the answer's result and size
        seen = []
        target = bytearray(300_000)

        def shape(result, size):
            seen.append((result, size))
            return [memoryview(target)]

        _, payload = await client.call("echo", {}, data, into=shape)
        assert payload == b"" and bytes(target) == data and seen == [({"n": 300_000}, 300_000)]
        # a payload of another size comes back as bytes; the buffers stay untouched
        small = bytearray(10)
        _, payload = await client.call("echo", {}, data, into=[memoryview(small)])
        assert bytes(payload) == data and small == bytearray(10)
        # so does one whose shape function refuses or fails
        _, payload = await client.call("echo", {}, data, into=lambda r, n: None)
        assert bytes(payload) == data
        _, payload = await client.call("echo", {}, data, into=lambda r, n: 1 / 0)
        assert bytes(payload) == data
        await client.aclose()

    serve_and_run(echo, body)


def test_a_caller_that_gave_up_never_has_its_buffer_written_and_the_stream_stays_in_sync():
    """The answer's payload is half sent when the caller's timeout fires: the rest is read and
    dropped, the caller's buffer is never written after it returned, and the next call works."""
    second_half = trio.Event()
    size = 2 * 1024 * 1024

    async def handle(tcp):
        fs = FramedStream(tcp)
        await wire.server_handshake(fs, SECRET)
        header, _ = await fs.receive()
        body = wire._encode_header({"id": header["id"], "ok": True, "r": {}})
        await tcp.send_all(wire._PREFIX.pack(len(body), size) + body + b"\x11" * (size // 2))
        await second_half.wait()
        await tcp.send_all(b"\xee" * (size - size // 2))
        header, _ = await fs.receive()
        await fs.send({"id": header["id"], "ok": True, "r": {"after": True}}, b"fine")
        await trio.sleep_forever()

    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
                port = listeners[0].socket.getsockname()[1]
                client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
                buf = bytearray(size)
                with pytest.raises(trio.TooSlowError):
                    await client.call("get", {}, into=[memoryview(buf)], timeout=0.5)
                at_return = bytes(buf)
                second_half.set()
                result, payload = await client.call("next", {}, timeout=10)
                assert result == {"after": True} and payload == b"fine"
                assert bytes(buf) == at_return and b"\xee" not in buf
                await client.aclose()
                nursery.cancel_scope.cancel()

    trio.run(main)


# ----------------------------------------------------------------------------------------------
# FileSlice answers


def test_file_slice_answers_send_the_file_range_and_release_once(tmp_path):
    path = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    released = []

    async def handler(op, args, payload):
        piece = FileSlice(fd, args["o"], args["n"], lambda: released.append(op))
        if op == "bad":
            return "not a dict", piece
        return {"ok": 1}, piece

    async def body(port, nursery):
        client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery)
        for offset, n in ((0, 10), (5, 2 * 1024 * 1024), (1000, len(data) - 1000)):
            result, payload = await client.call("slice", {"o": offset, "n": n})
            assert result == {"ok": 1} and bytes(payload) == data[offset:offset + n]
        out = bytearray(70_000)
        _, payload = await client.call("slice", {"o": 123, "n": 70_000}, into=[memoryview(out)])
        assert payload == b"" and bytes(out) == data[123:123 + 70_000]
        with pytest.raises(wire.RemoteError):
            await client.call("bad", {"o": 0, "n": 5})
        assert released == ["slice"] * 4 + ["bad"]
        await client.aclose()

    try:
        serve_and_run(handler, body)
    finally:
        os.close(fd)


def test_file_slices_over_tls_are_read_and_sent_and_a_short_file_is_an_error_answer(tmp_path):
    """Under TLS the range is read, then sent; a file shorter than its range is an error answer
    (nothing was written), and the connection keeps serving."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    path = tmp_path / "f"
    data = os.urandom(200_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    released = []

    async def handler(op, args, payload):
        return {}, FileSlice(fd, args["o"], args["n"], lambda: released.append(op))

    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(partial(rpc.serve, handler, "127.0.0.1", 0, SECRET,
                                                   ssl_context=wire.server_tls_context(str(cert), str(key))))
                client = await RpcClient.connect("127.0.0.1", port, SECRET, nursery,
                                                 ssl_context=wire.client_tls_context(str(cert)))
                _, payload = await client.call("slice", {"o": 7, "n": 150_000})
                assert bytes(payload) == data[7:150_007]
                with pytest.raises(wire.RemoteError) as err:
                    await client.call("short", {"o": 100_000, "n": 150_000})
                assert err.value.errno == errno.EIO
                out = bytearray(1000)
                _, payload = await client.call("slice", {"o": 0, "n": 1000}, into=[memoryview(out)])
                assert payload == b"" and bytes(out) == data[:1000] and not client.closed
                assert released == ["slice", "short", "slice"]
                await client.aclose()
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Peer reads: getv, checked by the reader


def shard_path(root, chunk_id: int, index: int):
    return root / "shards" / f"{chunk_id & 0xff:02x}" / f"{chunk_id:016x}.{index}"


def with_peer(tmp_path, body, server_cls=PeerServer):
    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                server = server_cls(tmp_path / "peer", durable=False)
                port = await nursery.start(partial(server.serve, "127.0.0.1", 0, SECRET))
                store = NetStore(1, f"127.0.0.1:{port}", SECRET, lake_id="lake-1")
                store.bind(nursery)
                try:
                    await body(store, server)
                finally:
                    await store.release()
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_reads_come_from_the_file_and_every_touched_block_is_checked_by_the_reader(tmp_path):
    shard = os.urandom(5 * BLOCK + 1234)

    async def body(store, server):
        await store.put(7, 2, shard)
        for offset, n in ((0, 1), (0, len(shard)), (BLOCK - 3, 10), (3 * BLOCK + 5, 2 * BLOCK),
                          (len(shard) - 7, 7), (100, 70_000)):
            out = bytearray(n + 9)
            await store.get_into(7, 2, offset, n, memoryview(out))
            assert bytes(out[:n]) == shard[offset:offset + n] and out[n:] == bytearray(9)
        assert server.op_stats["getv"][0] == 6 and "get" not in server.op_stats
        assert server.dir.open.hits >= 5  # the file stays open between reads
        # a byte flipped on disk inside a touched block but outside the wanted range is caught
        # here, by the reader, though the server sent the bytes unread
        path = shard_path(tmp_path / "peer", 7, 2)
        with open(path, "r+b") as f:
            f.seek(header_size(len(shard)) + 2 * BLOCK + 100)
            f.write(bytes([f.read(1)[0] ^ 0x40]))
        out = bytearray(10)
        with pytest.raises(ShardCorrupt, match="block 2 checksum mismatch"):
            await store.get_into(7, 2, 2 * BLOCK + 5000, 10, memoryview(out))
        await store.get_into(7, 2, BLOCK, 10, memoryview(out))  # other blocks still read
        assert bytes(out) == shard[BLOCK:BLOCK + 10]
        # a range past the end, a truncated file and a missing shard are the server's errors
        with pytest.raises(ShardCorrupt):
            await store.get_into(7, 2, len(shard) - 5, 10, memoryview(bytearray(10)))
        os.truncate(path, header_size(len(shard)) + 4 * BLOCK)
        server.dir.open.drop(7, 2)
        with pytest.raises(ShardCorrupt, match="truncated"):
            await store.get_into(7, 2, 4 * BLOCK + 10, 10, memoryview(bytearray(10)))
        with pytest.raises(ShardMissing):
            await store.get_into(8, 0, 0, 10, memoryview(bytearray(10)))
        assert store.up  # answers, even errors, are not a dead peer
        assert all(r.users == 0 for r in server.dir.open._lru.values())  # every reader released

    with_peer(tmp_path, body)


class OldPeerServer(PeerServer):
    """A peer from before ``getv``."""

    async def _dispatch(self, op, a, payload):
        if op == "getv":
            raise OSError(errno.EOPNOTSUPP, f"unknown op {op!r}")
        return await super()._dispatch(op, a, payload)


def test_an_older_peer_is_read_with_get(tmp_path):
    shard = os.urandom(3 * BLOCK)

    async def body(store, server):
        await store.put(3, 0, shard)
        out = bytearray(BLOCK)
        await store.get_into(3, 0, BLOCK // 2, BLOCK, memoryview(out))
        await store.get_into(3, 0, 0, BLOCK, memoryview(out))
        assert bytes(out) == shard[:BLOCK]
        assert server.op_stats["getv"][0] == 1 and server.op_stats["get"][0] == 2
        assert store.up

    with_peer(tmp_path, body, OldPeerServer)
