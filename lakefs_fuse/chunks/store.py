"""Shard stores: where one peer keeps its shards.

:class:`ShardDir` is a directory of shard files with a blocking API; it is what a peer
server keeps on its disk and what an embedded lake uses directly. :class:`ShardStore` is the
async interface the chunk client talks to: :class:`LocalDirStore` runs a ShardDir's calls in
worker threads (small reads on the event loop); network peers (``netstore``) implement the same
methods over the wire.

The read path of a small file is one ``stat`` and one ``preadv`` per shard range: a ShardDir keeps
recently read shard files open with their headers parsed (:class:`OpenShards`, which says why a
held descriptor never serves a file its name no longer names), and ``advise`` lets an open start
the disk reads of a file's blocks before its read request arrives.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, Protocol, TypeVar, TypeVarTuple, overload

import trio
import xxhash

from .shardfile import BLOCK, ShardCorrupt, ShardMissing, ShardReader, header_size, write_shard


class PeerUnavailable(Exception):
    """The peer could not serve the request (down, I/O error): try another shard."""


class PeerFull(PeerUnavailable):
    """The peer has no room for the shard."""


class ForeignLake(PeerUnavailable):
    """The peer holds the shards of another lake: this lake must not write there."""


#: In a shard directory: the id of the one lake whose shards it holds (chunk ids are only
#: unique within a lake, so two lakes in one directory would overwrite each other's shards).
OWNER_FILE = "lake-owner.json"


def read_owner(root: str) -> str | None:
    """The lake id a shard directory belongs to (None: not claimed yet)."""
    path = os.path.join(root, OWNER_FILE)
    try:
        with open(path) as f:
            return str(json.load(f)["lake"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PeerUnavailable(f"{path} is damaged ({exc}): cannot tell which lake owns these shards") from None


def write_owner(root: str, lake_id: str) -> None:
    """Record (atomically, owner-only) that ``root`` holds the shards of lake ``lake_id``."""
    path = os.path.join(root, OWNER_FILE)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"lake": lake_id}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardStore(Protocol):
    """What the chunk client needs from a peer. Failures raise :class:`PeerUnavailable`."""

    peer_id: int

    async def put(self, chunk_id: int, index: int, payload: bytes | memoryview) -> None: ...
    async def get_into(self, chunk_id: int, index: int, offset: int, length: int, out: memoryview) -> None: ...
    async def verify(self, chunk_id: int, index: int, checksum: int) -> str: ...
    async def delete(self, chunk_id: int, index: int) -> None: ...
    async def sync(self) -> None: ...
    async def capacity(self) -> tuple[int, int]: ...
    async def list(self, after: tuple[int, int] = (-1, -1), limit: int = 1000) -> list[tuple[int, int, int]]:
        """Shards held, ordered by (chunk id, index), after ``after``: (chunk, index, bytes)."""
        ...


#: Shard reads up to this size run on the event loop instead of a worker thread (LocalDirStore).
INLINE_READ = 128 * 1024


def default_open_shards() -> int:
    """Shard files one :class:`ShardDir` keeps open: 256, less when the descriptor limit is low
    (a lake has about ten peer directories; the limit must leave room for everything else)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        soft = 1024
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(4, min(256, soft // 40))


def _close_readers(lru: OrderedDict[tuple[int, int], ShardReader]) -> None:
    for reader in lru.values():
        with contextlib.suppress(OSError):
            reader.close()
    lru.clear()


class OpenShards:
    """An LRU of open shard files with their headers parsed, so a read of a shard seen recently
    costs a ``stat`` and one ``preadv`` (no ``open``, no header read and parse, no ``close``).

    Why an open descriptor may be reused: a shard file never changes in place. A put writes a new
    file and renames it over the name (repair does the same); a delete unlinks it. Before a held
    reader is reused, the name is ``stat``-ed (~4 us, against ~50 us for open + header + close):
    a name that is gone makes the read fail as a missing shard, a name that now names another
    file (replaced by a rename, in this process or another: a repair, a test) is opened afresh.
    So a reader never reads a file that its name no longer names, and every read still checks
    each 64 KiB block against the header's checksums (a byte flipped in place is caught as
    before). The puts and deletes of this process also drop their entries at once, and a read
    that finds a damaged block drops its entry. ``verify`` (scrub, fsck) opens the file afresh.

    A reader evicted or dropped while another thread reads from it is closed by the last user
    (``users``); the lock is held only around the table, never around I/O.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._lru: OrderedDict[tuple[int, int], ShardReader] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.opens = 0
        # A store dropped without close() (a lake closed, a test's store) gives its descriptors back.
        self._finalizer = weakref.finalize(self, _close_readers, self._lru)

    @overload
    def acquire(self, path: str, chunk_id: int, index: int, *, lazy: bool = False, check: bool = True,
                held_only: Literal[False] = False) -> ShardReader: ...

    @overload
    def acquire(self, path: str, chunk_id: int, index: int, *, lazy: bool = False, check: bool = True,
                held_only: bool) -> ShardReader | None: ...

    def acquire(self, path: str, chunk_id: int, index: int, *, lazy: bool = False,
                check: bool = True, held_only: bool = False) -> ShardReader | None:
        """The reader of shard (chunk_id, index) at ``path``, opened if not held or if ``path`` now
        names another file (``lazy``: its header not read yet; ``check`` False: a held reader is
        taken without looking at the name -- for hints only, never for bytes; ``held_only``: None
        instead of opening a file, which may wait for the disk); :meth:`release` it."""
        key = (chunk_id, index)
        with self._lock:
            reader = self._lru.get(key)
            if reader is not None:
                self._lru.move_to_end(key)
                reader.users += 1
        if reader is None and held_only:
            return None
        if reader is not None and not check:
            return reader
        if reader is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self._discard(key, reader)
                raise ShardMissing(path) from None
            except BaseException:
                self.release(reader)
                raise
            if (st.st_dev, st.st_ino) == reader.ident:
                self.hits += 1
                return reader
            self._discard(key, reader)  # replaced under its name: open the file there now
            if held_only:
                return None
        reader = ShardReader(path, chunk_id, index, lazy=lazy)  # (I/O outside the lock)
        reader.users = 1
        closing = []
        with self._lock:
            self.opens += 1
            if key in self._lru or self.capacity <= 0:
                return reader  # another thread opened it meanwhile (or no caching): this one is closed after use
            reader.cached = True
            self._lru[key] = reader
            while len(self._lru) > self.capacity:
                _, old = self._lru.popitem(last=False)
                old.cached = False
                if not old.users:
                    closing.append(old)
        for old in closing:
            old.close()
        return reader

    def _discard(self, key: tuple[int, int], reader: ShardReader) -> None:
        """Give up ``reader`` (acquired): out of the table if it is still there, closed when unused."""
        with self._lock:
            if self._lru.get(key) is reader:
                del self._lru[key]
                reader.cached = False
        self.release(reader)

    def release(self, reader: ShardReader) -> None:
        with self._lock:
            reader.users -= 1
            close = not reader.users and not reader.cached
        if close:
            reader.close()

    def drop(self, chunk_id: int, index: int) -> None:
        """Forget shard (chunk_id, index): its file was replaced, removed or found damaged."""
        with self._lock:
            reader = self._lru.pop((chunk_id, index), None)
            if reader is None:
                return
            reader.cached = False
            close = not reader.users
        if close:
            reader.close()

    def clear(self) -> None:
        """Close every file held (a reader in use is closed by its last user)."""
        with self._lock:
            readers = list(self._lru.values())
            self._lru.clear()
            for r in readers:
                r.cached = False
            idle = [r for r in readers if not r.users]
        for r in idle:
            r.close()

    def __len__(self) -> int:
        return len(self._lru)


def resident(fd: int, offset: int, count: int) -> bool:
    """Whether file bytes [offset, offset+count) seem to be in the page cache: one byte of each
    64 KiB (and the last byte) read with ``RWF_NOWAIT``, which fails rather than wait for the
    disk. (A page evicted in the middle of a block costs the sender one disk wait.)"""
    probe = _PROBE
    try:
        for pos in range(offset, offset + count, BLOCK):
            os.preadv(fd, [probe], pos, os.RWF_NOWAIT)
        if count:
            os.preadv(fd, [probe], offset + count - 1, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return False  # (RWF_NOWAIT unsupported here: the thread path never assumes)
    return True


_PROBE = bytearray(1)


def read_in(fd: int, offset: int, count: int) -> bool:
    """Bring file bytes [offset, offset+count) into the page cache and wait for them (blocking):
    ``POSIX_FADV_WILLNEED`` for all of it at once, then one byte of each 64 KiB block read.
    Returns True (resident now)."""
    os.posix_fadvise(fd, offset, count, os.POSIX_FADV_WILLNEED)
    for pos in range(offset, offset + count, BLOCK):
        os.pread(fd, 1, pos)
    return True


class ShardDir:
    """A directory of shard files: ``<root>/<aa>/<chunk_id:016x>.<index>`` (blocking API).

    ``reserve`` bytes (default 2% of the disk, at most 64 MiB) are kept free on the file
    system: a put that would eat into them fails with :class:`PeerFull`, so a lake never
    fills its disk to the last byte. Errors start with ``label`` ("peer N" by default; a peer
    server, which does not know its id in any lake, says "peer server" and its client names it).
    """

    def __init__(self, peer_id: int, root: str, *, durable: bool = True, reserve: int | None = None,
                 label: str | None = None, open_files: int | None = None):
        self.peer_id = peer_id
        #: Shard files kept open for reads (see :class:`OpenShards`); put and delete drop theirs.
        self.open = OpenShards(default_open_shards() if open_files is None else open_files)
        self.root = root
        self.label = label or f"peer {peer_id}"
        self.durable = durable
        if reserve is None and os.path.isdir(root):
            st = os.statvfs(root)
            reserve = min(64 << 20, st.f_blocks * st.f_frsize // 50)  # 2% of the disk, at most 64 MiB
        self.reserve = reserve or 0
        self.tmp = os.path.join(root, "tmp")
        self._unsynced_dirs: set[str] = set()
        if not os.path.isdir(root):
            raise PeerUnavailable(f"peer directory {root} is missing")
        os.makedirs(self.tmp, exist_ok=True)
        self.owner = read_owner(root)

    def claim(self, lake_id: str, *, dry: bool = False) -> None:
        """Let lake ``lake_id`` write here: the first lake to ask owns the directory; any other
        gets :class:`ForeignLake`. ``dry``: only check."""
        if self.owner == lake_id:
            return
        if self.owner is not None:
            raise ForeignLake(f"{self.label} ({self.root}) holds the shards of another lake "
                              f"({self.owner}), not of this one ({lake_id})")
        if dry:
            return
        write_owner(self.root, lake_id)
        self.owner = lake_id

    def _path(self, chunk_id: int, index: int) -> str:
        return os.path.join(self.root, f"{chunk_id & 0xff:02x}", f"{chunk_id:016x}.{index}")

    def put(self, chunk_id: int, index: int, payload: bytes | memoryview) -> None:
        path = self._path(chunk_id, index)
        try:
            st = os.statvfs(self.root)
            if st.f_bavail * st.f_frsize < len(payload) + self.reserve:
                raise PeerFull(f"{self.label}: no space")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_shard(path, self.tmp, chunk_id, index, payload, durable=self.durable)
            self.open.drop(chunk_id, index)  # (a descriptor held open reads the file renamed over)
            self._unsynced_dirs.add(os.path.dirname(path))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PeerFull(f"{self.label}: {exc.strerror}") from exc
            raise PeerUnavailable(f"{self.label}: {exc}") from exc

    def get(self, chunk_id: int, index: int, offset: int, length: int) -> bytearray:
        out = bytearray(length)
        self.get_into(chunk_id, index, offset, length, memoryview(out))
        return out

    def get_into(self, chunk_id: int, index: int, offset: int, length: int, out: memoryview) -> None:
        """Verified shard bytes [offset, offset+length) written into ``out`` (from a shard file kept
        open, see :class:`OpenShards`)."""
        try:
            reader = self.open.acquire(self._path(chunk_id, index), chunk_id, index)
        except OSError as exc:
            raise PeerUnavailable(f"{self.label}: {exc}") from exc
        try:
            reader.read_into(offset, length, out)
        except ShardCorrupt:
            self.open.drop(chunk_id, index)
            raise
        except OSError as exc:
            self.open.drop(chunk_id, index)
            raise PeerUnavailable(f"{self.label}: {exc}") from exc
        finally:
            self.open.release(reader)

    def span_now(self, chunk_id: int, index: int, offset: int,
                 length: int) -> tuple[ShardReader, int, int, bytes, bool] | None:
        """:meth:`open_span` without waiting for the disk, for the event loop: None unless the shard
        is held open (a ``stat`` of its name checks it is still that file). Also says whether the
        range is in the page cache (:func:`resident`): if so, it can be sent from the loop."""
        try:
            reader = self.open.acquire(self._path(chunk_id, index), chunk_id, index, held_only=True)
        except OSError as exc:
            raise PeerUnavailable(f"{self.label}: {exc}") from exc
        if reader is None:
            return None
        if not reader.parsed:  # (its header is still to be read: that may wait for the disk)
            self.open.release(reader)
            return None
        return reader, *self._span(reader, chunk_id, index, offset, length, resident)

    def open_span(self, chunk_id: int, index: int, offset: int, length: int) -> tuple[ShardReader, int, int, bytes]:
        """For a peer server that sends shard bytes [offset, offset+length) unread: the open reader
        (:meth:`OpenShards.release` it once sent), the file range of the whole blocks holding them
        and those blocks' sums (:meth:`ShardReader.span`). Blocking: the range is read into the
        page cache before this returns (:func:`read_in`), so the event loop can send it."""
        try:
            reader = self.open.acquire(self._path(chunk_id, index), chunk_id, index)
        except OSError as exc:
            raise PeerUnavailable(f"{self.label}: {exc}") from exc
        file_off, count, sums, _ = self._span(reader, chunk_id, index, offset, length, read_in)
        return reader, file_off, count, sums

    def _span(self, reader: ShardReader, chunk_id: int, index: int, offset: int, length: int,
              then: Callable[[int, int, int], bool]) -> tuple[int, int, bytes, bool]:
        """``reader.span`` and ``then(fd, file offset, count)`` of its range; on failure the reader
        is released (and dropped if the file is bad)."""
        try:
            file_off, count, sums = reader.span(offset, length)
            return file_off, count, sums, then(reader.fd, file_off, count)
        except ShardCorrupt:
            self.open.drop(chunk_id, index)
            self.open.release(reader)
            raise
        except OSError as exc:
            self.open.drop(chunk_id, index)
            self.open.release(reader)
            raise PeerUnavailable(f"{self.label}: {exc}") from exc
        except BaseException:
            self.open.release(reader)
            raise

    def advise(self, chunk_id: int, index: int, offset: int, length: int, payload_len: int) -> None:
        """A read of payload bytes [offset, offset+length) is coming: have the kernel start reading
        their 64 KiB blocks (and the header of a file not held open yet, which is then held open,
        its header parsed at the read) from the disk now, without waiting for them
        (``POSIX_FADV_WILLNEED``). Only a hint: errors are ignored."""
        start = offset // BLOCK * BLOCK
        end = min(payload_len, -(-(offset + length) // BLOCK) * BLOCK)
        try:
            reader = self.open.acquire(self._path(chunk_id, index), chunk_id, index, lazy=True, check=False)
        except (OSError, ShardMissing):
            return
        try:
            if reader.parsed:
                os.posix_fadvise(reader.fd, reader.data_off + start, end - start, os.POSIX_FADV_WILLNEED)
            else:
                data_off = header_size(payload_len)
                if start <= 4 * BLOCK:  # the header and the blocks close together: one request
                    os.posix_fadvise(reader.fd, 0, data_off + end, os.POSIX_FADV_WILLNEED)
                else:
                    os.posix_fadvise(reader.fd, 0, data_off, os.POSIX_FADV_WILLNEED)
                    os.posix_fadvise(reader.fd, data_off + start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            self.open.release(reader)

    def verify(self, chunk_id: int, index: int, checksum: int) -> str:
        """'ok', 'missing', 'corrupt' or 'unreachable' for one shard (reads it whole)."""
        try:
            reader = ShardReader(self._path(chunk_id, index), chunk_id, index)
        except ShardMissing:
            return "missing"
        except ShardCorrupt:
            return "corrupt"
        except OSError:
            return "unreachable"
        try:
            data = reader.read(0, reader.length)
        except ShardCorrupt:
            return "corrupt"
        except OSError:
            return "unreachable"
        finally:
            reader.close()
        return "ok" if xxhash.xxh3_64_intdigest(data) == checksum else "corrupt"

    def delete(self, chunk_id: int, index: int) -> None:
        self.open.drop(chunk_id, index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(chunk_id, index))

    def sync(self) -> None:
        """Make the names of shards written so far durable (fsync their directories).

        The shard bytes were fsynced at write; the rename into place is made durable here,
        once per directory and barrier rather than once per shard.
        """
        dirs, self._unsynced_dirs = self._unsynced_dirs, set()
        for d in dirs:
            try:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise PeerUnavailable(f"{self.label}: {exc}") from exc
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def capacity(self) -> tuple[int, int]:
        """(total, available) bytes of the file system under the peer."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, max(0, st.f_bavail * st.f_frsize - self.reserve)

    def shard_path(self, chunk_id: int, index: int) -> str:
        return self._path(chunk_id, index)

    def close(self) -> None:
        """Close the shard files held open for reads (the directory stays usable)."""
        self.open.clear()

    def list(self, after: tuple[int, int] = (-1, -1), limit: int = 1000) -> list[tuple[int, int, int]]:
        """Shards stored here, ordered by (chunk id, index), after ``after``: (chunk, index, bytes)."""
        keys: list[tuple[int, int, str]] = []
        for sub in sorted(os.listdir(self.root)):
            if len(sub) != 2:
                continue  # tmp/ and anything that is not a shard bucket
            try:
                names = os.listdir(os.path.join(self.root, sub))
            except OSError:
                continue
            for name in names:
                stem, _, idx = name.partition(".")
                try:
                    key = (int(stem, 16), int(idx))
                except ValueError:
                    continue
                if key > after:
                    keys.append((key[0], key[1], os.path.join(self.root, sub, name)))
        keys.sort()
        found: list[tuple[int, int, int]] = []
        for chunk_id, index, path in keys[:limit]:  # only the page's files are stat'ed
            try:
                found.append((chunk_id, index, os.stat(path).st_size))
            except OSError:
                continue  # deleted meanwhile
        return found


_T = TypeVar("_T")
_Args = TypeVarTuple("_Args")


class LocalDirStore:
    """A :class:`ShardDir` on this machine, its blocking calls run in worker threads."""

    def __init__(self, peer_id: int, root: str, *, durable: bool = True, reserve: int | None = None,
                 limiter: trio.CapacityLimiter | None = None):
        self.dir = ShardDir(peer_id, root, durable=durable, reserve=reserve)
        self.peer_id = peer_id
        self.root = root
        self.limiter = limiter or trio.CapacityLimiter(16)

    async def _run(self, fn: Callable[[*_Args], _T], *args: *_Args) -> _T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def put(self, chunk_id: int, index: int, payload: bytes | memoryview) -> None:
        await self._run(self.dir.put, chunk_id, index, payload)

    async def get_into(self, chunk_id: int, index: int, offset: int, length: int, out: memoryview) -> None:
        if length <= INLINE_READ:
            # A small read costs less than the hand-off to a worker thread and back (two context
            # switches and the GIL on a 2-core machine); it runs on the event loop, yielding first
            # (so that concurrent readers of the same range find its flight and share it).
            await trio.lowlevel.checkpoint()
            self.dir.get_into(chunk_id, index, offset, length, out)
            return
        await self._run(self.dir.get_into, chunk_id, index, offset, length, out)

    def advise(self, chunk_id: int, index: int, offset: int, length: int, payload_len: int) -> None:
        """See :meth:`ShardDir.advise` (runs here, on the event loop: it does not wait for the disk)."""
        self.dir.advise(chunk_id, index, offset, length, payload_len)

    async def verify(self, chunk_id: int, index: int, checksum: int) -> str:
        return await self._run(self.dir.verify, chunk_id, index, checksum)

    async def delete(self, chunk_id: int, index: int) -> None:
        await self._run(self.dir.delete, chunk_id, index)

    async def sync(self) -> None:
        await self._run(self.dir.sync)

    async def capacity(self) -> tuple[int, int]:
        return await self._run(self.dir.capacity)

    async def list(self, after: tuple[int, int] = (-1, -1), limit: int = 1000) -> list[tuple[int, int, int]]:
        return await self._run(self.dir.list, after, limit)

    def shard_path(self, chunk_id: int, index: int) -> str:
        return self.dir.shard_path(chunk_id, index)

    def close(self) -> None:
        self.dir.close()
