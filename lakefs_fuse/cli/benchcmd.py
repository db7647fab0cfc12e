"""``lakefs-fuse bench DIR``: a quick benchmark of whatever filesystem DIR is on (a mount, usually).

Like ``juicefs bench``: it writes and reads back one big file and many small files, stats the small
files and deletes everything, with ``--threads`` workers each doing its share, and prints throughput
and per-operation latency. The big file is read back after its pages are dropped from the page cache
(``posix_fadvise(DONTNEED)``), so the read goes to the filesystem -- through a lakefs mount that
means the daemon's caches or the peers, not the kernel's copy of what was just written. Everything
it creates is inside ``DIR/.lakefs-bench-<pid>`` and removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass
class Phase:
    name: str
    seconds: float
    ops: int
    nbytes: int

    def to_json(self) -> dict:
        out = {"phase": self.name, "seconds": round(self.seconds, 4), "ops": self.ops,
               "ops_per_s": round(self.ops / self.seconds, 1) if self.seconds else None,
               "ms_per_op": round(self.seconds * 1e3 / self.ops, 3) if self.ops else None}
        if self.nbytes:
            out["MB_per_s"] = round(self.nbytes / self.seconds / 1e6, 1) if self.seconds else None
        return out


def _parallel(threads: int, work) -> float:
    """Run ``work(i)`` for i in range(threads) at once; the wall time; the first error re-raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t


def run(directory: Path, *, big_size: int, small_count: int, small_size: int, threads: int,
        block: int = MiB, progress=None) -> list[Phase]:
    root = Path(directory) / f".lakefs-bench-{os.getpid()}"
    root.mkdir()
    phases: list[Phase] = []
    step = progress or (lambda _name: None)
    try:
        payload = os.urandom(block)
        small = os.urandom(small_size)
        per = -(-big_size // threads // block) * block  # bytes per thread, whole blocks

        def big_path(i: int) -> Path:
            return root / f"big.{i}"

        def write_big(i: int) -> None:
            with open(big_path(i), "wb", buffering=0) as f:
                for _ in range(per // block):
                    f.write(payload)
                os.fsync(f.fileno())

        step("write big file")
        phases.append(Phase("write big file", _parallel(threads, write_big), threads * (per // block), threads * per))
        for i in range(threads):  # the pages just written: out of the page cache
            fd = os.open(big_path(i), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

        def read_big(i: int) -> None:
            with open(big_path(i), "rb", buffering=0) as f:
                while f.read(block):
                    pass

        step("read big file")
        phases.append(Phase("read big file", _parallel(threads, read_big), threads * (per // block), threads * per))

        names = [[root / f"small.{i}.{j}" for j in range(small_count // threads)] for i in range(threads)]
        n_small = sum(len(x) for x in names)

        def write_small(i: int) -> None:
            for p in names[i]:
                with open(p, "wb", buffering=0) as f:
                    f.write(small)

        step("write small files")
        phases.append(Phase("write small files", _parallel(threads, write_small), n_small, n_small * small_size))
        for group in names:
            for p in group:
                fd = os.open(p, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)

        def read_small(i: int) -> None:
            for p in names[i]:
                with open(p, "rb", buffering=0) as f:
                    f.read()

        step("read small files")
        phases.append(Phase("read small files", _parallel(threads, read_small), n_small, n_small * small_size))

        def stat_small(i: int) -> None:
            for p in names[i]:
                os.stat(p)

        step("stat small files")
        phases.append(Phase("stat small files", _parallel(threads, stat_small), n_small, 0))

        def delete(i: int) -> None:
            for p in names[i]:
                os.unlink(p)
            os.unlink(big_path(i))

        step("delete")
        phases.append(Phase("delete", _parallel(threads, delete), n_small + threads, 0))
        return phases
    finally:
        shutil.rmtree(root, ignore_errors=True)
