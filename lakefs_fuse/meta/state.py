"""The metadata state machine: deterministic commands applied to RocksDB, and queries.

Every mutation is a command of the catalogue (:mod:`.commands`) applied by
:meth:`StateMachine.apply`: the command's handler reads through a :class:`~.txn.Txn` and its
writes become one RocksDB ``WriteBatch``. Commands carry every nondeterministic input (the clock,
uid/gid), so a Raft log can replay them on every replica with the same result. ``apply`` never
awaits and never does I/O other than RocksDB, so it is atomic with respect to the event loop.

A command that fails raises a :class:`~lakefs_fuse.errors.LakeError` before anything is
written: failed commands change nothing.

The handlers live beside this module, by what they own: :mod:`.namespace` (names, inodes,
attributes, xattrs), :mod:`.data` (extents, chunk records and their references),
:mod:`.fsck` (the repairs fsck found), :mod:`.bulk` (an import's many files in one command);
the few that concern the lake as a whole (format, peers, metadata members, a dump loaded into
servers) are here, with :data:`HANDLERS`, the table from command to handler. Queries (lookup,
getattr, readdir, extents...) are plain synchronous reads.

Imports: ``errors``, ``private`` and the modules of this package named above.
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Callable
from typing import Any

import msgpack
import rocksdict

from .. import errors as E
from ..private import make_private, owner_only_umask
from . import bulk, data, namespace
from . import commands as C
from . import schema as S
from .commands import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE
from .fsck import apply_fixes
from .namespace import EC_XATTR, NAME_MAX, XATTR_SIZE_MAX
from .schema import ChunkRecord, Extent, Inode, PeerRecord
from .txn import Txn, items, rocks_errors

__all__ = ["DEFAULT_BLOCK_CACHE", "EC_XATTR", "HANDLERS", "NAME_MAX", "RENAME_EXCHANGE", "RENAME_NOREPLACE",
           "XATTR_CREATE", "XATTR_REPLACE", "XATTR_SIZE_MAX", "StateMachine"]


# ----------------------------------------------------------------------------- the lake as a whole


def _format(txn: Txn, *, config: dict[str, Any], now: int, uid: int, gid: int) -> None:
    if txn.get(S.FORMAT) is not None:
        raise E.Exists("lake already formatted")
    txn.put(S.FORMAT, S.pack(config))
    root = Inode(S.ROOT_INO, st.S_IFDIR | 0o755, 2, uid, gid, 0, now, now, now, 0, S.ROOT_INO)
    txn.put_inode(root)
    txn.put(S.counter_key("ino"), (S.ROOT_INO + 1).to_bytes(8, "big"))
    txn.put(S.counter_key("data"), (0).to_bytes(8, "big"))


def _register_peer(txn: Txn, *, peer: PeerRecord) -> None:
    txn.put(S.peer_key(peer.peer_id), peer.to_bytes())


def _set_meta_member(txn: Txn, *, node_id: int, address: str | None) -> None:
    """Record (or, with None, forget) the address of metadata server ``node_id``."""
    if address is None:
        txn.delete(S.member_key(node_id))
    else:
        txn.put(S.member_key(node_id), S.pack(address))


def _load_keys(txn: Txn, *, pairs: list[list[bytes]], first: bool) -> int:
    """``lakefs-fuse load`` into metadata servers: raw keys of a dump, in batches. The first
    batch refuses a cluster that already holds a lake; member addresses (M keys) are the
    cluster's own and never loaded."""
    if first and txn.get(S.FORMAT) is not None:
        raise E.Exists("these metadata servers already hold a lake")
    n = 0
    for key, value in pairs:
        if not isinstance(key, bytes) or not isinstance(value, bytes) or not key:
            raise E.Invalid("load_keys takes [bytes, bytes] pairs")
        if key.startswith(S.MEMBER_PREFIX):
            continue
        txn.put(key, value)
        n += 1
    return n


