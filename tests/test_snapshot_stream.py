"""Raft snapshots as files in bounded chunks (meta/snapshots.py) and client-session expiry
(meta/sessions.py).

Three levels: the chunk stream alone (a leader's :class:`Outgoing` feeding a follower's
:class:`Incoming` over a hand-driven link that drops its connection mid-way); Raft nodes with the
real RocksDB-backed ``ReplicatedState`` on the in-memory network under a mock clock (a lagging
follower is sent a checkpoint, cut off mid-transfer, and resumes); and real ``meta serve``
processes with 1,000,000 inodes, where a new member joins and a wiped member rebuilds with the
installing process's peak RSS and the largest frame measured.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from lakefs_fuse import errors as E
from lakefs_fuse.meta.memory_network import LinkFaults, MemoryNetwork
from lakefs_fuse.meta.raft import RaftConfig, RaftNode, SessionExpired
from lakefs_fuse.meta.raftlog import MemoryStorage, RocksStorage, Snapshot
from lakefs_fuse.meta.replica import ReplicatedState
from lakefs_fuse.meta.sessions import ClientSessions
from lakefs_fuse.meta.snapshots import SnapshotKeeper

MiB = 1 << 20
FORMAT = ["format", {"ec_k": 2, "ec_m": 1, "chunk_size": 4 * MiB, "min_shard": 65536}, 1, 0, 0]


def run(main):
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def keyspace(state: ReplicatedState) -> dict[bytes, bytes]:
    return dict(state.sm.db.items())


# ------------------------------------------------------------------------------- the stream alone


class FilesMachine:
    """A machine whose snapshot is a directory of files (the bytes are given, not derived)."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.restored_from: str | None = None

    def apply(self, index, command):
        return None

    def snapshot(self, index):
        raise AssertionError("a file machine is never asked for bytes")

    def restore(self, data):
        raise AssertionError("a file machine is never given bytes")

    def checkpoint(self, index, directory):
        os.makedirs(directory)
        for name, data in self.files.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)

    def restore_files(self, directory):
        self.restored_from = directory
        self.files = {}
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                self.files[name] = f.read()


def keeper(tmp_path, name, files=None) -> tuple[SnapshotKeeper, FilesMachine]:
    storage = MemoryStorage()
    storage.snapshot_dir = str(tmp_path / name)
    machine = FilesMachine(files)
    sessions = ClientSessions(machine)
    return SnapshotKeeper(storage, sessions), machine


def test_chunks_resume_from_the_followers_offset_after_a_dropped_connection(tmp_path):
    rng = random.Random(5)
    files = {"000012.sst": rng.randbytes(70_000), "000013.sst": rng.randbytes(33_333), "000009.log": b"",
             "CURRENT": b"MANIFEST-000005\n", "MANIFEST-000005": rng.randbytes(999)}
    leader, _ = keeper(tmp_path, "leader", files)
    follower, machine = keeper(tmp_path, "follower")
    leader.sessions.apply(1, "client", 1, ["x"], stamp=100.0)  # the session table travels too
    snap = leader.take(7, 2, (1, 2))
    chunk, window = 4096, 3
    out = leader.outgoing(snap, chunk=chunk, window=window, now=0.0)
    assert out.total == len(snap.data) + sum(map(len, files.values()))

    def message(offset, data):
        return {"index": 7, "last_term": 2, "voters": [1, 2], "manifest": out.manifest, "offset": offset,
                "data": data}

    now, wire, frames, installed = 0.0, [], [], None
    dropped = False
    for _ in range(10_000):
        wire += [message(o, d) for o, d in out.chunks()]
        if not wire:  # nothing in flight: the leader waits out its timeout and probes
            now += 1.0
            assert out.stalled(now, 0.6)
            continue
        msg = wire.pop(0)
        frames.append(len(msg["data"]))
        if not dropped and follower.incoming is not None and follower.incoming.position > out.total // 2:
            dropped = True  # the connection drops: what is in flight is lost, both ways
            wire.clear()
            continue
        position, done = follower.receive(msg)
        if done is not None:
            installed = done
            break
        out.on_reply(position, now)
    assert dropped and installed is not None
    assert max(frames) <= chunk
    # resumed where the follower was, not from zero: at most one window sent twice
    assert out.sent_bytes <= out.total + window * chunk
    follower.install(installed, keep_log=False)
    assert machine.files == files
    assert installed.index == 7 and installed.voters == (1, 2)
    assert follower.sessions.cached("client", 1) is not None
    assert sorted(os.listdir(tmp_path / "follower")) == ["snap-7-2"]


