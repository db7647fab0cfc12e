"""The catalogue of metadata commands: every mutation the state machine applies, fields named.

A command is a small frozen dataclass (:class:`Mknod`, :class:`Setattr`, :class:`Commit`, ...).
A caller builds one and hands it to :meth:`~.client.MetaClient.apply`; the state machine
(:mod:`.state`) finds the handler for the command's type and calls it with the fields by name.
Each class's docstring says what the command does and what it returns.

*The wire form is the log form.* Sent to a metadata server, stored in its Raft log and replayed
from there, a command is the msgpack array ``[op, field, field, ...]``: :meth:`Command.to_wire`
builds it and :func:`decode` takes it apart. These arrays are exactly the ones written before the
catalogue existed, so lakes and clusters made then replay their logs unchanged. The fields of a
class are therefore in wire order and stay so; a change of meaning is a new command, never a new
field in an old one. Nested values keep their wire form too: a chunk is
:meth:`~.schema.ChunkRecord.to_wire`'s seven items, an extent or a move a plain array (named here
by a NamedTuple), a peer :meth:`~.schema.PeerRecord.to_wire`'s six, an fsck fix ``[kind, args...]``.

:func:`decode` is strict: anything but a list that starts with a known op and carries exactly
that op's fields raises :class:`~lakefs_fuse.errors.Invalid` before anything is applied (an
unknown op: "unknown metadata command"; a command that is not such a list: "malformed metadata
command").

Imports: ``errors`` and :mod:`.schema` only -- no RocksDB -- so every layer may build commands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypedDict

from .. import errors as E
from .schema import ChunkRecord, PeerRecord

#: ``Rename.flags``: fail with EEXIST if the new name exists (renameat2's RENAME_NOREPLACE).
RENAME_NOREPLACE = 1
#: ``Rename.flags``: swap the two names, both of which must exist (RENAME_EXCHANGE).
RENAME_EXCHANGE = 2
#: ``Setxattr.flags``: fail with EEXIST if the attribute exists.
XATTR_CREATE = 1
#: ``Setxattr.flags``: fail with ENODATA unless the attribute exists.
XATTR_REPLACE = 2


class Command:
    """Base of every command in the catalogue; ``op`` is the command's name on the wire."""

    __slots__ = ()
    op: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        """The fields by name: what the state machine calls the command's handler with."""
        return {name: getattr(self, name) for name in _names(type(self))}

    def to_wire(self) -> list[Any]:
        """``[op, fields...]``: the form sent to metadata servers and kept in the Raft log."""
        return [self.op, *(getattr(self, name) for name in _names(type(self)))]

    @classmethod
    def from_args(cls, args: list[Any]) -> Command:
        """The command from the wire list's items after ``op`` (nested values decoded)."""
        if len(args) != len(_names(cls)):
            raise E.Invalid(f"metadata command {cls.op!r} takes {len(_names(cls))} fields, got {len(args)}")
        return cls(*args)


_NAMES: dict[type[Command], tuple[str, ...]] = {}


