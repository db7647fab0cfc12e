"""Raft consensus for the metadata servers: one :class:`RaftNode` per replica, on trio.

This module owns the Raft protocol (elections with pre-vote, replication, commit, snapshots,
single-server membership changes), the client-session layer that makes retried commands apply
once, and the :class:`Transport` interface (``memory_network.py`` holds the fault-injecting
in-process transport the tests use). Durable state lives behind :class:`~.raftlog.RaftStorage`. It may import the
project's bottom (errors) and ``raftlog``; never ``chunks`` or ``mount``.

How it works
------------
*Atomic between awaits.* All protocol state is changed by synchronous methods: a receive loop hands
each message to ``_handle``; a timer loop fires elections and heartbeats; ``submit`` and friends
append to the log without awaiting. Storage writes are synchronous too, so "persist, then reply"
holds trivially: a reply is queued only after ``RaftStorage`` returned. Two refinements: the
leader's own log (see *The leader's fsync* below), and follower group commit: messages that are
already queued are handled as one batch (no await between them), their appends are written
unsynced, one fsync covers them all, and only then do the replies they caused go out.

*Messages are one-way.* Every message is a msgpack-able dict ``{"t": type, "src": sender id,
"term": sender's term, ...}`` (see ``_MESSAGE_FIELDS``). Answers are separate messages, so a lost
request and a lost answer look the same and are both repaired by retransmission. The node queues
outgoing messages per destination (``RaftConfig.send_queue``, dropping when full) and one sender task
per destination awaits ``Transport.send`` under ``send_timeout``, so a slow peer never stalls the node.

*Elections.* A follower that hears no leader for a random time in ``[election_timeout_min,
election_timeout_max)`` first runs a pre-vote: it asks the voters whether they *would* vote for it
in ``term + 1``. A voter says yes only if the asker's log is at least as up to date as its own and
it has not heard from a leader for ``election_timeout_min``. Only with a majority of yeses does the
node bump its term and ask for real votes. So a node cut off from the cluster cannot raise its term
while away, and cannot depose a healthy leader when it comes back. With ``check_quorum`` a leader
that has not heard from a majority for ``election_timeout_max`` steps down by itself.

*Replication.* The leader keeps per follower ``next``/``match`` indexes. AppendEntries carries up to
``max_batch`` entries; up to ``max_inflight`` such messages may be outstanding (pipelining), and
``next`` advances optimistically as they are sent. After a rejection the follower returns a
conflict hint (the term at the mismatching index and the first index of that term, or its log end),
the leader jumps ``next`` back over whole terms, bumps the follower's *epoch* (so rejections of
messages sent before the jump are ignored) and probes with one message at a time until an append
succeeds. An in-flight message that makes no progress for ``retransmit_timeout`` is resent from
``match + 1``. Heartbeats carry ``min(commit, match)`` so a follower never commits what it was not
shown. A follower whose ``next`` falls below the leader's snapshot is sent that snapshot instead,
in chunks (see *Snapshots*).

*The leader's fsync, overlapped.* The leader appends new entries with ``sync=False`` (into the
OS page cache), sends them at once, and a log-sync task makes them durable (``RaftStorage.sync``
in a worker thread) while the followers fsync their copies. The leader counts itself toward an
index's majority only once it is durable (``logsync.py``), so a commit always rests on a
majority of *durable* copies: with 3 voters two fast followers commit without the leader's disk.
Writes are one ordered log, so a sync covers every earlier write. Only a leader holds unsynced
entries: stepping down syncs them first (one blocking fsync), so every follower's ack, vote
and reply rests on durable state. A leader that crashes before its sync loses at most the
entries no one else acknowledged -- never committed, so never answered to a client (who retries
after ``CommitUnknown``); what the followers acknowledged commits without it.

*Commit and apply.* An index commits when a majority of the current voters store it durably *and*
it is of the leader's current term (earlier entries ride along; a new leader appends a no-op to
get there).
Committed entries are applied in order, once per index per node, through :class:`ClientSessions`.
A ``LakeError`` from ``apply`` is that command's result; any other exception is a bug in a
deterministic state machine and stops the node (``run`` raises), as does an exception from an
observer hook.

*Client sessions.* A command is submitted as ``(client_id, seq, command)``. The session table
remembers each client's last ``seq`` and its result (a value, or the ``LakeError`` a failed
command raised). A duplicate of the last ``seq`` returns the stored result without applying again;
an older ``seq`` gets :class:`StaleRequest`. So a client keeps one command in flight per
``client_id`` (use several ids to pipeline) and retries with the *same* ``seq`` after
:class:`NotLeader` or :class:`CommitUnknown`. The table is part of every snapshot. The leader
stamps each command entry with its wall clock; a client unseen for ``session_ttl`` by that
clock loses its entry, and its next command other than a new session's first gets
:class:`SessionExpired` and is not applied (``sessions.py`` says why that is the safe answer).

*Linearizable reads: ReadIndex.* ``read_index()`` records the commit index (after the leader has
committed an entry of its own term, so the commit index is current), then waits for a majority to
acknowledge a heartbeat round that started after the recording, then for ``last_applied`` to reach
the recorded index. A leader lease would save the round trip but would rest on bounded clock drift
between servers; ReadIndex rests on nothing but messages, and reads that arrive together share one
heartbeat round. A deposed leader cannot complete the round, so it never serves a stale read.

*Leases (optional, ``lease_reads``).* The round costs a message exchange per read (shared by
concurrent reads). With ``lease_reads`` a leader answers ``read_index()`` at once while it holds a
lease: a majority acknowledged a round that began less than ``lease_fraction`` x
``election_timeout_min`` ago. The lease is sound because every voter then *refuses to vote* (does
not even adopt the higher term) for ``election_timeout_min`` after it last heard from its leader, and
for ``election_timeout_min`` after it starts (it may have heard from one just before a restart):
no other leader can be elected, let alone commit, before the lease runs out. It rests on one
assumption the message-only round does not: the servers' clocks run at rates within
``1 - lease_fraction`` (20 %) of each other (durations only; the clocks need not agree). When the
lease has lapsed the round is used.

*Snapshots* (``snapshots.py``). Every ``snapshot_every`` applied entries the node snapshots
the state machine with the session table and truncates its log up to it. A state machine with
``checkpoint``/``restore_files`` (a :class:`~.snapshots.FileSnapshotMachine`, on a storage with a
``snapshot_dir``) snapshots into a directory of files (RocksDB: a checkpoint, hard links); any
other gives ``snapshot(index) -> bytes``. A follower behind the snapshot receives it as a stream
of ``snapshot_chunk``-byte messages, at most ``snapshot_window`` unacknowledged, resumable from
the follower's position after lost messages or a dropped connection; it writes them to files as
they come and installs by opening those files. A node restores its snapshot at start
(``load``), then replays the log after it.

*Membership.* One voter is added or removed at a time; a CONFIG entry carries the full new voter
list and takes effect on every node as soon as it is *appended* (and reverts if a follower truncates
it). The leader accepts a change only after an entry of its term has committed and the previous
change has committed. A leader that removed itself keeps leading until that entry commits, without
counting itself, then steps down. A new server starts with empty storage and no voters: it never
campaigns, and learns the configuration from the log or a snapshot.

Plugging in a real transport
----------------------------
Implement :class:`Transport`: ``incoming`` is a receive channel of message dicts addressed to this
node, ``send(to, message)`` delivers best-effort. ``meta/server.py``'s ``WireTransport`` sends each
message as the payload of a one-way ``wire`` request, ``client.post("raft", {...},
pack_message(msg))`` (msgpack; a message may carry entries or a snapshot chunk, so it does not fit
the 64 KiB header), and the server hands ``unpack_message(payload)`` to ``incoming``. Node ids are
ints, which map to addresses outside this module.

Known limitations (this increment)
----------------------------------
* A follower's fsync (one per batch of queued messages), terms and votes are synced on the
  event loop; only the leader's fsync runs in a thread. Commands submitted in one scheduling
  round share a leader write (group commit).
* Taking a file snapshot (a RocksDB checkpoint: a memtable flush and hard links), fsyncing each
  received file, and installing run on the event loop; a chunk is read and written there too.
* A leader defers compaction while it sends a snapshot; a transfer slower than
  ``DEFER_LIMIT`` x ``snapshot_every`` entries of traffic starts over from the newer snapshot.
* Session expiry assumes no client retries a command longer than ``session_ttl`` after first
  sending it (a session's first command is the one case that could apply twice).
* No leadership transfer, no non-voting learner phase for new servers.
* A node that became a candidate (passed pre-vote) and was then cut off keeps its higher term; on
  return its answers still depose the leader once (pre-vote only stops the term from rising again).
* The state machine is derived state: a start restores the snapshot (for RocksDB, hard links of
  the checkpoint) and replays the log after it (at most ``snapshot_every`` entries); a state
  machine durable with its applied index could skip the replay.
"""

