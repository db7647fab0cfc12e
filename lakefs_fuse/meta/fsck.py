"""What ``fsck`` finds in the metadata key space, and the fixes for it (pure: no I/O beyond the DB).

:func:`analyse` walks a :class:`~lakefs_fuse.meta.state.StateMachine` (an embedded lake's own, or
a snapshot of a cluster's) and returns the ``fsck`` command items that would make it consistent;
:func:`files_of_chunks` answers "which files use these chunks" for repair reports.
"""

from __future__ import annotations

import stat as st
from collections import Counter
from dataclasses import dataclass, field

from . import schema as S
from .schema import ROOT_INO, ChunkRecord, Inode
from .state import StateMachine


@dataclass
class FsckReport:
    inodes: int = 0
    entries: int = 0
    extents: int = 0
    chunks: int = 0
    problems: dict[str, list] = field(default_factory=dict)   # kind -> findings
    damaged_files: list[str] = field(default_factory=list)     # paths whose data lost a range
    fixed: int = 0
    shards: dict | None = None                                   # the shard check (scrub) report

    def add(self, kind: str, finding) -> None:
        self.problems.setdefault(kind, []).append(finding)

    @property
    def clean(self) -> bool:
        shards_bad = bool(self.shards and (self.shards.get("bad") or self.shards.get("lost")))
        return not self.problems and not shards_bad

    def to_json(self) -> dict:
        return {"inodes": self.inodes, "entries": self.entries, "extents": self.extents, "chunks": self.chunks,
                "problems": {k: [list(f) if isinstance(f, tuple) else f for f in v] for k, v in self.problems.items()},
                "damaged_files": self.damaged_files, "fixed": self.fixed, "shards": self.shards,
                "clean": self.clean}


def _u64(b: bytes) -> int:
    return int.from_bytes(b, "big")


def analyse(sm: StateMachine, report: FsckReport) -> list[list]:
    """Every finding in ``report``; returns the fixes (``fsck`` command items) for them."""
    fixes: list[list] = []
    inodes: dict[int, Inode] = {}
    for key, value in sm.scan(b"I"):
        inodes[_u64(key[1:9])] = Inode.from_bytes(_u64(key[1:9]), value)
    report.inodes = len(inodes)
    names: Counter[int] = Counter()
    where: dict[int, tuple[int, bytes]] = {}  # ino -> one (parent, name) naming it
    for key, value in sm.scan(b"D"):
        parent, name = _u64(key[1:9]), key[9:]
        ino = S.unpack(value)[0]
        report.entries += 1
        if ino not in inodes:
            report.add("dangling_entries", (parent, name.decode(errors="replace"), ino))
            fixes.append(["drop_dentry", parent, name])
            continue
        names[ino] += 1
        where.setdefault(ino, (parent, name))
    orphans = set(sm.orphans())
    lost = []
    for ino, inode in inodes.items():
        if ino == ROOT_INO:
            continue
        n = names[ino]
        if n == 0 and inode.nlink > 0:
            lost.append(ino)
        elif not inode.is_dir and inode.nlink != n and not (inode.nlink == 0 and ino in orphans):
            report.add("link_counts", (ino, inode.nlink, n))
            fixes.append(["set_nlink", ino, n])
    records: dict[int, ChunkRecord] = {}
    for key, value in sm.scan(b"C"):
        cid = S.chunk_id_of_key(key)
        records[cid] = ChunkRecord.from_bytes(cid, value)
    report.chunks = len(records)
    refs: Counter[int] = Counter()
    stale: set[int] = set()
    for key, value in sm.scan(b"E"):
        ino, index = _u64(key[1:9]), S.index_of_extent_key(key)
        if ino not in inodes:
            if ino not in stale:
                stale.add(ino)
                report.add("stale_extents", ino)
                fixes.append(["drop_extents", ino])
            continue
        for ext in S.unpack_extents(value):
            report.extents += 1
            rec = records.get(ext.chunk_id)
            if rec is None or ext.chunk_off + ext.length > rec.length:
                report.add("dangling_extents", (ino, index, ext.file_off, ext.chunk_id))
                fixes.append(["drop_extent", ino, index, ext.file_off])
                path = path_of(sm, ino, inodes, where)
                if path not in report.damaged_files:
                    report.damaged_files.append(path)
                continue
            refs[ext.chunk_id] += 1
    for cid, rec in records.items():
        if rec.refs != refs[cid] and not (rec.refs <= 0 and refs[cid] == 0):
            report.add("chunk_refs", (cid, rec.refs, refs[cid]))
            fixes.append(["set_refs", cid, refs[cid]])
    for ino in lost:
        report.add("lost_inodes", ino)
        fixes.append(["relink", ino, None, b"#%d" % ino])  # parent filled in at repair: lost+found
    return fixes


def path_of(sm: StateMachine, ino: int, inodes: dict[int, Inode], where: dict[int, tuple[int, bytes]]) -> str:
    parts: list[str] = []
    seen = set()
    while ino != ROOT_INO and ino in where and ino not in seen:
        seen.add(ino)
        parent, name = where[ino]
        parts.append(name.decode(errors="replace"))
        ino = parent
    return "/" + "/".join(reversed(parts)) if ino == ROOT_INO else f"<inode {ino}>/" + "/".join(reversed(parts))


def files_of_chunks(sm: StateMachine, chunk_ids: set[int], limit: int) -> list[dict]:
    """Up to ``limit`` files whose extents use any of ``chunk_ids``: [{"path", "chunks"}], by path.

    There is no index from chunks to files: this reads every extent once, then the directory
    entries naming those files and every directory (to spell their paths)."""
    users: dict[int, set[int]] = {}
    for key, value in sm.scan(b"E"):
        ino = _u64(key[1:9])
        if ino not in users and len(users) >= limit:
            continue
        hit = chunk_ids.intersection(e.chunk_id for e in S.unpack_extents(value))
        if hit:
            users.setdefault(ino, set()).update(hit)
    where: dict[int, tuple[int, bytes]] = {}
    for key, value in sm.scan(b"D"):
        ino, kind = S.unpack(value)[:2]
        if ino in users or kind == st.S_IFDIR:
            where.setdefault(ino, (_u64(key[1:9]), key[9:]))
    return sorted(({"path": path_of(sm, ino, {}, where), "chunks": sorted(cids)} for ino, cids in users.items()),
                  key=lambda f: f["path"])