#: The handler of every command of the catalogue, called as ``handler(txn, **command.fields())``.
HANDLERS: dict[type[C.Command], Callable[..., Any]] = {
    C.Format: _format,
    C.Mknod: namespace.mknod,
    C.Symlink: namespace.symlink,
    C.Link: namespace.link,
    C.Unlink: namespace.unlink,
    C.Rmdir: namespace.rmdir,
    C.Rename: namespace.rename,
    C.Setattr: namespace.set_attr,
    C.Setxattr: namespace.setxattr,
    C.Removexattr: namespace.removexattr,
    C.Release: namespace.release,
    C.Commit: data.commit,
    C.Relocate: data.relocate,
    C.InitUsage: data.init_usage,
    C.MoveShard: data.move_shard,
    C.AllocChunks: data.alloc_chunks,
    C.GcDone: data.gc_done,
    C.ImportFiles: bulk.import_files,
    C.RegisterPeer: _register_peer,
    C.SetMetaMember: _set_meta_member,
    C.LoadKeys: _load_keys,
    C.Fsck: apply_fixes,
}


#: RocksDB block cache of one metadata replica or mount (~1 KB of metadata per file: 256 MiB
#: keeps the blocks of a few hundred thousand files' entries, inodes and extents).
DEFAULT_BLOCK_CACHE = 256 << 20


