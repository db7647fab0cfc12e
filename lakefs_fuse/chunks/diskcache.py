"""Local-disk tier of chunk ranges: survives remounts, never returns wrong bytes.

The daemon keeps ranges it fetched -- (chunk id, offset) -> bytes -- on a local disk, under a
byte budget, so that a dataset bigger than memory is read from the network once rather than
once per epoch. Chunks are immutable and their ids are never reused, so an entry is valid
until evicted: there is no invalidation, only :meth:`DiskCache.drop_chunk` when a chunk is
deleted. Cache trouble (a corrupt, missing or unreadable file, a full disk) is never raised to
the caller: :meth:`~DiskCache.get` answers a miss and :meth:`~DiskCache.put` skips.

Layout on disk::

    <directory>/
      LOCK                      flock()ed while a DiskCache has the directory open
      sketch                    the frequency sketch, saved at close (a hint; may be absent)
      tmp/                      entries being written; emptied at open
      entries/<xx>/<chunk id:016x>-<offset:x>-<length:x>
                                one file per range; <xx> = low byte of the chunk id (256 dirs)

An entry file is a header and the payload, as in :mod:`.shardfile`::

    offset  size  field
    0       4     magic b"LKDC"
    4       1     version (1)
    5       3     reserved (0)
    8       8     chunk id (little-endian)
    16      8     offset of the range within the chunk
    24      4     payload length
    28      4     block size (64 KiB)
    32      8*n   xxh3-64 of each payload block, n = ceil(length / block size)
    32+8n   8     xxh3-64 of all header bytes before it
    ...           payload

The name carries the key and the length, so the file's exact size is known from its name:
reopening is a directory scan plus one ``stat`` per file -- no file is opened -- and a file of
the wrong size (torn by a crash) or with a foreign name is deleted. Every read verifies the
header checksum, the header's key against the index, and the xxh3 of each 64 KiB block it
touches, so a sub-range read of a 4 MiB entry hashes only the blocks it needs; a mismatch
deletes the entry and counts ``corrupt``. An entry is written to ``tmp/`` and renamed into
place, so a crash leaves whole entries, stray temporaries (deleted at open) or -- after a power
loss without ``durable=True`` -- a file whose blocks never reached the disk, which the checksums
turn into a miss. Nothing is fsynced by default: the cache is a copy, and checksums, not
fsync, are what keep wrong bytes out.

Policy: W-TinyLFU (:class:`~.cache.TinyLfuPolicy`, shared with the memory tier), counted in
file bytes. A 1 % LRU window takes every new range; what leaves the window joins the main
segmented-LRU area only while there is room, or if a count-min sketch of recent access
frequency (aged by halving) rates it strictly above every main-area victim it would displace.
Repeated gets of a range within a burst (the pieces of one sequential read) count once.
Why: training jobs read datasets in epochs bigger than the cache. Plain LRU then evicts each
range just before its next use and hits 0 %; with admission, the ranges that got in stay
(ties go to the resident), so a cyclic scan over twice the capacity hits ~50 %; on skewed
(Zipf) access the sketch keeps the popular ranges, doing at least as well as LRU; and a
one-time scan of unrelated data brings only frequency-1 candidates, which lose to the hot set.
After a remount, entries are restored oldest first (file mtime) into probation and the
sketch saved at close is loaded, so the hot set keeps its standing.

Capacity counts whole files (header + payload) and holds at all times: victims are unlinked
before the new entry is renamed into place, both under the lock. A put is also skipped when the
entry is bigger than ``max_entry_fraction`` of the capacity, or when writing it would leave
less than ``free_floor`` bytes free on the filesystem (``free_space`` is the seam tests fake).

Threads: the daemon calls in from ``trio.to_thread.run_sync``, several at a time. One lock
guards the index, the policy and the counters; reading and hashing an entry and writing a
temporary file happen outside it; the renames and unlinks that change what is resident happen
inside it (short metadata operations) so that the index and the directory agree.

Imports only :mod:`.cache` and :mod:`lakefs_fuse.errors`.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

import xxhash

from .. import errors as E
from ..config import CACHE_FREE_FLOOR
from .cache import FrequencySketch, RangeKey, TinyLfuPolicy, sketch_width_for

GiB = 1 << 30
BLOCK = 64 * 1024
MAGIC = b"LKDC"
VERSION = 1
FANOUT = 256
_FIXED = struct.Struct("<4sB3xQQII")
_SKETCH_MAGIC = b"LKSK\x01"


def header_size(length: int) -> int:
    return _FIXED.size + 8 * -(-length // BLOCK) + 8


def entry_size(length: int) -> int:
    """Bytes on disk of an entry holding ``length`` payload bytes."""
    return header_size(length) + length


def encode_header(chunk_id: int, offset: int, payload: bytes | bytearray | memoryview) -> bytes:
    n = -(-len(payload) // BLOCK)
    sums = [xxhash.xxh3_64_intdigest(payload[i * BLOCK:(i + 1) * BLOCK]) for i in range(n)]
    head = _FIXED.pack(MAGIC, VERSION, chunk_id, offset, len(payload), BLOCK) + struct.pack(f"<{n}Q", *sums)
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class _Corrupt(Exception):
    pass


class _Entry:
    __slots__ = ("chunk_id", "length", "offset", "path", "size")

    def __init__(self, chunk_id: int, offset: int, length: int, path: str):
        self.chunk_id, self.offset, self.length, self.path = chunk_id, offset, length, path
        self.size = entry_size(length)

    @property
    def key(self) -> RangeKey:
        return (self.chunk_id, self.offset)


class DiskCache:
    """Chunk ranges in files under ``directory``, at most ``capacity`` bytes of them.

    ``free_floor``: skip puts that would leave less free space on the filesystem.
    ``max_entry_fraction``: skip entries bigger than this share of the capacity.
    ``window_fraction``: share of the capacity kept as the policy's recency window.
    ``durable``: fsync each entry before renaming it into place (off: checksums suffice).
    ``free_space``: returns the free bytes of the filesystem holding a path (tests fake it).

    Raises :class:`~lakefs_fuse.errors.Busy` when another DiskCache holds the directory.
    """

    def __init__(self, directory: Path | str, capacity: int, *, free_floor: int = CACHE_FREE_FLOOR,
                 max_entry_fraction: float = 0.25, window_fraction: float = 0.01, durable: bool = False,
                 free_space: Callable[[Path], int] = free_bytes):
        self.directory = Path(directory)
        self.capacity = capacity
        self.free_floor = free_floor
        self.max_entry = int(capacity * max_entry_fraction)
        self.durable = durable
        self._free_space = free_space
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._entries: dict[RangeKey, _Entry] = {}
        self._by_chunk: dict[int, dict[int, _Entry]] = {}
        self._policy = TinyLfuPolicy(capacity, window_fraction=window_fraction)
        self._counts = dict.fromkeys(
            ("hits", "misses", "bytes_hit", "puts", "rejected", "skipped", "evictions", "corrupt"), 0)
        self._closed = False
        self._entries_dir = self.directory / "entries"
        self._tmp_dir = self.directory / "tmp"
        self._entries_dir.mkdir(parents=True, exist_ok=True)
        self._tmp_dir.mkdir(exist_ok=True)
        for sub in range(FANOUT):
            (self._entries_dir / f"{sub:02x}").mkdir(exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise E.Busy(f"disk cache {self.directory} is in use by another process") from None
        self._rebuild()

    # -- open / close -------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Index what is on disk: drop temporaries, torn and foreign files, restore the rest."""
        for name in os.listdir(self._tmp_dir):
            _unlink(os.path.join(self._tmp_dir, name))
        self._load_sketch()
        found: list[tuple[int, _Entry]] = []
        for sub in os.listdir(self._entries_dir):
            subdir = os.path.join(self._entries_dir, sub)
            if not os.path.isdir(subdir):
                _unlink(subdir)
                continue
            for name in os.listdir(subdir):
                path = os.path.join(subdir, name)
                entry = _parse_name(sub, name, path)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if entry is None or st.st_size != entry.size:
                    _unlink(path)
                    continue
                found.append((st.st_mtime_ns, entry))
        found.sort(key=lambda pair: pair[0])
        for _mtime, entry in found:
            old = self._entries.get(entry.key)
            if old is not None:  # same start, two lengths (crash mid-replace): keep the longer
                if old.length >= entry.length:
                    _unlink(entry.path)
                    continue
                self._discard(old)
            self._index(entry)
            for gone in self._policy.restore(entry.key, entry.size):
                self._discard(self._entries[gone])
                self._counts["evictions"] += 1

    def _load_sketch(self) -> None:
        path = self.directory / "sketch"
        try:
            data = path.read_bytes()
        except OSError:
            return
        body, tail = data[:-8], data[-8:]
        if not body.startswith(_SKETCH_MAGIC) or struct.pack("<Q", xxhash.xxh3_64_intdigest(body)) != tail:
            return
        sketch = FrequencySketch.from_bytes(body[len(_SKETCH_MAGIC):], sketch_width_for(self.capacity))
        if sketch is not None:
            self._policy.sketch = sketch

    def close(self) -> None:
        """Save the frequency sketch and release the directory. Entries stay on disk."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            body = _SKETCH_MAGIC + self._policy.sketch.to_bytes()
            tmp = str(self._tmp_dir / f"sketch.{next(self._seq)}.tmp")
            try:
                _write_file(tmp, [body, struct.pack("<Q", xxhash.xxh3_64_intdigest(body))], self.durable)
                os.rename(tmp, self.directory / "sketch")
            except OSError:
                _unlink(tmp)
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the cache ----------------------------------------------------------------------------

    def get(self, chunk_id: int, offset: int, length: int) -> bytes | None:
        """Bytes [offset, offset+length) of the chunk if a stored range covers them, else None."""
        with self._lock:
            entry = None if self._closed or offset < 0 or length < 0 else self._covering(chunk_id, offset, length)
            if entry is None:
                self._counts["misses"] += 1
                self._policy.record_miss((chunk_id, offset))
                return None
            self._policy.record_hit(entry.key)
        try:
            data = self._read(entry, offset - entry.offset, length)
        except (OSError, _Corrupt):
            with self._lock:
                self._counts["misses"] += 1
                if self._entries.get(entry.key) is entry:  # not evicted meanwhile: the file is bad
                    self._counts["corrupt"] += 1
                    self._discard(entry)
            return None
        with self._lock:
            self._counts["hits"] += 1
            self._counts["bytes_hit"] += length
        return data

    def put(self, chunk_id: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store the range (or not: admission, size, free space). Never raises for cache trouble."""
        length = len(data)
        size = entry_size(length)
        key = (chunk_id, offset)
        with self._lock:
            if self._closed or offset < 0 or length == 0 or self._covering(chunk_id, offset, length):
                return
            if size > self.max_entry:
                self._counts["skipped"] += 1
                return
        try:
            room = self._free_space(self.directory) - size >= self.free_floor
            tmp = self._write_temp(chunk_id, offset, data) if room else None
        except OSError:
            tmp = None
        if tmp is None:
            with self._lock:
                self._counts["skipped"] += 1
            return
        with self._lock:
            if self._closed or self._covering(chunk_id, offset, length):  # a concurrent put won
                _unlink(tmp)
                return
            old = self._entries.get(key)
            if old is not None:  # a shorter range at the same start: this one replaces it
                self._discard(old)
            displaced = self._policy.admit(key, size)
            self._counts["evictions"] += len(displaced.evicted)
            self._counts["rejected"] += len(displaced.rejected)
            for gone in displaced.evicted + displaced.rejected:
                if gone != key:  # the new range has no file in place yet
                    self._discard(self._entries[gone])
            if key not in self._policy:
                _unlink(tmp)
                return
            entry = _Entry(chunk_id, offset, length, self._path(chunk_id, offset, length))
            try:
                os.rename(tmp, entry.path)
            except OSError:
                self._policy.remove(key)
                _unlink(tmp)
                self._counts["skipped"] += 1
                return
            self._index(entry)
            self._counts["puts"] += 1

    def drop_chunk(self, chunk_id: int) -> None:
        """Forget every range of a deleted chunk."""
        with self._lock:
            for entry in list(self._by_chunk.get(chunk_id, {}).values()):
                self._discard(entry)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "used": self._policy.used, "capacity": self.capacity,
                    "entries": len(self._entries)}

    # -- helpers (the index ones run under the lock) ------------------------------------------

    def _covering(self, chunk_id: int, offset: int, length: int) -> _Entry | None:
        for start, entry in self._by_chunk.get(chunk_id, {}).items():
            if start <= offset and offset + length <= start + entry.length:
                return entry
        return None

    def _index(self, entry: _Entry) -> None:
        self._entries[entry.key] = entry
        self._by_chunk.setdefault(entry.chunk_id, {})[entry.offset] = entry

    def _discard(self, entry: _Entry) -> None:
        """Remove a resident entry from the index, the policy and the disk."""
        del self._entries[entry.key]
        starts = self._by_chunk[entry.chunk_id]
        del starts[entry.offset]
        if not starts:
            del self._by_chunk[entry.chunk_id]
        self._policy.remove(entry.key)
        _unlink(entry.path)

    def _path(self, chunk_id: int, offset: int, length: int) -> str:
        return str(self._entries_dir / f"{chunk_id % FANOUT:02x}" / f"{chunk_id:016x}-{offset:x}-{length:x}")

    def _write_temp(self, chunk_id: int, offset: int, data: bytes | bytearray | memoryview) -> str:
        tmp = str(self._tmp_dir / f"{chunk_id:016x}-{offset:x}.{next(self._seq)}.tmp")
        _write_file(tmp, [encode_header(chunk_id, offset, data), data], self.durable)
        return tmp

    def _read(self, entry: _Entry, rel: int, length: int) -> bytes:
        """Verified payload bytes [rel, rel+length) of an entry file."""
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            hsize = header_size(entry.length)
            head = os.pread(fd, hsize, 0)
            if len(head) != hsize or xxhash.xxh3_64_intdigest(head[:-8]) != struct.unpack("<Q", head[-8:])[0]:
                raise _Corrupt("header")
            magic, version, cid, off, plen, block = _FIXED.unpack_from(head)
            if (magic, version, cid, off, plen, block) != (MAGIC, VERSION, entry.chunk_id, entry.offset,
                                                           entry.length, BLOCK):
                raise _Corrupt("header fields")
            if length == 0:
                return b""
            first, last = rel // BLOCK, (rel + length - 1) // BLOCK
            start = first * BLOCK
            span = min(entry.length, (last + 1) * BLOCK) - start
            buf = os.pread(fd, span, hsize + start)
        finally:
            os.close(fd)
        if len(buf) != span:
            raise _Corrupt("short payload")
        sums = struct.unpack_from(f"<{last - first + 1}Q", head, _FIXED.size + 8 * first)
        view = memoryview(buf)
        for i, expected in enumerate(sums):
            if xxhash.xxh3_64_intdigest(view[i * BLOCK:(i + 1) * BLOCK]) != expected:
                raise _Corrupt(f"block {first + i}")
        if rel == start and length == span:
            return buf
        return bytes(view[rel - start:rel - start + length])


def _parse_name(sub: str, name: str, path: str) -> _Entry | None:
    """The entry a file name under ``entries/<sub>/`` stands for, or None if it is not ours."""
    parts = name.split("-")
    if len(parts) != 3:
        return None
    try:
        chunk_id, offset, length = (int(p, 16) for p in parts)
    except ValueError:
        return None
    if f"{chunk_id:016x}-{offset:x}-{length:x}" != name or sub != f"{chunk_id % FANOUT:02x}" or length == 0:
        return None
    return _Entry(chunk_id, offset, length, path)


def _write_file(path: str, parts: list[bytes | bytearray | memoryview], durable: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def _unlink(path: str | Path) -> None:
    with contextlib.suppress(OSError):  # gone already, or cannot be deleted: the index no longer counts it
        os.unlink(path)
