"""Sampler-order prefetch, client side: tell a lakefs-fuse mount which files a training job reads next.

A shuffled epoch reads small files in an order no filesystem can guess. The sampler knows it, so
:class:`PrefetchSampler` draws the whole epoch's order up front and hands the file paths to the
mount, which then fetches each file just before a DataLoader worker opens it. Usage::

    from torch.utils.data import DataLoader, RandomSampler
    from torchvision import datasets, transforms

    from lakefs_fuse.torch import PrefetchSampler

    ds = datasets.ImageFolder("/mnt/lake/imagenet/train", transform=transforms.ToTensor())
    loader = DataLoader(ds, batch_size=256, num_workers=8,
                        sampler=PrefetchSampler(RandomSampler(ds), ds))
    for epoch in range(90):
        for images, labels in loader:   # each epoch's order is sent to the mount as it starts
            ...

The sampler runs in the main process (workers receive only indices), so this works with any
``num_workers``. Outside a lakefs-fuse mount, or with a daemon that has no ``.prefetch`` file, it
is a no-op that emits one :class:`PrefetchUnavailable` warning: prefetch never fails a job.

Protocol (the daemon side is ``lakefs_fuse.mount.prefetch``): a mount has a hidden, write-only file
``.prefetch`` in its root. Text written to it is the upcoming read order, one path per line,
relative to the mount root; a line ``--reset`` first drops the previous plan. A write returns once
the daemon has queued its lines. The daemon skips paths that name nothing or that the writing user
may not read (each user has a plan of their own). On a read-only mount the kernel refuses to open
the file for writing (EROFS); the same lines then go to the daemon's Unix socket, whose path
``cat .prefetch`` shows as ``plan_socket``.

Without a mount, the in-process client (``lakefs_fuse.client``) serves the same training loop::

    from lakefs_fuse.torch import LakeImageFolder, loader

    ds = LakeImageFolder("imagenet/train", connect={"data": "/srv/lake"}, transform=transforms.ToTensor())
    for images, labels in loader(ds, batch_size=256, num_workers=8):   # shuffled; each epoch planned
        ...

:class:`LakeImageFolder` has ImageFolder's classes, samples and order; :func:`loader` is a
DataLoader whose sampler hands each epoch's order to the read plan of the worker that reads each
sample (``lakefs_fuse.client.dataset`` explains how); :class:`PlanSampler` is that sampler.

This module is a client of the mount's *files* only: it imports nothing else from lakefs_fuse at
import time, and imports torch only when :class:`PrefetchSampler` is first used, so ``prefetch``
and ``mount_root`` work without torch installed. The client's names (:class:`LakeImageFolder`,
:func:`loader`, :class:`PlanSampler`) are looked up in ``lakefs_fuse.client.dataset`` on first use.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.data import Sampler

# The client's names are served by __getattr__ (below), so no import here can load the client.
__all__ = ["LakeImageFolder", "PlanSampler", "PrefetchSampler", "PrefetchUnavailable", "loader",  # noqa: F822
           "mount_root", "prefetch"]

#: Names served by the in-process client's dataset module, imported on first use (it imports torch).
_CLIENT_NAMES = frozenset({"LakeImageFolder", "PlanSampler", "loader"})

#: Mirrors ``lakefs_fuse.mount.prefetch`` (not imported: this module must not load the daemon's code).
FSTYPE = "fuse.lakefs"
CONTROL_NAME = ".prefetch"
RESET = "--reset"
#: Text handed to one write(2); a plan of a million paths is ~50 writes.
CHUNK_BYTES = 1 << 20


class PrefetchUnavailable(UserWarning):
    """Prefetch could not be handed to any mount; training goes on without it."""


PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def _unescape(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as \040, \011, \012, \134.
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_table() -> dict[str, str]:
    """Mountpoint -> fstype; a later mount on the same point hides the earlier one, as in the kernel."""
    table: dict[str, str] = {}
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    table[_unescape(fields[1])] = fields[2]
    except OSError:
        pass
    return table


def _containing_mount(real: str, table: dict[str, str]) -> str | None:
    """The mountpoint of the innermost mount holding the resolved path ``real``."""
    p = real
    while True:
        if p in table:
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def mount_root(path: PathLike) -> Path | None:
    """The lakefs-fuse mountpoint containing ``path`` (symlinks resolved), else None."""
    real = os.path.realpath(os.fsdecode(path))
    table = _mount_table()
    root = _containing_mount(real, table)
    return Path(root) if root is not None and table[root] == FSTYPE else None


def _group_by_mount(paths: Iterable[PathLike], table: dict[str, str]) -> dict[str, list[bytes]]:
    """Mount root -> its paths (relative, encoded, in the given order); other paths are dropped.

    Only directories are resolved (a dataset has few, and each realpath costs lookups on the mount);
    a file's own name is taken as it is.
    """
    dirs: dict[str, tuple[str, str] | None] = {}  # directory -> (mount root, relative dir) or None
    groups: dict[str, list[bytes]] = {}
    for p in paths:
        head, name = os.path.split(os.fsdecode(p))
        where = dirs.get(head, ...)
        if where is ...:
            real = os.path.realpath(head or ".")
            root = _containing_mount(real, table)
            where = dirs[head] = None if root is None or table[root] != FSTYPE else (
                root, os.path.relpath(real, root))
        if where is None or not name:
            continue
        root, rel_dir = where
        rel = name if rel_dir == "." else os.path.join(rel_dir, name)
        if "\n" in rel or rel == RESET:  # cannot be said in the line protocol
            continue
        groups.setdefault(root, []).append(os.fsencode(rel))
    return groups


def _plan_chunks(rels: list[bytes], reset: bool) -> Iterator[bytes]:
    """The plan's lines, ~1 MiB of whole lines at a time."""
    lines = [RESET.encode()] if reset else []
    size = sum(len(x) + 1 for x in lines)
    for rel in rels:
        lines.append(rel)
        size += len(rel) + 1
        if size >= CHUNK_BYTES:
            yield b"\n".join(lines) + b"\n"
            lines, size = [], 0
    if lines:
        yield b"\n".join(lines) + b"\n"


