"""The only place that encodes and decodes RocksDB keys and record layouts of the metadata.

Every key is built by a ``*_key`` function below and taken apart by a ``*_of_key`` function
beside it; a prefix scan uses a ``*_PREFIX`` constant or a ``*_prefix`` function. No other module
slices keys by byte offset. Integers in keys are big-endian so prefix scans come out ordered. Values are msgpack
arrays (not maps) on hot records.

====================  ==========================================  =====================================
key                   meaning                                     value
====================  ==========================================  =====================================
``F``                 format record (the lake's fixed config)     map: ec_k, ec_m, chunk_size, ...
``N<name>``           counters (next_ino, next_chunk, cookie)     u64 big-endian
``I<ino:8>``          inode attributes                            :class:`Inode` array (10-12 fields)
``D<parent:8><name>`` directory entry                             [ino, kind, cookie]
``K<parent:8><ck:8>`` readdir order: entry with this cookie       name (bytes)
``E<ino:8><idx:8>``   extents of file index idx (chunk_size)      [[file_off, len, chunk_id, chunk_off]..]
``S<ino:8>``          symlink target                              bytes
``X<ino:8><name>``    extended attribute                          bytes
``C<chunk:8>``        chunk record                                :class:`ChunkRecord` array
``P<peer:4>``         storage peer                                :class:`PeerRecord` array
``O<ino:8>``          orphan: nlink 0, released when unused       b""
``Q<chunk:8>``        delete queue: chunk with no references      [queued_at_ns]
``M<member:8>``       metadata server (Raft member) address       "host:port"
====================  ==========================================  =====================================

A readdir cookie is assigned when an entry is created (or renamed in) and never changes,
so readdir offsets stay stable while the directory changes.
"""

from __future__ import annotations

import stat as st
import struct
from dataclasses import dataclass, field

import msgpack

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

ROOT_INO = 1

FORMAT = b"F"

#: First byte of every key of one kind (for prefix scans over the whole kind).
INODE_PREFIX = b"I"
DENTRY_PREFIX = b"D"
EXTENT_PREFIX = b"E"
CHUNK_PREFIX = b"C"
PEER_PREFIX = b"P"
ORPHAN_PREFIX = b"O"
QUEUE_PREFIX = b"Q"
MEMBER_PREFIX = b"M"


def u64(n: int) -> bytes:
    return _U64.pack(n)


def counter_key(name: str) -> bytes:
    return b"N" + name.encode()


def inode_key(ino: int) -> bytes:
    return b"I" + _U64.pack(ino)


def ino_of_inode_key(key: bytes) -> int:
    return _U64.unpack_from(key, 1)[0]


def dentry_key(parent: int, name: bytes) -> bytes:
    return b"D" + _U64.pack(parent) + name


def dentry_prefix(parent: int) -> bytes:
    return b"D" + _U64.pack(parent)


def dentry_of_key(key: bytes) -> tuple[int, bytes]:
    """(parent, name) of a directory entry's key."""
    return _U64.unpack_from(key, 1)[0], key[9:]


def cookie_key(parent: int, cookie: int) -> bytes:
    return b"K" + _U64.pack(parent) + _U64.pack(cookie)


def cookie_prefix(parent: int) -> bytes:
    return b"K" + _U64.pack(parent)


def cookie_of_key(key: bytes) -> int:
    return _U64.unpack_from(key, 9)[0]


def member_key(node_id: int) -> bytes:
    return b"M" + _U64.pack(node_id)


def member_of_key(key: bytes) -> int:
    return int.from_bytes(key[1:], "big")


def extent_key(ino: int, index: int) -> bytes:
    return b"E" + _U64.pack(ino) + _U64.pack(index)


def extent_prefix(ino: int) -> bytes:
    return b"E" + _U64.pack(ino)


def index_of_extent_key(key: bytes) -> int:
    return _U64.unpack_from(key, 9)[0]


def ino_of_extent_key(key: bytes) -> int:
    return _U64.unpack_from(key, 1)[0]


def symlink_key(ino: int) -> bytes:
    return b"S" + _U64.pack(ino)


def xattr_key(ino: int, name: bytes) -> bytes:
    return b"X" + _U64.pack(ino) + name


def xattr_prefix(ino: int) -> bytes:
    return b"X" + _U64.pack(ino)


def xattr_name_of_key(key: bytes) -> bytes:
    return key[9:]


def chunk_key(chunk_id: int) -> bytes:
    return b"C" + _U64.pack(chunk_id)


def chunk_id_of_key(key: bytes) -> int:
    """The chunk id of a chunk record's key or of a delete-queue key (``C`` and ``Q``)."""
    return _U64.unpack_from(key, 1)[0]


def peer_key(peer_id: int) -> bytes:
    return b"P" + _U32.pack(peer_id)


def peer_id_of_key(key: bytes) -> int:
    return int.from_bytes(key[1:], "big")


def orphan_key(ino: int) -> bytes:
    return b"O" + _U64.pack(ino)


