"""Administration at the edges (issue 11): corrupt metadata, a full repair target, what scrub and
status report, and peers changing under a running mount.

Lakes are driven through the real CLI; metadata is populated or damaged in-process while the lake
is unmounted. Metadata clusters are real ``meta serve`` processes on loopback ports the test picks.
Everything started here is stopped in a ``finally``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import rocksdict

from conftest import LiveLake, cli, is_mountpoint, needs_fuse, wait_for, write_synced_file
from test_metacluster import meta_cluster
from test_peers import Peer

MiB = 1 << 20


# ----------------------------------------------------------------------------- corrupt metadata

def flip_middle_of_largest_sst(db_dir: Path) -> Path:
    """Damage a data block: invert 64 bytes in the middle of the biggest table file."""
    ssts = sorted(db_dir.glob("*.sst"), key=lambda p: p.stat().st_size)
    assert ssts, f"no table files in {db_dir}"
    victim = ssts[-1]
    raw = bytearray(victim.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    victim.write_bytes(bytes(raw))
    return victim


def settle_into_tables(db_dir: Path) -> None:
    """Flush and compact a RocksDB directory (nothing else may have it open): every key in SSTs."""
    db = rocksdict.Rdict(str(db_dir), options=rocksdict.Options(raw_mode=True))
    try:
        db.flush()
        db.compact_range(None, None)
    finally:
        db.close()


def populate(lake: LiveLake, files: int = 20000) -> None:
    """Many files in the root of an unmounted embedded lake, straight into its metadata."""
    from lakefs_fuse.meta.state import StateMachine
    sm = StateMachine(str(lake.data / "meta"))
    try:
        now = time.time_ns()
        for i in range(files):
            sm.apply(["mknod", 1, b"file%05d" % i, 0o100644, 0, 0, 0, now])
    finally:
        sm.close()
    settle_into_tables(lake.data / "meta")


def assert_one_line(res: subprocess.CompletedProcess, *words: str) -> str:
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("lakefs-fuse:")]
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def sequence_number(db_dir: Path) -> int:
    db = rocksdict.Rdict(str(db_dir), options=rocksdict.Options(raw_mode=True),
                         access_type=rocksdict.AccessType.read_only())
    try:
        return db.latest_sequence_number()
    finally:
        db.close()


@needs_fuse
@pytest.mark.timeout(300)
def test_corrupt_embedded_metadata_is_one_line_everywhere_and_never_written(tmp_path):
    lake = LiveLake(tmp_path / "lake")
    try:
        populate(lake)
        flip_middle_of_largest_sst(lake.data / "meta")
        before = sequence_number(lake.data / "meta")
        d = ["--data", str(lake.data)]

        line = assert_one_line(cli("fsck", *d, env=lake.env), "metadata corrupt", "dump", "meta rebuild")
        assert "lost" not in line
        assert_one_line(cli("fsck", "--repair", *d, env=lake.env), "metadata corrupt")
        assert sequence_number(lake.data / "meta") == before  # --repair wrote nothing
        assert_one_line(cli("ls", "/", *d, env=lake.env), "metadata corrupt")
        assert_one_line(cli("dump", str(tmp_path / "x.dump"), *d, env=lake.env), "metadata corrupt")
        assert not (tmp_path / "x.dump").exists()  # never a silently shortened backup
        assert_one_line(cli("gc", *d, env=lake.env), "metadata corrupt")
        assert_one_line(cli("repair", *d, env=lake.env), "metadata corrupt")
        assert sequence_number(lake.data / "meta") == before

        res = cli("mount", str(lake.mnt), *d, env=lake.env, timeout=90)
        assert_one_line(res, "metadata corrupt")
        assert not is_mountpoint(lake.mnt)
    finally:
        lake.teardown()


@needs_fuse
@pytest.mark.timeout(400)
def test_corrupt_member_is_refused_then_rebuilt_from_the_others(tmp_path):
    with meta_cluster(tmp_path, member_args=("--snapshot-every", "20")) as cluster:
        src = tmp_path / "src"
        src.mkdir()
        for i in range(300):
            (src / f"f{i:03d}").write_bytes(b"%d" % i)
        meta_args = ["--meta", cluster.meta, "--secret-file", str(cluster.secret)]
        cli("import", str(src), "/", *meta_args, check=True, timeout=180)
        victim = cluster.members[2]
        others = [m for m in cluster.members if m is not victim]

        def caught_up(member_id: int):
            def check():
                rows = {r.get("id"): r for r in cluster.status()}
                leader = next((r for r in rows.values() if r.get("role") == "leader"), None)
                return leader and member_id in leader["voters"] and member_id in rows and \
                    rows[member_id]["last_applied"] == leader["last_applied"]
            return check
        wait_for(caught_up(victim.id), 60, "member 3 to hold everything", interval=0.2)
        victim.stop()
        settle_into_tables(victim.dir / "raft")
        flip_middle_of_largest_sst(victim.dir / "raft")

        # Started on a damaged log, the member refuses in one line naming the way out.
        res = cli("meta", "serve", "--id", str(victim.id), "--data", str(victim.dir), "--listen", victim.address,
                  "--secret-file", str(cluster.secret), timeout=60)
        assert_one_line(res, "corrupt", "meta rebuild")

        others_meta = ",".join(m.address for m in others)
        res = cli("meta", "rebuild", "--data", str(victim.dir), "--meta", others_meta,
                  "--secret-file", str(cluster.secret), timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "member 3 removed" in res.stdout
        rows = cluster.status()
        assert all(victim.id not in r["voters"] for r in rows if "voters" in r)

        victim.start()  # as before: no --peers, no --join; it rejoins by itself
        wait_for(caught_up(victim.id), 60, "the rebuilt member to rejoin and catch up", interval=0.2)
        assert not json.loads((victim.dir / "server.json").read_text()).get("rejoin")
        # Its copy is whole: the lake checks clean through any majority that includes it.
        others[0].stop()
        cluster.leader(among=[others[1], victim])
        res = cli("fsck", "--no-shards", *meta_args, "--json", timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["inodes"] == 301


# ------------------------------------------------------------------ repair onto a full peer

def set_peer(lake: LiveLake, peer_id: int, directory: Path, weight: float) -> None:
    """Record a directory peer (new, or re-weighted) straight into an unmounted lake's metadata."""
    from lakefs_fuse.meta.state import StateMachine
    sm = StateMachine(str(lake.data / "meta"))
    try:
        sm.apply(["register_peer", peer_id, ["dir", str(directory), "", weight, "up", {}]], sync=True)
    finally:
        sm.close()


