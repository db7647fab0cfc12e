"""Raft core: elections, replication, snapshots, membership, sessions and reads, under faults.

Every scenario runs in its own ``trio.run`` on ``MockClock(autojump_threshold=0)``, so simulated
seconds of timeouts cost no wall time. Nodes talk through :class:`MemoryNetwork` with seeded loss,
delay, duplication, reordering and partitions. A :class:`Checker` observes every node and fails the
run the moment an invariant breaks: one leader per term (election safety), one entry per committed
index across all nodes (state machine safety / log matching), every committed entry in each new
leader's log (leader completeness).
"""

from __future__ import annotations

import random
from collections import defaultdict

import msgpack
import pytest
import trio
import trio.testing

from lakefs_fuse import errors as E
from lakefs_fuse.meta.memory_network import LinkFaults, MemoryNetwork
from lakefs_fuse.meta.raft import (
    CommitUnknown,
    ConfigChangeInProgress,
    NotLeader,
    RaftConfig,
    RaftError,
    RaftNode,
    RaftObserver,
    StaleRequest,
    pack_message,
    unpack_message,
)
from lakefs_fuse.meta.raftlog import ENTRY_COMMAND, Entry, MemoryStorage, RocksStorage, Snapshot

CONFIG = RaftConfig(snapshot_every=0)
LOSSY = LinkFaults(drop=0.05, duplicate=0.05, delay_min=0.001, delay_max=0.02, reorder=0.1)


def run(main, seed: int = 0):
    """Run ``main`` under the mock clock; seed trio's own scheduling shuffle for reproducibility."""
    shuffle = getattr(getattr(trio, "_core", None), "_run", None)
    if shuffle is not None and hasattr(shuffle, "_r"):
        shuffle._r.seed(seed)
    try:
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseException as exc:
        exc.add_note(f"raft scenario seed: {seed}")
        raise


class DictMachine:
    """["set", k, v] -> previous value; ["incr", k, n] -> new value; ["fail"] raises NotFound."""

    def __init__(self):
        self.data: dict = {}

    def apply(self, index, command):
        op = command[0]
        if op == "set":
            old = self.data.get(command[1])
            self.data[command[1]] = command[2]
            return old
        if op == "incr":
            self.data[command[1]] = self.data.get(command[1], 0) + command[2]
            return self.data[command[1]]
        raise E.NotFound(f"no such op {op!r}")

    def snapshot(self, index):
        return msgpack.packb(self.data)

    def restore(self, data):
        self.data = msgpack.unpackb(data, strict_map_key=False)


class Checker(RaftObserver):
    """Records, across all nodes and restarts, who led each term and what each index holds."""

    def __init__(self):
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, Entry] = {}
        self.by_node: dict[int, dict[int, Entry]] = defaultdict(dict)
        self.installed: dict[int, int] = {}  # node -> index of the last snapshot it installed
        self.last_applied: dict[RaftNode, int] = {}  # per node *object*: applies in order, once each

    def became_leader(self, node):
        first = self.leaders.setdefault(node.term, node.id)
        assert first == node.id, f"term {node.term} has two leaders: {first} and {node.id}"
        for index, entry in self.committed.items():
            if index > node.snapshot_index:  # at or below it, the snapshot holds the committed prefix
                assert node.entry(index) == entry, f"new leader {node.id} lacks committed entry {index}"

    def applied(self, node, index, entry, outcome):
        last = self.last_applied.get(node)
        assert last is None or index == last + 1, f"node {node.id} applied {index} after {last}"
        self.last_applied[node] = index
        known = self.committed.setdefault(index, entry)
        assert known == entry, f"index {index} applied as {known} and as {entry} (node {node.id})"
        self.by_node[node.id][index] = entry

    def restored(self, node, snapshot):
        assert snapshot.index <= max(self.committed, default=0)
        self.installed[node.id] = snapshot.index
        self.last_applied[node] = snapshot.index


