"""ReadPlan on its own (no FUSE): the window, the shared in-flight budget, resets."""

from __future__ import annotations

import trio
import trio.testing

from lakefs_fuse import errors as E
from lakefs_fuse.meta.schema import ROOT_INO, Inode
from lakefs_fuse.mount.prefetch import AheadBudget, ReadPlan

DIR_MODE, FILE_MODE = 0o40755, 0o100644


class FakeLake:
    """``n`` files of ``size`` bytes in directory ``d`` (inode 2); files are inodes 100.."""

    def __init__(self, n: int, size: int):
        self.files = {f"f{i}".encode(): 100 + i for i in range(n)}
        self.size = size
        self.fetched: list[int] = []
        self.release = trio.Event()
        self.inflight = 0
        self.max_inflight = 0

    async def lookup(self, parent: int, name: bytes) -> Inode:
        if parent == ROOT_INO and name == b"d":
            return Inode(2, DIR_MODE, 2, 0, 0)
        if parent == 2 and name in self.files:
            return Inode(self.files[name], FILE_MODE, 1, 0, 0, size=self.size)
        raise E.NotFound()

    async def fetch(self, ino: int) -> int:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await self.release.wait()
            self.fetched.append(ino)
            return self.size
        finally:
            self.inflight -= 1


async def _settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def test_window_follows_the_cursor_and_skips_unknown_paths():
    async def main():
        lake = FakeLake(50, 1000)
        plan = ReadPlan(lake.lookup, lake.fetch, files_ahead=10, bytes_ahead=1 << 20, parallel=4)
        lake.release.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plan.run)
            plan.take("--reset\nd/nope\n" + "".join(f"d/f{i}\n" for i in range(50)))
            await _settle()
            # positions 0..9 ahead of the cursor (-1); position 0 names nothing
            assert sorted(lake.fetched) == [100 + i for i in range(9)]
            assert plan.stats.unresolved == 1
            plan.opened(100 + 20)  # the loader jumped to position 21: the window moves with it
            await _settle()
            assert {100 + i for i in range(21, 31)} <= set(lake.fetched)
            assert 100 + 31 not in lake.fetched and 100 + 15 not in lake.fetched
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_shared_budget_defers_the_window_until_bytes_land():
    async def main():
        lake = FakeLake(20, 1000)
        budget = AheadBudget(3000)
        plan = ReadPlan(lake.lookup, lake.fetch, files_ahead=10, bytes_ahead=1 << 20, parallel=8,
                        budget=budget)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plan.run)
            plan.take("".join(f"d/f{i}\n" for i in range(20)))
            await _settle()
            assert lake.inflight == 3 and plan.stats.deferred >= 1  # 3 × 1000 fill the budget
            assert budget.take(1) is False  # read-ahead, sharing it, finds it full too
            lake.release.set()
            await _settle()
            assert sorted(lake.fetched) == [100 + i for i in range(10)]  # the rest of the window came
            assert lake.max_inflight == 3 and budget.used == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_reset_drops_the_old_plan():
    async def main():
        lake = FakeLake(30, 1000)
        plan = ReadPlan(lake.lookup, lake.fetch, files_ahead=5, bytes_ahead=1 << 20, parallel=4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plan.run)
            plan.take("".join(f"d/f{i}\n" for i in range(10)))
            await _settle()
            plan.take("--reset\n" + "".join(f"d/f{i}\n" for i in range(20, 30)))
            lake.release.set()
            await _settle()
            report = plan.report()
            assert report["planned"] == 10 and report["resets"] == 1
            # fetches of the old plan were already running and finish, but uncounted
            assert {100 + i for i in range(20, 25)} <= set(lake.fetched)
            assert plan.stats.prefetched == 5
            nursery.cancel_scope.cancel()

    trio.run(main)