def _names(cls: type[Command]) -> tuple[str, ...]:
    """The field names of a command class, in wire order (looked up once per class)."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return names


def _chunk(w: Any) -> ChunkRecord:
    if not isinstance(w, list | tuple) or len(w) != 7:
        raise E.Invalid("a chunk is [chunk_id, length, k, m, shard_len, peers, checksums]")
    return ChunkRecord.from_wire(list(w))


# ----------------------------------------------------------------------------- the namespace


@dataclass(frozen=True, slots=True)
class Format(Command):
    """Make an empty database a lake: the format record ``config`` (the lake's fixed settings,
    ``LakeConfig`` as a dict plus, on metadata servers, ``secret_fp`` and ``uuid``) and a root
    directory owned by ``uid``/``gid``. EEXIST if formatted already. Returns None."""

    op = "format"
    config: dict[str, Any]
    now: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Mknod(Command):
    """Create ``name`` in directory ``parent``: a file, directory, FIFO, socket or device
    (``mode`` holds the type and permission bits; ``rdev`` counts for devices only). A setgid
    directory gives its group (and, to a directory, its setgid bit); a directory's EC profile is
    inherited. Returns ``[ino, inode record bytes]``."""

    op = "mknod"
    parent: int
    name: bytes
    mode: int
    rdev: int
    uid: int
    gid: int
    now: int


@dataclass(frozen=True, slots=True)
class Symlink(Command):
    """Create symlink ``name`` in ``parent`` pointing at ``target``. Returns ``[ino, inode bytes]``."""

    op = "symlink"
    parent: int
    name: bytes
    target: bytes
    uid: int
    gid: int
    now: int


@dataclass(frozen=True, slots=True)
class Link(Command):
    """A new name ``name`` in ``parent`` for the existing non-directory ``ino``.
    Returns ``[ino, inode bytes]``."""

    op = "link"
    ino: int
    parent: int
    name: bytes
    now: int


@dataclass(frozen=True, slots=True)
class Unlink(Command):
    """Remove the non-directory entry ``name`` of ``parent``; at nlink 0 the inode becomes an
    orphan (its data stays until :class:`Release`). Returns ``[ino, nlink left]``."""

    op = "unlink"
    parent: int
    name: bytes
    now: int


@dataclass(frozen=True, slots=True)
class Rmdir(Command):
    """Remove the empty directory ``name`` of ``parent``. Returns ``[ino, 0]``."""

    op = "rmdir"
    parent: int
    name: bytes
    now: int


@dataclass(frozen=True, slots=True)
class Rename(Command):
    """Move ``parent``/``name`` to ``newparent``/``newname``; ``flags``: 0, :data:`RENAME_NOREPLACE`
    or :data:`RENAME_EXCHANGE`. Returns ``[moved ino, replaced ino or 0, replaced nlink]``."""

    op = "rename"
    parent: int
    name: bytes
    newparent: int
    newname: bytes
    flags: int
    now: int


class AttrChanges(TypedDict, total=False):
    """What :class:`Setattr` changes (values already resolved by the caller: ``now`` for a
    "set to the current time", permission checks done)."""

    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Setattr(Command):
    """Change attributes of ``ino``; a smaller ``size`` drops the extents beyond it.
    Returns the inode record bytes."""

    op = "setattr"
    ino: int
    changes: AttrChanges
    now: int


@dataclass(frozen=True, slots=True)
class Setxattr(Command):
    """Set extended attribute ``name`` of ``ino``; ``flags``: 0, :data:`XATTR_CREATE` or
    :data:`XATTR_REPLACE`. ``user.lakefs.ec`` ("K+M") also sets the inode's EC profile.
    Returns None."""

    op = "setxattr"
    ino: int
    name: bytes
    value: bytes
    flags: int
    now: int


@dataclass(frozen=True, slots=True)
class Removexattr(Command):
    """Remove extended attribute ``name`` of ``ino`` (ENODATA if absent). Returns None."""

    op = "removexattr"
    ino: int
    name: bytes
    now: int


@dataclass(frozen=True, slots=True)
class Release(Command):
    """Free orphan ``ino`` (nlink 0, open nowhere any more): its extents, xattrs and inode; its
    chunks lose the references. Returns whether anything was freed."""

    op = "release"
    ino: int
    now: int


# ----------------------------------------------------------------------------- file data


class CommitExtent(NamedTuple):
    """``length`` bytes of inode ``ino`` at ``file_off`` now stored at ``chunk_off`` of ``chunk_id``."""

    ino: int
    file_off: int
    length: int
    chunk_id: int
    chunk_off: int


@dataclass(frozen=True, slots=True)
class Commit(Command):
    """Commit one sealed chunk: its record (None when the extents point into chunks already
    recorded) and the file ranges now stored in it. Extents of inodes that no longer exist are
    skipped; new extents shadow older ones; sizes grow to cover them. ``mtimes``: ino -> the
    modification time of its last write in this chunk (``now`` for a file not in it); a chunk
    nothing points into is queued for deletion. Returns ``{ino: new size}``."""

    op = "commit"
    chunk: ChunkRecord | None
    extents: list[CommitExtent]
    mtimes: dict[int, int]
    now: int

    def to_wire(self) -> list[Any]:
        return ["commit", None if self.chunk is None else self.chunk.to_wire(),
                [list(e) for e in self.extents], self.mtimes, self.now]

    @classmethod
    def from_args(cls, args: list[Any]) -> Commit:
        chunk, extents, mtimes, now = args
        return cls(None if chunk is None else _chunk(chunk), [CommitExtent(*e) for e in extents], mtimes, now)


class RelocateMove(NamedTuple):
    """``length`` bytes of ``ino`` at ``file_off``, copied from ``old_off`` of ``old_chunk`` to
    ``new_off`` of the relocation's new chunk."""

    ino: int
    file_off: int
    length: int
    old_chunk: int
    old_off: int
    new_off: int


