"""What is particular to the embedded engine: a failed command writes nothing to RocksDB, and
the state survives closing and reopening the database.

Everything a MetaClient can observe (commands, errnos, extents, refcounts, xattrs) is tested
once for every engine in ``test_meta_suite.py``.
"""

from __future__ import annotations

import stat as st

import pytest

from lakefs_fuse import errors as E
from lakefs_fuse.meta.schema import ROOT_INO, ChunkRecord
from lakefs_fuse.meta.state import StateMachine

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


def test_failed_command_writes_nothing(sm):
    before = list(sm.db.items())
    with pytest.raises(E.NotFound):
        sm.apply(["unlink", ROOT_INO, b"nope", 5])
    assert list(sm.db.items()) == before


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
