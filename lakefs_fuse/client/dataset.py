"""Training data through the client: an ImageFolder over a lake, and a loader that plans each epoch.

:class:`LakeImageFolder` is torchvision's ``ImageFolder`` read through :func:`~.lake.connect`
instead of a mount: the same ``classes``, ``class_to_idx``, ``samples`` and ``targets``, in the
same order, for the same tree (class directories sorted; in each, every file under it --
subdirectories walked with symlinks followed -- in the order of the sorted walk; a file kept if
its lower-cased name ends with an image extension, or if ``is_valid_file(path)`` says so). Sample
paths are lake paths (``"train/cat/001.jpg"``). The default loader decodes
``lake.read_bytes(path)`` with PIL and converts it to RGB, as torchvision's ``pil_loader`` does,
so tensors are bit-identical to ImageFolder's on a local copy.

Processes. The dataset holds the lake's connection settings (:class:`~.lake.ClientConfig`), never
a live connection, when it is pickled (``spawn``/``forkserver`` workers): each worker connects on
its first sample. A ``fork``ed worker inherits the client, which opens the lake again in the
child on its first call (no trio thread, socket or RocksDB handle is shared). A dataset that
connects by itself opens the lake read-only: it never takes an embedded lake's lock from a mount.

Sampler-order prefetch (:func:`loader`). A DataLoader's sampler runs in the main process, and it
runs *after* the workers are forked, while the files are opened by the workers -- each reading
through its own client, whose read plan is the one the prefetch must feed. So the plan travels
through a :class:`PlanBoard` made before the fork: at the start of each epoch the sampler draws the
whole order, cuts it into batches as the DataLoader will, and writes worker ``w``'s share --
batches ``w, w + W, w + 2W, ...``, the round-robin in which an in-order DataLoader deals batches,
in that order -- to a file of the board, then bumps the board's shared generation counter. A
worker that sees a new generation at its next sample reads its file and hands the paths to its
client's read plan (:meth:`~.lake.LakeClient.prefetch`: the mount's ``.prefetch`` code, same
memory and disk caches). The epoch's first index reaches a worker only after the board was
written, so no worker misses its plan; persistent workers see each new generation the same way.
With ``num_workers=0`` the sampler plans the whole order in the main process. With
``in_order=False`` batches go to whichever worker has room, so a worker's plan is only a guess:
a file read by another worker is fetched by that one, as without a plan. Prefetch is advice: a
failure is one :class:`~lakefs_fuse.torch.PrefetchUnavailable` warning per process, never an error.

Imported lazily through :mod:`lakefs_fuse.torch`; imports torch (and PIL when a sample is
decoded), the client's :mod:`.lake` and the base's warning class. Nothing in lakefs_fuse imports it.
"""

from __future__ import annotations

import io
import os
import shutil
import stat as st
import tempfile
import threading
import warnings
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from multiprocessing.context import get_spawning_popen
from multiprocessing.sharedctypes import RawValue
from typing import Any

from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, get_worker_info

from ..torch import PrefetchUnavailable
from .lake import ClientConfig, LakeClient
from .lake import connect as _connect

__all__ = ["IMG_EXTENSIONS", "LakeImageFolder", "PlanBoard", "PlanSampler", "loader"]

#: The file name endings torchvision's ImageFolder takes as images (compared lower-cased).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _join(top: str, name: str) -> str:
    return f"{top}/{name}" if top else name


