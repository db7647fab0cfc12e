"""File objects of the Python client: :class:`RawLakeFile` under the io module's buffering.

A raw file holds one VFS handle (the same handle a mount's open(2) makes): reads and writes go to
the lake's trio thread, one call each; ``readall`` reads the rest of the file in one call. Closing
flushes the file's buffered writes into chunks and reports their write-back error, as close(2)
does on a mount; the handle is released either way. An object dropped unclosed in another process
(a forked child) is left alone: the handle is the parent's.

:func:`open_mode` turns the builtin ``open`` mode letters into open(2) flags.

Imports the session (for the call signatures) only through the owning client.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

from .. import errors as E
from .errmap import oserror as _oserror
from .portal import PortalClosed
from .session import Caller

if TYPE_CHECKING:
    from .lake import LakeClient

_BASE = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
         "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}


def open_mode(mode: str) -> tuple[int, bool, bool, bool]:
    """(flags, binary, readable, writable) of a builtin ``open`` mode."""
    letters = set(mode)
    base = [c for c in mode if c in "rwax"]
    if len(base) != 1 or len(letters) != len(mode) or letters - set("rwaxbt+") or {"b", "t"} <= letters:
        raise ValueError(f"invalid mode: {mode!r}")
    flags = _BASE[base[0]]
    readable, writable = base[0] == "r", base[0] != "r"
    if "+" in letters:
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        readable = writable = True
    return flags, "b" in letters, readable, writable


class RawLakeFile(io.RawIOBase):
    """An open lake file: ``readinto``, ``readall``, ``write``, ``seek``, ``tell``, ``truncate``,
    ``fsync``. Normally used through the buffered object :meth:`LakeClient.open` returns."""

    def __init__(self, client: LakeClient, path: str | bytes, flags: int, *, readable: bool, writable: bool):
        super().__init__()
        self._client = client
        self.name = os.fsdecode(path)
        self._readable, self._writable = readable, writable
        self._append = bool(flags & os.O_APPEND)
        self._who = Caller.of_process()
        session = client.session
        self._fh, inode = client._call(session.open, path, flags, 0o666, self._who, path=path)
        self._session = session
        self._pid = os.getpid()
        self._pos = 0
        self._wrote = False
        self.mode = "rb" if not writable else ("r+b" if readable else "wb")
        del inode

    # ------------------------------------------------------------------ io.RawIOBase

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def _call(self, fn: Any, *args: Any) -> Any:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        if os.getpid() != self._pid:
            raise OSError(f"{self.name}: a file opened in another process (before a fork) cannot be used here")
        return self._client._call(fn, *args, path=self.name)

    def readinto(self, buffer: Any) -> int:
        if not self._readable:
            raise io.UnsupportedOperation("read")
        view = memoryview(buffer).cast("B")
        got = self._call(self._session.read, self._fh, self._pos, len(view))
        n = len(got)
        view[:n] = got
        self._pos += n
        return n

    def readall(self) -> bytes:
        if not self._readable:
            raise io.UnsupportedOperation("read")
        data = self._call(self._session.read_to_end, self._fh, self._pos)
        self._pos += len(data)
        return bytes(data)

    def write(self, data: Any) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("write")
        view = memoryview(data).cast("B")
        if not len(view):
            return 0
        off = None if self._append else self._pos
        n = self._call(self._session.write, self._fh, off, bytes(view))
        self._wrote = True
        self._pos = self._call(self._session.size, self._fh) if self._append else self._pos + n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._call(self._session.size, self._fh) + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(22, "Invalid argument", self.name)
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("truncate")
        size = self._pos if size is None else size
        self._call(self._session.truncate, self._fh, size, self._who)
        self._wrote = True
        return size

    def fsync(self) -> None:
        """Commit this file's bytes and make them (and the metadata) durable, as fsync(2)."""
        self._call(self._session.fsync, self._fh)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a lake file has no file descriptor (use fsync())")

    def close(self) -> None:
        """Flush this file's writes into the lake (raising their write-back error) and release it."""
        if self.closed:
            return
        try:
            portal = self._client._portal
            if os.getpid() == self._pid and portal is not None and portal.alive:
                try:
                    portal.call(self._session.close, self._fh, self._wrote)
                except E.LakeError as exc:
                    raise _oserror(exc, self.name) from None
                except PortalClosed:
                    pass  # the lake was closed first: its shutdown sealed and synced everything
        finally:
            super().close()

    def __repr__(self) -> str:
        return f"<RawLakeFile {self.name!r} mode={self.mode!r}>"
