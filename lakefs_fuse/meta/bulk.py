"""Handler of :class:`~.commands.ImportFiles`: many new files and the chunks holding them, at once.

``lakefs-fuse import`` packs a few hundred small files into one chunk, stores it on the peers and
then sends one ``import_files`` command: the chunk's record plus every file (directory, name,
owner, extents into the chunk). :func:`import_files` applies it as one RocksDB WriteBatch -- on a
cluster, one Raft entry -- instead of a ``mknod`` per file and a ``commit`` per chunk.

*Per-file results, each file whole.* A file that cannot be created (its name exists, its
directory is gone, a bad name or mode, extents outside this command's chunks) is reported in the
result as ``[errno, message]`` and the others are still created: an import must say exactly which
files did not make it, and one name collision must not cost a few hundred files. Each file's
writes go through a :class:`~.txn.NestedTxn` that joins the command's batch only when the whole
file -- inode, directory entry, extents -- is done, so no file is ever half there. A file is
made by :func:`.namespace.mknod` (one rule for names, setgid directories, inherited EC
profiles); its extents are then written the way a commit writes a new file's (split at file-index
boundaries, pieces that continue each other in one chunk glued, one chunk reference per piece),
with nothing older to shadow -- extents must come in file order, without overlaps.

The chunks are recorded first (with no references; a retried command finds them recorded and
leaves them); the created files' references are added once per chunk at the end, and a chunk no
created file uses ends on the delete queue, as a commit's would.
Exactly-once on a cluster is the session table's (a retry with the same client id and seq gets
the stored results); the size bounds are :data:`~.commands.IMPORT_MAX_FILES` and
:data:`~.commands.IMPORT_MAX_CHUNKS`.

Imports: ``errors``, :mod:`.schema`, :mod:`.commands`, :mod:`.txn`, :mod:`.namespace`.
"""

from __future__ import annotations

import os
import stat as st
from dataclasses import replace
from typing import Any

from .. import errors as E
from . import schema as S
from .commands import IMPORT_MAX_CHUNKS, IMPORT_MAX_FILES, ImportFile
from .namespace import mknod
from .schema import ChunkRecord, Extent, Inode
from .txn import Txn


def import_files(txn: Txn, *, chunks: list[ChunkRecord], files: list[ImportFile], now: int) -> list[Any]:
    """Record ``chunks`` and create ``files``; one result per file: its ino or ``[errno, message]``."""
    if len(files) > IMPORT_MAX_FILES or len(chunks) > IMPORT_MAX_CHUNKS:
        raise E.Invalid(f"import_files takes at most {IMPORT_MAX_FILES} files and {IMPORT_MAX_CHUNKS} chunks")
    lengths: dict[int, int] = {}
    for rec in chunks:
        if rec.chunk_id in lengths:
            raise E.Invalid(f"chunk {rec.chunk_id} given twice")
        lengths[rec.chunk_id] = rec.length
        if txn.get(S.chunk_key(rec.chunk_id)) is None:
            txn.put(S.chunk_key(rec.chunk_id), replace(rec, refs=0).to_bytes())  # the files count them
            txn.add_data(rec.length)
    cs = txn.chunk_size()
    refs = dict.fromkeys(lengths, 0)
    results: list[Any] = []
    for f in files:
        item = txn.nested()
        try:
            ino, pieces = _create(item, f, lengths, cs, now)
        except E.LakeError as exc:
            results.append([exc.errno, str(exc) or os.strerror(exc.errno)])
            continue
        item.join()
        results.append(ino)
        for chunk_id in pieces:
            refs[chunk_id] += 1
    txn.chunk_refs(refs, now, zero_too=True)  # every created file's references at once; unused: queued
    return results


def _create(txn: Txn, f: ImportFile, lengths: dict[int, int], cs: int, now: int) -> tuple[int, list[int]]:
    """One file, in its own nested transaction (raises before the caller joins it): its ino and
    the chunk of each extent piece it holds (one reference each)."""
    if not isinstance(f.name, bytes) or not isinstance(f.extents, list | tuple) \
            or not all(type(v) is int for v in (f.parent, f.mode, f.uid, f.gid)):
        raise E.Invalid("an imported file is [parent, name, mode, uid, gid, extents]")
    if st.S_IFMT(f.mode) not in (0, st.S_IFREG):
        raise E.Invalid("import creates regular files only")
    by_index: dict[int, list[Extent]] = {}
    end = 0
    for e in f.extents:
        if not isinstance(e, list | tuple) or len(e) != 4 or not all(type(v) is int for v in e):
            raise E.Invalid("an extent is [file_off, length, chunk_id, chunk_off]")
        file_off, length, chunk_id, chunk_off = e
        if file_off < end or length <= 0 or chunk_off < 0 or chunk_off + length > lengths.get(chunk_id, -1):
            raise E.Invalid(f"extent {e} is not in file order or not inside a chunk of this import")
        end = file_off + length
        while length:  # split at file-index boundaries, as a commit does
            idx = file_off // cs
            piece = min(length, (idx + 1) * cs - file_off)
            pieces = by_index.setdefault(idx, [])
            last = pieces[-1] if pieces else None
            if last and last.chunk_id == chunk_id and last.end == file_off \
                    and last.chunk_off + last.length == chunk_off:
                last.length += piece  # glued, as a commit glues what continues in the same chunk
            else:
                pieces.append(Extent(file_off, piece, chunk_id, chunk_off))
            file_off, length, chunk_off = file_off + piece, length - piece, chunk_off + piece
    ino, raw = mknod(txn, parent=f.parent, name=f.name, mode=st.S_IFREG | (f.mode & 0o7777), rdev=0,
                     uid=f.uid, gid=f.gid, now=now)
    if not by_index:
        return ino, []
    inode = Inode.from_bytes(ino, raw)
    inode.size = end
    inode.stored = sum(x.length for pieces in by_index.values() for x in pieces)
    txn.put_inode(inode)
    for idx, pieces in by_index.items():
        txn.put(S.extent_key(ino, idx), S.pack_extents(pieces))
    return ino, [x.chunk_id for pieces in by_index.values() for x in pieces]