def pil_from_bytes(data: bytes) -> Any:
    """An RGB PIL image of encoded bytes (torchvision's ``pil_loader``, from memory)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class LakeImageFolder(Dataset[tuple[Any, Any]]):
    """torchvision's ``ImageFolder`` over a lake: ``LakeImageFolder("train", connect={"data": DIR})``.

    ``root``: the dataset's directory in the lake ("" for the lake's root). ``lake``: a
    :class:`~.lake.LakeClient` to read through (left open by :meth:`close`); or ``connect``: the
    keyword arguments of :func:`~.lake.connect` (``read_only`` defaults to True here).
    ``loader(path)`` loads a sample (default: :meth:`load_image`, through this dataset's lake);
    ``transform``, ``target_transform``, ``is_valid_file`` and ``allow_empty`` are ImageFolder's.
    ``extensions``: the file endings kept (default :data:`IMG_EXTENSIONS`; exclusive with
    ``is_valid_file``, as in DatasetFolder).
    """

    def __init__(self, root: str | os.PathLike[str] = "", lake: LakeClient | None = None, *,
                 connect: dict[str, Any] | None = None, transform: Callable[[Any], Any] | None = None,
                 target_transform: Callable[[Any], Any] | None = None,
                 loader: Callable[[str], Any] | None = None, is_valid_file: Callable[[str], bool] | None = None,
                 extensions: Sequence[str] | str | None = None, allow_empty: bool = False):
        if (lake is None) == (connect is None):
            raise TypeError("LakeImageFolder needs exactly one of lake= (a LakeClient) or connect={...}")
        if extensions is not None and is_valid_file is not None:
            raise ValueError("Both extensions and is_valid_file cannot be None or not None at the same time")
        self.root = os.fspath(root).strip("/")
        self._owns_lake = lake is None
        if lake is None:
            assert connect is not None
            lake = _connect(**{"read_only": True, **connect})
        self._lake: LakeClient | None = lake
        self._lake_pid = os.getpid()
        self._client_config: ClientConfig = lake.config
        self.transform = transform
        self.target_transform = target_transform
        self.loader: Callable[[str], Any] = loader if loader is not None else self.load_image
        if extensions is None and is_valid_file is None:
            extensions = IMG_EXTENSIONS
        self.extensions: tuple[str, ...] | None = (
            None if extensions is None else (extensions,) if isinstance(extensions, str) else tuple(extensions))
        try:
            self.classes, self.class_to_idx = self.find_classes(self.root)
            self.samples = self.make_dataset(self.root, self.class_to_idx, self.extensions, is_valid_file,
                                             allow_empty)
        except BaseException:
            if self._owns_lake:
                lake.close()
            raise
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]
        self._board: PlanBoard | None = None
        self._seen_generation = 0
        self._warned = False

    # ------------------------------------------------------------------ the lake

    @property
    def lake(self) -> LakeClient:
        """This process's client (a dataset unpickled in a worker connects on first use)."""
        lake = self._lake
        if lake is None:
            lake = self._lake = LakeClient(self._client_config)
            self._owns_lake = True
            self._lake_pid = os.getpid()
        return lake

    def close(self) -> None:
        """Close the lake if this dataset opened it (in this process), and its plan board. A
        later use connects again."""
        board, self._board = self._board, None
        if board is not None:
            board.close()
        lake, self._lake = self._lake, None
        if lake is not None and self._owns_lake and self._lake_pid == os.getpid():
            lake.close()

    def __enter__(self) -> LakeImageFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lake"] = None  # a worker started by spawn connects by itself (read-only)
        state["_client_config"] = replace(self._client_config, read_only=True)
        if state.get("loader") == self.load_image:
            state["loader"] = None  # a bound method of the old object: rebound below
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.loader is None:
            self.loader = self.load_image

    # ------------------------------------------------------------------ ImageFolder's rules

    def _is_dir(self, entry: Any) -> bool:
        """os.DirEntry.is_dir(): a symlink counts when it leads to a directory."""
        if entry.is_dir():
            return True
        if not entry.is_symlink():
            return False
        try:
            return st.S_ISDIR(self.lake.stat(entry.path).st_mode)
        except OSError:
            return False

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """The class directories of ``directory``, sorted, and their indices."""
        classes = sorted(e.name for e in self.lake.scandir(directory) if self._is_dir(e))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory or '/'}.")
        return classes, {name: i for i, name in enumerate(classes)}

    def _walk(self, top: str) -> Iterator[tuple[str, list[str]]]:
        """(directory, file names) of ``top`` and everything below it, symlinks to directories
        followed, as os.walk(followlinks=True) lists them; unreadable directories are skipped."""
        try:
            entries = list(self.lake.scandir(top))
        except OSError:
            return
        dirs = [e.name for e in entries if self._is_dir(e)]
        below = set(dirs)
        yield top, [e.name for e in entries if e.name not in below]
        for name in dirs:
            yield from self._walk(_join(top, name))

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        """(path, class index) of every sample, in torchvision's order."""
        if not class_to_idx:
            raise ValueError("'class_to_index' must have at least one entry to collect any samples.")
        if (extensions is None) == (is_valid_file is None):
            raise ValueError("Both extensions and is_valid_file cannot be None or not None at the same time")
        ends = extensions

        def valid(path: str) -> bool:
            if is_valid_file is not None:
                return is_valid_file(path)
            assert ends is not None
            return path.lower().endswith(ends)

        samples: list[tuple[str, int]] = []
        found: set[str] = set()
        for name in sorted(class_to_idx):
            target_dir = _join(directory, name)
            if not self.lake.isdir(target_dir):
                continue
            for where, files in sorted(self._walk(target_dir)):
                for fname in sorted(files):
                    path = _join(where, fname)
                    if valid(path):
                        samples.append((path, class_to_idx[name]))
                        found.add(name)
        empty = set(class_to_idx) - found
        if empty and not allow_empty:
            msg = f"Found no valid file for the classes {', '.join(sorted(empty))}. "
            if extensions is not None:
                msg += f"Supported extensions are: {', '.join(extensions)}"
            raise FileNotFoundError(msg)
        return samples

    # ------------------------------------------------------------------ samples

    def load_image(self, path: str) -> Any:
        """The default loader: the file's bytes through this process's client, decoded to RGB."""
        return pil_from_bytes(self.lake.read_bytes(path))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        self._follow_plan()
        path, target = self.samples[index]
        return self._transformed(self.loader(path), target)

    def _transformed(self, sample: Any, target: Any) -> tuple[Any, Any]:
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        """A batch (DataLoader's fetcher calls this when it exists): with the default loader the
        batch's files are read concurrently in one call to the lake, then decoded one by one. A
        custom loader or a subclass's own ``__getitem__`` gets one call per sample instead."""
        if self.loader != self.load_image or type(self).__getitem__ is not LakeImageFolder.__getitem__:
            return [self[i] for i in indices]
        self._follow_plan()
        blobs = self.lake.read_many([self.samples[i][0] for i in indices])
        return [self._transformed(pil_from_bytes(blob), self.samples[i][1])
                for i, blob in zip(indices, blobs, strict=True)]

    def __repr__(self) -> str:
        cc = self._client_config
        return (f"LakeImageFolder(root={self.root!r}, lake={cc.data or ','.join(cc.meta)}, "
                f"classes={len(self.classes)}, samples={len(self.samples)})")

    # ------------------------------------------------------------------ read plans

    def plan(self, indices: Iterable[int]) -> None:
        """These samples are read next, in this order, by this process: hand their files to the
        client's read plan (replacing the previous one). Never raises: a warning at most."""
        try:
            self.lake.prefetch([self.samples[int(i)][0] for i in indices], reset=True)
        except Exception as exc:  # prefetch is advice; the reads fetch for themselves
            if not self._warned:
                self._warned = True
                warnings.warn(PrefetchUnavailable(f"prefetch unavailable: {type(exc).__name__}: {exc}"),
                              stacklevel=2)

    def _follow_plan(self) -> None:
        """A new epoch's plan was published since this process read its last one: take it."""
        board = self._board
        if board is not None and board.generation != self._seen_generation:
            self._take_plan(board)

    def _take_plan(self, board: PlanBoard) -> None:
        """A worker's first sample of a new epoch: read its share of the plan off the board."""
        info = get_worker_info()
        generation = board.generation
        self._seen_generation = generation
        if info is None:
            return  # the main process plans directly (num_workers=0)
        try:
            indices = board.read(generation, info.id)
        except Exception as exc:
            indices = None
            if not self._warned:
                self._warned = True
                warnings.warn(PrefetchUnavailable(f"no read plan for worker {info.id}: {exc}"), stacklevel=2)
        if indices:
            self.plan(indices)

    def plan_stats(self) -> dict[str, int]:
        """This process's read-plan counters (``PlanStats`` summed over its plans): how many paths
        were planned, resolved, prefetched, opened in plan order."""
        from dataclasses import asdict

        return asdict(self.lake.session.vfs.control.plan_totals())