def test_the_follower_takes_only_the_chunk_at_its_position(tmp_path):
    leader, _ = keeper(tmp_path, "leader", {"a.sst": b"x" * 10_000})
    follower, _ = keeper(tmp_path, "follower")
    snap = leader.take(3, 1, (1,))
    out = leader.outgoing(snap, chunk=1000, window=4, now=0.0)
    msgs = [{"index": 3, "last_term": 1, "voters": [1], "manifest": out.manifest, "offset": o, "data": d}
            for o, d in out.chunks()]  # a probe first
    assert msgs[0]["data"] == b"" and follower.receive(msgs[0])[0] == 0
    out.on_reply(0, 0.0)
    msgs = [{**msgs[0], "offset": o, "data": d} for o, d in out.chunks()]
    assert len(msgs) == 4
    assert follower.receive(msgs[2])[0] == 0  # out of order: ignored
    assert follower.receive(msgs[0])[0] == len(msgs[0]["data"])
    assert follower.receive(msgs[0])[0] == len(msgs[0]["data"])  # duplicate: ignored
    bad = {**msgs[1], "manifest": [["", 5], ["../../etc/passwd", 5]], "index": 4}
    assert follower.receive(bad) == (0, None)  # a manifest naming paths is refused
    for garbage in ([5], [["", 5], ["x", -1]], [["x", 5]], "no", [["", 5], ["", 5]]):
        assert follower.receive({**msgs[1], "manifest": garbage, "index": 4}) == (0, None)
    assert follower.incoming.position == len(msgs[0]["data"])  # the transfer under way is untouched
    assert not (tmp_path / "etc").exists()


def test_a_restart_cleans_half_transfers_and_keeps_the_current_snapshot(tmp_path):
    leader, machine = keeper(tmp_path, "n", {"a.sst": b"abc"})
    snap = leader.take(5, 1, (1,))
    for leftover in ("incoming-9-2", "taking-6-1", "snap-2-1"):
        (tmp_path / "n" / leftover).mkdir()
    again, machine = keeper(tmp_path, "n")
    again.load(snap)
    assert sorted(os.listdir(tmp_path / "n")) == ["snap-5-1"]
    assert machine.files == {"a.sst": b"abc"}


# ------------------------------------------------------------------------ Raft + ReplicatedState


class Nodes:
    """Raft nodes whose machine is the real ReplicatedState (RocksDB) and whose snapshots are files."""

    def __init__(self, nursery, tmp_path, ids, config):
        self.net = MemoryNetwork(random.Random(3))
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.config = config
        self.ids = list(ids)
        self.nodes: dict[int, RaftNode] = {}
        self.states: dict[int, ReplicatedState] = {}
        self.frames: list[tuple[str, int]] = []
        submit = self.net.submit

        def counting(src, dst, message):
            if message["t"] == "snapshot":
                self.frames.append((message["t"], len(message["data"])))
            submit(src, dst, message)
        self.net.submit = counting  # type: ignore[method-assign]
        nursery.start_soon(self.net.run)
        for i in ids:
            self.start(i)

    def start(self, i):
        storage = MemoryStorage()
        storage.snapshot_dir = str(self.tmp_path / f"n{i}" / "snapshots")
        self.states[i] = state = ReplicatedState(self.tmp_path / f"n{i}" / "state")
        node = RaftNode(i, storage, self.net.endpoint(i), state, config=self.config, initial_voters=self.ids,
                        rng=random.Random(i))
        self.nodes[i] = node
        self.nursery.start_soon(node.run)

    async def leader(self) -> RaftNode:
        with trio.fail_after(30):
            while True:
                for node in self.nodes.values():
                    if node.is_leader:
                        return node
                await trio.sleep(0.05)

    def close(self):
        for state in self.states.values():
            state.close()


