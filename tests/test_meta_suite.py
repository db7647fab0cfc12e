"""One metadata test suite, run against every engine: the embedded ``LocalMeta`` and a 3-server
Raft cluster (``RemoteMeta`` over three in-process ``MetaServer`` replicas).

Every test is written once against the :class:`~lakefs_fuse.meta.client.MetaClient` interface,
the way JuiceFS runs one meta suite against each of its engines; a test that passes on one
engine and fails on the other is a bug in the replication path (encoding of results, errno
mapping, exactly-once application), not in the state machine.

How it runs (harness in ``meta_engines.py``): the tests are plain functions; the engines live
on one trio loop in a thread of its own, and ``meta`` (a ``SyncMeta``) calls every MetaClient
method there and blocks for the answer, so a test reads ``meta.lookup(root, b"f")``. The Raft
cluster is started once per module (three servers on loopback ports, under a second to elect);
the embedded engine gets a fresh RocksDB per test. Each test works in a fresh directory of its
own (``meta.root``) and allocates its chunk ids with ``alloc_chunks``, so tests sharing the
cluster cannot see each other's files or chunks; lake-wide queries (orphans, delete queue, chunk
lists, sparse chunks) are checked for this test's inodes and chunks only.

Commands are built by ``meta_engines.command`` only (one place to change when they become typed).
"""

from __future__ import annotations

import errno
import stat as st
import time
from contextlib import contextmanager

import pytest
import trio

from lakefs_fuse import errors as E
from lakefs_fuse.meta.client import LocalMeta
from lakefs_fuse.meta.schema import ROOT_INO, ChunkRecord
from lakefs_fuse.meta.state import (
    EC_XATTR,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    XATTR_CREATE,
    XATTR_REPLACE,
    StateMachine,
)

from meta_engines import CS, PEERS, Portal, RaftCluster, SyncMeta, command, format_lake


@pytest.fixture(scope="module")
def portal():
    with Portal() as p:
        yield p


@pytest.fixture(scope="module")
def raft_cluster(portal, tmp_path_factory):
    """A formatted lake on a 3-server Raft cluster, shared by this module's raft3 tests."""
    cluster = RaftCluster(portal, tmp_path_factory.mktemp("raft3"))
    try:
        cluster.client = portal.call(cluster.start)
        format_lake(SyncMeta(cluster.client, portal, "raft3"))
        yield cluster
    finally:
        portal.call(cluster.stop)
        assert cluster.stopped.wait(30), "the metadata servers did not stop"


_test_dirs = iter(range(1, 1 << 30))


@pytest.fixture(params=["local", "raft3"])
def meta(request, portal, tmp_path):
    """A MetaClient of each engine (as a :class:`SyncMeta`), with a fresh directory ``meta.root``."""
    sm = None
    if request.param == "local":
        sm = StateMachine(str(tmp_path / "meta"), create=True)
        m = SyncMeta(LocalMeta(sm), portal, "local")
        format_lake(m)
    else:
        m = SyncMeta(request.getfixturevalue("raft_cluster").client, portal, "raft3")
    try:
        name = b"t%d-%s" % (next(_test_dirs), request.node.originalname.encode()[:200])
        m.root = m.do("mknod", ROOT_INO, name, st.S_IFDIR | 0o755, 0, 0, 0, 2)[0]
        yield m
    finally:
        if sm is not None:
            sm.close()


@contextmanager
def fails(code: int):
    """The block raises a LakeError carrying errno ``code`` (the errno FUSE would return)."""
    with pytest.raises(E.LakeError) as exc:
        yield exc
    assert exc.value.errno == code, f"{exc.value!r}: errno {exc.value.errno}, wanted {code}"


def mk(meta: SyncMeta, parent: int, name: bytes, kind: int = st.S_IFREG, mode: int = 0o644, now: int = 10) -> int:
    return meta.do("mknod", parent, name, kind | mode, 0, 0, 0, now)[0]