from __future__ import annotations

import errno
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from .. import errors as E
from .logsync import LogSync
from .raftlog import (
    ENTRY_COMMAND,
    ENTRY_CONFIG,
    ENTRY_NOOP,
    Entry,
    MemoryStorage,
    NodeId,
    RaftStorage,
    RocksStorage,
    Snapshot,
    pack,
    unpack,
)
from .sessions import ClientSessions, Outcome, SessionExpired, StaleRequest
from .snapshots import DEFER_LIMIT, Outgoing, SnapshotKeeper

__all__ = [
    "ClientSessions", "CommitUnknown", "ConfigChangeInProgress", "Entry",
    "MemoryStorage", "NotLeader", "Outcome", "RaftConfig", "RaftError", "RaftNode",
    "RaftObserver", "RaftStateMachine", "RaftStorage", "RocksStorage", "SessionExpired", "Snapshot", "StaleRequest",
    "Transport", "pack_message", "unpack_message",
]

logger = logging.getLogger(__name__)

FOLLOWER = "follower"
PRECANDIDATE = "precandidate"
CANDIDATE = "candidate"
LEADER = "leader"


# --------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RaftConfig:
    """Timing and sizing of one Raft group. Defaults suit servers on one LAN."""

    #: Seconds between a leader's heartbeat rounds.
    heartbeat_interval: float = 0.05
    #: A follower that hears no leader for a random time in [min, max) seconds starts an election.
    election_timeout_min: float = 0.3
    election_timeout_max: float = 0.6
    #: Most entries in one AppendEntries message (batching).
    max_batch: int = 64
    #: Most unacknowledged AppendEntries messages per follower (pipelining).
    max_inflight: int = 8
    #: Seconds an in-flight append may go without progress before it is sent again.
    retransmit_timeout: float = 0.2
    #: Snapshot and truncate the log every this many applied entries (0 = never).
    snapshot_every: int = 1000
    #: Most bytes of a snapshot in one message, and most such messages unacknowledged per follower.
    snapshot_chunk: int = 1 << 20
    snapshot_window: int = 4
    #: A client unseen for this many seconds (by the leader-stamped log clock) loses its session.
    session_ttl: float = 3600.0
    #: Ask "could I win?" before bumping the term (a rejoining node does not disrupt the leader).
    pre_vote: bool = True
    #: A leader that has not heard from a majority for election_timeout_max seconds steps down.
    check_quorum: bool = True
    #: Messages queued per destination before new ones are dropped (Raft retransmits anyway).
    send_queue: int = 256
    #: Seconds one Transport.send may take before the message is abandoned.
    send_timeout: float = 1.0
    #: Default seconds submit(), read_index() and membership changes wait.
    request_timeout: float = 5.0
    #: Serve read_index() from a leader lease instead of a heartbeat round (see "Leases" above).
    lease_reads: bool = False
    #: The lease lasts this fraction of election_timeout_min after the start of the newest round a
    #: majority acknowledged; 1 - lease_fraction is the clock-rate difference it tolerates.
    lease_fraction: float = 0.8

    def validate(self) -> None:
        """Rules: 0 < heartbeat; election_timeout_min > 3 x heartbeat (a few lost heartbeats must not
        start an election); max > min (randomization splits votes); heartbeat <= retransmit_timeout;
        positive sizes."""
        if not self.heartbeat_interval > 0:
            raise E.UserError("raft heartbeat interval must be > 0")
        if not self.election_timeout_min > 3 * self.heartbeat_interval:
            raise E.UserError("raft election timeout (min) must be more than 3 x the heartbeat interval")
        if not self.election_timeout_max > self.election_timeout_min:
            raise E.UserError("raft election timeout max must exceed its min")
        if not self.heartbeat_interval <= self.retransmit_timeout:
            raise E.UserError("raft retransmit timeout must be at least the heartbeat interval")
        if self.max_batch < 1 or self.max_inflight < 1 or self.send_queue < 1:
            raise E.UserError("raft batch, inflight and send queue sizes must be >= 1")
        if self.snapshot_every < 0:
            raise E.UserError("raft snapshot_every must be >= 0")
        if self.snapshot_chunk < 1 or self.snapshot_window < 1 or not self.session_ttl > 0:
            raise E.UserError("raft snapshot chunk and window must be >= 1, the session ttl > 0")
        if not (self.send_timeout > 0 and self.request_timeout > 0):
            raise E.UserError("raft send and request timeouts must be > 0")
        if not 0 < self.lease_fraction < 1:
            raise E.UserError("raft lease fraction must be between 0 and 1")


