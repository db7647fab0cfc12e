"""Shard stores: where one peer keeps its shards.

:class:`ShardDir` is a directory of shard files with a blocking API; it is what a peer
server keeps on its disk and what an embedded lake uses directly. :class:`ShardStore` is the
async interface the chunk client talks to: :class:`LocalDirStore` runs a ShardDir's calls in
worker threads; network peers (``netstore``) implement the same methods over the wire.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from typing import Protocol, TypeVar, TypeVarTuple

import trio
import xxhash

from .shardfile import ShardCorrupt, ShardMissing, ShardReader, write_shard


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


class ShardDir:
    """A directory of shard files: ``<root>/<aa>/<chunk_id:016x>.<index>`` (blocking API).

    ``reserve`` bytes (default 2% of the disk, at most 64 MiB) are kept free on the file
    system: a put that would eat into them fails with :class:`PeerFull`, so a lake never
    fills its disk to the last byte. Errors start with ``label`` ("peer N" by default; a peer
    server, which does not know its id in any lake, says "peer server" and its client names it).
    """

    def __init__(self, peer_id: int, root: str, *, durable: bool = True, reserve: int | None = None,
                 label: str | None = None):
        self.peer_id = peer_id
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
        """Verified shard bytes [offset, offset+length) written into ``out``."""
        try:
            reader = ShardReader(self._path(chunk_id, index), chunk_id, index)
        except OSError as exc:
            raise PeerUnavailable(f"{self.label}: {exc}") from exc
        try:
            reader.read_into(offset, length, out)
        except OSError as exc:
            raise PeerUnavailable(f"{self.label}: {exc}") from exc
        finally:
            reader.close()

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
            # switches and the GIL on a 2-core machine); it runs on the event loop, yielding first.
            await trio.lowlevel.checkpoint()
            self.dir.get_into(chunk_id, index, offset, length, out)
            return
        await self._run(self.dir.get_into, chunk_id, index, offset, length, out)

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
