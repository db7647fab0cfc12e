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
    .venv/bin/python scripts/bench/torch_loader.py --images 1000  # quick

Root is needed (drop_caches, FUSE). Everything it mounts or starts is torn down in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "lakefs_fuse.cli"]


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


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


def run_cli(*args: str, env: dict) -> None:
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"lakefs-fuse {' '.join(args)} failed: {res.stderr.strip()}")


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
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (drop_caches, FUSE)")
    work = Path(tempfile.mkdtemp(prefix="lakefs-torch-bench.", dir="/var/tmp"))
    env = {**os.environ, "LAKEFS_FUSE_RUNTIME": str(work / "run")}
    local, lake, mnt = work / "local", work / "lake", work / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        size = make_images(local, args.images, args.classes, args.seed)
        print(f"{args.images} JPEGs, {size / 1e6:.1f} MB, in {args.classes} classes; workers={args.workers} "
              f"batch={args.batch}", flush=True)
        run_cli("format", "--data", str(lake), "--ec", "6+3", *sum((["--peer", str(work / f"p{i}")]
                                                                   for i in range(9)), []), env=env)
        run_cli("import", str(local), "/train", "--data", str(lake), env=env)
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
                    if mounted:
                        run_cli("umount", str(mnt), env=env)
                        mounted = False
                    drop_caches()
                    run_cli("mount", str(mnt), "--data", str(lake), "--dataset", env=env)
                    mounted = True
                    root = mnt / "train"
                else:
                    drop_caches()
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
    finally:
        if mounted or subprocess.run(["mountpoint", "-q", str(mnt)]).returncode == 0:
            subprocess.run([*CLI, "umount", str(mnt)], env=env, cwd=REPO, capture_output=True, timeout=120)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