class Cluster:
    """Nodes on one MemoryNetwork, each runnable, crashable and restartable on its storage."""

    def __init__(self, nursery, ids, seed, *, faults=None, config=CONFIG, sync_delay=0.0):
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.net = MemoryNetwork(random.Random(self.rng.random()), faults)
        self.config = config
        self.founders = list(ids)
        self.sync_delay = sync_delay  # the simulated fsync of every node's log (MemoryStorage)
        self.storages = {i: MemoryStorage(sync_delay=sync_delay) for i in ids}
        self.nodes: dict[int, RaftNode] = {}
        self.machines: dict[int, DictMachine] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.checker = Checker()
        self.hint = None  # where clients send requests first (the last leader they heard of)
        nursery.start_soon(self.net.run)

    def start(self, node_id, *, founder=True, config=None):
        self.storages.setdefault(node_id, MemoryStorage(sync_delay=self.sync_delay))
        machine = DictMachine()
        node = RaftNode(node_id, self.storages[node_id], self.net.endpoint(node_id), machine,
                        config=config or self.config, initial_voters=self.founders if founder else None,
                        rng=random.Random(self.rng.random()), observer=self.checker)
        scope = trio.CancelScope()
        self.nodes[node_id], self.machines[node_id], self.scopes[node_id] = node, machine, scope

        async def serve():
            with scope:
                await node.run()

        self.nursery.start_soon(serve)
        return node

    def start_all(self):
        for node_id in self.founders:
            self.start(node_id)

    def crash(self, node_id):
        self.scopes.pop(node_id).cancel()
        self.net.disconnect(node_id)

    def live(self):
        return [self.nodes[i] for i in self.scopes]

    async def leader(self, among=None, timeout=20.0) -> RaftNode:
        """The live leader with the highest term (optionally among some ids), once there is one."""
        with trio.fail_after(timeout):
            while True:
                nodes = [n for n in self.live() if among is None or n.id in among]
                leaders = [n for n in nodes if n.is_leader]
                if leaders:
                    best = max(leaders, key=lambda n: n.term)
                    if best.term >= max(n.term for n in nodes):
                        return best
                await trio.sleep(0.02)

    async def request(self, client_id, seq, command, *, deadline=30.0, attempt=1.0):
        """A client: find the leader, follow hints, retry with the same (client_id, seq)."""
        with trio.fail_after(deadline):
            while True:
                live = {n.id: n for n in self.live()}
                node = live.get(self.hint) or live[self.rng.choice(sorted(live))]
                try:
                    return await node.submit(client_id, seq, command, timeout=attempt)
                except (NotLeader, CommitUnknown) as exc:
                    self.hint = exc.leader_hint
                    await trio.sleep(0.02 if exc.leader_hint in (None, node.id) else 0.002)

    async def change(self, op, node_id, deadline=30.0):
        with trio.fail_after(deadline):
            while True:
                leader = await self.leader()
                try:
                    await getattr(leader, op)(node_id, timeout=2.0)
                    return
                except (NotLeader, CommitUnknown, ConfigChangeInProgress):
                    await trio.sleep(0.05)

    async def converge(self, timeout=30.0):
        """Wait until every live node has applied everything the leader committed in its term."""
        with trio.fail_after(timeout):
            while True:
                leader = await self.leader()
                done = leader.commit_index >= leader.last_index
                if done and all(n.last_applied == leader.commit_index for n in self.live()):
                    return leader
                await trio.sleep(0.05)

    def check_converged(self):
        nodes = self.live()
        datas = [self.machines[n.id].data for n in nodes]
        assert all(d == datas[0] for d in datas), datas
        for node in nodes:  # applied sequences are gap-free runs of the one committed sequence
            seen = sorted(self.checker.by_node[node.id])
            if seen:
                assert max(seen[-1], self.checker.installed.get(node.id, 0)) == node.last_applied
                for index in seen:
                    assert self.checker.committed[index] == self.checker.by_node[node.id][index]


async def counting_client(cluster, client_id, results, *, attempt=1.0):
    """Increments its own key forever; an exactly-once log means result == seq every time."""
    seq = 0
    while True:
        seq += 1
        value = await cluster.request(client_id, seq, ["incr", f"c{client_id}", 1], deadline=1e9,
                                      attempt=attempt)
        assert value == seq, f"client {client_id} seq {seq} got {value}: applied twice or lost"
        results[client_id] = seq


def check_counters(cluster, results):
    data = cluster.machines[cluster.live()[0].id].data
    for client_id, seq in results.items():
        # the last request may have committed after the client was cancelled
        assert data.get(f"c{client_id}") in (seq, seq + 1)


# ------------------------------------------------------------------------------- config, wire


def test_config_validate_rules():
    RaftConfig().validate()
    with pytest.raises(E.UserError, match="3 x"):
        RaftConfig(heartbeat_interval=0.1, election_timeout_min=0.3, election_timeout_max=0.6).validate()
    with pytest.raises(E.UserError):
        RaftConfig(election_timeout_min=0.5, election_timeout_max=0.5).validate()
    with pytest.raises(E.UserError):
        RaftNode(1, MemoryStorage(), None, DictMachine(), config=RaftConfig(max_inflight=0))


def test_messages_survive_the_wire_encoding():
    msg = {"t": "snapshot", "src": 3, "term": 7, "index": 9, "last_term": 7, "voters": [1, 2, 3],
           "data": b"\x00\xff" * 10, "round": 4}
    assert unpack_message(pack_message(msg)) == msg
    entry = Entry(2, ENTRY_COMMAND, [("c", 1), 5, ["set", b"k", b"v"]])
    assert Entry.from_wire(unpack_message(pack_message(entry.to_wire()))).data[2] == ["set", b"k", b"v"]


def test_memory_network_partitions_drops_and_duplicates():
    async def main():
        net = MemoryNetwork(random.Random(1))
        a, b, c = net.endpoint(1), net.endpoint(2), net.endpoint(3)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(net.run)
            net.partition([1, 2], [3])
            await a.send(2, {"x": 1})
            await a.send(3, {"x": 2})
            assert b.incoming.receive_nowait() == {"x": 1}
            with pytest.raises(trio.WouldBlock):
                c.incoming.receive_nowait()
            net.heal()
            net.set_faults(LinkFaults(duplicate=1.0, delay_min=0.5, delay_max=0.5), 1, 3)
            await a.send(3, {"x": 3})
            await trio.sleep(0.4)
            with pytest.raises(trio.WouldBlock):
                c.incoming.receive_nowait()
            await trio.sleep(0.2)
            assert [c.incoming.receive_nowait(), c.incoming.receive_nowait()] == [{"x": 3}, {"x": 3}]
            net.set_faults(LinkFaults(drop=1.0))
            await b.send(1, {"x": 4})
            with pytest.raises(trio.WouldBlock):
                a.incoming.receive_nowait()
            assert net.stats["dropped"] == 2 and net.stats["duplicated"] == 1
            nursery.cancel_scope.cancel()

    run(main)


