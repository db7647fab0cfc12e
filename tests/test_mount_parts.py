"""The mount's parts on their own: the writer's buffered-bytes view, the handle table, the
kernel page-cache record, the chunk client's repair queue and the one delete-queue pass."""

from __future__ import annotations

import os

import trio
import trio.testing

from lakefs_fuse import errors as E
from lakefs_fuse.chunks.client import ChunkClient
from lakefs_fuse.lake.gc import drain_delete_queue
from lakefs_fuse.meta.schema import ChunkRecord
from lakefs_fuse.mount.handles import DirHandle, Handle, HandleTable
from lakefs_fuse.mount.pagecache import KernelPages
from lakefs_fuse.mount.writer import DirtyFile, Seal, Writer


def test_overlay_and_pieces_show_the_same_bytes_newest_last():
    w = Writer(None, None, chunk_size=1 << 20, budget=1 << 30, pack_delay=0.0)  # type: ignore[arg-type]
    payload = b"A" * 100 + b"B" * 50
    older = Seal(1, [(7, 0, memoryview(payload)[:100]), (8, 0, memoryview(payload)[100:])], {}, payload)
    w.inflight[7] = w.inflight[8] = [older]
    df = w.dirty[7] = DirtyFile()
    df.write(40, b"c" * 20)   # newer than the seal: wins where they overlap
    df.write(150, b"d" * 10)
    base = bytes(range(200))
    buf = bytearray(base)
    w.overlay(7, buf, 0)
    want = bytearray(base)
    want[0:100] = b"A" * 100
    want[40:60] = b"c" * 20
    want[150:160] = b"d" * 10
    assert buf == want
    again = bytearray(base)
    for start, piece in w.pieces(7, 0, 200):
        assert isinstance(piece, bytes)
        again[start:start + len(piece)] = piece
    assert again == want
    # a window inside: only the bytes that fall in it, at their file offsets
    assert w.pieces(7, 50, 105) == [(50, b"A" * 50), (50, b"c" * 10), (150, b"d" * 5)]
    assert w.pieces(8, 0, 10) == [(0, b"B" * 10)]
    assert w.pieces(9, 0, 10) == []


def test_handle_table_counts_opens_per_inode():
    t = HandleTable()
    a, b = t.add(Handle(5, os.O_RDONLY, pid=11)), t.add(Handle(5, os.O_RDWR, pid=12))
    d = t.add(DirHandle(1))
    assert len({a, b, d}) == 3 and t.open_count(5) == 2 and t.open_count(1) == 0
    assert t.pid(b) == 12 and t.pid(d) == 0
    assert t.directory(d).ino == 1
    try:
        t.file(d)
        raise AssertionError("a directory handle is not a file handle")
    except E.LakeError as exc:
        assert exc.errno == 9  # EBADF
    t.pop(a)
    assert t.open_count(5) == 1 and t.get(a) is None
    t.pop(b)
    t.pop(b)  # twice: nothing more to count
    assert t.open_count(5) == 0


def test_kernel_pages_keep_cache_only_for_unchanged_attributes():
    k = KernelPages()
    assert not k.keep_on_open(3, 100, 1)
    assert k.keep_on_open(3, 100, 1)
    k.changed(3)
    assert not k.keep_on_open(3, 100, 1)
    k.remember(4, 10, 2)
    k.got_whole(4)
    assert k.keep_on_open(4, 10, 2) and k.has_whole(4)
    k.forgotten(4)
    assert not k.has_whole(4) and not k.keep_on_open(4, 10, 2)


def test_chunk_client_owns_its_repair_queue():
    c = ChunkClient({}, k=2, m=1, min_shard=4096)
    assert c.repair_queue_size == 0 and c.repair_queue() == frozenset()
    c.note_needs_repair(3)
    c.note_needs_repair(4)
    c.note_needs_repair(3)
    snapshot = c.repair_queue()
    c.repaired(3)
    assert snapshot == {3, 4} and c.repair_queue() == {4} and c.repair_queue_size == 1


class _Meta:
    def __init__(self, queue, records):
        self.queue, self.records, self.applied = queue, records, []

    async def delete_queue(self, limit):
        return self.queue[:limit]

    async def chunk(self, chunk_id):
        if chunk_id not in self.records:
            raise E.NotFound()
        return self.records[chunk_id]

    async def apply(self, cmd, *, sync=False):
        self.applied.append((cmd, sync))


class _Chunks:
    def __init__(self):
        self.deleted = []

    async def delete_chunk(self, layout):
        self.deleted.append(layout.chunk_id)


