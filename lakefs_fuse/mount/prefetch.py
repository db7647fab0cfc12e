"""Sampler-order prefetch: a training job tells the mount which files it will read next.

A mount has a hidden, write-only file ``.prefetch`` in its root. A client (``lakefs_fuse.torch``)
writes the upcoming read order of an epoch to it, one path per line relative to the mount root;
a line ``--reset`` first drops the previous plan. No other filesystem knows the order a shuffled
epoch will read in; we do, so the files can arrive just before the loader asks for them.

:class:`ReadPlan` keeps that order. Every ``open`` of a file in the plan moves a *cursor* to the
file's position (the furthest opened position wins: DataLoader workers open files a little out of
order). A background task keeps the files in positions ``(cursor, cursor + files_ahead]`` fetched
into the mount's memory cache, never more than ``bytes_ahead`` bytes ahead of the cursor, with at
most ``parallel`` fetches at a time. Paths are resolved lazily, ``resolve_ahead`` positions ahead of
the cursor, with a cache of directory lookups. A path that does not resolve (a typo, a deleted file)
is skipped. Prefetch errors are logged at debug level and never reach a reader: a read of a file
whose prefetch failed simply fetches it itself.

With ``--allow-other`` the control file is open to every local user, so a plan is the *writer's*:
each user (uid) has a plan of their own, and its paths are resolved with the writer's
:class:`Credentials` -- search permission on every directory on the way, read permission on the
file -- exactly as the kernel would check an ``open``. A path the writer may not reach counts as
unresolved, like one that does not exist, and is never fetched; ``cat .prefetch`` shows the
reader's own plan only. Otherwise the plan's counters would tell any user which names exist inside
a 0700 directory, and the daemon would fetch files for users who may not read them.

The plan holds only strings and small ints; a million-file epoch costs tens of MB of daemon memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import trio

from .. import errors as E
from ..meta.schema import ROOT_INO, Inode

log = logging.getLogger(__name__)

#: The control file's name in the mount root and its inode number (never allocated by metadata,
#: whose counter starts at 2 and counts up).
CONTROL_NAME = b".prefetch"
CONTROL_INO = (1 << 63) - 2
RESET = "--reset"


class AheadBudget:
    """Bytes being fetched ahead of readers, one budget for sequential read-ahead and the read
    plan together. A fetch takes its bytes before it starts and gives them back when done;
    ``on_free`` callbacks run then (the plan continues a window it had to cut short)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.on_free: list[Callable[[], None]] = []

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
        for callback in self.on_free:
            callback()


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who wrote a plan: the uid, gid and supplementary groups permission checks use."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @classmethod
    def of_process(cls, uid: int, gid: int, pid: int) -> Credentials:
        """The credentials of a FUSE request or socket peer: FUSE gives uid, gid and pid only, so
        the supplementary groups are read from /proc (none if the process is already gone)."""
        groups: frozenset[int] = frozenset()
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("Groups:"):
                        groups = frozenset(int(g) for g in line.split()[1:])
                        break
        except (OSError, ValueError):
            pass
        return cls(uid, gid, groups)

    def may(self, inode: Inode, mask: int) -> bool:
        """POSIX permission check of ``mask`` (os.R_OK | os.W_OK | os.X_OK bits) on ``inode``."""
        if self.uid == 0:  # root: everything, but execute only where some x bit is set
            return not mask & os.X_OK or inode.is_dir or bool(inode.mode & 0o111)
        if self.uid == inode.uid:
            bits = inode.mode >> 6
        elif self.gid == inode.gid or inode.gid in self.groups:
            bits = inode.mode >> 3
        else:
            bits = inode.mode
        return bits & mask == mask