# ------------------------------------------------------------------------- randomized safety


async def reading_client(cluster, results, stale):
    """Reads through any node that believes it leads (deposed ones included): a read invoked after
    a write was acknowledged must see it, or the read path is not linearizable."""
    while True:
        leaders = [n for n in cluster.live() if n.is_leader]
        if not leaders:
            await trio.sleep(0.01)
            continue
        node = cluster.rng.choice(leaders)
        floor = results.get(1, 0)
        try:
            await node.read_index(timeout=0.3)
        except RaftError:
            await trio.sleep(0.01)
            continue
        seen = cluster.machines[node.id].data.get("c1", 0)
        if seen < floor:
            stale.append((node.id, seen, floor))
        cluster.reads += 1
        await trio.sleep(0.003)


async def chaos(seed, size, duration, *, snapshot_every, lease_reads=False, sync_delay=0.0):
    """Random partitions, crashes and restarts on a lossy network while clients count and read."""
    config = RaftConfig(snapshot_every=snapshot_every, lease_reads=lease_reads)
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, range(1, size + 1), seed, faults=LOSSY, config=config,
                          sync_delay=sync_delay)
        cluster.start_all()
        rng = cluster.rng
        results: dict[int, int] = {}
        stale: list = []
        cluster.reads = 0
        with trio.move_on_after(duration):
            async with trio.open_nursery() as clients:
                for client_id in (1, 2, 3):
                    clients.start_soon(counting_client, cluster, client_id, results)
                clients.start_soon(reading_client, cluster, results, stale)
                while True:
                    await trio.sleep(rng.uniform(0.2, 0.8))
                    action = rng.random()
                    down = [i for i in cluster.founders if i not in cluster.scopes]
                    if action < 0.3:
                        ids = list(cluster.founders)
                        rng.shuffle(ids)
                        cut = rng.randint(1, size // 2)
                        cluster.net.partition(ids[:cut], ids[cut:])
                    elif action < 0.5:
                        cluster.net.heal()
                    elif action < 0.75 and len(down) < (size - 1) // 2:
                        leaders = [n.id for n in cluster.live() if n.is_leader]
                        victim = leaders[0] if leaders and rng.random() < 0.6 else rng.choice(sorted(cluster.scopes))
                        cluster.crash(victim)
                    elif down:
                        cluster.start(rng.choice(down))
        cluster.net.heal()
        for node_id in cluster.founders:
            if node_id not in cluster.scopes:
                cluster.start(node_id)
        await cluster.request(99, 1, ["set", "final", seed])
        await cluster.converge()
        cluster.check_converged()
        check_counters(cluster, results)
        assert not stale, f"stale reads (node, seen, acknowledged): {stale[:5]}"
        assert cluster.reads > 0
        assert cluster.checker.leaders, "no leader was ever elected"
        nursery.cancel_scope.cancel()
        return cluster


@pytest.mark.parametrize("size", [3, 5])
def test_election_and_state_machine_safety_under_chaos(size):
    """30 seeds per size: one leader per term, one command per index, prefixes agree, exactly once."""
    terms = 0
    for seed in range(30):
        cluster = run(lambda seed=seed: chaos(seed, size, 8.0, snapshot_every=40), seed)
        terms += len(cluster.checker.leaders)
        assert cluster.machines[cluster.founders[0]].data["final"] == seed
    assert terms > 30 * 2  # the chaos really forced elections


@pytest.mark.parametrize("size", [3, 5])
def test_chaos_with_a_slow_leader_fsync(size):
    """The leader's fsync takes longer than a network round trip (followers ack first) and most
    crashes hit the leader, so many crash between sending entries and their own fsync: the
    unsynced tail is lost (MemoryStorage drops it on restart) and every invariant still holds."""
    lost = 0
    for seed in range(200, 215):
        cluster = run(lambda seed=seed: chaos(seed, size, 8.0, snapshot_every=40, sync_delay=0.03), seed)
        lost += sum(storage.lost_on_crash for storage in cluster.storages.values())
        assert cluster.machines[cluster.founders[0]].data["final"] == seed
    assert lost > 0  # the window was really hit: crashes dropped unsynced entries


def test_log_matching_after_partitions_heal():
    """Long workloads with partitions; afterwards every node's applied sequence is one sequence."""
    for seed in range(100, 104):
        cluster = run(lambda seed=seed: chaos(seed, 5, 12.0, snapshot_every=0), seed)
        lasts = {n.id: n.last_applied for n in cluster.live()}
        assert len(set(lasts.values())) == 1, lasts
        assert len(cluster.checker.committed) == lasts[1]


# --------------------------------------------------------------------------- targeted scenarios


def test_leader_crash_restart_keeps_committed_entries():
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 7)
            cluster.start_all()
            old = await cluster.leader()
            for i in range(10):
                await cluster.request(1, i + 1, ["set", f"k{i}", i])
            cluster.crash(old.id)
            new = await cluster.leader()
            assert new.id != old.id and new.term > old.term
            for i in range(10):  # leader completeness: the new leader holds all ten
                assert cluster.machines[new.id].data[f"k{i}"] == i
            await cluster.request(1, 11, ["set", "after", 1])
            restarted = cluster.start(old.id)  # new object, same storage
            assert restarted.term == old.term and restarted.last_index >= old.commit_index
            await cluster.converge()
            cluster.check_converged()
            assert cluster.machines[old.id].data["after"] == 1
            nursery.cancel_scope.cancel()

    run(main)


