"""Stalls of a cluster mount when metadata servers freeze (SIGSTOP: the process keeps its sockets,
so connections neither fail nor answer -- what a long GC pause or a hung host looks like).

* A frozen *leader*: the others elect a new one within about a second; writers must carry on
  within a couple of seconds of that, not after the client's per-call timeout on the dead
  connection.
* *Every* server frozen: one system call fails with EIO after about one ``--meta-timeout`` in
  total, however many metadata calls it makes.

The first tests drive :class:`MetaService` against in-process fake members (a handler that never
answers is a frozen process as its clients see it); the others use real ``meta serve`` /
``peer serve`` processes and a real mount (helpers from ``test_metacluster.py``), and every
process is resumed and torn down in a ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import threading
import time
from functools import partial

import pytest
import trio

from lakefs_fuse import rpc, wire
from lakefs_fuse.meta.remote import MetaService, Unavailable

from conftest import needs_fuse, wait_for
from linearizability import History, RegisterModel, check_history
from test_metacluster import _storm_worker, meta_cluster, read_or_none

MiB = 1 << 20
#: How long the others take to elect a new leader (0.3-0.6 s election timeouts, then pre-vote and vote).
ELECTION = 1.0
#: How long a new leader may take to be noticed by a mount and used, once it exists (issue 11).
RESUME_WITHIN = 2.0
#: Slack for a loaded 2-core machine on top of every bound below.
MARGIN = 2.0
SECRET = b"0123456789abcdef0123456789abcdef"


class FakeMember:
    """A metadata member as its clients see it: ``status`` and ``apply`` only. ``frozen`` makes it
    take requests and answer none (SIGSTOP); ``apply_delay`` makes it slow but alive."""

    def __init__(self) -> None:
        self.address = ""
        self.term = 1
        self.leader = ""  # the address this member believes leads ("" = none)
        self.frozen = False
        self.apply_delay = 0.0
        self.answer = b"\xc0"  # the apply's result payload (msgpack nil)
        self.applies: list[tuple[int, int]] = []  # (client id, seq) of every apply received

    async def handle(self, op: str, args: dict, payload: bytearray):
        if op == "apply":
            self.applies.append((args["c"], args["s"]))
        if self.frozen:
            await trio.sleep_forever()
        if op == "status":
            return {"term": self.term, "leader_address": self.leader or None,
                    "role": "leader" if self.leader == self.address else "follower"}, b""
        if op == "apply":
            if self.leader != self.address:
                return {"redirect": 1, "leader": self.leader or None}, b""
            await trio.sleep(self.apply_delay)
            return {}, self.answer
        raise wire.RemoteError(f"unexpected op {op}")

    async def serve(self, nursery: trio.Nursery) -> None:
        port = await nursery.start(partial(rpc.serve, self.handle, "127.0.0.1", 0, SECRET))
        self.address = f"127.0.0.1:{port}"


@pytest.mark.timeout(60)
def test_client_leaves_a_frozen_leader_for_the_one_the_others_elected():
    """A slow leader keeps its call; a frozen one loses it to the new leader within ~2 s (not
    the 10 s call timeout), re-sent with the same (client id, seq)."""
    async def main():
        a, b, c = FakeMember(), FakeMember(), FakeMember()
        async with trio.open_nursery() as nursery:
            for m in (a, b, c):
                await m.serve(nursery)
            for m in (a, b, c):
                m.leader = a.address
            service = MetaService([a.address, b.address, c.address], SECRET, op_timeout=20)
            service.bind(nursery)  # the test owns its connections and watcher
            try:
                # Slow but alive: it answers status at once, so its call is left alone.
                a.apply_delay = 2.0
                t0 = trio.current_time()
                await service.call("apply", {"c": 7, "s": 1})
                assert trio.current_time() - t0 >= 2.0
                assert a.applies == [(7, 1)] and not b.applies  # sent once, answered by a

                # Frozen, and the others elected b in term 2.
                a.frozen = True
                b.term = c.term = 2
                b.leader = c.leader = b.address
                t0 = trio.current_time()
                await service.call("apply", {"c": 7, "s": 2})
                took = trio.current_time() - t0
                assert took < 1.0 + 1.0 + MARGIN, f"the call took {took:.1f}s"
                assert a.applies[-1] == (7, 2) and b.applies == [(7, 2)]
                assert service.failovers == 1 and service.leader == b.address
                await service.call("apply", {"c": 7, "s": 3})  # and it stays with the new leader
                assert b.applies == [(7, 2), (7, 3)]
            finally:
                await service.aclose()
                nursery.cancel_scope.cancel()
    trio.run(main)


class HalfOpenRelay:
    """A TCP relay to a member. :meth:`sever` makes the connections it already carries swallow
    every byte, both ways, without closing (a NAT that dropped their state); new ones work.
    ``slow`` passes 16 KiB per 50 ms (a long answer that is still arriving)."""

    def __init__(self, target: str) -> None:
        self.target = wire.parse_address(target)
        self.address = ""
        self.slow = False
        self._generation = 0

    def sever(self) -> None:
        self._generation += 1

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.start_soon(trio.serve_listeners, self._relay, listeners)

    async def _relay(self, down: trio.SocketStream) -> None:
        generation = self._generation

        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            try:
                while data := await src.receive_some(65536):
                    while generation == self._generation and data:
                        piece, data = (data[:16384], data[16384:]) if self.slow else (data, b"")
                        await dst.send_all(piece)
                        if self.slow:
                            await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        async with down, await trio.open_tcp_stream(*self.target) as up, trio.open_nursery() as nursery:
            nursery.start_soon(pump, down, up)
            nursery.start_soon(pump, up, down)


@pytest.mark.timeout(60)
def test_client_leaves_a_half_open_connection_to_the_leader():
    """An answer that takes seconds to arrive keeps its connection. Then the leader still leads
    and the others say so, but our connection to it carries nothing: the client notices within
    ~2 s that a new connection gets answers and re-sends there."""
    async def main():
        a, b, c = FakeMember(), FakeMember(), FakeMember()
        async with trio.open_nursery() as nursery:
            for m in (a, b, c):
                await m.serve(nursery)
            relay = HalfOpenRelay(a.address)
            await relay.serve(nursery)
            a.address = relay.address  # the address clients and members know it by
            for m in (a, b, c):
                m.leader = relay.address
            service = MetaService([relay.address, b.address, c.address], SECRET, op_timeout=20)
            service.bind(nursery)  # the test owns its connections and watcher
            try:
                relay.slow = True
                a.answer = bytes(1 << 20)  # 1 MiB (MetaService does not decode it): ~3 s via the relay
                t0 = trio.current_time()
                _, body = await service.call("apply", {"c": 9, "s": 1})
                assert len(body) == len(a.answer) and trio.current_time() - t0 >= 2.0
                assert a.applies == [(9, 1)]  # sent once: the slow answer kept its connection
                relay.slow = False
                relay.sever()
                t0 = trio.current_time()
                await service.call("apply", {"c": 9, "s": 2})
                took = trio.current_time() - t0
                assert took < 1.0 + 1.0 + MARGIN, f"the call took {took:.1f}s"
                assert a.applies == [(9, 1), (9, 2)] and not b.applies and not c.applies
                assert service.failovers == 1 and service.leader == relay.address
            finally:
                await service.aclose()
                nursery.cancel_scope.cancel()
    trio.run(main)


@pytest.mark.timeout(60)
def test_one_request_waits_one_meta_timeout_across_its_calls():
    """Calls inside one metadata budget share one op_timeout; a task the request starts into a
    longer-lived nursery is not bound by it, a task of a nursery nested inside it is."""
    from lakefs_fuse.meta.budget import metadata_budget

    async def main():
        silent = FakeMember()
        silent.frozen = True
        op_timeout = 1.5
        async with trio.open_nursery() as nursery:
            await silent.serve(nursery)
            service = MetaService([silent.address], SECRET, op_timeout=op_timeout)
            service.bind(nursery)  # the test owns its connections and watcher
            background: list[float] = []

            async def call_and_time(into: list[float]) -> None:
                t = trio.current_time()
                with pytest.raises(Unavailable):
                    await service.call("apply", {"c": 1, "s": 1})
                into.append(trio.current_time() - t)

            try:
                with metadata_budget():
                    t0 = trio.current_time()
                    for _ in range(3):
                        with pytest.raises(Unavailable):
                            await service.call("apply", {"c": 1, "s": 1})
                    took = trio.current_time() - t0
                    nested: list[float] = []
                    async with trio.open_nursery() as inner:
                        inner.start_soon(call_and_time, nested)
                    nursery.start_soon(call_and_time, background)
                assert op_timeout * 0.9 <= took < op_timeout + 1.0, f"three calls took {took:.1f}s"
                assert nested[0] < 0.5, nested
                with trio.fail_after(op_timeout + 5):
                    while not background:
                        await trio.sleep(0.05)
                assert background[0] >= op_timeout * 0.9, background
            finally:
                await service.aclose()
                nursery.cancel_scope.cancel()
    trio.run(main)


def _leader_among(addresses: list[str], secret_file) -> str | None:
    """The address of a member of ``addresses`` that says it leads, asked directly (no redirects)."""
    from lakefs_fuse import wire
    from lakefs_fuse.meta.remote import MetaService

    async def ask() -> str | None:
        async with MetaService(addresses, wire.load_secret(secret_file), connect_timeout=0.5) as service:
            rows = await service.call_each("status", timeout=0.5)
        return next((a for a, r in rows.items() if isinstance(r, dict) and r.get("role") == "leader"), None)
    return trio.run(ask)


def _writer(mount, stop: threading.Event, ops: list, errors: list) -> None:
    """create + write + fsync + close in a loop; records (start, end) of every round."""
    i = 0
    while not stop.is_set():
        i += 1
        path = mount / f"w{i}"
        t0 = time.monotonic()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, b"round %d\n" % i)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            errors.append(f"round {i}: {exc}")
            continue
        ops.append((i, t0, time.monotonic()))


@needs_fuse
@pytest.mark.timeout(300)
def test_frozen_leader_stalls_writers_only_until_a_new_leader_is_used(tmp_path):
    with meta_cluster(tmp_path) as cluster:
        a = cluster.mount("a")
        old = cluster.leader()
        others = [m for m in cluster.members if m is not old]
        ops: list[tuple[int, float, float]] = []
        errors: list[str] = []
        stop = threading.Event()
        thread = threading.Thread(target=_writer, args=(a.mnt, stop, ops, errors), daemon=True)
        thread.start()
        frozen = False
        try:
            wait_for(lambda: len(ops) >= 20, 60, "the writer to get going")
            frozen_at = time.monotonic()
            old.proc.send_signal(signal.SIGSTOP)
            frozen = True
            new_address = wait_for(lambda: _leader_among([m.address for m in others], cluster.secret), 30,
                                   "a new leader among the others", interval=0.05)
            elected_at = time.monotonic()
            wait_for(lambda: any(t1 > elected_at for _, _, t1 in ops), 60, "a write round after the election",
                     interval=0.05)
            resumed_at = min(t1 for _, _, t1 in ops if t1 > elected_at)
            done = len(ops)
            wait_for(lambda: len(ops) >= done + 20, 60, "more rounds on the new leader")
            old.proc.send_signal(signal.SIGCONT)
            frozen = False
            done = len(ops)
            wait_for(lambda: len(ops) >= done + 10, 60, "rounds after the old leader resumed")
        finally:
            if frozen:
                old.proc.send_signal(signal.SIGCONT)
            stop.set()
            thread.join(timeout=90)
        assert not thread.is_alive(), "a write round hung"
        longest = max(t1 - t0 for _, t0, t1 in ops)
        resume = resumed_at - elected_at
        print(f"election seen {elected_at - frozen_at:.2f}s after the freeze (new leader {new_address}); first "
              f"round done {resume:.2f}s after it; longest round {longest:.2f}s; {len(ops)} rounds")
        assert not errors, errors[:5]
        # The old client waited out its 10 s call timeout on the frozen connection.
        assert resume < RESUME_WITHIN + MARGIN, f"writers resumed {resume:.1f}s after the new leader"
        assert longest < (elected_at - frozen_at) + RESUME_WITHIN + 2 * MARGIN, f"a round took {longest:.1f}s"
        # Exactly once, and nothing lost: every acknowledged round's file holds its bytes.
        for i, _, _ in ops:
            assert (a.mnt / f"w{i}").read_bytes() == b"round %d\n" % i


@needs_fuse
@pytest.mark.timeout(240)
def test_fsync_with_every_server_frozen_fails_after_one_meta_timeout(tmp_path):
    """The fsync waits for two seals of the file: a whole chunk the write already sent off, and
    the tail. Each needs a metadata commit; together they may cost one --meta-timeout, not two."""
    timeout = 5.0
    chunk = 4 * MiB  # the format default
    data = os.urandom(chunk + 1000)
    with meta_cluster(tmp_path) as cluster:
        a = cluster.mount("a", "--meta-timeout", str(timeout))
        (a.mnt / "warm").write_bytes(b"x")  # the mount holds chunk ids from now on
        fd = os.open(a.mnt / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for m in cluster.members:
                m.proc.send_signal(signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                # The first chunk's seal starts during the write. (The write itself may wait for
                # the kernel's security.capability lookup: a request of its own, bounded alike.)
                assert os.write(fd, data) == len(data)
                t1 = time.monotonic()
                with pytest.raises(OSError) as err:
                    os.fsync(fd)
                took = time.monotonic() - t1
            finally:
                for m in cluster.members:
                    m.proc.send_signal(signal.SIGCONT)
            print(f"write {t1 - t0:.2f}s; fsync failed with errno {err.value.errno} after {took:.2f}s "
                  f"(--meta-timeout {timeout})")
            assert err.value.errno == errno.EIO, err.value
            assert t1 - t0 < timeout + MARGIN, f"the write took {t1 - t0:.1f}s"
            # At most one --meta-timeout: not two back to back.
            assert took < timeout + MARGIN, f"fsync took {took:.1f}s"
        finally:
            with contextlib.suppress(OSError):  # close reports the failed write-back once more
                os.close(fd)
        cluster.leader()
        # The cluster is usable again at once (whatever became of the failed seals).
        (a.mnt / "after").write_bytes(b"y")
        assert (a.mnt / "after").read_bytes() == b"y"


@needs_fuse
@pytest.mark.timeout(300)
def test_frozen_leader_during_storm_history_is_linearizable_and_stalls_are_short(tmp_path):
    """The leader-kill storm of test_metacluster.py with SIGSTOP instead of kill -9: the frozen
    leader still holds the requests sent to it (uncommitted, or committed and unanswered) when
    the mounts re-send them to the new leader, and it wakes up with them later. Every operation
    must apply once (the history stays linearizable) and none may wait out a call timeout."""
    with meta_cluster(tmp_path) as cluster:
        mounts = [cluster.mount("a", "--attr-timeout", "0"), cluster.mount("b", "--attr-timeout", "0")]
        keys = [f"k{i}" for i in range(8)]
        history = History()
        stop = threading.Event()
        errors: list[str] = []
        threads = [threading.Thread(target=_storm_worker, daemon=True,
                                    args=(m.mnt, f"{'ab'[i]}{t}", keys, history, stop, random.Random(i * 10 + t),
                                          errors))
                   for i, m in enumerate(mounts) for t in range(3)]
        for t in threads:
            t.start()
        old = None
        frozen = False
        try:
            wait_for(lambda: len(history.ops()) >= 150, 60, "the storm to get going", interval=0.05)
            old = cluster.leader()
            frozen_at = time.monotonic()
            old.proc.send_signal(signal.SIGSTOP)
            frozen = True

            def completed_since(t0: float) -> int:
                return sum(1 for op in history.ops() if op.ret is not None and op.call > t0)
            wait_for(lambda: completed_since(frozen_at) >= 150, 90, "operations on the new leader", interval=0.05)
            old.proc.send_signal(signal.SIGCONT)  # it wakes with the requests it was holding
            frozen = False
            woke_at = time.monotonic()
            wait_for(lambda: completed_since(woke_at) >= 100, 90, "operations after the old leader woke",
                     interval=0.05)
        finally:
            if frozen and old is not None:
                old.proc.send_signal(signal.SIGCONT)
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "an operation hung"
        for m, who in zip(mounts, "ab", strict=True):
            for key in keys:
                token = history.invoke(f"final-{who}", key, "read")
                raw = read_or_none(m.mnt / key)
                history.complete(token, None if raw is None else raw.decode())
        ops = history.ops()
        done = [op for op in ops if op.ret is not None]
        slowest = max(op.ret - op.call for op in done)
        print(f"{len(ops)} operations, {len(done)} completed, {len(errors)} errors, slowest {slowest:.2f}s; "
              f"errors: {errors[:5]}")
        result = check_history(ops, RegisterModel(strict_delete=False))
        assert result.ok, result.explanation
        assert len(errors) <= len(ops) // 10, errors[:10]
        # An election, then RESUME_WITHIN, with room for a loaded machine; the old client waited
        # out its 10 s call timeout on the frozen connection.
        assert slowest < ELECTION + RESUME_WITHIN + 2 * MARGIN, f"an operation took {slowest:.1f}s"


@pytest.mark.timeout(60)
def test_an_expired_session_resends_its_command_as_a_new_session():
    """A mount unseen for longer than the servers' session_ttl gets ESTALE (the command was not
    applied); it sends it once more under a new client id with seq 1, and goes on from there."""
    from lakefs_fuse.meta.commands import AllocChunks
    from lakefs_fuse.meta.remote import RemoteMeta

    class Expiring(FakeMember):
        def __init__(self) -> None:
            super().__init__()
            self.known: set[int] = set()  # client ids with a live session on the "servers"

        async def handle(self, op, args, payload):
            if op == "apply" and args["c"] not in self.known:
                if args["s"] != 1:
                    self.applies.append((args["c"], args["s"]))
                    raise OSError(errno.ESTALE, "no session: expired; not applied")
                self.known.add(args["c"])
            return await super().handle(op, args, payload)

    async def main():
        a = Expiring()
        async with trio.open_nursery() as nursery:
            await a.serve(nursery)
            a.leader = a.address
            service = MetaService([a.address], SECRET, op_timeout=20)
            service.bind(nursery)
            try:
                meta = RemoteMeta(service, sessions=1)
                await meta.apply(AllocChunks(1))
                await meta.apply(AllocChunks(1))
                first = a.applies[0][0]
                assert a.applies == [(first, 1), (first, 2)]
                a.known.clear()  # an hour passes: the servers drop the session
                await meta.apply(AllocChunks(1))
                assert a.applies[2] == (first, 3)  # refused with ESTALE ...
                renewed = a.applies[3][0]
                assert renewed != first and a.applies[3] == (renewed, 1)  # ... and sent again once
                await meta.apply(AllocChunks(1))
                assert a.applies[4:] == [(renewed, 2)] and len(a.applies) == 5
            finally:
                await service.aclose()
                nursery.cancel_scope.cancel()

    trio.run(main)