def ino_of_orphan_key(key: bytes) -> int:
    return _U64.unpack_from(key, 1)[0]


def queue_key(chunk_id: int) -> bytes:
    return b"Q" + _U64.pack(chunk_id)


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, use_list=True)


@dataclass(slots=True)
class Inode:
    """Attributes of one inode. Times are nanoseconds since the epoch."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    #: Parent directory (directories only; used for rename loop checks and "..").
    parent: int = 0
    #: Erasure-coding profile new data of this file is written with (``k << 8 | m``; 0: the lake's
    #: default). Set with the ``user.lakefs.ec`` xattr, inherited from the directory at creation.
    ec: int = 0
    #: File bytes its extents cover (holes excluded), kept by the commands that change extents, so
    #: ``st_blocks`` costs no extent scan. -1: unknown (a record written before the counter existed;
    #: the next command that changes the file's extents counts them).
    stored: int = 0
    #: Not in the record: bytes a mount holds for the file but has not committed yet (st_blocks
    #: counts them; bytes written over stored ones count twice until they are committed).
    buffered: int = 0

    def to_bytes(self) -> bytes:
        if self.stored >= 0:
            return pack([self.mode, self.nlink, self.uid, self.gid, self.size, self.atime_ns,
                         self.mtime_ns, self.ctime_ns, self.rdev, self.parent, self.ec, self.stored])
        if self.ec:
            return pack([self.mode, self.nlink, self.uid, self.gid, self.size, self.atime_ns,
                         self.mtime_ns, self.ctime_ns, self.rdev, self.parent, self.ec])
        return pack([self.mode, self.nlink, self.uid, self.gid, self.size, self.atime_ns,
                     self.mtime_ns, self.ctime_ns, self.rdev, self.parent])

    @property
    def profile(self) -> tuple[int, int] | None:
        """(k, m) for new chunks of this file, or None for the lake's default."""
        return (self.ec >> 8, self.ec & 0xFF) if self.ec else None

    @classmethod
    def from_bytes(cls, ino: int, data: bytes) -> Inode:
        fields = unpack(data)
        inode = cls(ino, *fields)
        if len(fields) < 12:
            inode.stored = -1  # written before the stored-bytes counter existed
        return inode

    @property
    def blocks(self) -> int:
        """``st_blocks``: 512-byte units of stored and buffered bytes, rounded up (from the size
        when the record has no counter)."""
        return ((self.stored + self.buffered if self.stored >= 0 else self.size) + 511) // 512

    @property
    def is_dir(self) -> bool:
        return st.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return st.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return st.S_ISLNK(self.mode)


@dataclass(slots=True)
class Extent:
    """``length`` bytes of a file at ``file_off`` stored at ``chunk_off`` of chunk ``chunk_id``."""

    file_off: int
    length: int
    chunk_id: int
    chunk_off: int

    @property
    def end(self) -> int:
        return self.file_off + self.length


def pack_extents(extents: list[Extent]) -> bytes:
    return pack([[e.file_off, e.length, e.chunk_id, e.chunk_off] for e in extents])


def unpack_extents(data: bytes) -> list[Extent]:
    return [Extent(*x) for x in unpack(data)]


@dataclass(slots=True)
class ChunkRecord:
    """Where a sealed chunk's shards live. ``peers[i]`` holds shard i (0..k-1 data, then parity).

    ``checksums[i]`` is the xxh3-64 of shard i's bytes; ``refs`` counts extent pieces
    that point into the chunk (0 -> delete queue).
    """

    chunk_id: int
    length: int
    k: int
    m: int
    shard_len: int
    peers: list[int]
    checksums: list[int]
    refs: int = 0

    def to_bytes(self) -> bytes:
        return pack([self.length, self.k, self.m, self.shard_len, self.peers, self.checksums, self.refs])

    @classmethod
    def from_bytes(cls, chunk_id: int, data: bytes) -> ChunkRecord:
        return cls(chunk_id, *unpack(data))

    def to_wire(self) -> list:
        return [self.chunk_id, self.length, self.k, self.m, self.shard_len, self.peers, self.checksums]

    @classmethod
    def from_wire(cls, w: list) -> ChunkRecord:
        return cls(*w)


@dataclass(slots=True)
class PeerRecord:
    """A storage peer: ``kind`` is 'dir' (local directory), 'net' (a peer server) or 's3' (a bucket)."""

    peer_id: int
    kind: str
    address: str
    zone: str = ""
    weight: float = 1.0
    state: str = "up"
    extra: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return pack(self.to_wire())

    @classmethod
    def from_bytes(cls, peer_id: int, data: bytes) -> PeerRecord:
        return cls(peer_id, *unpack(data))

    def to_wire(self) -> list:
        """The stored array without the id (the key holds it): what ``register_peer`` carries."""
        return [self.kind, self.address, self.zone, self.weight, self.state, self.extra]

    @classmethod
    def from_wire(cls, peer_id: int, w: list) -> PeerRecord:
        return cls(peer_id, *w)
