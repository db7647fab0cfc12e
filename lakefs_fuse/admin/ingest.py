"""A VFS over an opened lake, for tools that write without FUSE (``import``, ``restripe``).

:func:`writing` builds the same :class:`~..mount.vfs.VFS` a mount uses -- so packing, erasure
coding, placement and metadata commands are a mount's -- from :meth:`MountConfig.unmounted`,
starts its background tasks in a nursery of its own, and yields it. When the block ends
normally every buffer is sealed and the shards and metadata are synced (``vfs.shutdown``), so
what the tool wrote is durable; an error ends the block without that (whole files committed
before it stay) and comes out as it was raised (a ``UserError`` stays one line at the CLI), not
wrapped in the nursery's ExceptionGroup. A cluster lake's VFS is ``shared``: other mounts write beside it.

:data:`IMPORT_PACK_DELAY` and :data:`RESTRIPE_PACK_DELAY` are the tools' grouping windows.

Imports ``mount`` (the VFS), ``lake`` and the base layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..config import MountConfig
from ..lake.lake import Lake
from ..mount.vfs import VFS

#: ``import`` packs the files it writes through the VFS (those bigger than ``importer.SMALL_FILE``;
#: smaller ones go in batches of their own) that finish within this many seconds into shared chunks.
IMPORT_PACK_DELAY = 1.0
#: ``restripe`` rewrites one file at a time and commits each at once.
RESTRIPE_PACK_DELAY = 0.0


@asynccontextmanager
async def writing(lake: Lake, *, pack_delay: float) -> AsyncIterator[VFS]:
    """A started VFS over ``lake``; sealed and synced when the block ends without an error."""
    vfs = VFS(lake.meta, lake.chunks, MountConfig.unmounted(pack_delay=pack_delay),
              chunk_size=lake.config.chunk_size, shared=bool(lake.meta_addresses))
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        await vfs.start(nursery)
        try:
            yield vfs
            await vfs.shutdown()  # seal everything, sync shards and metadata
        except Exception as exc:  # raised below as it was, not in the nursery's ExceptionGroup
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