def test_leader_crash_between_sending_entries_and_its_own_fsync():
    """Entries the followers acknowledged commit without the leader's disk; an entry only the
    leader had is lost in its crash and was never acknowledged; its retry applies once."""
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 12)
            cluster.start_all()
            old = await cluster.leader()
            storage = cluster.storages[old.id]
            storage.sync_delay = 1e6  # the leader's fsync never finishes
            for i in range(10):  # committed by the two followers' durable copies alone
                assert await cluster.request(1, i + 1, ["set", f"k{i}", i]) is None
            assert old.is_leader and old.durable_index < old.commit_index  # committed without its disk
            others = [i for i in cluster.founders if i != old.id]
            cluster.net.partition([old.id], others)
            with pytest.raises(CommitUnknown):  # appended and sent (lost on the way): only the leader has it
                await old.submit(2, 1, ["set", "lonely", 1], timeout=0.1)
            lonely = old.last_index
            assert old.entry(lonely).data[2] == ["set", "lonely", 1]
            cluster.crash(old.id)  # before its fsync and before check-quorum made it step down
            cluster.net.heal()
            new = await cluster.leader()
            for i in range(10):
                assert cluster.machines[new.id].data[f"k{i}"] == i
            restarted = cluster.start(old.id)  # new object, same storage: the unsynced tail is gone
            assert storage.lost_on_crash >= 11
            assert all(e.data is None or e.data[2] != ["set", "lonely", 1]
                       for e in map(restarted.entry, range(1, restarted.last_index + 1)) if e is not None)
            assert await cluster.request(2, 1, ["set", "lonely", 1]) is None  # the client's retry
            await cluster.converge()
            cluster.check_converged()
            assert all(cluster.machines[n].data["lonely"] == 1 for n in cluster.founders)
            applied = [e for e in cluster.checker.committed.values() if e.kind == ENTRY_COMMAND
                       and e.data[2] == ["set", "lonely", 1]]
            assert len(applied) == 1
            nursery.cancel_scope.cancel()

    run(main)


def test_leader_counts_itself_only_once_its_copy_is_durable():
    """Leader + one follower hold an entry, but only the follower's copy is durable: that is one
    durable copy of three, not a majority. Had it committed, the leader's crash (losing its copy)
    and a vote by the third node would elect a leader without a committed entry."""
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 14)
            cluster.start_all()
            old = await cluster.leader()
            follower, third = [i for i in cluster.founders if i != old.id]
            cluster.storages[old.id].sync_delay = 1e6
            cluster.net.partition([third], [old.id, follower])
            with pytest.raises(CommitUnknown):
                await old.submit(1, 1, ["set", "x", 1], timeout=1.0)
            assert cluster.nodes[follower].last_index == old.last_index  # the follower acked it
            cluster.crash(old.id)
            cluster.net.partition([follower], [old.id, third])
            cluster.start(old.id)
            assert cluster.storages[old.id].lost_on_crash >= 1
            new = await cluster.leader(among={old.id, third})  # the checker vets its log
            assert await new.submit(1, 1, ["set", "x", 1], timeout=2.0) is None  # the retry
            cluster.net.heal()
            await cluster.converge()
            cluster.check_converged()
            assert all(cluster.machines[n].data == {"x": 1} for n in cluster.founders)
            nursery.cancel_scope.cancel()

    run(main)


def test_followers_ack_only_what_is_durable():
    """Followers write a batch of appends unsynced and fsync once before acking: with every
    background sync stalled, restarted followers still hold everything they acknowledged."""
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 15, faults=LinkFaults(delay_min=0.001, delay_max=0.003))
            cluster.start_all()
            leader = await cluster.leader()
            for storage in cluster.storages.values():
                storage.sync_delay = 1e6  # only the batch's own fsync can make anything durable
            for i in range(30):
                await cluster.request(1, i + 1, ["incr", "n", 1])
            followers = [i for i in cluster.founders if i != leader.id]
            assert all(cluster.nodes[i].stats["follower_syncs"] > 0 for i in followers)
            for node_id in followers:
                cluster.crash(node_id)
            for node_id in followers:
                cluster.start(node_id)
                assert cluster.storages[node_id].lost_on_crash == 0
            for storage in cluster.storages.values():
                storage.sync_delay = 0.0  # a new leader's own fsync must finish to count it again
            cluster.crash(leader.id)
            new = await cluster.leader()
            await cluster.request(1, 31, ["incr", "n", 1])
            assert cluster.machines[new.id].data["n"] == 31
            nursery.cancel_scope.cancel()

    run(main)


