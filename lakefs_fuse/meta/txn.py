"""One command's transaction over the metadata RocksDB, and the record steps commands share.

:class:`Txn` reads through its own pending writes and collects them into one ``WriteBatch``
(the last write of each key), which :meth:`~.state.StateMachine.apply` writes only if the
command's handler returns: a command that raises changes nothing. Its methods are the record-level steps the handlers in
:mod:`.namespace`, :mod:`.data` and :mod:`.fsck` are made of (an inode read or written, a
directory entry added with its readdir cookie, a counter advanced, chunk references moved), so
each rule -- an unlinked inode becomes an orphan, a chunk at zero references is queued for
deletion -- lives once. :meth:`Txn.nested` opens a :class:`NestedTxn` for a part of a command
that must apply whole or not at all while its siblings go ahead (one file of an import): its
writes reach the batch only when it joins.

Also here: RocksDB's read failures turned into :class:`~lakefs_fuse.errors.LakeError`
(:func:`rocks_errors`, :func:`items`).

Imports: ``errors`` and :mod:`.schema`.
"""

from __future__ import annotations

import functools
import stat as st
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import rocksdict

from .. import errors as E
from . import schema as S
from .schema import ChunkRecord, Inode

F = TypeVar("F", bound=Callable[..., Any])


def rocks_failure(db: rocksdict.Rdict, exc: BaseException) -> E.LakeError | None:
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


def rocks_errors(fn: F) -> F:
    """Report RocksDB's read failures (a damaged block, an I/O error) as LakeErrors: one line
    with an errno for the CLI and the FUSE boundary, instead of a bare ``Exception``. For methods
    of an object whose ``db`` is the Rdict."""
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            failure = rocks_failure(self.db, exc)
            if failure is None:
                raise
            raise failure from None
    return cast(F, wrapper)


