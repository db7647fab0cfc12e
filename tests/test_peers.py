"""Storage peers over the network: real peer processes on loopback, a mount using them, faults.

Every peer is a ``lakefs-fuse peer serve`` subprocess listening on 127.0.0.1 port 0 (the bound
port is read from its log); everything is torn down in ``finally``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CLI, REPO, LiveLake, _alive, cli, needs_fuse, wait_for

MiB = 1 << 20


class Peer:
    def __init__(self, root: Path, name: str, secret: Path, zone: str = ""):
        self.dir = root / name
        self.log = root / f"{name}.log"
        self.secret = secret
        self.zone = zone
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, *extra: str) -> None:
        listen = f"127.0.0.1:{self.port}"
        # a restart appends to the same log: only lines written after this start count
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*CLI, "peer", "serve", "--data", str(self.dir), "--listen", listen, "--zone", self.zone,
                 "--secret-file", str(self.secret), *extra], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                cwd=REPO)
        pattern = re.compile(r"serving .* on 127\.0\.0\.1:(\d+)")

        def bound():
            if self.proc.poll() is not None:
                raise AssertionError(f"peer exited: {self.log.read_text()[-2000:]}")
            found = pattern.findall(self.log.read_bytes()[offset:].decode(errors="replace"))
            return int(found[-1]) if found and (self.port == 0 or int(found[-1]) == self.port) else None
        self.port = wait_for(bound, 30, f"peer {self.dir.name} to listen")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def write_secret(path: Path, text: str = "0123456789abcdef0123456789abcdef") -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def peer_cluster(tmp_path: Path, n: int = 9, *, ec: str = "6+3"):
    """``n`` peers in 3 zones and a lake over them (not mounted); all stopped on the way out."""
    secret = write_secret(tmp_path / "secret")
    peers = [Peer(tmp_path, f"peer{i}", secret, zone=f"z{i % 3}") for i in range(n)]
    lake = LiveLake(tmp_path / "lake", format_args=None)
    try:
        for p in peers:
            p.start()
        net = sum((["--net-peer", f"{p.address}@{p.zone}"] for p in peers), [])
        cli("format", "--data", str(lake.data), "--ec", ec, "--secret-file", str(secret), *net,
            env=lake.env, check=True)
        yield lake, peers
    finally:
        lake.teardown()
        for p in peers:
            p.stop()


@pytest.fixture
def cluster(tmp_path):
    """9 peers in 3 zones and a lake over them (EC 6+3), not yet mounted."""
    with peer_cluster(tmp_path, 9) as made:
        yield made


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


READER = r"""
import hashlib, os, sys, time
path, progress = sys.argv[1], sys.argv[2]
h, n = hashlib.sha256(), 0
fd = os.open(path, os.O_RDONLY)
while True:
    block = os.read(fd, 1 << 20)
    if not block:
        break
    h.update(block)
    n += len(block)
    with open(progress, "w") as f:
        f.write(str(n))
    time.sleep(0.02)  # a paced reader (a training loop), so peers die mid-read
