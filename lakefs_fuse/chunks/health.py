"""Failure detection shared by the remote peer stores (peer servers, S3-compatible buckets).

A peer whose request fails for a reason that is not the request's own (a connection refused or
reset, a timeout, a 5xx) is marked down for a backoff that doubles from 0.5 s to 10 s; while it is
down, requests fail at once with :class:`~lakefs_fuse.chunks.store.PeerUnavailable`, so a dead
peer costs one timeout, not one per read (the chunk client reads the other shards and decodes).
The first success marks it up again. One log line per outage, not one per retry.
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0


class PeerHealth:
    """Mixed into a store that has ``peer_id`` and ``address``; call from the trio thread."""

    peer_id: int
    address: str

    def _init_health(self) -> None:
        self._down_until = 0.0
        self._backoff = BACKOFF_MIN
        self._is_down = False
        self.down_since: float | None = None  # trio clock time of the outage's first failure
        self.last_error = ""

    @property
    def up(self) -> bool:
        """May requests be sent now (trio thread only: the backoff is on trio's clock)."""
        return trio.current_time() >= self._down_until

    @property
    def down(self) -> bool:
        """Marked down by a failure and not yet answered since (readable from any thread)."""
        return self._is_down

    def _mark_down(self, why: str) -> None:
        self.last_error = why
        if not self._is_down and self.peer_id >= 0:  # (a probe, id -1, reports to its caller instead)
            log.warning("peer %d (%s) is down: %s", self.peer_id, self.address, why)
            self._is_down = True
            self.down_since = trio.current_time()
        self._down_until = trio.current_time() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _mark_up(self) -> None:
        if self._is_down:
            log.info("peer %d (%s) is back", self.peer_id, self.address)
            self._is_down = False
            self.down_since = None
        self._backoff = BACKOFF_MIN
        self._down_until = 0.0
