"""A lake on a 3-server Raft metadata cluster: real ``meta serve`` and ``peer serve`` processes,
two mounts, and faults (kill -9 of the leader, a partitioned member, a full disk, restarts).

Everything runs on loopback, except the partition test, which puts one member in a network
namespace of its own and takes its link down. Every process and mount is torn down in a
``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lakefs_fuse import errors as E

from conftest import CLI, REPO, cli, is_mountpoint, needs_fuse, registered_pid, take_down, wait_for
from linearizability import History, RegisterModel, check_history
from test_peers import Peer, write_secret

MiB = 1 << 20


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` ports free on ``host`` now, below the kernel's ephemeral range (32768 up): a port the
    kernel handed out by ``bind(0)`` can be taken as the local end of another process's outgoing
    connection before the server binds it -- seen once as "Address already in use" in CI."""
    rng = random.Random()
    ports: list[int] = []
    socks = []
    try:
        for _ in range(2000):
            if len(ports) == n:
                return ports
            port = rng.randrange(20000, 32000)
            if port in ports:
                continue
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
        raise AssertionError(f"no {n} free ports found below the ephemeral range")
    finally:
        for s in socks:
            s.close()


class Member:
    """One ``lakefs-fuse meta serve`` process."""

    def __init__(self, root: Path, node_id: int, address: str, secret: Path, netns: str | None = None):
        self.id = node_id
        self.address = address
        self.dir = root / f"meta{node_id}"
        self.log = root / f"meta{node_id}.log"
        self.secret = secret
        self.netns = netns
        self.proc: subprocess.Popen | None = None

    def start(self, *extra: str) -> None:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*prefix, *CLI, "meta", "serve", "--id", str(self.id), "--data", str(self.dir),
                 "--listen", self.address, "--secret-file", str(self.secret), *extra],
                stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, cwd=REPO)

        def serving():
            if self.proc.poll() is not None:
                raise AssertionError(f"member {self.id} exited: {self.log.read_text()[-3000:]}")
            return re.search(rf"metadata member {self.id} serving", self.log.read_text()[start:])
        wait_for(serving, 30, f"member {self.id} to serve")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class ClusterMount:
    def __init__(self, root: Path, name: str, meta: str, secret: Path):
        self.mnt = root / name
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.secret = secret
        self.env = {"LAKEFS_FUSE_RUNTIME": str(root / "run")}

    def mount(self, *args: str) -> None:
        cli("mount", str(self.mnt), "--meta", self.meta, "--secret-file", str(self.secret), *args,
            env=self.env, check=True, timeout=90)
        assert is_mountpoint(self.mnt)

    def pid(self) -> int | None:
        return registered_pid(Path(self.env["LAKEFS_FUSE_RUNTIME"]), self.mnt)

    def umount(self) -> None:
        cli("umount", str(self.mnt), env=self.env, check=True, timeout=90)

    def teardown(self) -> None:
        take_down(self.mnt, self.pid())


class MetaCluster:
    def __init__(self, root: Path, members: list[Member], peers: list[Peer], secret: Path):
        self.root = root
        self.members = members
        self.peers = peers
        self.secret = secret
        self.mounts: list[ClusterMount] = []

    @property
    def meta(self) -> str:
        return ",".join(m.address for m in self.members)

    def status(self, timeout: float = 30) -> list[dict]:
        res = cli("meta", "status", "--meta", self.meta, "--secret-file", str(self.secret), "--json",
                  timeout=timeout)
        return json.loads(res.stdout) if res.stdout.strip() else []

    def leader(self, timeout: float = 30, among: list[Member] | None = None) -> Member:
        """Wait for a member (of ``among``) that says it leads; return it."""
        among = among or [m for m in self.members if m.alive()]

        def find():
            rows = self.status()
            ids = {r["id"] for r in rows if r.get("role") == "leader"}
            return next((m for m in among if m.id in ids), None)
        return wait_for(find, timeout, "a leader", interval=0.2)

    def mount(self, name: str, *args: str) -> ClusterMount:
        m = ClusterMount(self.root, name, self.meta, self.secret)
        self.mounts.append(m)
        m.mount(*args)
        return m