@dataclass(slots=True)
class PlanStats:
    received: int = 0       # paths handed to us (all plans)
    resolved: int = 0       # paths turned into inodes
    unresolved: int = 0     # paths that named nothing
    prefetched: int = 0     # files fetched ahead of the reader
    prefetched_bytes: int = 0
    failed: int = 0         # prefetches that failed (the reader fetched for itself)
    deferred: int = 0       # times the window waited for the shared in-flight budget
    opened_in_plan: int = 0  # opens of planned files (the loader followed the plan)
    resets: int = 0


class ReadPlan:
    """The upcoming read order of one training job and the task that prefetches along it."""

    def __init__(self, lookup: Callable[[int, bytes], Awaitable[Inode]],
                 fetch: Callable[[int], Awaitable[int]], *, files_ahead: int = 64,
                 bytes_ahead: int = 64 << 20, parallel: int = 8, resolve_ahead: int = 1024,
                 budget: AheadBudget | None = None, cred: Credentials | None = None,
                 stat: Callable[[int], Awaitable[Inode]] | None = None):
        self._lookup = lookup    # (parent ino, name) -> Inode, from metadata
        #: Whose plan this is (None: no permission checks); ``stat`` fetches the root's mode.
        self.cred = cred
        self._stat = stat
        self._fetch = fetch      # ino -> bytes fetched (whole file into the memory cache)
        self._budget = budget    # shared with sequential read-ahead (None: the window alone bounds it)
        if budget is not None:
            budget.on_free.append(self._budget_freed)
        self.files_ahead = files_ahead
        self.bytes_ahead = bytes_ahead
        self.resolve_ahead = resolve_ahead
        self._limiter = trio.CapacityLimiter(parallel)
        self._paths: list[str] = []
        self._inos: dict[int, tuple[int, int]] = {}    # position -> (ino, size)
        self._position: dict[int, int] = {}            # ino -> newest position in the plan
        self._resolved_to = -1                         # positions <= this have been tried
        self._started: set[int] = set()                # positions whose fetch began
        self._forgotten_to = -1                        # positions <= this are dropped
        self.cursor = -1
        self._dirs: dict[tuple[int, bytes], Inode] = {}  # (parent, name) -> directory, for this plan
        self._root: Inode | None = None
        self._wake = trio.Event()
        self._waiting_for_room = False
        self._generation = 0
        self.stats = PlanStats()

    # ------------------------------------------------------------------ input

    def take(self, text: str) -> None:
        """Lines written to the control file (complete lines only; the handle buffers the rest)."""
        for line in text.split("\n"):
            line = line.strip()
            if not line:
                continue
            if line == RESET:
                self.reset()
            else:
                self._paths.append(line.lstrip("/"))
                self.stats.received += 1
        self._wake.set()

    def reset(self) -> None:
        self._paths = []
        self._inos.clear()
        self._position.clear()
        self._started.clear()
        self._resolved_to = -1
        self._forgotten_to = -1
        self.cursor = -1
        self._dirs.clear()  # directory modes are looked at afresh for every plan (every epoch)
        self._root = None
        self._generation += 1  # fetches of the old plan finish, but are no longer counted
        self.stats.resets += 1

    def opened(self, ino: int) -> None:
        """The loader opened ``ino``: if it is in the plan, the cursor moves up to it."""
        pos = self._position.get(ino)
        if pos is None:
            return
        self.stats.opened_in_plan += 1
        if pos > self.cursor:
            self.cursor = pos
            for done in [p for p in self._started if p <= pos]:
                self._started.discard(done)
            self._wake.set()

    def _budget_freed(self) -> None:
        """Bytes fetched ahead (by anyone sharing the budget) have landed: continue if we waited."""
        if self._waiting_for_room:
            self._waiting_for_room = False
            self._wake.set()

    @property
    def active(self) -> bool:
        return bool(self._paths)

    def report(self) -> dict[str, int]:
        return {"planned": len(self._paths), "cursor": self.cursor, "files_ahead": self.files_ahead,
                "bytes_ahead": self.bytes_ahead, **asdict(self.stats)}

    # ------------------------------------------------------------------ the task

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                try:
                    await self._resolve(min(len(self._paths) - 1, self.cursor + self.resolve_ahead))
                    self._start_fetches(nursery)
                except Exception:  # the plan is advice: never let it take the daemon down
                    log.exception("read plan: failed to advance")

    async def _resolve(self, upto: int) -> None:
        generation = self._generation
        while self._resolved_to < upto and generation == self._generation:
            pos = self._resolved_to + 1
            self._resolved_to = pos
            inode = await self._resolve_path(self._paths[pos])
            if generation != self._generation:
                return
            if inode is None or not inode.is_reg:
                self.stats.unresolved += 1
                continue
            self._inos[pos] = (inode.ino, inode.size)
            self._position[inode.ino] = pos
            self.stats.resolved += 1
            if pos <= self.cursor + self.files_ahead:
                self._wake.set()  # the window can start before the whole lookahead resolves

    async def _resolve_path(self, path: str) -> Inode | None:
        parts = [p.encode(errors="surrogateescape") for p in path.split("/") if p and p != "."]
        if not parts:
            return None
        try:
            if self.cred is not None and self._root is None:
                assert self._stat is not None, "a plan with permission checks (cred) needs stat"
                self._root = await self._stat(ROOT_INO)
            parent, parent_ino = self._root, ROOT_INO
            for name in parts[:-1]:
                # No lookup in a directory the writer may not search: a name there that exists
                # and one that does not must look alike.
                if not self._may(parent, os.X_OK):
                    return None
                d = self._dirs.get((parent_ino, name))
                if d is None:
                    d = await self._lookup(parent_ino, name)
                    if not d.is_dir:
                        return None
                    self._dirs[(parent_ino, name)] = d
                parent, parent_ino = d, d.ino
            if not self._may(parent, os.X_OK):
                return None
            inode = await self._lookup(parent_ino, parts[-1])
            return inode if self._may(inode, os.R_OK) else None
        except E.LakeError:
            return None

    def _may(self, inode: Inode | None, mask: int) -> bool:
        return self.cred is None or (inode is not None and self.cred.may(inode, mask))

    def _start_fetches(self, nursery: trio.Nursery) -> None:
        ahead_bytes = 0
        first = self.cursor + 1
        for pos in range(first, min(first + self.files_ahead, len(self._paths))):
            item = self._inos.get(pos)
            if item is None:
                if pos > self._resolved_to:
                    break  # not resolved yet: the resolver wakes us
                continue
            ino, size = item
            if size > self.bytes_ahead:
                continue  # a big file: sequential read-ahead serves it as it is read
            ahead_bytes += size
            if ahead_bytes > self.bytes_ahead and pos > first:
                break
            if pos not in self._started:
                if self._budget is not None and not self._budget.take(size):
                    self.stats.deferred += 1
                    self._waiting_for_room = True
                    break  # over the shared in-flight budget: _budget_freed() wakes us
                self._started.add(pos)
                nursery.start_soon(self._fetch_one, ino, size, self._generation)
        # Forget what is behind the cursor (keeps memory flat over a long epoch).
        while self._forgotten_to < self.cursor:
            self._forgotten_to += 1
            item = self._inos.pop(self._forgotten_to, None)
            if item is not None and self._position.get(item[0]) == self._forgotten_to:
                del self._position[item[0]]

    async def _fetch_one(self, ino: int, size: int, generation: int) -> None:
        try:
            async with self._limiter:
                if generation != self._generation:
                    return
                try:
                    got = await self._fetch(ino)
                except Exception as exc:  # a reader that needs the file fetches it itself
                    self.stats.failed += 1
                    log.debug("read plan: prefetch of inode %d failed: %s", ino, exc)
                    return
                if generation == self._generation:
                    self.stats.prefetched += 1
                    self.stats.prefetched_bytes += got
        finally:
            if self._budget is not None:
                self._budget.give(size)
