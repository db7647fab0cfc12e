"""``lakefs-fuse warmup``: read files through a mount once, so its caches hold them.

Reading through the mount (not the lake directly) is the point: the mount's memory cache and, with
``--cache-dir``, its local disk cache keep what passes through, so training that starts next reads
from them. Each file is read whole in 1 MiB reads by ``jobs`` threads; afterwards the kernel is
told (``POSIX_FADV_DONTNEED``) it need not keep the pages, so the page cache is left as it was.
A file that cannot be read is reported, not fatal.

Imports ``mount`` (the mount table) and the base layer.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat as st
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..mount.mounttab import lakefs_mount_of

#: Bytes per read.
READ_SIZE = 1 << 20


def files_under(paths: list[Path]) -> list[tuple[Path, int]]:
    """(path, size) of every regular file named or under a directory named; each path must be
    inside a lakefs-fuse mount."""
    files: list[tuple[Path, int]] = []
    for p in paths:
        p = p.resolve()
        if lakefs_mount_of(p) is None:
            raise UserError(f"{p} is not inside a lakefs-fuse mount")
        if p.is_dir():
            for dirpath, _dirnames, filenames in os.walk(p):
                for f in filenames:
                    fp = Path(dirpath) / f
                    try:
                        s = fp.lstat()
                    except OSError:
                        continue
                    if st.S_ISREG(s.st_mode):
                        files.append((fp, s.st_size))
        else:
            files.append((p, p.stat().st_size))
    return files


def read_all(files: list[tuple[Path, int]], *, jobs: int, on_file: Callable[[int], None]) -> list[str]:
    """Read every file once with ``jobs`` threads; ``on_file(size)`` as each ends. Returns one
    ``PATH: why`` line per file that could not be read."""
    failed: list[str] = []
    lock = threading.Lock()

    def read(item: tuple[Path, int]) -> int:
        path, size = item
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                while os.read(fd, READ_SIZE):
                    pass
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except OSError as exc:
            with lock:
                failed.append(f"{path}: {exc.strerror}")
        return size

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for size in pool.map(read, files):
            on_file(size)
    return failed
