"""Raft snapshots that scale: taken as files, streamed in bounded chunks, installed from files.

This module owns what ``raft.py`` does with snapshots besides deciding *when*: taking one
(:meth:`SnapshotKeeper.take`), restoring one at start (:meth:`SnapshotKeeper.load`), the
leader's side of sending one to a follower (:class:`Outgoing`), the follower's side of
receiving one (:class:`Incoming`) and installing it (:meth:`SnapshotKeeper.install`), and the
snapshot directories on disk (:class:`SnapshotDirs`). Imports: the standard library, ``raftlog``
and ``sessions`` only (the node hands everything else in).

Two kinds of snapshot
---------------------
A snapshot is always the :class:`~.raftlog.Snapshot` record ``(index, term, voters, data)``
kept by :class:`~.raftlog.RaftStorage`. What ``data`` holds depends on the state machine:

* *bytes* (a machine with only ``snapshot(index) -> bytes`` / ``restore(bytes)``: the in-memory
  machines of the Raft tests): ``data`` packs the machine's bytes with the session table;
* *files* (a :class:`FileSnapshotMachine`, e.g. the RocksDB-backed ``ReplicatedState``, on a
  storage with a ``snapshot_dir``): ``data`` holds the session table only (machine part nil),
  and the machine's state is a directory ``<snapshot_dir>/snap-<index>-<term>`` the machine
  wrote with ``checkpoint(index, dir)`` -- for RocksDB a checkpoint: its SST files hard-linked,
  taken synchronously right after applying ``index``, so it holds exactly that state.

Sending: chunks, a window, resumption
-------------------------------------
The leader sends a snapshot as a *manifest* ``[[name, size], ...]`` -- name ``""`` is ``data``
itself, the others are the directory's files -- read as one byte stream. Each ``snapshot``
message carries the manifest, a global ``offset`` and at most ``RaftConfig.snapshot_chunk``
bytes that never cross a file boundary, so no frame is bigger than a chunk plus a small header.
At most ``snapshot_window`` chunks are unacknowledged per follower (the send queue never holds
more than that many chunk bytes). The follower keeps what it received keyed by ``(index, term)``
and writes each chunk at its place (``file``, ``offset``): files straight into
``<snapshot_dir>/incoming-<index>-<term>`` (each fsynced when complete), bytes snapshots into a
buffer. It accepts a chunk only at its current position and answers every message with that
position (``snapshot_reply``: ``index``, ``offset``).

A transfer starts with a *probe* (an empty chunk): the follower answers with its position, and
the leader streams from there -- so after a dropped connection, lost messages or a new leader of
the same snapshot, the transfer resumes where the follower is rather than at zero. An answer that
moves the position forward is progress; a transfer without progress for ``election_timeout_max``
probes again. Neither side ever holds the whole snapshot in memory (file snapshots): the leader
``pread``\\ s one chunk at a time, the follower writes each as it arrives.

When the follower has the whole stream it moves the directory to ``snap-<index>-<term>``
(fsynced), records the snapshot in its Raft storage, and the machine ``restore_files`` from it
(RocksDB: its SSTs hard-linked into the state directory and opened -- nothing is re-inserted).

Keeping files alive
-------------------
The leader reads the files of its current snapshot directory. It does not compact (take a newer
snapshot, which deletes the older directory) while a transfer is *active* -- its follower answered
within ``IDLE_AFTER`` seconds -- unless its log has grown past ``DEFER_LIMIT`` x ``snapshot_every``
entries; then it compacts and every transfer starts over from the new snapshot. (A follower that
stopped answering does not hold the log back.) Taking or installing a snapshot deletes every other
``snap-*`` directory; starting a node deletes every directory but its current snapshot's
(half-received ``incoming-*``, half-taken ``taking-*``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from .raftlog import NodeId, RaftStorage, Snapshot, pack
from .sessions import ClientSessions

__all__ = ["DEFER_LIMIT", "IDLE_AFTER", "FileSnapshotMachine", "Incoming", "Outgoing", "SnapshotDirs", "SnapshotKeeper"]

logger = logging.getLogger("lakefs_fuse.meta.raft")

#: A leader sending a snapshot compacts anyway once its log holds this many x snapshot_every entries.
DEFER_LIMIT = 8
#: A transfer whose follower has not answered for this many seconds no longer defers compaction.
IDLE_AFTER = 5.0

#: Manifest name of the snapshot record's own bytes; where a follower stages them in file mode.
DATA_NAME = ""
_DATA_FILE = "raft-snapshot.data"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@runtime_checkable
class FileSnapshotMachine(Protocol):
    """A state machine whose snapshots are files (see the module docstring)."""

    def checkpoint(self, index: int, directory: str) -> None:
        """Write the state after applying ``index`` as files into ``directory`` (which does not
        exist yet). Synchronous: no command may be applied meanwhile."""

    def restore_files(self, directory: str) -> None:
        """Replace the whole state with the one in ``directory`` (left in place: link or copy)."""


def _fsync(path: str, flags: int = 0) -> None:
    """fsync a file, or a directory with ``flags=os.O_DIRECTORY``."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotDirs:
    """The snapshot directories under one root (``RaftStorage.snapshot_dir``)."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)

    def path(self, index: int, term: int) -> str:
        return os.path.join(self.root, f"snap-{index}-{term}")

    def incoming(self, index: int, term: int) -> str:
        return os.path.join(self.root, f"incoming-{index}-{term}")

    def taking(self, index: int, term: int) -> str:
        return os.path.join(self.root, f"taking-{index}-{term}")

    def manifest(self, index: int, term: int) -> list[list[Any]]:
        """``[[name, size], ...]`` of the snapshot's files, in name order."""
        path = self.path(index, term)
        return [[name, os.stat(os.path.join(path, name)).st_size] for name in sorted(os.listdir(path))
                if name != _DATA_FILE]

    def seal(self, staged: str, final: str) -> None:
        """Make ``staged`` durable and move it to ``final`` (replacing a leftover)."""
        _fsync(staged, os.O_DIRECTORY)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staged, final)
        _fsync(self.root, os.O_DIRECTORY)

    def clean(self, keep: set[str]) -> None:
        """Delete every directory under the root whose path is not in ``keep``."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)


class Outgoing:
    """One snapshot on its way from the leader to one follower (see "Sending" above)."""

    def __init__(self, snap: Snapshot, manifest: list[list[Any]], read: Callable[[int, int, int], bytes],
                 *, chunk: int, window: int, now: float):
        self.snap = snap
        self.manifest = manifest
        self._read = read  # (file number, offset in file, length) -> bytes
        self._chunk = chunk
        self._window = window
        self._starts: list[int] = []
        total = 0
        for _, size in manifest:
            self._starts.append(total)
            total += size
        self.total = total
        self.acked = 0  # the follower's position, as far as we know
        self.next = 0  # where the next chunk starts
        self.inflight: deque[int] = deque()  # end offset of each unacknowledged chunk
        self.probing = True
        self.last_progress = now
        self.last_reply = now
        self.sent_bytes = 0

    def chunks(self) -> list[tuple[int, bytes]]:
        """``(offset, data)`` of the messages to send now (a probe is an empty chunk)."""
        if self.probing:
            if self.inflight:
                return []
            self.inflight.append(self.acked)
            return [(self.acked, b"")]
        out = []
        while len(self.inflight) < self._window and self.next < self.total:
            offset = self.next
            file_no = self._file_at(offset)
            start = self._starts[file_no]
            length = min(self._chunk, start + self.manifest[file_no][1] - offset)
            data = self._read(file_no, offset - start, length)
            if len(data) != length:
                raise OSError(f"snapshot file {self.manifest[file_no][0]!r} is shorter than its manifest")
            out.append((offset, data))
            self.sent_bytes += length
            self.next = offset + length
            self.inflight.append(self.next)
        return out

    def _file_at(self, offset: int) -> int:
        """The file holding byte ``offset`` of the stream (empty files hold none)."""
        for i in range(len(self.manifest) - 1, -1, -1):
            if self._starts[i] <= offset and self.manifest[i][1] > 0:
                return i
        raise ValueError(f"offset {offset} beyond the snapshot")

    def on_reply(self, offset: int, now: float) -> None:
        """The follower is at ``offset``. A probe's answer is believed whatever it says; later ones
        only when they move forward (an old answer may arrive late)."""
        self.last_reply = now
        if self.probing:
            self.probing = False
            self.inflight.clear()
            self.acked = self.next = max(0, min(offset, self.total))
            self.last_progress = now
            return
        if offset > self.acked:
            self.acked = min(offset, self.total)
            self.last_progress = now
            while self.inflight and self.inflight[0] <= self.acked:
                self.inflight.popleft()
            if self.acked > self.next:
                self.next = self.acked
                self.inflight.clear()

    def active(self, now: float) -> bool:
        """Whether the follower answered lately (a transfer to a silent one defers nothing)."""
        return now - self.last_reply < IDLE_AFTER

    def stalled(self, now: float, timeout: float) -> bool:
        """No progress for ``timeout``: probe again (returns True when it starts a probe)."""
        if now - self.last_progress < timeout:
            return False
        self.probing = True
        self.inflight.clear()
        self.last_progress = now
        return True


class Incoming:
    """One snapshot being received by a follower: files in a staging directory, or a buffer."""

    def __init__(self, index: int, term: int, voters: list[NodeId], manifest: list[list[Any]],
                 directory: str | None):
        self.key = (index, term)
        self.voters = tuple(voters)
        self.manifest = manifest
        self.total = sum(size for _, size in manifest)
        self.position = 0
        self.directory = directory
        self._buffer = bytearray()
        self._file_no = 0  # the file holding ``position`` (or the next non-empty one)
        self._file_start = 0
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory, mode=0o700)
            for name, _ in manifest:  # every file exists from the start (empty ones stay empty)
                os.close(os.open(self._local(name), os.O_WRONLY | os.O_CREAT, 0o600))
        self._advance()

    @staticmethod
    def valid_manifest(manifest: Any, files: bool) -> bool:
        """``[["", size], [name, size], ...]``: distinct plain file names (files only with ``files``)."""
        if not isinstance(manifest, list) or not manifest:
            return False
        for item in manifest:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and type(item[1]) is int and item[1] >= 0):
                return False
        names = [name for name, _ in manifest]
        if names[0] != DATA_NAME or len(set(names)) != len(names):
            return False
        rest = names[1:]
        return all(_NAME.fullmatch(n) and n != _DATA_FILE for n in rest) if files else not rest

    def _local(self, name: str) -> str:
        assert self.directory is not None
        return os.path.join(self.directory, name or _DATA_FILE)

    def _advance(self) -> None:
        """Move past files that are complete at ``position``."""
        while self._file_no < len(self.manifest) and \
                self._file_start + self.manifest[self._file_no][1] <= self.position:
            if self.directory is not None and self.manifest[self._file_no][1] > 0:
                _fsync(self._local(self.manifest[self._file_no][0]))
            self._file_start += self.manifest[self._file_no][1]
            self._file_no += 1

    def write(self, offset: int, data: bytes | bytearray) -> int:
        """Take a chunk if it starts at our position; return the position."""
        if offset != self.position or not data or offset + len(data) > self.total:
            return self.position
        name, size = self.manifest[self._file_no]
        if offset + len(data) > self._file_start + size:
            return self.position  # a chunk never crosses a file boundary
        if self.directory is None:
            self._buffer += data
        else:
            fd = os.open(self._local(name), os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset - self._file_start)
            finally:
                os.close(fd)
        self.position += len(data)
        self._advance()
        return self.position

    @property
    def complete(self) -> bool:
        return self.position == self.total

    def data(self) -> bytes:
        """The snapshot record's bytes (the first stream entry)."""
        if self.directory is None:
            return bytes(self._buffer[:self.manifest[0][1]])
        with open(self._local(DATA_NAME), "rb") as f:
            return f.read()

    def discard(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


class SnapshotKeeper:
    """A node's snapshots on disk and in transit (see the module docstring)."""

    def __init__(self, storage: RaftStorage, sessions: ClientSessions):
        self.storage = storage
        self.sessions = sessions
        root = storage.snapshot_dir
        machine = sessions.machine
        self.dirs = SnapshotDirs(root) if root is not None and isinstance(machine, FileSnapshotMachine) else None
        self.incoming: Incoming | None = None

    @property
    def files(self) -> bool:
        return self.dirs is not None

    def load(self, snap: Snapshot) -> None:
        """At start: restore the machine and session table from the stored snapshot, and delete
        every other snapshot directory (half-received or half-taken ones included)."""
        if self.dirs is not None:
            self.dirs.clean({self.dirs.path(snap.index, snap.term)})
        if snap.index > 0:
            self._restore(snap)

    def _restore(self, snap: Snapshot) -> None:
        if ClientSessions.machine_part(snap.data) is None:
            if self.dirs is None:
                raise RuntimeError(f"snapshot {snap.index} is files, and this node keeps none")
            path = self.dirs.path(snap.index, snap.term)
            if not os.path.isdir(path):
                raise RuntimeError(f"the files of snapshot {snap.index} (term {snap.term}) are missing: {path}")
            self.sessions.machine.restore_files(path)
            self.sessions.restore(snap.data, machine=False)
        else:
            self.sessions.restore(snap.data)

    def take(self, index: int, term: int, voters: tuple[NodeId, ...]) -> Snapshot:
        """Snapshot the state right after applying ``index``; store it; drop older directories."""
        if self.dirs is None:
            snap = Snapshot(index, term, voters, self.sessions.snapshot(index))
            self.storage.save_snapshot(snap, keep_log=True)
            return snap
        staged, final = self.dirs.taking(index, term), self.dirs.path(index, term)
        shutil.rmtree(staged, ignore_errors=True)
        self.sessions.machine.checkpoint(index, staged)
        self.dirs.seal(staged, final)
        snap = Snapshot(index, term, voters, self.sessions.table())
        self.storage.save_snapshot(snap, keep_log=True)
        keep = {final}
        if self.incoming is not None and self.incoming.directory is not None:
            keep.add(self.incoming.directory)
        self.dirs.clean(keep)
        return snap

    def outgoing(self, snap: Snapshot, *, chunk: int, window: int, now: float) -> Outgoing:
        """A transfer of ``snap`` (the node's current snapshot) to one follower."""
        manifest: list[list[Any]] = [[DATA_NAME, len(snap.data)]]
        directory = None
        if self.dirs is not None and ClientSessions.machine_part(snap.data) is None:
            directory = self.dirs.path(snap.index, snap.term)
            manifest += self.dirs.manifest(snap.index, snap.term)

        def read(file_no: int, offset: int, length: int) -> bytes:
            if file_no == 0:
                return snap.data[offset:offset + length]
            assert directory is not None
            fd = os.open(os.path.join(directory, manifest[file_no][0]), os.O_RDONLY)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)

        return Outgoing(snap, manifest, read, chunk=chunk, window=window, now=now)

    def receive(self, msg: dict) -> tuple[int, Snapshot | None]:
        """A ``snapshot`` message for an index past our commit: take its chunk. Returns our
        position and, once the stream is whole, the snapshot (to :meth:`install`)."""
        key = (msg["index"], msg["last_term"])
        if type(msg["offset"]) is not int or not isinstance(msg["data"], bytes | bytearray) or \
                not isinstance(msg["voters"], list):
            return (self.incoming.position if self.incoming is not None else 0), None
        inc = self.incoming
        if inc is None or inc.key != key:
            manifest = msg["manifest"]
            if not Incoming.valid_manifest(manifest, self.files):
                logger.warning("raft: snapshot %s with an unusable manifest %.200r", key, manifest)
                return 0, None
            if inc is not None:
                inc.discard()
            directory = self.dirs.incoming(*key) if self.dirs is not None else None
            inc = self.incoming = Incoming(key[0], key[1], msg["voters"], manifest, directory)
        position = inc.write(msg["offset"], msg["data"])
        if not inc.complete:
            return position, None
        return position, Snapshot(key[0], key[1], inc.voters, inc.data())

    def install(self, snap: Snapshot, *, keep_log: bool) -> None:
        """Make a received snapshot the node's: durable files, stored record, restored state."""
        inc, self.incoming = self.incoming, None
        if self.dirs is not None and inc is not None and inc.directory is not None:
            os.unlink(os.path.join(inc.directory, _DATA_FILE))  # it lives in the Raft storage
            self.dirs.seal(inc.directory, self.dirs.path(snap.index, snap.term))
        self.storage.save_snapshot(snap, keep_log=keep_log)
        self._restore(snap)
        if self.dirs is not None:
            self.dirs.clean({self.dirs.path(snap.index, snap.term)})


def file_snapshot_record(rows: list[Any] | None = None, clock: float = 0.0) -> bytes:
    """A snapshot record whose state lives in files (tests seeding a member use it)."""
    return pack([None, rows or [], clock])
