"""Handlers of the data commands: which chunk holds which file bytes, and chunks' lives.

A file's bytes are extents (``E`` keys, one per file index of ``chunk_size`` bytes) pointing into
chunk records (``C``); each extent piece is one reference to its chunk, and a chunk whose count
reaches zero goes on the delete queue (``Q``) for the collector. The handlers here keep those
three in step: :func:`commit` (a sealed chunk and the file ranges now in it: new extents shadow
older ones, sizes grow), :func:`relocate` (compaction re-points still-current bytes at a copy),
:func:`truncate_extents` (for setattr's size), :func:`move_shard` (repair and rebalance),
:func:`gc_done` (the collector deleted shards), :func:`alloc_chunks` and :func:`init_usage`.

Same contract as :mod:`.namespace`: called by :meth:`~.state.StateMachine.apply` with the
command's fields by keyword, deterministic, nothing written unless the handler returns.

Imports: ``errors``, :mod:`.schema`, :mod:`.commands` (the nested field types), :mod:`.txn`.
"""

from __future__ import annotations

from dataclasses import replace

from .. import errors as E
from . import schema as S
from .commands import CommitExtent, RelocateMove
from .schema import ChunkRecord, Extent, Inode
from .txn import Txn


def commit(txn: Txn, *, chunk: ChunkRecord | None, extents: list[CommitExtent], mtimes: dict[int, int],
           now: int) -> dict[int, int]:
    """Commit one sealed chunk: its record plus extents ``(ino, file_off, length, chunk_id,
    chunk_off)`` -- five fields: an extent may point into an earlier chunk (``chunk`` None).

    Extents of inodes that no longer exist are skipped. New extents shadow older ones.
    Returns {ino: new size}.
    """
    cs = txn.chunk_size()
    deltas: dict[int, int] = {}
    if chunk is not None:
        rec = replace(chunk, refs=0)  # the extents below count the references
        # A commit retried after an answer was lost must not reset the record's reference
        # count (the chunk would look unreferenced and be collected under its files).
        if txn.get(S.chunk_key(rec.chunk_id)) is None:
            txn.put(S.chunk_key(rec.chunk_id), rec.to_bytes())
            txn.add_data(rec.length)
    by_key: dict[tuple[int, int], list[Extent]] = {}
    inodes: dict[int, Inode] = {}
    for ino, file_off, length, chunk_id, chunk_off in extents:
        if ino not in inodes:
            try:
                inodes[ino] = txn.inode(ino)
                txn.count_stored(inodes[ino])
            except E.NotFound:
                inodes[ino] = None  # type: ignore[assignment]
        if inodes[ino] is None or length <= 0:
            continue
        pos = file_off
        while pos < file_off + length:  # split at file-index boundaries
            idx = pos // cs
            end = min(file_off + length, (idx + 1) * cs)
            by_key.setdefault((ino, idx), []).append(Extent(pos, end - pos, chunk_id, chunk_off + pos - file_off))
            pos = end
    for (ino, idx), new in by_key.items():
        key = S.extent_key(ino, idx)
        data = txn.get(key)
        current = S.unpack_extents(data) if data else []
        before = sum(e.length for e in current)
        for ext in new:
            current = _insert_extent(current, ext, deltas)
        inodes[ino].stored += sum(e.length for e in current) - before  # shadowed bytes count once
        txn.put(key, S.pack_extents(current))
    sizes = {}
    for ino, inode in inodes.items():
        if inode is None:
            continue
        end = max((fo + ln for i, fo, ln, _c, _o in extents if i == ino), default=0)
        inode.size = max(inode.size, end)
        mtime = mtimes.get(ino, now) if mtimes else now
        inode.mtime_ns = max(inode.mtime_ns, mtime)
        inode.ctime_ns = max(inode.ctime_ns, mtime)
        txn.put_inode(inode)
        sizes[ino] = inode.size
    if chunk is not None and deltas.get(rec.chunk_id, 0) <= 0:
        txn.put(S.queue_key(rec.chunk_id), S.pack([now]))  # nothing points into it
    txn.chunk_refs(deltas, now)
    return sizes


def relocate(txn: Txn, *, chunk: ChunkRecord, moves: list[RelocateMove], now: int) -> int:
    """Compaction: point file bytes at a new chunk holding a copy of them, where they still
    are where the copy was taken from. ``moves``: ``[ino, file_off, length, old_chunk,
    old_off, new_off]``. A piece that was overwritten, truncated or deleted since is left as
    it is (the copy of it goes unused), so a relocation never undoes a newer write. Sizes,
    times and stored-byte counts do not change: the same bytes, somewhere else. Returns how
    many bytes moved; a new chunk nothing ends up using is queued for deletion."""
    rec = replace(chunk, refs=0)
    if txn.get(S.chunk_key(rec.chunk_id)) is None:
        txn.put(S.chunk_key(rec.chunk_id), rec.to_bytes())
        txn.add_data(rec.length)
    cs = txn.chunk_size()
    deltas: dict[int, int] = {}
    moved = 0
    for ino, file_off, length, old_chunk, old_off, new_off in moves:
        pos, end = file_off, file_off + length
        while pos < end:  # one file index at a time
            idx = pos // cs
            stop = min(end, (idx + 1) * cs)
            key = S.extent_key(ino, idx)
            data = txn.get(key)
            current = S.unpack_extents(data) if data else []
            matches = []
            for ext in current:  # the parts of [pos, stop) still stored where the copy came from
                a, b = max(ext.file_off, pos), min(ext.end, stop)
                if a < b and ext.chunk_id == old_chunk and \
                        ext.chunk_off + (a - ext.file_off) == old_off + (a - file_off):
                    matches.append(Extent(a, b - a, rec.chunk_id, new_off + (a - file_off)))
            for new in matches:
                current = _insert_extent(current, new, deltas)
                moved += new.length
            if matches:
                txn.put(key, S.pack_extents(current))
            pos = stop
    if deltas.get(rec.chunk_id, 0) <= 0 and txn.get(S.queue_key(rec.chunk_id)) is None:
        txn.put(S.queue_key(rec.chunk_id), S.pack([now]))  # every piece changed meanwhile
    txn.chunk_refs(deltas, now)
    return moved


