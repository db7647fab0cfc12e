"""What ``fsck`` finds in the metadata key space, and the ``fsck`` command that fixes it.

:func:`analyse` walks a :class:`~lakefs_fuse.meta.state.StateMachine` (an embedded lake's own, or
a snapshot of a cluster's) and returns the fixes (:data:`~.commands.FsckFix`) that would make it
consistent; :func:`files_of_chunks` answers "which files use these chunks" for repair reports.
Both are pure reads. :func:`apply_fixes` is the handler of the :class:`~.commands.Fsck` command:
it re-checks every fix against the state it is applied to, so a finding that went stale between
the analysis and the command changes nothing.

Imports: :mod:`.schema`, :mod:`.commands`, :mod:`.txn` (the state machine only for its type).
"""

from __future__ import annotations

import stat as st
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import errors as E
from . import schema as S
from .commands import DropDentry, DropExtent, DropExtents, FsckFix, Relink, SetNlink, SetRefs
from .schema import ROOT_INO, ChunkRecord, Extent, Inode
from .txn import Txn

if TYPE_CHECKING:
    from .state import StateMachine


@dataclass
class FsckReport:
    inodes: int = 0
    entries: int = 0
    extents: int = 0
    chunks: int = 0
    problems: dict[str, list[Any]] = field(default_factory=dict)   # kind -> findings
    damaged_files: list[str] = field(default_factory=list)     # paths whose data lost a range
    fixed: int = 0
    shards: dict[str, Any] | None = None                         # the shard check (scrub) report

    def add(self, kind: str, finding: Any) -> None:
        self.problems.setdefault(kind, []).append(finding)

    @property
    def clean(self) -> bool:
        shards_bad = bool(self.shards and (self.shards.get("bad") or self.shards.get("lost")))
        return not self.problems and not shards_bad

    def to_json(self) -> dict[str, Any]:
        return {"inodes": self.inodes, "entries": self.entries, "extents": self.extents, "chunks": self.chunks,
                "problems": {k: [list(f) if isinstance(f, tuple) else f for f in v] for k, v in self.problems.items()},
                "damaged_files": self.damaged_files, "fixed": self.fixed, "shards": self.shards,
                "clean": self.clean}


def analyse(sm: StateMachine, report: FsckReport) -> list[FsckFix]:
    """Every finding in ``report``; returns the fixes for them (a :class:`~.commands.Relink`'s
    parent is None: the caller names lost+found)."""
    fixes: list[FsckFix] = []
    inodes: dict[int, Inode] = {}
    for key, value in sm.scan(S.INODE_PREFIX):
        ino = S.ino_of_inode_key(key)
        inodes[ino] = Inode.from_bytes(ino, value)
    report.inodes = len(inodes)
    names: Counter[int] = Counter()
    where: dict[int, tuple[int, bytes]] = {}  # ino -> one (parent, name) naming it
    for key, value in sm.scan(S.DENTRY_PREFIX):
        parent, name = S.dentry_of_key(key)
        ino = S.unpack(value)[0]
        report.entries += 1
        if ino not in inodes:
            report.add("dangling_entries", (parent, name.decode(errors="replace"), ino))
            fixes.append(DropDentry(parent, name))
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
            fixes.append(SetNlink(ino, n))
    records: dict[int, ChunkRecord] = {}
    for key, value in sm.scan(S.CHUNK_PREFIX):
        cid = S.chunk_id_of_key(key)
        records[cid] = ChunkRecord.from_bytes(cid, value)
    report.chunks = len(records)
    refs: Counter[int] = Counter()
    stale: set[int] = set()
    for key, value in sm.scan(S.EXTENT_PREFIX):
        ino, index = S.ino_of_extent_key(key), S.index_of_extent_key(key)
        if ino not in inodes:
            if ino not in stale:
                stale.add(ino)
                report.add("stale_extents", ino)
                fixes.append(DropExtents(ino))
            continue
        for ext in S.unpack_extents(value):
            report.extents += 1
            rec = records.get(ext.chunk_id)
            if rec is None or ext.chunk_off + ext.length > rec.length:
                report.add("dangling_extents", (ino, index, ext.file_off, ext.chunk_id))
                fixes.append(DropExtent(ino, index, ext.file_off))
                path = path_of(sm, ino, inodes, where)
                if path not in report.damaged_files:
                    report.damaged_files.append(path)
                continue
            refs[ext.chunk_id] += 1
    for cid, rec in records.items():
        if rec.refs != refs[cid] and not (rec.refs <= 0 and refs[cid] == 0):
            report.add("chunk_refs", (cid, rec.refs, refs[cid]))
            fixes.append(SetRefs(cid, refs[cid]))
    for ino in lost:
        report.add("lost_inodes", ino)
        fixes.append(Relink(ino, None, b"#%d" % ino))  # parent filled in at repair: lost+found
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


