"""``import_files``: an import's many files in one command, one WriteBatch, one Raft entry.

The command applied to a state machine directly (per-file results, each file whole, collisions
reported, the chunk queued when nothing uses it, its wire form), exactly-once on a retried
``(client id, seq)`` through a real 3-server cluster, and ``lakefs-fuse import`` into that
cluster with the leader killed in the middle: every file there once with its bytes, or named in
the report -- never lost silently.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
import trio

from lakefs_fuse import errors as E
from lakefs_fuse.meta import bulk
from lakefs_fuse.meta import schema as S
from lakefs_fuse.meta.commands import (
    IMPORT_MAX_FILES,
    Commit,
    CommitExtent,
    Format,
    ImportFile,
    ImportFiles,
    Mknod,
    decode,
)
from lakefs_fuse.meta.schema import ROOT_INO, ChunkRecord
from lakefs_fuse.meta.state import StateMachine

from conftest import CLI, REPO, cli, wait_for
from test_metacluster import meta_cluster

CHUNK = 1 << 20


@pytest.fixture
def sm(tmp_path):
    machine = StateMachine(str(tmp_path / "db"), create=True)
    machine.apply(Format({"chunk_size": CHUNK, "ec_k": 2, "ec_m": 1}, 1, 0, 0))
    try:
        yield machine
    finally:
        machine.close()


def chunk(chunk_id: int, length: int) -> ChunkRecord:
    return ChunkRecord(chunk_id, length, 2, 1, (length + 1) // 2, [1, 2, 3], [0, 0, 0])


def files_in(chunk_id: int, names: list[bytes], size: int = 100, parent: int = ROOT_INO) -> list[ImportFile]:
    return [ImportFile(parent, name, 0o640, 7, 8, [[0, size, chunk_id, i * size]]) for i, name in enumerate(names)]


def keys(sm: StateMachine) -> dict[bytes, bytes]:
    return dict(sm.scan(b""))


def test_files_created_with_their_extents_in_one_batch(sm):
    names = [b"f%03d" % i for i in range(300)]
    results = sm.apply(ImportFiles([chunk(5, 30_000)], files_in(5, names), 1000))
    assert len(results) == 300 and all(isinstance(r, int) for r in results)
    assert len(set(results)) == 300
    for name, ino in zip(names, results, strict=True):
        inode = sm.lookup(ROOT_INO, name)
        assert inode.ino == ino and inode.is_reg and inode.size == 100 and inode.mode & 0o7777 == 0o640
        assert (inode.uid, inode.gid, inode.mtime_ns) == (7, 8, 1000)
        [ext] = sm.extents(ino, 0, 0)
        assert (ext.chunk_id, ext.length) == (5, 100)
    rec = sm.chunk(5)
    assert rec.refs == 300 and sm.delete_queue() == []
    assert sm.stored_data() == 30_000


def test_same_records_as_mknod_then_commit(sm, tmp_path):
    """A file made by import_files is recorded exactly as one made by mknod + commit: extents split
    at file-index boundaries, pieces that continue each other glued, references, sizes, usage."""
    rec = chunk(6, 3 * CHUNK)
    extents = {b"a": [[0, 100, 6, 0]],
               b"b": [[0, CHUNK + 500, 6, 100], [CHUNK + 500, 300, 6, 2 * CHUNK]],  # two indexes, two pieces
               b"c": [[10, 50, 6, CHUNK + 600], [60, 40, 6, CHUNK + 650]],  # glued: continues in the chunk
               b"e": []}
    results = sm.apply(ImportFiles([rec], [ImportFile(ROOT_INO, n, 0o644, 1, 2, e) for n, e in extents.items()], 5))
    assert all(isinstance(r, int) for r in results)
    other = StateMachine(str(tmp_path / "other"), create=True)
    try:
        other.apply(Format({"chunk_size": CHUNK, "ec_k": 2, "ec_m": 1}, 1, 0, 0))
        inos = {n: other.apply(Mknod(ROOT_INO, n, 0o100644, 0, 1, 2, 5))[0] for n in extents}
        other.apply(Commit(rec, [CommitExtent(inos[n], *e) for n, es in extents.items() for e in es],
                           {ino: 5 for ino in inos.values()}, 5))
        assert keys(sm) == keys(other)
    finally:
        other.close()
    assert sm.chunk(6).refs == 5 and sm.lookup(ROOT_INO, b"b").size == CHUNK + 800


def test_collisions_are_reported_and_the_others_created(sm):
    sm.apply(Mknod(ROOT_INO, b"taken", 0o100644, 0, 0, 0, 1))
    files = files_in(9, [b"a", b"taken", b"b", b"a", b"x/y", b""])
    files.append(ImportFile(424242, b"orphan", 0o644, 0, 0, []))  # no such directory
    results = sm.apply(ImportFiles([chunk(9, 600)], files, 2))
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert results[1][0] == E.Exists.errno and results[3][0] == E.Exists.errno  # a name taken twice
    assert results[4][0] == E.Invalid.errno and results[5][0] == E.Invalid.errno
    assert results[6][0] == E.NotFound.errno
    assert sm.chunk(9).refs == 2
    assert [n for n, _, _ in sm.readdir(ROOT_INO, 0, 100)] == [b"taken", b"a", b"b"]


def test_a_file_that_fails_half_way_leaves_nothing(sm, monkeypatch):
    """The nested transaction: a file whose extents fail after its inode and entry were made
    leaves no inode, entry, counter step or reference; the files around it are created."""
    files = files_in(3, [b"a", b"b", b"c"])
    reference = StateMachine(str(Path(sm.path).parent / "ref"), create=True)
    try:
        reference.apply(Format({"chunk_size": CHUNK, "ec_k": 2, "ec_m": 1}, 1, 0, 0))
        reference.apply(ImportFiles([chunk(3, 300)], [files[0], files[2]], 5))

        real, calls = S.extent_key, []

        def failing(ino, index):
            calls.append(ino)
            if len(calls) == 2:  # the second file's extents, after its inode and entry were made
                raise E.NoSpace("injected")
            return real(ino, index)
        monkeypatch.setattr(bulk.S, "extent_key", failing)
        results = sm.apply(ImportFiles([chunk(3, 300)], files, 5))
        assert results[1] == [E.NoSpace.errno, "injected"] and isinstance(results[2], int)
        with pytest.raises(E.NotFound):
            sm.lookup(ROOT_INO, b"b")
        assert keys(sm) == keys(reference)  # byte for byte what importing a and c alone writes
    finally:
        reference.close()


def test_a_chunk_nothing_uses_is_queued_and_bounds_are_checked(sm):
    sm.apply(Mknod(ROOT_INO, b"a", 0o100644, 0, 0, 0, 1))
    results = sm.apply(ImportFiles([chunk(4, 100)], files_in(4, [b"a"]), 3))
    assert results[0][0] == E.Exists.errno
    assert [cid for cid, _ in sm.delete_queue()] == [4]
    before = keys(sm)
    too_many = files_in(4, [b"n%d" % i for i in range(IMPORT_MAX_FILES + 1)], size=0)
    with pytest.raises(E.Invalid):
        sm.apply(ImportFiles([chunk(11, 100)], too_many, 4))
    with pytest.raises(E.Invalid):
        sm.apply(ImportFiles([chunk(12, 100), chunk(12, 100)], [], 4))
    assert keys(sm) == before  # refused whole: nothing written


def test_wire_form_round_trips_and_malformed_is_refused():
    cmd = ImportFiles([chunk(5, 200)], files_in(5, [b"a", b"b"]), 9)
    wire = cmd.to_wire()
    assert wire[0] == "import_files"
    assert decode(S.unpack(S.pack(wire))) == cmd
    for bad in (["import_files", [], [[1, b"a", 0o644, 0, 0, [5]]], 1],   # an extent that is not a list
                ["import_files", [[1, 2]], [], 1],                           # a chunk that is not one
                ["import_files", [], [[1, b"a"]], 1],                        # a file missing fields
                ["import_files", [], []]):                                   # a field missing
        with pytest.raises(E.Invalid):
            decode(bad)


def test_embedded_import_uses_batches_and_old_servers_are_one_user_error(tmp_path, monkeypatch):
    """An embedded lake imports through the same import_files path; metadata servers that do not
    know the command (an older version) stop the import with one UserError, not a list of failures."""
    from lakefs_fuse.admin import ingest
    from lakefs_fuse.admin.importer import import_tree
    from lakefs_fuse.lake.lake import Lake
    from lakefs_fuse.meta.client import LocalMeta

    src = tmp_path / "src"
    files = _tree(src, 40, 2)
    cli("format", "--data", str(tmp_path / "lake"), check=True)
    real, sent = LocalMeta.apply, []

    async def recording(self, cmd, *, sync=False):
        sent.append(type(cmd).__name__)
        if isinstance(cmd, ImportFiles) and "old" in sent:
            raise E.Invalid("unknown metadata command 'import_files'")
        return await real(self, cmd, sync=sync)
    monkeypatch.setattr(LocalMeta, "apply", recording)

    async def run(dest: str):
        async with Lake.open(tmp_path / "lake", lock=True).closing() as lake, \
                ingest.writing(lake, pack_delay=0) as vfs:
            return await import_tree(vfs, src, dest)
    report = trio.run(run, "/in")
    assert report.files == 40 and report.failed == []
    assert sent.count("ImportFiles") == 1 and "Mknod" in sent and "Commit" not in sent  # the 2 dirs: mknod
    assert _read_all_embedded(tmp_path / "lake", files)
    sent.append("old")
    with pytest.raises(E.UserError, match="older lakefs-fuse"):
        trio.run(run, "/again")


def _read_all_embedded(lake: Path, files: dict[str, bytes]) -> bool:
    import lakefs_fuse

    with lakefs_fuse.connect(lake, read_only=True) as client:
        return all(client.read_bytes(f"/in/{rel}") == data for rel, data in files.items())


# --------------------------------------------------------------------------- a real cluster


async def _apply_twice(meta: str, secret: Path, wire: list) -> tuple:
    from lakefs_fuse.meta.remote import MetaService
    async with MetaService(meta.split(","), secret.read_text().strip().encode()) as service:
        args = {"c": 4242, "s": 1}
        first = S.unpack((await service.call("apply", args, S.pack(wire)))[1])
        again = S.unpack((await service.call("apply", args, S.pack(wire)))[1])  # a retry: same id and seq
        listing = S.unpack((await service.call("query", {"q": "readdir"}, S.pack([ROOT_INO, 0, 100])))[1])
    return first, again, listing


@pytest.mark.timeout(240)
def test_cluster_batch_retried_with_the_same_seq_applies_once(tmp_path):
    with meta_cluster(tmp_path) as cluster:
        secret = cluster.secret
        wire = ImportFiles([], [ImportFile(ROOT_INO, b"e%d" % i, 0o644, 0, 0, []) for i in range(50)],
                           time.time_ns()).to_wire()
        first, again, listing = trio.run(_apply_twice, cluster.meta, secret, wire)
        assert all(isinstance(r, int) for r in first) and again == first  # not 50 x EEXIST
        assert sorted(row[0] for row in listing) == sorted(b"e%d" % i for i in range(50))


def _tree(src: Path, n: int, dirs: int) -> dict[str, bytes]:
    rng = random.Random(5)
    files = {}
    for i in range(n):
        rel = f"d{i % dirs}/f{i:05d}"
        files[rel] = i.to_bytes(4, "little") + rng.randbytes(rng.randrange(0, 3000))
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(files[rel])
    return files


def _shard_files(root: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(root))


@pytest.mark.timeout(600)
def test_cluster_import_with_the_leader_killed_loses_nothing(tmp_path):
    src = tmp_path / "src"
    files = _tree(src, 8000, 12)
    with meta_cluster(tmp_path) as cluster:
        where = ["--meta", cluster.meta, "--secret-file", str(cluster.secret)]
        shards_before = _shard_files(cluster.peers[0].dir)
        old = cluster.leader()  # found first: the kill must land while the import runs
        proc = subprocess.Popen([*CLI, "import", str(src), "/in", *where, "--json", "--jobs", "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        try:
            # Kill the leader once the import has stored a few chunks (it is then committing batches).
            wait_for(lambda: _shard_files(cluster.peers[0].dir) >= shards_before + 4 or proc.poll() is not None,
                     120, "the import to store chunks", interval=0.02)
            old.kill9()
            assert proc.poll() is None, "the import finished before the leader was killed"
            cluster.leader(among=[m for m in cluster.members if m is not old])
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode in (0, 3), err.decode()
        report = json.loads(out)
        failed = {rel for rel, _why in report["failed"]}
        assert failed <= set(files) and report["files"] + len(failed) == len(files), report["failed"][:5]
        got = _read_all(cluster.meta, cluster.secret, sorted({rel.split("/")[0] for rel in files}))
        for rel, data in files.items():
            if rel in failed:
                assert got.get(rel) in (None, data), rel  # named as not imported: absent or whole
            else:
                assert got.get(rel) == data, rel
        assert set(got) <= set(files)
        print(f"imported {report['files']}, named as failed {len(failed)}")
        # A rerun completes it: what is there is skipped, the rest imported.
        res = cli("import", str(src), "/in", *where, "--json", timeout=300)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["files"] + json.loads(res.stdout)["skipped"] == len(files)


def _read_all(meta: str, secret: Path, dirs: list[str]) -> dict[str, bytes]:
    """Every file under /in: relative path -> bytes (through the in-process client)."""
    import lakefs_fuse

    out = {}
    with lakefs_fuse.connect(meta=meta, secret_file=secret) as lake:
        for d in dirs:
            names = lake.listdir(f"/in/{d}")
            assert len(names) == len(set(names))
            for name in names:
                out[f"{d}/{name}"] = lake.read_bytes(f"/in/{d}/{name}")
    return out
