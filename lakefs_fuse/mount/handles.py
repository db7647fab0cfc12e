"""Open handles: what a file handle number (``fh``) stands for, and how many are open per inode.

Owns the :class:`HandleTable` -- handle numbers -> :class:`Handle` (a regular file),
:class:`DirHandle` (a directory listing) or :class:`ControlHandle` (one of the mount's control
files, see :mod:`.control`) -- and the count of open file handles per inode, which keeps an
unlinked file's data until its last close (the VFS asks :meth:`HandleTable.open_count`).
The per-handle read-ahead state belongs to the reader (:class:`~.reader.ReadAhead`).

Plain data, no I/O. Imports only :mod:`lakefs_fuse.errors` and sibling mount modules.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from .. import errors as E
from .prefetch import CONTROL_INO, Credentials
from .reader import ReadAhead


@dataclass(slots=True)
class Handle:
    """An open regular file."""

    ino: int
    flags: int
    pid: int = 0           # the process that opened it (metrics: time and bytes per process)
    profile: tuple[int, int] | None = None  # EC profile new data is written with (None: the lake's)
    wrote: bool = False
    ahead: ReadAhead = field(default_factory=ReadAhead)  # the reader's sequential read-ahead state


@dataclass(slots=True)
class DirHandle:
    ino: int


@dataclass(slots=True)
class ControlHandle:
    """An open control file. ``.prefetch``: text written to it is handed to the read plan line by
    line; reads show the plan's progress. ``.stats`` and ``.config`` are read-only reports."""

    ino: int = CONTROL_INO
    pending: str = ""
    report: bytes = b""  # what a read from offset 0 saw; later offsets read the same snapshot
    cred: Credentials | None = None  # .prefetch: whose plan this handle writes and shows


AnyHandle = Handle | DirHandle | ControlHandle


class HandleTable:
    """Handle numbers of one mount, and open file handles per inode."""

    def __init__(self) -> None:
        self._handles: dict[int, AnyHandle] = {}
        self._opens: dict[int, int] = {}  # ino -> open file handles
        self._next_fh = 1

    def add(self, h: AnyHandle) -> int:
        """A new handle number for ``h`` (a file handle counts as an open of its inode)."""
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        if isinstance(h, Handle):
            self._opens[h.ino] = self._opens.get(h.ino, 0) + 1
        return fh

    def get(self, fh: int) -> AnyHandle | None:
        return self._handles.get(fh)

    def file(self, fh: int) -> Handle:
        """The open regular file ``fh``; EBADF for anything else."""
        h = self._handles.get(fh)
        if not isinstance(h, Handle):
            raise E.LakeError("bad file handle", err=errno.EBADF)
        return h

    def directory(self, fh: int) -> DirHandle:
        h = self._handles.get(fh)
        if not isinstance(h, DirHandle):
            raise E.LakeError("bad directory handle", err=errno.EBADF)
        return h

    def pop(self, fh: int) -> AnyHandle | None:
        """Forget ``fh``; a file handle's inode has one open less."""
        h = self._handles.pop(fh, None)
        if isinstance(h, Handle):
            n = self._opens.get(h.ino, 1) - 1
            if n > 0:
                self._opens[h.ino] = n
            else:
                self._opens.pop(h.ino, None)
        return h

    def pid(self, fh: int) -> int:
        """The process that opened file handle ``fh`` (0: not a file handle)."""
        h = self._handles.get(fh)
        return h.pid if isinstance(h, Handle) else 0

    def open_count(self, ino: int) -> int:
        return self._opens.get(ino, 0)