class StateMachine:
    """Owns the RocksDB of one metadata replica."""

    def __init__(self, path: str, *, create: bool = False, read_only: bool = False,
                 follow: str | None = None, block_cache: int = DEFAULT_BLOCK_CACHE):
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(create)
        opts.set_max_background_jobs(2)
        # Metadata blocks stay in the process once read, whatever the kernel's page cache drops:
        # a lookup in a million-file lake costs the same as in a small one after its block was
        # seen once. Bloom filters spare the SST files that cannot hold a key (negative lookups,
        # several L0 files).
        table = rocksdict.BlockBasedOptions()
        self._block_cache = rocksdict.Cache(block_cache)
        self._block_cache_capacity = block_cache
        table.set_block_cache(self._block_cache)
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        self.path = path
        self._caught_up_mark: tuple[int, ...] = ()  # a follower's: see catch_up
        self._dir_mtime = -1
        self._logs: list[str] = []
        # The column family is named explicitly: opening an existing DB without it, rocksdict gives
        # the default column family default table options (an 8 MB cache, no filters).
        families = {"default": opts}
        # Keys hold every file name: the database is owner-only (see lakefs_fuse.private).
        make_private(path)
        with owner_only_umask():
            if follow is not None:
                # A follower beside the mount that writes (RocksDB's secondary instance, its own
                # files in the directory ``follow``): reads see what was committed up to the
                # last :meth:`catch_up`; any write raises.
                self.db = rocksdict.Rdict(path, options=opts, column_families=families,
                                          access_type=rocksdict.AccessType.secondary(follow))
            elif read_only:  # a consistent view beside a running mount (RocksDB takes no lock then)
                self.db = rocksdict.Rdict(path, options=opts, column_families=families,
                                          access_type=rocksdict.AccessType.read_only())
            else:
                self.db = rocksdict.Rdict(path, options=opts, column_families=families)
        make_private(path)
        self._sync_opt = rocksdict.WriteOptions()
        self._sync_opt.sync = True

    def catch_up(self) -> bool:
        """A follower (``follow=``): read what the writing process committed since the last call.

        RocksDB's catch-up re-reads the writer's live write-ahead log every time (~1.5 ms in a
        lake after an import, measured), so it runs only when the writer's files changed: the
        directory (a flush or compaction made or removed files) or a log's size or mtime (a commit
        appended to it) -- a few stat calls. The mark is taken before the catch-up, so a commit
        that lands during it is caught by the next call. Returns whether it caught up."""
        mark = self._writer_mark()
        if mark == self._caught_up_mark:
            return False
        self.db.try_catch_up_with_primary()
        self._caught_up_mark = mark
        return True

    def _writer_mark(self) -> tuple[int, ...]:
        """What changes whenever the writer commits: the directory's mtime, each log's size/mtime."""
        mtime = os.stat(self.path).st_mtime_ns
        if mtime != self._dir_mtime:
            self._dir_mtime = mtime
            self._logs = sorted(os.path.join(self.path, n) for n in os.listdir(self.path) if n.endswith(".log"))
        mark = [mtime]
        for log in self._logs:
            try:
                s = os.stat(log)
            except FileNotFoundError:  # removed since the listing: the directory's mtime moved too
                mark.append(-1)
                continue
            mark += (s.st_size, s.st_mtime_ns)
        return tuple(mark)

    def close(self) -> None:
        self.db.close()
        make_private(self.path)  # files flushes and compactions made since the open

    def preload(self, limit: int = 1 << 30) -> int:
        """Read the table files once, sequentially, so the kernel's page cache holds them, then walk
        the keys so the block cache holds their blocks decoded (until it is nine tenths full): the
        lookups of a cold million-file lake then cost what a small lake's do (~1 s of CPU for 1M
        files, once). Stops reading files before ``limit`` bytes; returns the bytes read."""
        done = self._read_tables(limit)
        capacity = self._block_cache_capacity
        it = self.db.iter()
        it.seek_to_first()
        n = 0
        while it.valid():
            it.next()
            n += 1
            if n % 20000 == 0 and self._block_cache.get_usage() >= capacity * 0.9:
                break
        return done

    def _read_tables(self, limit: int) -> int:
        done = 0
        buf = bytearray(1 << 20)
        try:
            names = sorted(n for n in os.listdir(self.path) if n.endswith(".sst"))
        except OSError:
            return 0
        for name in names:
            try:
                fd = os.open(os.path.join(self.path, name), os.O_RDONLY)
            except OSError:
                continue  # compacted away meanwhile
            try:
                if done + os.fstat(fd).st_size > limit:
                    break
                while n := os.readv(fd, [buf]):
                    done += n
            finally:
                os.close(fd)
        return done

    # ------------------------------------------------------------------ apply

    @rocks_errors
    def apply(self, cmd: C.Command | list[Any], *, sync: bool = False) -> Any:
        """Apply one command and return its result (see the command's docstring in
        :mod:`.commands`). ``cmd`` is a typed command, or its wire list: the form the Raft log
        holds, which every metadata server replays from there (and tests write by hand). A
        wire list is decoded first (:func:`~.commands.decode`: an unknown op or a malformed list
        raises :class:`~lakefs_fuse.errors.Invalid`, applying nothing)."""
        command = cmd if isinstance(cmd, C.Command) else C.decode(cmd)
        txn = Txn(self.db)
        result = HANDLERS[type(command)](txn, **command.fields())
        if txn.pending:
            if sync:
                self.db.write(txn.batch, self._sync_opt)
            else:
                self.db.write(txn.batch)
        return result

    def sync(self) -> None:
        """Make every applied command durable (a barrier for fsync)."""
        self.db.flush_wal(True)

    def verify(self) -> int:
        """Read every key and value once, checking every block against its RocksDB checksum;
        returns how many keys there are, or raises :class:`~lakefs_fuse.errors.MetadataCorrupt`.

        ~0.2 s per million keys (a million-file lake holds a few million). Blocks are not kept
        in the block cache, so the check does not push out what lookups use."""
        opts = rocksdict.ReadOptions()
        opts.set_verify_checksums(True)
        opts.fill_cache(False)  # type: ignore[call-arg]  # (rocksdict's stub lacks the argument)
        return sum(1 for _ in items(self.db, read_opt=opts))

    # -------------------------------------------------------------- queries

    @rocks_errors
    def format_record(self) -> dict:
        data = self.db.get(S.FORMAT)
        if data is None:
            raise E.NotFound("metadata is not formatted")
        return S.unpack(data)

    @rocks_errors
    def getattr(self, ino: int) -> Inode:
        data = self.db.get(S.inode_key(ino))
        if data is None:
            raise E.NotFound()
        return Inode.from_bytes(ino, data)

    @rocks_errors
    def lookup(self, parent: int, name: bytes) -> Inode:
        data = self.db.get(S.dentry_key(parent, name))
        if data is None:
            pdata = self.db.get(S.inode_key(parent))
            if pdata is None:
                raise E.NotFound()
            if not st.S_ISDIR(S.unpack(pdata)[0]):
                raise E.NotADir()
            if len(name) > NAME_MAX:
                raise E.NameTooLong()
            raise E.NotFound()
        return self.getattr(S.unpack(data)[0])

    @rocks_errors
    def readdir(self, ino: int, after_cookie: int, limit: int) -> list[tuple[bytes, Inode, int]]:
        """Entries with cookie > after_cookie, in cookie order: (name, inode, cookie)."""
        out = []
        prefix = S.cookie_prefix(ino)
        for key, name in items(self.db, S.cookie_key(ino, after_cookie + 1)):
            if not key.startswith(prefix):
                break
            entry = self.db.get(S.dentry_key(ino, name))
            if entry is None:
                continue
            child = self.db.get(S.inode_key(S.unpack(entry)[0]))
            if child is None:
                continue
            out.append((name, Inode.from_bytes(S.unpack(entry)[0], child), S.cookie_of_key(key)))
            if len(out) >= limit:
                break
        return out

    @rocks_errors
    def extents(self, ino: int, first_index: int, last_index: int) -> list[Extent]:
        out: list[Extent] = []
        prefix = S.extent_prefix(ino)
        for key, value in items(self.db, S.extent_key(ino, first_index)):
            if not key.startswith(prefix) or S.index_of_extent_key(key) > last_index:
                break
            out.extend(S.unpack_extents(value))
        return out

    @rocks_errors
    def readlink(self, ino: int) -> bytes:
        data = self.db.get(S.symlink_key(ino))
        if data is None:
            raise E.Invalid("not a symlink")
        return data

    @rocks_errors
    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.getattr(ino)
        data = self.db.get(S.xattr_key(ino, name))
        if data is None:
            raise E.NoData()
        return data

    @rocks_errors
    def listxattr(self, ino: int) -> list[bytes]:
        self.getattr(ino)
        prefix = S.xattr_prefix(ino)
        return [S.xattr_name_of_key(key) for key, _ in self.scan(prefix)]

    @rocks_errors
    def chunk(self, chunk_id: int) -> ChunkRecord:
        data = self.db.get(S.chunk_key(chunk_id))
        if data is None:
            raise E.NotFound(f"chunk {chunk_id}")
        return ChunkRecord.from_bytes(chunk_id, data)

    @rocks_errors
    def chunks(self, after: int = -1, limit: int = 1000) -> list[ChunkRecord]:
        """Chunk records with id > ``after``, in id order."""
        out = []
        for key, value in items(self.db, S.chunk_key(after + 1)):
            if not key.startswith(S.CHUNK_PREFIX):
                break
            out.append(ChunkRecord.from_bytes(S.chunk_id_of_key(key), value))
            if len(out) >= limit:
                break
        return out

    def peers(self) -> list[PeerRecord]:
        return [PeerRecord.from_bytes(S.peer_id_of_key(k), v) for k, v in self.scan(S.PEER_PREFIX)]

    def meta_members(self) -> dict[int, str]:
        return {S.member_of_key(k): S.unpack(v) for k, v in self.scan(S.MEMBER_PREFIX)}

    def orphans(self) -> list[int]:
        return [S.ino_of_orphan_key(k) for k, _ in self.scan(S.ORPHAN_PREFIX)]

    def delete_queue(self, limit: int = 1000) -> list[tuple[int, int]]:
        out = []
        for k, v in self.scan(S.QUEUE_PREFIX):
            out.append((S.chunk_id_of_key(k), S.unpack(v)[0]))
            if len(out) >= limit:
                break
        return out

    @rocks_errors
    def dump(self) -> tuple[bytes, int]:
        """The whole key space as one msgpack array of [key, value] pairs, and how many there are
        (Raft snapshots, dataset-mode copies, ``lakefs-fuse dump``)."""
        packer = msgpack.Packer(use_bin_type=True)
        parts = [b""]
        count = 0
        for key, value in items(self.db):
            parts.append(packer.pack([key, value]))
            count += 1
        parts[0] = packer.pack_array_header(count)
        return b"".join(parts), count

    @rocks_errors
    def checkpoint(self, directory: str) -> None:
        """A RocksDB checkpoint of the state as of now in ``directory`` (which must not exist):
        the memtable is flushed, every SST file hard-linked, the small others copied (a Raft
        snapshot, ``meta/snapshots.py``)."""
        rocksdict.Checkpoint(self.db).create_checkpoint(directory)

    def put_all(self, pairs, on_batch=None) -> int:
        """Raw [key, value] pairs written in batches of 10,000 (restoring a snapshot or a dump);
        ``on_batch(n)`` after each. Returns how many."""
        batch, n = rocksdict.WriteBatch(raw_mode=True), 0
        for key, value in pairs:
            batch.put(key, value)
            n += 1
            if n % 10000 == 0:
                self.db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
                if on_batch:
                    on_batch(10000)
        self.db.write(batch)
        if on_batch and n % 10000:
            on_batch(n % 10000)
        return n

    @rocks_errors
    def next_chunk_id(self) -> int:
        """Chunk ids below this have been allocated (the next one to be handed out)."""
        data = self.db.get(S.counter_key("chunk"))
        return int.from_bytes(data, "big") if data else 1

    @rocks_errors
    def stored_data(self) -> int | None:
        """Bytes in chunks (sum of their lengths), or None if this lake's counter is missing."""
        data = self.db.get(S.counter_key("data"))
        return int.from_bytes(data, "big") if data is not None else None

    @rocks_errors
    def count_inodes(self) -> int:
        data = self.db.get(S.counter_key("ino"))
        return int.from_bytes(data, "big") if data else 0

    def scan(self, prefix: bytes):
        """Committed (key, value) pairs under ``prefix``, in key order."""
        for key, value in items(self.db, prefix):
            if not key.startswith(prefix):
                break
            yield key, value

    def sparse_chunks(self, max_live: float, limit: int, min_dead: int = 0) -> dict:
        """Chunks whose files use at most ``max_live`` of their bytes (and leave at least
        ``min_dead`` unused), for compaction: ``{"chunks": [[chunk_id, length, live, [[ino,
        file_off, length, chunk_off], ...]], ...], "chunk_bytes": N, "live_bytes": N}`` (the
        totals over the whole lake; ``status`` shows them). Reads every extent: seconds for a
        million files."""
        live: dict[int, int] = {}
        for _key, value in items(self.db, S.EXTENT_PREFIX):
            if not _key.startswith(S.EXTENT_PREFIX):
                break
            for e in S.unpack_extents(value):
                live[e.chunk_id] = live.get(e.chunk_id, 0) + e.length
        lengths: dict[int, int] = {}
        for key, value in items(self.db, S.CHUNK_PREFIX):
            if not key.startswith(S.CHUNK_PREFIX):
                break
            lengths[S.chunk_id_of_key(key)] = ChunkRecord.from_bytes(0, value).length
        picked: dict[int, list[Any]] = {}
        for cid, length in lengths.items():
            used = live.get(cid, 0)
            if 0 < used <= length * max_live and length - used >= min_dead and len(picked) < limit:
                picked[cid] = [cid, length, used, []]
        if picked:
            for key, value in items(self.db, S.EXTENT_PREFIX):
                if not key.startswith(S.EXTENT_PREFIX):
                    break
                for e in S.unpack_extents(value):
                    if e.chunk_id in picked:
                        picked[e.chunk_id][3].append([S.ino_of_extent_key(key), e.file_off, e.length, e.chunk_off])
        return {"chunks": list(picked.values()), "chunk_bytes": sum(lengths.values()),
                "live_bytes": sum(v for c, v in live.items() if c in lengths)}