def truncate_extents(txn: Txn, ino: int, size: int, now: int) -> int:
    """Drop the extents at or beyond ``size``; returns the file bytes they covered."""
    cs = txn.chunk_size()
    first = size // cs
    deltas: dict[int, int] = {}
    dropped = 0
    for key, value in list(txn.scan(S.extent_prefix(ino), S.extent_key(ino, first))):
        kept = []
        for ext in S.unpack_extents(value):
            if ext.file_off >= size:
                deltas[ext.chunk_id] = deltas.get(ext.chunk_id, 0) - 1
                dropped += ext.length
            elif ext.end > size:
                dropped += ext.end - size
                ext.length = size - ext.file_off
                kept.append(ext)
            else:
                kept.append(ext)
        if kept:
            txn.put(key, S.pack_extents(kept))
        else:
            txn.delete(key)
    txn.chunk_refs(deltas, now)
    return dropped


def _insert_extent(current: list[Extent], new: Extent, deltas: dict[int, int]) -> list[Extent]:
    """Insert ``new`` into sorted, non-overlapping ``current``; older bytes it covers go away.

    ``deltas`` collects chunk reference changes: every extent piece is one reference.
    """
    out: list[Extent] = []
    for ext in current:
        if ext.end <= new.file_off or ext.file_off >= new.end:
            out.append(ext)
            continue
        deltas[ext.chunk_id] = deltas.get(ext.chunk_id, 0) - 1
        if ext.file_off < new.file_off:
            out.append(Extent(ext.file_off, new.file_off - ext.file_off, ext.chunk_id, ext.chunk_off))
            deltas[ext.chunk_id] += 1
        if ext.end > new.end:
            cut = new.end - ext.file_off
            out.append(Extent(new.end, ext.end - new.end, ext.chunk_id, ext.chunk_off + cut))
            deltas[ext.chunk_id] += 1
    deltas[new.chunk_id] = deltas.get(new.chunk_id, 0) + 1
    out.append(new)
    out.sort(key=lambda e: e.file_off)
    merged: list[Extent] = []
    for ext in out:  # glue pieces that continue each other in the same chunk
        if merged and merged[-1].chunk_id == ext.chunk_id and merged[-1].end == ext.file_off \
                and merged[-1].chunk_off + merged[-1].length == ext.chunk_off:
            merged[-1].length += ext.length
            deltas[ext.chunk_id] -= 1
        else:
            merged.append(ext)
    return merged


def init_usage(txn: Txn) -> int:
    """Count the bytes of every chunk into the usage counter, if it is missing."""
    key = S.counter_key("data")
    data = txn.get(key)
    if data is None:
        data = sum(ChunkRecord.from_bytes(0, value).length for _k, value in txn.scan(S.CHUNK_PREFIX)).to_bytes(8, "big")
        txn.put(key, data)
    return int.from_bytes(data, "big")


def move_shard(txn: Txn, *, chunk_id: int, index: int, old_peer: int, new_peer: int) -> bool:
    """Repair/rebalance put shard ``index`` on ``new_peer``; only if it is still on ``old_peer``."""
    data = txn.get(S.chunk_key(chunk_id))
    if data is None:
        return False  # deleted meanwhile: nothing to record
    rec = ChunkRecord.from_bytes(chunk_id, data)
    if not 0 <= index < len(rec.peers) or rec.peers[index] != old_peer:
        return False
    rec.peers[index] = new_peer
    txn.put(S.chunk_key(chunk_id), rec.to_bytes())
    return True


def alloc_chunks(txn: Txn, *, n: int) -> int:
    return txn.next("chunk", n)


def gc_done(txn: Txn, *, chunk_ids: list[int]) -> None:
    for chunk_id in chunk_ids:
        data = txn.get(S.chunk_key(chunk_id))
        if data is not None and ChunkRecord.from_bytes(chunk_id, data).refs > 0:
            txn.delete(S.queue_key(chunk_id))  # referenced again: keep the chunk
            continue
        if data is not None:
            txn.add_data(-ChunkRecord.from_bytes(chunk_id, data).length)
        txn.delete(S.chunk_key(chunk_id))
        txn.delete(S.queue_key(chunk_id))