def test_drain_delete_queue_deletes_only_unreferenced_chunks_past_their_grace():
    def rec(cid, refs):
        return ChunkRecord(cid, 10, 1, 1, 10, [0, 1], [0, 0], refs)

    queue = [(1, 100), (2, 100), (3, 100), (4, 900)]  # 3 has no record; 4 was queued recently

    async def main():
        meta, chunks, dropped = _Meta(queue, {1: rec(1, 0), 2: rec(2, 1), 4: rec(4, 0)}), _Chunks(), []

        async def on_deleted(cid):
            dropped.append(cid)

        got = await drain_delete_queue(meta, chunks, older_than_ns=500, on_deleted=on_deleted)  # type: ignore[arg-type]
        assert (got.queued, got.deleted, got.done) == (4, 1, 3)
        assert chunks.deleted == dropped == [1]
        (cmd, sync), = meta.applied  # one gc_done for the three entries, not synced
        assert "[1, 2, 3]" in repr(cmd) and sync is False

        meta, chunks = _Meta(queue, {1: rec(1, 0)}), _Chunks()
        got = await drain_delete_queue(meta, chunks, dry_run=True, limit=2)  # type: ignore[arg-type]
        assert (got.queued, got.deleted, got.done) == (2, 0, 2) and not chunks.deleted and not meta.applied

    trio.run(main)


def test_open_hints_the_local_peers_and_the_read_verifies(tmp_path):
    """Opening a file for reading has the local peers holding its extents open (headers unread)
    and reading its blocks ahead; the read then returns the right bytes. A write-only open hints
    nothing; a file whose shard is gone still opens, and its read decodes around the shard."""
    from lakefs_fuse.config import LakeConfig, MountConfig
    from lakefs_fuse.lake.format import format_lake
    from lakefs_fuse.lake.lake import Lake
    from lakefs_fuse.meta.schema import ROOT_INO
    from lakefs_fuse.mount.vfs import VFS, Ctx

    ctx = Ctx(0, 0, 1, 0o022)
    peers = [tmp_path / f"p{i}" for i in range(6)]
    for p in peers:
        p.mkdir()
    data = tmp_path / "lake"
    format_lake(data, LakeConfig(ec_k=4, ec_m=2), [str(p) for p in peers])
    files = {b"f%d" % i: os.urandom(110_000 + i) for i in range(3)}

    async def session(fn):
        lake = Lake.open(data)
        vfs = VFS(lake.meta, lake.chunks, MountConfig(mountpoint=tmp_path, data_dir=data, pack_delay=0.0),
                  chunk_size=lake.config.chunk_size, gc_grace=30)
        try:
            async with trio.open_nursery() as nursery:
                await vfs.start(nursery)
                with trio.fail_after(30):
                    await fn(vfs, lake)
                await vfs.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            lake.close()

    async def write(vfs, lake):
        for name, blob in files.items():
            fh, _inode, _ = await vfs.create(ROOT_INO, name, 0o644, os.O_WRONLY, ctx)
            await vfs.write(fh, 0, blob)
            await vfs.release(fh)

    def held(lake) -> int:
        return sum(len(s.dir.open) for s in lake.chunks.stores.values())

    async def read(vfs, lake):
        ino2 = (await vfs.lookup(ROOT_INO, b"f2", ctx)).ino
        fh = (await vfs.open(ino2, os.O_WRONLY, ctx))[0]
        await trio.testing.wait_all_tasks_blocked()
        assert held(lake) == 0  # nothing to read ahead for a writer
        await vfs.release(fh)
        ino = (await vfs.lookup(ROOT_INO, b"f0", ctx)).ino
        fh = (await vfs.open(ino, os.O_RDONLY, ctx))[0]
        await trio.testing.wait_all_tasks_blocked()  # the hint runs right after the open
        readers = [r for s in lake.chunks.stores.values() for r in s.dir.open._lru.values()]
        assert readers and not any(r.parsed for r in readers)  # opened, headers not read yet
        assert bytes(await vfs.read(fh, 0, 1 << 20)) == files[b"f0"]
        assert all(r.parsed for r in readers)
        await vfs.release(fh)
        ino1 = (await vfs.lookup(ROOT_INO, b"f1", ctx)).ino
        exts = await vfs.meta.extents(ino1, 0, 0)
        layout = await vfs.reader._layout(exts[0].chunk_id)
        for index, _off, _n in layout.covering(exts[0].chunk_off, exts[0].length):
            os.unlink(lake.chunks.stores[layout.peers[index]].shard_path(layout.chunk_id, index))
        fh = (await vfs.open(ino1, os.O_RDONLY, ctx))[0]
        assert bytes(await vfs.read(fh, 0, 1 << 20)) == files[b"f1"]
        await vfs.release(fh)
        assert lake.chunks.degraded_reads >= 1

    trio.run(session, write)
    trio.run(session, read)