def test_leader_steps_down_with_unsynced_entries_and_syncs_them_first():
    """A deposed leader may be asked to ack entries it still holds unsynced from its own term:
    stepping down syncs them (one blocking fsync), so no follower ack rests on the page cache."""
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 13)
            cluster.start_all()
            old = await cluster.leader()
            storage = cluster.storages[old.id]
            storage.sync_delay = 1e6
            for i in range(5):
                await cluster.request(1, i + 1, ["set", f"k{i}", i])
            assert old.durable_index < old.last_index
            others = [i for i in cluster.founders if i != old.id]
            cluster.net.partition([old.id], others)
            with trio.fail_after(10):
                while old.is_leader:  # check-quorum
                    await trio.sleep(0.05)
            assert old.durable_index == old.last_index and old.stats["log_syncs_on_step_down"] == 1
            cluster.crash(old.id)
            cluster.net.heal()
            restarted = cluster.start(old.id)
            assert storage.lost_on_crash == 0 and restarted.last_index >= 6
            await cluster.request(1, 6, ["set", "after", 1])
            await cluster.converge()
            cluster.check_converged()
            nursery.cancel_scope.cancel()

    run(main)


def test_memory_storage_crash_drops_only_unsynced_appends():
    store = MemoryStorage()
    store.append(1, [Entry(1, 0), Entry(1, 0)])
    store.append(3, [Entry(1, 0)], sync=False)
    store.append(2, [Entry(2, 0)], sync=False)  # unsynced overwrite of a durable entry
    assert store.load().entries == [Entry(1, 0), Entry(1, 0)] and store.lost_on_crash == 0
    store.append(3, [Entry(1, 0)], sync=False)
    store.save_term(2, None)  # a synced write: the earlier append is durable with it
    assert len(store.load().entries) == 3
    store.append(4, [Entry(2, 0)], sync=False)
    store.sync()
    store.append(5, [Entry(2, 0)], sync=False)
    assert len(store.load().entries) == 4 and store.lost_on_crash == 1


def test_minority_cannot_commit_and_majority_continues():
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3, 4, 5], 11)
            cluster.start_all()
            old = await cluster.leader()
            await cluster.request(1, 1, ["set", "a", 1])
            minority = [old.id, next(i for i in cluster.founders if i != old.id)]
            majority = [i for i in cluster.founders if i not in minority]
            cluster.net.partition(minority, majority)
            with pytest.raises((CommitUnknown, NotLeader)):
                await old.submit(2, 1, ["set", "lost", 1], timeout=2.0)
            assert not old.is_leader  # check-quorum made it step down
            new = await cluster.leader(among=majority)
            assert await new.submit(1, 2, ["set", "a", 2], timeout=2.0) == 1
            cluster.net.heal()
            await cluster.converge()
            cluster.check_converged()
            assert cluster.machines[old.id].data == {"a": 2}  # the minority's entry was overwritten
            nursery.cancel_scope.cancel()

    run(main)


def test_older_term_entries_commit_only_with_a_current_term_entry():
    """Raft paper figure 8: counting replicas of an old-term entry must not commit it."""
    async def main():
        config = RaftConfig(snapshot_every=0, max_batch=1, max_inflight=1)
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3, 4, 5], 8, config=config)
            first = Entry(1, ENTRY_COMMAND, ["c", 1, ["set", "k", "first"]])
            logs = {1: [Entry(2, ENTRY_COMMAND, ["c", 2, ["set", "k", "old leader"]])],
                    5: [Entry(3, ENTRY_COMMAND, ["c", 2, ["set", "k", "term 3"]])]}
            logs[2] = logs[1]
            for node_id, storage in cluster.storages.items():
                storage.save_snapshot(Snapshot(0, 0, (1, 2, 3, 4, 5)), keep_log=True)
                storage.append(1, [first, *logs.get(node_id, [])])
                storage.save_term(3, None)
            send = cluster.net.submit

            def no_new_entries_for_3(src, dst, msg):  # node 3 gets the term-2 entry, never term 4's
                if dst == 3 and msg["t"] == "append" and any(e[0] == 4 for e in msg["entries"]):
                    return
                send(src, dst, msg)

            cluster.net.submit = no_new_entries_for_3
            for node_id in (1, 2, 3):
                cluster.start(node_id)
            leader = await cluster.leader()
            assert leader.term == 4
            with trio.fail_after(10):
                while cluster.nodes[3].last_index < 2:
                    await trio.sleep(0.05)
            await trio.sleep(1.0)
            assert leader.commit_index == 0  # the term-2 entry sits on a majority, uncommitted
            for node_id in (1, 2):
                cluster.crash(node_id)
            for node_id in (4, 5):
                cluster.start(node_id)
            new = await cluster.leader()
            assert new.id == 5  # and it rightly overwrites index 2
            await cluster.converge()
            assert cluster.machines[3].data == {"k": "term 3"}
            nursery.cancel_scope.cancel()

    run(main)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_rejoining_node_does_not_disrupt_with_prevote(pre_vote):
    async def main():
        config = RaftConfig(snapshot_every=0, pre_vote=pre_vote)
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 5, config=config)
            cluster.start_all()
            leader = await cluster.leader()
            await cluster.request(1, 1, ["set", "a", 1])
            term = leader.term
            loner = next(i for i in cluster.founders if i != leader.id)
            cluster.net.partition([loner], [i for i in cluster.founders if i != loner])
            await trio.sleep(5.0)  # many election timeouts for the loner
            cluster.net.heal()
            # Half-way back: the loner reaches everyone but still does not hear the leader, so it
            # keeps campaigning with a log as good as theirs. Followers refuse: they hear a leader.
            cluster.net.set_faults(LinkFaults(drop=1.0), leader.id, loner)
            await trio.sleep(3.0)
            cluster.net.set_faults(LinkFaults(), leader.id, loner)
            await trio.sleep(2.0)
            terms = {n.id: n.term for n in cluster.live()}
            if pre_vote:
                assert terms == dict.fromkeys(cluster.founders, term)
                assert leader.is_leader and cluster.nodes[loner].leader_id == leader.id
            else:  # the contrast that makes the test mean something
                assert max(terms.values()) > term
            await cluster.converge()
            nursery.cancel_scope.cancel()

    run(main)


