"""The VFS driven directly (no kernel): RocksDB in a temp dir and local-directory peers."""

from __future__ import annotations

import errno
import os
import stat as st
from pathlib import Path

import pytest
import trio

from lakefs_fuse import errors as E
from lakefs_fuse.config import LakeConfig, MountConfig
from lakefs_fuse.lake.lake import Lake, format_lake
from lakefs_fuse.meta.schema import ROOT_INO
from lakefs_fuse.mount.vfs import VFS, Ctx

CTX = Ctx(0, 0, 1, 0o022)
MiB = 1 << 20


def run_vfs(tmp_path: Path, body, *, chunk_size=MiB, dirty_budget=64 * MiB, reopen_body=None, pack_delay=2.0):
    data = tmp_path / "lake"
    format_lake(data, LakeConfig(ec_k=4, ec_m=2, chunk_size=chunk_size))

    async def session(fn):
        lake = Lake.open(data)
        cfg = MountConfig(mountpoint=tmp_path, data_dir=data, dirty_budget=dirty_budget, pack_delay=pack_delay)
        vfs = VFS(lake.meta, lake.chunks, cfg, chunk_size=chunk_size, gc_grace=0)
        try:
            async with trio.open_nursery() as nursery:
                await vfs.start(nursery)
                with trio.fail_after(60):
                    await fn(vfs)
                await vfs.shutdown()
                nursery.cancel_scope.cancel()
        finally:
            lake.close()

    trio.run(session, body)
    if reopen_body is not None:
        trio.run(session, reopen_body)
    return data


async def create(vfs, name: bytes, parent=ROOT_INO):
    fh, inode, _ = await vfs.create(parent, name, 0o644, os.O_RDWR, CTX)
    return fh, inode.ino


def test_write_read_overlay_before_and_after_seal(tmp_path):
    payload = os.urandom(3 * MiB + 100)

    async def body(vfs):
        fh, ino = await create(vfs, b"f")
        await vfs.write(fh, 0, payload[:MiB])
        await vfs.write(fh, MiB, payload[MiB:])
        # readable before any seal finished (dirty/in-flight overlay)
        assert await vfs.read(fh, 0, len(payload)) == payload
        await vfs.write(fh, 10, b"X" * 20)
        expect = payload[:10] + b"X" * 20 + payload[30:]
        assert await vfs.read(fh, 0, 64) == expect[:64]
        await vfs.flush(fh)
        await vfs.release(fh)
        assert (await vfs.getattr(ino)).size == len(payload)
        fh2, _, _ = await vfs.open(ino, os.O_RDONLY, CTX)
        assert await vfs.read(fh2, 0, len(payload)) == expect
        await vfs.release(fh2)

    async def after(vfs):
        inode = await vfs.lookup(ROOT_INO, b"f", CTX)
        fh, _, _ = await vfs.open(inode.ino, os.O_RDONLY, CTX)
        data = await vfs.read(fh, 0, 4 * MiB)
        assert data == payload[:10] + b"X" * 20 + payload[30:]

    run_vfs(tmp_path, body, reopen_body=after)


def test_truncate_with_dirty_data_and_holes(tmp_path):
    async def body(vfs):
        fh, ino = await create(vfs, b"f")
        await vfs.write(fh, 0, b"a" * 1000)
        await vfs.setattr(ino, {"size": 10}, CTX)
        assert await vfs.read(fh, 0, 100) == b"a" * 10
        await vfs.write(fh, 2 * MiB, b"z")
        assert (await vfs.getattr(ino)).size == 2 * MiB + 1
        data = await vfs.read(fh, 0, 2 * MiB + 1)
        assert data[:10] == b"a" * 10 and data[10:-1] == bytes(2 * MiB - 10) and data[-1:] == b"z"
        await vfs.release(fh)

    run_vfs(tmp_path, body)


def test_unlinked_open_file_freed_after_release_and_gc(tmp_path):
    async def body(vfs):
        fh, ino = await create(vfs, b"f")
        await vfs.write(fh, 0, os.urandom(200_000))
        await vfs.fsync(fh, False)
        vfs.lookups[ino] = 0  # the kernel forgot the name; only the handle remains
        await vfs.unlink(ROOT_INO, b"f", CTX)
        assert (await vfs.getattr(ino)).nlink == 0
        assert len(await vfs.read(fh, 0, 200_000)) == 200_000
        await vfs.release(fh)
        with pytest.raises(E.NotFound):
            await vfs.getattr(ino)
        assert await vfs.collect_garbage(grace=0) >= 1
        peers = Path(vfs.chunks.stores[0].root).parent
        assert not [p for p in peers.rglob("*.*") if p.parent.name != "tmp" and p.name != "lake-owner.json"]

    run_vfs(tmp_path, body)


def test_dirty_budget_backpressure_does_not_deadlock(tmp_path):
    async def body(vfs):
        fh, ino = await create(vfs, b"big")
        block = os.urandom(MiB)
        for i in range(40):  # 40 MiB through a 8 MiB budget
            await vfs.write(fh, i * MiB, block)
            assert vfs.writer.buffered <= 8 * MiB + MiB
        await vfs.flush(fh)
        assert (await vfs.getattr(ino)).size == 40 * MiB
        assert await vfs.read(fh, 39 * MiB, MiB) == block

    run_vfs(tmp_path, body, dirty_budget=8 * MiB)


