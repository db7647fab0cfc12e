"""The catalogue of metadata commands (``meta/commands.py``): every command's wire form is the
list written before the catalogue existed (byte for byte once packed: Raft logs and clusters made
then replay unchanged), decoding is strict, and the state machine has a handler for every command
that takes exactly the command's fields."""

from __future__ import annotations

import inspect
import stat as st

import pytest

from lakefs_fuse import errors as E
from lakefs_fuse.meta import commands as C
from lakefs_fuse.meta import schema as S
from lakefs_fuse.meta.raftlog import unpack
from lakefs_fuse.meta.schema import ROOT_INO, ChunkRecord, PeerRecord
from lakefs_fuse.meta.state import HANDLERS, StateMachine

CS = 1 << 20
CHUNK = [7, 3000, 4, 2, 768, [0, 1, 2, 3, 4, 5], [11, 12, 13, 14, 15, 16]]

#: One wire list per command (two for some), in the exact form the call sites wrote before the
#: catalogue: these are what existing Raft logs hold.
WIRE = [
    ["format", {"ec_k": 4, "ec_m": 2, "chunk_size": CS, "min_shard": 65536}, 1, 0, 0],
    ["init_usage"],
    ["mknod", ROOT_INO, b"f", st.S_IFREG | 0o644, 0, 1000, 1000, 10],
    ["symlink", ROOT_INO, b"l", b"f", 0, 0, 4],
    ["link", 5, ROOT_INO, b"g", 50],
    ["unlink", ROOT_INO, b"f", 51],
    ["rmdir", ROOT_INO, b"d", 52],
    ["rename", ROOT_INO, b"a", 6, b"b", C.RENAME_NOREPLACE, 30],
    ["setattr", 5, {"size": 10, "mode": 0o600, "atime_ns": 3}, 23],
    ["setxattr", 5, b"user.a", b"1", C.XATTR_CREATE, 1],
    ["removexattr", 5, b"user.a", 2],
    ["release", 5, 53],
    ["commit", CHUNK, [[5, 0, 1000, 7, 0], [6, 4096, 2000, 7, 1000]], {5: 99}, 60],
    ["commit", None, [[5, 0, 10, 3, 0]], {}, 61],
    ["relocate", CHUNK, [[5, 0, 1000, 3, 0, 0], [6, 4096, 2000, 4, 100, 1000]], 62],
    ["move_shard", 7, 2, 3, 4],
    ["alloc_chunks", 64],
    ["gc_done", [1, 2, 3]],
    ["register_peer", 0, ["dir", "peers/p0", "", 1.0, "up", {}]],
    ["register_peer", 3, ["net", "10.0.0.1:7000", "rack1", 2, "drain", {"x": 1}]],
    ["set_meta_member", 2, "127.0.0.1:7001"],
    ["set_meta_member", 2, None],
    ["load_keys", [[b"F", b"\x80"], [b"I" + S.u64(1), b"\x90"]], True],
    ["import_files", [CHUNK], [[ROOT_INO, b"n", 0o644, 0, 0, [[0, 100, 7, 0]]], [ROOT_INO, b"e", 0o600, 1, 2, []]], 70],
    ["fsck", [["drop_dentry", ROOT_INO, b"x"], ["set_nlink", 5, 1], ["relink", 6, 9, b"#6"],
              ["drop_extent", 5, 0, 4096], ["drop_extents", 8], ["set_refs", 7, 0]], 26],
]


def test_the_samples_cover_the_catalogue():
    assert {w[0] for w in WIRE} == set(C.COMMANDS)
    # (by name: ``dataclass(slots=True)`` leaves the class it replaced among the subclasses)
    assert {cls.__name__ for cls in C.COMMANDS.values()} == {cls.__name__ for cls in _subclasses(C.Command)}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@pytest.mark.parametrize("wire", WIRE, ids=lambda w: w[0] if isinstance(w, list) else None)
def test_every_command_round_trips_to_the_identical_wire_list(wire):
    cmd = C.decode(wire)
    assert type(cmd) is C.COMMANDS[wire[0]]
    assert cmd.to_wire() == wire
    assert S.pack(cmd.to_wire()) == S.pack(wire)  # the same bytes in a Raft log entry
    assert C.decode(unpack(S.pack(wire))) == cmd  # what a server decodes from the log
    assert C.decode(cmd.to_wire()) == cmd


def test_commands_have_named_fields():
    cmd = C.decode(["setattr", 5, {"size": 10}, 23])
    assert cmd == C.Setattr(ino=5, changes={"size": 10}, now=23)
    assert cmd.fields() == {"ino": 5, "changes": {"size": 10}, "now": 23}
    commit = C.decode(WIRE[12])
    assert isinstance(commit, C.Commit)
    assert commit.chunk == ChunkRecord(7, 3000, 4, 2, 768, [0, 1, 2, 3, 4, 5], [11, 12, 13, 14, 15, 16])
    assert commit.extents[1] == C.CommitExtent(ino=6, file_off=4096, length=2000, chunk_id=7, chunk_off=1000)
    assert C.decode(WIRE[14]).moves[0].old_chunk == 3
    assert C.decode(WIRE[18]) == C.RegisterPeer(PeerRecord(0, "dir", "peers/p0", "", 1.0, "up", {}))
    fsck = C.decode(WIRE[-1])
    assert fsck.fixes[2] == C.Relink(ino=6, parent=9, name=b"#6")
    assert fsck.fixes[3].file_index == 0
    with pytest.raises(AttributeError):
        cmd.ino = 6  # frozen


