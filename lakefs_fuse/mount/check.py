"""``lakefs-fuse fsck`` and ``lakefs-fuse gc``: metadata ↔ chunks ↔ shards.

**fsck** reads the whole metadata (an embedded lake's own RocksDB; a snapshot of a cluster's) and
checks that

* every directory entry names an inode that exists            (else: the entry is dropped);
* every file's link count is the number of entries naming it  (else: set; 0 makes it an orphan);
* every inode except the root is named somewhere              (else: linked into /lost+found);
* every extent's chunk exists and covers it                    (else: the extent is dropped and
  that range of the file reads as zeros -- the file is listed as damaged);
* extents belong to inodes that exist                           (else: dropped);
* every chunk's reference count is the number of extents using it (else: set; 0 queues it for gc);

Before any of that it reads every metadata block once against its RocksDB checksum: a damaged
block stops fsck with "metadata corrupt" (:class:`~lakefs_fuse.errors.MetadataCorrupt`) and
``--repair`` writes nothing -- fixes computed from part of a lake would relink or drop the
rest. The way out is a restore from a dump, or re-seeding a metadata server from the others.

Then (unless ``--no-shards``) it reads every shard of every chunk against its checksum, as
``scrub`` does. With ``--repair`` it applies the fixes above as one metadata command each batch
(``fsck``, re-checked when applied, so a finding that went stale meanwhile changes nothing) and
rebuilds bad shards as ``repair`` does.

**gc** deletes what nothing references: chunks in the delete queue (their shards, then their
records), and *orphan shards* -- shard files/objects on a peer whose chunk has no record, or whose
record places that shard on another peer (left behind by a crash between writing shards and
committing, or by a move). A shard is only an orphan if its chunk id was already allocated before
the scan began; on a cluster lake (which live mounts may be writing) a candidate must also still be
an orphan after ``--grace`` seconds. ``--dry-run`` lists and deletes nothing.
"""

from __future__ import annotations

import logging
import stat as st
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..chunks.layout import ChunkLayout
from ..errors import NotFound
from ..meta import schema as S
from ..meta.schema import ROOT_INO, ChunkRecord, Inode
from ..meta.state import StateMachine
from .lake import Lake, snapshot_remote

log = logging.getLogger(__name__)

LOST_FOUND = b"lost+found"
FIX_BATCH = 512


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