print(h.hexdigest())
"""


@needs_fuse
@pytest.mark.timeout(900)
def test_reads_survive_m_dead_peers_then_fail_fast_beyond(cluster, tmp_path):
    lake, peers = cluster
    lake.mount()
    src = tmp_path / "src"
    size_mib = int(os.environ.get("LAKEFS_TEST_BIG_MIB", "48"))  # 1024 for the full-size run
    with open(src, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    want = sha256(src)
    subprocess.run(["cp", str(src), str(lake.mnt / "big")], check=True, timeout=120)
    info = json.loads(cli("stat", str(lake.mnt / "big"), "--json", env=lake.env, check=True).stdout)
    assert info["health"] == "ok" and {e["ec"] for e in info["extents"]} == {"6+3"}
    zones = {s["peer"] % 3 for e in info["extents"] for s in e["shards"]}
    assert zones == {0, 1, 2}
    lake.remount()  # cold: nothing in the daemon's cache or the page cache

    progress = tmp_path / "progress"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(lake.mnt / "big"), str(progress)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: progress.exists() and progress.read_text() and int(progress.read_text()) >= 4 * MiB,
                 60, "the reader to get going")
        for p in (peers[0], peers[4], peers[8]):  # three peers, one per zone, die mid-read
            p.kill9()
        out, err = reader.communicate(timeout=600)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err
    assert out.strip() == want
    assert "degraded read" in lake.log()

    peers[2].kill9()  # a fourth: some chunks now have only 5 of 9 shards
    lake.remount()
    t0 = time.monotonic()
    with pytest.raises(OSError) as exc:
        sha256(lake.mnt / "big")
    assert exc.value.errno == 5 and time.monotonic() - t0 < 30  # EIO, promptly, never a hang
    assert _alive(lake.pid())

    for p in (peers[0], peers[2], peers[4], peers[8]):  # they come back on their old ports
        p.start()
    lake.remount()
    assert sha256(lake.mnt / "big") == want
    listing = json.loads(cli("peer", "list", "--data", str(lake.data), "--json", env=lake.env, check=True).stdout)
    assert all(r["reachable"] for r in listing)


@needs_fuse
@pytest.mark.timeout(240)
def test_writes_with_peers_down_commit_k_plus_1_and_fail_below(cluster):
    lake, peers = cluster
    lake.mount()
    keep = os.urandom(3 * MiB)
    assert _write(lake.mnt / "keep", keep) == 0
    peers[5].kill9()
    peers[7].kill9()
    # 7 of 9 peers up: a 6+3 chunk is committed with 7 shards (k+1), readable, queued for repair
    degraded = os.urandom(9 * MiB)
    wait_for(lambda: _write(lake.mnt / "degraded", degraded) == 0, 30, "a write with 2 peers down to succeed")
    assert (lake.mnt / "degraded").read_bytes() == degraded
    peers[1].kill9()
    # 6 of 9 up: fewer than k+1 -- refused with ENOSPC (at write or fsync), never acknowledged
    # and lost later; the daemon notices the dead peer within seconds at most.
    wait_for(lambda: _write(lake.mnt / "f", os.urandom(MiB)) == 28, 30, "writes to be refused with ENOSPC")
    assert (lake.mnt / "keep").read_bytes() == keep  # what was committed stays readable
    for p in (peers[1], peers[5], peers[7]):
        p.start()
    wait_for(lambda: _write(lake.mnt / "g", b"x" * 1000) == 0, 30, "writes to work again once peers are back")
    lake.umount()
    res = cli("status", "--data", str(lake.data), "--json", env=lake.env)
    st = json.loads(res.stdout)
    assert all(p["reachable"] for p in st["peers"])  # all peers answer again, but shards are missing:
    assert res.returncode == 3 and st["missing_shards"] >= 2 and st["degraded"]  # status says so...
    res = cli("scrub", "--data", str(lake.data), "--json", env=lake.env)
    missing = json.loads(res.stdout)["bad"].get("missing", 0)
    assert res.returncode == 3 and missing == st["missing_shards"]  # ...and agrees with scrub
    assert cli("repair", "--data", str(lake.data), env=lake.env).returncode == 0
    assert cli("scrub", "--data", str(lake.data), env=lake.env).returncode == 0
    lake.mount()
    assert (lake.mnt / "degraded").read_bytes() == degraded


def _write(path: Path, data: bytes) -> int:
    """0 or the errno of a write + fsync + close (unbuffered, so each step reaches the daemon)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    except OSError as exc:
        return exc.errno
    try:
        os.write(fd, data)
        os.fsync(fd)
    except OSError as exc:
        return exc.errno
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return 0


