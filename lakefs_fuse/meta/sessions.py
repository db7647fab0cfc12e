"""Raft's client-session table: every command applies once, however often a client retries it.

This module owns :class:`ClientSessions` (the table over a Raft state machine), :class:`Outcome`
(one applied command's result) and the two errors a session answers with. ``raft.py`` applies
every committed command through it; the table travels inside every snapshot. Imports: the
project's ``errors`` and ``raftlog`` (its msgpack helpers) only.

The table
---------
A command is ``(client_id, seq, command)``. The table keeps each client's last ``seq`` and that
command's result (a value, or the ``LakeError`` it raised). A duplicate of the last ``seq``
returns the stored result without applying again; an older ``seq`` gets :class:`StaleRequest`.

Expiry (``session_ttl``)
------------------------
Without expiry the table would keep one entry per client id ever seen. The leader stamps every
command entry with its wall clock when it appends it; applying an entry advances the table's
clock to ``max(clock, stamp)`` (a function of the log alone, so every replica expires the same
clients at the same index: no replica reads its own clock while applying). A client whose last
command is older than ``ttl`` by that clock loses its entry.

What a client that comes back after that gets -- the safe choice, never a second application:

* ``seq == 1`` from an unknown client opens a session (a new client's first command);
* any other ``seq`` from an unknown client gets :class:`SessionExpired` (errno ``ESTALE``) and
  is *not* applied: it may be the retry of a command applied before the entry expired.

So a mount that was gone (frozen, partitioned, idle) longer than the bound gets ``ESTALE`` for
its next command instead of a double application. The answer also proves the command was not
applied within the last ``ttl``: a client that first sent it less than ``ttl`` ago (every retry
loop gives up long before: ``META_TIMEOUT`` is 30 s, the bound an hour) may send it again under
a new session (new id, ``seq`` 1). One case stays open: a session's *first* command retried
more than ``ttl`` after it was first sent applies again.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from typing import Any

from .. import errors as E
from .raftlog import pack, unpack

__all__ = ["ClientSessions", "Outcome", "SessionExpired", "StaleRequest"]


class StaleRequest(E.LakeError):
    """A command's ``seq`` is older than its client's last applied one; that result is not kept."""

    errno = errno.EINVAL


class SessionExpired(StaleRequest):
    """The client's session expired (unseen for longer than ``session_ttl``); the command was not
    applied. A client that first sent it less than the bound ago may resend it as a new session."""

    errno = errno.ESTALE


class Outcome:
    """The result of one applied command: a value, or the ``LakeError`` it raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: Any = None, error: E.LakeError | None = None):
        self.value = value
        self.error = error

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        if self.error is not None or other.error is not None:
            return _error_key(self.error) == _error_key(other.error)
        return self.value == other.value

    def __repr__(self) -> str:
        return f"Outcome(error={self.error!r})" if self.error is not None else f"Outcome({self.value!r})"


def _error_key(exc: E.LakeError | None):
    return None if exc is None else (type(exc).__name__, exc.errno, str(exc))


def _encode_error(exc: E.LakeError) -> list:
    return [type(exc).__name__, exc.errno, str(exc)]


def _decode_error(raw: list) -> E.LakeError:
    name, err, message = raw
    cls = getattr(E, name, None) or globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, E.LakeError)):
        cls = E.LakeError
    exc = cls(message)
    exc.errno = err
    return exc


class ClientSessions:
    """Exactly-once application: the last ``(seq, outcome)`` of every live client, over a state
    machine (anything with ``apply(index, command)``, ``snapshot(index)``, ``restore(data)``)."""

    def __init__(self, machine: Any, ttl: float = 3600.0):
        self.machine = machine
        self.ttl = ttl
        #: The newest leader stamp applied (seconds since the epoch); 0 before the first.
        self.clock = 0.0
        # client id -> (seq, outcome, stamp of its last command), oldest stamp first.
        self._last: OrderedDict[Any, tuple[int, Outcome, float]] = OrderedDict()
        self.expired = 0  # entries dropped by expiry (metrics, tests)

    def __len__(self) -> int:
        return len(self._last)

    def cached(self, client_id: Any, seq: int) -> Outcome | None:
        last = self._last.get(client_id)
        return last[1] if last is not None and last[0] == seq else None

    def apply(self, index: int, client_id: Any, seq: int, command: Any, stamp: float | None = None) -> Outcome:
        """Apply the command of log entry ``index`` once; ``stamp`` is the leader's clock in it
        (None in entries written before stamps existed: the clock then stands still)."""
        if stamp is not None and stamp > self.clock:
            self.clock = float(stamp)
            self._expire()
        last = self._last.get(client_id)
        if last is not None:
            if seq == last[0]:
                self._last[client_id] = (last[0], last[1], self.clock)
                self._last.move_to_end(client_id)
                return last[1]
            if seq < last[0]:
                return Outcome(error=StaleRequest(f"client {client_id!r} seq {seq} < last applied {last[0]}"))
        elif seq != 1:
            return Outcome(error=SessionExpired(
                f"client {client_id!r}: no session (expired after {self.ttl:g} s unseen, or never opened); "
                f"seq {seq} not applied"))
        try:
            outcome = Outcome(self.machine.apply(index, command))
        except E.LakeError as exc:  # a failed command is still a committed entry; this is its result
            outcome = Outcome(error=exc)
        self._last[client_id] = (seq, outcome, self.clock)
        self._last.move_to_end(client_id)
        return outcome

    def _expire(self) -> None:
        horizon = self.clock - self.ttl
        while self._last:
            client_id, (_, _, seen) = next(iter(self._last.items()))
            if seen >= horizon:
                break
            del self._last[client_id]
            self.expired += 1

    def _rows(self) -> list[list[Any]]:
        return [[cid, seq, 0, out.value, seen] if out.error is None else [cid, seq, 1, _encode_error(out.error), seen]
                for cid, (seq, out, seen) in self._last.items()]

    def table(self) -> bytes:
        """The table alone, machine part nil: a file snapshot (the machine's state is in files)."""
        return pack([None, self._rows(), self.clock])

    def snapshot(self, index: int) -> bytes:
        """The machine's snapshot bytes with the table: a bytes snapshot."""
        return pack([self.machine.snapshot(index), self._rows(), self.clock])

    def restore(self, data: bytes, *, machine: bool = True) -> None:
        """Replace the table (and, with ``machine``, the machine's state) from a snapshot's bytes.
        Snapshots written before expiry existed hold ``[machine, rows]`` with 4-field rows."""
        parts = unpack(data)
        machine_data, rows = parts[0], parts[1]
        self.clock = float(parts[2]) if len(parts) > 2 else 0.0
        if machine:
            self.machine.restore(machine_data)
        self._last = OrderedDict()
        for row in rows:
            cid, seq, failed, value = row[:4]
            seen = float(row[4]) if len(row) > 4 else self.clock
            cid = tuple(cid) if isinstance(cid, list) else cid
            self._last[cid] = (seq, Outcome(error=_decode_error(value)) if failed else Outcome(value), seen)

    @staticmethod
    def machine_part(data: bytes) -> Any:
        """The machine's own bytes inside a snapshot record (None: a file snapshot)."""
        return unpack(data)[0]