@contextlib.contextmanager
def meta_cluster(tmp_path: Path, *, n_peers: int = 3, ec: str = "2+1", addresses: list[str] | None = None,
                 netns: dict[int, str] | None = None, data_dirs: dict[int, Path] | None = None,
                 member_args: tuple[str, ...] = (), member_extra: dict[int, tuple[str, ...]] | None = None,
                 peer_extra: dict[int, tuple[str, ...]] | None = None):
    """3 metadata servers + ``n_peers`` peer servers + a formatted lake; all stopped on the way out."""
    secret = write_secret(tmp_path / "secret")
    if addresses is None:
        addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    members = [Member(tmp_path, i + 1, a, secret, (netns or {}).get(i + 1)) for i, a in enumerate(addresses)]
    for m in members:
        if data_dirs and m.id in data_dirs:
            m.dir = data_dirs[m.id]
    founders = ",".join(f"{m.id}={m.address}" for m in members)
    peers = [Peer(tmp_path, f"peer{i}", secret) for i in range(n_peers)]
    cluster = MetaCluster(tmp_path, members, peers, secret)
    try:
        for i, p in enumerate(peers):
            p.start(*(peer_extra or {}).get(i, ()))
        for m in members:
            m.start("--peers", founders, *member_args, *(member_extra or {}).get(m.id, ()))
        cluster.leader()
        cli("format", "--meta", cluster.meta, "--ec", ec, "--secret-file", str(secret),
            *sum((["--net-peer", p.address] for p in peers), []), check=True)
        yield cluster
    finally:
        for mnt in cluster.mounts:
            mnt.teardown()
        for m in members:
            m.stop()
        for p in peers:
            p.stop()
        left = [mnt.mnt for mnt in cluster.mounts if is_mountpoint(mnt.mnt)]
        assert not left, f"mounts left behind: {left}"


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- coherence

@needs_fuse
@pytest.mark.timeout(240)
def test_two_mounts_see_each_others_changes_close_to_open(tmp_path):
    with meta_cluster(tmp_path) as cluster:
        a = cluster.mount("a")
        b = cluster.mount("b")
        ttl = 1.0 + 2.0  # the default attribute/entry TTL, plus slack for a loaded machine

        # Create + write + close on A: an open on B sees the data and the size at once.
        data = os.urandom(5 * MiB + 123)
        (a.mnt / "f").write_bytes(data)
        assert (b.mnt / "f").read_bytes() == data
        assert os.stat(b.mnt / "f").st_size == len(data)

        # B caches the file, A rewrites it in place with the same size: B's next open reads the new bytes.
        new = os.urandom(len(data))
        with open(a.mnt / "f", "r+b") as f:
            f.write(new)
        assert (b.mnt / "f").read_bytes() == new

        # fsync without close is enough too.
        fd = os.open(a.mnt / "g", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"synced")
            os.fsync(fd)
            assert (b.mnt / "g").read_bytes() == b"synced"
        finally:
            os.close(fd)

        # Shrinking on A: B sees the shorter file (no stale tail from its page cache).
        (a.mnt / "f").write_bytes(b"short")
        assert (b.mnt / "f").read_bytes() == b"short"

        # Directories and renames from B, seen on A within the TTL.
        (b.mnt / "d").mkdir()
        os.rename(b.mnt / "f", b.mnt / "d" / "moved")
        wait_for(lambda: (a.mnt / "d" / "moved").exists() and not (a.mnt / "f").exists(), ttl, "rename on A")
        assert (a.mnt / "d" / "moved").read_bytes() == b"short"
        assert sorted(os.listdir(a.mnt / "d")) == ["moved"]

        # Deletes.
        os.unlink(a.mnt / "d" / "moved")
        wait_for(lambda: not (b.mnt / "d" / "moved").exists(), ttl, "unlink on B")
        os.rmdir(b.mnt / "d")
        wait_for(lambda: not (a.mnt / "d").exists(), ttl, "rmdir on A")
        assert sorted(os.listdir(a.mnt)) == sorted(os.listdir(b.mnt)) == ["g"]

        # Both mounts create in one directory: each sees all names; EEXIST across mounts.
        for i in range(20):
            ((a if i % 2 else b).mnt / f"n{i}").write_bytes(b"%d" % i)
        wait_for(lambda: len(os.listdir(a.mnt)) == 21 and len(os.listdir(b.mnt)) == 21, ttl, "all names")
        with pytest.raises(FileExistsError):
            os.open(b.mnt / "n1", os.O_CREAT | os.O_EXCL | os.O_WRONLY)

        # The operator commands work on a cluster lake too.
        res = cli("stat", str(a.mnt / "g"), "--json", env=a.env)
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)
        assert info["size"] == 6 and info["health"] == "ok" and info["extents"][0]["ec"] in ("1+1", "2+1")
        res = cli("ls", "-l", str(b.mnt), "--json", env=b.env)
        assert res.returncode == 0 and len(json.loads(res.stdout)) == 21, res.stderr
        res = cli("status", "--meta", cluster.meta, "--secret-file", str(cluster.secret))
        assert res.returncode == 0 and "leader" in res.stdout and "0 degraded" in res.stdout, res.stdout


