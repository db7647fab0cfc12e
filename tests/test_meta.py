"""The metadata state machine on a real RocksDB in a temp dir: commands, errnos, extents, refs."""

from __future__ import annotations

import errno
import stat as st

import pytest

from lakefs_fuse import errors as E
from lakefs_fuse.meta.schema import ROOT_INO, ChunkRecord
from lakefs_fuse.meta.state import RENAME_EXCHANGE, RENAME_NOREPLACE, StateMachine

CS = 1 << 20


@pytest.fixture
def sm(tmp_path):
    s = StateMachine(str(tmp_path / "meta"), create=True)
    s.apply(["format", {"ec_k": 4, "ec_m": 2, "chunk_size": CS, "min_shard": 65536}, 1, 0, 0])
    yield s
    s.close()


def mk(sm, parent, name, kind=st.S_IFREG, mode=0o644):
    return sm.apply(["mknod", parent, name, kind | mode, 0, 0, 0, 10])[0]


def chunk(cid, length=CS):
    return [cid, length, 4, 2, length // 4, [0, 1, 2, 3, 4, 5], [0] * 6]


def test_mknod_lookup_readdir_and_dir_nlink(sm):
    d = mk(sm, ROOT_INO, b"d", st.S_IFDIR, 0o755)
    f = mk(sm, d, b"f")
    assert sm.lookup(ROOT_INO, b"d").ino == d
    assert sm.getattr(ROOT_INO).nlink == 3
    assert sm.getattr(d).nlink == 2 and sm.getattr(d).parent == ROOT_INO
    assert [n for n, _, _ in sm.readdir(d, 0, 100)] == [b"f"]
    assert sm.getattr(f).nlink == 1
    with pytest.raises(E.Exists):
        mk(sm, d, b"f")
    with pytest.raises(E.NotADir):
        mk(sm, f, b"x")
    with pytest.raises(E.NameTooLong):
        mk(sm, d, b"x" * 256)
    mk(sm, d, b"y" * 255)


def test_failed_command_writes_nothing(sm):
    before = list(sm.db.items())
    with pytest.raises(E.NotFound):
        sm.apply(["unlink", ROOT_INO, b"nope", 5])
    assert list(sm.db.items()) == before


def test_readdir_cookies_stable_while_directory_changes(sm):
    for i in range(10):
        mk(sm, ROOT_INO, b"f%d" % i)
    first = sm.readdir(ROOT_INO, 0, 5)
    assert [n for n, _, _ in first] == [b"f%d" % i for i in range(5)]
    sm.apply(["unlink", ROOT_INO, b"f2", 20])
    sm.apply(["unlink", ROOT_INO, b"f7", 20])
    mk(sm, ROOT_INO, b"new")
    rest = sm.readdir(ROOT_INO, first[-1][2], 100)
    assert [n for n, _, _ in rest] == [b"f5", b"f6", b"f8", b"f9", b"new"]


def test_rename_rules(sm):
    a = mk(sm, ROOT_INO, b"a", st.S_IFDIR, 0o755)
    b = mk(sm, ROOT_INO, b"b", st.S_IFDIR, 0o755)
    f = mk(sm, a, b"f")
    g = mk(sm, b, b"g")
    with pytest.raises(E.Exists):
        sm.apply(["rename", a, b"f", b, b"g", RENAME_NOREPLACE, 30])
    with pytest.raises(E.IsADir):
        sm.apply(["rename", a, b"f", ROOT_INO, b"b", 0, 30])
    with pytest.raises(E.NotADir):
        sm.apply(["rename", ROOT_INO, b"a", b, b"g", 0, 30])
    with pytest.raises(E.Invalid):  # into its own subtree
        sm.apply(["rename", ROOT_INO, b"a", a, b"sub", 0, 30])
    sm.apply(["rename", a, b"f", b, b"g", 0, 30])  # replaces g
    assert sm.lookup(b, b"g").ino == f
    assert sm.getattr(g).nlink == 0 and g in sm.orphans()
    assert sm.getattr(f).ctime_ns == 30
    # directory move updates both parents' nlink and the parent pointer
    c = mk(sm, a, b"c", st.S_IFDIR, 0o755)
    sm.apply(["rename", a, b"c", b, b"c", 0, 31])
    assert sm.getattr(a).nlink == 2 and sm.getattr(b).nlink == 3 and sm.getattr(c).parent == b
    with pytest.raises(E.NotEmpty):
        sm.apply(["rename", ROOT_INO, b"a", ROOT_INO, b"b", 0, 32])


def test_rename_exchange(sm):
    d = mk(sm, ROOT_INO, b"d", st.S_IFDIR, 0o755)
    f = mk(sm, ROOT_INO, b"f")
    sm.apply(["rename", ROOT_INO, b"d", ROOT_INO, b"f", RENAME_EXCHANGE, 40])
    assert sm.lookup(ROOT_INO, b"d").ino == f and sm.lookup(ROOT_INO, b"f").ino == d
    e = mk(sm, d, b"e", st.S_IFDIR, 0o755)
    sm.apply(["rename", d, b"e", ROOT_INO, b"d", RENAME_EXCHANGE, 41])  # dir <-> file across dirs
    assert sm.getattr(e).parent == ROOT_INO
    assert sm.getattr(ROOT_INO).nlink == 4 and sm.getattr(d).nlink == 2
    with pytest.raises(E.NotFound):
        sm.apply(["rename", ROOT_INO, b"f", ROOT_INO, b"zz", RENAME_EXCHANGE, 42])


def test_hard_links_and_unlink_orphans(sm):
    f = mk(sm, ROOT_INO, b"f")
    sm.apply(["link", f, ROOT_INO, b"g", 50])
    assert sm.getattr(f).nlink == 2
    with pytest.raises(E.NotPermitted):
        sm.apply(["link", ROOT_INO, ROOT_INO, b"root2", 50])
    assert sm.apply(["unlink", ROOT_INO, b"f", 51]) == [f, 1]
    assert f not in sm.orphans()
    assert sm.apply(["unlink", ROOT_INO, b"g", 52]) == [f, 0]
    assert f in sm.orphans()
    assert sm.apply(["release", f, 53]) is True
    with pytest.raises(E.NotFound):
        sm.getattr(f)


def test_extents_shadow_and_refcounts(sm):
    f = mk(sm, ROOT_INO, b"f")
    sm.apply(["commit", chunk(1), [[f, 0, 3000, 1, 0]], {}, 60])
    sm.apply(["commit", chunk(2), [[f, 1000, 500, 2, 0]], {}, 61])
    ext = sm.extents(f, 0, 0)
    assert [(e.file_off, e.length, e.chunk_id, e.chunk_off) for e in ext] == [
        (0, 1000, 1, 0), (1000, 500, 2, 0), (1500, 1500, 1, 1500)]
    assert sm.chunk(1).refs == 2 and sm.chunk(2).refs == 1
    assert sm.getattr(f).size == 3000
    # truncate down frees the tail piece of chunk 1 and trims the middle
    sm.apply(["setattr", f, {"size": 1200}, 62])
    ext = sm.extents(f, 0, 0)
    assert [(e.file_off, e.length, e.chunk_id) for e in ext] == [(0, 1000, 1), (1000, 200, 2)]
    assert sm.chunk(1).refs == 1
    # overwrite everything: chunk 1 and 2 lose all references and are queued for GC
    sm.apply(["commit", chunk(3), [[f, 0, 1200, 3, 0]], {}, 63])
    queued = {c for c, _ in sm.delete_queue()}
    assert queued == {1, 2}
    sm.apply(["gc_done", [1, 2]])
    with pytest.raises(E.NotFound):
        sm.chunk(1)


def test_extents_split_at_file_index_boundary(sm):
    f = mk(sm, ROOT_INO, b"f")
    sm.apply(["commit", chunk(1, 2 * CS), [[f, CS - 10, 20, 1, 0]], {}, 70])
    assert [(e.file_off, e.length) for e in sm.extents(f, 0, 0)] == [(CS - 10, 10)]
    assert [(e.file_off, e.length, e.chunk_off) for e in sm.extents(f, 1, 1)] == [(CS, 10, 10)]
    assert sm.chunk(1).refs == 2


def test_commit_for_released_inode_queues_chunk(sm):
    f = mk(sm, ROOT_INO, b"f")
    sm.apply(["unlink", ROOT_INO, b"f", 80])
    sm.apply(["release", f, 80])
    sm.apply(["commit", chunk(9), [[f, 0, 10, 9, 0]], {}, 81])
    assert 9 in {c for c, _ in sm.delete_queue()}


def test_release_drops_refs(sm):
    f = mk(sm, ROOT_INO, b"f")
    sm.apply(["commit", chunk(4), [[f, 0, 100, 4, 0]], {}, 90])
    sm.apply(["unlink", ROOT_INO, b"f", 91])
    sm.apply(["release", f, 92])
    assert sm.chunk(4).refs == 0 and 4 in {c for c, _ in sm.delete_queue()}


def test_xattrs_and_symlinks(sm):
    f = mk(sm, ROOT_INO, b"f")
    sm.apply(["setxattr", f, b"user.a", b"1", 0, 1])
    assert sm.getxattr(f, b"user.a") == b"1"
    assert sm.listxattr(f) == [b"user.a"]
    with pytest.raises(E.NoData):
        sm.getxattr(f, b"user.b")
    with pytest.raises(E.NoData):
        sm.apply(["removexattr", f, b"user.b", 2])
    with pytest.raises(E.TooBig) as exc:
        sm.apply(["setxattr", f, b"user.big", b"x" * 70000, 0, 3])
    assert exc.value.errno == errno.E2BIG
    ino, _ = sm.apply(["symlink", ROOT_INO, b"l", b"f", 0, 0, 4])
    assert sm.readlink(ino) == b"f" and st.S_ISLNK(sm.getattr(ino).mode) and sm.getattr(ino).size == 1


def test_setgid_directory_inheritance(sm):
    d = mk(sm, ROOT_INO, b"d", st.S_IFDIR, 0o2775)
    sm.apply(["setattr", d, {"gid": 77}, 5])
    f = sm.apply(["mknod", d, b"f", st.S_IFREG | 0o644, 0, 1000, 1000, 6])[0]
    sub = sm.apply(["mknod", d, b"s", st.S_IFDIR | 0o755, 0, 1000, 1000, 6])[0]
    assert sm.getattr(f).gid == 77
    assert sm.getattr(sub).gid == 77 and sm.getattr(sub).mode & st.S_ISGID


def test_state_survives_reopen(tmp_path):
    path = str(tmp_path / "m")
    s = StateMachine(path, create=True)
    s.apply(["format", {"ec_k": 4, "ec_m": 2, "chunk_size": CS, "min_shard": 65536}, 1, 0, 0])
    f = mk(s, ROOT_INO, b"keep")
    s.apply(["commit", chunk(1), [[f, 0, 10, 1, 0]], {}, 2])
    s.close()
    s = StateMachine(path)
    assert s.lookup(ROOT_INO, b"keep").size == 10
    assert ChunkRecord.from_bytes(1, s.db.get(b"C" + (1).to_bytes(8, "big"))).refs == 1
    s.close()


def test_relocate_moves_only_pieces_still_where_the_copy_came_from(sm):
    """Compaction's commit: a write that raced the copy wins; the old chunk is freed once
    nothing points into it; sizes, times and the usage counter's view of files stay."""
    f = mk(sm, ROOT_INO, b"f")
    g = mk(sm, ROOT_INO, b"g")
    sm.apply(["commit", chunk(1), [[f, 0, 3000, 1, 0], [g, 0, 500, 1, 3000]], {}, 60])
    sm.apply(["commit", chunk(2), [[f, 1000, 500, 2, 0]], {}, 61])  # overwritten after the copy was taken
    before = sm.getattr(f)
    moves = [[f, 0, 3000, 1, 0, 0], [g, 0, 500, 1, 3000, 3000]]
    moved = sm.apply(["relocate", chunk(5, 3500), moves, 62])
    assert moved == 2500 + 500
    assert [(e.file_off, e.length, e.chunk_id, e.chunk_off) for e in sm.extents(f, 0, 0)] == [
        (0, 1000, 5, 0), (1000, 500, 2, 0), (1500, 1500, 5, 1500)]
    assert [(e.chunk_id, e.chunk_off) for e in sm.extents(g, 0, 0)] == [(5, 3000)]
    assert sm.chunk(5).refs == 3 and sm.chunk(2).refs == 1
    assert 1 in {c for c, _ in sm.delete_queue()} and sm.chunk(1).refs == 0
    after = sm.getattr(f)
    assert (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
    # A relocation whose every piece changed meanwhile leaves its new chunk unused: queued.
    sm.apply(["commit", chunk(3), [[g, 0, 500, 3, 0]], {}, 63])
    assert sm.apply(["relocate", chunk(6, 500), [[g, 0, 500, 5, 3000, 0]], 64]) == 0
    assert 6 in {c for c, _ in sm.delete_queue()}
    usage = sm.sparse_chunks(0.5, 10)
    assert usage["live_bytes"] == 3000 + 500  # chunk 5 is mostly used; 2 and 3 hold 500 B of 1 MiB
    assert sorted(c[0] for c in usage["chunks"]) == [2, 3]