# --------------------------------------------------------------------------------------- errors


class RaftError(E.LakeError):
    """Retryable: the request did not go through here. ``leader_hint`` names the leader if known."""

    errno = errno.EAGAIN

    def __init__(self, message: str = "", *, leader_hint: NodeId | None = None):
        super().__init__(message)
        self.leader_hint = leader_hint


class NotLeader(RaftError):
    """This node is not (or could not confirm it is) the leader; nothing was appended here."""


class CommitUnknown(RaftError):
    """The entry was appended, but whether it commits is unknown (timeout, leadership lost, node
    stopped). Retry with the same ``(client_id, seq)``: the session table applies it at most once."""


class ConfigChangeInProgress(RaftError):
    errno = errno.EBUSY


# ------------------------------------------------------------------------------ state machine


class RaftStateMachine(Protocol):
    """What the replicated application supplies. All three are synchronous and deterministic. A
    machine whose state is big also implements :class:`~.snapshots.FileSnapshotMachine`."""

    def apply(self, index: int, command: Any) -> Any:
        """Apply one committed command; a failed command raises a ``LakeError`` (its result)."""

    def snapshot(self, index: int) -> bytes:
        """The whole state after applying ``index``."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's."""


class RaftObserver:
    """Hooks for metrics and for test invariant checkers. Called synchronously; default no-ops."""

    def became_leader(self, node: RaftNode) -> None:
        pass

    def applied(self, node: RaftNode, index: int, entry: Entry, outcome: Outcome) -> None:
        pass

    def restored(self, node: RaftNode, snapshot: Snapshot) -> None:
        pass


# ------------------------------------------------------------------------------------ transport


class Transport(ABC):
    """How one node reaches the others. Delivery is best-effort: messages may be lost,
    duplicated or reordered, and Raft copes."""

    #: Message dicts addressed to this node.
    incoming: trio.abc.ReceiveChannel

    @abstractmethod
    async def send(self, to: NodeId, message: dict) -> None:
        """Deliver ``message`` to ``to`` if possible. Should not raise for network trouble.

        The node awaits one ``send`` per destination at a time, so return once the message is
        handed to the connection (do not wait for the peer's RPC answer), or pipelining to that
        peer shrinks to one message per round trip.
        """


def pack_message(message: dict) -> bytes:
    """A message as bytes (msgpack), e.g. for the payload of a ``wire`` call."""
    return pack(message)


def unpack_message(data: bytes | bytearray | memoryview) -> dict:
    return unpack(data)


#: Fields of every message type besides "t", "src" and "term".
_MESSAGE_FIELDS = {
    "prevote": ("last_index", "last_term"),  # "term" is the term the sender would campaign in
    "prevote_reply": ("granted", "proposed"),
    "vote": ("last_index", "last_term"),
    "vote_reply": ("granted",),
    "append": ("prev_index", "prev_term", "entries", "commit", "round", "epoch"),
    "append_reply": ("ok", "match", "epoch", "round", "reject", "hint_index", "hint_term"),
    "heartbeat": ("commit", "round"),
    "heartbeat_reply": ("round",),
    "snapshot": ("index", "last_term", "voters", "manifest", "offset", "data", "round"),
    "snapshot_reply": ("match", "index", "offset", "round"),
}
_FROM_LEADER = frozenset({"append", "heartbeat", "snapshot"})
#: Most queued messages handled as one batch (one fsync for their appends; see _receive_loop).
_RECEIVE_BATCH = 64


def _well_formed(msg: Any) -> bool:
    if not isinstance(msg, dict):
        return False
    kind = msg.get("t")
    fields = _MESSAGE_FIELDS.get(kind) if isinstance(kind, str) else None
    return (fields is not None and isinstance(msg.get("term"), int) and isinstance(msg.get("src"), int)
            and all(f in msg for f in fields))


# ----------------------------------------------------------------------------------------- node


class _Progress:
    """What the leader knows about one follower."""

    __slots__ = (
        "acked_round",
        "epoch",
        "inflight",
        "last_ack",
        "last_progress",
        "match",
        "next",
        "probing",
        "transfer",
    )

    def __init__(self, next_index: int, now: float):
        self.next = next_index
        self.match = 0
        self.inflight: deque[int] = deque()  # last index carried by each unacknowledged append
        self.epoch = 0
        self.probing = True  # one append at a time until we know where the logs agree
        self.last_progress = now
        self.last_ack = now
        self.acked_round = 0
        self.transfer: Outgoing | None = None  # a snapshot on its way to this follower


class _Waiter:
    __slots__ = ("done", "outcome", "term")

    def __init__(self, term: int):
        self.term = term
        self.done = trio.Event()
        self.outcome: Outcome | None = None


