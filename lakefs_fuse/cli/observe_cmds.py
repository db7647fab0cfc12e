"""Watching and exercising a mount: ``stats`` and ``top`` (live views, :mod:`.statsview`),
``warmup`` (:mod:`lakefs_fuse.admin.warmup`) and ``bench`` (:mod:`.benchcmd`).

The layers are imported inside each command, so that ``lakefs-fuse --help`` and every command
start without loading what the others need (RocksDB, erasure coding, pyfuse3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import parse_size
from ..errors import UserError
from .options import echo_json, json_option, view_options


@click.command("stats")
@view_options
def stats(mountpoint: Path, interval: float, once: bool, as_json: bool) -> None:
    """Live view of a mount: throughput, FUSE requests by op with mean latency, cache hit ratio
    by tier, peer latency and errors. Reads MOUNTPOINT/.stats (Ctrl-C to leave)."""
    from .statsview import run_view
    run_view(mountpoint, interval=interval, once=once, as_json=as_json, kind="stats")


@click.command("top")
@view_options
def top(mountpoint: Path, interval: float, once: bool, as_json: bool) -> None:
    """Per-process data stall: for each process using the mount, the share of its time spent
    waiting on the filesystem, its request rate and read rate (a DataLoader worker at 90 % is
    starved by storage; at 5 % it is busy decoding). Reads MOUNTPOINT/.stats (Ctrl-C to leave)."""
    from .statsview import run_view
    run_view(mountpoint, interval=interval, once=once, as_json=as_json, kind="top")


@click.command("warmup")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Files read at once.")
@json_option()
def warmup(paths: tuple[Path, ...], jobs: int, as_json: bool) -> None:
    """Read PATHS (files or directory trees inside a mount) once, so the mount's caches -- memory and,
    with --cache-dir, the local disk cache -- hold them before training starts. The kernel's page
    cache is left as it was."""
    from ..admin import warmup as warm
    files = warm.files_under(list(paths))
    total = sum(s for _, s in files)
    with click.progressbar(length=total, label=f"warmup {len(files)} files", file=sys.stderr) as bar:
        failed = warm.read_all(files, jobs=jobs, on_file=bar.update)
    if as_json:
        echo_json({"files": len(files) - len(failed), "bytes": total, "failed": failed})
    else:
        click.echo(f"warmed {len(files) - len(failed)} files ({total / 1e6:.1f} MB)")
        for line in failed[:20]:
            click.echo(f"  {line}", err=True)
    if failed:
        sys.exit(3)


@click.command("bench")
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--big-size", default="1G", show_default=True, help="Total size of the big file(s).")
@click.option("--small-count", type=click.IntRange(1), default=1000, show_default=True, help="Small files.")
@click.option("--small-size", default="128K", show_default=True, help="Size of each small file.")
@click.option("--threads", "-p", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Workers, each with its own big file and share of the small files.")
@json_option()
def bench(directory: Path, big_size: str, small_count: int, small_size: str, threads: int, as_json: bool) -> None:
    """Benchmark the filesystem DIRECTORY is on (a mount): big file write/read, small files
    write/read/stat, delete; throughput and latency per operation. Leaves nothing behind."""
    from .benchcmd import run as run_bench
    big, small = parse_size(big_size), parse_size(small_size)
    with click.progressbar(length=6, label="bench", file=sys.stderr, show_pos=True,
                           item_show_func=lambda name: name) as bar:
        try:
            phases = run_bench(directory, big_size=big, small_count=small_count, small_size=small, threads=threads,
                               progress=lambda name: bar.update(1, name))
        except OSError as exc:
            raise UserError(f"bench in {directory}: {exc.strerror or exc}") from None
    rows = [p.to_json() for p in phases]
    if as_json:
        echo_json({"directory": str(directory), "threads": threads, "phases": rows})
        return
    click.echo(f"{'phase':<20} {'MB/s':>9} {'ops/s':>10} {'ms/op':>9} {'seconds':>8}")
    for r in rows:
        mbps = f"{r['MB_per_s']:.1f}" if r.get("MB_per_s") is not None else "-"
        click.echo(f"{r['phase']:<20} {mbps:>9} {r['ops_per_s'] or 0:>10.1f} {r['ms_per_op'] or 0:>9.3f} "
                   f"{r['seconds']:>8.2f}")


COMMANDS = [stats, top, warmup, bench]