def mkdir(meta: SyncMeta, parent: int, name: bytes) -> int:
    return mk(meta, parent, name, st.S_IFDIR, 0o755)


def chunks(meta: SyncMeta, n: int) -> list[int]:
    """``n`` fresh chunk ids (unique across the lake, so across tests sharing a cluster)."""
    first = meta.do("alloc_chunks", n)
    return list(range(first, first + n))


def chunk(cid: int, length: int = CS) -> list:
    """A sealed chunk's record in wire form (4+2 on peers 0-5)."""
    return [cid, length, 4, 2, length // 4, [0, 1, 2, 3, 4, 5], [0] * 6]


def queued(meta: SyncMeta) -> set[int]:
    return {c for c, _ in meta.delete_queue(100000)}


def names(meta: SyncMeta, ino: int) -> list[bytes]:
    return [n for n, _, _ in meta.readdir(ino, 0, 100000)]


def pieces(meta: SyncMeta, ino: int, index: int = 0) -> list[tuple[int, int, int, int]]:
    return [(e.file_off, e.length, e.chunk_id, e.chunk_off) for e in meta.extents(ino, index, index)]


# ----------------------------------------------------------------------------- namespace


def test_mknod_lookup_readdir_and_dir_nlink(meta):
    root = meta.root
    d = mkdir(meta, root, b"d")
    f = mk(meta, d, b"f")
    assert meta.lookup(root, b"d").ino == d
    assert meta.getattr(root).nlink == 3
    assert meta.getattr(d).nlink == 2 and meta.getattr(d).parent == root
    assert names(meta, d) == [b"f"]
    attr = meta.getattr(f)
    assert attr.nlink == 1 and st.S_ISREG(attr.mode) and st.S_IMODE(attr.mode) == 0o644
    assert (attr.size, attr.mtime_ns, attr.ctime_ns) == (0, 10, 10)
    with fails(errno.EEXIST):
        mk(meta, d, b"f")
    with fails(errno.ENOTDIR):
        mk(meta, f, b"x")
    with fails(errno.ENAMETOOLONG):
        mk(meta, d, b"x" * 256)
    with fails(errno.EINVAL):
        mk(meta, d, b"a/b")
    longest = mk(meta, d, b"y" * 255)
    assert meta.lookup(d, b"y" * 255).ino == longest


def test_lookup_and_getattr_errors(meta):
    f = mk(meta, meta.root, b"f")
    with fails(errno.ENOENT):
        meta.lookup(meta.root, b"missing")
    with fails(errno.ENOTDIR):
        meta.lookup(f, b"x")
    with fails(errno.ENAMETOOLONG):
        meta.lookup(meta.root, b"n" * 256)
    with fails(errno.ENOENT):
        meta.getattr(f + 1_000_000)
    with fails(errno.ENOENT):
        mk(meta, f + 1_000_000, b"x")  # no such parent


def test_special_files_and_counters(meta):
    before = meta.count_inodes()
    fifo = mk(meta, meta.root, b"p", st.S_IFIFO, 0o600)
    dev = meta.do("mknod", meta.root, b"c", st.S_IFCHR | 0o600, 0x0501, 0, 0, 11)[0]
    assert st.S_ISFIFO(meta.getattr(fifo).mode)
    assert meta.getattr(dev).rdev == 0x0501 and st.S_ISCHR(meta.getattr(dev).mode)
    assert meta.count_inodes() >= before + 2
    with fails(errno.EINVAL):
        mk(meta, meta.root, b"l", st.S_IFLNK, 0o777)  # symlinks have their own command
    assert meta.format_record()["chunk_size"] == CS


def test_readdir_pages_through_a_big_directory(meta):
    want = [b"e%03d" % i for i in range(57)]
    for name in want:
        mk(meta, meta.root, name)
    seen, cookie, pages = [], 0, 0
    while page := meta.readdir(meta.root, cookie, 10):
        assert len(page) <= 10
        seen += [n for n, _, _ in page]
        assert all(inode.ino == meta.lookup(meta.root, n).ino for n, inode, _ in page)
        cookie = page[-1][2]
        pages += 1
    assert seen == want and pages == 6


def test_readdir_cookies_stable_while_directory_changes(meta):
    root = meta.root
    for i in range(10):
        mk(meta, root, b"f%d" % i)
    first = meta.readdir(root, 0, 5)
    assert [n for n, _, _ in first] == [b"f%d" % i for i in range(5)]
    meta.do("unlink", root, b"f2", 20)
    meta.do("unlink", root, b"f7", 20)
    mk(meta, root, b"new")
    rest = meta.readdir(root, first[-1][2], 100)
    assert [n for n, _, _ in rest] == [b"f5", b"f6", b"f8", b"f9", b"new"]


def test_hard_links_and_unlink_orphans(meta):
    root = meta.root
    f = mk(meta, root, b"f")
    meta.do("link", f, root, b"g", 50)
    assert meta.getattr(f).nlink == 2 and meta.lookup(root, b"g").ino == f
    with fails(errno.EPERM):
        meta.do("link", root, root, b"root2", 50)
    with fails(errno.EEXIST):
        meta.do("link", f, root, b"g", 50)
    assert meta.do("unlink", root, b"f", 51) == [f, 1]
    assert f not in meta.orphans()
    assert meta.do("unlink", root, b"g", 52) == [f, 0]
    assert f in meta.orphans()
    with fails(errno.ENOENT):
        meta.do("link", f, root, b"again", 52)  # no name left: it cannot get a new one
    assert meta.do("release", f, 53) is True
    assert f not in meta.orphans()
    with fails(errno.ENOENT):
        meta.getattr(f)
    with fails(errno.ENOENT):
        meta.do("unlink", root, b"f", 54)


def test_unlink_and_rmdir_rules(meta):
    root = meta.root
    d = mkdir(meta, root, b"d")
    mk(meta, d, b"f")
    with fails(errno.EISDIR):
        meta.do("unlink", root, b"d", 60)
    with fails(errno.ENOTEMPTY):
        meta.do("rmdir", root, b"d", 60)
    with fails(errno.ENOTDIR):
        meta.do("rmdir", d, b"f", 60)
    with fails(errno.ENOENT):
        meta.do("rmdir", root, b"nope", 60)
    meta.do("unlink", d, b"f", 61)
    assert meta.getattr(root).nlink == 3
    assert meta.do("rmdir", root, b"d", 62) == [d, 0]
    assert meta.getattr(root).nlink == 2 and names(meta, root) == []
    assert meta.getattr(root).mtime_ns == 62
    assert meta.getattr(d).nlink == 0 and d in meta.orphans()
    with fails(errno.ENOENT):
        mk(meta, d, b"late")  # a removed directory takes no new entries
    assert meta.do("release", d, 63) is True and d not in meta.orphans()


def test_release_keeps_a_linked_inode(meta):
    f = mk(meta, meta.root, b"f")
    assert meta.do("release", f, 70) is False  # not an orphan: nothing to free
    assert meta.getattr(f).nlink == 1
    assert meta.do("release", f + 1_000_000, 70) is False


# ----------------------------------------------------------------------------- rename


def test_rename_rules(meta):
    root = meta.root
    a = mkdir(meta, root, b"a")
    b = mkdir(meta, root, b"b")
    f = mk(meta, a, b"f")
    g = mk(meta, b, b"g")
    with fails(errno.EEXIST):
        meta.do("rename", a, b"f", b, b"g", RENAME_NOREPLACE, 30)
    with fails(errno.EISDIR):
        meta.do("rename", a, b"f", root, b"b", 0, 30)
    with fails(errno.ENOTDIR):
        meta.do("rename", root, b"a", b, b"g", 0, 30)
    with fails(errno.EINVAL):  # into its own subtree
        meta.do("rename", root, b"a", a, b"sub", 0, 30)
    with fails(errno.EINVAL):
        meta.do("rename", a, b"f", b, b"x", RENAME_NOREPLACE | RENAME_EXCHANGE, 30)
    with fails(errno.ENOENT):
        meta.do("rename", a, b"missing", b, b"x", 0, 30)
    with fails(errno.ENAMETOOLONG):
        meta.do("rename", a, b"f", b, b"x" * 256, 0, 30)
    assert meta.do("rename", a, b"f", b, b"g", 0, 30) == [f, g, 0]  # replaces g
    assert meta.lookup(b, b"g").ino == f and names(meta, a) == []
    assert meta.getattr(g).nlink == 0 and g in meta.orphans()
    assert meta.getattr(f).ctime_ns == 30
    # directory move updates both parents' nlink and the parent pointer
    c = mkdir(meta, a, b"c")
    meta.do("rename", a, b"c", b, b"c", 0, 31)
    assert meta.getattr(a).nlink == 2 and meta.getattr(b).nlink == 3 and meta.getattr(c).parent == b
    with fails(errno.ENOTEMPTY):  # a directory over a non-empty one
        meta.do("rename", root, b"a", root, b"b", 0, 32)
    # ... and over an empty one: the target goes away, the root loses its link
    assert meta.do("rename", b, b"c", root, b"a", 0, 33) == [c, a, 0]
    assert meta.lookup(root, b"a").ino == c and meta.getattr(c).parent == root
    assert meta.getattr(root).nlink == 4 and a in meta.orphans()


def test_rename_noreplace_and_two_names_of_one_file(meta):
    root = meta.root
    f = mk(meta, root, b"f")
    meta.do("link", f, root, b"g", 40)
    assert meta.do("rename", root, b"f", root, b"g", 0, 41) == [f, 0, 0]  # POSIX: nothing happens
    assert sorted(names(meta, root)) == [b"f", b"g"] and meta.getattr(f).nlink == 2
    meta.do("rename", root, b"f", root, b"h", RENAME_NOREPLACE, 42)
    assert sorted(names(meta, root)) == [b"g", b"h"] and meta.lookup(root, b"h").ino == f


def test_rename_exchange(meta):
    root = meta.root
    d = mkdir(meta, root, b"d")
    f = mk(meta, root, b"f")
    meta.do("rename", root, b"d", root, b"f", RENAME_EXCHANGE, 40)
    assert meta.lookup(root, b"d").ino == f and meta.lookup(root, b"f").ino == d
    e = mkdir(meta, d, b"e")
    meta.do("rename", d, b"e", root, b"d", RENAME_EXCHANGE, 41)  # dir <-> file across dirs
    assert meta.getattr(e).parent == root
    assert meta.getattr(root).nlink == 4 and meta.getattr(d).nlink == 2
    assert meta.lookup(d, b"e").ino == f
    with fails(errno.ENOENT):
        meta.do("rename", root, b"f", root, b"zz", RENAME_EXCHANGE, 42)
    with fails(errno.EINVAL):  # a directory swapped into its own subtree
        meta.do("rename", root, b"f", d, b"e", RENAME_EXCHANGE, 43)


# ----------------------------------------------------------------------------- attributes


def test_setattr_mode_owner_times_and_size(meta):
    f = mk(meta, meta.root, b"f")
    meta.do("setattr", f, {"mode": st.S_IFDIR | 0o4750}, 20)  # the type bits stay a file's
    attr = meta.getattr(f)
    assert st.S_ISREG(attr.mode) and st.S_IMODE(attr.mode) == 0o4750 and attr.ctime_ns == 20
    meta.do("setattr", f, {"uid": 1234, "gid": 5678}, 21)
    assert (meta.getattr(f).uid, meta.getattr(f).gid) == (1234, 5678)
    meta.do("setattr", f, {"atime_ns": 7, "mtime_ns": 8}, 22)
    assert (meta.getattr(f).atime_ns, meta.getattr(f).mtime_ns, meta.getattr(f).ctime_ns) == (7, 8, 22)
    meta.do("setattr", f, {"size": 5 * CS}, 23)  # extending makes a hole: no extents
    assert meta.getattr(f).size == 5 * CS and meta.getattr(f).mtime_ns == 23
    assert meta.extents(f, 0, 10) == []
    with fails(errno.EINVAL):
        meta.do("setattr", f, {"size": -1}, 24)
    with fails(errno.EISDIR):
        meta.do("setattr", meta.root, {"size": 0}, 24)
    fifo = mk(meta, meta.root, b"p", st.S_IFIFO, 0o600)
    with fails(errno.EINVAL):
        meta.do("setattr", fifo, {"size": 0}, 24)
    with fails(errno.ENOENT):
        meta.do("setattr", f + 1_000_000, {"mode": 0o600}, 24)


def test_setgid_directory_inheritance(meta):
    d = mk(meta, meta.root, b"d", st.S_IFDIR, 0o2775)
    meta.do("setattr", d, {"gid": 77}, 5)
    f = meta.do("mknod", d, b"f", st.S_IFREG | 0o644, 0, 1000, 1000, 6)[0]
    sub = meta.do("mknod", d, b"s", st.S_IFDIR | 0o755, 0, 1000, 1000, 6)[0]
    link = meta.do("symlink", d, b"l", b"f", 1000, 1000, 6)[0]
    assert meta.getattr(f).gid == 77 and meta.getattr(f).uid == 1000
    assert meta.getattr(sub).gid == 77 and meta.getattr(sub).mode & st.S_ISGID
    assert meta.getattr(link).gid == 77


def test_symlinks(meta):
    root = meta.root
    ino, raw = meta.do("symlink", root, b"l", b"some/target", 0, 0, 4)
    assert meta.readlink(ino) == b"some/target"
    attr = meta.getattr(ino)
    assert st.S_ISLNK(attr.mode) and attr.size == len(b"some/target") and attr.nlink == 1
    assert meta.lookup(root, b"l").ino == ino
    f = mk(meta, root, b"f")
    with fails(errno.EINVAL):
        meta.readlink(f)
    with fails(errno.EEXIST):
        meta.do("symlink", root, b"l", b"x", 0, 0, 5)
    with fails(errno.ENOENT):
        meta.do("symlink", root, b"empty", b"", 0, 0, 5)
    with fails(errno.ENAMETOOLONG):
        meta.do("symlink", root, b"long", b"t" * 4096, 0, 0, 5)
    meta.do("unlink", root, b"l", 6)
    meta.do("release", ino, 7)
    with fails(errno.EINVAL):  # the target went with the inode
        meta.readlink(ino)


def test_xattrs(meta):
    f = mk(meta, meta.root, b"f")
    meta.do("setxattr", f, b"user.a", b"1", 0, 1)
    meta.do("setxattr", f, b"user.b", b"\x00bin\xff", 0, 2)
    assert meta.getxattr(f, b"user.a") == b"1" and meta.getxattr(f, b"user.b") == b"\x00bin\xff"
    assert sorted(meta.listxattr(f)) == [b"user.a", b"user.b"]
    assert meta.getattr(f).ctime_ns == 2
    with fails(errno.EEXIST):
        meta.do("setxattr", f, b"user.a", b"2", XATTR_CREATE, 3)
    with fails(errno.ENODATA):
        meta.do("setxattr", f, b"user.c", b"2", XATTR_REPLACE, 3)
    meta.do("setxattr", f, b"user.a", b"2", XATTR_REPLACE, 3)
    meta.do("setxattr", f, b"user.c", b"", XATTR_CREATE, 3)
    assert meta.getxattr(f, b"user.a") == b"2" and meta.getxattr(f, b"user.c") == b""
    with fails(errno.ENODATA):
        meta.getxattr(f, b"user.none")
    with fails(errno.ENODATA):
        meta.do("removexattr", f, b"user.none", 4)
    with fails(errno.E2BIG):
        meta.do("setxattr", f, b"user.big", b"x" * 70000, 0, 4)
    with fails(errno.ERANGE):
        meta.do("setxattr", f, b"user." + b"n" * 251, b"v", 0, 4)
    meta.do("removexattr", f, b"user.a", 5)
    assert sorted(meta.listxattr(f)) == [b"user.b", b"user.c"]
    with fails(errno.ENOENT):
        meta.listxattr(f + 1_000_000)
    meta.do("unlink", meta.root, b"f", 6)
    meta.do("release", f, 7)
    with fails(errno.ENOENT):
        meta.getxattr(f, b"user.b")


def test_ec_profile_xattr_is_inherited(meta):
    d = mkdir(meta, meta.root, b"d")
    meta.do("setxattr", d, EC_XATTR, b" 2+1\n", 0, 1)
    assert meta.getattr(d).ec == 2 << 8 | 1 and meta.getxattr(d, EC_XATTR) == b"2+1"
    f = mk(meta, d, b"f")
    assert meta.getattr(f).ec == 2 << 8 | 1 and meta.getxattr(f, EC_XATTR) == b"2+1"
    with fails(errno.EINVAL):
        meta.do("setxattr", f, EC_XATTR, b"%d+1" % PEERS, 0, 2)  # needs K+M <= peers
    with fails(errno.EINVAL):
        meta.do("setxattr", f, EC_XATTR, b"two", 0, 2)
    meta.do("removexattr", f, EC_XATTR, 3)
    assert meta.getattr(f).ec == 0
    assert len(meta.peers()) == PEERS and {p.kind for p in meta.peers()} == {"dir"}


# ----------------------------------------------------------------------------- data


def test_alloc_chunks_hands_out_disjoint_ranges(meta):
    a = chunks(meta, 3)
    b = chunks(meta, 5)
    assert len(set(a + b)) == 8 and min(b) > max(a)
    assert meta.next_chunk_id() > max(b)


def test_commit_records_chunk_and_extents(meta):
    (c1,) = chunks(meta, 1)
    f = mk(meta, meta.root, b"f")
    stored = meta.stored_data()
    sizes = meta.do("commit", chunk(c1, 5000), [[f, 0, 3000, c1, 0], [f, 4000, 1000, c1, 3000]], {f: 77}, 60)
    assert sizes == {f: 5000}
    rec = meta.chunk(c1)
    assert isinstance(rec, ChunkRecord) and rec.to_wire() == chunk(c1, 5000) and rec.refs == 2
    assert c1 in {r.chunk_id for r in meta.chunks(c1 - 1, 10)}
    assert meta.stored_data() == stored + 5000
    assert pieces(meta, f) == [(0, 3000, c1, 0), (4000, 1000, c1, 3000)]
    attr = meta.getattr(f)
    assert (attr.size, attr.mtime_ns) == (5000, 77)
    assert c1 not in queued(meta)
    # a retried commit (its answer lost) keeps the reference count
    meta.do("commit", chunk(c1, 5000), [[f, 0, 3000, c1, 0], [f, 4000, 1000, c1, 3000]], {}, 61)
    assert meta.chunk(c1).refs == 2 and meta.stored_data() == stored + 5000
    with fails(errno.ENOENT):
        meta.chunk(c1 + 1_000_000)


def test_extents_shadow_and_refcounts(meta):
    c1, c2, c3 = chunks(meta, 3)
    f = mk(meta, meta.root, b"f")
    meta.do("commit", chunk(c1), [[f, 0, 3000, c1, 0]], {}, 60)
    meta.do("commit", chunk(c2), [[f, 1000, 500, c2, 0]], {}, 61)
    assert pieces(meta, f) == [(0, 1000, c1, 0), (1000, 500, c2, 0), (1500, 1500, c1, 1500)]
    assert meta.chunk(c1).refs == 2 and meta.chunk(c2).refs == 1
    assert meta.getattr(f).size == 3000
    # truncate down frees the tail piece of chunk 1 and trims the middle
    meta.do("setattr", f, {"size": 1200}, 62)
    assert [p[:3] for p in pieces(meta, f)] == [(0, 1000, c1), (1000, 200, c2)]
    assert meta.chunk(c1).refs == 1
    # overwrite everything: chunk 1 and 2 lose all references and are queued for GC
    meta.do("commit", chunk(c3), [[f, 0, 1200, c3, 0]], {}, 63)
    assert {c1, c2, c3} & queued(meta) == {c1, c2}
    meta.do("gc_done", [c1, c2])
    assert not {c1, c2} & queued(meta)
    with fails(errno.ENOENT):
        meta.chunk(c1)


def test_extents_split_at_file_index_boundary(meta):
    (c1,) = chunks(meta, 1)
    f = mk(meta, meta.root, b"f")
    meta.do("commit", chunk(c1, 2 * CS), [[f, CS - 10, 20, c1, 0]], {}, 70)
    assert pieces(meta, f, 0) == [(CS - 10, 10, c1, 0)]
    assert pieces(meta, f, 1) == [(CS, 10, c1, 10)]
    assert len(meta.extents(f, 0, 1)) == 2
    assert meta.chunk(c1).refs == 2


def test_unlinked_file_keeps_its_chunks_until_release(meta):
    (c4,) = chunks(meta, 1)
    f = mk(meta, meta.root, b"f")
    meta.do("commit", chunk(c4), [[f, 0, 100, c4, 0]], {}, 90)
    meta.do("unlink", meta.root, b"f", 91)
    assert meta.chunk(c4).refs == 1 and c4 not in queued(meta)  # still open somewhere: readable
    assert pieces(meta, f) == [(0, 100, c4, 0)]
    meta.do("release", f, 92)
    assert meta.chunk(c4).refs == 0 and c4 in queued(meta)
    assert meta.extents(f, 0, 10) == []


def test_commit_for_released_inode_queues_chunk(meta):
    (c9,) = chunks(meta, 1)
    f = mk(meta, meta.root, b"f")
    meta.do("unlink", meta.root, b"f", 80)
    meta.do("release", f, 80)
    assert meta.do("commit", chunk(c9), [[f, 0, 10, c9, 0]], {}, 81) == {}
    assert c9 in queued(meta)


def test_gc_done_keeps_a_chunk_referenced_again(meta):
    c1, c2 = chunks(meta, 2)
    f = mk(meta, meta.root, b"f")
    meta.do("commit", chunk(c1), [[f, 0, 100, c1, 0]], {}, 1)
    meta.do("commit", chunk(c2), [[f, 0, 100, c2, 0]], {}, 2)
    assert c1 in queued(meta)
    meta.do("commit", None, [[f, 0, 50, c1, 0]], {}, 3)  # a later piece points into it again
    meta.do("gc_done", [c1])
    assert meta.chunk(c1).refs == 1 and c1 not in queued(meta)


def test_relocate_moves_only_pieces_still_where_the_copy_came_from(meta):
    """Compaction's commit: a write that raced the copy wins; the old chunk is freed once
    nothing points into it; sizes, times and the usage counter's view of files stay."""
    c1, c2, c3, c5, c6 = chunks(meta, 5)
    f = mk(meta, meta.root, b"f")
    g = mk(meta, meta.root, b"g")
    meta.do("commit", chunk(c1), [[f, 0, 3000, c1, 0], [g, 0, 500, c1, 3000]], {}, 60)
    meta.do("commit", chunk(c2), [[f, 1000, 500, c2, 0]], {}, 61)  # overwritten after the copy was taken
    before = meta.getattr(f)
    moves = [[f, 0, 3000, c1, 0, 0], [g, 0, 500, c1, 3000, 3000]]
    assert meta.do("relocate", chunk(c5, 3500), moves, 62) == 2500 + 500
    assert pieces(meta, f) == [(0, 1000, c5, 0), (1000, 500, c2, 0), (1500, 1500, c5, 1500)]
    assert [(p[2], p[3]) for p in pieces(meta, g)] == [(c5, 3000)]
    assert meta.chunk(c5).refs == 3 and meta.chunk(c2).refs == 1
    assert c1 in queued(meta) and meta.chunk(c1).refs == 0
    after = meta.getattr(f)
    assert (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
    # A relocation whose every piece changed meanwhile leaves its new chunk unused: queued.
    meta.do("commit", chunk(c3), [[g, 0, 500, c3, 0]], {}, 63)
    assert meta.do("relocate", chunk(c6, 500), [[g, 0, 500, c5, 3000, 0]], 64) == 0
    assert c6 in queued(meta)
    usage = meta.sparse_chunks(0.5, 100000)
    mine = {c[0]: c for c in usage["chunks"] if c[0] in {c1, c2, c3, c5, c6}}
    assert sorted(mine) == [c2, c3]  # chunk 5 is mostly used; 2 and 3 hold 500 B of 1 MiB
    assert mine[c2][1:3] == [CS, 500] and mine[c3][1:3] == [CS, 500]
    assert sorted(map(tuple, mine[c2][3])) == [(f, 1000, 500, 0)]
    assert usage["live_bytes"] >= 2500 + 500 + 500


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_commands_all_apply_once(meta):
    """Commands in flight together (the FUSE layer sends them so): distinct names all land;
    of twenty creates of one name exactly one wins and the rest fail with EEXIST."""
    root = meta.root
    client = meta.client

    async def burst() -> list:
        results: list = []

        async def one(name: bytes) -> None:
            try:
                results.append(await client.apply(command("mknod", root, name, st.S_IFREG | 0o644, 0, 0, 0, 9)))
            except E.Exists as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, b"n%02d" % i)
            for _ in range(20):
                nursery.start_soon(one, b"same")
        return results

    t0 = time.monotonic()
    results = meta.portal.call(burst)
    assert len(results) == 40, f"{time.monotonic() - t0:.1f}s"
    assert sum(isinstance(r, E.Exists) for r in results) == 19
    assert sorted(names(meta, root)) == sorted([b"n%02d" % i for i in range(20)] + [b"same"])
    assert meta.getattr(root).mtime_ns == 9


# ----------------------------------------------------------------------------- replication


def test_raft_replicas_hold_the_same_state(raft_cluster, portal):
    """After the suite's commands (this runs last), every replica applied the same log to the
    same key space: a result the leader answered is the one the followers hold."""
    meta = SyncMeta(raft_cluster.client, portal, "raft3")
    mkdir(meta, ROOT_INO, b"replicated-%d" % time.time_ns())

    async def settled() -> list[bytes]:
        with trio.fail_after(10):
            while len({s.node.last_applied for s in raft_cluster.servers}) > 1 or \
                    max(s.node.commit_index for s in raft_cluster.servers) > raft_cluster.servers[0].node.last_applied:
                await trio.sleep(0.02)
        return [s.state.sm.dump()[0] for s in raft_cluster.servers]

    dumps = portal.call(settled)
    assert b"replicated-" in dumps[0]
    assert dumps[1] == dumps[0] and dumps[2] == dumps[0]
    assert raft_cluster.service.leader in raft_cluster.members.values()  # answers came from a member