@pytest.mark.timeout(120)
def test_wrong_secret_and_garbage_are_refused(tmp_path):
    good = write_secret(tmp_path / "good")
    bad = write_secret(tmp_path / "bad", "fedcba9876543210fedcba9876543210")
    peer = Peer(tmp_path, "p", bad)
    lake = tmp_path / "lake"
    try:
        peer.start()
        cli("format", "--data", str(lake), "--secret-file", str(good), check=True)
        res = cli("peer", "add", peer.address, "--data", str(lake))
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert "does not answer" in res.stderr and "secret" in res.stderr, res.stderr
        # garbage on the port closes that connection; the peer keeps serving
        with socket.create_connection(("127.0.0.1", peer.port), timeout=5) as s:
            s.sendall(b"\xff" * 64 + b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(10)
            while s.recv(4096):
                pass
        assert peer.proc.poll() is None
        (tmp_path / "lake2").mkdir()
        peer2 = Peer(tmp_path, "p2", good)
        try:
            peer2.start()
            res = cli("peer", "add", peer2.address, "--data", str(lake), check=True)
            assert "added peer" in res.stdout
            listing = json.loads(cli("peer", "list", "--data", str(lake), "--json", check=True).stdout)
            assert [r["address"] for r in listing if r["kind"] == "net"] == [peer2.address]
            assert cli("peer", "add", peer2.address, "--data", str(lake)).returncode == 1  # twice: refused
        finally:
            peer2.stop()
        assert "authentication" in peer.log.read_text().lower() or "denied" in peer.log.read_text().lower() \
            or "secret" in peer.log.read_text().lower()
    finally:
        peer.stop()


@needs_fuse
@pytest.mark.timeout(240)
def test_status_scrub_and_repair_restore_full_redundancy(tmp_path):
    with peer_cluster(tmp_path, 10) as (lake, peers):
        lake.mount()
        data = os.urandom(20 * MiB)
        (lake.mnt / "f").write_bytes(data)
        lake.umount()

        def status():
            res = cli("status", "--data", str(lake.data), "--json", env=lake.env)
            st = json.loads(res.stdout)
            healthy = all(p["reachable"] for p in st["peers"]) and not st["degraded"] and not st["unreadable"]
            assert res.returncode == (0 if healthy else 3), res.stderr  # exit 3: needs attention
            return st
        st = status()
        assert st["chunks"] == 5 and st["degraded"] == [] and sum(p["shards"] for p in st["peers"]) == 45
        victim = max(st["peers"], key=lambda p: p["shards"])
        peers[victim["id"]].kill9()
        st = status()
        assert not next(p for p in st["peers"] if p["id"] == victim["id"])["reachable"]
        assert len(st["degraded"]) == victim["shards"] > 0

        # a corrupt shard on a live peer as well
        chunk = json.loads(cli("stat", "/f", "--data", str(lake.data), "--json", env=lake.env).stdout)["extents"][0]
        live_shard = next(s for s in chunk["shards"] if s["peer"] != victim["id"])
        shard_file = (peers[live_shard["peer"]].dir / "shards" / f"{chunk['chunk'] & 0xff:02x}"
                      / f"{chunk['chunk']:016x}.{live_shard['index']}")
        raw = bytearray(shard_file.read_bytes())
        raw[-100] ^= 0xFF
        shard_file.write_bytes(bytes(raw))

        res = cli("scrub", "--data", str(lake.data), "--json", env=lake.env)
        assert res.returncode == 3, res.stderr
        report = json.loads(res.stdout)
        assert report["bad"] == {"unreachable": victim["shards"], "corrupt": 1}

        res = cli("repair", "--data", str(lake.data), "--json", env=lake.env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["repaired"] == victim["shards"] + 1
        st = status()
        assert st["degraded"] == [] and st["unreadable"] == []
        assert next(p for p in st["peers"] if p["id"] == victim["id"])["shards"] == 0
        res = cli("scrub", "--data", str(lake.data), "--json", env=lake.env)
        assert res.returncode == 0 and json.loads(res.stdout)["bad"] == {}
        assert json.loads(cli("repair", "--data", str(lake.data), "--json", env=lake.env).stdout)["repaired"] == 0

        lake.mount()
        assert (lake.mnt / "f").read_bytes() == data
        assert "degraded read" not in lake.log().split("mounted")[-1]  # full redundancy: no decoding needed


@needs_fuse
@pytest.mark.timeout(120)
def test_repair_of_embedded_lake(live):
    data = os.urandom(6 * MiB)
    (live.mnt / "f").write_bytes(data)
    live.umount()
    info = json.loads(cli("stat", "/f", "--data", str(live.data), "--json", env=live.env, check=True).stdout)
    for ext in info["extents"]:
        shard = ext["shards"][1]
        Path(shard["address"], f"{ext['chunk'] & 0xff:02x}", f"{ext['chunk']:016x}.{shard['index']}").unlink()
    res = cli("scrub", "--data", str(live.data), "--json", env=live.env)
    assert res.returncode == 3 and json.loads(res.stdout)["bad"] == {"missing": len(info["extents"])}
    res = cli("repair", "--data", str(live.data), env=live.env)
    assert res.returncode == 0 and f"repaired {len(info['extents'])} shard(s)" in res.stdout
    assert cli("scrub", "--data", str(live.data), env=live.env).returncode == 0
    live.mount()
    assert (live.mnt / "f").read_bytes() == data


@needs_fuse
@pytest.mark.timeout(240)
def test_mount_repairs_in_the_background_after_the_delay(tmp_path):
    with peer_cluster(tmp_path, 10) as (lake, peers):
        lake.mount("--repair-delay", "1")
        data = os.urandom(12 * MiB)
        (lake.mnt / "f").write_bytes(data)
        os.sync()
        info = json.loads(cli("stat", str(lake.mnt / "f"), "--json", env=lake.env, check=True).stdout)
        victim = info["extents"][0]["shards"][0]["peer"]
        peers[victim].kill9()

        def repaired():  # (exit 3 all along: the victim stays down)
            st = json.loads(cli("status", "--data", str(lake.data), "--json", env=lake.env).stdout)
            shards = next(p for p in st["peers"] if p["id"] == victim)["shards"]
            return shards == 0 and st["degraded"] == [] and st["unreadable"] == []
        wait_for(repaired, 90, "the daemon to rebuild the dead peer's shards elsewhere", interval=0.5)
        assert "background repair rebuilt" in lake.log()
        lake.remount()
        assert (lake.mnt / "f").read_bytes() == data


class FaultProxy:
    """A TCP proxy in front of one peer that can cut the link (a network partition).

    Partitioned: every proxied connection is dropped and new ones are accepted but never
    answered -- to the client, the peer has vanished from the network.
    """

    def __init__(self, target_port: int):
        import threading
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.partitioned = threading.Event()
        self.closing = threading.Event()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(client)
            if self.partitioned.is_set():
                continue  # a black hole: hold the socket, never answer
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.partitioned.is_set():
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def partition(self) -> None:
        self.partitioned.set()
        with self.lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.conns.clear()

    def heal(self) -> None:
        self.partitioned.clear()

    def close(self) -> None:
        self.closing.set()
        self.partition()
        self.listener.close()


@needs_fuse
@pytest.mark.timeout(240)
def test_partitioned_peer_is_treated_as_dead_and_rejoins(tmp_path):
    secret = write_secret(tmp_path / "secret")
    peers = [Peer(tmp_path, f"peer{i}", secret, zone=f"z{i % 3}") for i in range(9)]
    lake = LiveLake(tmp_path / "lake", format_args=None)
    proxy = None
    try:
        for p in peers:
            p.start()
        proxy = FaultProxy(peers[0].port)
        addrs = [f"127.0.0.1:{proxy.port}@z0"] + [f"{p.address}@{p.zone}" for p in peers[1:]]
        cli("format", "--data", str(lake.data), "--ec", "6+3", "--secret-file", str(secret),
            *sum((["--net-peer", a] for a in addrs), []), env=lake.env, check=True)
        lake.mount()
        data = os.urandom(24 * MiB)
        (lake.mnt / "f").write_bytes(data)
        lake.remount()

        proxy.partition()
        t0 = time.monotonic()
        assert (lake.mnt / "f").read_bytes() == data  # degraded around the unreachable peer
        assert time.monotonic() - t0 < 60
        assert "degraded read" in lake.log()
        assert _alive(lake.pid())

        def peer0_reachable() -> bool:
            rows = json.loads(cli("peer", "list", "--data", str(lake.data), "--json", env=lake.env,
                                  check=True).stdout)
            return next(r for r in rows if r["id"] == 0)["reachable"]
        assert not peer0_reachable()
        proxy.heal()
        wait_for(peer0_reachable, 60, "the partitioned peer to answer again", interval=0.5)
        lake.remount()
        before = lake.log().count("degraded read")
        assert (lake.mnt / "f").read_bytes() == data
        # back in the cluster: the daemon reaches it and needs no decoding for this file
        assert lake.log().count("degraded read") == before
    finally:
        lake.teardown()
        for p in peers:
            p.stop()
        if proxy:
            proxy.close()


@needs_fuse
@pytest.mark.timeout(240)
def test_full_peer_refuses_and_shards_go_elsewhere(tmp_path):
    secret = write_secret(tmp_path / "secret")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    peers = [Peer(tmp_path, f"peer{i}", secret, zone=f"z{i % 3}") for i in range(10)]
    peers[0].dir = small / "peer0"  # this peer's disk fills up after a few shards
    lake = LiveLake(tmp_path / "lake", format_args=None)
    try:
        for p in peers:
            p.start()
        cli("format", "--data", str(lake.data), "--ec", "6+3", "--secret-file", str(secret),
            *sum((["--net-peer", f"{p.address}@{p.zone}"] for p in peers), []), env=lake.env, check=True)
        lake.mount()
        data = os.urandom(64 * MiB)  # ~100 shards of ~700 KB: peer 0 would get ~10, room for ~5
        (lake.mnt / "f").write_bytes(data)
        lake.umount()
        assert "refused" in lake.log()  # peer 0 said ENOSPC at least once...
        res = cli("scrub", "--data", str(lake.data), "--json", env=lake.env)
        assert res.returncode == 0 and json.loads(res.stdout)["bad"] == {}  # ...and nothing is missing
        lake.mount()
        assert (lake.mnt / "f").read_bytes() == data
    finally:
        lake.teardown()
        for p in peers:
            p.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)


@needs_fuse
@pytest.mark.timeout(240)
def test_rebalance_fills_a_new_peer_and_drains_a_removed_one(cluster, tmp_path):
    lake, peers = cluster
    lake.mount()
    data = os.urandom(40 * MiB)
    (lake.mnt / "f").write_bytes(data)
    lake.umount()
    new = Peer(tmp_path, "peer9", peers[0].secret, zone="z0")
    try:
        new.start()
        assert "added peer 9" in cli("peer", "add", new.address, "--data", str(lake.data), env=lake.env,
                                     check=True).stdout
        assert cli("peer", "remove", "3", "--data", str(lake.data), env=lake.env, check=True).returncode == 0
        res = cli("rebalance", "--data", str(lake.data), "--json", env=lake.env)
        assert res.returncode == 0, res.stderr
        moved = json.loads(res.stdout)["repaired"]
        st = json.loads(cli("status", "--data", str(lake.data), "--json", env=lake.env, check=True).stdout)
        shards = {p["id"]: p["shards"] for p in st["peers"]}
        assert shards[3] == 0 and shards[9] > 0 and moved >= shards[9]
        assert not list((peers[3].dir / "shards").rglob("*.[0-9]"))  # drained on disk too
        again = json.loads(cli("rebalance", "--data", str(lake.data), "--json", env=lake.env, check=True).stdout)
        assert again["repaired"] == 0  # idempotent
        assert cli("scrub", "--data", str(lake.data), env=lake.env).returncode == 0
        lake.mount()
        assert (lake.mnt / "f").read_bytes() == data
    finally:
        new.stop()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@needs_fuse
@pytest.mark.timeout(180)
def test_tls_between_mount_and_peers(tmp_path):
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_cert, _ = self_signed(tmp_path / "other")
    secret = write_secret(tmp_path / "secret")
    peers = [Peer(tmp_path, f"peer{i}", secret) for i in range(6)]
    lake = LiveLake(tmp_path / "lake", format_args=None)
    try:
        for p in peers:
            p.start("--tls-cert", str(cert), "--tls-key", str(key))
        net = sum((["--net-peer", p.address] for p in peers), [])
        cli("format", "--data", str(lake.data), "--ec", "4+2", "--secret-file", str(secret), "--tls-ca", str(cert),
            *net, env=lake.env, check=True)
        lake.mount()
        data = os.urandom(5 * MiB)
        (lake.mnt / "f").write_bytes(data)
        lake.remount()
        assert (lake.mnt / "f").read_bytes() == data
        lake.umount()
        rows = json.loads(cli("peer", "list", "--data", str(lake.data), "--json", env=lake.env, check=True).stdout)
        assert all(r["reachable"] for r in rows)
        # a lake that does not trust the peers' certificate is refused, and says why
        bad = tmp_path / "bad-lake"
        res = cli("format", "--data", str(bad), "--secret-file", str(secret), "--tls-ca", str(other_cert), *net,
                  "--ec", "4+2", env=lake.env)
        assert res.returncode == 1 and not (bad / "lake.json").exists()
        lines = res.stderr.strip().splitlines()  # one line per peer, each naming the certificate
        assert len(lines) == len(peers) and all("certificate" in line for line in lines), res.stderr
        # a plaintext client gets nothing from a TLS peer (the connection fails, the peer lives on)
        with socket.create_connection(("127.0.0.1", peers[0].port), timeout=5) as s:
            s.sendall(b"\0" * 8)
            s.settimeout(15)
            try:
                while s.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
        assert peers[0].proc.poll() is None
    finally:
        lake.teardown()
        for p in peers:
            p.stop()