def test_typed_commands_built_by_callers_encode_like_the_old_lists():
    assert C.Mknod(ROOT_INO, b"lost+found", st.S_IFDIR | 0o700, 0, 0, 0, 9).to_wire() == \
        ["mknod", ROOT_INO, b"lost+found", st.S_IFDIR | 0o700, 0, 0, 0, 9]
    assert C.MoveShard(1, 2, 3, 4).to_wire() == ["move_shard", 1, 2, 3, 4]
    assert C.Relocate(ChunkRecord.from_wire(CHUNK), [C.RelocateMove(5, 0, 10, 3, 0, 0)], 1).to_wire() == \
        ["relocate", CHUNK, [[5, 0, 10, 3, 0, 0]], 1]
    # a record's reference count is not part of a commit's chunk
    rec = ChunkRecord(*CHUNK, refs=5)
    assert C.Commit(rec, [], {}, 1).to_wire() == ["commit", CHUNK, [], {}, 1]
    assert C.Fsck([C.Relink(6, None, b"#6")._replace(parent=9)], 2).to_wire() == ["fsck", [["relink", 6, 9, b"#6"]], 2]
    assert C.InitUsage().to_wire() == ["init_usage"]


@pytest.mark.parametrize("wire, message", [
    (None, "malformed metadata command"),
    ([], "malformed metadata command"),
    ("mknod", "malformed metadata command"),
    ([5, 1], "malformed metadata command"),
    (["frobnicate", 1], "unknown metadata command 'frobnicate'"),
    (["_cmd_format"], "unknown metadata command"),
    (["setattr", 5, {}], "takes 3 fields, got 2"),
    (["setattr", 5, {}, 1, 2], "takes 3 fields, got 4"),
    (["init_usage", 1], "takes 0 fields"),
    (["commit", CHUNK, [[5, 0, 10, 3]], {}, 1], "malformed metadata command 'commit'"),
    (["commit", CHUNK[:6], [], {}, 1], "a chunk is"),
    (["commit", CHUNK, [], {}], "malformed metadata command 'commit'"),
    (["relocate", None, [], 1], "a chunk is"),
    (["register_peer", 0, "dir"], "register_peer takes"),
    (["register_peer", 0, ["dir", "a", "", 1.0, "up", {}, "extra"]], "malformed metadata command"),
    (["fsck", [["drop_everything", 1]], 1], "unknown fsck fix 'drop_everything'"),
    (["fsck", [["set_refs", 1]], 1], "malformed metadata command 'fsck'"),
    (["fsck", [[]], 1], "malformed fsck fix"),
])
def test_decode_rejects_malformed_commands(wire, message):
    with pytest.raises(E.Invalid, match=message):
        C.decode(wire)


def test_every_handler_takes_exactly_its_commands_fields():
    assert set(HANDLERS) == set(C.COMMANDS.values())
    for cls, handler in HANDLERS.items():
        params = list(inspect.signature(handler).parameters.values())
        assert params[0].name == "txn", handler
        assert [p.name for p in params[1:]] == [f for f in cls.__dataclass_fields__], handler
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), handler


@pytest.fixture
def sm(tmp_path):
    s = StateMachine(str(tmp_path / "meta"), create=True)
    yield s
    s.close()


def test_state_machine_refuses_malformed_commands_and_writes_nothing(sm):
    sm.apply(WIRE[0])
    before = list(sm.db.items())
    for bad in (["frobnicate"], ["mknod", ROOT_INO, b"f"], [], ["fsck", [["nope"]], 1]):
        with pytest.raises(E.Invalid):
            sm.apply(bad)
    assert list(sm.db.items()) == before


def test_typed_and_wire_commands_build_the_same_state(tmp_path):
    """The embedded lake applies typed commands directly; a metadata server applies the wire
    lists it decodes from its log. Both must end in the same key space."""
    script = [
        C.Format({"ec_k": 4, "ec_m": 2, "chunk_size": CS, "min_shard": 65536}, 1, 0, 0),
        C.RegisterPeer(PeerRecord(0, "dir", "peers/p0", "", 1.0, "up", {})),
        C.Mknod(ROOT_INO, b"d", st.S_IFDIR | 0o755, 0, 0, 0, 2),
        C.Mknod(ROOT_INO, b"f", st.S_IFREG | 0o644, 0, 0, 0, 3),
        C.AllocChunks(4),
        C.Commit(ChunkRecord(1, 3000, 4, 2, 768, [0] * 6, [0] * 6), [C.CommitExtent(3, 0, 3000, 1, 0)], {3: 4}, 5),
        C.Setattr(3, {"size": 1000}, 6),
        C.Link(3, 2, b"g", 7),
        C.Rename(2, b"g", ROOT_INO, b"h", 0, 8),
        C.Setxattr(3, b"user.a", b"1", 0, 9),
        C.Relocate(ChunkRecord(2, 1000, 4, 2, 256, [0] * 6, [0] * 6), [C.RelocateMove(3, 0, 1000, 1, 0, 0)], 10),
        C.Unlink(ROOT_INO, b"f", 11),
        C.Unlink(ROOT_INO, b"h", 12),
        C.Release(3, 13),
        C.GcDone([1, 2]),
        C.Fsck([C.SetRefs(2, 0)], 14),
        C.SetMetaMember(1, "127.0.0.1:1"),
        C.InitUsage(),
    ]
    typed = StateMachine(str(tmp_path / "typed"), create=True)
    wired = StateMachine(str(tmp_path / "wired"), create=True)
    try:
        for cmd in script:
            assert typed.apply(cmd) == wired.apply(unpack(S.pack(cmd.to_wire())))
        assert typed.dump() == wired.dump()
    finally:
        typed.close()
        wired.close()