def items(db: rocksdict.Rdict, from_key: bytes | None = None,
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
        raise (rocks_failure(db, exc) or exc) from None


def kind(mode: int) -> int:
    """The file type bits of ``mode``."""
    return st.S_IFMT(mode)


def touch(inode: Inode, now: int, *, m: bool = True, c: bool = True) -> None:
    if m:
        inode.mtime_ns = now
    if c:
        inode.ctime_ns = now


class Txn:
    """A read-your-writes view over the DB whose writes become one WriteBatch.

    Writes collect in ``pending`` (key -> value, None: deleted), the last one of each key
    winning; :attr:`batch` is built from them once, when the command is done (a key written many
    times -- a directory's inode by each of an import's files -- is written once)."""

    __slots__ = ("db", "pending")

    def __init__(self, db: rocksdict.Rdict):
        self.db = db
        self.pending: dict[bytes, bytes | None] = {}

    @property
    def batch(self) -> rocksdict.WriteBatch:
        """The WriteBatch of every pending write."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in self.pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        return batch

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.db.get(key)  # a damaged block raises: StateMachine.apply reports it

    def put(self, key: bytes, value: bytes) -> None:
        self.pending[key] = value

    def delete(self, key: bytes) -> None:
        self.pending[key] = None

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Committed keys under ``prefix`` (pending writes are not merged: callers scan first)."""
        for key, value in items(self.db, start or prefix):
            if not key.startswith(prefix):
                break
            yield key, value

    def nested(self) -> NestedTxn:
        """A transaction inside this one whose writes join it only by :meth:`NestedTxn.join`: a
        part of a command that must apply whole or not at all (one file of an import)."""
        return NestedTxn(self)

    # -------------------------------------------------------------- records

    def chunk_size(self) -> int:
        """The lake's chunk size (file index ``i`` of a file covers ``[i * cs, (i + 1) * cs)``)."""
        data = self.get(S.FORMAT)
        if data is None:
            raise E.NotFound("metadata is not formatted")
        size: int = S.unpack(data)["chunk_size"]
        return size

    def inode(self, ino: int) -> Inode:
        data = self.get(S.inode_key(ino))
        if data is None:
            raise E.NotFound(f"inode {ino}")
        return Inode.from_bytes(ino, data)

    def put_inode(self, inode: Inode) -> None:
        self.put(S.inode_key(inode.ino), inode.to_bytes())

    def next(self, name: str, n: int = 1) -> int:
        """Advance counter ``name`` by ``n``; returns its value before (the first of ``n`` ids)."""
        key = S.counter_key(name)
        data = self.get(key)
        value = int.from_bytes(data, "big") if data else 1
        self.put(key, (value + n).to_bytes(8, "big"))
        return value

    def dir(self, ino: int) -> Inode:
        """Directory ``ino``, which must still exist (ENOTDIR, ENOENT)."""
        inode = self.inode(ino)
        if not inode.is_dir:
            raise E.NotADir()
        if inode.nlink == 0:
            raise E.NotFound("directory was removed")
        return inode

    def dentry(self, parent: int, name: bytes) -> list[Any] | None:
        """``[ino, kind, cookie]`` of entry ``name`` in ``parent``, or None."""
        data = self.get(S.dentry_key(parent, name))
        return S.unpack(data) if data is not None else None

    def add_dentry(self, parent: int, name: bytes, ino: int, mode: int) -> None:
        cookie = self.next("cookie")
        self.put(S.dentry_key(parent, name), S.pack([ino, kind(mode), cookie]))
        self.put(S.cookie_key(parent, cookie), name)

    def del_dentry(self, parent: int, name: bytes, entry: list[Any]) -> None:
        self.delete(S.dentry_key(parent, name))
        self.delete(S.cookie_key(parent, entry[2]))

    def is_empty_dir(self, ino: int) -> bool:
        for _ in self.scan(S.dentry_prefix(ino)):
            return False
        return True

    def drop_link(self, inode: Inode, now: int) -> None:
        """One name of ``inode`` went away: nlink down, orphan at zero (data stays until release)."""
        if inode.is_dir:
            inode.nlink = 0
        else:
            inode.nlink -= 1
        inode.ctime_ns = now
        self.put_inode(inode)
        if inode.nlink == 0:
            self.put(S.orphan_key(inode.ino), b"")

    def add_data(self, delta: int) -> None:
        """Keep the sum of chunk lengths (``df``'s used space) current; a lake formatted before
        the counter existed has none until ``init_usage`` counts it."""
        key = S.counter_key("data")
        data = self.get(key)
        if data is not None:
            self.put(key, max(0, int.from_bytes(data, "big") + delta).to_bytes(8, "big"))

    def chunk_refs(self, deltas: dict[int, int], now: int, *, zero_too: bool = False) -> None:
        """Move chunk reference counts by ``deltas``; a chunk left at zero is queued for deletion
        (``zero_too``: a zero delta is looked at as well: a chunk nothing references is queued)."""
        for chunk_id, delta in deltas.items():
            if delta == 0 and not zero_too:
                continue
            data = self.get(S.chunk_key(chunk_id))
            if data is None:
                continue
            rec = ChunkRecord.from_bytes(chunk_id, data)
            rec.refs += delta
            self.put(S.chunk_key(chunk_id), rec.to_bytes())
            if rec.refs <= 0:
                self.put(S.queue_key(chunk_id), S.pack([now]))

    def count_stored(self, inode: Inode) -> None:
        """Count the stored bytes of an inode whose record predates the counter. Call before this
        command changes the inode's extents: the scan sees only what earlier commands wrote."""
        if inode.stored < 0:
            inode.stored = sum(e.length for _k, value in self.scan(S.extent_prefix(inode.ino))
                               for e in S.unpack_extents(value))


class NestedTxn(Txn):
    """Writes kept apart from the enclosing :class:`Txn` (reads see both, its own first) until
    :meth:`join` hands them over; dropped unjoined, they leave the enclosing one as it was."""

    __slots__ = ("outer",)

    def __init__(self, outer: Txn):
        self.db, self.pending, self.outer = outer.db, {}, outer

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.outer.get(key)

    def join(self) -> None:
        """Hand every write to the enclosing transaction (the last value of each key)."""
        for key, value in self.pending.items():
            if value is None:
                self.outer.delete(key)
            else:
                self.outer.put(key, value)
        self.pending = {}
