"""A storage peer: serves one :class:`~lakefs_fuse.chunks.store.ShardDir` over the wire protocol.

Operations (request ``op``, arguments ``a``, raw payload):

=========  ==============================  ============================================
op         arguments                       answer
=========  ==============================  ============================================
put        c (chunk), i (index)            payload = shard bytes; stored atomically
get        c, i, o (offset), n (length)    payload = verified shard bytes
getv       c, i, o, n (n > 0)              b (block size), L (shard length), s (packed
                                           xxh3-64 of each block touched); payload = those
                                           whole blocks, unread and unchecked (sendfile)
verify     c, i, sum (xxh3-64)             h = 'ok' | 'missing' | 'corrupt'
delete     c, i                            --
sync       --                              directory entries of stored shards durable
list       after [c, i], limit             s = [[c, i, bytes], ...]
stat       --                              id, zone, total, avail, shards, version
claim      l (lake id)                     -- (EACCES: the peer holds another lake's shards)
=========  ==============================  ============================================

A peer holds the shards of one lake (chunk ids are unique only within a lake): the first
lake to claim it or put a shard owns it (``shards/lake-owner.json``); puts and deletes name
their lake (``l``) and another lake's are refused with EACCES, so a copied lake or a second
lake formatted onto the same servers can never overwrite shards.

``getv`` is how lakes read: the server neither copies nor hashes the bytes, it hands the file
range of the whole 64 KiB blocks holding them to the kernel (``os.sendfile`` over plain TCP, see
:class:`~lakefs_fuse.wire.FileSlice`) and the reader checks them against the block sums from the
shard's header, which the server did check. ``get`` (verified here, copied) stays for older
lakes.

Errors travel as errnos: ENOENT (no such shard), EBADMSG (checksum mismatch), ENOSPC (full),
EIO (anything else); their text says "peer server", since only the lake knows the peer's id.
Disk work runs in worker threads so the event loop keeps answering; ``stat``, which lakes use to
probe a peer they stopped hearing from, has threads of its own so it never queues behind it.
The peer's identity (a uuid) lives in ``<data>/peer.json`` so a lake can recognise it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import uuid
from functools import partial
from pathlib import Path

import trio

from .. import __version__, rpc, wire
from .shardfile import ShardCorrupt, ShardMissing
from .store import ForeignLake, PeerFull, PeerUnavailable, ShardDir

log = logging.getLogger(__name__)


def peer_identity(data_dir: Path) -> str:
    """The peer's uuid, created on first start."""
    path = Path(data_dir) / "peer.json"
    try:
        return json.loads(path.read_text())["id"]
    except FileNotFoundError:
        ident = str(uuid.uuid4())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": ident}) + "\n")
        os.replace(tmp, path)
        return ident
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path} is damaged: {exc}") from None


_OPS = frozenset({"get", "getv", "put", "verify", "delete", "sync", "list", "stat", "claim"})


