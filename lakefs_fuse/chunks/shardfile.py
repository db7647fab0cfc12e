"""On-disk format of one shard, with per-block checksums so range reads verify cheaply.

::

    offset  size  field
    0       4     magic b"LKSH"
    4       1     version (1)
    5       1     shard index
    6       2     reserved (0)
    8       8     chunk id (little-endian)
    16      4     payload length
    20      4     block size (64 KiB)
    24      8*n   xxh3-64 of each payload block, n = ceil(length / block size)
    24+8n   8     xxh3-64 of all header bytes before it
    ...           payload (the raw shard bytes)

Per-block checksums (rather than one per shard) let a 100 KB read from a 1 MiB shard verify
only the blocks it touches. A range is read straight into the caller's buffer (the untouched
parts of its first and last block into per-thread scratch buffers) and every block it touches
is checked whole before the call returns. A peer server instead passes the file range of those
whole blocks on unread (``os.sendfile``) with their sums (:meth:`ShardReader.span`), and the
receiver checks them (:func:`check_blocks`). A file is written (header and payload in one
``writev``) to a temporary name, fsynced and renamed, so a crash leaves either the whole shard
or none of it.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Sequence

import xxhash

MAGIC = b"LKSH"
VERSION = 1
BLOCK = 64 * 1024
_FIXED = struct.Struct("<4sBBHQII")


class ShardMissing(Exception):
    pass


class ShardCorrupt(Exception):
    pass


def header_size(payload_len: int) -> int:
    """Bytes of the header in front of a payload of ``payload_len`` bytes."""
    return _FIXED.size + 8 * -(-payload_len // BLOCK) + 8


def encode_header(chunk_id: int, index: int, payload: bytes | memoryview) -> bytes:
    n = -(-len(payload) // BLOCK)
    sums = [xxhash.xxh3_64_intdigest(payload[i * BLOCK:(i + 1) * BLOCK]) for i in range(n)]
    head = _FIXED.pack(MAGIC, VERSION, index, 0, chunk_id, len(payload), BLOCK) + struct.pack(f"<{n}Q", *sums)
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))


def write_shard(path: str, tmp_dir: str, chunk_id: int, index: int, payload: bytes | memoryview,
                *, durable: bool = True) -> None:
    header = encode_header(chunk_id, index, payload)
    tmp = os.path.join(tmp_dir, f"{chunk_id:016x}.{index}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, header, payload)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def _write_all(fd: int, header: bytes, payload: bytes | memoryview) -> None:
    """Header and payload with one ``writev`` (more only if the kernel takes less)."""
    parts = [memoryview(header), memoryview(payload).cast("B")]
    while parts:
        done = os.writev(fd, parts)
        while parts and done >= len(parts[0]):
            done -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][done:]


_HEAD_GUESS = 4096


def parse_header(first: bytes, where: str, chunk_id: int, index: int,
                 read_more: Callable[[int, int], bytes] | None = None) -> tuple[int, int, tuple[int, ...], int]:
    """(payload length, block size, block sums, payload offset) of a shard from its first bytes;
    ``read_more(offset, n)`` fetches a block table longer than ``first`` holds."""
    fixed = first[:_FIXED.size]
    if len(fixed) < _FIXED.size:
        raise ShardCorrupt(f"{where}: short header")
    magic, version, idx, _r, cid, length, block = _FIXED.unpack(fixed)
    if magic != MAGIC or version != VERSION or block <= 0:
        raise ShardCorrupt(f"{where}: bad magic/version")
    n = -(-length // block)
    want = _FIXED.size + 8 * n + 8
    rest = first[_FIXED.size:want]
    if len(first) < want and read_more is not None:
        rest = read_more(_FIXED.size, 8 * n + 8)
    if len(rest) < 8 * n + 8:
        raise ShardCorrupt(f"{where}: short block table")
    if xxhash.xxh3_64_intdigest(bytes(fixed) + bytes(rest[:-8])) != struct.unpack("<Q", rest[-8:])[0]:
        raise ShardCorrupt(f"{where}: header checksum mismatch")
    if cid != chunk_id or idx != index:
        raise ShardCorrupt(f"{where}: holds chunk {cid} shard {idx}")
    return length, block, struct.unpack(f"<{n}Q", rest[:-8]), want


class ShardReader:
    """Reads and verifies byte ranges of one shard file (an open descriptor and its parsed header).

    ``users`` and ``cached`` belong to the owner that shares one reader between callers
    (:class:`~.store.OpenShards`); a reader used once and closed ignores them.
    """

    def __init__(self, path: str, chunk_id: int, index: int, *, lazy: bool = False):
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ShardMissing(path) from None
        self.path, self.chunk_id, self.index = path, chunk_id, index
        st = os.fstat(self.fd)
        #: Which file this is: a reader kept open is reused only while its name still names it.
        self.ident = (st.st_dev, st.st_ino)
        self.length = self.block = self.data_off = 0
        self.sums: tuple[int, ...] = ()
        self.parsed = False
        self.users = 0
        self.cached = False
        if not lazy:  # lazy: the header is read at the first read_into (its blocks may be on their way)
            try:
                self.parse()
            except BaseException:
                os.close(self.fd)
                raise

    def parse(self) -> None:
        """Read and check the header (once)."""
        # One read for the fixed header and (for shards up to ~32 MiB) the whole block table:
        # on a cold disk every extra pread is another seek before the data.
        first = os.pread(self.fd, _HEAD_GUESS, 0)
        self.length, self.block, self.sums, self.data_off = parse_header(
            first, self.path, self.chunk_id, self.index, lambda off, n: os.pread(self.fd, n, off))
        self.parsed = True

    def close(self) -> None:
        os.close(self.fd)

    def read(self, offset: int, length: int) -> bytearray:
        out = bytearray(length)
        self.read_into(offset, length, memoryview(out))
        return out

    def read_into(self, offset: int, length: int, out: memoryview) -> None:
        """Verify and copy payload bytes [offset, offset+length) into ``out``.

        One ``preadv`` puts the wanted bytes straight into ``out``; the rest of the first and last
        64 KiB blocks (needed to check them) goes to this thread's scratch buffers, and those two
        blocks are hashed piecewise. Nothing is copied after the read. Thread-safe (positional
        reads; the scratch buffers are per thread).
        """
        if not self.parsed:
            self.parse()
        if offset < 0 or offset + length > self.length:
            raise ShardCorrupt(f"{self.path}: range {offset}+{length} outside shard of {self.length}")
        if length == 0:
            return
        first, last, start, end = block_span(offset, length, self.block, self.length)
        head_n, tail_n = offset - start, end - offset - length
        dest = out[:length]
        head, tail = _scratch(self.block)
        iov = [dest]
        if head_n:
            iov.insert(0, head[:head_n])
        if tail_n:
            iov.append(tail[:tail_n])
        if os.preadv(self.fd, iov, self.data_off + start) != end - start:
            raise ShardCorrupt(f"{self.path}: truncated payload")
        check_blocks(self.path, self.sums[first:last + 1], self.block, self.length, offset,
                     head[:head_n], dest, tail[:tail_n])

    def span(self, offset: int, length: int) -> tuple[int, int, bytes]:
        """For sending payload bytes [offset, offset+length) unread, with what checks them: the file
        range of the whole blocks they touch (file offset, byte count) and those blocks' sums
        (packed ``<Q`` each). The receiver checks them with :func:`check_blocks`."""
        if not self.parsed:
            self.parse()
        if offset < 0 or length <= 0 or offset + length > self.length:
            raise ShardCorrupt(f"{self.path}: range {offset}+{length} outside shard of {self.length}")
        first, last, start, end = block_span(offset, length, self.block, self.length)
        if os.fstat(self.fd).st_size < self.data_off + end:
            raise ShardCorrupt(f"{self.path}: truncated payload")
        return self.data_off + start, end - start, struct.pack(f"<{last - first + 1}Q", *self.sums[first:last + 1])


def block_span(offset: int, length: int, block: int, payload_len: int) -> tuple[int, int, int, int]:
    """(first block, last block, start, end): the whole ``block``-sized blocks of a payload of
    ``payload_len`` bytes that hold bytes [offset, offset+length), length > 0, and the payload
    range [start, end) they cover (the last block of a payload may be short)."""
    first, last = offset // block, (offset + length - 1) // block
    return first, last, first * block, min(payload_len, (last + 1) * block)


def check_blocks(where: str, sums: Sequence[int], block: int, payload_len: int, offset: int,
                 head: memoryview, dest: memoryview, tail: memoryview) -> None:
    """Check the blocks that hold payload bytes [offset, offset+len(dest)) against ``sums`` (one
    per block, from the block at ``offset // block`` on): ``dest`` holds those bytes, ``head``
    the bytes of the first block before them and ``tail`` those of the last block after them.
    Raises ShardCorrupt naming ``where`` and the block."""
    length = len(dest)
    first, last, start, end = block_span(offset, length, block, payload_len)
    stop = offset + length
    if len(sums) != last - first + 1 or len(head) != offset - start or len(tail) != end - stop:
        raise ShardCorrupt(f"{where}: blocks and range do not match")
    for b in range(first, last + 1):
        lo, hi = b * block, min(payload_len, (b + 1) * block)
        if lo >= offset and hi <= stop:  # a whole block inside the wanted range
            digest = xxhash.xxh3_64_intdigest(dest[lo - offset:hi - offset])
        else:  # the first or last block: head + wanted bytes + tail
            h = xxhash.xxh3_64()
            if lo < offset:
                h.update(head[lo - start:])
            h.update(dest[max(lo, offset) - offset:min(hi, stop) - offset])
            if hi > stop:
                h.update(tail[:hi - stop])
            digest = h.intdigest()
        if digest != sums[b - first]:
            raise ShardCorrupt(f"{where}: block {b} checksum mismatch")


_local = threading.local()


def _scratch(block: int) -> tuple[memoryview, memoryview]:
    """This thread's two buffers of ``block`` bytes for the parts of edge blocks nobody asked for."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None or len(bufs[0]) < block:
        bufs = _local.bufs = (memoryview(bytearray(block)), memoryview(bytearray(block)))
    return bufs
