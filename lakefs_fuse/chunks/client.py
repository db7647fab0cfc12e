"""The chunk client: seals bytes into erasure-coded chunks and reads byte ranges back.

Writes: pad, cut into contiguous data shards, encode parity (ISA-L, in a worker thread), place
the shards on distinct peers (rendezvous), and put them all in parallel. A shard whose peer
refuses (full, failing) goes to a spare peer that keeps the zone rule (``placement.place_spare``,
as a rebuild's do); a chunk is stored with all ``k + m`` shards, or with at least ``k + 1`` and
queued for repair, else the write fails.

Reads: fetch only the data-shard ranges that cover the request. If any of them fails (missing,
corrupt, peer error), read the same intra-shard range from the surviving shards and decode just
that range. More than ``m`` bad shards -> :class:`DataUnavailable` (EIO): never wrong bytes.

Hedged reads: a shard fetch from a remote peer that has not answered after ``hedge_after`` (1 s, or
four times the peer's mean shard-read time if that is longer: a store that is always slow, such as
a bucket far away, is not hedged on every read) is given up when the other shards can decode
without it: the read decodes around it and the peer is marked slow (``health``), so later reads
skip it at once until it answers a probe: a frozen peer costs one read about a second.

Full peers: a peer that refuses a shard for lack of space (:class:`PeerFull`) gets no new shards
for a backoff (5 s doubling to 2 min), with one WARNING per full episode. The free-space figures
of :meth:`capacity` (the mount asks each second) recheck it: room for the shard it refused lets
it take shards again, none keeps it out; without figures it is tried again when the backoff ends.
A put that succeeds ends the episode.

Concurrent reads of the same chunk range share one fetch (single flight). A small range on
local peers (a small file: one data shard, or two) is read piece after piece on the event loop,
without a nursery; :meth:`ChunkClient.advise` lets an open start the local disks' reads early.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import trio
import xxhash

from ..errors import DataUnavailable, NoSpace
from .codec import NotEnoughShards, get_codec
from .layout import ChunkLayout, data_shards_for, shard_len_for
from .placement import PeerChoice, place, place_spare
from .shardfile import ShardCorrupt, ShardMissing, header_size
from .store import INLINE_READ, LocalDirStore, PeerFull, PeerUnavailable, ShardStore

log = logging.getLogger(__name__)

_SHARD_ERRORS = (PeerUnavailable, ShardMissing, ShardCorrupt, OSError)
_FS_BLOCK = 4096  # what a shard file occupies is rounded up to this (admission is an upper bound)
#: Seconds a read waits for a remote peer's shard before it decodes from the others instead.
HEDGE_AFTER = 1.0
#: Seconds a peer that refused a shard for lack of space is left out of placement (doubling).
FULL_BACKOFF_MIN = 5.0
FULL_BACKOFF_MAX = 120.0


@dataclass(slots=True)
class _Full:
    """A peer that refused a shard for lack of space."""

    until: float  # trio time: no new shards before (unless its free space says there is room)
    backoff: float
    needed: int  # bytes of the refused shard: a free-space figure this big lets it take shards
    since: float = 0.0  # trio time of the refusal: only a put started after it ends the episode


class _Flight:
    """One fetch that concurrent readers of the same range wait on."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: bytearray | None = None


@dataclass(slots=True)
class PeerStats:
    """Shard requests this client made of one peer (metrics: latency and errors by peer)."""

    gets: int = 0
    get_seconds: float = 0.0
    get_errors: int = 0
    puts: int = 0
    put_seconds: float = 0.0
    put_errors: int = 0


