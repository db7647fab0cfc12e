"""An in-process Raft network for tests: :class:`MemoryNetwork` and its :class:`MemoryTransport`.

Messages travel between :class:`~.raft.RaftNode` instances in one trio run, msgpack-encoded as
over a real wire, with seeded faults per link (:class:`LinkFaults`: loss, duplication, delay,
reordering) and partitions. The chaos tests in ``tests/test_raft.py`` drive it under a mock clock.
Imports: ``raft`` (the :class:`~.raft.Transport` interface) and ``raftlog``; nothing else.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from .raft import Transport
from .raftlog import NodeId, pack, unpack

__all__ = ["LinkFaults", "MemoryNetwork", "MemoryTransport"]

#: A Raft message as the node hands it to :meth:`~.raft.Transport.send` (a msgpack-able dict).
Message = dict[str, Any]


@dataclass(frozen=True)
class LinkFaults:
    """What a link does to each message (probabilities are per message, per copy for delay)."""

    drop: float = 0.0
    duplicate: float = 0.0
    #: Each copy is delayed uniformly in [delay_min, delay_max] seconds; unequal delays reorder.
    delay_min: float = 0.0
    delay_max: float = 0.0
    #: Probability a copy is held back an extra uniform [0, reorder_delay] seconds.
    reorder: float = 0.0
    reorder_delay: float = 0.05


class MemoryTransport(Transport):
    """One node's end of a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, node_id: NodeId, incoming: trio.MemoryReceiveChannel[Message]):
        self.network = network
        self.node_id = node_id
        self.incoming = incoming

    async def send(self, to: NodeId, message: Message) -> None:
        self.network.submit(self.node_id, to, message)
        await trio.lowlevel.checkpoint()


class MemoryNetwork:
    """Delivers messages between nodes in one trio run, with seeded faults.

    Messages are msgpack-encoded on send and decoded on delivery, as over a real wire. Faults are
    chosen by ``rng`` per message; per-link settings override the default. A partition cuts every
    pair of nodes not in the same group, both at send and at delivery time. Run :meth:`run` in a
    nursery for the network's lifetime (it delivers delayed messages on trio's clock).
    """

    def __init__(self, rng: random.Random, faults: LinkFaults | None = None, *, inbox_size: int = 4096):
        self.rng = rng
        self.default = faults or LinkFaults()
        self.inbox_size = inbox_size
        self._links: dict[tuple[NodeId, NodeId], LinkFaults] = {}
        self._groups: dict[NodeId, int] = {}
        self._inboxes: dict[NodeId, trio.MemorySendChannel[Message]] = {}
        self._queue: list[tuple[float, int, NodeId, NodeId, bytes]] = []
        self._order = itertools.count()
        self._wake = trio.Event()
        self.stats: Counter[str] = Counter()

    def endpoint(self, node_id: NodeId) -> MemoryTransport:
        """A fresh endpoint for ``node_id`` (replacing, and closing, any earlier one)."""
        self.disconnect(node_id)
        send, receive = trio.open_memory_channel[Message](self.inbox_size)
        self._inboxes[node_id] = send
        return MemoryTransport(self, node_id, receive)

    def disconnect(self, node_id: NodeId) -> None:
        """The node is down: messages to it are dropped until a new endpoint is made."""
        old = self._inboxes.pop(node_id, None)
        if old is not None:
            old.close()

    def set_faults(self, faults: LinkFaults, src: NodeId | None = None, dst: NodeId | None = None) -> None:
        """Set the default faults, or those of the link ``src -> dst``."""
        if src is None and dst is None:
            self.default = faults
        elif src is not None and dst is not None:
            self._links[(src, dst)] = faults
        else:
            raise ValueError("set_faults: give both src and dst (one link), or neither (the default)")

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Only nodes in the same group can talk (nodes in no group form one more group)."""
        self._groups = {node: i for i, group in enumerate(groups) for node in group}

    def heal(self) -> None:
        self._groups = {}

    def can_talk(self, a: NodeId, b: NodeId) -> bool:
        return self._groups.get(a, -1) == self._groups.get(b, -1)

    def submit(self, src: NodeId, dst: NodeId, message: Message) -> None:
        self.stats["sent"] += 1
        faults = self._links.get((src, dst), self.default)
        rng = self.rng
        if not self.can_talk(src, dst) or (faults.drop and rng.random() < faults.drop):
            self.stats["dropped"] += 1
            return
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        self.stats["duplicated"] += copies - 1
        data = pack(message)
        now = trio.current_time()
        for _ in range(copies):
            delay = rng.uniform(faults.delay_min, faults.delay_max) if faults.delay_max else 0.0
            if faults.reorder and rng.random() < faults.reorder:
                delay += rng.uniform(0, faults.reorder_delay)
            if delay <= 0:
                self._deliver(src, dst, data)
            else:
                heapq.heappush(self._queue, (now + delay, next(self._order), src, dst, data))
                self._wake.set()

    def _deliver(self, src: NodeId, dst: NodeId, data: bytes) -> None:
        inbox = self._inboxes.get(dst)
        if inbox is None or not self.can_talk(src, dst):
            self.stats["dropped"] += 1
            return
        try:
            inbox.send_nowait(unpack(data))
            self.stats["delivered"] += 1
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.stats["dropped"] += 1

    async def run(self) -> None:
        while True:
            deadline = self._queue[0][0] if self._queue else math.inf
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            while self._queue and self._queue[0][0] <= now:
                _, _, src, dst, data = heapq.heappop(self._queue)
                self._deliver(src, dst, data)
