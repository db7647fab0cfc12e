"""The metadata state machine: deterministic commands applied to RocksDB.

Every mutation is a command -- a msgpack-able list ``[op, args...]`` -- applied by
:meth:`StateMachine.apply`, which reads through a :class:`Txn` and writes one RocksDB
``WriteBatch``. Commands carry every nondeterministic input (the clock, uid/gid), so a
Raft log (issue 4) can replay them on every replica with the same result. ``apply`` never
awaits and never does I/O other than RocksDB, so it is atomic with respect to the event loop.

A command that fails raises a :class:`~lakefs_fuse.errors.LakeError` before anything is
written: failed commands change nothing.

Queries (lookup, getattr, readdir, extents...) are plain synchronous reads.
"""

from __future__ import annotations

import functools
import os
import stat as st
from collections.abc import Iterator

import msgpack
import rocksdict

from .. import errors as E
from ..private import make_private, owner_only_umask
from . import schema as S
from .schema import ChunkRecord, Extent, Inode, PeerRecord

NAME_MAX = 255
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_SIZE_MAX = 65536


def _kind(mode: int) -> int:
    return st.S_IFMT(mode)


def _rocks_failure(db: rocksdict.Rdict, exc: BaseException) -> E.LakeError | None:
    """The LakeError for a RocksDB failure (rocksdict raises a plain ``Exception`` carrying
    RocksDB's status text), or None when ``exc`` is something else (a bug stays a bug)."""
    if type(exc) is not Exception:
        return None
    first = (str(exc).splitlines() or [""])[0]
    if first.startswith("Corruption"):
        return E.MetadataCorrupt(db.path(), first)
    if first.startswith("IO error"):
        return E.LakeError(f"metadata in {db.path()} cannot be read: {first}")
    return None


def _rocks_errors(fn):
    """Report RocksDB's read failures (a damaged block, an I/O error) as LakeErrors: one line
    with an errno for the CLI and the FUSE boundary, instead of a bare ``Exception``."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            failure = _rocks_failure(self.db, exc)
            if failure is None:
                raise
            raise failure from None
    return wrapper


def _items(db: rocksdict.Rdict, from_key: bytes | None = None,
           read_opt: rocksdict.ReadOptions | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs in key order from ``from_key``. ``Rdict.items`` ends quietly at a damaged
    block, as if the keys had run out (fsck then saw a quarter of a lake and called the rest lost);
    this raises :class:`~lakefs_fuse.errors.MetadataCorrupt` there instead."""
    it = db.iter(read_opt) if read_opt is not None else db.iter()
    if from_key is None:
        it.seek_to_first()
    else:
        it.seek(from_key)
    while it.valid():  # never step an invalid iterator: RocksDB asserts (the process dies)
        yield it.key(), it.value()
        it.next()
    try:
        it.status()
    except Exception as exc:
        raise (_rocks_failure(db, exc) or exc) from None