def _write_plan(root: str, rels: list[bytes], reset: bool) -> None:
    """Hand one mount its plan: one open, ~1 MiB of whole lines per write. Raises OSError."""
    # No O_CREAT: on a mount without the control file this must fail, not create a file.
    try:
        fd = os.open(os.path.join(root, CONTROL_NAME), os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        _send_plan(root, rels, reset)  # a read-only mount
        return
    try:
        for chunk in _plan_chunks(rels, reset):
            _write_all(fd, chunk)
    finally:
        os.close(fd)


def _send_plan(root: str, rels: list[bytes], reset: bool, timeout: float = 60.0) -> None:
    """A read-only mount's plan goes to the daemon's socket; returns once the daemon took it."""
    with open(os.path.join(root, CONTROL_NAME), "rb") as f:
        try:
            address = json.loads(f.read()).get("plan_socket")
        except ValueError:
            address = None
    if not address:
        raise OSError(errno.EROFS, "read-only mount without a plan socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        for chunk in _plan_chunks(rels, reset):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 16):  # the daemon's report, once every line is queued
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def prefetch(paths: Iterable[PathLike], *, reset: bool = True) -> bool:
    """Tell the lakefs-fuse mounts holding ``paths`` that they will be read in this order.

    Paths are grouped by mount; each mount gets its own paths, relative to its root, after a
    ``--reset`` line if ``reset``. Paths outside lakefs-fuse mounts are ignored. Returns True if
    any mount took a plan. Never raises for a filesystem reason: if no mount took the plan (or
    one of several refused it) it emits one :class:`PrefetchUnavailable` warning.
    """
    paths = list(paths)
    if not paths:
        return False
    table = _mount_table()
    groups = _group_by_mount(paths, table) if FSTYPE in table.values() else {}
    if not groups:
        warnings.warn(PrefetchUnavailable("prefetch unavailable: no path is on a lakefs-fuse mount"),
                      stacklevel=2)
        return False
    took, refused = False, []
    for root, rels in groups.items():
        try:
            _write_plan(root, rels, reset)
            took = True
        except OSError as exc:  # ENOENT: a daemon without .prefetch; anything else: a sick mount
            refused.append(f"{root}: {exc.strerror or exc}")
    if refused:
        warnings.warn(PrefetchUnavailable(f"prefetch unavailable on {'; '.join(refused)}"), stacklevel=2)
    return took


def _path_source(dataset: Any, paths: Callable[[int], PathLike] | None) -> Callable[[int], PathLike]:
    if (dataset is None) == (paths is None):
        raise TypeError("PrefetchSampler needs exactly one of dataset (with .samples) or paths")
    if paths is not None:
        return paths
    if not hasattr(dataset, "samples"):
        raise TypeError(f"{type(dataset).__name__} has no .samples: pass paths=callable(index) -> path")

    def from_samples(i: int) -> PathLike:
        sample = dataset.samples[i]
        path: PathLike = sample[0] if isinstance(sample, tuple | list) else sample
        return path

    return from_samples


def _make_prefetch_sampler() -> type:
    from torch.utils.data import Sampler

    class PrefetchSampler(Sampler[Any]):
        """Yields what ``sampler`` yields, after sending the epoch's file order to the mount.

        ``dataset`` has ``.samples`` (ImageFolder, DatasetFolder: a list of ``(path, class)``), or
        ``paths`` maps an index to its file. Each ``__iter__`` draws the wrapped sampler's whole
        epoch, calls :func:`prefetch` on the matching paths in that order, then yields the same
        indices. A wrapped batch sampler (lists of indices) also works, as a ``batch_sampler``.
        """

        def __init__(self, sampler: Iterable[Any], dataset: Any = None, *,
                     paths: Callable[[int], PathLike] | None = None, reset: bool = True):
            self.sampler = sampler
            self.path_of = _path_source(dataset, paths)
            self.reset = reset

        def __iter__(self) -> Iterator[Any]:
            order = list(self.sampler)
            flat = (j for i in order for j in (i if isinstance(i, list | tuple) else (i,)))
            # `prefetch` is looked up in the module at call time, so it can be replaced (tests do).
            prefetch([self.path_of(int(j)) for j in flat], reset=self.reset)
            yield from order

        def __len__(self) -> int:
            return len(self.sampler)  # type: ignore[arg-type]  # TypeError if it has none, as in torch

    PrefetchSampler.__module__ = __name__
    PrefetchSampler.__qualname__ = "PrefetchSampler"  # so pickle finds it via __getattr__
    return PrefetchSampler


if TYPE_CHECKING:
    class PrefetchSampler(Sampler[Any]):
        sampler: Iterable[Any]

        def __init__(self, sampler: Iterable[Any], dataset: Any = None, *,
                     paths: Callable[[int], PathLike] | None = None, reset: bool = True) -> None: ...
        def __iter__(self) -> Iterator[Any]: ...
        def __len__(self) -> int: ...


def __getattr__(name: str) -> Any:
    # PrefetchSampler subclasses torch's Sampler, so it is built on first use: importing this
    # module must not import torch (a ~3 s, 5 GB dependency the mount itself never needs).
    if name == "PrefetchSampler":
        cls = globals()["PrefetchSampler"] = _make_prefetch_sampler()
        return cls
    if name in _CLIENT_NAMES:  # the client (and torch with it) only for those who use it
        from .client import dataset

        value = globals()[name] = getattr(dataset, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