def small_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def run_json(*args: str, env: dict) -> tuple[subprocess.CompletedProcess, dict]:
    res = cli(*args, "--json", env=env, timeout=120)
    return res, (json.loads(res.stdout) if res.stdout.strip().startswith("{") else {})


@needs_fuse
@pytest.mark.timeout(300)
def test_repair_skips_a_full_target_and_reports_what_it_cannot_place(tmp_path):
    full = tmp_path / "full"
    small_tmpfs(full, "1m")  # holds no 1 MiB shard: every put there is refused (ENOSPC/reserve)
    dirs = [tmp_path / f"p{i}" for i in range(5)] + [full / "p5"]
    lake = LiveLake(tmp_path / "lake", format_args=tuple(a for d in dirs for a in ("--peer", str(d))))
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_bytes(os.urandom(8 * MiB))  # two 4 MiB chunks, 1 MiB shards
        d = ["--data", str(lake.data)]
        cli("import", str(src), "/", *d, env=lake.env, check=True)  # p5 refused: committed with 5 of 6

        res, scrub = run_json("scrub", *d, env=lake.env)
        assert res.returncode == 3 and scrub["bad"] == {"missing": 2}, res.stdout + res.stderr
        res, status = run_json("status", *d, env=lake.env)
        assert res.returncode == 3, res.stderr  # degraded chunks: needs attention
        assert len(status["degraded"]) == 2 and status["missing_shards"] == 2  # what scrub found
        assert next(p for p in status["peers"] if p["id"] == 5)["missing"] == 2

        # Nowhere to put them (the only peer without a shard of these chunks is full): one line
        # per chunk, non-zero, no traceback, nothing recorded.
        res = cli("repair", *d, env=lake.env, timeout=120)
        assert res.returncode == 3, res.stdout + res.stderr
        assert "Traceback" not in res.stderr
        lines = [ln for ln in res.stdout.splitlines() if "not repaired" in ln]
        assert len(lines) == 2 and all("no peer could take it" in ln for ln in lines), res.stdout

        # A new peer: the full one still ranks first (weight 100), repair goes on to the next.
        set_peer(lake, 5, full / "p5", 100.0)
        set_peer(lake, 6, tmp_path / "p6", 1.0)
        (tmp_path / "p6").mkdir()
        res, report = run_json("repair", *d, env=lake.env)
        assert res.returncode == 0 and report["repaired"] == 2, res.stdout + res.stderr
        assert len(list((tmp_path / "p6").rglob("*.[0-9]"))) == 2
        res, scrub = run_json("scrub", *d, env=lake.env)
        assert res.returncode == 0 and scrub["bad"] == {}, res.stdout
        res, status = run_json("status", *d, env=lake.env)
        assert res.returncode == 0 and status["degraded"] == [] and status["missing_shards"] == 0
    finally:
        lake.teardown()
        subprocess.run(["umount", "-l", str(full)], check=False)