@pytest.mark.parametrize("pack_delay", [0.0, 2.0])
def test_write_error_reported_at_close_or_fsync(tmp_path, pack_delay):
    async def body(vfs):
        from lakefs_fuse.chunks.store import PeerFull

        def full(*a):
            raise PeerFull("disk full")
        for store in vfs.chunks.stores.values():
            store.put = full
        fh, ino = await create(vfs, b"f")
        await vfs.write(fh, 0, b"x" * 1000)
        with pytest.raises(E.NoSpace) as exc:
            if pack_delay == 0:
                await vfs.flush(fh)  # close commits: the error comes back from close()
            else:
                await vfs.fsync(fh, False)
        assert exc.value.errno == errno.ENOSPC

    run_vfs(tmp_path, body, pack_delay=pack_delay)


def test_closed_small_files_are_packed(tmp_path):
    async def body(vfs):
        for i in range(30):
            fh, ino = await create(vfs, b"f%d" % i)
            await vfs.write(fh, 0, bytes([i]) * 100_000)
            await vfs.flush(fh)
            await vfs.release(fh)
        await vfs.writer.flush_all()
        chunks = set()
        for i in range(30):
            inode = await vfs.lookup(ROOT_INO, b"f%d" % i, CTX)
            chunks.update(e.chunk_id for e in await vfs.meta.extents(inode.ino, 0, 10))
            fh, _, _ = await vfs.open(inode.ino, os.O_RDONLY, CTX)
            assert await vfs.read(fh, 0, 200_000) == bytes([i]) * 100_000
        assert len(chunks) <= 3  # 3 MB in 1 MiB chunks, not 30 chunks

    run_vfs(tmp_path, body)


def test_readdir_offsets_and_dot_entries(tmp_path):
    async def body(vfs):
        d = await vfs.mkdir(ROOT_INO, b"d", 0o755, CTX)
        for i in range(5):
            await vfs.mknod(d.ino, b"f%d" % i, st.S_IFREG | 0o644, 0, CTX)
        fh = await vfs.opendir(d.ino, CTX)
        entries = await vfs.readdir(fh, 0)
        assert [n for n, _, _ in entries] == [b".", b"..", b"f0", b"f1", b"f2", b"f3", b"f4"]
        after = await vfs.readdir(fh, entries[3][2])
        assert [n for n, _, _ in after] == [b"f2", b"f3", b"f4"]
        assert entries[1][1].ino == ROOT_INO

    run_vfs(tmp_path, body)


def test_read_only_mount_refuses_writes(tmp_path):
    data = tmp_path / "lake"
    format_lake(data, LakeConfig())

    async def main():
        lake = Lake.open(data)
        try:
            vfs = VFS(lake.meta, lake.chunks, MountConfig(tmp_path, data, read_only=True), chunk_size=4 * MiB)
            with pytest.raises(E.LakeError) as exc:
                await vfs.mkdir(ROOT_INO, b"d", 0o755, CTX)
            assert exc.value.errno == errno.EROFS
        finally:
            lake.close()

    trio.run(main)


def test_lookup_answer_racing_a_rename_over_its_inode_is_not_freed(tmp_path):
    """Issue 11, point 10: a lookup's answer (the old inode) arrives after a rename over that
    name has dropped the inode's last link. The release must wait for the answer, or the kernel
    opens a freed inode: ENOENT for a file that was only replaced."""

    async def body(vfs):
        fh, old = await create(vfs, b"key")
        await vfs.write(fh, 0, b"old value")
        await vfs.release(fh)
        fh, new = await create(vfs, b"tmp")
        await vfs.write(fh, 0, b"new value")
        await vfs.release(fh)
        await vfs.forget([(old, vfs.lookups.get(old, 0)), (new, vfs.lookups.get(new, 0))])
        answered, go = trio.Event(), trio.Event()
        real_lookup = vfs.meta.lookup

        async def slow_lookup(parent, name):  # the answer is computed now, delivered later
            inode = await real_lookup(parent, name)
            answered.set()
            await go.wait()
            return inode

        vfs.meta.lookup = slow_lookup
        seen = {}

        async def reader():
            seen["inode"] = await vfs.lookup(ROOT_INO, b"key", CTX)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await answered.wait()
            await vfs.rename(ROOT_INO, b"tmp", ROOT_INO, b"key", 0, CTX)  # drops old's last link
            go.set()
        vfs.meta.lookup = real_lookup
        assert seen["inode"].ino == old
        fh, _keep, _direct = await vfs.open(old, os.O_RDONLY, CTX)  # the kernel opens what lookup said
        assert await vfs.read(fh, 0, 100) == b"old value"
        await vfs.release(fh)
        await vfs.forget([(old, 1)])
        await trio.sleep(0)
        with pytest.raises(E.NotFound):  # freed once nothing references it
            await vfs.meta.getattr(old)

    run_vfs(tmp_path, body, pack_delay=0)
