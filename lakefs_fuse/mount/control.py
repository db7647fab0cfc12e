"""The mount's control files: ``.prefetch``, ``.stats`` and ``.config`` in the mount root.

They are answered here, never stored in the metadata and never listed. Inode numbers count down
from 2**63 - 2 (metadata counts up from 2), so they never collide with a file's.

* ``.prefetch`` (mode 0666): text written to it is a read plan, taken line by line (the last,
  unterminated line at flush or close); a read shows the progress of the reader's own plan.
  Each user (uid) has a plan of their own, resolved with the writer's permissions
  (:class:`~.prefetch.ReadPlan`, which also explains why). A read-only mount takes plans through
  the daemon's socket instead (``plan_socket``; the kernel refuses to open the file for writing).
* ``.stats`` and ``.config`` (0444): read-only reports. The daemon plugs in its metrics
  (``stats_source``, ``config_source``); the fallbacks serve a VFS without one (in-process tests).

A read from offset 0 takes one snapshot of the report; later offsets of the same handle read that
snapshot, so a reader needing several requests never mixes two reports.

Owns the read plans and the control handles' contents. Imports :mod:`.prefetch`, :mod:`.handles`
and the meta schema; the whole-file fetch comes from the reader as a callable.
"""

from __future__ import annotations

import errno
import json
import os
import stat as st
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields

import trio

from .. import errors as E
from ..config import MountConfig
from ..meta.client import MetaClient
from ..meta.schema import ROOT_INO, Inode
from .handles import ControlHandle
from .pagecache import PageCachePusher
from .prefetch import CONTROL_INO, CONTROL_NAME, AheadBudget, Credentials, PlanStats, ReadPlan
from .reader import Stats

#: Hidden files in the mount root: name -> (inode number, mode).
STATS_INO, CONFIG_INO = (1 << 63) - 3, (1 << 63) - 4
CONTROL_FILES = {CONTROL_NAME: (CONTROL_INO, 0o666), b".stats": (STATS_INO, 0o444), b".config": (CONFIG_INO, 0o444)}
CONTROL_INOS = {ino: mode for ino, mode in CONTROL_FILES.values()}


def is_control(ino: int) -> bool:
    return ino in CONTROL_INOS


def is_control_name(parent: int, name: bytes) -> bool:
    """``name`` in ``parent`` is one of the control files (only the mount root has them)."""
    return parent == ROOT_INO and name in CONTROL_FILES


def control_inode(ino: int) -> Inode:
    return Inode(ino, st.S_IFREG | CONTROL_INOS[ino], 1, 0, 0)


def _writer(h: ControlHandle) -> Credentials:
    """Whose plan a ``.prefetch`` handle writes and shows (set when it was opened)."""
    assert h.cred is not None, "not a .prefetch handle"
    return h.cred


