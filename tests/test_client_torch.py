"""``lakefs_fuse.torch`` over the in-process client: LakeImageFolder and the planning loader.

One tree of small JPEGs (3 classes, a nested subdirectory, a non-image file, an upper-case
extension) is written to local disk and, through a writable client, into an embedded lake. Then:
the dataset's classes, samples and targets equal torchvision's ImageFolder on the local copy; a
DataLoader with 2 forked workers yields the same tensors and labels from both; a spawned worker
connects from the pickled settings; the planning loader deals every sample once per epoch and the
workers' read plans (the client's ``.prefetch`` counters) hold exactly their share. No mount.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import cli

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402  (torchvision brings PIL)
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, get_worker_info  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from lakefs_fuse.client import connect  # noqa: E402
from lakefs_fuse.torch import LakeImageFolder, loader  # noqa: E402

pytestmark = pytest.mark.timeout(240)

#: Relative paths of the tree; every .jpg/.JPG is an image, the rest must be skipped.
CLASSES = {"cat": 20, "dog": 22, "zebra": 18}


def _tree(rng: random.Random) -> list[str]:
    rels = []
    for name, n in CLASSES.items():
        for i in range(n):
            if name == "dog" and i % 3 == 0:
                sub = "a b" if i % 2 else "a"  # "a b/" sorts before "a/..." in a sorted walk
                rels.append(f"{name}/{sub}/deeper/img{i:03d}.jpg" if i == 9 else f"{name}/{sub}/img{i:03d}.jpg")
            else:
                rels.append(f"{name}/{'IMG' if i == 1 else 'img'}{i:03d}.{'JPG' if i == 1 else 'jpg'}")
    rng.shuffle(rels)  # written out of order: the listing order must not matter
    return rels


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """(local root, lake data dir): the same files in both."""
    base = tmp_path_factory.mktemp("torch-tree")
    local, data = base / "local", base / "lake"
    rng = random.Random(13)
    files: dict[str, bytes] = {}
    for rel in _tree(rng):
        img = Image.frombytes("RGB", (24, 16), rng.randbytes(24 * 16 * 3))
        path = local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, quality=90)
        files[rel] = path.read_bytes()
    for rel, text in (("cat/notes.txt", b"not an image\n"), ("readme.md", b"no class\n"), ("zebra/x.jpeg.bak", b"-")):
        (local / rel).write_bytes(text)
        files[rel] = text
    # relative symlinks: a directory (walked again, as os.walk(followlinks=True) does) and a file
    links = {"dog/link": "a", "cat/alias.jpg": "img000.jpg"}
    for rel, target in links.items():
        (local / rel).symlink_to(target)
    cli("format", "--data", str(data), check=True)
    with connect(data=data) as lake:
        assert not lake.read_only
        for rel, payload in files.items():
            lake.makedirs("train/" + os.path.dirname(rel), exist_ok=True)
            lake.write_bytes("train/" + rel, payload)
        for rel, target in links.items():
            lake.symlink(target, "train/" + rel)
    return local, data


def _finish(dl: DataLoader) -> None:
    """Stop a loader's persistent workers now (not whenever the iterator is collected)."""
    it = getattr(dl, "_iterator", None)
    if it is not None:
        it._shutdown_workers()
    gc.collect()


@pytest.fixture(autouse=True)
def no_children_left():
    yield
    gc.collect()
    left = multiprocessing.active_children()
    for p in left:
        p.kill()
        p.join(10)
    assert not left, f"worker processes left behind: {left}"


def test_classes_samples_and_targets_match_torchvision(tree):
    local, data = tree
    theirs = datasets.ImageFolder(str(local))
    with LakeImageFolder("/train/", connect={"data": data}) as ours:
        assert ours.classes == theirs.classes == sorted(CLASSES)
        assert ours.class_to_idx == theirs.class_to_idx
        assert [(os.path.relpath(p, "train"), t) for p, t in ours.samples] == \
               [(os.path.relpath(p, local), t) for p, t in theirs.samples]
        assert ours.targets == theirs.targets and ours.imgs is ours.samples
        # every image once, the ones under dog/a again through dog/link, and cat/alias.jpg
        assert len(ours) == sum(CLASSES.values()) + 4 + 1
        assert "train/dog/link/img000.jpg" in dict(ours.samples) and "train/cat/alias.jpg" in dict(ours.samples)
        assert all(not p.endswith((".txt", ".bak")) for p, _ in ours.samples)
        # is_valid_file sees lake paths; extensions and is_valid_file exclude each other, as in torchvision.
        seen: list[str] = []
        txt = LakeImageFolder("train", ours.lake, is_valid_file=lambda p: seen.append(p) or p.endswith(".txt"),
                              allow_empty=True)
        assert [p for p, _ in txt.samples] == ["train/cat/notes.txt"] and "train/dog/a b/img003.jpg" in seen
        with pytest.raises(ValueError):
            LakeImageFolder("train", ours.lake, is_valid_file=bool, extensions=(".jpg",))
        with pytest.raises(FileNotFoundError):
            LakeImageFolder("train/cat", ours.lake)  # no class directories there
        img = ours[0][0]
        assert img.mode == "RGB" and img.size == (24, 16)