@dataclass(frozen=True, slots=True)
class Relocate(Command):
    """Compaction: record ``chunk`` (holding copies of file bytes) and point each move's bytes at
    it where they are still stored where the copy was taken from (a newer write is never
    undone). Sizes and times do not change. Returns how many bytes moved."""

    op = "relocate"
    chunk: ChunkRecord
    moves: list[RelocateMove]
    now: int

    def to_wire(self) -> list[Any]:
        return ["relocate", self.chunk.to_wire(), [list(m) for m in self.moves], self.now]

    @classmethod
    def from_args(cls, args: list[Any]) -> Relocate:
        chunk, moves, now = args
        return cls(_chunk(chunk), [RelocateMove(*m) for m in moves], now)


@dataclass(frozen=True, slots=True)
class InitUsage(Command):
    """Count every chunk's bytes into the usage counter (``df``), if this lake has none yet.
    Returns the counter."""

    op = "init_usage"


@dataclass(frozen=True, slots=True)
class MoveShard(Command):
    """Repair or rebalance put shard ``index`` of ``chunk_id`` on ``new_peer``: recorded only
    if it is still on ``old_peer``. Returns whether it was recorded."""

    op = "move_shard"
    chunk_id: int
    index: int
    old_peer: int
    new_peer: int


@dataclass(frozen=True, slots=True)
class AllocChunks(Command):
    """Reserve ``n`` chunk ids. Returns the first."""

    op = "alloc_chunks"
    n: int


@dataclass(frozen=True, slots=True)
class GcDone(Command):
    """The shards of ``chunk_ids`` (from the delete queue) are deleted: drop their records,
    except a chunk referenced again meanwhile (it only leaves the queue). Returns None."""

    op = "gc_done"
    chunk_ids: list[int]


class ImportFile(NamedTuple):
    """One file of :class:`ImportFiles`: regular file ``name`` in directory ``parent`` with
    permission bits ``mode``, owned by ``uid``/``gid``, whose bytes are ``extents`` -- each
    ``[file_off, length, chunk_id, chunk_off]`` into a chunk of the same command."""

    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    extents: list[list[int]]


#: Most files one :class:`ImportFiles` may create (a few hundred bytes each on the wire: a full
#: command stays far below a metadata frame and a Raft message, and one apply well under a second).
IMPORT_MAX_FILES = 1024
#: Most chunks one :class:`ImportFiles` may record.
IMPORT_MAX_CHUNKS = 16


@dataclass(frozen=True, slots=True)
class ImportFiles(Command):
    """Bulk ingest (``lakefs-fuse import``): record the freshly stored ``chunks`` and create the
    regular ``files`` whose bytes they hold, in one WriteBatch (one Raft entry). Results are per
    file, and each file is all or nothing: a file whose name exists (EEXIST), whose directory is
    gone, whose name or mode is invalid, or whose extents are not in file order without overlaps
    inside this command's chunks is not created at all and the others still are. Files are
    created as :class:`Mknod` would (a setgid directory's group, the directory's EC profile) with
    sizes from their extents and times ``now``. A chunk no created file uses is queued for deletion. At most
    :data:`IMPORT_MAX_FILES` files and :data:`IMPORT_MAX_CHUNKS` chunks (else EINVAL, nothing
    applied). Returns one item per file, in order: its inode number, or ``[errno, message]``."""

    op = "import_files"
    chunks: list[ChunkRecord]
    files: list[ImportFile]
    now: int

    def to_wire(self) -> list[Any]:
        return ["import_files", [c.to_wire() for c in self.chunks],
                [[f.parent, f.name, f.mode, f.uid, f.gid, [list(e) for e in f.extents]] for f in self.files],
                self.now]

    @classmethod
    def from_args(cls, args: list[Any]) -> ImportFiles:
        chunks, files, now = args
        return cls([_chunk(c) for c in chunks],
                   [ImportFile(p, n, m, u, g, [list(e) for e in ext]) for p, n, m, u, g, ext in files], now)


# ----------------------------------------------------------------------------- the lake as a whole


@dataclass(frozen=True, slots=True)
class RegisterPeer(Command):
    """Add or replace the record of storage peer ``peer.peer_id``. Returns None."""

    op = "register_peer"
    peer: PeerRecord

    def to_wire(self) -> list[Any]:
        return ["register_peer", self.peer.peer_id, self.peer.to_wire()]

    @classmethod
    def from_args(cls, args: list[Any]) -> RegisterPeer:
        peer_id, record = args
        if not isinstance(record, list | tuple):
            raise E.Invalid("register_peer takes [kind, address, zone, weight, state, extra]")
        return cls(PeerRecord.from_wire(peer_id, list(record)))