class RaftNode:
    """One replica. Create it, ``await node.run()`` in a nursery, and talk to it from other tasks.

    ``initial_voters`` bootstraps a brand-new cluster (every founding node gets the same set); it is
    ignored when the storage already holds state. A node joining later gets none and waits to be
    added by the leader.
    """

    def __init__(self, node_id: NodeId, storage: RaftStorage, transport: Transport,
                 machine: RaftStateMachine, *, config: RaftConfig | None = None,
                 initial_voters: Iterable[NodeId] | None = None, rng: random.Random | None = None,
                 observer: RaftObserver | None = None):
        self.config = config or RaftConfig()
        self.config.validate()
        self.id = node_id
        self._storage = storage
        self._transport = transport
        self._sessions = ClientSessions(machine, self.config.session_ttl)
        self._snapshots = SnapshotKeeper(storage, self._sessions)
        self._rng = rng or random.Random()
        self.observer = observer or RaftObserver()

        self.role = FOLLOWER
        self.leader_id: NodeId | None = None
        self._votes: set[NodeId] = set()
        self._progress: dict[NodeId, _Progress] = {}

        state = storage.load()
        self.term = state.term
        self.voted_for = state.voted_for
        snap = state.snapshot
        if snap is None and not state.entries and initial_voters:
            snap = Snapshot(0, 0, tuple(sorted(set(initial_voters))))
            storage.save_snapshot(snap, keep_log=True)
        snap = snap or Snapshot(0, 0, ())
        self._snapshot = snap
        self._snap_index, self._snap_term = snap.index, snap.term
        self._log: list[Entry] = list(state.entries)
        self._base_voters: tuple[NodeId, ...] = snap.voters
        # (index, voters) of every CONFIG entry still in the log; the newest one is in effect.
        self._configs: list[tuple[int, tuple[NodeId, ...]]] = [
            (snap.index + 1 + i, tuple(e.data)) for i, e in enumerate(self._log) if e.kind == ENTRY_CONFIG]
        self.voters: frozenset[NodeId] = frozenset()
        self._set_voters()
        self._snapshots.load(snap)  # the machine's state and the session table, as of the snapshot
        self.commit_index = snap.index
        self.last_applied = snap.index

        self._waiters: dict[int, _Waiter] = {}
        self._term_start = math.inf  # index of this leader's no-op
        self._lead_since = 0.0
        self._round = 0  # heartbeat rounds sent by this node as leader (ReadIndex counts them)
        self._round_started: deque[tuple[int, float]] = deque()  # (round, when it began), for leases
        self._started_at = -math.inf
        self._leader_contact = -math.inf
        self._election_deadline = math.inf
        self._heartbeat_deadline = math.inf
        self._timer_kick = trio.Event()
        self._changed = trio.Event()
        self._batch: list[Entry] = []  # commands submitted but not yet appended (group commit)
        self._batch_ready = trio.Event()
        # Unsynced log writes (the leader's appends, a follower's batch): none between batches
        # on a non-leader.
        self._log_sync = LogSync(storage)
        # Messages to send once the batch being received is durable; None outside a batch.
        self._held: list[tuple[NodeId, dict]] | None = None
        self._held_writes = False  # the batch wrote the log without a sync
        self._outboxes: dict[NodeId, trio.MemorySendChannel] = {}
        self._nursery: trio.Nursery | None = None
        self._stopped = False
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ public face

    @property
    def is_leader(self) -> bool:
        return self.role == LEADER and not self._stopped

    @property
    def last_index(self) -> int:
        return self._snap_index + len(self._log)

    @property
    def durable_index(self) -> int:
        """The last index of this node's log known to be on disk (the leader's may lag)."""
        return self._log_sync.durable_index(self.last_index)

    @property
    def snapshot_index(self) -> int:
        return self._snap_index

    def entry_term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if it is not in the log (compacted or absent)."""
        if index == self._snap_index:
            return self._snap_term
        if index < self._snap_index or index > self.last_index:
            return None
        return self._log[index - self._snap_index - 1].term

    def entry(self, index: int) -> Entry | None:
        if index <= self._snap_index or index > self.last_index:
            return None
        return self._log[index - self._snap_index - 1]

    def status(self) -> dict:
        """A snapshot of the node's view, for metrics and ``.stats``."""
        return {"id": self.id, "role": self.role, "term": self.term, "leader": self.leader_id,
                "commit_index": self.commit_index, "last_applied": self.last_applied,
                "last_index": self.last_index, "snapshot_index": self._snap_index,
                "voters": sorted(self.voters), **self.stats}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Cancelling is a crash as far as the protocol is concerned."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._started_at = trio.current_time()
                self._reset_election_timer()
                nursery.start_soon(self._receive_loop, name=f"raft-{self.id}-receive")
                nursery.start_soon(self._timer_loop, name=f"raft-{self.id}-timer")
                nursery.start_soon(self._flush_loop, name=f"raft-{self.id}-flush")
                nursery.start_soon(self._log_sync.run, self._log_synced, name=f"raft-{self.id}-log-sync")
                task_status.started()
        finally:
            self._stopped = True
            self._nursery = None
            self._fail_waiters("node stopped")
            self._pulse()

    async def submit(self, client_id: Any, seq: int, command: Any, timeout: float | None = None) -> Any:
        """Replicate and apply one command on the leader; return its result or raise its error.

        Raises NotLeader (not appended; go to ``leader_hint``) or CommitUnknown (appended, fate
        unknown; retry with the same ``client_id`` and ``seq``).
        """
        self._require_leader()
        cached = self._sessions.cached(client_id, seq)
        if cached is not None:
            return cached.unwrap()
        # Apply exactly what followers will decode; the stamp is the sessions' clock (expiry).
        data = unpack(pack([client_id, seq, command, round(time.time(), 3)]))
        return (await self._append_and_wait(Entry(self.term, ENTRY_COMMAND, data), timeout,
                                            batch=True)).unwrap()

    async def read_index(self, timeout: float | None = None) -> int:
        """Return an index such that reading the applied state now is linearizable (ReadIndex).

        Raises NotLeader if this node is not the leader or cannot confirm it within ``timeout``.
        """
        self._require_leader()
        term = self.term
        with trio.move_on_after(self._timeout(timeout)):
            # A new leader's commit index may lag until an entry of its own term commits.
            await self._wait_until(lambda: self.commit_index >= self._term_start, term)
            if self.config.lease_reads and self._lease_valid():
                read_at = self.commit_index  # no other leader can exist yet: no round needed
                self.stats["lease_reads"] += 1
                await self._wait_until(lambda: self.last_applied >= read_at, term)
                return read_at
            read_at = self.commit_index
            needed = self._round + 1
            self._heartbeat_now()  # concurrent reads share this round
            await self._wait_until(lambda: self._quorum_round() >= needed, term)
            await self._wait_until(lambda: self.last_applied >= read_at, term)
            return read_at
        raise NotLeader("could not confirm leadership in time", leader_hint=self.leader_id)

    async def add_voter(self, node_id: NodeId, timeout: float | None = None) -> None:
        """Add one voter; returns once the new configuration has committed."""
        await self._change_voters(lambda voters: voters | {node_id}, timeout)

    async def remove_voter(self, node_id: NodeId, timeout: float | None = None) -> None:
        """Remove one voter (possibly this leader); returns once the change has committed."""
        await self._change_voters(lambda voters: voters - {node_id}, timeout)

    # ------------------------------------------------------------------ client plumbing

    def _timeout(self, timeout: float | None) -> float:
        return self.config.request_timeout if timeout is None else timeout

    def _require_leader(self) -> None:
        if not self.is_leader:
            raise NotLeader(f"node {self.id} is not the leader", leader_hint=self.leader_id)

    async def _append_and_wait(self, entry: Entry, timeout: float | None, *, batch: bool = False) -> Outcome:
        index = self.last_index + 1 + len(self._batch)
        waiter = self._waiters[index] = _Waiter(self.term)  # before appending: a lone node commits at once
        if batch:
            # Group commit: commands submitted in the same scheduling round share one storage
            # write and one AppendEntries per follower (the flusher runs after them).
            self._batch.append(entry)
            self._batch_ready.set()
        else:
            try:
                self._append_as_leader([entry])
            except BaseException:
                self._waiters.pop(index, None)
                raise
        with trio.move_on_after(self._timeout(timeout)):
            await waiter.done.wait()
        if waiter.outcome is None:
            if self._waiters.get(index) is waiter:
                del self._waiters[index]
            raise CommitUnknown(f"entry {index} not committed in time", leader_hint=self.leader_id)
        return waiter.outcome

    async def _change_voters(self, change: Callable[[frozenset], frozenset], timeout: float | None) -> None:
        self._require_leader()
        term = self.term
        deadline = trio.current_time() + self._timeout(timeout)
        ready = False
        with trio.move_on_at(deadline):
            # Only after an entry of this term committed (else an older, uncommitted change could
            # still be decided by a different majority) and once the previous change committed.
            await self._wait_until(lambda: self.commit_index >= self._term_start
                                   and self._config_index() <= self.commit_index, term)
            ready = True
        if not ready:
            raise ConfigChangeInProgress("an earlier change or the leader's first entry has not committed",
                                         leader_hint=self.leader_id)
        voters = change(self.voters)
        if voters == self.voters:
            return
        if not voters:
            raise E.Invalid("cannot remove the last voter")
        remaining = max(0.0, deadline - trio.current_time())
        (await self._append_and_wait(Entry(term, ENTRY_CONFIG, sorted(voters)), remaining)).unwrap()

    async def _wait_until(self, cond: Callable[[], bool], term: int) -> None:
        while True:
            if not self.is_leader or self.term != term:
                raise NotLeader(f"node {self.id} lost leadership", leader_hint=self.leader_id)
            if cond():
                return
            await self._changed.wait()

    def _pulse(self) -> None:
        """Wake every task in _wait_until to re-check its condition."""
        self._changed.set()
        self._changed = trio.Event()

    def _fail_waiters(self, reason: str) -> None:
        self._batch = []  # queued commands were never appended: their waiters fail below
        for waiter in self._waiters.values():
            waiter.outcome = Outcome(error=CommitUnknown(reason, leader_hint=self.leader_id))
            waiter.done.set()
        self._waiters.clear()

    # ------------------------------------------------------------------ loops

    async def _flush_loop(self) -> None:
        while True:
            await self._batch_ready.wait()
            self._batch_ready = trio.Event()
            if self._batch and self.role == LEADER:
                self.stats["group_commits"] += 1
                self.stats["group_committed_entries"] += len(self._batch)
                self._append_as_leader([])

    def _log_synced(self) -> None:
        """The log-sync task made the leader's appends durable: they may count now."""
        self.stats["log_syncs"] += 1
        self._maybe_commit()

    async def _receive_loop(self) -> None:
        """Handle messages; those already queued are handled together, without an await between
        them (follower group commit): their log writes share one fsync, and every message they
        cause (acks included) is held until that fsync has returned."""
        incoming = self._transport.incoming
        more = getattr(incoming, "receive_nowait", None)
        async for first in incoming:
            self._held, held = [], 1
            msg = first
            while True:
                if _well_formed(msg):
                    self._handle(msg)
                else:
                    self.stats["malformed"] += 1
                    logger.warning("raft %s: dropping malformed message %.200r", self.id, msg)
                if more is None or held >= _RECEIVE_BATCH:
                    break
                try:
                    msg = more()
                except trio.WouldBlock:
                    break
                held += 1
            if self._held_writes:
                self._held_writes = False
                self._log_sync.sync_now()  # one fsync for the batch's appends, before any ack
                self.stats["follower_syncs"] += 1
            out, self._held = self._held, None
            for to, message in out:
                self._enqueue(to, message)

    async def _timer_loop(self) -> None:
        while True:
            deadline = self._heartbeat_deadline if self.role == LEADER else self._election_deadline
            with trio.move_on_at(deadline):
                await self._timer_kick.wait()
            self._timer_kick = trio.Event()
            now = trio.current_time()
            if self.role == LEADER:
                if now >= self._heartbeat_deadline:
                    self._leader_tick(now)
            elif now >= self._election_deadline:
                self._election_timeout()

    def _kick_timer(self) -> None:
        self._timer_kick.set()

    def _reset_election_timer(self) -> None:
        cfg = self.config
        self._election_deadline = trio.current_time() + self._rng.uniform(cfg.election_timeout_min,
                                                                           cfg.election_timeout_max)

    def _heartbeat_now(self) -> None:
        self._heartbeat_deadline = trio.current_time()
        self._kick_timer()

    async def _sender(self, to: NodeId, queue: trio.MemoryReceiveChannel) -> None:
        async for msg in queue:
            with trio.move_on_after(self.config.send_timeout):
                try:
                    await self._transport.send(to, msg)
                except Exception:  # a broken transport loses this message; Raft resends what matters
                    self.stats["send_errors"] += 1
                    logger.warning("raft %s: send to %s failed", self.id, to, exc_info=True)

    def _send(self, to: NodeId, kind: str, **fields: Any) -> None:
        """Queue a message (stamped with our id and term unless ``term`` is given); while a batch
        of received messages is handled, hold it until the batch's fsync (``_receive_loop``)."""
        message = {"t": kind, "src": self.id, "term": self.term, **fields}  # fields may set "term"
        if self._held is not None:
            self._held.append((to, message))
        else:
            self._enqueue(to, message)

    def _enqueue(self, to: NodeId, message: dict) -> None:
        if self._nursery is None:
            return
        box = self._outboxes.get(to)
        if box is None:
            box, queue = trio.open_memory_channel(self.config.send_queue)
            self._outboxes[to] = box
            self._nursery.start_soon(self._sender, to, queue, name=f"raft-{self.id}-send-{to}")
        try:
            box.send_nowait(message)
        except trio.WouldBlock:
            self.stats["send_queue_full"] += 1

    # ------------------------------------------------------------------ log and configuration

    def _store(self, index: int, entries: list[Entry], *, sync: bool = True) -> None:
        """Replace the log from ``index`` on with ``entries``, durably unless ``sync=False``
        (the leader's appends, and a follower's batch: see ``logsync.py``); track configurations."""
        if index <= self.commit_index:
            raise RuntimeError(f"raft {self.id}: would overwrite committed entry {index}")
        self._storage.append(index, entries, sync=sync)
        self._log_sync.wrote(index, synced=sync)
        del self._log[index - self._snap_index - 1:]
        self._log.extend(entries)
        changed = False
        while self._configs and self._configs[-1][0] >= index:
            self._configs.pop()
            changed = True
        for offset, entry in enumerate(entries):
            if entry.kind == ENTRY_CONFIG:
                self._configs.append((index + offset, tuple(entry.data)))
                changed = True
        if changed:
            self._set_voters()

    def _config_index(self) -> int:
        return self._configs[-1][0] if self._configs else self._snap_index

    def _voters_at(self, index: int) -> tuple[NodeId, ...]:
        for at, voters in reversed(self._configs):
            if at <= index:
                return voters
        return self._base_voters

    def _set_voters(self) -> None:
        voters = frozenset(self._configs[-1][1] if self._configs else self._base_voters)
        if voters == self.voters:
            return
        self.voters = voters
        if self.role == LEADER:
            now = trio.current_time()
            for peer in voters - {self.id} - self._progress.keys():
                self._progress[peer] = _Progress(self.last_index + 1, now)
            for peer in self._progress.keys() - voters:
                del self._progress[peer]

    def _quorum(self, members: set[NodeId]) -> bool:
        return len(members & self.voters) > len(self.voters) // 2

    def _log_up_to_date(self, msg: dict) -> bool:
        return (msg["last_term"], msg["last_index"]) >= (self.entry_term(self.last_index), self.last_index)

    # ------------------------------------------------------------------ roles

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        was = self.role
        if term > self.term:
            self.term, self.voted_for = term, None
            self._storage.save_term(term, None)
        self.role = FOLLOWER
        if leader is not None and leader != self.leader_id:
            self.stats["leader_changes"] += 1  # as seen by this member (metrics: flapping)
        self.leader_id = leader
        if was == LEADER:
            if self._log_sync.sync_now():  # a follower's acks and votes rest on durable state
                self.stats["log_syncs_on_step_down"] += 1
            self._progress = {}
            self._term_start = math.inf
            self._fail_waiters("leadership lost")
            logger.info("raft %s: stepped down in term %d", self.id, self.term)
        if was == LEADER or leader is not None:
            self._reset_election_timer()
            self._kick_timer()
        self._pulse()

    def _follow(self, leader: NodeId) -> None:
        """A message from the leader of our term arrived."""
        if self.role == LEADER:
            raise RuntimeError(f"raft {self.id}: two leaders in term {self.term} ({self.id}, {leader})")
        if self.role != FOLLOWER or self.leader_id != leader:
            self._become_follower(self.term, leader)
        self._leader_contact = trio.current_time()
        self._reset_election_timer()

    def _election_timeout(self) -> None:
        self._reset_election_timer()
        if self.id not in self.voters:
            return  # a new or removed server never campaigns
        if self.config.pre_vote:
            self.role = PRECANDIDATE
            self.leader_id = None
            self._votes = {self.id}
            self._broadcast_ballot("prevote", self.term + 1)
            if self._quorum(self._votes):
                self._start_election()
        else:
            self._start_election()

    def _start_election(self) -> None:
        self.term += 1
        self.voted_for = self.id
        self._storage.save_term(self.term, self.id)
        self.role = CANDIDATE
        self.leader_id = None
        self._votes = {self.id}
        self._reset_election_timer()
        self.stats["elections"] += 1
        self._broadcast_ballot("vote", self.term)
        if self._quorum(self._votes):
            self._become_leader()

    def _broadcast_ballot(self, kind: str, term: int) -> None:
        """Ask every other voter for a (pre-)vote in ``term``: a pre-vote names the term the
        sender would campaign in, so it is not the sender's current term."""
        last = self.last_index
        for peer in self.voters - {self.id}:
            self._send(peer, kind, last_index=last, last_term=self.entry_term(last), term=term)

    def _become_leader(self) -> None:
        now = trio.current_time()
        self.role = LEADER
        self.stats["leader_changes"] += 1
        self.leader_id = self.id
        self._lead_since = now
        self._progress = {peer: _Progress(self.last_index + 1, now) for peer in self.voters - {self.id}}
        self._term_start = self.last_index + 1
        logger.info("raft %s: leader of term %d (voters %s)", self.id, self.term, sorted(self.voters))
        self.observer.became_leader(self)
        self._append_as_leader([Entry(self.term, ENTRY_NOOP)])
        self._heartbeat_now()
        self._pulse()

    # ------------------------------------------------------------------ leader side

    def _append_as_leader(self, entries: list[Entry]) -> None:
        if self._batch:  # queued commands go first: their indexes were promised in order
            entries = self._batch + entries
            self._batch = []
        if not entries:
            return
        self._store(self.last_index + 1, entries, sync=False)  # sent before our own fsync is done
        for peer in list(self._progress):
            self._replicate(peer)
        self._maybe_commit()

    def _leader_tick(self, now: float) -> None:
        cfg = self.config
        self._heartbeat_deadline = now + cfg.heartbeat_interval
        if cfg.check_quorum and now - self._lead_since >= cfg.election_timeout_max:
            alive = {peer for peer, pr in self._progress.items() if now - pr.last_ack < cfg.election_timeout_max}
            alive.add(self.id)
            if not self._quorum(alive):
                logger.info("raft %s: lost contact with a majority, stepping down", self.id)
                self._become_follower(self.term, None)
                return
        self._round += 1
        self._round_started.append((self._round, now))
        if len(self._round_started) > 4096:  # no majority answers (we are cut off): keep it bounded
            self._round_started.popleft()
        for peer, pr in self._progress.items():
            if pr.inflight and now - pr.last_progress >= cfg.retransmit_timeout:
                self._restart_probe(pr, pr.match + 1)
                self.stats["retransmits"] += 1
            if pr.transfer is not None and pr.transfer.stalled(now, cfg.election_timeout_max):
                self.stats["snapshot_probes"] += 1
            self._send(peer, "heartbeat", commit=min(self.commit_index, pr.match), round=self._round)
            self._replicate(peer)
        self._pulse()

    def _restart_probe(self, pr: _Progress, next_index: int) -> None:
        pr.next = next_index
        pr.epoch += 1
        pr.inflight.clear()
        pr.probing = True
        pr.last_progress = trio.current_time()

    def _replicate(self, peer: NodeId) -> None:
        """Send what ``peer`` is missing, within its in-flight window."""
        pr = self._progress.get(peer)
        if pr is None:  # not (or no longer) leader, or the peer was just removed
            return
        now = trio.current_time()
        if pr.next <= self._snap_index:
            self._send_snapshot(peer, pr, now)
            return
        window = 1 if pr.probing else self.config.max_inflight
        # A probing follower gets an append even when ``next`` is past our log (an empty one):
        # a server added with an empty log is otherwise only sent heartbeats, which check no log,
        # and would not catch up until the next command arrived.
        while len(pr.inflight) < window and (pr.next <= self.last_index or
                                             (pr.probing and not pr.inflight and pr.match < self.last_index)):
            prev = pr.next - 1
            end = min(self.last_index, prev + self.config.max_batch)
            entries = [e.to_wire() for e in self._log[prev - self._snap_index:end - self._snap_index]]
            if not pr.inflight:
                pr.last_progress = now
            self._send(peer, "append", prev_index=prev, prev_term=self.entry_term(prev), entries=entries,
                       commit=self.commit_index, round=self._round, epoch=pr.epoch)
            pr.inflight.append(end)
            pr.next = end + 1

    def _acknowledged(self, pr: _Progress, round_: int) -> None:
        pr.last_ack = trio.current_time()
        if round_ > pr.acked_round:
            pr.acked_round = round_
            self._pulse()

    def _matched(self, pr: _Progress, match: int) -> None:
        if match > pr.match:
            pr.match = match
            pr.last_progress = trio.current_time()
        pr.probing = False
        if pr.next <= pr.match:
            pr.next = pr.match + 1
        while pr.inflight and pr.inflight[0] <= pr.match:
            pr.inflight.popleft()
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        if self.role != LEADER:
            return
        matches = [pr.match for pr in self._progress.values()]
        if self.id in self.voters:
            matches.append(self.durable_index)
        matches.sort(reverse=True)
        candidate = matches[len(self.voters) // 2]
        if candidate > self.commit_index and self.entry_term(candidate) == self.term:
            self._commit_to(candidate)

    def _lease_valid(self) -> bool:
        """Leader lease: a majority acknowledged a round that began less than
        lease_fraction x election_timeout_min ago. Each of them refuses votes for
        election_timeout_min after hearing that round, so no other leader can exist before then."""
        acked = self._quorum_round()
        started = self._round_started
        while len(started) > 1 and started[1][0] <= acked:
            started.popleft()  # keep the newest round at or below ``acked``
        if not started or started[0][0] > acked:
            return False
        limit = self.config.lease_fraction * self.config.election_timeout_min
        return trio.current_time() - started[0][1] < limit

    def _refuses_votes(self) -> bool:
        """With leases, a voter that heard from a leader within election_timeout_min (or started
        less than that ago: it may have heard from one before a restart) refuses to vote."""
        now = trio.current_time()
        if now - self._started_at < self.config.election_timeout_min:
            return True
        return self.role == FOLLOWER and self.leader_id is not None and \
            now - self._leader_contact < self.config.election_timeout_min

    def _quorum_round(self) -> int:
        rounds = [pr.acked_round for pr in self._progress.values()]
        if self.id in self.voters:
            rounds.append(self._round)
        rounds.sort(reverse=True)
        return rounds[len(self.voters) // 2]

    def _last_index_of_term(self, term: int, at_most: int) -> int | None:
        index = min(at_most, self.last_index)
        while index > self._snap_index:
            t = self.entry_term(index)
            assert t is not None  # (snapshot, last]: in the log
            if t == term:
                return index
            if t < term:
                return None
            index -= 1
        return self._snap_index if self._snap_term == term else None

    # ------------------------------------------------------------------ commit and apply

    def _commit_to(self, index: int) -> None:
        index = min(index, self.last_index)
        if index <= self.commit_index:
            return
        self.commit_index = index
        self._apply_committed()
        self._pulse()

    def _apply_committed(self) -> None:
        while self.last_applied < self.commit_index:
            index = self.last_applied + 1
            entry = self._log[index - self._snap_index - 1]
            if entry.kind == ENTRY_COMMAND:
                client_id, seq, command, *stamp = entry.data  # no stamp in entries of older versions
                if isinstance(client_id, list):
                    client_id = tuple(client_id)
                outcome = self._sessions.apply(index, client_id, seq, command, stamp[0] if stamp else None)
            else:
                outcome = Outcome(list(entry.data) if entry.kind == ENTRY_CONFIG else None)
            self.last_applied = index
            self.observer.applied(self, index, entry, outcome)
            waiter = self._waiters.pop(index, None)
            if waiter is not None:
                waiter.outcome = outcome if waiter.term == entry.term else Outcome(
                    error=NotLeader(f"entry {index} was replaced", leader_hint=self.leader_id))
                waiter.done.set()
        if self.role == LEADER and self.id not in self.voters and self._config_index() <= self.commit_index:
            logger.info("raft %s: removed from the cluster, stepping down", self.id)
            self._become_follower(self.term, None)
        every = self.config.snapshot_every
        if every and self.last_applied - self._snap_index >= every:
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        now = trio.current_time()
        if any(pr.transfer is not None and pr.transfer.active(now) for pr in self._progress.values()):
            if len(self._log) < DEFER_LIMIT * self.config.snapshot_every:
                return  # a follower is reading the current snapshot's files: keep them
            for pr in self._progress.values():
                pr.transfer = None  # they start over from the new snapshot
        index = self.last_applied
        term = self.entry_term(index)
        assert term is not None  # applied entries are in the log (or are the snapshot's last)
        snap = self._snapshots.take(index, term, tuple(sorted(self._voters_at(index))))
        del self._log[:index - self._snap_index]
        self._install(snap, keep_configs=True)
        self.stats["snapshots_taken"] += 1

    def _install(self, snap: Snapshot, *, keep_configs: bool) -> None:
        self._snapshot = snap
        self._snap_index, self._snap_term = snap.index, snap.term
        self._base_voters = snap.voters
        self._configs = [c for c in self._configs if c[0] > snap.index] if keep_configs else []
        self._set_voters()

    def _send_snapshot(self, peer: NodeId, pr: _Progress, now: float) -> None:
        """Stream our snapshot to ``peer``: the chunks its window allows (``snapshots.py``)."""
        snap = self._snapshot
        cfg = self.config
        if pr.transfer is None or pr.transfer.snap is not snap:
            pr.transfer = self._snapshots.outgoing(snap, chunk=cfg.snapshot_chunk, window=cfg.snapshot_window,
                                                   now=now)
            self.stats["snapshots_sent"] += 1
        transfer = pr.transfer
        try:
            chunks = transfer.chunks()
        except OSError as exc:  # its files went (compaction): start over from the current snapshot
            logger.warning("raft %s: snapshot %d for %s: %s", self.id, snap.index, peer, exc)
            pr.transfer = None
            return
        for offset, data in chunks:
            self._send(peer, "snapshot", index=snap.index, last_term=snap.term, voters=list(snap.voters),
                       manifest=transfer.manifest, offset=offset, data=data, round=self._round)
            self.stats["snapshot_bytes_sent"] += len(data)

    # ------------------------------------------------------------------ message handling

    def _handle(self, msg: dict) -> None:
        kind, term, src = msg["t"], msg["term"], msg["src"]
        if kind == "prevote":  # never changes terms: its "term" is hypothetical
            self._on_prevote(msg)
            return
        if kind == "vote" and term > self.term and self.config.lease_reads and self._refuses_votes():
            self.stats["votes_refused_in_lease"] += 1
            return  # not even our term moves: the leader we hear from keeps its lease
        if term > self.term and not (kind == "prevote_reply" and msg["granted"]):
            self._become_follower(term, src if kind in _FROM_LEADER else None)
        if kind == "prevote_reply":  # a grant from a voter with an older term still counts
            self._on_prevote_reply(msg)
            return
        if term < self.term:
            # Tell a stale leader or candidate about the newer term; stale answers are dropped.
            if kind in _FROM_LEADER:
                reply = {"append": "append_reply", "heartbeat": "heartbeat_reply",
                         "snapshot": "snapshot_reply"}[kind]
                self._send(src, reply, **_rejection(reply))
            elif kind == "vote":
                self._send(src, "vote_reply", granted=False)
            return
        getattr(self, "_on_" + kind)(msg)

    def _leader_alive(self) -> bool:
        if self.role == LEADER:
            return True
        recent = trio.current_time() - self._leader_contact < self.config.election_timeout_min
        return self.leader_id is not None and recent

    def _on_prevote(self, msg: dict) -> None:
        proposed = msg["term"]
        granted = proposed > self.term and self._log_up_to_date(msg) and not self._leader_alive()
        self._send(msg["src"], "prevote_reply", granted=granted, proposed=proposed)

    def _on_prevote_reply(self, msg: dict) -> None:
        if self.role != PRECANDIDATE or msg["proposed"] != self.term + 1 or not msg["granted"]:
            return
        self._votes.add(msg["src"])
        if self._quorum(self._votes):
            self._start_election()

    def _on_vote(self, msg: dict) -> None:
        src = msg["src"]
        granted = self.voted_for in (None, src) and self.role != LEADER and self._log_up_to_date(msg)
        if granted:
            if self.voted_for != src:
                self.voted_for = src
                self._storage.save_term(self.term, src)
            self._reset_election_timer()
        self._send(src, "vote_reply", granted=granted)

    def _on_vote_reply(self, msg: dict) -> None:
        if self.role != CANDIDATE or not msg["granted"]:
            return
        self._votes.add(msg["src"])
        if self._quorum(self._votes):
            self._become_leader()

    def _on_append(self, msg: dict) -> None:
        src = msg["src"]
        self._follow(src)
        prev, entries = msg["prev_index"], msg["entries"]
        answer = {"epoch": msg["epoch"], "round": msg["round"], "reject": prev}
        if prev > self.last_index:
            self._send(src, "append_reply", ok=False, match=0, hint_index=self.last_index + 1, hint_term=None,
                       **answer)
            return
        if prev >= self._snap_index and self.entry_term(prev) != msg["prev_term"]:
            conflict = self.entry_term(prev)
            first = prev
            while first - 1 > self._snap_index and self.entry_term(first - 1) == conflict:
                first -= 1
            self._send(src, "append_reply", ok=False, match=0, hint_index=first, hint_term=conflict, **answer)
            return
        for pos, raw in enumerate(entries):
            index = prev + 1 + pos
            if index <= self._snap_index:
                continue
            if index <= self.last_index and self.entry_term(index) == raw[0]:
                continue
            # Durable before the ack: synced now, or with the rest of the batch before it is sent.
            self._store(index, [Entry.from_wire(r) for r in entries[pos:]], sync=self._held is None)
            if self._held is not None:
                self._held_writes = True
            break
        match = max(prev + len(entries), self._snap_index)
        self._commit_to(min(msg["commit"], match))
        self._send(src, "append_reply", ok=True, match=match, hint_index=0, hint_term=None, **answer)

    def _on_append_reply(self, msg: dict) -> None:
        pr = self._leader_progress(msg)
        if pr is None:
            return
        self._acknowledged(pr, msg["round"])
        if msg["ok"]:
            self._matched(pr, msg["match"])
        elif msg["epoch"] == pr.epoch and msg["reject"] > pr.match:
            hint = msg["hint_index"]
            if msg["hint_term"] is not None:
                ours = self._last_index_of_term(msg["hint_term"], msg["reject"])
                if ours is not None:
                    hint = ours + 1
            self._restart_probe(pr, max(pr.match + 1, min(hint, msg["reject"])))
        self._replicate(msg["src"])

    def _on_heartbeat(self, msg: dict) -> None:
        self._follow(msg["src"])
        self._commit_to(msg["commit"])  # the leader capped it at what it knows we hold
        self._send(msg["src"], "heartbeat_reply", round=msg["round"])

    def _on_heartbeat_reply(self, msg: dict) -> None:
        pr = self._leader_progress(msg)
        if pr is not None:
            self._acknowledged(pr, msg["round"])
            self._replicate(msg["src"])

    def _on_snapshot(self, msg: dict) -> None:
        self._follow(msg["src"])
        index, offset = msg["index"], 0
        if index > self.commit_index:
            offset, snap = self._snapshots.receive(msg)
            if snap is not None:
                keep = self.entry_term(index) == snap.term  # our log agrees there: keep what follows
                self._snapshots.install(snap, keep_log=keep)  # stored, and the machine restored
                if keep:
                    del self._log[:index - self._snap_index]
                else:
                    self._log = []
                self._install(snap, keep_configs=keep)
                self.commit_index = self.last_applied = index
                self.stats["snapshots_installed"] += 1
                self.observer.restored(self, snap)
                self._pulse()
        match = index if index <= self.commit_index else 0
        self._send(msg["src"], "snapshot_reply", match=match, index=index, offset=offset, round=msg["round"])

    def _on_snapshot_reply(self, msg: dict) -> None:
        pr = self._leader_progress(msg)
        if pr is None:
            return
        self._acknowledged(pr, msg["round"])
        if msg["match"]:
            pr.transfer = None
            self._matched(pr, msg["match"])
        elif pr.transfer is not None and msg["index"] == pr.transfer.snap.index and type(msg["offset"]) is int:
            pr.transfer.on_reply(msg["offset"], trio.current_time())
        self._replicate(msg["src"])

    def _leader_progress(self, msg: dict) -> _Progress | None:
        if self.role != LEADER or msg["term"] != self.term:
            return None
        return self._progress.get(msg["src"])


def _rejection(reply: str) -> dict:
    """Fields of a reply that only carries our (newer) term."""
    if reply == "append_reply":
        return {"ok": False, "match": 0, "epoch": -1, "round": 0, "reject": 0, "hint_index": 0, "hint_term": None}
    if reply == "snapshot_reply":
        return {"match": 0, "index": 0, "offset": 0, "round": 0}
    return {"round": 0}
