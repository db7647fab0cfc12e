"""Which of a Raft node's log writes are durable yet, and the task that makes them so.

This module owns :class:`LogSync`, the bookkeeping behind two optimisations of
:class:`~.raft.RaftNode` (``raft.py`` explains the protocol side):

* *The leader's overlapped fsync.* The leader appends with ``sync=False`` and sends the entries
  at once; :meth:`LogSync.run` makes them durable (``RaftStorage.sync`` in a worker thread, so
  the event loop keeps replicating) and then tells the node, which counts itself toward an
  index's majority only up to :meth:`LogSync.durable_index`.
* *Follower group commit.* A follower appends a batch of received messages unsynced and calls
  :meth:`LogSync.sync_now` once before it sends the acks.

Every unsynced write is recorded as ``(write number, first index it wrote)``. A sync that began
after write ``n`` covers writes ``1..n`` (the storage's writes are one ordered log: RocksDB's
WAL), so it retires those records; writes made while it ran wait for the next sync, which
therefore batches whatever arrived meanwhile. Everything below the oldest record's first index
is durable -- that holds across truncations too, since a truncating write is itself a record
starting at the truncation point. A synced write (``wrote(..., synced=True)``), or ``sync_now``,
covers every earlier write and clears all records. Records left over after a change the node
does not report (an installed snapshot) only make ``durable_index`` too low until the next
sync: safe, never too high.

Imports: trio and ``raftlog`` (the storage interface); nothing else of the project.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from .raftlog import RaftStorage


class LogSync:
    """The unsynced log writes of one node, and the loop that syncs them."""

    def __init__(self, storage: RaftStorage):
        self._storage = storage
        self._pending: deque[tuple[int, int]] = deque()  # (write number, first index), oldest first
        self._writes = 0  # unsynced writes so far (numbers the records)
        self._wanted = trio.Event()

    @property
    def pending(self) -> bool:
        """Some log write is not known to be durable."""
        return bool(self._pending)

    def wrote(self, first_index: int, *, synced: bool) -> None:
        """A log write from ``first_index`` on has been made, synced or not."""
        if synced:
            self._pending.clear()  # a synced write makes every earlier one durable too
            return
        self._writes += 1
        self._pending.append((self._writes, first_index))
        self._wanted.set()

    def durable_index(self, last_index: int) -> int:
        """The last log index known to be on disk (``last_index``: the log's end)."""
        return min(last_index, self._pending[0][1] - 1) if self._pending else last_index

    def sync_now(self) -> bool:
        """Sync every write on the spot, blocking the caller for one fsync; False if none was
        pending."""
        if not self._pending:
            return False
        self._storage.sync()
        self._pending.clear()
        return True

    async def run(self, synced: Callable[[], None]) -> None:
        """Sync pending writes for as long as the node runs; call ``synced()`` after each sync."""
        storage = self._storage
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            if not self._pending:
                continue  # sync_now or a synced write covered them already
            mark = self._writes
            if storage.sync_delay is None:
                await trio.to_thread.run_sync(storage.sync)  # the loop keeps replicating meanwhile
            else:  # simulated storage: the fsync takes time on the node's (mock) clock
                await trio.sleep(storage.sync_delay)
                storage.sync()
            while self._pending and self._pending[0][0] <= mark:
                self._pending.popleft()
            synced()