class ChunkClient:
    def __init__(self, stores: Mapping[int, ShardStore], *, k: int, m: int, min_shard: int,
                 zones: Mapping[int, str] | None = None, weights: Mapping[int, float] | None = None,
                 threads: int = 16, hedge_after: float = HEDGE_AFTER):
        self.stores = dict(stores)
        self.k, self.m, self.min_shard = k, m, min_shard
        # Peers without a weight (removed, draining) still serve reads but get no new shards.
        self.choices = [PeerChoice(pid, (zones or {}).get(pid, ""), weights[pid] if weights is not None else 1.0)
                        for pid in self.stores if weights is None or pid in weights]
        #: Every peer's zone, those that take no shards included (a spare keeps clear of their zones).
        self.zone_of: dict[int, str] = dict(zones or {})
        self.limiter = trio.CapacityLimiter(threads)
        self.degraded_reads = 0
        self.partial_writes = 0
        #: chunks known to miss shards (partial writes, failed shard reads): repair looks here first
        #: (the repair queue: :meth:`note_needs_repair`, :meth:`repair_queue`, :meth:`repaired`)
        self._needs_repair: set[int] = set()
        self._warned: dict[int, float] = {}
        self._unplaced_warned: dict[int, float] = {}
        self._inflight: dict[tuple[int, int, int], _Flight] = {}
        self.hedge_after = hedge_after
        self._full: dict[int, _Full] = {}
        self._full_warned: dict[int, float] = {}  # peer -> trio time of its last "is full" warning
        self.peer_stats: dict[int, PeerStats] = {pid: PeerStats() for pid in self.stores}
        #: Peers that did not answer the last capacity() call, and why.
        self.unanswered: dict[int, str] = {}

    # ------------------------------------------------------------------ write

    def _encode(self, data: bytes | memoryview, k: int, m: int) -> tuple[int, list[memoryview | bytes], list[int]]:
        shard_len = shard_len_for(len(data), k)
        if len(data) == shard_len * k:  # a full, aligned chunk: shard views, no copy
            view = memoryview(data)
        else:
            padded = bytearray(shard_len * k)
            padded[:len(data)] = data
            view = memoryview(padded)
        shards: list[memoryview | bytes] = [view[i * shard_len:(i + 1) * shard_len] for i in range(k)]
        shards += get_codec(k, m).encode(shards)
        sums = [xxhash.xxh3_64_intdigest(s) for s in shards]
        return shard_len, shards, sums

    async def put_chunk(self, chunk_id: int, data: bytes | memoryview,
                        profile: tuple[int, int] | None = None) -> ChunkLayout:
        """Encode and store one chunk with the lake's EC profile, or ``profile`` = (k, m) (a
        directory's ``user.lakefs.ec``); every chunk records its own k and m."""
        k_max, m = profile or (self.k, self.m)
        k = data_shards_for(len(data), k_max, self.min_shard)
        width = k + m
        shard_len, shards, sums = await trio.to_thread.run_sync(self._encode, data, k, m, limiter=self.limiter)
        peers = place(chunk_id, self.choices, width)
        if len(peers) < width:
            raise NoSpace(f"EC {k}+{m} needs {width} peers, {len(peers)} available")
        tried: set[int] = set(peers)
        failed: list[int] = []

        async def put_one(index: int) -> None:
            while True:
                peer_id = peers[index]
                # A full peer is not asked. A down one is: its store refuses at once, or waits
                # for a probe that has just started -- it may be back, and then takes the shard.
                if not self._marked_full(peer_id):
                    try:
                        await self._put(peer_id, chunk_id, index, shards[index])
                        return
                    except PeerUnavailable as exc:
                        self._refused(peer_id, exc, len(shards[index]), f"chunk {chunk_id} shard {index}")
                else:
                    log.debug("chunk %d shard %d: peer %d is full", chunk_id, index, peer_id)
                spare = place_spare(chunk_id, self._placeable(), 1, [p for j, p in enumerate(peers) if j != index],
                                    width, self.zone_of, exclude=tried | set(peers))
                if not spare:
                    failed.append(index)
                    return
                tried.add(spare[0])
                peers[index] = spare[0]

        async with trio.open_nursery() as nursery:
            for index in range(width):
                nursery.start_soon(put_one, index)
        layout = ChunkLayout(chunk_id, len(data), k, m, shard_len, peers, sums)
        if failed and width - len(failed) < k + 1:
            await self.delete_chunk(layout)
            raise NoSpace(f"chunk {chunk_id}: only {width - len(failed)} of {width} shards could be stored "
                          f"(at least {k + 1} needed)")
        if failed:
            # Committed with at least k+1 shards (readable if one more peer dies); the record names
            # the intended peers of the missing shards, so repair rebuilds exactly those.
            self.partial_writes += 1
            self.note_needs_repair(chunk_id)
            now = trio.current_time()
            for index in failed:
                # One WARNING per peer per minute: with no spare peer, every chunk lacks its shard.
                if now - self._unplaced_warned.get(peers[index], -1e9) >= 60:
                    self._unplaced_warned[peers[index]] = now
                    log.warning("chunk %d stored without shard %d (peer %d); queued for repair (more chunks "
                                "without a shard on this peer are logged at DEBUG for a minute)",
                                chunk_id, index, peers[index])
                else:
                    log.debug("chunk %d stored without shard %d (peer %d); queued for repair",
                              chunk_id, index, peers[index])
        return layout

    # ------------------------------------------------------- which peers take shards

    def _marked_full(self, peer_id: int) -> bool:
        """Refused a shard for lack of space and not cleared yet (a mark that ran out is not)."""
        mark = self._full.get(peer_id)
        return mark is not None and trio.current_time() < mark.until

    def _takes_shards(self, peer_id: int) -> bool:
        """Not known to be down, and not marked full."""
        return getattr(self.stores[peer_id], "up", True) and not self._marked_full(peer_id)

    def _placeable(self) -> list[PeerChoice]:
        return [c for c in self.choices if self._takes_shards(c.peer_id)]

    def _name(self, peer_id: int) -> str:
        store = self.stores.get(peer_id)
        where = getattr(store, "address", None) or getattr(store, "root", None)
        return f"peer {peer_id} ({where})" if where else f"peer {peer_id}"

    def _refused(self, peer_id: int, exc: PeerUnavailable, size: int, what: str) -> None:
        """A put was refused. Full: mark the peer (one warning per episode). Down: its store has
        said so once. Anything else is worth a warning of its own."""
        if isinstance(exc, PeerFull):
            self._note_full(peer_id, exc, size)
        elif getattr(self.stores[peer_id], "down", False):
            log.debug("%s: peer %d refused: %s", what, peer_id, exc)
        else:
            log.warning("%s: peer %d refused: %s", what, peer_id, exc)

    def _note_full(self, peer_id: int, exc: Exception, size: int) -> None:
        now = trio.current_time()
        mark = self._full.get(peer_id)
        if mark is None:
            self._full[peer_id] = _Full(now + FULL_BACKOFF_MIN, FULL_BACKOFF_MIN, size, now)
            name, why = self._name(peer_id), str(exc)
            why = why[len(name) + 2:] if why.startswith(name + ": ") else why
            # A peer at the edge (room for a small shard, not a big one) starts episodes often:
            # one warning a minute, the rest at DEBUG.
            quiet = now - self._full_warned.get(peer_id, -1e9) < 60
            if not quiet:
                self._full_warned[peer_id] = now
            log.log(logging.DEBUG if quiet else logging.WARNING,
                    "%s is full and refused a shard (%s): it gets no new shards until it reports room again",
                    name, why)
            return
        if now >= mark.until:  # refused again after its mark ran out (puts in flight do not count)
            mark.backoff = min(mark.backoff * 2, FULL_BACKOFF_MAX)
            mark.until = now + mark.backoff
        mark.needed = max(mark.needed, size)
        log.debug("%s refused a shard again: %s", self._name(peer_id), exc)

    def _recheck_full(self, peer_id: int, avail: int) -> None:
        """A fresh free-space figure of a peer marked full: room for the shard it refused lets it
        take shards now; no room keeps it out for another backoff (no put is spent on asking)."""
        mark = self._full.get(peer_id)
        if mark is None:
            return
        now = trio.current_time()
        if avail >= mark.needed:
            mark.until = now
        elif now >= mark.until:
            mark.until = now + mark.backoff

    def full_peers(self) -> list[int]:
        """Peers marked full (a refused shard, and no room reported since). Trio thread."""
        return sorted(pid for pid in self._full if self._marked_full(pid))

    def full_count(self) -> int:
        """Peers in a full episode: refused a shard for lack of space, took none since (any thread)."""
        return len(self._full)

    def stored_bytes(self, length: int, profile: tuple[int, int] | None = None) -> int:
        """Bytes a chunk of ``length`` takes on the peers' disks, all ``k + m`` shard files with
        their headers, each rounded up to a 4 KiB file-system block (an upper bound)."""
        if length <= 0:
            return 0
        k_max, m = profile or (self.k, self.m)
        k = data_shards_for(length, k_max, self.min_shard)
        shard_len = shard_len_for(length, k)
        per_shard = shard_len + header_size(shard_len)
        return (k + m) * (-(-per_shard // _FS_BLOCK) * _FS_BLOCK)

    def set_peers(self, added: Mapping[int, ShardStore], zones: Mapping[int, str],
                  weights: Mapping[int, float]) -> None:
        """A new peer table while running (``peer add/remove/weight`` elsewhere): ``added`` stores
        join; new shards are placed by ``weights`` from now on (a peer without one, removed, still
        serves what it holds). Chunks placed before keep their recorded peers."""
        self.stores.update(added)
        for pid in added:
            self._peer_stats(pid)
        self.choices = [PeerChoice(pid, zones.get(pid, ""), weights[pid]) for pid in self.stores if pid in weights]
        self.zone_of = dict(zones)

    def writable_peers(self) -> int:
        """Peers that take new shards and are not known to be down or full right now."""
        return len(self._placeable())

    def min_writable_peers(self) -> int:
        """Fewest live peers with which a full chunk can still be committed (k + 1 shards)."""
        return self.k + 1

    async def sync(self) -> None:
        """Durability barrier: every shard put so far survives a power loss afterwards."""
        async with trio.open_nursery() as nursery:
            for store in self.stores.values():
                nursery.start_soon(store.sync)

    async def delete_chunk(self, layout: ChunkLayout) -> None:
        async def delete_one(index: int, peer_id: int) -> None:
            store = self.stores.get(peer_id)
            if store is None:
                return
            try:
                await store.delete(layout.chunk_id, index)
            except _SHARD_ERRORS as exc:
                log.warning("chunk %d shard %d: delete failed: %s", layout.chunk_id, index, exc)

        async with trio.open_nursery() as nursery:
            for index, peer_id in enumerate(layout.peers):
                nursery.start_soon(delete_one, index, peer_id)

    # ------------------------------------------------------------ repair queue

    def note_needs_repair(self, chunk_id: int) -> None:
        """``chunk_id`` is known to miss a shard (a partial write, a degraded read)."""
        self._needs_repair.add(chunk_id)

    def repair_queue(self) -> frozenset[int]:
        """The chunks known to miss shards, as of now (repair takes them off with :meth:`repaired`)."""
        return frozenset(self._needs_repair)

    def repaired(self, chunk_id: int) -> None:
        """``chunk_id`` has all its shards again: off the repair queue."""
        self._needs_repair.discard(chunk_id)

    @property
    def repair_queue_size(self) -> int:
        return len(self._needs_repair)

    # ------------------------------------------------------------------- read

    async def read(self, layout: ChunkLayout, offset: int, length: int) -> bytearray:
        """Bytes [offset, offset+length) of a chunk (clipped to its length); single flight."""
        key = (layout.chunk_id, offset, length)
        flight = self._inflight.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            return await self._read(layout, offset, length)  # the leader failed: try ourselves
        flight = self._inflight[key] = _Flight()
        try:
            flight.result = await self._read(layout, offset, length)
            return flight.result
        finally:
            del self._inflight[key]
            flight.done.set()

    def advise(self, layout: ChunkLayout, offset: int, length: int) -> bool:
        """A read of chunk bytes [offset, offset+length) is coming: the local peers that hold them
        start reading them from their disks now (see :meth:`~.store.ShardDir.advise`). False: no
        peer of the chunk takes such hints (peer servers, buckets)."""
        advised = False
        for index, shard_off, n in layout.covering(offset, length):
            advise = getattr(self.stores.get(layout.peers[index]), "advise", None)
            if advise is not None:
                advise(layout.chunk_id, index, shard_off, n, layout.shard_len)
                advised = True
        return advised

    async def _get(self, layout: ChunkLayout, index: int, offset: int, length: int) -> bytearray:
        out = bytearray(length)
        await self._get_into(layout, index, offset, length, memoryview(out))
        return out

    async def _get_into(self, layout: ChunkLayout, index: int, offset: int, length: int,
                        out: memoryview) -> None:
        peer_id = layout.peers[index]
        store = self.stores.get(peer_id)
        if store is None:
            raise PeerUnavailable(f"peer {peer_id} is not known to this client")
        with self._counted(peer_id, "get"):
            await store.get_into(layout.chunk_id, index, offset, length, out)

    async def _put(self, peer_id: int, chunk_id: int, index: int, payload: bytes | memoryview) -> None:
        started = trio.current_time()
        with self._counted(peer_id, "put"):
            await self.stores[peer_id].put(chunk_id, index, payload)
        mark = self._full.get(peer_id)
        if mark is not None and started >= mark.since:  # (a put already in flight at the refusal
            del self._full[peer_id]                      # says nothing about room now)
            log.info("%s takes shards again", self._name(peer_id))

    @contextlib.contextmanager
    def _counted(self, peer_id: int, op: str) -> Iterator[None]:
        """Count one shard request of ``op`` ("get"/"put") to a peer: requests, errors, seconds."""
        ps = self._peer_stats(peer_id)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            setattr(ps, f"{op}_errors", getattr(ps, f"{op}_errors") + 1)
            raise
        finally:
            setattr(ps, f"{op}s", getattr(ps, f"{op}s") + 1)
            setattr(ps, f"{op}_seconds", getattr(ps, f"{op}_seconds") + time.perf_counter() - t0)

    def _peer_stats(self, peer_id: int) -> PeerStats:
        ps = self.peer_stats.get(peer_id)
        if ps is None:
            ps = self.peer_stats[peer_id] = PeerStats()
        return ps

    async def _read(self, layout: ChunkLayout, offset: int, length: int) -> bytearray:
        pieces = layout.covering(offset, length)
        total = sum(p[2] for p in pieces)
        out = bytearray(total)  # shards are read straight into their place: no join
        view = memoryview(out)
        slots, pos = [], 0
        for _index, _off, n in pieces:
            slots.append(view[pos:pos + n])
            pos += n
        bad: dict[int, str] = {}

        async def fetch(i: int, index: int, shard_off: int, n: int) -> None:
            try:
                await self._get_into(layout, index, shard_off, n, slots[i])
            except _SHARD_ERRORS as exc:
                bad[index] = f"{type(exc).__name__}: {exc}"

        hedged = self.hedge_after > 0 and any(hasattr(self.stores.get(layout.peers[p[0]]), "mark_slow")
                                              for p in pieces)
        if len(pieces) == 1 and not hedged:
            await fetch(0, *pieces[0])
        elif hedged:
            await self._fetch_hedged(layout, pieces, fetch, bad)
        elif all(n <= INLINE_READ and isinstance(self.stores.get(layout.peers[index]), LocalDirStore)
                 for index, _off, n in pieces):
            # Local reads this small run on the event loop anyway (LocalDirStore.get_into): one
            # after the other, without a nursery and a task per piece (a small file across two shards).
            for i, piece in enumerate(pieces):
                await fetch(i, *piece)
        elif pieces:
            async with trio.open_nursery() as nursery:
                for i, piece in enumerate(pieces):
                    nursery.start_soon(fetch, i, *piece)
        if bad:
            done = {p[0]: slots[i] for i, p in enumerate(pieces) if p[0] not in bad}
            return await self._read_degraded(layout, pieces, bad, done)
        return out

    async def _fetch_hedged(self, layout: ChunkLayout, pieces: Sequence[tuple[int, int, int]],
                            fetch: Callable[[int, int, int, int], Awaitable[None]], bad: dict[int, str]) -> None:
        """Run ``fetch`` for every piece; the fetches from remote peers still waiting after the
        hedge delay are given up (their peers marked slow, their shards counted bad) when the
        shards of peers not known to be down or slow can decode without them. Otherwise, or for a
        local disk (its threads cannot be abandoned), they are waited for."""
        scopes: dict[int, trio.CancelScope] = {}
        left = len(pieces)
        all_done = trio.Event()

        async def one(i: int) -> None:
            nonlocal left
            with trio.CancelScope() as scopes[i]:
                await fetch(i, *pieces[i])
            del scopes[i]
            left -= 1
            if not left:
                all_done.set()

        delay = self.hedge_after
        for index, _off, _n in pieces:  # a peer that is always slow gets longer
            ps = self.peer_stats.get(layout.peers[index])
            if ps is not None and ps.gets >= 20:
                delay = max(delay, 4 * ps.get_seconds / ps.gets)
        async with trio.open_nursery() as nursery:
            for i in range(len(pieces)):
                nursery.start_soon(one, i)
            with trio.move_on_after(delay):
                await all_done.wait()
            waiting = {i: pieces[i][0] for i in scopes}
            if not waiting:
                return
            mark_slow: dict[int, Callable[[str], None]] = {}
            for index in waiting.values():
                mark = getattr(self.stores.get(layout.peers[index]), "mark_slow", None)
                if mark is None:
                    return  # only remote stores can be marked slow (PeerHealth); a local one is waited for
                mark_slow[index] = mark
            others = [i for i in range(layout.width) if i not in bad and i not in mark_slow
                      and not getattr(self.stores.get(layout.peers[i]), "down", False)
                      and not getattr(self.stores.get(layout.peers[i]), "slow", False)]
            if len(others) < layout.k:
                return  # nothing to decode from without them: wait
            why = f"no answer to a read in {delay:.1f} s"
            for i, index in waiting.items():
                mark_slow[index](why)
                bad[index] = f"slow: {why}"
                scopes[i].cancel()

    async def _read_degraded(self, layout: ChunkLayout, pieces: Sequence[tuple[int, int, int]],
                             bad: dict[int, str], done: Mapping[int, memoryview]) -> bytearray:
        self.degraded_reads += 1
        self.note_needs_repair(layout.chunk_id)
        now = trio.current_time()
        for index, why in bad.items():
            peer = layout.peers[index]
            # One WARNING per peer per minute: a dead peer makes every chunk read degraded.
            if now - self._warned.get(peer, -1e9) >= 60:
                self._warned[peer] = now
                log.warning("peer %d: shard %d of chunk %d unreadable (%s): degraded read "
                            "(more from this peer are logged at DEBUG for a minute)",
                            peer, index, layout.chunk_id, why)
            else:
                log.debug("chunk %d shard %d unreadable (%s): degraded read", layout.chunk_id, index, why)
        lo = min(p[1] for p in pieces)
        hi = max(p[1] + p[2] for p in pieces)
        want = sorted({p[0] for p in pieces})
        # Covering shards that were read fine over the same range are inputs already.
        have: dict[int, bytes | bytearray | memoryview] = {
            p[0]: done[p[0]] for p in pieces if p[0] in done and p[1] == lo and p[2] == hi - lo}

        async def fetch(index: int) -> None:
            try:
                have[index] = await self._get(layout, index, lo, hi - lo)
            except _SHARD_ERRORS as exc:
                bad[index] = f"{type(exc).__name__}: {exc}"

        candidates = [i for i in range(layout.width) if i not in bad]
        # First try the cheapest k shards; widen only if some of those fail too.
        while len(have) < layout.k:
            batch = [i for i in candidates if i not in have and i not in bad][:layout.k - len(have)]
            if not batch:
                break
            async with trio.open_nursery() as nursery:
                for index in batch:
                    nursery.start_soon(fetch, index)
        if len(have) < layout.k:
            raise DataUnavailable(
                f"chunk {layout.chunk_id}: {len(bad)} of {layout.width} shards unreadable "
                f"(tolerates {layout.m}): {sorted(bad)}")
        codec = get_codec(layout.k, layout.m)
        try:
            decoded = await trio.to_thread.run_sync(codec.decode, have, want, limiter=self.limiter)
        except NotEnoughShards as exc:  # pragma: no cover - guarded above
            raise DataUnavailable(str(exc)) from exc
        out = bytearray()
        for index, shard_off, n in pieces:
            rel = shard_off - lo
            out += decoded[index][rel:rel + n]
        return out

    async def read_shard(self, layout: ChunkLayout, index: int) -> bytearray:
        """Shard ``index`` whole, verified; rebuilt from the others if its own copy is bad."""
        try:
            data = await self._get(layout, index, 0, layout.shard_len)
        except _SHARD_ERRORS:
            data = None
        if data is None or xxhash.xxh3_64_intdigest(data) != layout.checksums[index]:
            codec = get_codec(layout.k, layout.m)
            have: dict[int, bytearray] = {}
            for i in range(layout.width):
                if i == index or len(have) >= layout.k:
                    continue
                try:
                    have[i] = await self._get(layout, i, 0, layout.shard_len)
                except _SHARD_ERRORS:
                    continue
            if len(have) < layout.k:
                raise DataUnavailable(f"chunk {layout.chunk_id}: shard {index} cannot be read or rebuilt")
            data = bytearray((await trio.to_thread.run_sync(codec.decode, have, [index],
                                                            limiter=self.limiter))[index])
            if xxhash.xxh3_64_intdigest(data) != layout.checksums[index]:
                raise DataUnavailable(f"chunk {layout.chunk_id}: rebuilt shard {index} fails its checksum")
        return data

    async def rebuild(self, layout: ChunkLayout, bad: Sequence[int],
                      targets: Mapping[int, int]) -> tuple[dict[int, int], dict[int, str]]:
        """Recreate shards ``bad`` from the others and store shard i on peer ``targets[i]``.

        Reads whole shards from k healthy peers, decodes, checks every rebuilt shard against the
        checksum recorded at write time (so a wrong decode can never be stored), then puts it. A
        peer that refuses (full, failing) is replaced by the next-best peer in placement order
        that holds nothing of the chunk, as a write does. Returns ({index: peer stored on},
        {index: why no peer took it}).
        """
        want = list(bad)
        have: dict[int, bytearray] = {}
        failed: dict[int, str] = {}

        async def fetch(index: int) -> None:
            try:
                have[index] = await self._get(layout, index, 0, layout.shard_len)
            except _SHARD_ERRORS as exc:
                failed[index] = str(exc)

        candidates = [i for i in range(layout.width) if i not in bad]
        while len(have) < layout.k:
            batch = [i for i in candidates if i not in have and i not in failed][:layout.k - len(have)]
            if not batch:
                raise DataUnavailable(f"chunk {layout.chunk_id}: only {len(have)} of the {layout.k} shards "
                                      f"needed to rebuild are readable")
            async with trio.open_nursery() as nursery:
                for index in batch:
                    nursery.start_soon(fetch, index)
        codec = get_codec(layout.k, layout.m)
        rebuilt = await trio.to_thread.run_sync(codec.decode, have, want, limiter=self.limiter)
        for index in want:
            if xxhash.xxh3_64_intdigest(rebuilt[index]) != layout.checksums[index]:
                raise DataUnavailable(f"chunk {layout.chunk_id}: rebuilt shard {index} does not match its checksum")

        placed: dict[int, int] = {}
        unplaced: dict[int, str] = {}
        holders = {p for i, p in enumerate(layout.peers) if i not in want}
        claimed = {index: targets[index] for index in want}  # a peer takes one shard of a chunk
        refused: set[int] = set()

        async def put(index: int) -> None:
            while True:
                peer = claimed[index]
                if self._marked_full(peer):  # known full: not asked again for every chunk
                    why: object = "full"
                else:
                    try:
                        await self._put(peer, layout.chunk_id, index, rebuilt[index])
                        placed[index] = peer
                        return
                    except (PeerUnavailable, OSError) as exc:
                        why = exc
                        if isinstance(exc, PeerFull):
                            self._note_full(peer, exc, len(rebuilt[index]))  # (warns once)
                        else:
                            log.warning("chunk %d: rebuilt shard %d refused by peer %d: %s", layout.chunk_id,
                                        index, peer, exc)
                refused.add(peer)
                others = holders | {p for i, p in claimed.items() if i != index}
                spare = place_spare(layout.chunk_id, self._placeable(), 1, others, layout.width, self.zone_of,
                                    exclude=refused | {peer})
                if not spare:
                    unplaced[index] = f"no peer could take it (last refusal: {why})"
                    return
                claimed[index] = spare[0]

        async with trio.open_nursery() as nursery:
            for index in want:
                nursery.start_soon(put, index)
        return placed, unplaced

    async def verify(self, layout: ChunkLayout) -> list[str]:
        """Health of every shard: 'ok', 'missing', 'corrupt' or 'unreachable'."""
        result = ["unreachable"] * layout.width

        async def check(index: int) -> None:
            store = self.stores.get(layout.peers[index])
            if store is None:
                return
            try:
                result[index] = await store.verify(layout.chunk_id, index, layout.checksums[index])
            except _SHARD_ERRORS:
                result[index] = "unreachable"

        async with trio.open_nursery() as nursery:
            for index in range(layout.width):
                nursery.start_soon(check, index)
        return result

    def down_reasons(self, limit: int = 3) -> str:
        """Why peers are down, for an error message: 'peer 3 (ADDR): authentication failed ...'."""
        full = set(self.full_peers())
        rows = [f"peer {pid} ({getattr(store, 'address', '?')}): "
                f"{'full' if pid in full else getattr(store, 'last_error', '') or 'down'}"
                for pid, store in sorted(self.stores.items())
                if getattr(store, "down", False) or pid in self.unanswered or pid in full]
        more = f"; and {len(rows) - limit} more" if len(rows) > limit else ""
        return "; ".join(rows[:limit]) + more

    async def capacity(self) -> tuple[int, int]:
        """(total, available) summed over the peers' distinct file systems; the peers that did
        not answer are in ``unanswered`` (peer id -> why) until the next call."""
        seen: dict[object, tuple[int, int]] = {}
        unanswered: dict[int, str] = {}

        async def one(store: ShardStore) -> None:
            try:
                total, avail = await store.capacity()
            except _SHARD_ERRORS as exc:
                unanswered[store.peer_id] = str(exc)
                return
            self._recheck_full(store.peer_id, avail)
            root = getattr(store, "root", None)
            key = _fs_id(root) if root else id(store)  # peers sharing a disk count once
            seen[key] = (total, avail)

        async with trio.open_nursery() as nursery:
            for store in self.stores.values():
                nursery.start_soon(one, store)
        self.unanswered = unanswered
        return sum(t for t, _ in seen.values()), sum(a for _, a in seen.values())


def _fs_id(path: str) -> object:
    try:
        return os.stat(path).st_dev
    except OSError:
        return path
