"""Failure detection shared by the remote peer stores (peer servers, S3-compatible buckets).

A peer is, as far as this process knows:

* **up** -- requests are sent to it;
* **slow** -- a read got no answer within the chunk client's hedge delay and was served from the
  other shards instead (:meth:`PeerHealth.mark_slow`). Reads fail at once; writes and everything
  else are still sent. A probe starts at once;
* **down** -- a request failed for a reason that is not the request's own (connection refused or
  reset, a timeout, a 5xx), or a probe got no answer. Every request fails at once with
  :class:`~lakefs_fuse.chunks.store.PeerUnavailable`: reads go degraded, writes place the shard on
  another peer. A timeout also aborts the requests still in flight to it (``_abort_calls``), so
  none of them waits out a timeout of its own.

Only an answer brings a peer back, and real requests are never used to ask for one: while a peer
is slow or down, a request that finds it so starts a background *probe* (``_probe``: a cheap
``stat`` under :data:`PROBE_TIMEOUT`) if none is running and the backoff since the last failed
one has passed (0.5 s doubling to 10 s). Any answer -- the probe's, or a late one to a request in
flight -- marks the peer up. A frozen peer (SIGSTOP: its connections stay open, nothing answers)
therefore costs one hedge delay to the read that notices, not a call timeout now and a connect
timeout every time the backoff runs out. (The mount's space watcher asks every peer each second,
which keeps probes going while the mount is idle.) Reads fail at once -- decoding around a peer
costs little -- but a write (or any other request) that finds a probe of a down peer in its first
:data:`PROBE_GRACE` seconds waits that long for it: a peer that has just come back then takes the
shard instead of the chunk being stored without it.

Probes run in the store's owner's nursery (:meth:`PeerHealth._owner_nursery`: the open lake's, or
an ``async with`` store's own): they must outlive the request that found a probe due, and each ends
within :data:`PROBE_TIMEOUT`. A store nobody owns (a one-off check of a peer) starts no probes:
once down it stays down, which is all such a check needs to know. One WARNING per outage ("is
down"), INFO when it ends and for a slow spell that ended with an answer to the probe.
"""

from __future__ import annotations

import logging

import trio

from .store import PeerUnavailable

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
#: Seconds a probe may take, connecting included, before the peer counts as not answering. A
#: probe is a ``stat``, which a peer server answers without queueing behind disk work.
PROBE_TIMEOUT = 3.0
#: Seconds a request other than a read waits for a probe that has just started on a down peer.
PROBE_GRACE = 0.5


class PeerHealth:
    """Mixed into a store that has ``peer_id`` and ``address``; call from the trio thread."""

    peer_id: int
    address: str

    def _init_health(self) -> None:
        self._is_down = False
        self._slow = False
        self._probing = False
        self._probe_done = trio.Event()
        self._probe_grace_until = 0.0  # trio time until which writes wait for the running probe
        self._probe_at = 0.0  # trio time before which no new probe starts
        self._backoff = BACKOFF_MIN
        self.down_since: float | None = None  # trio clock time of the outage's first failure
        self.last_error = ""

    @property
    def name(self) -> str:
        """How messages name the peer: the lake's id and its address (a checking store has id -1)."""
        return f"peer {self.peer_id} ({self.address})" if self.peer_id >= 0 else f"peer {self.address}"

    @property
    def up(self) -> bool:
        """Requests may be sent (writes at least: a slow peer still takes shards). Any thread."""
        return not self._is_down

    @property
    def down(self) -> bool:
        """Marked down by a failure and not answered since (readable from any thread)."""
        return self._is_down

    @property
    def slow(self) -> bool:
        """Left out of reads until it answers a probe (readable from any thread)."""
        return self._slow and not self._is_down

    def _barred(self, read: bool) -> bool:
        return self._is_down or (read and self._slow)

    def _refuse_if_down(self, *, read: bool = False) -> None:
        """Raise PeerUnavailable at once when the peer is down (or, for a read, slow), starting a
        probe if one is due: a real request is never sent just to find out."""
        if self._barred(read):
            self._probe_if_due(grace=True)
            raise PeerUnavailable(f"{self.name} is {'down' if self._is_down else 'slow'} ({self.last_error})")

    async def _admit(self, *, read: bool = False) -> None:
        """Return when a request may be sent; else raise PeerUnavailable -- at once for a read,
        after waiting up to PROBE_GRACE for a probe that has just started for anything else."""
        if not self._barred(read):
            return
        self._probe_if_due(grace=True)
        wait = self._probe_grace_until - trio.current_time()
        if not read and self._probing and wait > 0:
            with trio.move_on_after(wait):
                await self._probe_done.wait()
        self._refuse_if_down(read=read)

    def mark_slow(self, why: str) -> None:
        """A read gave up waiting for this peer (the chunk client read around it): leave it out
        of reads until it answers a probe, which starts now."""
        if self._is_down or self._slow:
            return
        self._slow = True
        self.last_error = why
        if self.peer_id >= 0:
            log.info("%s is slow: %s; reads go around it until it answers a probe", self.name, why)
        self._probe_if_due()

    def _owner_nursery(self) -> trio.Nursery | None:
        """Where the store's background tasks (probes) run: its owner's nursery, if it has one."""
        raise NotImplementedError

    def _probe_if_due(self, *, grace: bool = False) -> None:
        if self._probing or trio.current_time() < self._probe_at:
            return
        nursery = self._owner_nursery()
        if nursery is None:
            return  # nobody owns the store: no probes (module docstring)
        self._probing = True
        self._probe_done = trio.Event()
        # (A probe of a slow peer has no grace: the reads it concerns never wait for it.)
        self._probe_grace_until = trio.current_time() + PROBE_GRACE if grace and self._is_down else 0.0
        nursery.start_soon(self._run_probe, name=f"probe of {self.name}")

    async def _run_probe(self) -> None:
        try:
            failure: str | None = f"no answer to a probe in {PROBE_TIMEOUT:g} s"
            with trio.move_on_after(PROBE_TIMEOUT):
                failure = await self._probe()
        except Exception as exc:  # a probe is advice: it must never end the process
            failure = f"probe failed: {exc!r}"
        finally:
            self._probing = False
        if failure is None:
            self._mark_up()
            self._probe_done.set()
            return
        was_down = self._is_down
        self._mark_down(failure)
        if was_down:
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._probe_at = trio.current_time() + self._backoff
        self._probe_done.set()
        await self._abort_calls()

    async def _probe(self) -> str | None:
        """Ask the peer something cheap, bypassing the down mark: None if it answered (even with
        an error), else why not. The caller bounds it by PROBE_TIMEOUT."""
        raise NotImplementedError

    async def _abort_calls(self) -> None:
        """Fail the requests in flight to a peer that stopped answering (if the store can)."""

    def _mark_down(self, why: str) -> None:
        self.last_error = why
        if not self._is_down:
            if self.peer_id >= 0:  # (a checking store, id -1, reports to its caller instead)
                log.warning("%s is down: %s", self.name, why)
            self._is_down = True
            self._slow = False
            self.down_since = trio.current_time()
            self._backoff = BACKOFF_MIN
            self._probe_at = trio.current_time() + BACKOFF_MIN

    def _mark_up(self) -> None:
        if self._is_down and self.peer_id >= 0:
            log.info("%s is back", self.name)
        elif self._slow and self.peer_id >= 0:
            log.info("%s answers again; reads use it", self.name)
        self._is_down = False
        self._slow = False
        self.down_since = None
        self._backoff = BACKOFF_MIN
        self._probe_at = 0.0