class ControlFiles:
    def __init__(self, meta: MetaClient, fetch_file: Callable[[int], Awaitable[int]], config: MountConfig, *,
                 parallel: int, budget: AheadBudget, stats: Stats, pusher: PageCachePusher | None = None):
        self.meta = meta
        self._fetch_file = fetch_file
        self._files_ahead = config.prefetch_files
        self._bytes_ahead = config.prefetch_bytes
        self._parallel = parallel
        self._budget = budget
        self._stats = stats
        self._pusher = pusher
        #: Read plans (.prefetch), one per user, each resolved with its writer's permissions.
        self.plans: dict[int, ReadPlan] = {}
        #: Where a read-only mount takes plans (the daemon's socket; the kernel refuses to open
        #: .prefetch for writing there). Shown in `cat .prefetch`.
        self.plan_socket: str | None = None
        #: What `cat .stats` and `cat .config` show.
        self.stats_source: Callable[[], bytes] = lambda: json.dumps(asdict(stats), indent=1).encode() + b"\n"
        mountpoint = str(config.mountpoint)
        self.config_source: Callable[[], bytes] = \
            lambda: json.dumps({"mountpoint": mountpoint}).encode() + b"\n"
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Plans run in ``nursery`` (those taken before this start now)."""
        self._nursery = nursery
        for plan in self.plans.values():
            nursery.start_soon(plan.run)

    # ------------------------------------------------------------ the files

    def open(self, ino: int, flags: int, uid: int, gid: int, pid: int) -> ControlHandle:
        if ino != CONTROL_INO and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
            raise E.LakeError("the mount's status files are read-only", err=errno.EACCES)
        cred = Credentials.of_process(uid, gid, pid) if ino == CONTROL_INO else None
        return ControlHandle(ino, cred=cred)

    @staticmethod
    def setattr(ino: int) -> Inode:
        if ino == CONTROL_INO:
            return control_inode(ino)  # e.g. the truncate of open(".prefetch", "w"): nothing to do
        raise E.NotPermitted("the mount's status files are read-only")

    def read(self, h: ControlHandle, off: int, size: int) -> bytes:
        # One snapshot per read from the start: a reader needing several requests must not
        # get the head of one report and the tail of a longer, newer one.
        if off == 0 or not h.report:
            h.report = self._report(h)
        return h.report[off:off + size]

    def _report(self, h: ControlHandle) -> bytes:
        if h.ino == STATS_INO:
            return self.stats_source()
        if h.ino == CONFIG_INO:
            return self.config_source()
        return self.plan_report(_writer(h))  # .prefetch, e.g. `cat .prefetch`

    def write(self, h: ControlHandle, data: bytes | memoryview) -> int:
        if h.ino != CONTROL_INO:
            raise E.LakeError("bad file handle", err=errno.EBADF)
        text = h.pending + bytes(data).decode("utf-8", errors="surrogateescape")
        complete, _, h.pending = text.rpartition("\n")
        if complete:
            self.take_plan(_writer(h), complete)
        return len(data)

    def flush(self, h: ControlHandle) -> None:
        """Flush or close: the last, unterminated line is taken too."""
        if h.pending:  # only .prefetch takes text
            self.take_plan(_writer(h), h.pending)
            h.pending = ""

    # ------------------------------------------------------------ read plans

    def _plan_of(self, cred: Credentials) -> ReadPlan:
        """``cred``'s user's read plan, made on first use (its task runs in the VFS nursery)."""
        plan = self.plans.get(cred.uid)
        if plan is None:
            plan = self.plans[cred.uid] = ReadPlan(
                self.meta.lookup, self._fetch_file, files_ahead=self._files_ahead,
                bytes_ahead=self._bytes_ahead, parallel=self._parallel, budget=self._budget,
                cred=cred, stat=self.meta.getattr)
            if self._nursery is not None:
                self._nursery.start_soon(plan.run)
        return plan

    def file_opened(self, uid: int, ino: int) -> None:
        """``uid`` opened ``ino``: its plan's cursor moves there (if the file is in the plan)."""
        plan = self.plans.get(uid)
        if plan is not None and plan.active:
            plan.opened(ino)

    def take_plan(self, cred: Credentials, text: str) -> None:
        """Lines of a read plan written by ``cred`` (to .prefetch, or to the daemon's socket)."""
        plan = self._plan_of(cred)
        plan.cred = cred  # the user's groups as of their latest write
        plan.take(text)

    def plan_report(self, cred: Credentials) -> bytes:
        """The progress of the caller's own plan (JSON). The mount-wide counters, which move with
        every user's reads and plans, only for root and the daemon's own user."""
        status: dict[str, object] = {**self._plan_of(cred).report(), "plan_socket": self.plan_socket}
        if cred.uid in (0, os.geteuid()):
            status["read_requests"] = self._stats.reads  # READs that reached the daemon
            if self._pusher is not None:
                status["page_cache"] = asdict(self._pusher.stats)
        return json.dumps(status, indent=1).encode() + b"\n"

    def plan_totals(self) -> PlanStats:
        """Every user's plan counters summed (metrics)."""
        total = PlanStats()
        for plan in self.plans.values():
            for f in fields(PlanStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(plan.stats, f.name))
        return total