def test_lagging_follower_catches_up_by_snapshot():
    async def main():
        config = RaftConfig(snapshot_every=20)
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 3, config=config)
            cluster.start_all()
            leader = await cluster.leader()
            lagger = next(i for i in cluster.founders if i != leader.id)
            cluster.crash(lagger)
            for i in range(100):
                await cluster.request(1, i + 1, ["incr", "n", 1])
            leader = await cluster.leader()
            assert leader.snapshot_index > cluster.nodes[lagger].last_index  # its next entry is gone
            node = cluster.start(lagger)
            await cluster.converge()
            cluster.check_converged()
            assert node.stats["snapshots_installed"] >= 1
            assert cluster.machines[lagger].data["n"] == 100
            assert cluster.storages[lagger].snapshot().index >= leader.snapshot_index
            # the session table travelled with the snapshot: a retry of the last seq is not re-applied
            await cluster.request(1, 100, ["incr", "n", 1])
            await cluster.converge()
            assert cluster.machines[lagger].data["n"] == 100
            nursery.cancel_scope.cancel()

    run(main)


def test_membership_grow_to_five_and_shrink_back_under_traffic():
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 21, faults=LinkFaults(delay_min=0.001, delay_max=0.01))
            cluster.start_all()
            results: dict[int, int] = {}
            async with trio.open_nursery() as clients:
                clients.start_soon(counting_client, cluster, 1, results)
                await cluster.leader()
                for new in (4, 5):
                    cluster.start(new, founder=False)
                    await cluster.change("add_voter", new)
                    await trio.sleep(0.5)
                with trio.fail_after(10):
                    while not all(n.voters == {1, 2, 3, 4, 5} for n in cluster.live()):
                        await trio.sleep(0.05)
                leader = await cluster.leader()
                # shrink: remove the current leader first (it must hand over), then one more
                removed = [leader.id]
                await cluster.change("remove_voter", leader.id)
                await trio.sleep(0.5)
                newer = await cluster.leader(among=set(cluster.founders + [4, 5]) - set(removed))
                assert newer.id != leader.id and not cluster.nodes[leader.id].is_leader
                victim = next(i for i in (5, 4, 3, 2, 1) if i not in removed and i != newer.id)
                await cluster.change("remove_voter", victim)
                removed.append(victim)
                for node_id in removed:
                    cluster.crash(node_id)
                await trio.sleep(1.0)
                clients.cancel_scope.cancel()
            await cluster.converge()
            cluster.check_converged()
            check_counters(cluster, results)
            assert results[1] > 20
            remaining = {1, 2, 3, 4, 5} - set(removed)
            assert all(n.voters == remaining for n in cluster.live())
            nursery.cancel_scope.cancel()

    run(main)


def test_config_changes_one_at_a_time():
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 4)
            cluster.start_all()
            leader = await cluster.leader()
            await cluster.request(1, 1, ["set", "a", 1])
            cluster.net.partition([leader.id], [i for i in cluster.founders if i != leader.id])
            with pytest.raises(CommitUnknown):  # appended, cannot commit
                await leader.add_voter(4, timeout=0.2)
            with pytest.raises((ConfigChangeInProgress, NotLeader)):  # the first is still in flight
                await leader.add_voter(5, timeout=0.2)
            nursery.cancel_scope.cancel()

    run(main)


def test_duplicate_submission_applies_once():
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 9)
            cluster.start_all()
            leader = await cluster.leader()
            assert await leader.submit("a", 1, ["incr", "x", 5]) == 5
            assert await leader.submit("a", 1, ["incr", "x", 5]) == 5  # cached answer
            # the same (client, seq) twice in the log: the first attempt "times out" before commit
            with pytest.raises(CommitUnknown):
                await leader.submit("a", 2, ["incr", "x", 5], timeout=0)
            assert await leader.submit("a", 2, ["incr", "x", 5]) == 10
            twice = [e for e in leader._log if e.kind == ENTRY_COMMAND and e.data[:2] == ["a", 2]]
            assert len(twice) == 2
            # a failed command's error is its result, returned again on retry
            for _ in range(2):
                with pytest.raises(E.NotFound):
                    await leader.submit("a", 3, ["boom"])
            with pytest.raises(StaleRequest):  # an old seq is refused, not re-applied
                await cluster.request("a", 1, ["incr", "x", 5])
            await cluster.converge()
            cluster.check_converged()
            assert cluster.machines[leader.id].data == {"x": 10}
            follower = next(n for n in cluster.live() if not n.is_leader)
            with pytest.raises(NotLeader) as info:
                await follower.submit("a", 4, ["incr", "x", 1])
            assert info.value.leader_hint == leader.id
            nursery.cancel_scope.cancel()

    run(main)