# ------------------------------------------------------------------ what scrub names; GC lines

def shard_file(lake: LiveLake, info: dict, extent: int, index: int) -> Path:
    """Where a directory peer keeps a shard (its address may be relative to the lake's directory)."""
    ext = info["extents"][extent]
    shard = ext["shards"][index]
    return Path(lake.data, shard["address"], f"{ext['chunk'] & 0xff:02x}", f"{ext['chunk']:016x}.{shard['index']}")


@pytest.mark.timeout(240)
def test_scrub_json_names_bad_shards_and_their_files(tmp_path):
    lake = LiveLake(tmp_path / "lake")
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "big").write_bytes(os.urandom(6 * MiB))
    (src / "small").write_bytes(os.urandom(300 * 1024))
    (src / "fine").write_bytes(os.urandom(5 * MiB))
    d = ["--data", str(lake.data)]
    cli("import", str(src), "/", *d, env=lake.env, check=True)
    big = json.loads(cli("stat", "/a/b/big", *d, "--json", env=lake.env, check=True).stdout)
    small = json.loads(cli("stat", "/small", *d, "--json", env=lake.env, check=True).stdout)
    fine = json.loads(cli("stat", "/fine", *d, "--json", env=lake.env, check=True).stdout)
    shard_file(lake, big, 0, 1).unlink()
    victim = shard_file(lake, small, 0, 0)
    raw = bytearray(victim.read_bytes())
    raw[-10] ^= 0xFF
    victim.write_bytes(bytes(raw))

    res, report = run_json("scrub", *d, env=lake.env)
    assert res.returncode == 3, res.stdout + res.stderr
    expected = sorted([
        [big["extents"][0]["chunk"], 1, big["extents"][0]["shards"][1]["peer"], "missing"],
        [small["extents"][0]["chunk"], 0, small["extents"][0]["shards"][0]["peer"], "corrupt"]])
    assert report["bad_shards"] == expected
    # import packs files into shared chunks: every file with data in a damaged chunk is named
    bad_chunks = {b[0] for b in expected}
    users = {path: sorted(bad_chunks & {e["chunk"] for e in info["extents"]})
             for path, info in (("/a/b/big", big), ("/small", small), ("/fine", fine))}
    assert report["files"] == [{"path": p, "chunks": c} for p, c in sorted(users.items()) if c]
    text = cli("scrub", *d, env=lake.env).stdout
    assert "in file /a/b/big" in text and f"chunk {expected[0][0]} shard {expected[0][1]}" in text


