#!/usr/bin/env python3
"""P6: torchvision ImageFolder + DataLoader over a lakefs-fuse mount against the same tree on local disk.

Generates N JPEG images (PIL, seeded, 3 sizes) in C class directories on local disk, imports them
into an embedded lake (``lakefs-fuse import``), and then, cold each time (page cache dropped; the
lake remounted so its daemon's caches are empty too), runs one epoch of

* the raw loop a loader does (open + read whole file, in a RandomSampler order), and
* ``ImageFolder`` + ``DataLoader(num_workers=W, batch_size=B)`` with Resize + ToTensor (JPEG decode),
  plain and with ``lakefs_fuse.torch.PrefetchSampler``,

on local disk and on the mount (``--dataset``), each followed by a second epoch on the same mount
(warm: the kernel's page cache kept), and prints images/s and the ratios lakefs/local.

    .venv/bin/python scripts/bench/torch_loader.py                # 4,000 images, 2 workers
    .venv/bin/python scripts/bench/torch_loader.py --images 1000  # quicker
    .venv/bin/python scripts/bench/torch_loader.py --quick        # 400 images: checks the script end to end

Root is needed (drop_caches, FUSE). Everything it mounts or starts is torn down in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import BenchError, drop_all_caches, find_cli
from lakes import Lake


def make_images(root: Path, n: int, classes: int, seed: int) -> int:
    from PIL import Image
    rng = random.Random(seed)
    total = 0
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = rng.choice([(160, 120), (320, 240), (500, 375)])
        img = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
        path = root / f"class{i % classes:02d}" / f"img{i:06d}.jpg"
        img.save(path, quality=85)
        total += path.stat().st_size
    return total


def raw_loop(root: Path, seed: int) -> float:
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    random.Random(seed).shuffle(paths)
    t = time.monotonic()
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    return len(paths) / (time.monotonic() - t)


def loader_epoch(root: Path, workers: int, batch: int, seed: int, prefetch: bool) -> float:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from torchvision import datasets, transforms

    from lakefs_fuse.torch import PrefetchSampler
    ds = datasets.ImageFolder(str(root), transform=transforms.Compose([transforms.Resize((64, 64)),
                                                                      transforms.ToTensor()]))
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    if prefetch:
        sampler = PrefetchSampler(sampler, ds)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, sampler=sampler)
    t = time.monotonic()
    n = 0
    for images, _labels in loader:
        n += len(images)
    if n != len(ds):
        raise SystemExit(f"loader yielded {n} of {len(ds)} images")
    return n / (time.monotonic() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=None, help="JPEGs to generate (default 4,000; --quick 400)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="400 images, to check the script end to end")
    args = ap.parse_args()
    if args.images is None:
        args.images = 400 if args.quick else 4000
    if os.geteuid() != 0:
        raise SystemExit("run as root (drop_caches, FUSE)")
    work = Path(tempfile.mkdtemp(prefix="lakefs-torch-bench.", dir="/var/tmp"))
    local = work / "local"
    peers = [x for i in range(9) for x in ("--peer", str(work / f"p{i}"))]
    lake = Lake(work / "lake", find_cli(), ["--ec", "6+3", *peers], ["--dataset"])
    try:
        size = make_images(local, args.images, args.classes, args.seed)
        print(f"{args.images} JPEGs, {size / 1e6:.1f} MB, in {args.classes} classes; workers={args.workers} "
              f"batch={args.batch}", flush=True)
        lake.format()
        lake.cli("import", str(local), "/train", "--data", str(lake.data), timeout=600)
        results: dict[str, dict[str, float]] = {}
        measures = (("raw read loop", lambda r: raw_loop(r, args.seed)),
                    ("ImageFolder+DataLoader", lambda r: loader_epoch(r, args.workers, args.batch, args.seed, False)),
                    ("... with PrefetchSampler", lambda r: loader_epoch(r, args.workers, args.batch, args.seed, True)))
        for system in ("local", "lakefs"):
            row = results[system] = {}
            for name, fn in measures:
                if system == "local" and name.startswith("..."):
                    continue
                if system == "lakefs":
                    if lake.current is not None:
                        lake.umount()
                    drop_all_caches()
                    lake.mount()
                    root = lake.mnt / "train"
                else:
                    drop_all_caches()
                    root = local
                # Epoch 1 cold; epoch 2 right after it, on the same mount (the page cache kept).
                for epoch in (1, 2):
                    row[f"{name}|{epoch}"] = fn(root)
                    print(f"  {system:<7} {name:<26} epoch {epoch} {row[f'{name}|{epoch}']:8.0f} images/s",
                          flush=True)
        print("\n| measure | epoch | local images/s | lakefs images/s | lakefs/local |\n|---|---:|---:|---:|---:|")
        for name, local_name in (("raw read loop", "raw read loop"),
                                 ("ImageFolder+DataLoader", "ImageFolder+DataLoader"),
                                 ("... with PrefetchSampler", "ImageFolder+DataLoader")):
            for epoch in (1, 2):
                a, b = results["local"][f"{local_name}|{epoch}"], results["lakefs"][f"{name}|{epoch}"]
                print(f"| {name} | {epoch} | {a:,.0f} | {b:,.0f} | {b / a:.2f} |")
        return 0
    except BenchError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        if lake.current is not None:
            try:
                lake.umount()
            except BenchError as exc:
                print(f"umount: {exc}", file=sys.stderr)
        lake.teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