@dataclass(frozen=True, slots=True)
class SetMetaMember(Command):
    """Record the address of metadata server ``node_id`` (None: forget it). Returns None."""

    op = "set_meta_member"
    node_id: int
    address: str | None


@dataclass(frozen=True, slots=True)
class LoadKeys(Command):
    """``lakefs-fuse load`` into metadata servers: one batch of a dump's raw ``[key, value]``
    pairs. The ``first`` batch refuses servers that already hold a lake; member addresses are
    never loaded. Returns how many keys were written."""

    op = "load_keys"
    pairs: list[list[bytes]]
    first: bool


# ----------------------------------------------------------------------------- fsck


class DropDentry(NamedTuple):
    """An entry whose inode does not exist: drop it."""

    parent: int
    name: bytes


class SetNlink(NamedTuple):
    """A file's link count, to the number of entries naming it (0 makes it an orphan)."""

    ino: int
    n: int


class Relink(NamedTuple):
    """A lost inode, named again as ``name`` in ``parent`` (lost+found; None until fsck knows it)."""

    ino: int
    parent: int | None
    name: bytes


class DropExtent(NamedTuple):
    """The extent at ``file_off`` of file index ``file_index`` lost its chunk: the range becomes a hole."""

    ino: int
    file_index: int
    file_off: int


class DropExtents(NamedTuple):
    """Extents of an inode that does not exist."""

    ino: int


class SetRefs(NamedTuple):
    """A chunk's reference count, to the extent pieces using it (0 queues it for deletion)."""

    chunk_id: int
    n: int


FsckFix = DropDentry | SetNlink | Relink | DropExtent | DropExtents | SetRefs

#: Wire name of every fsck fix (``[name, fields...]`` inside an ``fsck`` command).
FIXES: dict[str, type[FsckFix]] = {
    "drop_dentry": DropDentry, "set_nlink": SetNlink, "relink": Relink,
    "drop_extent": DropExtent, "drop_extents": DropExtents, "set_refs": SetRefs,
}
_FIX_NAMES = {cls: name for name, cls in FIXES.items()}


@dataclass(frozen=True, slots=True)
class Fsck(Command):
    """Repairs found by ``lakefs-fuse fsck``, each re-checked when applied (a finding that went
    stale meanwhile is a no-op). Returns how many changed something."""

    op = "fsck"
    fixes: list[FsckFix]
    now: int

    def to_wire(self) -> list[Any]:
        return ["fsck", [[_FIX_NAMES[type(f)], *f] for f in self.fixes], self.now]

    @classmethod
    def from_args(cls, args: list[Any]) -> Fsck:
        fixes, now = args
        out: list[FsckFix] = []
        for fix in fixes:
            if not isinstance(fix, list | tuple) or not fix:
                raise E.Invalid("malformed fsck fix")
            kind = FIXES.get(fix[0])
            if kind is None:
                raise E.Invalid(f"unknown fsck fix {fix[0]!r}")
            out.append(kind(*fix[1:]))
        return cls(out, now)


# ----------------------------------------------------------------------------- the catalogue

#: Every command, by its wire name.
COMMANDS: dict[str, type[Command]] = {cls.op: cls for cls in (
    Format, Mknod, Symlink, Link, Unlink, Rmdir, Rename, Setattr, Setxattr, Removexattr, Release,
    Commit, Relocate, InitUsage, MoveShard, AllocChunks, GcDone, ImportFiles,
    RegisterPeer, SetMetaMember, LoadKeys, Fsck,
)}


def decode(wire: Sequence[Any]) -> Command:
    """The typed command of a wire list (a metadata server's request, a Raft log entry)."""
    if not isinstance(wire, list | tuple) or not wire or not isinstance(wire[0], str):
        raise E.Invalid("malformed metadata command")
    cls = COMMANDS.get(wire[0])
    if cls is None:
        raise E.Invalid(f"unknown metadata command {wire[0]!r}")
    try:
        return cls.from_args(list(wire[1:]))
    except (TypeError, ValueError):  # wrong arity of a nested value, or not a sequence
        raise E.Invalid(f"malformed metadata command {wire[0]!r}") from None