def test_a_lagging_follower_gets_a_checkpoint_in_chunks_and_resumes_after_a_cut(tmp_path):
    config = RaftConfig(snapshot_every=40, snapshot_chunk=4096, snapshot_window=2)

    async def main():
        async with trio.open_nursery() as nursery:
            nodes = Nodes(nursery, tmp_path, [1, 2, 3], config)
            nodes.net.set_faults(LinkFaults(delay_min=0.002, delay_max=0.002))  # a chunk is not instant
            try:
                leader = await nodes.leader()
                lagger = next(i for i in nodes.ids if i != leader.id)
                nodes.net.partition([i for i in nodes.ids if i != lagger], [lagger])
                await leader.submit(1, 1, FORMAT)
                for n in range(600):
                    await leader.submit(1, n + 2, ["mknod", 1, b"file-%06d" % n, 0o100644, 0, 0, 0, 5])
                assert leader.snapshot_index > nodes.nodes[lagger].last_index
                nodes.net.heal()
                follower = nodes.nodes[lagger]
                with trio.fail_after(30):  # the transfer is under way ...
                    while not ((inc := follower._snapshots.incoming) and inc.position > inc.total // 3):
                        await trio.sleep(0.001)
                total = inc.total
                assert total > 4 * config.snapshot_chunk  # several chunks
                nodes.net.partition([i for i in nodes.ids if i != lagger], [lagger])  # ... and cut off
                snap_index, transfers = leader.snapshot_index, leader.stats["snapshots_sent"]
                for n in range(600, 620):  # compaction falls due meanwhile, and waits for the transfer
                    await leader.submit(1, n + 2, ["mknod", 1, b"file-%06d" % n, 0o100644, 0, 0, 0, 5])
                assert leader.last_applied - leader.snapshot_index >= config.snapshot_every
                assert leader.snapshot_index == snap_index  # the files being sent stay
                await trio.sleep(3)
                assert follower._snapshots.incoming is inc and inc.position > total // 3  # it kept what it had
                nodes.net.heal()
                with trio.fail_after(60):
                    while follower.last_applied < leader.last_applied:
                        await trio.sleep(0.05)
                assert follower.stats["snapshots_installed"] == 1
                assert leader.stats["snapshots_sent"] == transfers  # one transfer, resumed
                assert leader.stats["snapshot_probes"] >= 1
                # resumed: the leader sent little more than the snapshot once
                assert leader.stats["snapshot_bytes_sent"] <= total + 4 * config.snapshot_chunk
                assert max(size for _, size in nodes.frames) <= config.snapshot_chunk
                assert keyspace(nodes.states[lagger]) == keyspace(nodes.states[leader.id])
                assert len(nodes.states[lagger].sm.readdir(1, 0, 10_000)) == 620
                snapdir = tmp_path / f"n{lagger}" / "snapshots"
                assert [p.name for p in snapdir.iterdir()] == [f"snap-{follower.snapshot_index}-"
                                                               f"{follower.entry_term(follower.snapshot_index)}"]
                nursery.cancel_scope.cancel()
            finally:
                nodes.close()

    run(main)


def test_a_member_restarts_from_its_checkpoint_and_replays_the_rest(tmp_path):
    async def main():
        for attempt in range(2):
            storage = RocksStorage(str(tmp_path / "raft"), snapshot_dir=str(tmp_path / "snapshots"))
            storage.sync_delay = 0.0  # the leader's fsync inline: no worker thread under the mock clock
            state = ReplicatedState(tmp_path / "state")
            net = MemoryNetwork(random.Random(0))
            node = RaftNode(1, storage, net.endpoint(1), state, config=RaftConfig(snapshot_every=25),
                            initial_voters=[1], rng=random.Random(attempt))
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    with trio.fail_after(5):
                        while not node.is_leader:
                            await trio.sleep(0.01)
                    if attempt == 0:
                        await node.submit(1, 1, FORMAT)
                        for n in range(60):
                            last = await node.submit(1, n + 2, ["mknod", 1, b"f%d" % n, 0o100644, 0, 0, 0, 5])
                        assert node.snapshot_index >= 50
                        before = keyspace(state)
                    else:
                        await node.read_index()
                        assert keyspace(state) == before
                        # the session table came back too: a retry is answered from it (applying
                        # the mknod again would raise Exists)
                        assert await node.submit(1, 61, ["mknod", 1, b"f59", 0o100644, 0, 0, 0, 5]) == last
                        with pytest.raises(E.Exists):
                            await node.submit(1, 62, ["mknod", 1, b"f59", 0o100644, 0, 0, 0, 5])
                    nursery.cancel_scope.cancel()
            finally:
                state.close()
                storage.close()

    run(main)


# ------------------------------------------------------------------------------ session expiry


class Counter:
    def __init__(self):
        self.n = 0

    def apply(self, index, command):
        self.n += 1
        return self.n

    def snapshot(self, index):
        return self.n.to_bytes(8, "big")

    def restore(self, data):
        self.n = int.from_bytes(data, "big")


def test_sessions_expire_by_the_leader_stamped_clock():
    sessions = ClientSessions(Counter(), ttl=3600)
    assert sessions.apply(1, "gone", 1, ["x"], 1000.0).value == 1
    assert sessions.apply(2, "gone", 2, ["x"], 1100.0).value == 2
    assert sessions.apply(3, "live", 1, ["x"], 4000.0).value == 3
    assert sessions.apply(4, "gone", 2, ["x"], 1200.0).value == 2  # a retry within the bound: cached
    assert sessions.clock == 4000.0  # a stamp from a leader with a slower clock does not move it back
    assert sessions.apply(5, "live", 2, ["x"], 5000.0).value == 4
    # an hour past "gone"'s last sign of life (its retry, at clock 4000): its entry goes
    assert sessions.apply(6, "live", 3, ["x"], 4000.0 + 3600.5).value == 5
    assert len(sessions) == 1 and sessions.expired == 1
    # its next command is refused, not applied (it may be the retry of one applied long ago)
    outcome = sessions.apply(7, "gone", 3, ["x"], 7700.0)
    assert isinstance(outcome.error, SessionExpired) and outcome.error.errno == errno.ESTALE
    assert sessions.machine.n == 5
    assert sessions.apply(8, "new", 1, ["x"], None).value == 6  # a new client's first command opens
    # the clock and every client's last stamp travel in the snapshot: a copy expires alike
    copy = ClientSessions(Counter(), ttl=3600)
    copy.restore(sessions.snapshot(8))
    assert copy.clock == sessions.clock == 7700.0 and copy.machine.n == 6
    assert copy.apply(9, "new", 2, ["x"], 7600.5 + 3600 + 1).value == 7
    assert len(copy) == 1 and copy.cached("live", 3) is None


def test_an_expired_client_gets_estale_on_every_replica(tmp_path, monkeypatch):
    import lakefs_fuse.meta.raft as raft_module

    wall = [1_000_000.0]

    class FakeTime:
        @staticmethod
        def time():
            return wall[0]
    monkeypatch.setattr(raft_module, "time", FakeTime)
    config = RaftConfig(snapshot_every=0, session_ttl=60)

    async def main():
        async with trio.open_nursery() as nursery:
            nodes = Nodes(nursery, tmp_path, [1, 2, 3], config)
            try:
                leader = await nodes.leader()
                await leader.submit("m", 1, FORMAT)
                await leader.submit("m", 2, ["mknod", 1, b"a", 0o100644, 0, 0, 0, 5])
                wall[0] += 61
                await leader.submit("other", 1, ["mknod", 1, b"b", 0o100644, 0, 0, 0, 5])
                with pytest.raises(SessionExpired):
                    await leader.submit("m", 3, ["mknod", 1, b"c", 0o100644, 0, 0, 0, 5])
                with trio.fail_after(10):
                    while any(n.last_applied < leader.last_applied for n in nodes.nodes.values()):
                        await trio.sleep(0.05)
                for node in nodes.nodes.values():
                    assert node._sessions.cached("m", 2) is None and node._sessions.expired == 1
                    assert [n for n, _, _ in nodes.states[node.id].sm.readdir(1, 0, 10)] == [b"a", b"b"]
                nursery.cancel_scope.cancel()
            finally:
                nodes.close()

    run(main)


def test_old_snapshot_records_still_restore():
    """Snapshots stored before expiry: [machine bytes, rows of 4 fields]."""
    from lakefs_fuse.meta.raftlog import pack

    sessions = ClientSessions(Counter())
    sessions.restore(pack([(7).to_bytes(8, "big"), [["c", 3, 0, 9]]]))
    assert sessions.machine.n == 7 and sessions.cached("c", 3).value == 9
    assert sessions.apply(2, "c", 4, ["x"], 50.0).value == 8  # its clock starts at the first stamp


# ------------------------------------------------------------------- a million inodes, real servers

#: Inodes of the big test (LAKEFS_SNAPSHOT_INODES overrides: e.g. 10000000 for a manual run).
BIG = int(os.environ.get("LAKEFS_SNAPSHOT_INODES", "1000000"))
#: The installing member's peak RSS must stay below this (the issue's bound).
RSS_LIMIT = 300 * MiB


def build_state(path: Path, inodes: int, members: dict[int, str]) -> int:
    """A lake's metadata with ``inodes`` inodes -- 1,000 per directory, every file with an inode,
    a directory entry, a readdir cookie and one extent, the keys ``mknod`` + ``commit`` write
    (``meta/schema.py``) -- written with raw batches: building it through the Raft log would
    take minutes. Returns the number of keys."""
    from lakefs_fuse.meta import schema as S
    from lakefs_fuse.meta.schema import Extent, Inode
    from lakefs_fuse.meta.state import StateMachine

    sm = StateMachine(str(path), create=True)
    now = 1_700_000_000 * 10**9
    sm.apply(["format", {"ec_k": 2, "ec_m": 1, "chunk_size": 4 * MiB, "min_shard": 65536}, now, 0, 0])
    per_dir = 1000
    file_values = [Inode(0, stat.S_IFREG | 0o644, 1, 0, 0, 110_000 + f, now, now, now, 0, 0, 0, 110_000 + f)
                   .to_bytes() for f in range(per_dir)]
    dir_value = Inode(0, stat.S_IFDIR | 0o755, 2, 0, 0, 0, now, now, now, 0, 1).to_bytes()

    def pairs():
        pack, inode_key, dentry_key, cookie_key, extent_key = (S.pack, S.inode_key, S.dentry_key, S.cookie_key,
                                                              S.extent_key)
        ino, cookie, made = 2, 1, 1
        for d in range((inodes + per_dir) // (per_dir + 1) + 1):
            if made >= inodes:
                break
            dino, dname = ino, b"d%05d" % d
            ino, made = ino + 1, made + 1
            yield inode_key(dino), dir_value
            yield dentry_key(1, dname), pack([dino, stat.S_IFDIR, cookie])
            yield cookie_key(1, cookie), dname
            cookie += 1
            for f in range(min(per_dir, inodes - made)):
                name = b"img_%08d.jpg" % ino
                yield inode_key(ino), file_values[f]
                yield dentry_key(dino, name), pack([ino, stat.S_IFREG, cookie])
                yield cookie_key(dino, cookie), name
                yield extent_key(ino, 0), S.pack_extents([Extent(0, 110_000 + f, 1 + ino // 36, ino % 36 * 116_000)])
                ino, cookie, made = ino + 1, cookie + 1, made + 1
        yield S.counter_key("ino"), ino.to_bytes(8, "big")
        yield S.counter_key("cookie"), cookie.to_bytes(8, "big")
        for node_id, address in members.items():
            yield S.member_key(node_id), pack(address)

    try:
        return sm.put_all(pairs())
    finally:
        sm.close()


def seed_founders(members, state: Path) -> tuple[int, int]:
    """Give every (stopped) founder the same snapshot: ``state`` checkpointed into its snapshot
    directory and recorded in its Raft storage past the end of every log, as if each had applied
    those commands and compacted. Returns the snapshot's (index, term)."""
    import rocksdict

    from lakefs_fuse.meta.sessions import ClientSessions

    stores = {m.id: RocksStorage(str(m.dir / "raft"), snapshot_dir=str(m.dir / "snapshots")) for m in members}
    try:
        loaded = {i: s.load() for i, s in stores.items()}
        index = max((st.snapshot.index if st.snapshot else 0) + len(st.entries) for st in loaded.values()) + 1
        term = max(st.term for st in loaded.values())
        opts = rocksdict.Options(raw_mode=True)
        db = rocksdict.Rdict(str(state), options=opts)
        try:
            for m in members:
                (m.dir / "snapshots").mkdir(mode=0o700, exist_ok=True)
                rocksdict.Checkpoint(db).create_checkpoint(str(m.dir / "snapshots" / f"snap-{index}-{term}"))
        finally:
            db.close()
        record = ClientSessions(None).table()
        for store in stores.values():
            store.save_snapshot(Snapshot(index, term, tuple(m.id for m in members), record), keep_log=False)
    finally:
        for store in stores.values():
            store.close()
    return index, term


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had (bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def statuses(addresses: list[str], secret: Path) -> dict[int, dict]:
    """Every member's full ``status`` answer (Raft stats and frame sizes included), by id."""
    from lakefs_fuse import wire
    from lakefs_fuse.meta.remote import MetaService

    async def main():
        async with MetaService(addresses, wire.load_secret(secret), op_timeout=10) as service:
            return await service.call_each("status", timeout=5.0)
    return {r["id"]: r for r in trio.run(main).values() if isinstance(r, dict)}


@pytest.mark.timeout(600)
def test_a_million_inodes_a_member_joins_and_a_wiped_member_rebuilds_in_bounded_memory(tmp_path):
    """Three founders hold the same 1,000,000-inode snapshot (seeded: see ``seed_founders``). A new
    member joins, then a wiped follower is rebuilt (``meta rebuild``): each receives the
    leader's checkpoint as 1 MiB chunks and installs it by linking the files. Their peak RSS stays
    under 300 MB, and no Raft frame either way exceeds 2 MiB."""
    from conftest import cli, wait_for
    from test_metacluster import Member, free_ports
    from test_peers import write_secret

    secret = write_secret(tmp_path / "secret")
    ports = free_ports(4)
    members = [Member(tmp_path, i + 1, f"127.0.0.1:{ports[i]}", secret) for i in range(3)]
    founders = ",".join(f"{m.id}={m.address}" for m in members)
    joiner = Member(tmp_path, 4, f"127.0.0.1:{ports[3]}", secret)
    everyone = [*members, joiner]
    figures: dict[str, float] = {}

    def rows() -> dict[int, dict]:
        return statuses([m.address for m in everyone if m.alive()], secret)

    def caught_up(member, index: int):
        def check():
            seen = rows()
            leader = next((r for r in seen.values() if r["role"] == "leader"), None)
            row = seen.get(member.id)
            return leader and row and member.id in leader["voters"] and row["snapshot_index"] >= index \
                and row["last_applied"] >= leader["commit_index"] - 5 and row
        return check

    try:
        for m in members:
            m.start("--peers", founders)
        wait_for(lambda: any(r["role"] == "leader" for r in rows().values()), 30, "a leader")
        for m in members:
            m.stop()
        t0 = time.monotonic()
        keys = build_state(tmp_path / "seed", BIG, {m.id: m.address for m in members})
        index, _term = seed_founders(members, tmp_path / "seed")
        figures["build_s"] = time.monotonic() - t0
        for m in members:
            m.start()
        wait_for(lambda: any(r["role"] == "leader" for r in rows().values()), 30, "a leader")

        # 1. A new member joins: the leader streams it the checkpoint.
        t0 = time.monotonic()
        joiner.start("--join", members[0].address)
        row = wait_for(caught_up(joiner, index), 180, "member 4 to receive the snapshot", interval=0.5)
        figures["join_s"] = time.monotonic() - t0
        figures["join_rss"] = peak_rss(joiner.proc.pid)
        assert row["stats"].get("snapshots_installed", 0) >= 1
        total = row["stats"]
        # 2. A follower is wiped and rebuilt from the others.
        seen = rows()
        leader_id = next(i for i, r in seen.items() if r["role"] == "leader")
        victim = next(m for m in members if m.id != leader_id)
        victim.stop()
        healthy = ",".join(m.address for m in everyone if m is not victim)
        cli("meta", "rebuild", "--data", str(victim.dir), "--meta", healthy, "--secret-file", str(secret),
            check=True, timeout=120)
        t0 = time.monotonic()
        victim.start()
        row = wait_for(caught_up(victim, index), 180, "the rebuilt member to receive the snapshot", interval=0.5)
        figures["rebuild_s"] = time.monotonic() - t0
        figures["rebuild_rss"] = peak_rss(victim.proc.pid)
        assert row["stats"].get("snapshots_installed", 0) >= 1

        seen = rows()
        frames = {i: r["frames"] for i, r in seen.items()}
        biggest = max(size for f in frames.values() for way in f.values() for size in way.values())
        sent = max(r["stats"].get("snapshot_bytes_sent", 0) for r in seen.values())
        figures.update(keys=keys, max_frame=biggest, snapshot_bytes=sent, joined_stats=len(total))
        print(f"\nsnapshot stream, {BIG:,} inodes: {figures}")
        assert figures["join_rss"] < RSS_LIMIT and figures["rebuild_rss"] < RSS_LIMIT, figures
        assert biggest <= 2 * MiB, frames
        for m in (joiner, victim):
            assert seen[m.id]["frames"]["received"].get("snapshot", 0) > 0
            assert [p.name for p in (m.dir / "snapshots").iterdir() if not p.name.startswith("snap-")] == []
    finally:
        for m in everyone:
            m.stop()