# --------------------------------------------------------------------------- failover

def _storm_worker(mount: Path, name: str, keys: list[str], history: History, stop: threading.Event,
                  rng: random.Random, errors: list[str]) -> None:
    seq = 0
    while not stop.is_set():
        key = rng.choice(keys)
        kind = rng.choices(["write", "read", "delete"], [5, 4, 1])[0]
        if kind == "write":
            seq += 1
            value = f"{name}-{seq}"
            token = history.invoke(name, key, "write", value)
            tmp = mount / f".tmp-{name}-{seq}"
            try:
                tmp.write_bytes(value.encode())   # create + write + close (commit)
                os.rename(tmp, mount / key)      # the linearization point
            except OSError as exc:
                history.unknown(token)           # may or may not have happened
                errors.append(f"{name} write {key}: {exc}")
                continue
            history.complete(token, "ok")
        elif kind == "read":
            token = history.invoke(name, key, "read")
            try:
                f = open(mount / key, "rb")  # noqa: SIM115 -- opening is the step whose outcome counts
            except FileNotFoundError:
                history.complete(token, None)
                continue
            except OSError as exc:
                history.unknown(token)
                errors.append(f"{name} open {key}: {exc}")
                continue
            try:
                with f:
                    raw = f.read()
            except OSError as exc:  # e.g. the open file was replaced and freed by the other mount
                history.unknown(token)
                errors.append(f"{name} read {key}: {exc}")
                continue
            history.complete(token, raw.decode())
        else:
            token = history.invoke(name, key, "delete")
            try:
                os.unlink(mount / key)
            except FileNotFoundError:
                history.complete(token, "ENOENT")
                continue
            except OSError as exc:
                history.unknown(token)
                errors.append(f"{name} delete {key}: {exc}")
                continue
            history.complete(token, "ok")


