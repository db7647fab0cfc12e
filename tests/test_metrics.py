"""Metrics of the mount daemon: /metrics, /healthz, /readyz, the .stats and .config files, and the
``stats`` / ``top`` commands, after real I/O on a live mount; the HTTP endpoint's rules in-process."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from lakefs_fuse.errors import UserError
from lakefs_fuse.metrics import MetricsServer, parse_listen

from conftest import cli, is_mountpoint, needs_fuse, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def total(metrics: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lv), v in metrics.items() if n == name and want <= set(lv))


@needs_fuse
@pytest.mark.timeout(180)
def test_mount_metrics_move_with_real_io(make_live):
    lake = make_live(mount=False)
    lake.mount()
    files = {f"f{i}": os.urandom(300_000 + i) for i in range(4)}
    for name, data in files.items():
        (lake.mnt / name).write_bytes(data)
    lake.umount()
    port = free_port()
    lake.mount("--metrics", f"127.0.0.1:{port}")  # cold: the reads below reach the daemon
    base = f"http://127.0.0.1:{port}"

    status, text = http(base + "/metrics")
    assert status == 200
    before = samples(text)
    for name, data in files.items():
        assert (lake.mnt / name).read_bytes() == data
    assert not (lake.mnt / "missing").exists()
    # O_DIRECT reads go to the daemon every time: the second pass is served by its memory cache.
    fd = os.open(lake.mnt / "f0", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.read(fd, 1 << 20) == files["f0"]
    finally:
        os.close(fd)

    after = samples(http(base + "/metrics")[1])
    size = sum(len(d) for d in files.values())
    reads = "lakefs_fuse_request_seconds_count"
    assert value(after, reads, op="read") > value(before, reads, op="read")
    assert value(after, "lakefs_fuse_request_seconds_count", op="lookup") >= 5
    assert value(after, "lakefs_read_bytes_total") - value(before, "lakefs_read_bytes_total") >= size
    assert value(after, "lakefs_fuse_request_errors_total", op="lookup", errno="ENOENT") >= 1
    assert value(after, "lakefs_cache_misses_total", tier="memory") >= 4
    hits = "lakefs_cache_hits_total"
    assert value(after, hits, tier="memory") > value(before, hits, tier="memory")
    assert total(after, "lakefs_peer_requests_total", op="get") > total(before, "lakefs_peer_requests_total", op="get")
    peers = json.loads((lake.mnt / ".config").read_text())["lake"]["peers"]
    assert peers >= 3 and total(after, "lakefs_peer_up") == peers
    assert value(after, "process_resident_memory_bytes") > 0
    # per-process series stay off /metrics (pids would make unbounded series)
    assert not any(n.startswith("lakefs_process_") for n, _ in after)

    assert http(base + "/healthz") == (200, "ok\n")
    assert http(base + "/readyz") == (200, "ok\n")
    assert http(base + "/nope")[0] == 404

    # .stats: the same counters, plus this process's time and bytes
    stats = samples((lake.mnt / ".stats").read_text())
    me = {"pid": str(os.getpid())}
    assert total(stats, "lakefs_process_read_bytes_total", **me) >= size
    assert total(stats, "lakefs_process_requests_total", **me) >= 8
    assert total(stats, "lakefs_process_cache_misses_total", **me) >= 4  # the cold reads
    assert total(stats, "lakefs_process_cache_hits_total", **me) >= 1   # the O_DIRECT re-read
    assert value(stats, "lakefs_read_bytes_total") >= size
    config = json.loads((lake.mnt / ".config").read_text())
    assert config["mountpoint"] == str(lake.mnt) and config["metrics"] == f"127.0.0.1:{port}"
    assert config["lake"]["kind"] == "embedded" and config["lake"]["ec"] == "4+2"
    assert {".stats", ".config", ".prefetch"}.isdisjoint(os.listdir(lake.mnt))
    with pytest.raises(PermissionError), open(lake.mnt / ".stats", "w"):
        pass
    with pytest.raises(PermissionError):
        os.unlink(lake.mnt / ".config")

    res = cli("stats", str(lake.mnt), "--json", "--interval", "0.2", env=lake.env, check=True)
    view = json.loads(res.stdout)
    assert view["read_bytes"] >= size and view["ops"]["read"]["total"] >= 4
    assert view["cache"]["memory"]["hits"] >= 1 and len(view["peers"]) == peers
    res = cli("top", str(lake.mnt), "--json", "--interval", "0.2", env=lake.env, check=True)
    procs = {p["pid"]: p for p in json.loads(res.stdout)["processes"]}
    assert procs[os.getpid()]["read_bytes"] >= size and "cache_hit_pct" in procs[os.getpid()]
    res = cli("stats", str(lake.mnt), "--once", "--interval", "0.1", env=lake.env, check=True)
    assert "FUSE requests" in res.stdout and "Peers" in res.stdout


@needs_fuse
@pytest.mark.timeout(120)
def test_metrics_bad_input_is_one_clear_error(make_live, tmp_path):
    lake = make_live(mount=False)
    res = cli("mount", str(lake.mnt), "--data", str(lake.data), "--metrics", "nine", env=lake.env)
    assert res.returncode != 0 and "--metrics 'nine'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli("mount", str(lake.mnt), "--data", str(lake.data), "--metrics", str(port), env=lake.env)
    assert res.returncode != 0 and f"cannot serve metrics on 127.0.0.1:{port}" in res.stderr
    assert not is_mountpoint(lake.mnt)
    wait_for(lambda: lake.pid() is None, 10, "no daemon left registered")
    res = cli("stats", str(tmp_path), "--json", env=lake.env)
    assert res.returncode != 0 and "not a lakefs-fuse mount" in res.stderr


def test_endpoint_rules_in_process():
    registry = CollectorRegistry()
    Counter("demo_events", "demo", registry=registry).inc(3)
    state = {"alive": True, "ready": False}
    server = MetricsServer("127.0.0.1:0", registry, alive=lambda: state["alive"], ready=lambda: state["ready"])
    try:
        base = f"http://{server.address}"
        assert "demo_events_total 3.0" in http(base + "/metrics")[1]
        assert http(base + "/healthz")[0] == 200
        assert http(base + "/readyz")[0] == 503  # not ready yet
        state["ready"] = True
        assert http(base + "/readyz")[0] == 200
        state["alive"] = False  # a stalled event loop: neither alive nor ready
        assert http(base + "/healthz")[0] == 503 and http(base + "/readyz")[0] == 503
    finally:
        server.close()
    assert parse_listen("9100") == ("127.0.0.1", 9100)
    assert parse_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    for bad in ("x", "host:", "1:99999"):
        with pytest.raises(UserError):
            parse_listen(bad)


@needs_fuse
@pytest.mark.timeout(240)
def test_peer_and_metadata_servers_expose_metrics(tmp_path):
    from test_metacluster import free_ports, meta_cluster

    ports = free_ports(5)
    members = {i + 1: ("--metrics", f"127.0.0.1:{ports[i]}") for i in range(3)}
    with meta_cluster(tmp_path, member_extra=members, peer_extra={0: ("--metrics", str(ports[3]))}) as cluster:
        mnt = cluster.mount("m1")
        data = os.urandom(3 << 20)
        (mnt.mnt / "f").write_bytes(data)
        mnt.umount()
        mnt.mount("--metrics", str(ports[4]))
        assert (mnt.mnt / "f").read_bytes() == data
        # the mount's view of its peer servers, scraped from the HTTP thread
        mount_view = samples(http(f"http://127.0.0.1:{ports[4]}/metrics")[1])
        assert total(mount_view, "lakefs_peer_up") == 3
        assert total(mount_view, "lakefs_peer_requests_total", op="get") >= 1
        assert http(f"http://127.0.0.1:{ports[4]}/readyz")[0] == 200

        peer_url = f"http://127.0.0.1:{ports[3]}"
        peer = samples(http(peer_url + "/metrics")[1])
        assert value(peer, "lakefs_peer_server_requests_total", op="put") >= 1
        assert value(peer, "lakefs_peer_server_requests_total", op="get") >= 1
        assert value(peer, "lakefs_peer_server_received_bytes_total") >= len(data) // 3
        assert value(peer, "lakefs_peer_server_capacity_bytes") > 0 and value(peer, "lakefs_peer_server_up") == 1
        assert http(peer_url + "/readyz")[0] == 200
        with socket.create_connection(("127.0.0.1", cluster.peers[0].port), timeout=5) as s:
            s.sendall(b"not the wire protocol" * 10)  # refused at the handshake, counted
        wait_for(lambda: value(samples(http(peer_url + "/metrics")[1]),
                               "lakefs_peer_server_auth_failures_total") >= 1, 10, "the refused client counted")

        def member_metrics() -> dict[int, dict]:
            return {i: samples(http(f"http://127.0.0.1:{ports[i - 1]}/metrics")[1]) for i in (1, 2, 3)}

        leader = cluster.leader()
        view = member_metrics()
        assert [i for i, m in view.items() if value(m, "lakefs_raft_is_leader") == 1] == [leader.id]
        term = value(view[leader.id], "lakefs_raft_term")
        assert term >= 1 and all(value(m, "lakefs_raft_term") == term for m in view.values())
        assert value(view[leader.id], "lakefs_raft_commit_index") > 0
        assert len([k for k in view[leader.id] if k[0] == "lakefs_raft_follower_lag"]) == 2
        assert value(view[leader.id], "lakefs_meta_requests_total", op="apply") >= 1
        for i in (1, 2, 3):
            assert http(f"http://127.0.0.1:{ports[i - 1]}/readyz")[0] == 200

        before = {i: value(m, "lakefs_raft_leader_changes_total") for i, m in view.items()}
        leader.kill9()
        survivors = [m for m in cluster.members if m.id != leader.id]
        new = cluster.leader(among=survivors)
        after = {m.id: samples(http(f"http://127.0.0.1:{ports[m.id - 1]}/metrics")[1]) for m in survivors}
        assert value(after[new.id], "lakefs_raft_is_leader") == 1
        assert all(value(after[m.id], "lakefs_raft_term") > term for m in survivors)
        assert all(value(after[m.id], "lakefs_raft_leader_changes_total") > before[m.id] for m in survivors)