@needs_fuse
@pytest.mark.timeout(300)
def test_gc_without_a_metadata_majority_logs_one_line_per_pass(tmp_path):
    with meta_cluster(tmp_path) as cluster:
        mnt = cluster.mount("a", "--meta-timeout", "2")
        (mnt.mnt / "f").write_bytes(b"x" * 1000)
        log_file = tmp_path / "run" / ("mount-" + str(mnt.mnt.resolve()).strip("/").replace("/", "_") + ".log")
        start = log_file.stat().st_size
        stopped = cluster.members[:2]
        try:
            for m in stopped:
                m.stop()

            def failures():
                text = log_file.read_text()[start:]
                return text.count("garbage collection pass failed") >= 2 and text
            text = wait_for(failures, 90, "two failed GC passes in the mount log", interval=0.5)
            assert "Traceback" not in text, text[-3000:]
            lines = [ln for ln in text.splitlines() if "garbage collection pass failed" in ln]
            assert all("unavailable" in ln for ln in lines), lines
        finally:
            for m in stopped:
                if not m.alive():
                    m.start()
        cluster.leader()
        assert (mnt.mnt / "f").read_bytes() == b"x" * 1000


# ------------------------------------------------------------------ peers under a running mount

@needs_fuse
@pytest.mark.timeout(400)
def test_running_mount_follows_peer_add_remove_and_weight(tmp_path):
    with meta_cluster(tmp_path, n_peers=3) as cluster:  # EC 2+1: a chunk's 3 shards on 3 peers
        a = cluster.mount("a")
        meta_args = ["--meta", cluster.meta, "--secret-file", str(cluster.secret)]
        new = Peer(tmp_path, "peer3", cluster.secret)
        cluster.peers.append(new)  # stopped with the others
        new.start()
        res = cli("peer", "add", new.address, *meta_args)
        assert res.returncode == 0 and "added peer 3:" in res.stdout and "weight=1.0" in res.stdout, \
            res.stdout + res.stderr
        assert cli("peer", "remove", "0", *meta_args).returncode == 0
        names = (f"f{i}" for i in range(10000))

        def peers_of_a_new_file() -> set[int]:
            path = a.mnt / next(names)
            write_synced_file(path, os.urandom(300 * 1024))
            info = json.loads(cli("stat", str(path), "--json", env=a.env, check=True).stdout)
            return {s["peer"] for e in info["extents"] for s in e["shards"]}
        # No remount: new shards go to the added peer and no longer to the removed one.
        wait_for(lambda: peers_of_a_new_file() == {1, 2, 3}, 60, "the mount to place on peers 1-3")

        res = cli("peer", "add", cluster.peers[0].address, *meta_args)
        assert res.returncode == 0 and "added peer 0 back" in res.stdout, res.stdout + res.stderr
        res = cli("peer", "weight", "2", "0", *meta_args)
        assert res.returncode == 0 and "weight 1.0 -> 0.0" in res.stdout, res.stdout + res.stderr
        wait_for(lambda: peers_of_a_new_file() == {0, 1, 3}, 60, "the mount to follow the new weights")
        rows = {r["id"]: r for r in json.loads(cli("peer", "list", *meta_args, "--json", check=True).stdout)}
        assert rows[0]["state"] == "up" and rows[2]["weight"] == 0.0 and rows[3]["weight"] == 1.0
        res = cli("peer", "weight", "9", "2", *meta_args)
        assert res.returncode == 1 and "no peer 9" in res.stderr
