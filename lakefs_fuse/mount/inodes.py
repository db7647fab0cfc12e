"""Inode lifetime: the kernel's lookup counts and unlink-until-last-close.

An inode stays while the kernel references it (its lookup count: one per entry the mount handed
out, until FORGET) or a handle has it open (:class:`~.handles.HandleTable`). An inode whose link
count this mount brought to 0 is freed (the ``release`` command: its data goes to the delete
queue) at its last forget or close. :class:`InodeRefs` owns the counts and that decision.

Two races it closes. A lookup or listing waiting for the metadata may name an inode that is
about to be freed; releases wait until no such answer is in flight (:meth:`InodeRefs.resolving`),
or the kernel would open a freed inode (ENOENT for a file that was only replaced by a rename).
On a shared (cluster) lake another mount may have just looked the inode up, so it is freed only
``shared_grace`` seconds after this mount saw its link count reach 0.

Runs on the trio thread; imports the meta layer and sibling mount modules, never pyfuse3.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import trio

from .. import errors as E
from ..meta.client import MetaClient
from ..meta.commands import Release
from ..meta.schema import ROOT_INO
from .handles import HandleTable
from .pagecache import KernelPages
from .writer import Writer

log = logging.getLogger(__name__)


class InodeRefs:
    def __init__(self, meta: MetaClient, writer: Writer, handles: HandleTable, kernel: KernelPages, *,
                 shared: bool, shared_grace: float):
        self.meta = meta
        self._writer = writer
        self._handles = handles
        self._kernel = kernel
        #: Other mounts use the same metadata (a cluster lake): orphans may be theirs.
        self.shared = shared
        self.shared_grace = shared_grace
        #: The kernel's lookup count per inode.
        self.lookups: dict[int, int] = {}
        #: Inodes whose link count this mount brought to 0, freed at their last forget/close.
        self._unlinked: set[int] = set()
        self._resolving = 0  # lookups and listings waiting for the metadata
        self._deferred: set[int] = set()  # releases waiting for them (maybe_release)
        #: Shared lakes: unlinked inodes to free when their grace ends (monotonic time).
        self._release_at: dict[int, float] = {}
        self._nursery: trio.Nursery | None = None

    async def start(self, nursery: trio.Nursery, *, free_orphans: bool = True) -> None:
        """Deferred releases run in ``nursery``. After a restart of an embedded lake nothing can
        reference an orphan: free what a crash left behind (on a shared lake another mount may
        still have it open; there the grace loop runs instead). A read-only VFS changes nothing:
        ``free_orphans=False``."""
        self._nursery = nursery
        if self.shared:
            nursery.start_soon(self._release_loop)
        elif free_orphans:
            for ino in await self.meta.orphans():
                await self.meta.apply(Release(ino, time.time_ns()))

    def ref(self, ino: int, n: int = 1) -> None:
        """The kernel took ``n`` more references to ``ino`` (an entry, a listed name)."""
        self.lookups[ino] = self.lookups.get(ino, 0) + n

    async def forget(self, items: list[tuple[int, int]]) -> None:
        """The kernel dropped references: (ino, count) pairs (FORGET, BATCH_FORGET)."""
        unused = []
        for ino, n in items:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups[ino] = 0
                unused.append(ino)
                self._kernel.forgotten(ino)  # and with it every cached page of the file
        for ino in unused:
            await self._release_quietly(ino, False)

    async def unlinked(self, ino: int) -> None:
        """This mount brought ``ino``'s link count to 0: free it at its last reference."""
        self._unlinked.add(ino)
        await self.maybe_release(ino)

    async def forget_all(self) -> None:
        """Unmount: the kernel references nothing any more."""
        for ino, count in list(self.lookups.items()):
            if count:
                self.lookups[ino] = 0
                await self.maybe_release(ino)

    async def maybe_release(self, ino: int, *, due: bool = False) -> None:
        """Free an unlinked inode once neither the kernel nor a handle references it.

        Not while a lookup or listing is waiting for the metadata: its answer may name this
        inode, and the kernel would then open a freed inode (ENOENT for a file that was only
        replaced by a rename); the release waits for those answers. On a shared lake other
        mounts may have just looked the inode up, so it is freed only ``shared_grace`` seconds
        after this mount saw its link count reach 0 (``due``: that time has come).
        """
        if self.lookups.get(ino, 0) > 0 or self._handles.open_count(ino) > 0 or ino == ROOT_INO:
            return
        if self._resolving:
            self._deferred.add(ino)
            return
        self.lookups.pop(ino, None)
        self._kernel.changed(ino)
        if not self.shared and ino not in self._unlinked:
            return  # only this mount changes an embedded lake: it saw every link count reach 0
        try:
            inode = await self.meta.getattr(ino)
        except E.NotFound:
            self._unlinked.discard(ino)
            self._release_at.pop(ino, None)
            return
        if inode.nlink == 0:
            if self.shared and not due:
                self._release_at.setdefault(ino, time.monotonic() + self.shared_grace)
                return
            if self.lookups.get(ino, 0) > 0 or self._handles.open_count(ino) > 0:
                return  # looked up again while we asked
            self._release_at.pop(ino, None)
            self._writer.discard(ino)
            await self.meta.apply(Release(ino, time.time_ns()))
            self._unlinked.discard(ino)

    @contextlib.contextmanager
    def resolving(self) -> Iterator[None]:
        """Around a lookup or listing: inodes it may return are not freed meanwhile."""
        self._resolving += 1
        try:
            yield
        finally:
            self._resolving -= 1
            if not self._resolving and self._deferred and self._nursery is not None:
                deferred, self._deferred = self._deferred, set()
                for ino in deferred:  # runs after the caller has taken its references
                    self._nursery.start_soon(self._release_quietly, ino, False)

    async def _release_quietly(self, ino: int, due: bool) -> None:
        try:
            await self.maybe_release(ino, due=due)
        except E.LakeError as exc:  # metadata unreachable: the orphan stays until reclaimed
            log.warning("inode %d: could not release it: %s", ino, exc)

    async def _release_loop(self) -> None:
        """Shared lakes: free unlinked inodes whose grace has passed (see maybe_release)."""
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            for ino in [i for i, at in self._release_at.items() if at <= now]:
                await self._release_quietly(ino, True)
