"""Owner-only files: what holds metadata, secrets or logs is 0600, in directories that are 0700.

File names are metadata too: a lake's RocksDB holds the name of every file, also of those inside
0700 directories of the mount, so a world-readable ``meta/`` would let any local user list them.

RocksDB creates its files with the process umask and has no mode of its own. A database is
therefore opened under a restrictive umask (:func:`owner_only_umask`: the files it creates at open
are 0600) and its directory is made owner-only (:func:`make_private`) at open and close. Files it
creates in between (flushes, compactions) get the ordinary umask, but sit in a 0700 directory that
no other user can enter, and are 0600 again after the next close or open. The umask is process-wide:
it is changed only around the open, which in the mount daemon happens before anything else runs,
and anything another thread created meanwhile would only be more private. The files users create
through FUSE are not affected at all: their modes come from the kernel's request and live in the
metadata, never from this process's umask.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def owner_only_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def make_private(directory: str | os.PathLike[str], files: tuple[str, ...] | None = None) -> None:
    """Make ``directory`` 0700 and its regular files 0600 (only ``files`` of them when given).

    Missing files are skipped; a directory this user may not change (a read-only look at someone
    else's lake, a read-only file system) is left as it is.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return  # not made yet (RocksDB creates it under the umask), or not ours to see
    try:
        _chmod(directory, 0o700)
        if files is None:
            files = tuple(e.name for e in os.scandir(directory) if e.is_file(follow_symlinks=False))
        for name in files:
            _chmod(directory / name, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.EROFS):
            raise


def _chmod(path: Path, mode: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