def test_two_forked_workers_yield_the_tensors_of_local_disk(tree):
    local, data = tree
    to_tensor = transforms.ToTensor()
    theirs = datasets.ImageFolder(str(local), transform=to_tensor)
    with LakeImageFolder("train", connect={"data": data}, transform=to_tensor) as ours:
        ours[0]  # the parent's client is live when the workers fork
        for sampler_of in (SequentialSampler, lambda ds: RandomSampler(ds, generator=torch.Generator().manual_seed(5))):
            batches = []
            for ds in (ours, theirs):
                dl = DataLoader(ds, batch_size=8, num_workers=2, sampler=sampler_of(ds),
                                multiprocessing_context="fork")
                batches.append(list(dl))
            assert len(batches[0]) == len(batches[1]) == -(-len(theirs) // 8)
            for (xa, ya), (xb, yb) in zip(*batches, strict=True):
                assert torch.equal(ya, yb)
                assert xa.dtype == xb.dtype and torch.equal(xa, xb)


class PlanProbe(LakeImageFolder):
    """Each sample also says who read it and what that process's read plans counted by then."""

    def __getitem__(self, index):
        sample, target = super().__getitem__(index)
        info = get_worker_info()
        stats = self.plan_stats()
        return (sample, target, index, -1 if info is None else info.id,
                stats["received"], stats["resets"], stats["opened_in_plan"])


def test_the_loader_plans_each_workers_share_of_every_epoch(tree):
    _local, data = tree
    with PlanProbe("train", connect={"data": data}, transform=transforms.ToTensor()) as ds:
        n = len(ds)
        dl = loader(ds, batch_size=8, num_workers=2, generator=torch.Generator().manual_seed(3),
                    multiprocessing_context="fork")
        assert dl.persistent_workers
        try:
            orders, planned = [], Counter()
            for epoch in (1, 2):
                got = [tuple(int(v) for v in row) for batch in dl for row in zip(*[t.tolist() for t in batch[1:]],
                                                                                   strict=True)]
                targets, idx, worker, received, resets, in_plan = zip(*got, strict=True)
                assert Counter(idx) == Counter(range(n)), f"epoch {epoch}: not every sample exactly once"
                assert list(targets) == [ds.targets[i] for i in idx]
                orders.append(idx)
                # batch j came from worker j % 2, and each worker's plan held its own share only
                planned.update(worker)
                assert [worker[k] for k in range(0, n, 8)] == [j % 2 for j in range(-(-n // 8))]
                for w in (0, 1):
                    first = min(k for k in range(n) if worker[k] == w)
                    last = max(k for k in range(n) if worker[k] == w)
                    # persistent workers: one plan per epoch, taken before the epoch's first read,
                    # counted since the worker started
                    assert resets[first] == resets[last] == epoch
                    assert received[first] == received[last] == planned[w]
                    assert in_plan[last] >= 1
            assert orders[0] != orders[1]  # reshuffled
        finally:
            _finish(dl)


def test_in_process_loader_plans_the_whole_epoch(tree):
    _local, data = tree
    with LakeImageFolder("train", connect={"data": data}, transform=transforms.ToTensor()) as ds:
        dl = loader(ds, batch_size=16, num_workers=0, shuffle=True)
        seen = [int(t) for _x, y in dl for t in y]
        assert sorted(seen) == sorted(ds.targets)
        stats = ds.plan_stats()
        # a read plan follows no symlink (the mount's ReadPlan): the 5 samples reached through one
        # are read without prefetch
        via_link = [p for p, _ in ds.samples if "/link/" in p or p.endswith("alias.jpg")]
        assert len(via_link) == 5
        assert (stats["received"], stats["resets"], stats["unresolved"]) == (len(ds), 1, len(via_link))
        assert stats["opened_in_plan"] >= 1
        list(dl)
        assert ds.plan_stats()["received"] == 2 * len(ds)


def test_a_spawned_worker_connects_from_the_pickled_settings(tree):
    local, data = tree
    with LakeImageFolder("train", connect={"data": data}, transform=transforms.ToTensor()) as ds:
        copy = pickle.loads(pickle.dumps(ds))  # no live client inside; its board (none yet) and lake come back
        assert copy._lake is None and copy._client_config.read_only is True
        assert torch.equal(copy[3][0], ds[3][0])
        copy.close()
        dl = loader(ds, batch_size=10, num_workers=1, shuffle=False, multiprocessing_context="spawn")
        try:
            theirs = datasets.ImageFolder(str(local), transform=transforms.ToTensor())
            for (xa, ya), (xb, yb) in zip(dl, DataLoader(theirs, batch_size=10), strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
            assert pickle.loads(pickle.dumps(ds))._board.generation == 0  # pickled outside a spawn: inert
        finally:
            _finish(dl)


def test_a_broken_plan_warns_and_never_fails_the_epoch(tree, monkeypatch):
    from lakefs_fuse.torch import PrefetchUnavailable

    _local, data = tree
    with LakeImageFolder("train", connect={"data": data}) as ds:
        def refuse(*_a, **_k):
            raise OSError(5, "the plan went nowhere")

        monkeypatch.setattr(ds.lake, "prefetch", refuse)
        dl = loader(ds, batch_size=None, num_workers=0, collate_fn=lambda x: x)
        with pytest.warns(PrefetchUnavailable, match="plan went nowhere"):
            assert len(list(dl)) == len(ds)


def test_importing_lakefs_fuse_torch_loads_neither_torch_nor_the_client():
    import subprocess
    import sys

    code = ("import sys, lakefs_fuse.torch as t; print('torch' in sys.modules, 'lakefs_fuse.client' in sys.modules); "
            "t.LakeImageFolder; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr
