"""Raft's durable state: current term, vote, the log, and the latest snapshot.

This module owns the :class:`RaftStorage` interface and its two implementations:

* :class:`MemoryStorage` keeps everything in Python objects. A test simulates a crash by
  dropping the :class:`~lakefs_fuse.meta.raft.RaftNode` and building a new one on the *same*
  storage object: what was written *durably* survives, nothing else does (``load`` first drops
  the log writes made with ``sync=False`` since the last sync, as a power loss would).
* :class:`RocksStorage` keeps everything in one RocksDB directory. Every method writes one
  ``WriteBatch``; with ``sync=True`` the WAL is fsynced before it returns. The node makes a
  write durable (synced, or unsynced and then ``sync``) before it sends any reply that promises
  durability (a vote, an append ack).

*Unsynced appends.* The leader appends with ``sync=False`` (the write reaches the OS, not the
disk), sends the entries at once, and makes them durable with :meth:`RaftStorage.sync` from a
separate task; only then does it count itself toward their majority. A follower appends a batch
of received messages unsynced and calls ``sync`` once before it acks them. Writes are one ordered
log (RocksDB's WAL; MemoryStorage models the same): a sync, or any write with ``sync=True``,
makes every earlier write durable too, and a crash loses at most a suffix of the unsynced ones.
``sync_delay`` tells the node how to run ``sync``: ``None`` -- a real fsync, run it in a worker
thread; a number -- simulated, wait that many seconds on the node's clock, then call it.

Every method is synchronous (no ``await``), so a storage write is atomic with respect to the
event loop. A synced write, or ``sync`` called on the loop, blocks it for the fsync (a
follower's batch, terms, votes, snapshots); ``sync`` is thread-safe against the loop's writes.

Log indexes start at 1. A snapshot at index ``i`` replaces entries ``1..i``; the log then holds
``i+1..last``. A snapshot at index 0 with empty data is how a node records the cluster it was
bootstrapped with (its initial voters) -- there is nothing to restore from it.

RocksDB key layout (raw bytes keys; values msgpack)::

    b"h"                    [term, voted_for]
    b"m"                    [index, term, voters]    meta of the latest snapshot
    b"s"                    snapshot data (raw bytes)
    b"l" + !Q index         [term, kind, data]       one log entry

A snapshot of a file-based state machine keeps only the session table in ``b"s"``; its state is
the directory ``<snapshot_dir>/snap-<index>-<term>`` (``snapshots.py``). ``snapshot_dir`` is None
for a storage that keeps snapshots as bytes only.

May import only the standard library, msgpack and rocksdict (bottom of ``meta``).
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import rocksdict

NodeId = int

#: Entry kinds. A NOOP is what a new leader appends to commit the entries of earlier terms;
#: a COMMAND carries ``[client_id, seq, command]``; a CONFIG carries the full sorted voter list.
ENTRY_NOOP = 0
ENTRY_COMMAND = 1
ENTRY_CONFIG = 2


class Entry(NamedTuple):
    """One log entry. On the wire and on disk it is the list ``[term, kind, data]``."""

    term: int
    kind: int
    data: Any = None

    def to_wire(self) -> list[Any]:
        return [self.term, self.kind, self.data]

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> Entry:
        term, kind, data = raw
        return cls(int(term), int(kind), data)


@dataclass(frozen=True)
class Snapshot:
    """State-machine state after applying entries ``1..index``, and the voters at ``index``."""

    index: int
    term: int
    voters: tuple[NodeId, ...]
    data: bytes = b""


@dataclass
class StoredState:
    """Everything a node reads back when it starts."""

    term: int = 0
    voted_for: NodeId | None = None
    snapshot: Snapshot | None = None
    #: Entries ``snapshot.index + 1 ...`` (``1 ...`` without a snapshot).
    entries: list[Entry] = field(default_factory=list)


class StorageCorrupt(Exception):
    """RocksDB found a damaged block in a node's Raft storage. The node must not run on what is
    left (it could vote or acknowledge from a log with holes): re-seed it from the other members."""


def _corruption(path: str, exc: Exception) -> StorageCorrupt | None:
    first = (str(exc).splitlines() or [""])[0]
    return StorageCorrupt(f"{path}: {first}") if first.startswith("Corruption") else None


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | bytearray | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class RaftStorage(ABC):
    """Durable term, vote, log and snapshot of one Raft node. Every write is durable on return,
    except ``append(..., sync=False)``, which is durable once ``sync`` (or a later synced write)
    has returned."""

    #: How the node runs ``sync``: None = a real fsync (in a worker thread); seconds = simulated.
    sync_delay: float | None = None
    #: Where file snapshots live (``snapshots.py``); None: snapshots are bytes in the record.
    snapshot_dir: str | None = None

    @abstractmethod
    def load(self) -> StoredState:
        """Read back everything (called once when a node starts)."""

    @abstractmethod
    def save_term(self, term: int, voted_for: NodeId | None) -> None:
        """Record the current term and the vote cast in it."""

    @abstractmethod
    def append(self, index: int, entries: Sequence[Entry], *, sync: bool = True) -> None:
        """Drop every entry at ``index`` or later, then store ``entries`` at ``index, index+1, ...``.

        ``index`` is at most one past the last stored entry. With ``sync=False`` the write is
        not durable on return (a crash may lose it and every unsynced write after it).
        """

    @abstractmethod
    def sync(self) -> None:
        """Make every write so far durable. Safe to call from a worker thread while the event
        loop keeps writing (those later writes may or may not be covered)."""

    @abstractmethod
    def save_snapshot(self, snapshot: Snapshot, *, keep_log: bool) -> None:
        """Replace the stored snapshot.

        ``keep_log=True`` (compaction, or an installed snapshot that matches our log) drops only
        the entries up to ``snapshot.index``; ``keep_log=False`` drops the whole log.
        """

    @abstractmethod
    def snapshot(self) -> Snapshot | None:
        """The latest stored snapshot, data included."""

    def close(self) -> None:  # noqa: B027 - a no-op default on purpose: only RocksStorage has a handle
        """Release resources (RocksDB handle); the memory store has none."""


class MemoryStorage(RaftStorage):
    """Volatile storage for tests: survives a node object, not the process.

    ``sync_delay`` is the simulated fsync time (seconds on the node's clock). ``load`` -- a
    restart after a crash -- first drops every log write made with ``sync=False`` since the
    last sync, the worst a power loss could do.
    """

    def __init__(self, *, sync_delay: float = 0.0) -> None:
        self.sync_delay = sync_delay
        self.term = 0
        self.voted_for: NodeId | None = None
        self._snapshot: Snapshot | None = None
        self._first = 1  # index of self._entries[0]
        self._entries: list[Entry] = []
        #: The log as of the last sync, kept while unsynced appends exist (what a crash leaves).
        self._durable_log: list[Entry] | None = None
        self.writes = 0  # number of durable writes (tests look at it)
        self.lost_on_crash = 0  # entries that load() dropped as unsynced (tests look at it)

    def load(self) -> StoredState:
        if self._durable_log is not None:
            self.lost_on_crash += max(0, len(self._entries) - len(self._durable_log))
            self._entries, self._durable_log = self._durable_log, None
        return StoredState(self.term, self.voted_for, self._snapshot, list(self._entries))

    def sync(self) -> None:
        self._durable_log = None

    def save_term(self, term: int, voted_for: NodeId | None) -> None:
        self.sync()  # a synced write: everything before it is durable too
        self.term, self.voted_for = term, voted_for
        self.writes += 1

    def append(self, index: int, entries: Sequence[Entry], *, sync: bool = True) -> None:
        last = self._first + len(self._entries) - 1
        if not self._first <= index <= last + 1:
            raise ValueError(f"append at {index}, log holds {self._first}..{last}")
        if sync:
            self.sync()
        elif self._durable_log is None:
            self._durable_log = list(self._entries)
        del self._entries[index - self._first:]
        self._entries.extend(entries)
        self.writes += int(sync)

    def save_snapshot(self, snapshot: Snapshot, *, keep_log: bool) -> None:
        self.sync()  # a synced write: everything before it is durable too
        if keep_log:
            drop = max(0, snapshot.index - self._first + 1)
            del self._entries[:drop]
        else:
            self._entries.clear()
        self._first = snapshot.index + 1
        self._snapshot = snapshot
        self.writes += 1

    def snapshot(self) -> Snapshot | None:
        return self._snapshot


_INDEX = struct.Struct("!Q")
_HARD_KEY = b"h"
_META_KEY = b"m"
_DATA_KEY = b"s"
_LOG_PREFIX = b"l"


def _log_key(index: int) -> bytes:
    return _LOG_PREFIX + _INDEX.pack(index)


class RocksStorage(RaftStorage):
    """Raft state in a RocksDB directory; every write is one WriteBatch, synced unless it is an
    ``append(..., sync=False)``."""

    def __init__(self, path: str, *, snapshot_dir: str | None = None):
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        self.path = path
        self.snapshot_dir = snapshot_dir
        self.db = rocksdict.Rdict(path, options=opts)
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._no_sync = rocksdict.WriteOptions()
        self._no_sync.sync = False
        # The stored log range, kept in memory so truncation knows what to delete.
        self._first, self._last = 1, 0
        try:
            meta = self.db.get(_META_KEY)
            if meta is not None:
                self._first = unpack(meta)[0] + 1
                self._last = self._first - 1
            for key in self.db.keys(backwards=True, from_key=_log_key(2**64 - 1)):  # the newest entry
                if isinstance(key, bytes) and key.startswith(_LOG_PREFIX):  # raw mode: keys are bytes
                    self._last = _INDEX.unpack(key[1:])[0]
                break
        except Exception as exc:
            self.db.close()
            raise (_corruption(path, exc) or exc) from None

    def close(self) -> None:
        self.db.close()

    def _write(self, batch: rocksdict.WriteBatch, sync: bool = True) -> None:
        self.db.write(batch, self._sync if sync else self._no_sync)

    def sync(self) -> None:
        self.db.flush_wal(True)  # fsyncs the WAL: every write before it is durable

    def load(self) -> StoredState:
        state = StoredState()
        try:
            hard = self.db.get(_HARD_KEY)
            if hard is not None:
                state.term, state.voted_for = unpack(hard)
            state.snapshot = self.snapshot()
            # A raw iterator and its status: Rdict.items ends quietly at a damaged block, which
            # would look like a shorter log.
            it = self.db.iter()
            it.seek(_log_key(self._first))
            while it.valid() and it.key().startswith(_LOG_PREFIX):
                state.entries.append(Entry.from_wire(unpack(it.value())))
                it.next()
            it.status()
        except Exception as exc:
            raise (_corruption(self.path, exc) or exc) from None
        if len(state.entries) != max(0, self._last - self._first + 1):
            raise StorageCorrupt(f"{self.path}: the log should hold entries {self._first}..{self._last}, "
                                 f"{len(state.entries)} were readable")
        return state

    def save_term(self, term: int, voted_for: NodeId | None) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(_HARD_KEY, pack([term, voted_for]))
        self._write(batch)

    def append(self, index: int, entries: Sequence[Entry], *, sync: bool = True) -> None:
        if not self._first <= index <= self._last + 1:
            raise ValueError(f"append at {index}, log holds {self._first}..{self._last}")
        batch = rocksdict.WriteBatch(raw_mode=True)
        if index <= self._last:
            batch.delete_range(_log_key(index), _log_key(self._last + 1))
        for offset, entry in enumerate(entries):
            batch.put(_log_key(index + offset), pack(entry.to_wire()))
        self._write(batch, sync)
        self._last = index + len(entries) - 1

    def save_snapshot(self, snapshot: Snapshot, *, keep_log: bool) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(_META_KEY, pack([snapshot.index, snapshot.term, list(snapshot.voters)]))
        batch.put(_DATA_KEY, bytes(snapshot.data))
        drop_to = snapshot.index if keep_log else max(self._last, snapshot.index)
        if drop_to >= self._first:
            batch.delete_range(_log_key(self._first), _log_key(drop_to + 1))
        self._write(batch)
        self._first = snapshot.index + 1
        self._last = max(self._last, snapshot.index) if keep_log else snapshot.index

    def snapshot(self) -> Snapshot | None:
        meta = self.db.get(_META_KEY)
        if meta is None:
            return None
        index, term, voters = unpack(meta)
        return Snapshot(index, term, tuple(voters), bytes(self.db.get(_DATA_KEY) or b""))
