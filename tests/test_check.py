"""fsck, gc, dump and load on real lakes with injected damage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lakefs_fuse.meta import schema as S
from lakefs_fuse.meta.schema import ROOT_INO, Inode
from lakefs_fuse.meta.state import StateMachine

from conftest import LiveLake, cli, needs_fuse, take_down, wait_for, write_synced_file


def shard_files(lake: LiveLake, chunk_id: int) -> list[Path]:
    return sorted((lake.data / "peers").glob(f"p*/{chunk_id & 0xff:02x}/{chunk_id:016x}.*"))


def extents_of(sm: StateMachine, ino: int):
    return [e for _, v in sm.scan(S.extent_prefix(ino)) for e in S.unpack_extents(v)]


def ino_of(sm: StateMachine, *names: bytes) -> int:
    ino = ROOT_INO
    for name in names:
        ino = sm.lookup(ino, name).ino
    return ino


def run_json(*args: str, env: dict) -> tuple[int, dict]:
    res = cli(*args, "--json", env=env, timeout=180)
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout)


@needs_fuse
@pytest.mark.timeout(240)
def test_fsck_finds_and_repairs_injected_damage(make_live):
    lake = make_live(mount=False)
    lake.mount()
    a, b, c = os.urandom(200_000), os.urandom(3 << 20), os.urandom(50_000)
    write_synced_file(lake.mnt / "a", a)
    write_synced_file(lake.mnt / "b", b)
    write_synced_file(lake.mnt / "c", c)
    os.mkdir(lake.mnt / "d")
    write_synced_file(lake.mnt / "d" / "x", b"lost and found\n")
    os.link(lake.mnt / "b", lake.mnt / "b2")
    lake.umount()

    sm = StateMachine(str(lake.data / "meta"))
    try:
        ia, ib, ic, id_, ix = (ino_of(sm, b"a"), ino_of(sm, b"b"), ino_of(sm, b"c"), ino_of(sm, b"d"),
                               ino_of(sm, b"d", b"x"))
        chunk_a = extents_of(sm, ia)[0].chunk_id
        chunk_b = extents_of(sm, ib)[0].chunk_id
        chunk_c = extents_of(sm, ic)[0].chunk_id
        assert len({chunk_a, chunk_b, chunk_c}) == 3
        # a dangling extent: a's chunk record is gone
        sm.db.delete(S.chunk_key(chunk_a))
        # an orphaned chunk: c's entry, inode and extents are gone, its chunk still counts them
        sm.db.delete(S.dentry_key(ROOT_INO, b"c"))
        sm.db.delete(S.inode_key(ic))
        for key, _ in list(sm.scan(S.extent_prefix(ic))):
            sm.db.delete(key)
        # a wrong link count
        inode = Inode.from_bytes(ib, sm.db.get(S.inode_key(ib)))
        inode.nlink = 5
        sm.db.put(S.inode_key(ib), inode.to_bytes())
        # a lost inode: d/x's entry is gone
        sm.db.delete(S.dentry_key(id_, b"x"))
        # an entry naming nothing
        sm.db.put(S.dentry_key(ROOT_INO, b"ghost"), S.pack([999_999, 1, 999_999]))
        sm.sync()
    finally:
        sm.close()
    shard_files(lake, chunk_b)[0].unlink()  # a deleted shard

    code, report = run_json("fsck", "--data", str(lake.data), env=lake.env)
    assert code == 3 and not report["clean"]
    problems = report["problems"]
    assert problems["dangling_extents"][0][:2] == [ia, 0] and report["damaged_files"] == ["/a"]
    assert [p[0] for p in problems["chunk_refs"]] == [chunk_c]
    assert problems["link_counts"] == [[ib, 5, 2]]
    assert problems["lost_inodes"] == [ix]
    assert problems["dangling_entries"][0][1] == "ghost"
    assert report["shards"]["bad"] == {"missing": 1}

    code, report = run_json("fsck", "--data", str(lake.data), "--repair", env=lake.env)
    assert code == 0 and report["fixed"] == 5 and report["shards"]["repaired"] == 1
    code, report = run_json("fsck", "--data", str(lake.data), env=lake.env)
    assert code == 0 and report["clean"], report

    code, gc = run_json("gc", "--data", str(lake.data), env=lake.env)
    assert code == 0 and gc["deleted_chunks"] == 1 and not shard_files(lake, chunk_c)  # c's chunk freed

    lake.mount()
    assert (lake.mnt / "b").read_bytes() == b  # its lost shard rebuilt
    assert os.stat(lake.mnt / "b").st_nlink == 2
    assert (lake.mnt / "a").read_bytes() == bytes(len(a))  # the lost range reads as zeros
    assert (lake.mnt / "lost+found" / f"#{ix}").read_bytes() == b"lost and found\n"
    assert sorted(os.listdir(lake.mnt)) == ["a", "b", "b2", "d", "lost+found"]
    lake.umount()


@needs_fuse
@pytest.mark.timeout(180)
def test_gc_frees_orphan_shards_and_never_a_referenced_one(make_live):
    lake = make_live(mount=False)
    lake.mount()
    files = {f"f{i}": os.urandom(300_000 + i) for i in range(4)}
    for name, data in files.items():
        write_synced_file(lake.mnt / name, data)
    lake.umount()
    before = sorted(p for p in (lake.data / "peers").rglob("*.*") if p.is_file())
    assert before
    # a shard of no chunk (id 0 is never handed out), and a real shard copied to a peer its
    # chunk record does not name
    real = before[0]
    fake = real.parent.parent / "00" / f"{0:016x}.0"
    fake.parent.mkdir(exist_ok=True)
    shutil.copy(real, fake)
    peers = sorted(p for p in (lake.data / "peers").iterdir())
    other = next(p for p in peers if p != real.parent.parent)
    misplaced = other / real.parent.name / real.name  # a shard index lives on one peer only
    assert not misplaced.exists()
    misplaced.parent.mkdir(exist_ok=True)
    shutil.copy(real, misplaced)

    code, report = run_json("gc", "--data", str(lake.data), "--dry-run", env=lake.env)
    assert code == 0 and report["dry_run"] and len(report["orphan_shards"]) == 2
    assert fake.exists() and misplaced.exists()  # a dry run deletes nothing
    code, report = run_json("gc", "--data", str(lake.data), env=lake.env)
    assert code == 0 and report["deleted_shards"] == 2
    assert not fake.exists() and not misplaced.exists()
    assert sorted(p for p in (lake.data / "peers").rglob("*.*") if p.is_file()) == before  # nothing else
    code, report = run_json("fsck", "--data", str(lake.data), env=lake.env)
    assert code == 0 and report["clean"]
    lake.mount()
    for name, data in files.items():
        assert (lake.mnt / name).read_bytes() == data
    lake.umount()
    res = cli("gc", "--data", str(lake.data), env=lake.env)  # a second run finds nothing
    assert res.returncode == 0 and "orphan shards: 0" in res.stdout


@needs_fuse
@pytest.mark.timeout(180)
def test_dump_then_load_into_a_fresh_lake_reproduces_the_tree(make_live, tmp_path):
    lake = make_live(mount=False)
    restored = tmp_path / "restored"
    dump = tmp_path / "lake.dump"
    lake.mount()
    (lake.mnt / "dir" / "sub").mkdir(parents=True)
    tree = {"dir/a": os.urandom(10), "dir/sub/b": os.urandom(5 << 20), "top": b"x" * 70_000}
    for rel, data in tree.items():
        (lake.mnt / rel).write_bytes(data)
    os.symlink("dir/a", lake.mnt / "link")
    os.link(lake.mnt / "top", lake.mnt / "top2")
    os.setxattr(lake.mnt / "top", "user.label", b"cat")
    fd = os.open(lake.mnt, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    res = cli("dump", str(dump), "--data", str(lake.data), env=lake.env)  # beside the live mount
    assert res.returncode == 0, res.stderr
    lake.umount()

    res = cli("load", str(dump), "--data", str(restored), env=lake.env)
    assert res.returncode == 0, res.stderr
    other = LiveLake(tmp_path / "other", format_args=None)
    other.data = restored
    other.mount()
    try:
        for rel, data in tree.items():
            assert (other.mnt / rel).read_bytes() == data, rel
        assert os.readlink(other.mnt / "link") == "dir/a"
        assert os.stat(other.mnt / "top").st_ino == os.stat(other.mnt / "top2").st_ino
        assert os.getxattr(other.mnt / "top", "user.label") == b"cat"
        assert sorted(os.listdir(other.mnt)) == ["dir", "link", "top", "top2"]
    finally:
        take_down(other.mnt, other.pid())

    damaged = tmp_path / "damaged.dump"
    raw = bytearray(dump.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(raw)
    for bad, message in ((damaged, "checksum mismatch"), (None, "not a complete lakefs-fuse dump")):
        if bad is None:
            bad = tmp_path / "short.dump"
            bad.write_bytes(dump.read_bytes()[:1000])
        res = cli("load", str(bad), "--data", str(tmp_path / "nope"), env=lake.env)
        assert res.returncode == 1 and message in res.stderr
        assert not (tmp_path / "nope").exists()
    res = cli("load", str(dump), "--data", str(restored), env=lake.env)
    assert res.returncode == 1 and "not empty" in res.stderr
    res = cli("load", str(dump), "--meta", "127.0.0.1:1", "--secret-file", str(lake.data / "secret"),
              env=lake.env)  # shards in local directories cannot serve a cluster's mounts
    assert res.returncode == 1 and "local directories" in res.stderr
    res = cli("load", str(dump), env=lake.env)
    assert res.returncode == 1 and "give --data" in res.stderr


@needs_fuse
@pytest.mark.timeout(120)
def test_bench_runs_on_a_mount_and_leaves_nothing(live):
    (live.mnt / "keep").write_bytes(b"mine")
    code, report = run_json("bench", str(live.mnt), "--big-size", "16M", "--small-count", "40",
                            "--small-size", "8K", "--threads", "2", env=live.env)
    assert code == 0
    phases = {p["phase"]: p for p in report["phases"]}
    assert list(phases) == ["write big file", "read big file", "write small files", "read small files",
                            "stat small files", "delete"]
    assert phases["read big file"]["ops"] == 16 and phases["read big file"]["MB_per_s"] > 0
    assert phases["stat small files"]["ops"] == 40 and phases["delete"]["ops"] == 42
    assert os.listdir(live.mnt) == ["keep"]
    res = cli("bench", str(live.mnt / "keep"), env=live.env)
    assert res.returncode != 0


@needs_fuse
@pytest.mark.timeout(240)
def test_fsck_gc_dump_on_a_cluster_lake(tmp_path):
    from test_metacluster import meta_cluster

    with meta_cluster(tmp_path) as cluster:
        mnt = cluster.mount("m1")
        files = {f"f{i}": os.urandom(100_000 + i) for i in range(5)}
        for name, data in files.items():
            (mnt.mnt / name).write_bytes(data)
        os.unlink(mnt.mnt / "f4")  # its chunk goes to the delete queue
        lake = ["--meta", cluster.meta, "--secret-file", str(cluster.secret)]
        code, report = run_json("fsck", *lake, env=mnt.env)  # beside the live mount
        assert code == 0 and report["clean"] and report["inodes"] >= 5, report
        # f4's chunk is queued once the mount frees the unlinked inode: on a shared lake that waits
        # a few seconds (another mount may have just looked it up: vfs._maybe_release).
        def gc_dry_run():
            code, report = run_json("gc", *lake, "--grace", "0", "--dry-run", env=mnt.env)
            assert code == 0 and report["orphan_shards"] == [] and not report["unreachable_peers"]
            return report["queued_chunks"] >= 1
        wait_for(gc_dry_run, 30, "f4's chunk to be queued for deletion", interval=0.5)
        dump = tmp_path / "cluster.dump"
        res = cli("dump", str(dump), *lake, env=mnt.env)
        assert res.returncode == 0, res.stderr
        mnt.umount()

        restored = tmp_path / "restored"
        res = cli("load", str(dump), "--data", str(restored), "--secret-file", str(cluster.secret), env=mnt.env)
        assert res.returncode == 0, res.stderr
        other = LiveLake(tmp_path / "other", format_args=None)
        other.data = restored
        other.mount()  # an embedded lake now, reading the cluster's peer servers
        try:
            for name in ("f0", "f1", "f2", "f3"):
                assert (other.mnt / name).read_bytes() == files[name]
            assert not (other.mnt / "f4").exists()
        finally:
            take_down(other.mnt, other.pid())

        # Migration onto new metadata servers: the same dump loaded onto a fresh cluster.
        from test_metacluster import ClusterMount, Member, free_ports
        fresh = [Member(tmp_path / "fresh", i + 1, f"127.0.0.1:{p}", cluster.secret)
                 for i, p in enumerate(free_ports(3))]
        (tmp_path / "fresh").mkdir()
        founders = ",".join(f"{m.id}={m.address}" for m in fresh)
        try:
            for m in fresh:
                m.start("--peers", founders)
            addresses = ",".join(m.address for m in fresh)
            res = cli("load", str(dump), "--meta", addresses, "--secret-file", str(cluster.secret), env=mnt.env,
                      timeout=120)
            assert res.returncode == 0, res.stderr
            res = cli("load", str(dump), "--meta", addresses, "--secret-file", str(cluster.secret), env=mnt.env)
            assert res.returncode == 1 and "already hold a lake" in res.stderr
            moved = ClusterMount(tmp_path, "moved", addresses, cluster.secret)
            moved.mount()
            try:
                for name in ("f0", "f1", "f2", "f3"):
                    assert (moved.mnt / name).read_bytes() == files[name]
                (moved.mnt / "new").write_bytes(b"written after the move")  # a working lake
                assert (moved.mnt / "new").read_bytes() == b"written after the move"
            finally:
                moved.teardown()
        finally:
            for m in fresh:
                m.stop()