@needs_fuse
@pytest.mark.timeout(300)
def test_kill_leader_during_storm_history_is_linearizable(tmp_path):
    """Two mounts (attribute/entry TTL 0, so every lookup asks the cluster) write, rename, read and
    delete 8 keys from 6 threads while the leader is killed with -9; every operation's invocation
    and result is recorded and the history is checked for linearizability per key."""
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
        try:
            wait_for(lambda: len(history.ops()) >= 150, 60, "the storm to get going", interval=0.05)
            old = cluster.leader()
            killed_at = time.monotonic()
            old.kill9()
            new = cluster.leader(among=[m for m in cluster.members if m is not old])
            assert new is not old
            ops_at_kill = sum(1 for op in history.ops() if op.ret is not None and op.call > killed_at)
            wait_for(lambda: sum(1 for op in history.ops() if op.ret is not None and op.call > killed_at)
                     >= ops_at_kill + 150, 90, "operations to complete after the failover", interval=0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "an operation hung"
        # Final reads from both mounts: every acknowledged write must still be there.
        for m, who in zip(mounts, "ab", strict=True):
            for key in keys:
                token = history.invoke(f"final-{who}", key, "read")
                raw = read_or_none(m.mnt / key)
                history.complete(token, None if raw is None else raw.decode())
        ops = history.ops()
        done = [op for op in ops if op.ret is not None]
        assert len(done) >= 300, f"only {len(done)} operations completed"
        slowest = max(op.ret - op.call for op in done)
        assert slowest < 40, f"an operation took {slowest:.1f}s"
        print(f"{len(ops)} operations, {len(done)} completed, {len(errors)} errors, slowest {slowest:.2f}s; "
              f"errors: {errors[:5]}")
        result = check_history(ops, RegisterModel(strict_delete=False))
        assert result.ok, result.explanation
        # Errors during the election are allowed only as unknown outcomes, and they must be rare.
        assert len(errors) <= len(ops) // 10, errors[:10]


# --------------------------------------------------------------------------- restarts

def tree_of(root: Path) -> dict[str, bytes | None]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


@needs_fuse
@pytest.mark.timeout(300)
def test_restart_all_servers_tree_is_intact(tmp_path):
    # Snapshots every 50 entries: the restart restores a snapshot and replays the log after it.
    with meta_cluster(tmp_path, member_args=("--snapshot-every", "50")) as cluster:
        a = cluster.mount("a")
        for d in range(5):
            (a.mnt / f"d{d}").mkdir()
            for f in range(20):
                (a.mnt / f"d{d}" / f"f{f}").write_bytes(os.urandom(random.randint(0, 200_000)))
        os.rename(a.mnt / "d0", a.mnt / "d4" / "sub")
        (a.mnt / "big").write_bytes(os.urandom(9 * MiB))
        before = tree_of(a.mnt)
        statuses = {r["id"]: r for r in cluster.status()}
        applied = max(r["last_applied"] for r in statuses.values())

        wait_for(lambda: all(r.get("snapshot_index", 0) > 0 for r in cluster.status()), 30,
                 "every member to take a snapshot", interval=0.2)
        for m in cluster.members:
            m.stop()
        for m in cluster.members:
            m.start("--snapshot-every", "50")  # no --peers: it knows its cluster from its own log
        cluster.leader()
        wait_for(lambda: all(r.get("last_applied", -1) >= applied for r in cluster.status()), 30,
                 "every member to replay its log", interval=0.2)

        # The mount rode out the outage; a fresh mount sees the same tree.
        assert tree_of(a.mnt) == before
        b = cluster.mount("b")
        assert tree_of(b.mnt) == before
        (b.mnt / "after").write_bytes(b"x")
        wait_for(lambda: (a.mnt / "after").exists(), 10, "a write after the restart")


# --------------------------------------------------------------------------- membership

@needs_fuse
@pytest.mark.timeout(300)
def test_member_joins_catches_up_and_is_removed(tmp_path):
    # Small snapshots: the log is truncated, so the new member is brought up by InstallSnapshot.
    with meta_cluster(tmp_path, member_args=("--snapshot-every", "20")) as cluster:
        a = cluster.mount("a")
        for i in range(50):
            (a.mnt / f"f{i}").write_bytes(b"%d" % i)
        (port,) = free_ports(1)
        new = Member(tmp_path, 4, f"127.0.0.1:{port}", cluster.secret)
        try:
            new.start("--join", cluster.members[0].address)

            def caught_up():
                rows = {r.get("id"): r for r in cluster.status()}
                leader = next((r for r in rows.values() if r.get("role") == "leader"), None)
                return leader and 4 in leader["voters"] and 4 in rows and \
                    rows[4]["last_applied"] == leader["last_applied"]
            wait_for(caught_up, 30, "member 4 to join and catch up", interval=0.2)
            row4 = next(r for r in cluster.status() if r.get("id") == 4)
            assert row4["snapshot_index"] > 0  # it was given a snapshot, not the whole log
            (a.mnt / "after-join").write_bytes(b"y")
            res = cli("meta", "remove", "--meta", cluster.meta, "--id", "4", "--secret-file", str(cluster.secret))
            assert res.returncode == 0, res.stderr
            rows = cluster.status()
            assert all(4 not in r["voters"] for r in rows if "voters" in r and r.get("id") != 4)
            (a.mnt / "after-remove").write_bytes(b"z")
            assert (a.mnt / "after-remove").read_bytes() == b"z"
            # Removing an unknown member is one clear line.
            res = cli("meta", "remove", "--meta", cluster.meta, "--id", "9", "--secret-file", str(cluster.secret))
            assert res.returncode == 1 and "not in the cluster" in res.stderr
        finally:
            new.stop()


# --------------------------------------------------------------------------- partitions

class Netns:
    """A network namespace linked to the host by a veth pair; the link can go down."""

    def __init__(self, tag: str, subnet: int):
        self.name = f"lfmc{tag}"
        self.host_if = f"lfh{tag}"
        self.host_ip = f"10.231.{subnet}.1"
        self.ns_ip = f"10.231.{subnet}.2"

    def sh(self, *cmd: str, ns: bool = False) -> None:
        full = ["ip", "netns", "exec", self.name, *cmd] if ns else list(cmd)
        res = subprocess.run(full, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            raise OSError(f"{' '.join(full)}: {res.stderr.strip()}")

    def create(self) -> None:
        self.sh("ip", "netns", "add", self.name)
        self.sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "lfn0", "netns", self.name)
        self.sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        self.sh("ip", "link", "set", self.host_if, "up")
        self.sh("ip", "addr", "add", f"{self.ns_ip}/24", "dev", "lfn0", ns=True)
        self.sh("ip", "link", "set", "lfn0", "up", ns=True)
        self.sh("ip", "link", "set", "lo", "up", ns=True)
        self.sh("ip", "route", "add", "default", "via", self.host_ip, ns=True)

    def link(self, up: bool) -> None:
        self.sh("ip", "link", "set", self.host_if, "up" if up else "down")

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


@needs_fuse
@pytest.mark.timeout(300)
def test_partitioned_minority_cannot_commit_and_heals(tmp_path):
    """Member 3 lives in its own network namespace; members 1 and 2 listen on a host address
    the namespace routes to (the host side of a second veth pair). Taking member 3's veth link
    down partitions it from everyone."""
    tag = str(os.getpid() % 100000)
    subnet = 10 + os.getpid() % 200
    ns = Netns(tag, subnet)
    anchor = Netns(tag + "a", subnet + 1)  # its host side carries members 1 and 2; never goes down
    try:
        ns.create()
        anchor.create()
    except OSError as exc:
        ns.destroy()
        anchor.destroy()
        pytest.skip(f"cannot create network namespaces here: {exc}")
    host_ip = anchor.host_ip
    try:
        p1, p2, p3 = free_ports(3)
        addresses = [f"{host_ip}:{p1}", f"{host_ip}:{p2}", f"{ns.ns_ip}:{p3}"]
        with meta_cluster(tmp_path, addresses=addresses, netns={3: ns.name}) as cluster:
            a = cluster.mount("a")
            (a.mnt / "before").write_bytes(b"1")
            m3 = cluster.members[2]
            was_leader = cluster.leader().id == 3
            ns.link(False)
            t0 = time.monotonic()
            # The majority side elects a leader and keeps serving the mount.
            (a.mnt / "during").write_bytes(b"2")
            assert (a.mnt / "during").read_bytes() == b"2"
            assert time.monotonic() - t0 < 30

            # The minority member cannot commit: ask it directly from inside its namespace.
            def probe() -> dict:
                res = subprocess.run(
                    ["ip", "netns", "exec", ns.name, *CLI, "meta", "status", "--meta", m3.address, "--secret-file",
                     str(cluster.secret), "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
                return next(r for r in json.loads(res.stdout) if r.get("id") == 3)
            # A partitioned leader steps down by itself (check-quorum); a follower stays one.
            row = wait_for(lambda: (r := probe())["role"] != "leader" and r, 20, "member 3 not to lead",
                           interval=0.2)
            majority = [r for r in cluster.status() if r.get("id") in (1, 2)]
            committed = max(r["commit_index"] for r in majority)
            assert row["commit_index"] < committed, (row, majority)
            assert any(r["role"] == "leader" for r in majority)
            print(f"member 3 was the leader: {was_leader}")

            ns.link(True)
            # Healing converges: member 3 applies everything the majority committed.
            wait_for(lambda: any(r.get("id") == 3 and r["last_applied"] >= committed for r in cluster.status()),
                     60, "member 3 to catch up", interval=0.3)
            assert (a.mnt / "before").read_bytes() == b"1"
            (a.mnt / "after").write_bytes(b"3")
            assert sorted(os.listdir(a.mnt)) == ["after", "before", "during"]
    finally:
        ns.destroy()
        anchor.destroy()


# --------------------------------------------------------------------------- disk full

@needs_fuse
@pytest.mark.timeout(300)
def test_follower_disk_full_cluster_keeps_working(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(small)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr}")
    try:
        with meta_cluster(tmp_path, data_dirs={3: small / "meta3"}) as cluster:
            a = cluster.mount("a")
            (a.mnt / "before").write_bytes(b"1")
            m3 = cluster.members[2]
            while cluster.leader().id == 3:  # the full disk must be a follower's
                m3.stop()
                cluster.leader(among=cluster.members[:2])
                m3.start()
            # Fill member 3's disk.
            with open(small / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * MiB)
                    f.flush()
            written = 0
            deadline = time.monotonic() + 120
            while m3.alive():  # log traffic until member 3's disk refuses it
                assert time.monotonic() < deadline, "member 3 never hit its full disk"
                (a.mnt / f"f{written}").write_bytes(b"%d" % written)
                written += 1
            assert "metadata member 3 stopped" in m3.log.read_text(), m3.log.read_text()[-2000:]
            for i in range(50):  # the other two carry on
                (a.mnt / f"g{i}").write_bytes(b"g")
            (a.mnt / "after").write_bytes(b"2")
            assert len(os.listdir(a.mnt)) == written + 52
            rows = cluster.status()
            assert any(r.get("role") == "leader" for r in rows)
            # Free the disk, restart: it catches up.
            os.unlink(small / "filler")
            m3.start()
            wait_for(lambda: any(r.get("id") == 3 and r.get("health") == "ok" and r.get("lag", 1) == 0
                                 for r in cluster.status()), 60, "member 3 to catch up", interval=0.3)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# --------------------------------------------------------------------------- bad input

@needs_fuse
@pytest.mark.timeout(240)
def test_wrong_secret_identity_mismatch_and_garbage_are_refused(tmp_path):
    with meta_cluster(tmp_path) as cluster:
        wrong = write_secret(tmp_path / "wrong", "f" * 64)
        mnt = tmp_path / "w"
        mnt.mkdir()
        res = cli("mount", str(mnt), "--meta", cluster.meta, "--secret-file", str(wrong))
        assert res.returncode == 1 and not is_mountpoint(mnt)
        assert "secret" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        res = cli("meta", "status", "--meta", cluster.meta, "--secret-file", str(wrong))
        assert res.returncode != 0

        # A server with the wrong secret cannot take part: the cluster keeps its members.
        m1 = cluster.members[0]
        (port,) = free_ports(1)
        intruder = Member(tmp_path, 1, f"127.0.0.1:{port}", wrong)
        res = cli("meta", "serve", "--id", "7", "--data", str(tmp_path / "intruder"), "--listen", intruder.address,
                  "--peers", f"7={intruder.address},{m1.id}={m1.address}", "--secret-file", str(wrong), timeout=60)
        assert res.returncode == 1 and "secret" in res.stderr, res.stderr

        # A restart under another id, or with a member list that is not the cluster's, is refused.
        m1.stop()
        res = cli("meta", "serve", "--id", "2", "--data", str(m1.dir), "--listen", m1.address,
                  "--secret-file", str(cluster.secret), timeout=60)
        assert res.returncode == 1 and "member 1, not 2" in res.stderr, res.stderr
        other = ",".join(f"{m.id}={m.address}" for m in cluster.members[:2]) + f",3=127.0.0.1:{port}"
        res = cli("meta", "serve", "--id", "1", "--data", str(m1.dir), "--listen", m1.address,
                  "--peers", other, "--secret-file", str(cluster.secret), timeout=60)
        assert res.returncode == 1 and "does not match" in res.stderr, res.stderr
        # A new server whose --peers calls a running member by the wrong id is refused.
        m2, m3 = cluster.members[1], cluster.members[2]
        res = cli("meta", "serve", "--id", "5", "--data", str(tmp_path / "m5"), "--listen", f"127.0.0.1:{port}",
                  "--peers", f"5=127.0.0.1:{port},3={m2.address},2={m3.address}",
                  "--secret-file", str(cluster.secret), timeout=60)
        assert res.returncode == 1 and re.search(r"is member [23], but --peers names it member [23]", res.stderr), \
            res.stderr
        m1.start()

        # Garbage and malformed frames: the connection closes, the member keeps serving.
        host, port_s = m1.address.rsplit(":", 1)
        for junk in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", os.urandom(4096)):
            with socket.create_connection((host, int(port_s)), timeout=5) as s:
                s.sendall(junk)
                s.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    while s.recv(4096):
                        pass
        assert m1.alive()
        cluster.leader()
        a = cluster.mount("a")
        (a.mnt / "still-fine").write_bytes(b"ok")
        assert (a.mnt / "still-fine").read_bytes() == b"ok"


def test_replicated_state_snapshot_restores_every_key(tmp_path):
    from lakefs_fuse.meta.server import ReplicatedState

    src = ReplicatedState(tmp_path / "a")
    src.apply(1, ["format", {"ec_k": 2, "ec_m": 1, "chunk_size": 4 * MiB, "min_shard": 65536}, 1, 0, 0])
    for i in range(300):
        src.apply(i + 2, ["mknod", 1, b"f%d" % i, 0o100644, 0, 0, 0, 5])
    src.apply(400, ["set_meta_member", 1, "127.0.0.1:1"])
    data = src.snapshot(400)
    dst = ReplicatedState(tmp_path / "b")
    dst.restore(data)
    assert dict(dst.sm.db.items()) == dict(src.sm.db.items())
    assert dst.members() == {1: "127.0.0.1:1"}
    assert len(dst.sm.readdir(1, 0, 1000)) == 300
    with pytest.raises(E.LakeError):  # a failed command raises its LakeError, writes nothing
        dst.apply(401, ["mknod", 1, b"f1", 0o100644, 0, 0, 0, 5])
    src.close()
    dst.close()


def test_malformed_rpcs_from_an_authenticated_client_get_errors_not_crashes(tmp_path):
    import trio

    from lakefs_fuse import wire
    from lakefs_fuse.meta.remote import MetaService

    secret = write_secret(tmp_path / "secret")
    (port,) = free_ports(1)
    m = Member(tmp_path, 1, f"127.0.0.1:{port}", secret)
    try:
        m.start("--peers", f"1={m.address}")

        async def main():
            async with MetaService([m.address], wire.load_secret(secret), op_timeout=20) as service:
                await service.call("status")
                client = await service._client(m.address)
                bad = [("apply", {"c": "x", "s": 1}, b""), ("apply", {"c": 1, "s": 1}, b"\xc1\xc1"),
                       ("apply", {"c": 1, "s": 1}, b"\x91\x01"), ("query", {"q": "nope"}, b"\x90"),
                       ("query", {"q": "getattr"}, b"\x92\x01\x02\x03"), ("raft", {}, b""),
                       ("raft", {"src": 2, "addr": ""}, b"\xff"), ("frobnicate", {}, b"")]
                codes = []
                for op, args, payload in bad:
                    with pytest.raises(wire.RemoteError) as err:
                        await client.call(op, args, payload, timeout=10)
                    codes.append(err.value.errno)
                assert all(c in (errno.EINVAL, errno.EOPNOTSUPP) for c in codes), codes
                res, _ = await service.call("status")
                assert res["id"] == 1
        trio.run(main)
        assert m.alive()
    finally:
        m.stop()


@needs_fuse
@pytest.mark.timeout(240)
def test_frozen_metadata_servers_give_eio_in_bounded_time_then_recover(tmp_path):
    """All three servers stopped (SIGSTOP: connections hang, nothing is refused): an operation
    fails with EIO after --meta-timeout, not EACCES and not a hang; once they resume, it works."""
    with meta_cluster(tmp_path) as cluster:
        a = cluster.mount("a", "--meta-timeout", "4")
        (a.mnt / "x").write_bytes(b"1")
        for m in cluster.members:
            m.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(OSError) as err:
                (a.mnt / "y").write_bytes(b"2")
            took = time.monotonic() - t0
            assert err.value.errno == errno.EIO, err.value
            assert took < 4 + 15, f"took {took:.1f}s"
            with pytest.raises(OSError) as err:
                os.stat(a.mnt / "z")
            assert err.value.errno == errno.EIO
        finally:
            for m in cluster.members:
                m.proc.send_signal(signal.SIGCONT)
        cluster.leader()
        (a.mnt / "y").write_bytes(b"2")
        assert sorted(os.listdir(a.mnt)) == ["x", "y"]


@needs_fuse
@pytest.mark.timeout(240)
def test_dataset_mode_reads_metadata_from_a_snapshot(tmp_path):
    """--dataset on a cluster lake copies the metadata at mount time: with every metadata server
    stopped, the tree can still be listed, stat'ed and read (shards come from the peers)."""
    with meta_cluster(tmp_path) as cluster:
        a = cluster.mount("a")
        files = {}
        for c in range(3):
            (a.mnt / f"class{c}").mkdir()
            for i in range(10):
                files[f"class{c}/img{i}.jpg"] = os.urandom(50_000 + i)
                (a.mnt / f"class{c}/img{i}.jpg").write_bytes(files[f"class{c}/img{i}.jpg"])
        b = cluster.mount("b", "--dataset")
        for m in cluster.members:
            m.stop()
        assert sorted(os.listdir(b.mnt)) == ["class0", "class1", "class2"]
        for rel, data in files.items():
            assert os.stat(b.mnt / rel).st_size == len(data)
            assert (b.mnt / rel).read_bytes() == data
        for _ in range(2):  # a negative lookup, again from the kernel's cache the second time
            assert not (b.mnt / "class0" / "missing.jpg").exists()
        with pytest.raises(OSError) as err:
            (b.mnt / "new").write_bytes(b"x")
        assert err.value.errno == errno.EROFS
        for m in cluster.members:
            m.start()
        cluster.leader()
