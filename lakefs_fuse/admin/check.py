"""``lakefs-fuse fsck``: metadata ↔ chunks ↔ shards (the analysis itself is :mod:`..meta.fsck`).

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
"""

from __future__ import annotations

import stat as st
import time
from collections.abc import Callable

import trio

from ..errors import NotFound
from ..lake.lake import Lake
from ..lake.repair import scrub
from ..lake.view import MetadataView
from ..meta.commands import Fsck, Mknod, Relink
from ..meta.fsck import FsckReport, analyse
from ..meta.schema import ROOT_INO

LOST_FOUND = b"lost+found"
FIX_BATCH = 512


async def fsck(lake: Lake, *, repair: bool = False, shards: bool = True,
               on_chunk: Callable[[int], None] | None = None) -> FsckReport:
    report = FsckReport()
    async with MetadataView(lake) as sm:
        await trio.to_thread.run_sync(sm.verify)  # MetadataCorrupt: nothing is analysed or written
        fixes = analyse(sm, report)
    if repair and fixes:
        if any(isinstance(f, Relink) for f in fixes):
            lf = await _lost_and_found(lake)
            fixes = [f._replace(parent=lf) if isinstance(f, Relink) else f for f in fixes]
        for i in range(0, len(fixes), FIX_BATCH):
            report.fixed += await lake.meta.apply(Fsck(fixes[i:i + FIX_BATCH], _now()), sync=True)
    if shards:
        scrubbed = await scrub(lake, repair=repair, on_chunk=on_chunk)
        report.shards = scrubbed.to_json()
    return report


async def _lost_and_found(lake: Lake) -> int:
    try:
        return (await lake.meta.lookup(ROOT_INO, LOST_FOUND)).ino
    except NotFound:
        ino, _ = await lake.meta.apply(Mknod(ROOT_INO, LOST_FOUND, st.S_IFDIR | 0o700, 0, 0, 0, _now()),
                                       sync=True)
        return ino


def _now() -> int:
    return time.time_ns()
