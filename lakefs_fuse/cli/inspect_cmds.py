"""Looking at files: ``stat`` (also ``info``) and ``ls`` -- computed by :mod:`lakefs_fuse.admin.inspect`,
printed here.

The layers are imported inside each command, so that ``lakefs-fuse --help`` and every command
start without loading what the others need (RocksDB, erasure coding, pyfuse3).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from .options import echo_json, json_option, run_on

_data_option = click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                            help="Read the lake in DIR directly; PATH is then a path inside the lake.")


def _local_time(ns: int) -> str:
    """Nanoseconds since the epoch as local time to the nanosecond: 2026-12-06 15:45:01.123456789 +0100."""
    seconds, frac = divmod(ns, 1_000_000_000)
    t = time.localtime(seconds)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', t)}.{frac:09d} {time.strftime('%z', t)}"


@click.command("stat")
@click.argument("path", type=click.Path(path_type=Path))
@_data_option
@json_option("Machine-readable output.")
def stat_cmd(path: Path, data_dir: Path | None, as_json: bool) -> None:
    """Inode, size, times and every extent's chunk, EC profile and shard health."""
    from ..admin import inspect
    opening, ino = inspect.open_path(path, data_dir)
    info = run_on(opening, lambda lake: inspect.file_info(lake, ino, shards=True))
    if as_json:
        echo_json(info)  # times stay integers of nanoseconds (atime_ns...)
        return
    for key in ("inode", "type", "mode", "size", "nlink", "uid", "gid", "atime", "mtime", "ctime", "ec_profile",
                "chunks", "health"):
        if f"{key}_ns" in info:
            click.echo(f"{key:>10}: {_local_time(info[f'{key}_ns'])}")
        elif key in info:
            click.echo(f"{key:>10}: {info[key]}")
    for e in info.get("extents", []):
        click.echo(f"  extent @{e['file_offset']} +{e['length']} -> chunk {e['chunk']} @{e['chunk_offset']} "
                   f"EC {e.get('ec')}")
        for s in e.get("shards", []):
            click.echo(f"      shard {s['index']}: peer {s['peer']} {s['address']} {s['health']}")


@click.command("ls")
@click.argument("path", type=click.Path(path_type=Path))
@_data_option
@click.option("-l", "long", is_flag=True, help="Long listing with shard health.")
@json_option("Machine-readable output.")
def ls_cmd(path: Path, data_dir: Path | None, long: bool, as_json: bool) -> None:
    """List a directory: size, chunk count, EC profile and health of each file."""
    from ..admin import inspect
    opening, ino = inspect.open_path(path, data_dir)
    rows = run_on(opening, lambda lake: inspect.list_dir(lake, ino, shards=long, path=path))
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        line = f"{r['type']:<8} {r['mode']} {r['size']:>12} chunks={r.get('chunks', 0):<4} ec={r['ec'] or '-':<5}"
        if long:
            line += f" health={r.get('health', '-')}"
        click.echo(f"{line} {r['name']}")


#: ``info`` is what JuiceFS users type for ``stat``.
COMMANDS = [stat_cmd, ls_cmd]
ALIASES = {"info": stat_cmd}
