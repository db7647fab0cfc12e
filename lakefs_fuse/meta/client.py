"""The metadata interface the mount uses, and its embedded implementation.

:class:`MetaClient` is what Raft (issue 4) sits behind: every mutation is one typed command of
the catalogue (:mod:`.commands`) sent with :meth:`MetaClient.apply`; reads are queries.
:class:`LocalMeta` serves an embedded lake by applying commands directly to a local
:class:`~lakefs_fuse.meta.state.StateMachine` (no encoding: the handler gets the command's fields);
:class:`~.remote.RemoteMeta` sends a command's wire form (:meth:`~.commands.Command.to_wire`) to
the metadata servers. Wire lists are the Raft log's business (``StateMachine.apply`` replays
them), not a caller's: every caller builds a typed command from the catalogue.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from .commands import Command
from .schema import ChunkRecord, Extent, Inode, PeerRecord
from .state import StateMachine


class MetaClient(Protocol):
    async def apply(self, cmd: Command, *, sync: bool = False) -> Any: ...
    async def sync(self) -> None: ...
    async def format_record(self) -> dict: ...
    async def getattr(self, ino: int) -> Inode: ...
    async def lookup(self, parent: int, name: bytes) -> Inode: ...
    async def readdir(self, ino: int, after_cookie: int, limit: int) -> list[tuple[bytes, Inode, int]]: ...
    async def extents(self, ino: int, first_index: int, last_index: int) -> list[Extent]: ...
    async def readlink(self, ino: int) -> bytes: ...
    async def getxattr(self, ino: int, name: bytes) -> bytes: ...
    async def listxattr(self, ino: int) -> list[bytes]: ...
    async def chunk(self, chunk_id: int) -> ChunkRecord: ...
    async def chunks(self, after: int = -1, limit: int = 1000) -> list[ChunkRecord]: ...
    async def peers(self) -> list[PeerRecord]: ...
    async def orphans(self) -> list[int]: ...
    async def delete_queue(self, limit: int = 1000) -> list[tuple[int, int]]: ...
    async def count_inodes(self) -> int: ...
    async def stored_data(self) -> int | None: ...
    async def sparse_chunks(self, max_live: float, limit: int, min_dead: int = 0) -> dict: ...
    async def next_chunk_id(self) -> int: ...
    def close(self) -> None: ...


class LocalMeta:
    """Embedded metadata: the state machine in this process.

    Commands run synchronously on the event loop (RocksDB writes without sync take
    microseconds); ``sync=True`` commands, used as fsync barriers, fsync the WAL.
    """

    def __init__(self, sm: StateMachine):
        self.sm = sm

    async def apply(self, cmd: Command, *, sync: bool = False) -> Any:
        return self.sm.apply(cmd, sync=sync)

    async def sync(self) -> None:
        self.sm.sync()

    async def format_record(self) -> dict:
        return self.sm.format_record()

    async def getattr(self, ino: int) -> Inode:
        return self.sm.getattr(ino)

    async def lookup(self, parent: int, name: bytes) -> Inode:
        return self.sm.lookup(parent, name)

    async def readdir(self, ino: int, after_cookie: int, limit: int):
        return self.sm.readdir(ino, after_cookie, limit)

    async def extents(self, ino: int, first_index: int, last_index: int) -> list[Extent]:
        return self.sm.extents(ino, first_index, last_index)

    async def readlink(self, ino: int) -> bytes:
        return self.sm.readlink(ino)

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return self.sm.getxattr(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return self.sm.listxattr(ino)

    async def chunk(self, chunk_id: int) -> ChunkRecord:
        return self.sm.chunk(chunk_id)

    async def chunks(self, after: int = -1, limit: int = 1000) -> list[ChunkRecord]:
        return self.sm.chunks(after, limit)

    async def peers(self) -> list[PeerRecord]:
        return self.sm.peers()

    async def orphans(self) -> list[int]:
        return self.sm.orphans()

    async def delete_queue(self, limit: int = 1000):
        return self.sm.delete_queue(limit)

    async def count_inodes(self) -> int:
        return self.sm.count_inodes()

    async def stored_data(self) -> int | None:
        return self.sm.stored_data()

    async def sparse_chunks(self, max_live: float, limit: int, min_dead: int = 0) -> dict:
        return await trio.to_thread.run_sync(self.sm.sparse_chunks, max_live, limit, min_dead)

    async def next_chunk_id(self) -> int:
        return self.sm.next_chunk_id()

    def close(self) -> None:
        self.sm.close()