def files_of_chunks(sm: StateMachine, chunk_ids: set[int], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` files whose extents use any of ``chunk_ids``: [{"path", "chunks"}], by path.

    There is no index from chunks to files: this reads every extent once, then the directory
    entries naming those files and every directory (to spell their paths)."""
    users: dict[int, set[int]] = {}
    for key, value in sm.scan(S.EXTENT_PREFIX):
        ino = S.ino_of_extent_key(key)
        if ino not in users and len(users) >= limit:
            continue
        hit = chunk_ids.intersection(e.chunk_id for e in S.unpack_extents(value))
        if hit:
            users.setdefault(ino, set()).update(hit)
    where: dict[int, tuple[int, bytes]] = {}
    for key, value in sm.scan(S.DENTRY_PREFIX):
        ino, kind = S.unpack(value)[:2]
        if ino in users or kind == st.S_IFDIR:
            where.setdefault(ino, S.dentry_of_key(key))
    return sorted(({"path": path_of(sm, ino, {}, where), "chunks": sorted(cids)} for ino, cids in users.items()),
                  key=lambda f: f["path"])


# ----------------------------------------------------------------------------- the fsck command


def apply_fixes(txn: Txn, *, fixes: list[FsckFix], now: int) -> int:
    """Handler of :class:`~.commands.Fsck`: each fix re-checked here (a stale finding is a
    no-op). Returns how many changes were made."""
    done = 0
    for fix in fixes:
        fixer = _FIXERS.get(type(fix))
        if fixer is None:
            raise E.Invalid(f"unknown fsck fix {fix!r}")
        done += fixer(txn, fix, now)
    return done


def _drop_dentry(txn: Txn, fix: DropDentry, now: int) -> int:
    entry = txn.dentry(fix.parent, fix.name)
    if entry is None or txn.get(S.inode_key(entry[0])) is not None:
        return 0
    txn.del_dentry(fix.parent, fix.name, entry)
    return 1


def _set_nlink(txn: Txn, fix: SetNlink, now: int) -> int:
    data = txn.get(S.inode_key(fix.ino))
    if data is None:
        return 0
    inode = Inode.from_bytes(fix.ino, data)
    if inode.nlink == fix.n or inode.is_dir:
        return 0
    inode.nlink = fix.n
    inode.ctime_ns = now
    txn.put_inode(inode)
    if fix.n == 0:
        txn.put(S.orphan_key(fix.ino), b"")
    else:
        txn.delete(S.orphan_key(fix.ino))
    return 1


def _relink(txn: Txn, fix: Relink, now: int) -> int:
    ino, parent, name = fix
    data = txn.get(S.inode_key(ino))
    if data is None:
        return 0
    if parent is None:
        raise E.Invalid("relink needs the directory to link into")
    if txn.dentry(parent, name) is not None:
        return 0
    inode = Inode.from_bytes(ino, data)
    txn.add_dentry(parent, name, ino, inode.mode)
    inode.nlink = max(inode.nlink, 2) if inode.is_dir else 1  # the one name it has now
    if inode.is_dir:
        inode.parent = parent
        pdir = txn.dir(parent)
        pdir.nlink += 1
        txn.put_inode(pdir)
    txn.put_inode(inode)
    txn.delete(S.orphan_key(ino))
    return 1


def _drop_extent(txn: Txn, fix: DropExtent, now: int) -> int:
    ino, index, file_off = fix
    data = txn.get(S.extent_key(ino, index))
    if data is None:
        return 0
    exts = S.unpack_extents(data)
    keep = [e for e in exts if e.file_off != file_off or _extent_ok(txn, e)]
    if len(keep) == len(exts):
        return 0
    idata = txn.get(S.inode_key(ino))
    if idata is not None:
        inode = Inode.from_bytes(ino, idata)
        if inode.stored >= 0:
            inode.stored -= sum(e.length for e in exts) - sum(e.length for e in keep)
            txn.put_inode(inode)
    if keep:
        txn.put(S.extent_key(ino, index), S.pack_extents(keep))
    else:
        txn.delete(S.extent_key(ino, index))
    return 1


def _extent_ok(txn: Txn, ext: Extent) -> bool:
    data = txn.get(S.chunk_key(ext.chunk_id))
    return data is not None and ext.chunk_off + ext.length <= ChunkRecord.from_bytes(ext.chunk_id, data).length


def _drop_extents(txn: Txn, fix: DropExtents, now: int) -> int:
    if txn.get(S.inode_key(fix.ino)) is not None:
        return 0
    keys = [key for key, _ in txn.scan(S.extent_prefix(fix.ino))]
    for key in keys:
        txn.delete(key)
    return len(keys)


def _set_refs(txn: Txn, fix: SetRefs, now: int) -> int:
    data = txn.get(S.chunk_key(fix.chunk_id))
    if data is None:
        return 0
    rec = ChunkRecord.from_bytes(fix.chunk_id, data)
    if rec.refs == fix.n:
        return 0
    rec.refs = fix.n
    txn.put(S.chunk_key(fix.chunk_id), rec.to_bytes())
    if fix.n <= 0:
        txn.put(S.queue_key(fix.chunk_id), S.pack([now]))
    else:
        txn.delete(S.queue_key(fix.chunk_id))
    return 1


_FIXERS: dict[type[Any], Callable[[Txn, Any, int], int]] = {
    DropDentry: _drop_dentry, SetNlink: _set_nlink, Relink: _relink,
    DropExtent: _drop_extent, DropExtents: _drop_extents, SetRefs: _set_refs,
}
