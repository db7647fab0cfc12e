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
only the blocks it touches. A file is written to a temporary name, fsynced and renamed,
so a crash leaves either the whole shard or none of it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

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
        _write_all(fd, header)
        _write_all(fd, payload)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
    """Reads and verifies byte ranges of one shard file."""

    def __init__(self, path: str, chunk_id: int, index: int):
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ShardMissing(path) from None
        try:
            # One read for the fixed header and (for shards up to ~32 MiB) the whole block table:
            # on a cold disk every extra pread is another seek before the data.
            first = os.pread(self.fd, _HEAD_GUESS, 0)
            self.length, self.block, self.sums, self.data_off = parse_header(
                first, path, chunk_id, index, lambda off, n: os.pread(self.fd, n, off))
            self.path = path
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def read(self, offset: int, length: int) -> bytearray:
        out = bytearray(length)
        self.read_into(offset, length, memoryview(out))
        return out

    def read_into(self, offset: int, length: int, out: memoryview) -> None:
        """Verify and copy payload bytes [offset, offset+length) into ``out``.

        Block-aligned ranges (whole shards, in particular) are read straight into ``out``;
        others go through a small buffer of the covering blocks.
        """
        if offset < 0 or offset + length > self.length:
            raise ShardCorrupt(f"{self.path}: range {offset}+{length} outside shard of {self.length}")
        if length == 0:
            return
        first, last = offset // self.block, (offset + length - 1) // self.block
        start = first * self.block
        span = min(self.length, (last + 1) * self.block) - start
        direct = offset == start and length == span
        target = out[:length] if direct else memoryview(bytearray(span))
        if os.preadv(self.fd, [target], self.data_off + start) != span:
            raise ShardCorrupt(f"{self.path}: truncated payload")
        for b in range(first, last + 1):
            lo = (b - first) * self.block
            if xxhash.xxh3_64_intdigest(target[lo:lo + self.block]) != self.sums[b]:
                raise ShardCorrupt(f"{self.path}: block {b} checksum mismatch")
        if not direct:
            out[:length] = target[offset - start:offset - start + length]