class PlanBoard:
    """Where the main process leaves each worker's share of an epoch's order: a directory of
    files, one per worker, and a generation counter in shared memory. Made before the workers
    are forked (or pickled with the dataset to spawned ones); the directory goes with the board
    in the process that made it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lakefs-plans.")
        self._generation: Any = RawValue("q", 0)
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, Any] | None = weakref.finalize(
            self, _remove_dir, self.dir, os.getpid())

    @property
    def generation(self) -> int:
        counter = self._generation
        return 0 if counter is None else int(counter.value)

    def _path(self, worker: int) -> str:
        return os.path.join(self.dir, f"worker-{worker}")

    def publish(self, shares: list[list[int]]) -> int:
        """Worker ``w`` reads ``shares[w]`` (sample indices in its read order) from now on."""
        with self._lock:
            generation = self.generation + 1
            for worker, share in enumerate(shares):
                tmp = self._path(worker) + ".new"
                with open(tmp, "wb") as f:
                    array("q", [generation, *share]).tofile(f)
                os.replace(tmp, self._path(worker))
            self._generation.value = generation  # last: a worker sees the number after the files
            return generation

    def read(self, generation: int, worker: int) -> list[int] | None:
        """Worker ``worker``'s share of plan ``generation`` (None: a newer plan replaced it)."""
        with open(self._path(worker), "rb") as f:
            data = array("q")
            data.frombytes(f.read())
        if not data or data[0] != generation:
            return None
        return data[1:].tolist()

    def close(self) -> None:
        """Remove the files (in the process that made the board; elsewhere a no-op)."""
        if self._finalizer is not None:
            self._finalizer()

    def __getstate__(self) -> dict[str, Any]:
        # Shared memory travels only to a process being started (a spawned worker); a board
        # pickled at any other time (torch.save of the dataset) arrives inert.
        spawning = get_spawning_popen() is not None
        return {"dir": self.dir, "_generation": self._generation if spawning else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._finalizer = None  # the maker's process removes the directory


def _remove_dir(path: str, pid: int) -> None:
    if os.getpid() == pid:  # a forked worker's copy of the board must not remove the maker's files
        shutil.rmtree(path, ignore_errors=True)


class PlanSampler(Sampler[Any]):
    """Yields what ``sampler`` yields, after planning the epoch for the process that reads each sample.

    ``sampler`` yields indices (``batch_size`` of them per batch, the last batch dropped if short
    and ``drop_last``) or, with ``batch_size=None``, whole batches (a batch sampler). With
    ``num_workers`` > 0, batch ``j`` is read by worker ``j % num_workers``; each worker's share is
    published on the dataset's board. With 0, the whole order is planned here.
    """

    def __init__(self, sampler: Iterable[Any], dataset: LakeImageFolder, *, batch_size: int | None,
                 drop_last: bool = False, num_workers: int = 0):
        self.sampler = sampler
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = num_workers

    def _batches(self, order: list[Any]) -> list[list[int]]:
        if self.batch_size is None:
            return [[int(i) for i in b] if isinstance(b, list | tuple) else [int(b)] for b in order]
        size = self.batch_size
        batches = [[int(i) for i in order[k:k + size]] for k in range(0, len(order), size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[Any]:
        order = list(self.sampler)
        try:
            batches = self._batches(order)
            if self.num_workers <= 0:
                self.dataset.plan(i for b in batches for i in b)
            else:
                board = self.dataset._board
                if board is None:
                    raise RuntimeError("the dataset has no plan board (build the DataLoader with loader())")
                w = self.num_workers
                board.publish([[i for b in batches[k::w] for i in b] for k in range(w)])
        except Exception as exc:  # prefetch never fails an epoch
            warnings.warn(PrefetchUnavailable(f"prefetch unavailable: {type(exc).__name__}: {exc}"), stacklevel=2)
        yield from order

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def loader(dataset: LakeImageFolder, batch_size: int | None = 1, shuffle: bool = True, num_workers: int = 0, *,
           sampler: Sampler[Any] | Iterable[Any] | None = None, batch_sampler: Iterable[Any] | None = None,
           drop_last: bool = False, generator: Any = None, persistent_workers: bool | None = None,
           **kwargs: Any) -> DataLoader[Any]:
    """A DataLoader over ``dataset`` whose every epoch's order is prefetched by the process that
    reads it (see the module docstring). Arguments are DataLoader's; ``shuffle`` defaults to True,
    and ``persistent_workers`` to True when there are workers (each worker keeps its client and
    its memory cache from one epoch to the next)."""
    if not isinstance(dataset, LakeImageFolder):
        raise TypeError(f"loader() plans reads of a LakeImageFolder, not of {type(dataset).__name__}")
    if batch_sampler is not None:
        if sampler is not None or shuffle not in (False, None) or drop_last or batch_size not in (1, None):
            raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, "
                             "and drop_last")
        planner = PlanSampler(batch_sampler, dataset, batch_size=None, num_workers=num_workers)
        mode: dict[str, Any] = {"batch_sampler": planner}
    else:
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if sampler is None:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        planner = PlanSampler(sampler, dataset, batch_size=batch_size if batch_size is not None else None,
                              drop_last=drop_last, num_workers=num_workers)
        mode = {"sampler": planner, "batch_size": batch_size, "drop_last": drop_last}
    if num_workers > 0 and dataset._board is None:
        dataset._board = PlanBoard()  # before the DataLoader forks its workers
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(dataset, num_workers=num_workers, persistent_workers=persistent_workers,
                      generator=generator, **mode, **kwargs)