class MetadataView:
    """A readable StateMachine of the lake's metadata: its own (embedded) or a snapshot (cluster)."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self.sm: StateMachine | None = lake.sm
        self._tmp: tempfile.TemporaryDirectory | None = None

    async def __aenter__(self) -> StateMachine:
        if self.sm is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lakefs-fsck.")
            self.sm = await snapshot_remote(self.lake.meta_addresses, self.lake.secret, Path(self._tmp.name) / "meta")
        return self.sm

    async def __aexit__(self, *exc) -> None:
        if self._tmp is not None:
            self.sm.close()
            self._tmp.cleanup()


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


async def fsck(lake: Lake, *, repair: bool = False, shards: bool = True,
               on_chunk: Callable[[int], None] | None = None) -> FsckReport:
    from . import maintenance
    report = FsckReport()
    async with MetadataView(lake) as sm:
        await trio.to_thread.run_sync(sm.verify)  # MetadataCorrupt: nothing is analysed or written
        fixes = analyse(sm, report)
    if repair and fixes:
        if any(f[0] == "relink" for f in fixes):
            lf = await _lost_and_found(lake)
            fixes = [["relink", f[1], lf, f[3]] if f[0] == "relink" else f for f in fixes]
        for i in range(0, len(fixes), FIX_BATCH):
            report.fixed += await lake.meta.apply(["fsck", fixes[i:i + FIX_BATCH], _now()], sync=True)
    if shards:
        scrubbed = await maintenance.scrub(lake, repair=repair, on_chunk=on_chunk)
        report.shards = scrubbed.to_json()
    return report


async def _lost_and_found(lake: Lake) -> int:
    try:
        return (await lake.meta.lookup(ROOT_INO, LOST_FOUND)).ino
    except NotFound:
        ino, _ = await lake.meta.apply(["mknod", ROOT_INO, LOST_FOUND, st.S_IFDIR | 0o700, 0, 0, 0, _now()],
                                       sync=True)
        return ino


def _now() -> int:
    import time
    return time.time_ns()


# ---------------------------------------------------------------------------- gc


@dataclass
class GcReport:
    queued_chunks: int = 0          # chunks in the delete queue found
    deleted_chunks: int = 0
    orphan_shards: list = field(default_factory=list)   # [peer, chunk, index, size]
    deleted_shards: int = 0
    unreachable_peers: list = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict:
        return {"queued_chunks": self.queued_chunks, "deleted_chunks": self.deleted_chunks,
                "orphan_shards": self.orphan_shards, "orphan_bytes": sum(o[3] for o in self.orphan_shards),
                "deleted_shards": self.deleted_shards, "unreachable_peers": self.unreachable_peers,
                "dry_run": self.dry_run}


async def gc(lake: Lake, *, dry_run: bool = False, grace: float = 0.0,
             on_shard: Callable[[], None] | None = None) -> GcReport:
    report = GcReport(dry_run=dry_run)
    if lake.sm is not None:  # never delete on the word of metadata that cannot be read whole
        await trio.to_thread.run_sync(lake.sm.verify)
    # 1. the delete queue
    queue = await lake.meta.delete_queue(1 << 30)
    report.queued_chunks = len(queue)
    done = []
    for chunk_id, _queued in queue:
        try:
            rec = await lake.meta.chunk(chunk_id)
        except NotFound:
            done.append(chunk_id)
            continue
        if rec.refs > 0:
            done.append(chunk_id)
            continue
        if not dry_run:
            await lake.chunks.delete_chunk(ChunkLayout.from_wire(rec.to_wire()))
        done.append(chunk_id)
        report.deleted_chunks += 0 if dry_run else 1
    if done and not dry_run:
        await lake.meta.apply(["gc_done", done], sync=True)
    # 2. orphan shards
    high = await _chunk_counter(lake)
    candidates = await _orphan_shards(lake, high, report, on_shard)
    if candidates and grace > 0:
        await trio.sleep(grace)
        again = await _orphan_shards(lake, high, GcReport(), None)
        keep = {tuple(c[:3]) for c in again}
        candidates = [c for c in candidates if tuple(c[:3]) in keep]
    report.orphan_shards = candidates
    if not dry_run:
        for peer, chunk_id, index, _size in candidates:
            try:
                await lake.chunks.stores[peer].delete(chunk_id, index)
                report.deleted_shards += 1
            except Exception as exc:  # a peer that went away: the orphan stays for the next run
                log.warning("gc: could not delete shard %d/%d on peer %d: %s", chunk_id, index, peer, exc)
    return report


async def _chunk_counter(lake: Lake) -> int:
    """Chunk ids below this were allocated before now (the next id to be handed out)."""
    return await lake.meta.next_chunk_id()


async def _orphan_shards(lake: Lake, high: int, report: GcReport, on_shard) -> list[list]:
    placed: dict[int, list[int] | None] = {}
    out = []
    for peer_id, store in sorted(lake.chunks.stores.items()):
        after = (-1, -1)
        while True:
            try:
                page = await store.list(after, 1000)
            except Exception as exc:
                report.unreachable_peers.append([peer_id, str(exc)])
                break
            if not page:
                break
            for chunk_id, index, size in page:
                if on_shard:
                    on_shard()
                if chunk_id >= high:
                    continue  # allocated after the scan began: a write in flight
                if chunk_id not in placed:
                    try:
                        placed[chunk_id] = list((await lake.meta.chunk(chunk_id)).peers)
                    except NotFound:
                        placed[chunk_id] = None
                peers = placed[chunk_id]
                if peers is None or index >= len(peers) or peers[index] != peer_id:
                    out.append([peer_id, chunk_id, index, size])
            after = tuple(page[-1][:2])
    return out