def test_duplicate_after_leader_change_applies_once():
    """The leader commits, then dies before answering; the retry at the new leader is not re-applied."""
    async def main():
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 13)
            cluster.start_all()
            leader = await cluster.leader()
            await cluster.request(7, 1, ["incr", "y", 1])
            with pytest.raises(CommitUnknown):
                await leader.submit(7, 2, ["incr", "y", 1], timeout=0)
            await trio.sleep(0.2)  # replicated and committed meanwhile
            cluster.crash(leader.id)
            assert await cluster.request(7, 2, ["incr", "y", 1]) == 2
            await cluster.converge()
            assert cluster.machines[(await cluster.leader()).id].data == {"y": 2}
            nursery.cancel_scope.cancel()

    run(main)


@pytest.mark.parametrize("check_quorum", [True, False])
def test_read_index_on_deposed_leader_is_never_stale(check_quorum):
    async def main():
        config = RaftConfig(snapshot_every=0, check_quorum=check_quorum)
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 17, config=config)
            cluster.start_all()
            old = await cluster.leader()
            await cluster.request(1, 1, ["set", "x", 1])
            index = await old.read_index()
            assert index <= old.last_applied and cluster.machines[old.id].data["x"] == 1
            cluster.net.partition([old.id], [i for i in cluster.founders if i != old.id])
            outcome = {}

            async def stale_read():
                try:
                    outcome["index"] = await old.read_index(timeout=3.0)
                except NotLeader as exc:
                    outcome["error"] = exc

            nursery.start_soon(stale_read)
            others = [i for i in cluster.founders if i != old.id]
            new = await cluster.leader(among=others)
            assert await new.submit(1, 2, ["set", "x", 2], timeout=2.0) == 1
            await trio.sleep(3.5)
            assert "error" in outcome, f"deposed leader served a read: {outcome}"
            if not check_quorum:
                assert old.is_leader  # it still believes it leads, yet the read did not complete
            at = await new.read_index()
            assert at <= new.last_applied and cluster.machines[new.id].data["x"] == 2
            follower = cluster.nodes[others[0] if others[0] != new.id else others[1]]
            with pytest.raises(NotLeader):
                await follower.read_index()
            nursery.cancel_scope.cancel()

    run(main)


def test_single_node_cluster_commits_alone_and_replays_after_restart():
    async def main():
        storage = MemoryStorage()
        for attempt in range(2):
            net = MemoryNetwork(random.Random(0))
            machine = DictMachine()
            node = RaftNode(1, storage, net.endpoint(1), machine, config=RaftConfig(snapshot_every=3),
                            initial_voters=[1], rng=random.Random(attempt))
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                with trio.fail_after(5):
                    while not node.is_leader:
                        await trio.sleep(0.01)
                if attempt == 0:
                    for i in range(5):
                        await node.submit(1, i + 1, ["incr", "n", 1])
                else:
                    await node.read_index()
                    assert machine.data == {"n": 5} and node.snapshot_index >= 3
                nursery.cancel_scope.cancel()

    run(main)


# ------------------------------------------------------------------------------- RocksStorage


def test_rocks_storage_survives_reopen(tmp_path):
    path = str(tmp_path / "raft")
    store = RocksStorage(path)
    store.save_term(4, 2)
    store.append(1, [Entry(1, 0), Entry(1, 1, ["c", 1, ["set", b"k", b"v"]]), Entry(2, 2, [1, 2, 3])])
    store.append(3, [Entry(3, 1, ["c", 2, ["set", b"k", b"w"]]), Entry(3, 0)])  # truncates old 3
    store.close()

    store = RocksStorage(path)
    state = store.load()
    assert (state.term, state.voted_for) == (4, 2)
    assert state.entries == [Entry(1, 0), Entry(1, 1, ["c", 1, ["set", b"k", b"v"]]),
                             Entry(3, 1, ["c", 2, ["set", b"k", b"w"]]), Entry(3, 0)]
    store.save_snapshot(Snapshot(2, 1, (1, 2, 3), b"state"), keep_log=True)
    store.append(5, [Entry(4, 0)])
    store.close()

    store = RocksStorage(path)
    state = store.load()
    assert state.snapshot == Snapshot(2, 1, (1, 2, 3), b"state")
    assert [e.term for e in state.entries] == [3, 3, 4]
    store.save_snapshot(Snapshot(9, 5, (1,), b"new"), keep_log=False)  # an installed snapshot
    store.close()

    store = RocksStorage(path)
    state = store.load()
    assert state.snapshot.index == 9 and state.entries == []
    store.append(10, [Entry(5, 0)])
    assert store.load().entries == [Entry(5, 0)]
    store.close()