class Txn:
    """A read-your-writes view over the DB that collects writes into one WriteBatch."""

    __slots__ = ("db", "batch", "pending")

    def __init__(self, db: rocksdict.Rdict):
        self.db = db
        self.batch = rocksdict.WriteBatch(raw_mode=True)
        self.pending: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.db.get(key)  # a damaged block raises: StateMachine.apply reports it

    def put(self, key: bytes, value: bytes) -> None:
        self.pending[key] = value
        self.batch.put(key, value)

    def delete(self, key: bytes) -> None:
        self.pending[key] = None
        self.batch.delete(key)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Committed keys under ``prefix`` (pending writes are not merged: callers scan first)."""
        for key, value in _items(self.db, start or prefix):
            if not key.startswith(prefix):
                break
            yield key, value


#: RocksDB block cache of one metadata replica or mount (~1 KB of metadata per file: 256 MiB
#: keeps the blocks of a few hundred thousand files' entries, inodes and extents).
DEFAULT_BLOCK_CACHE = 256 << 20


#: The extended attribute that sets a file's or directory's erasure-coding profile ("K+M").
EC_XATTR = b"user.lakefs.ec"


def _ec_text(ec: int) -> bytes:
    return b"%d+%d" % (ec >> 8, ec & 0xFF)


class StateMachine:
    """Owns the RocksDB of one metadata replica."""

    def __init__(self, path: str, *, create: bool = False, read_only: bool = False,
                 block_cache: int = DEFAULT_BLOCK_CACHE):
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
        # The column family is named explicitly: opening an existing DB without it, rocksdict gives
        # the default column family default table options (an 8 MB cache, no filters).
        families = {"default": opts}
        # Keys hold every file name: the database is owner-only (see lakefs_fuse.private).
        make_private(path)
        with owner_only_umask():
            if read_only:  # a consistent view beside a running mount (RocksDB takes no lock then)
                self.db = rocksdict.Rdict(path, options=opts, column_families=families,
                                          access_type=rocksdict.AccessType.read_only())
            else:
                self.db = rocksdict.Rdict(path, options=opts, column_families=families)
        make_private(path)
        self._sync_opt = rocksdict.WriteOptions()
        self._sync_opt.sync = True

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

    @_rocks_errors
    def apply(self, cmd: list, *, sync: bool = False):
        op = cmd[0]
        handler = getattr(self, "_cmd_" + op, None)
        if handler is None:
            raise E.Invalid(f"unknown metadata command {op!r}")
        txn = Txn(self.db)
        result = handler(txn, *cmd[1:])
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
        opts.fill_cache(False)
        return sum(1 for _ in _items(self.db, read_opt=opts))

    # -------------------------------------------------------------- helpers

    @staticmethod
    def _inode(txn: Txn, ino: int) -> Inode:
        data = txn.get(S.inode_key(ino))
        if data is None:
            raise E.NotFound(f"inode {ino}")
        return Inode.from_bytes(ino, data)

    @staticmethod
    def _put_inode(txn: Txn, inode: Inode) -> None:
        txn.put(S.inode_key(inode.ino), inode.to_bytes())

    @staticmethod
    def _next(txn: Txn, name: str, n: int = 1) -> int:
        key = S.counter_key(name)
        data = txn.get(key)
        value = int.from_bytes(data, "big") if data else 1
        txn.put(key, (value + n).to_bytes(8, "big"))
        return value

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise E.NameTooLong()
        if not name or b"/" in name or name in (b".", b".."):
            raise E.Invalid(f"bad name {name!r}")

    def _dir(self, txn: Txn, ino: int) -> Inode:
        inode = self._inode(txn, ino)
        if not inode.is_dir:
            raise E.NotADir()
        if inode.nlink == 0:
            raise E.NotFound("directory was removed")
        return inode

    @staticmethod
    def _dentry(txn: Txn, parent: int, name: bytes) -> list | None:
        data = txn.get(S.dentry_key(parent, name))
        return S.unpack(data) if data is not None else None

    def _add_dentry(self, txn: Txn, parent: int, name: bytes, ino: int, mode: int) -> None:
        cookie = self._next(txn, "cookie")
        txn.put(S.dentry_key(parent, name), S.pack([ino, _kind(mode), cookie]))
        txn.put(S.cookie_key(parent, cookie), name)

    @staticmethod
    def _del_dentry(txn: Txn, parent: int, name: bytes, entry: list) -> None:
        txn.delete(S.dentry_key(parent, name))
        txn.delete(S.cookie_key(parent, entry[2]))

    def _is_empty_dir(self, txn: Txn, ino: int) -> bool:
        for _ in txn.scan(S.dentry_prefix(ino)):
            return False
        return True

    @staticmethod
    def _touch(inode: Inode, now: int, *, m: bool = True, c: bool = True) -> None:
        if m:
            inode.mtime_ns = now
        if c:
            inode.ctime_ns = now

    def _drop_link(self, txn: Txn, inode: Inode, now: int) -> None:
        """One name of ``inode`` went away: nlink down, orphan at zero (data stays until release)."""
        if inode.is_dir:
            inode.nlink = 0
        else:
            inode.nlink -= 1
        inode.ctime_ns = now
        self._put_inode(txn, inode)
        if inode.nlink == 0:
            txn.put(S.orphan_key(inode.ino), b"")

    # -------------------------------------------------------------- commands

    def _cmd_format(self, txn: Txn, config: dict, now: int, uid: int, gid: int) -> None:
        if txn.get(S.FORMAT) is not None:
            raise E.Exists("lake already formatted")
        txn.put(S.FORMAT, S.pack(config))
        root = Inode(S.ROOT_INO, st.S_IFDIR | 0o755, 2, uid, gid, 0, now, now, now, 0, S.ROOT_INO)
        self._put_inode(txn, root)
        txn.put(S.counter_key("ino"), (S.ROOT_INO + 1).to_bytes(8, "big"))
        txn.put(S.counter_key("data"), (0).to_bytes(8, "big"))

    @staticmethod
    def _add_data(txn: Txn, delta: int) -> None:
        """Keep the sum of chunk lengths (``df``'s used space) current; a lake formatted before
        the counter existed has none until ``init_usage`` counts it."""
        key = S.counter_key("data")
        data = txn.get(key)
        if data is not None:
            txn.put(key, max(0, int.from_bytes(data, "big") + delta).to_bytes(8, "big"))

    def _cmd_init_usage(self, txn: Txn) -> int:
        """Count the bytes of every chunk into the usage counter, if it is missing."""
        key = S.counter_key("data")
        if txn.get(key) is None:
            total = sum(ChunkRecord.from_bytes(0, value).length for _k, value in txn.scan(S.CHUNK_PREFIX))
            txn.put(key, total.to_bytes(8, "big"))
        return int.from_bytes(txn.get(key), "big")

    def _cmd_mknod(self, txn: Txn, parent: int, name: bytes, mode: int, rdev: int, uid: int, gid: int,
                   now: int) -> list:
        self._check_name(name)
        pdir = self._dir(txn, parent)
        if self._dentry(txn, parent, name) is not None:
            raise E.Exists()
        if _kind(mode) not in (st.S_IFREG, st.S_IFDIR, st.S_IFIFO, st.S_IFSOCK, st.S_IFCHR, st.S_IFBLK):
            raise E.Invalid("unsupported file type")
        is_dir = st.S_ISDIR(mode)
        if pdir.mode & st.S_ISGID:  # BSD group semantics for setgid directories
            gid = pdir.gid
            if is_dir:
                mode |= st.S_ISGID
        ino = self._next(txn, "ino")
        inode = Inode(ino, mode, 2 if is_dir else 1, uid, gid, 0, now, now, now,
                      rdev if _kind(mode) in (st.S_IFCHR, st.S_IFBLK) else 0, parent if is_dir else 0)
        if pdir.ec and _kind(mode) in (st.S_IFREG, st.S_IFDIR):  # a directory's EC profile is inherited
            inode.ec = pdir.ec
            txn.put(S.xattr_key(ino, EC_XATTR), _ec_text(pdir.ec))
        self._put_inode(txn, inode)
        self._add_dentry(txn, parent, name, ino, mode)
        if is_dir:
            pdir.nlink += 1
        self._touch(pdir, now)
        self._put_inode(txn, pdir)
        return [ino, inode.to_bytes()]

    def _cmd_symlink(self, txn: Txn, parent: int, name: bytes, target: bytes, uid: int, gid: int,
                     now: int) -> list:
        self._check_name(name)
        if not target or len(target) > 4095:
            raise E.NameTooLong() if target else E.NotFound("empty symlink target")
        pdir = self._dir(txn, parent)
        if self._dentry(txn, parent, name) is not None:
            raise E.Exists()
        if pdir.mode & st.S_ISGID:
            gid = pdir.gid
        ino = self._next(txn, "ino")
        inode = Inode(ino, st.S_IFLNK | 0o777, 1, uid, gid, len(target), now, now, now)
        self._put_inode(txn, inode)
        txn.put(S.symlink_key(ino), target)
        self._add_dentry(txn, parent, name, ino, inode.mode)
        self._touch(pdir, now)
        self._put_inode(txn, pdir)
        return [ino, inode.to_bytes()]

    def _cmd_link(self, txn: Txn, ino: int, parent: int, name: bytes, now: int) -> list:
        self._check_name(name)
        inode = self._inode(txn, ino)
        if inode.is_dir:
            raise E.NotPermitted("hard link to a directory")
        if inode.nlink == 0:
            raise E.NotFound("file was removed")
        if inode.nlink >= 65000:
            raise E.TooManyLinks()
        pdir = self._dir(txn, parent)
        if self._dentry(txn, parent, name) is not None:
            raise E.Exists()
        self._add_dentry(txn, parent, name, ino, inode.mode)
        inode.nlink += 1
        inode.ctime_ns = now
        self._put_inode(txn, inode)
        self._touch(pdir, now)
        self._put_inode(txn, pdir)
        return [ino, inode.to_bytes()]

    def _cmd_unlink(self, txn: Txn, parent: int, name: bytes, now: int) -> list:
        pdir = self._dir(txn, parent)
        entry = self._dentry(txn, parent, name)
        if entry is None:
            raise E.NotFound()
        inode = self._inode(txn, entry[0])
        if inode.is_dir:
            raise E.IsADir()
        self._del_dentry(txn, parent, name, entry)
        self._drop_link(txn, inode, now)
        self._touch(pdir, now)
        self._put_inode(txn, pdir)
        return [inode.ino, inode.nlink]

    def _cmd_rmdir(self, txn: Txn, parent: int, name: bytes, now: int) -> list:
        pdir = self._dir(txn, parent)
        entry = self._dentry(txn, parent, name)
        if entry is None:
            raise E.NotFound()
        inode = self._inode(txn, entry[0])
        if not inode.is_dir:
            raise E.NotADir()
        if not self._is_empty_dir(txn, inode.ino):
            raise E.NotEmpty()
        self._del_dentry(txn, parent, name, entry)
        self._drop_link(txn, inode, now)
        pdir.nlink -= 1
        self._touch(pdir, now)
        self._put_inode(txn, pdir)
        return [inode.ino, 0]

    def _is_ancestor(self, txn: Txn, anc: int, ino: int) -> bool:
        """Is directory ``anc`` equal to ``ino`` or above it?"""
        seen = 0
        while True:
            if ino == anc:
                return True
            if ino == S.ROOT_INO or seen > 4096:
                return False
            ino = self._inode(txn, ino).parent
            seen += 1

    def _cmd_rename(self, txn: Txn, parent: int, name: bytes, newparent: int, newname: bytes, flags: int,
                    now: int) -> list:
        """Returns [moved ino, replaced ino or 0, replaced nlink]."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise E.Invalid("bad rename flags")
        self._check_name(newname)
        src_dir = self._dir(txn, parent)
        dst_dir = src_dir if newparent == parent else self._dir(txn, newparent)
        src = self._dentry(txn, parent, name)
        if src is None:
            raise E.NotFound()
        dst = self._dentry(txn, newparent, newname)
        moved = self._inode(txn, src[0])
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise E.NotFound()
            other = self._inode(txn, dst[0])
            if moved.is_dir and self._is_ancestor(txn, moved.ino, newparent):
                raise E.Invalid("cannot move a directory into itself")
            if other.is_dir and self._is_ancestor(txn, other.ino, parent):
                raise E.Invalid("cannot move a directory into itself")
            txn.put(S.dentry_key(parent, name), S.pack([other.ino, _kind(other.mode), src[2]]))
            txn.put(S.dentry_key(newparent, newname), S.pack([moved.ino, _kind(moved.mode), dst[2]]))
            if parent != newparent:
                if moved.is_dir != other.is_dir:
                    delta = 1 if moved.is_dir else -1
                    src_dir.nlink -= delta
                    dst_dir.nlink += delta
                if moved.is_dir:
                    moved.parent = newparent
                if other.is_dir:
                    other.parent = parent
            moved.ctime_ns = other.ctime_ns = now
            self._put_inode(txn, moved)
            self._put_inode(txn, other)
            self._touch(src_dir, now)
            self._touch(dst_dir, now)
            self._put_inode(txn, src_dir)
            if dst_dir is not src_dir:
                self._put_inode(txn, dst_dir)
            return [moved.ino, 0, 0]
        replaced, replaced_nlink = 0, 0
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise E.Exists()
            if dst[0] == src[0]:
                return [moved.ino, 0, 0]  # two names of one inode: POSIX says do nothing
            target = self._inode(txn, dst[0])
            if moved.is_dir and not target.is_dir:
                raise E.NotADir()
            if not moved.is_dir and target.is_dir:
                raise E.IsADir()
            if target.is_dir and not self._is_empty_dir(txn, target.ino):
                raise E.NotEmpty()
        if moved.is_dir and newparent != parent and self._is_ancestor(txn, moved.ino, newparent):
            raise E.Invalid("cannot move a directory into itself")
        if dst is not None:
            self._del_dentry(txn, newparent, newname, dst)
            self._drop_link(txn, target, now)
            if target.is_dir:
                dst_dir.nlink -= 1
            replaced, replaced_nlink = target.ino, target.nlink
        self._del_dentry(txn, parent, name, src)
        self._add_dentry(txn, newparent, newname, moved.ino, moved.mode)
        if moved.is_dir and newparent != parent:
            src_dir.nlink -= 1
            dst_dir.nlink += 1
            moved.parent = newparent
        moved.ctime_ns = now
        self._put_inode(txn, moved)
        self._touch(src_dir, now)
        self._touch(dst_dir, now)
        self._put_inode(txn, src_dir)
        if dst_dir is not src_dir:
            self._put_inode(txn, dst_dir)
        return [moved.ino, replaced, replaced_nlink]

    def _cmd_setattr(self, txn: Txn, ino: int, changes: dict, now: int) -> bytes:
        """changes: any of mode, uid, gid, size, atime_ns, mtime_ns (values already resolved)."""
        inode = self._inode(txn, ino)
        if "mode" in changes:
            inode.mode = _kind(inode.mode) | (changes["mode"] & 0o7777)
        if "uid" in changes:
            inode.uid = changes["uid"]
        if "gid" in changes:
            inode.gid = changes["gid"]
        if "size" in changes:
            size = changes["size"]
            if inode.is_dir:
                raise E.IsADir()
            if not inode.is_reg:
                raise E.Invalid("truncate of a special file")
            if size < 0:
                raise E.Invalid("negative size")
            if size < inode.size:
                self._count_stored(txn, inode)
                inode.stored -= self._truncate_extents(txn, ino, size, now)
            if size != inode.size:
                inode.mtime_ns = now
            inode.size = size
        if "atime_ns" in changes:
            inode.atime_ns = changes["atime_ns"]
        if "mtime_ns" in changes:
            inode.mtime_ns = changes["mtime_ns"]
        inode.ctime_ns = now
        self._put_inode(txn, inode)
        return inode.to_bytes()

    def _chunk_refs(self, txn: Txn, deltas: dict[int, int], now: int) -> None:
        for chunk_id, delta in deltas.items():
            if delta == 0:
                continue
            data = txn.get(S.chunk_key(chunk_id))
            if data is None:
                continue
            rec = ChunkRecord.from_bytes(chunk_id, data)
            rec.refs += delta
            txn.put(S.chunk_key(chunk_id), rec.to_bytes())
            if rec.refs <= 0:
                txn.put(S.queue_key(chunk_id), S.pack([now]))

    def _truncate_extents(self, txn: Txn, ino: int, size: int, now: int) -> int:
        """Drop the extents at or beyond ``size``; returns the file bytes they covered."""
        cs = self.chunk_size(txn)
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
        self._chunk_refs(txn, deltas, now)
        return dropped

    @staticmethod
    def _count_stored(txn: Txn, inode: Inode) -> None:
        """Count the stored bytes of an inode whose record predates the counter. Call before this
        command changes the inode's extents: the scan sees only what earlier commands wrote."""
        if inode.stored < 0:
            inode.stored = sum(e.length for _k, value in txn.scan(S.extent_prefix(inode.ino))
                               for e in S.unpack_extents(value))

    def chunk_size(self, txn: Txn | None = None) -> int:
        return self.format_record()["chunk_size"]

    def _cmd_commit(self, txn: Txn, chunk: list | None, extents: list, mtimes: dict, now: int) -> dict:
        """Commit one sealed chunk: its record plus extents ``[ino, file_off, length, chunk_off]``.

        Extents of inodes that no longer exist are skipped. New extents shadow older ones.
        Returns {ino: new size}.
        """
        cs = self.chunk_size()
        deltas: dict[int, int] = {}
        if chunk is not None:
            rec = ChunkRecord.from_wire(chunk)
            # A commit retried after an answer was lost must not reset the record's reference
            # count (the chunk would look unreferenced and be collected under its files).
            if txn.get(S.chunk_key(rec.chunk_id)) is None:
                txn.put(S.chunk_key(rec.chunk_id), rec.to_bytes())
                self._add_data(txn, rec.length)
        by_key: dict[tuple[int, int], list[Extent]] = {}
        inodes: dict[int, Inode] = {}
        for ino, file_off, length, chunk_id, chunk_off in extents:
            if ino not in inodes:
                try:
                    inodes[ino] = self._inode(txn, ino)
                    self._count_stored(txn, inodes[ino])
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
            self._put_inode(txn, inode)
            sizes[ino] = inode.size
        if chunk is not None and deltas.get(rec.chunk_id, 0) <= 0:
            txn.put(S.queue_key(rec.chunk_id), S.pack([now]))  # nothing points into it
        self._chunk_refs(txn, deltas, now)
        return sizes

    def _cmd_relocate(self, txn: Txn, chunk: list, moves: list, now: int) -> int:
        """Compaction: point file bytes at a new chunk holding a copy of them, where they still
        are where the copy was taken from. ``moves``: ``[ino, file_off, length, old_chunk,
        old_off, new_off]``. A piece that was overwritten, truncated or deleted since is left as
        it is (the copy of it goes unused), so a relocation never undoes a newer write. Sizes,
        times and stored-byte counts do not change: the same bytes, somewhere else. Returns how
        many bytes moved; a new chunk nothing ends up using is queued for deletion."""
        rec = ChunkRecord.from_wire(chunk)
        if txn.get(S.chunk_key(rec.chunk_id)) is None:
            txn.put(S.chunk_key(rec.chunk_id), rec.to_bytes())
            self._add_data(txn, rec.length)
        cs = self.chunk_size()
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
        self._chunk_refs(txn, deltas, now)
        return moved

    def sparse_chunks(self, max_live: float, limit: int, min_dead: int = 0) -> dict:
        """Chunks whose files use at most ``max_live`` of their bytes (and leave at least
        ``min_dead`` unused), for compaction: ``{"chunks": [[chunk_id, length, live, [[ino,
        file_off, length, chunk_off], ...]], ...], "chunk_bytes": N, "live_bytes": N}`` (the
        totals over the whole lake; ``status`` shows them). Reads every extent: seconds for a
        million files."""
        live: dict[int, int] = {}
        for _key, value in _items(self.db, S.EXTENT_PREFIX):
            if not _key.startswith(S.EXTENT_PREFIX):
                break
            for e in S.unpack_extents(value):
                live[e.chunk_id] = live.get(e.chunk_id, 0) + e.length
        lengths: dict[int, int] = {}
        for key, value in _items(self.db, S.CHUNK_PREFIX):
            if not key.startswith(S.CHUNK_PREFIX):
                break
            lengths[S.chunk_id_of_key(key)] = ChunkRecord.from_bytes(0, value).length
        picked = {}
        for cid, length in lengths.items():
            used = live.get(cid, 0)
            if 0 < used <= length * max_live and length - used >= min_dead and len(picked) < limit:
                picked[cid] = [cid, length, used, []]
        if picked:
            for key, value in _items(self.db, S.EXTENT_PREFIX):
                if not key.startswith(S.EXTENT_PREFIX):
                    break
                for e in S.unpack_extents(value):
                    if e.chunk_id in picked:
                        picked[e.chunk_id][3].append([S.ino_of_extent_key(key), e.file_off, e.length, e.chunk_off])
        return {"chunks": list(picked.values()), "chunk_bytes": sum(lengths.values()),
                "live_bytes": sum(v for c, v in live.items() if c in lengths)}

    def _cmd_setxattr(self, txn: Txn, ino: int, name: bytes, value: bytes, flags: int, now: int) -> None:
        inode = self._inode(txn, ino)
        if not name or len(name) > 255:
            raise E.RangeError() if name else E.Invalid("empty xattr name")
        if len(value) > XATTR_SIZE_MAX:
            raise E.TooBig()
        key = S.xattr_key(ino, name)
        exists = txn.get(key) is not None
        if flags & XATTR_CREATE and exists:
            raise E.Exists()
        if flags & XATTR_REPLACE and not exists:
            raise E.NoData()
        if name == EC_XATTR:
            inode.ec = self._parse_ec(txn, inode, value)
            value = _ec_text(inode.ec)
        txn.put(key, value)
        inode.ctime_ns = now
        self._put_inode(txn, inode)

    def _parse_ec(self, txn: Txn, inode: Inode, value: bytes) -> int:
        """``user.lakefs.ec`` = "K+M": the profile new data is written with (1 <= K, K+M <= peers)."""
        if not (inode.is_dir or inode.is_reg):
            raise E.Invalid("an EC profile applies to files and directories")
        try:
            k, m = (int(x) for x in value.decode().strip().split("+"))
        except ValueError:
            raise E.Invalid(f"{EC_XATTR.decode()}: expected K+M, e.g. 6+3 or 1+2 (3 replicas)") from None
        peers = sum(1 for _ in txn.scan(b"P"))
        if k < 1 or m < 1 or k + m > min(peers, 255):
            raise E.Invalid(f"{EC_XATTR.decode()}: {k}+{m} needs K >= 1, M >= 1 and K+M <= {peers} peers")
        return k << 8 | m

    def _cmd_removexattr(self, txn: Txn, ino: int, name: bytes, now: int) -> None:
        inode = self._inode(txn, ino)
        key = S.xattr_key(ino, name)
        if txn.get(key) is None:
            raise E.NoData()
        txn.delete(key)
        if name == EC_XATTR:
            inode.ec = 0  # back to the lake's default
        inode.ctime_ns = now
        self._put_inode(txn, inode)

    def _cmd_release(self, txn: Txn, ino: int, now: int) -> bool:
        """Free an orphan (nlink 0, no longer open anywhere): its extents, xattrs and inode."""
        if txn.get(S.orphan_key(ino)) is None:
            return False
        inode = self._inode(txn, ino)
        if inode.nlink > 0:
            txn.delete(S.orphan_key(ino))
            return False
        deltas: dict[int, int] = {}
        for key, value in list(txn.scan(S.extent_prefix(ino))):
            for ext in S.unpack_extents(value):
                deltas[ext.chunk_id] = deltas.get(ext.chunk_id, 0) - 1
            txn.delete(key)
        for key, _ in list(txn.scan(S.xattr_prefix(ino))):
            txn.delete(key)
        txn.delete(S.symlink_key(ino))
        txn.delete(S.inode_key(ino))
        txn.delete(S.orphan_key(ino))
        self._chunk_refs(txn, deltas, now)
        return True

    def _cmd_move_shard(self, txn: Txn, chunk_id: int, index: int, old_peer: int, new_peer: int) -> bool:
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

    def _cmd_alloc_chunks(self, txn: Txn, n: int) -> int:
        return self._next(txn, "chunk", n)

    def _cmd_register_peer(self, txn: Txn, peer_id: int, record: list) -> None:
        txn.put(S.peer_key(peer_id), S.pack(record))

    def _cmd_set_meta_member(self, txn: Txn, node_id: int, address: str | None) -> None:
        """Record (or, with None, forget) the address of metadata server ``node_id``."""
        if address is None:
            txn.delete(S.member_key(node_id))
        else:
            txn.put(S.member_key(node_id), S.pack(address))

    def _cmd_load_keys(self, txn: Txn, pairs: list, first: bool) -> int:
        """``lakefs-fuse load`` into metadata servers: raw keys of a dump, in batches. The first
        batch refuses a cluster that already holds a lake; member addresses (M keys) are the
        cluster's own and never loaded."""
        if first and txn.get(S.FORMAT) is not None:
            raise E.Exists("these metadata servers already hold a lake")
        n = 0
        for key, value in pairs:
            if not isinstance(key, bytes) or not isinstance(value, bytes) or not key:
                raise E.Invalid("load_keys takes [bytes, bytes] pairs")
            if key[:1] == b"M":
                continue
            txn.put(key, value)
            n += 1
        return n

    def _cmd_gc_done(self, txn: Txn, chunk_ids: list) -> None:
        for chunk_id in chunk_ids:
            data = txn.get(S.chunk_key(chunk_id))
            if data is not None and ChunkRecord.from_bytes(chunk_id, data).refs > 0:
                txn.delete(S.queue_key(chunk_id))  # referenced again: keep the chunk
                continue
            if data is not None:
                self._add_data(txn, -ChunkRecord.from_bytes(chunk_id, data).length)
            txn.delete(S.chunk_key(chunk_id))
            txn.delete(S.queue_key(chunk_id))

    def _cmd_fsck(self, txn: Txn, fixes: list, now: int) -> int:
        """Repairs found by ``lakefs-fuse fsck`` (each re-checked here, so a stale finding is a
        no-op): returns how many changed something."""
        done = 0
        for fix in fixes:
            op, args = fix[0], fix[1:]
            if op == "drop_dentry":  # an entry whose inode does not exist
                parent, name = args
                entry = self._dentry(txn, parent, name)
                if entry is not None and txn.get(S.inode_key(entry[0])) is None:
                    self._del_dentry(txn, parent, name, entry)
                    done += 1
            elif op == "set_nlink":  # a file's link count, to the number of entries naming it
                ino, n = args
                data = txn.get(S.inode_key(ino))
                if data is not None:
                    inode = Inode.from_bytes(ino, data)
                    if inode.nlink != n and not inode.is_dir:
                        inode.nlink = n
                        inode.ctime_ns = now
                        self._put_inode(txn, inode)
                        if n == 0:
                            txn.put(S.orphan_key(ino), b"")
                        else:
                            txn.delete(S.orphan_key(ino))
                        done += 1
            elif op == "relink":  # a lost inode, named again (in lost+found)
                ino, parent, name = args
                data = txn.get(S.inode_key(ino))
                if data is not None and self._dentry(txn, parent, name) is None:
                    inode = Inode.from_bytes(ino, data)
                    self._add_dentry(txn, parent, name, ino, inode.mode)
                    inode.nlink = max(inode.nlink, 2) if inode.is_dir else 1  # the one name it has now
                    if inode.is_dir:
                        inode.parent = parent
                        pdir = self._dir(txn, parent)
                        pdir.nlink += 1
                        self._put_inode(txn, pdir)
                    self._put_inode(txn, inode)
                    txn.delete(S.orphan_key(ino))
                    done += 1
            elif op == "drop_extent":  # an extent whose chunk is gone: the range becomes a hole
                ino, index, file_off = args
                data = txn.get(S.extent_key(ino, index))
                if data is not None:
                    exts = S.unpack_extents(data)
                    keep = [e for e in exts if e.file_off != file_off or self._extent_ok(txn, e)]
                    if len(keep) != len(exts):
                        idata = txn.get(S.inode_key(ino))
                        if idata is not None:
                            inode = Inode.from_bytes(ino, idata)
                            if inode.stored >= 0:
                                inode.stored -= sum(e.length for e in exts) - sum(e.length for e in keep)
                                self._put_inode(txn, inode)
                        if keep:
                            txn.put(S.extent_key(ino, index), S.pack_extents(keep))
                        else:
                            txn.delete(S.extent_key(ino, index))
                        done += 1
            elif op == "drop_extents":  # extents of an inode that does not exist
                (ino,) = args
                if txn.get(S.inode_key(ino)) is None:
                    for key, _ in list(txn.scan(S.extent_prefix(ino))):
                        txn.delete(key)
                        done += 1
            elif op == "set_refs":  # a chunk's reference count, to the extents that use it
                chunk_id, n = args
                data = txn.get(S.chunk_key(chunk_id))
                if data is not None:
                    rec = ChunkRecord.from_bytes(chunk_id, data)
                    if rec.refs != n:
                        rec.refs = n
                        txn.put(S.chunk_key(chunk_id), rec.to_bytes())
                        if n <= 0:
                            txn.put(S.queue_key(chunk_id), S.pack([now]))
                        else:
                            txn.delete(S.queue_key(chunk_id))
                        done += 1
            else:
                raise E.Invalid(f"unknown fsck fix {op!r}")
        return done

    @staticmethod
    def _extent_ok(txn: Txn, ext) -> bool:
        data = txn.get(S.chunk_key(ext.chunk_id))
        return data is not None and ext.chunk_off + ext.length <= ChunkRecord.from_bytes(ext.chunk_id, data).length

    # -------------------------------------------------------------- queries

    @_rocks_errors
    def format_record(self) -> dict:
        data = self.db.get(S.FORMAT)
        if data is None:
            raise E.NotFound("metadata is not formatted")
        return S.unpack(data)

    @_rocks_errors
    def getattr(self, ino: int) -> Inode:
        data = self.db.get(S.inode_key(ino))
        if data is None:
            raise E.NotFound()
        return Inode.from_bytes(ino, data)

    @_rocks_errors
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

    @_rocks_errors
    def readdir(self, ino: int, after_cookie: int, limit: int) -> list[tuple[bytes, Inode, int]]:
        """Entries with cookie > after_cookie, in cookie order: (name, inode, cookie)."""
        out = []
        prefix = S.cookie_prefix(ino)
        for key, name in _items(self.db, S.cookie_key(ino, after_cookie + 1)):
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

    @_rocks_errors
    def extents(self, ino: int, first_index: int, last_index: int) -> list[Extent]:
        out: list[Extent] = []
        prefix = S.extent_prefix(ino)
        for key, value in _items(self.db, S.extent_key(ino, first_index)):
            if not key.startswith(prefix) or S.index_of_extent_key(key) > last_index:
                break
            out.extend(S.unpack_extents(value))
        return out

    @_rocks_errors
    def readlink(self, ino: int) -> bytes:
        data = self.db.get(S.symlink_key(ino))
        if data is None:
            raise E.Invalid("not a symlink")
        return data

    @_rocks_errors
    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.getattr(ino)
        data = self.db.get(S.xattr_key(ino, name))
        if data is None:
            raise E.NoData()
        return data

    @_rocks_errors
    def listxattr(self, ino: int) -> list[bytes]:
        self.getattr(ino)
        prefix = S.xattr_prefix(ino)
        return [key[len(prefix):] for key, _ in self.scan(prefix)]

    @_rocks_errors
    def chunk(self, chunk_id: int) -> ChunkRecord:
        data = self.db.get(S.chunk_key(chunk_id))
        if data is None:
            raise E.NotFound(f"chunk {chunk_id}")
        return ChunkRecord.from_bytes(chunk_id, data)

    @_rocks_errors
    def chunks(self, after: int = -1, limit: int = 1000) -> list[ChunkRecord]:
        """Chunk records with id > ``after``, in id order."""
        out = []
        for key, value in _items(self.db, S.chunk_key(after + 1)):
            if not key.startswith(b"C"):
                break
            out.append(ChunkRecord.from_bytes(S.chunk_id_of_key(key), value))
            if len(out) >= limit:
                break
        return out

    def peers(self) -> list[PeerRecord]:
        return [PeerRecord(int.from_bytes(k[1:], "big"), *S.unpack(v)) for k, v in self.scan(b"P")]

    def meta_members(self) -> dict[int, str]:
        return {int.from_bytes(k[1:], "big"): S.unpack(v) for k, v in self.scan(b"M")}

    def orphans(self) -> list[int]:
        return [S.ino_of_orphan_key(k) for k, _ in self.scan(b"O")]

    def delete_queue(self, limit: int = 1000) -> list[tuple[int, int]]:
        out = []
        for k, v in self.scan(b"Q"):
            out.append((S.chunk_id_of_key(k), S.unpack(v)[0]))
            if len(out) >= limit:
                break
        return out

    @_rocks_errors
    def dump(self) -> tuple[bytes, int]:
        """The whole key space as one msgpack array of [key, value] pairs, and how many there are
        (Raft snapshots, dataset-mode copies, ``lakefs-fuse dump``)."""
        packer = msgpack.Packer(use_bin_type=True)
        parts = [b""]
        count = 0
        for key, value in _items(self.db):
            parts.append(packer.pack([key, value]))
            count += 1
        parts[0] = packer.pack_array_header(count)
        return b"".join(parts), count

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

    @_rocks_errors
    def next_chunk_id(self) -> int:
        """Chunk ids below this have been allocated (the next one to be handed out)."""
        data = self.db.get(S.counter_key("chunk"))
        return int.from_bytes(data, "big") if data else 1

    @_rocks_errors
    def stored_data(self) -> int | None:
        """Bytes in chunks (sum of their lengths), or None if this lake's counter is missing."""
        data = self.db.get(S.counter_key("data"))
        return int.from_bytes(data, "big") if data is not None else None

    @_rocks_errors
    def count_inodes(self) -> int:
        data = self.db.get(S.counter_key("ino"))
        return int.from_bytes(data, "big") if data else 0

    def scan(self, prefix: bytes):
        """Committed (key, value) pairs under ``prefix``, in key order."""
        for key, value in _items(self.db, prefix):
            if not key.startswith(prefix):
                break
            yield key, value


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