class PeerServer:
    def __init__(self, data_dir: Path, *, zone: str = "", durable: bool = True, threads: int = 16):
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.ident = peer_identity(data_dir)
        self.zone = zone
        shards = data_dir / "shards"
        shards.mkdir(exist_ok=True)
        # Its errors say "peer server": the lake's client puts the peer's id and address in front.
        self.dir = ShardDir(-1, str(shards), durable=durable, label="peer server")
        self.limiter = trio.CapacityLimiter(threads)
        #: ``stat`` is how lakes probe a peer: it must not wait behind disk work for a thread.
        self._stat_limiter = trio.CapacityLimiter(2)
        self.requests = 0
        #: op -> [requests, errors, seconds], and payload bytes each way (metrics)
        self.op_stats: dict[str, list] = {}
        self.bytes_in = self.bytes_out = 0
        self.wire_stats = rpc.ServerStats()
        self.serving = False

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def handle(self, op: str, args: dict, payload: bytearray):
        self.requests += 1
        name = op if op in _OPS else "other"  # a client's unknown op must not add a series
        row = self.op_stats.get(name)
        if row is None:
            row = self.op_stats[name] = [0, 0, 0.0]
        row[0] += 1
        self.bytes_in += len(payload)
        t0 = time.perf_counter()
        try:
            result = await self._handle(op, args, payload)
            self.bytes_out += len(result[1])
            return result
        except BaseException:
            row[1] += 1
            raise
        finally:
            row[2] += time.perf_counter() - t0

    async def _handle(self, op: str, args: dict, payload: bytearray):
        try:
            return await self._dispatch(op, args, payload)
        except ShardMissing as exc:
            raise _errno(errno.ENOENT, f"no such shard: {exc}") from None
        except ShardCorrupt as exc:
            raise _errno(errno.EBADMSG, f"corrupt shard: {exc}") from None
        except PeerFull as exc:
            raise _errno(errno.ENOSPC, str(exc)) from None
        except ForeignLake as exc:
            raise _errno(errno.EACCES, str(exc)) from None
        except PeerUnavailable as exc:
            raise _errno(errno.EIO, str(exc)) from None

    async def _dispatch(self, op: str, a: dict, payload: bytearray):
        if op == "get":
            c, i, o, n = int(a["c"]), int(a["i"]), int(a["o"]), int(a["n"])
            if n < 0 or n > wire.DEFAULT_MAX_PAYLOAD - 4096:
                raise _errno(errno.EINVAL, "bad length")
            out = bytearray(n)
            await self._run(self.dir.get_into, c, i, o, n, memoryview(out))
            return {}, out
        if op == "getv":
            c, i, o, n = int(a["c"]), int(a["i"]), int(a["o"]), int(a["n"])
            if n <= 0 or n > wire.DEFAULT_MAX_PAYLOAD - 4096:
                raise _errno(errno.EINVAL, "bad length")
            # A shard held open whose bytes are in the page cache is sent without a worker thread
            # (each hand-off to one costs ~100 us of CPU); otherwise a thread opens it and reads
            # the range into the page cache, and the loop sends it from there.
            now = self.dir.span_now(c, i, o, n)
            if now is not None:
                reader, file_off, count, sums, hot = now
            else:
                reader, file_off, count, sums = await self._run(self.dir.open_span, c, i, o, n)
                hot = True
            return {"b": reader.block, "L": reader.length, "s": sums}, wire.FileSlice(
                reader.fd, file_off, count, partial(self.dir.open.release, reader), resident=hot)
        if op in ("put", "delete", "claim") and a.get("l") is not None:
            # only the lake that owns this peer may change it ("dry": just ask whether it could)
            self.dir.claim(str(a["l"]), dry=bool(a.get("dry")) and op == "claim")
        if op == "claim":
            return {}, b""
        if op == "put":
            await self._run(self.dir.put, int(a["c"]), int(a["i"]), payload)
            return {}, b""
        if op == "verify":
            return {"h": await self._run(self.dir.verify, int(a["c"]), int(a["i"]), int(a["sum"]))}, b""
        if op == "delete":
            await self._run(self.dir.delete, int(a["c"]), int(a["i"]))
            return {}, b""
        if op == "sync":
            await self._run(self.dir.sync)
            return {}, b""
        if op == "list":
            after = tuple(a.get("after") or (-1, -1))
            limit = max(1, min(int(a.get("limit", 1000)), 10000))
            rows = await self._run(self.dir.list, after, limit)
            return {"s": [list(r) for r in rows]}, b""
        if op == "stat":
            total, avail = await trio.to_thread.run_sync(self.dir.capacity, limiter=self._stat_limiter)
            return {"id": self.ident, "zone": self.zone, "total": total, "avail": avail,
                    "version": __version__}, b""
        raise _errno(errno.EOPNOTSUPP, f"unknown op {op!r}")

    async def serve(self, host: str, port: int, secret: bytes, *, ssl_context=None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        await rpc.serve(self.handle, host, port, secret, ssl_context=ssl_context, stats=self.wire_stats,
                        task_status=task_status)


def _errno(code: int, message: str) -> OSError:
    return OSError(code, message)


def peer_families(server: PeerServer):
    """Prometheus families of a peer server (see :mod:`lakefs_fuse.metrics`)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from ..metrics import counter, gauge, labelled

    merged: dict[str, list] = {}
    for op, row in list(server.op_stats.items()):
        name = "get" if op == "getv" else op  # one series for reads, whichever way they were asked
        into = merged.setdefault(name, [0, 0, 0.0])
        for k in range(3):
            into[k] += row[k]
    rows = sorted(merged.items())
    yield labelled(CounterMetricFamily, "lakefs_peer_server_requests", "Requests served, by op", ["op"],
                   [([op], r[0]) for op, r in rows])
    yield labelled(CounterMetricFamily, "lakefs_peer_server_errors", "Requests answered with an error, by op",
                   ["op"], [([op], r[1]) for op, r in rows])
    yield labelled(CounterMetricFamily, "lakefs_peer_server_request_seconds", "Seconds spent serving, by op",
                   ["op"], [([op], r[2]) for op, r in rows])
    yield counter("lakefs_peer_server_received_bytes", "Shard bytes received (puts)", server.bytes_in)
    yield counter("lakefs_peer_server_sent_bytes", "Shard bytes sent (gets)", server.bytes_out)
    w = server.wire_stats
    yield counter("lakefs_peer_server_connections", "Connections accepted", w.connections)
    yield counter("lakefs_peer_server_auth_failures", "Connections refused: wrong or no cluster secret",
                  w.auth_failures)
    yield counter("lakefs_peer_server_protocol_errors", "Connections closed for a malformed frame",
                  w.protocol_errors)
    total, avail = server.dir.capacity()
    yield gauge("lakefs_peer_server_capacity_bytes", "Size of the filesystem holding the shards", total)
    yield gauge("lakefs_peer_server_available_bytes", "Bytes still free for shards", avail)
    yield GaugeMetricFamily("lakefs_peer_server_up", "1 while serving", value=float(server.serving))