def test_node_on_rocks_storage_restarts_with_its_log(tmp_path):
    async def main():
        for attempt in range(2):
            storage = RocksStorage(str(tmp_path / "node"))
            machine = DictMachine()
            net = MemoryNetwork(random.Random(0))
            node = RaftNode(1, storage, net.endpoint(1), machine, config=CONFIG, initial_voters=[1],
                            rng=random.Random(attempt))
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    with trio.fail_after(5):
                        while not node.is_leader:
                            await trio.sleep(0.01)
                    if attempt == 0:
                        assert node.term == 1
                        await node.submit(1, 1, ["set", "k", "v"])
                    else:
                        assert node.term == 2  # term and vote were durable
                        await node.read_index()
                        assert machine.data == {"k": "v"}
                        assert await node.submit(1, 1, ["set", "k", "other"]) is None  # session survived
                        assert machine.data == {"k": "v"}
                    nursery.cancel_scope.cancel()
            finally:
                storage.close()

    # The real clock: the leader fsyncs RocksDB in a worker thread, and the mock clock would
    # jump past every timeout while the thread runs (no trio task is runnable meanwhile).
    trio.run(main)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_lease_reads_on_a_deposed_leader_are_never_stale(pre_vote):
    """With leases, a partitioned leader may keep answering reads for a moment, but only while no
    other leader can have committed anything: every read it serves must have been invoked before
    the new leader's write completed. (Without pre-vote, the voters' refusal to vote while they
    hear from a leader is all that guards the lease.)"""
    async def main():
        config = RaftConfig(snapshot_every=0, lease_reads=True, pre_vote=pre_vote)
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 23, config=config)
            cluster.start_all()
            old = await cluster.leader()
            await cluster.request(1, 1, ["set", "x", 1])
            await trio.sleep(0.2)  # a few heartbeat rounds: the lease is live
            before = old.stats["lease_reads"]
            assert await old.read_index() <= old.last_applied
            assert old.stats["lease_reads"] == before + 1  # served from the lease, no round
            others = [i for i in cluster.founders if i != old.id]
            cluster.net.partition([old.id], others)
            served = []  # (invoked, returned, index) of reads the old leader answered
            stop = trio.Event()

            async def keep_reading():
                while not stop.is_set():
                    invoked = trio.current_time()
                    try:
                        index = await old.read_index(timeout=0.05)
                    except NotLeader:
                        await trio.sleep(0.01)
                        continue
                    served.append((invoked, trio.current_time(), index))
                    await trio.sleep(0.005)

            nursery.start_soon(keep_reading)
            new = await cluster.leader(among=others)
            write_index_before = new.commit_index
            assert await new.submit(1, 2, ["set", "x", 2], timeout=5.0) == 1
            committed_at = trio.current_time()
            await trio.sleep(1.0)
            stop.set()
            assert served, "the old leader never used its lease (the test would prove nothing)"
            for invoked, _returned, index in served:
                assert index <= write_index_before or invoked < committed_at
                assert invoked < committed_at, f"stale lease read invoked at {invoked} > {committed_at}"
            nursery.cancel_scope.cancel()

    run(main)


@pytest.mark.parametrize("size", [3, 5])
def test_chaos_with_lease_reads_keeps_safety_and_reads_fresh(size):
    """The chaos run with leases on: elections still happen, safety holds, no stale read."""
    leases = terms = 0
    for seed in range(12):
        cluster = run(lambda seed=seed: chaos(1000 + seed, size, 8.0, snapshot_every=40, lease_reads=True), seed)
        leases += sum(n.stats["lease_reads"] for n in cluster.live())
        terms += len(cluster.checker.leaders)
    assert terms > 12 * 2  # the chaos really forced elections
    assert leases > 100  # the lease path really served reads


def test_lease_holds_against_an_eager_candidate():
    """Without pre-vote, a node cut off for a while comes back campaigning with a high term while
    the leader is cut off in turn. The remaining follower still heard from the leader a moment ago:
    it must refuse that vote until the leader's lease has run out, or the new leader could commit
    while the old one still answers reads from its lease."""
    async def main():
        config = RaftConfig(snapshot_every=0, lease_reads=True, pre_vote=False, check_quorum=False)
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, [1, 2, 3], 31, config=config)
            cluster.start_all()
            old = await cluster.leader()
            await cluster.request(1, 1, ["set", "x", 1])
            a, b = [i for i in cluster.founders if i != old.id]
            cluster.net.partition([b], [old.id, a])
            await trio.sleep(1.5)  # b campaigns alone, again and again
            assert cluster.nodes[b].term > old.term
            await trio.sleep(0.1)  # fresh heartbeats: the old leader's lease is live
            served, committed = [], []
            stop = trio.Event()

            async def keep_reading():
                while not stop.is_set():
                    invoked = trio.current_time()
                    try:
                        await old.read_index(timeout=0.02)
                        served.append(invoked)
                    except NotLeader:
                        pass
                    await trio.sleep(0.002)

            async def write():
                with trio.fail_after(10):
                    while True:
                        for node in (cluster.nodes[a], cluster.nodes[b]):
                            if node.is_leader:
                                try:
                                    await node.submit(1, 2, ["set", "x", 2], timeout=0.5)
                                    committed.append(trio.current_time())
                                    return
                                except RaftError:
                                    pass
                        await trio.sleep(0.002)

            nursery.start_soon(keep_reading)
            cluster.net.partition([old.id], [a, b])
            await write()
            await trio.sleep(0.5)
            stop.set()
            assert served, "the old leader never used its lease"
            late = [t for t in served if t > committed[0]]
            assert not late, f"old leader served lease reads after x=2 committed at {committed[0]}: {late[:3]}"
            assert cluster.nodes[a].stats["votes_refused_in_lease"] > 0
            nursery.cancel_scope.cancel()

    run(main)
