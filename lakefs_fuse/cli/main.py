"""Command line: converts arguments into config and calls the layers. Nothing else.

Every user mistake is one line on stderr and exit status 1 (:class:`UserError`); a bug is a
traceback and status 2.
"""

from __future__ import annotations

import json
import logging
import os
import stat as st
import sys
import time
from functools import partial
from pathlib import Path

import click
import trio

from ..config import (
    DEFAULT_PEER_WEIGHT,
    UMOUNT_BUSY_WAIT,
    LakeConfig,
    MountConfig,
    default_data_dir,
    parse_ec,
    parse_size,
)
from ..errors import LakeError, UserError


class LakeGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"lakefs-fuse: {exc}", err=True)
            sys.exit(exc.exit_code)
        except LakeError as exc:
            click.echo(f"lakefs-fuse: {str(exc) or os.strerror(exc.errno)}", err=True)  # never an empty line
            sys.exit(1)


def _log_setup() -> None:
    logging.basicConfig(level=os.environ.get("LAKEFS_FUSE_LOG", "INFO"),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


@click.group(cls=LakeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lakefs-fuse")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Configuration file (TOML; default $LAKEFS_FUSE_CONFIG, else /etc/lakefs-fuse/config.toml "
                   "if present). See 'lakefs-fuse config example'.")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """lakefs-fuse: a POSIX filesystem for training data, on erasure-coded chunks.

    Every option can also come from the environment (LAKEFS_FUSE_<COMMAND>_<OPTION>, the option as
    typed: LAKEFS_FUSE_MOUNT_CACHE_SIZE=20G, LAKEFS_FUSE_STATUS_DATA=DIR, LAKEFS_FUSE_LS_JSON=1) or from
    the configuration file; the command line wins.
    """
    from . import config_file as cliconfig
    warning = cliconfig.unknown_variables(dict(os.environ), ENVIRONMENT)
    if warning:
        click.echo(f"lakefs-fuse: {warning}", err=True)
    path = cliconfig.config_path(config_file)
    if path is not None:
        ctx.default_map = cliconfig.load(path, main)


@main.command("install-mount-helper")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=Path("/sbin"),
              show_default=True, help="Where mount(8) looks for mount.fuse.lakefs.")
@click.option("--remove", is_flag=True, help="Remove the helper instead.")
def install_mount_helper(directory: Path, remove: bool) -> None:
    """Install /sbin/mount.fuse.lakefs, so 'mount -t fuse.lakefs SOURCE DIR -o ...' and /etc/fstab
    lines of type fuse.lakefs mount lakes (SOURCE: a lake's data directory, meta:HOST:PORT,... or
    'lakefs' for the default lake; options: the mount command's, e.g. dataset,cache_size=20G)."""
    path = directory / "mount.fuse.lakefs"
    marker = "# installed by lakefs-fuse"
    if remove:
        if path.exists() and marker not in path.read_text(errors="replace"):
            raise UserError(f"{path} was not installed by lakefs-fuse; leaving it")
        path.unlink(missing_ok=True)
        click.echo(f"removed {path}")
        return
    if path.exists() and marker not in path.read_text(errors="replace"):
        raise UserError(f"{path} exists and was not installed by lakefs-fuse; leaving it")
    text = f'#!/bin/sh\n{marker}\nexec {sys.executable} -m lakefs_fuse.cli.mounthelper "$@"\n'
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    click.echo(f"installed {path} (runs {sys.executable})")


@main.group("config")
def config_group() -> None:
    """The configuration file."""


@config_group.command("example")
def config_example() -> None:
    """Print a configuration file with every key of every command and its meaning (all commented out)."""
    from . import config_file as cliconfig
    click.echo(cliconfig.example(main), nl=False)


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def config_check(path: Path) -> None:
    """Check a configuration file: every table a command, every key one of its options."""
    from . import config_file as cliconfig
    loaded = cliconfig.load(path, main)
    n = sum(len(v) if not any(isinstance(x, dict) for x in v.values()) else sum(len(y) for y in v.values())
            for v in loaded.values())
    click.echo(f"{path}: ok ({n} settings)")


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Lake data directory (default: ~/.local/share/lakefs-fuse/lake or $LAKEFS_FUSE_DATA).")
@click.option("--ec", default="4+2", show_default=True, help="Erasure-coding profile K+M (data+parity shards).")
@click.option("--chunk-size", default="4M", show_default=True, help="Largest chunk (e.g. 4M).")
@click.option("--peer", "peers", multiple=True, type=click.Path(path_type=Path),
              help="A peer directory (repeat; at least K+M). Default: 6 directories inside the data dir.")
@click.option("--net-peer", "net_peers", multiple=True, metavar="HOST:PORT[@ZONE]",
              help="A peer server (repeat; at least K+M) instead of local directories.")
@click.option("--s3-peer", "s3_peers", multiple=True, metavar="s3://BUCKET[/PREFIX][?endpoint=URL...][@ZONE]",
              help="A bucket on an S3-compatible store as a peer (repeat; mixes with --net-peer: shards of one "
                   "chunk then span stores). Credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the shared "
                   "credentials file, or ?profile=NAME. Options: endpoint, region, profile, capacity.")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None,
              help="Cluster secret shared with the peer servers (default: a new random DATA/secret).")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
              help="Talk TLS to the peer servers, trusting this CA/certificate (PEM).")
@click.option("--meta", "meta", default=None, metavar="HOST:PORT,...",
              help="Format a lake on these metadata servers (needs --net-peer and --secret-file).")
def format(data_dir: Path | None, ec: str, chunk_size: str, peers: tuple[Path, ...], net_peers: tuple[str, ...],
           s3_peers: tuple[str, ...], secret_file: Path | None, tls_ca: Path | None, meta: str | None) -> None:
    """Create an empty lake (embedded in DATA, or on metadata servers with --meta)."""
    from ..lake.lake import format_lake, format_remote
    for s3 in s3_peers:
        if not s3.startswith("s3://"):
            raise UserError(f"--s3-peer {s3!r}: expected s3://BUCKET[/PREFIX]")
    net_peers = net_peers + s3_peers
    k, m = parse_ec(ec)
    config = LakeConfig(ec_k=k, ec_m=m, chunk_size=parse_size(chunk_size))
    if meta is not None:
        if data_dir is not None or peers:
            raise UserError("--meta formats a cluster lake: --data and --peer do not apply")
        addresses = _meta_list(meta)
        format_remote(addresses, config, list(net_peers), secret_file)
        click.echo(f"formatted lake on {','.join(addresses)}: EC {k}+{m}, chunk {config.chunk_size >> 10} KiB, "
                   f"{len(net_peers)} peers")
        return
    data_dir = data_dir or default_data_dir()
    format_lake(data_dir, config, [str(p) for p in peers] or None, list(net_peers) or None, secret_file, tls_ca)
    n = len(peers) or len(net_peers) or max(6, k + m)
    click.echo(f"formatted lake in {data_dir}: EC {k}+{m}, chunk {config.chunk_size >> 10} KiB, {n} peers")


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Lake data directory; a missing default lake is formatted on first use.")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (log to stderr).")
@click.option("--allow-other", is_flag=True, help="Let other users access the mount.")
@click.option("--read-only", is_flag=True, help="Mount read-only (every change fails with EROFS).")
@click.option("--dataset", is_flag=True,
              help="Dataset mode for training: read-only, attributes/entries/negative lookups cached for "
                   "--attr-timeout (default 3600 s here), directory listings cached; with --meta the "
                   "metadata is read from a snapshot taken at mount time (remount to see changes).")
@click.option("--attr-timeout", type=float, default=None,
              help="Seconds the kernel caches attributes and entries (default 1; 3600 with --dataset).")
@click.option("--dirty-budget", default="256M", show_default=True, help="Unsealed write memory before writers wait.")
@click.option("--memory-cache", default="512M", show_default=True, help="In-memory chunk cache size.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Local disk cache of chunk ranges, kept across remounts (a subdirectory per lake). "
                   "Default: off for an embedded lake (its peers are local), /var/cache/lakefs-fuse with --meta.")
@click.option("--cache-size", default="10G", show_default=True, help="Disk cache size.")
@click.option("--cache-free-floor", default="1G", show_default=True,
              help="The disk cache stops growing when its filesystem has less free space than this.")
@click.option("--no-disk-cache", is_flag=True, help="No disk cache, even with --meta.")
@click.option("--pack-delay", type=float, default=None,
              help="Seconds closed files wait to be packed with the next ones (0: commit at every close). "
                   "Default 2 for an embedded lake, 0 with --meta (close-to-open between mounts).")
@click.option("--meta", "meta", default=None, metavar="HOST:PORT,...",
              help="Mount a cluster lake served by these metadata servers.")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None,
              help="The cluster secret (with --meta).")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
              help="Talk TLS to the peer servers, trusting this CA (with --meta).")
@click.option("--meta-timeout", type=float, default=30.0, show_default=True,
              help="Seconds one request may wait for the metadata service in total before failing with EIO "
                   "(with --meta).")
@click.option("--repair-delay", type=float, default=300.0, show_default=True,
              help="Seconds a peer may be down before its shards are rebuilt elsewhere in the background.")
@click.option("--compact-interval", type=float, default=MountConfig.compact_interval, show_default=True,
              help="Seconds between compaction passes (deleted data packed with live files is "
                   "reclaimed by copying the live bytes out); 0 = off.")
@click.option("--metrics", default=None, metavar="[HOST:]PORT",
              help="Serve Prometheus /metrics, /healthz and /readyz here (a bare PORT binds 127.0.0.1).")
@click.option("-o", "options", multiple=True, help="Extra FUSE mount option (repeatable).")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.pass_context
def mount(ctx: click.Context, mountpoint: Path, data_dir: Path | None, foreground: bool, allow_other: bool,
          read_only: bool, dataset: bool, attr_timeout: float | None, dirty_budget: str, memory_cache: str,
          cache_dir: Path | None, cache_size: str, cache_free_floor: str, no_disk_cache: bool,
          pack_delay: float | None, meta: str | None, secret_file: Path | None, tls_ca: Path | None,
          meta_timeout: float, repair_delay: float, compact_interval: float, metrics: str | None,
          options: tuple[str, ...], ready_fd: int | None) -> None:
    """Mount a lake at MOUNTPOINT (daemonizes; returns once the mount is live)."""
    from ..config import runtime_dir
    from ..lake.lake import Lake, format_lake, in_use, is_lake
    from ..mount import daemon
    addresses = _meta_list(meta) if meta is not None else []
    if addresses and data_dir is not None:
        raise UserError("give either --data (embedded lake) or --meta (cluster lake), not both")
    if addresses and secret_file is None:
        raise UserError("--meta needs --secret-file (the cluster secret)")
    if not addresses and data_dir is None:
        data_dir = default_data_dir()
        if not is_lake(data_dir) and not (data_dir.exists() and any(data_dir.iterdir())):
            format_lake(data_dir, LakeConfig())
    ttl = attr_timeout if attr_timeout is not None else (3600.0 if dataset else 1.0)
    if no_disk_cache:
        cache_dir = None
    elif cache_dir is None and addresses:
        from ..config import default_cache_dir
        cache_dir = default_cache_dir()
    cfg = MountConfig(mountpoint=mountpoint, data_dir=data_dir, meta=tuple(addresses),
                      secret_file=Path(secret_file).resolve() if secret_file else None,
                      tls_ca=Path(tls_ca).resolve() if tls_ca else None,
                      read_only=read_only or dataset, dataset=dataset, allow_other=allow_other,
                      attr_timeout=ttl, entry_timeout=ttl,
                      dirty_budget=parse_size(dirty_budget), memory_cache=parse_size(memory_cache),
                      pack_delay=pack_delay if pack_delay is not None else (0.0 if addresses else 2.0),
                      repair_delay=repair_delay, meta_timeout=meta_timeout, extra_fuse_options=tuple(options),
                      compact_interval=compact_interval,
                      cache_dir=Path(cache_dir).resolve() if cache_dir else None, cache_size=parse_size(cache_size),
                      cache_free_floor=parse_size(cache_free_floor), metrics=metrics)
    cfg.validate()
    if daemon.clear_dead_mount(mountpoint):
        click.echo(f"lakefs-fuse: {mountpoint} was a mount whose daemon had exited; unmounted it", err=True)
    if foreground:
        _log_setup()
        sys.exit(daemon.serve(cfg, ready_fd))
    daemon.check_mountpoint(mountpoint)
    mnt = Path(mountpoint).resolve()
    if addresses:  # fail here, with the reason, if the cluster cannot serve the lake
        Lake.open_remote(addresses, cfg.secret_file, tls_ca=cfg.tls_ca).close()
        log_path = runtime_dir() / ("mount-" + str(mnt).strip("/").replace("/", "_") + ".log")
    else:
        if in_use(data_dir):
            raise UserError(f"{data_dir} is already mounted by another lakefs-fuse process")
        Lake.open(data_dir, read_only=True).close()
        log_path = Path(data_dir) / "mount.log"
    daemon.spawn(_child_args(ctx, mnt, data_dir), mnt, log_path)
    where = f"the lake on {','.join(addresses)}" if addresses else str(data_dir)
    click.echo(f"mounted {where} at {mountpoint}" + (f" (log: {log_path})" if addresses else ""))


def _child_args(ctx: click.Context, mountpoint: Path, data_dir: Path | None) -> list[str]:
    """The daemon's own command line: every option the user gave, with paths made absolute."""
    args = [str(mountpoint)]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("foreground", "ready_fd", "data_dir"):
            continue
        value = ctx.params.get(param.name)
        if value is None or value is False or value == ():
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            args.append(flag)
        elif param.multiple:
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, str(Path(value).resolve()) if isinstance(value, Path) else str(value)]
    if data_dir is not None:
        args += ["--data", str(Path(data_dir).resolve())]
    return args


def _meta_list(text: str) -> list[str]:
    from .. import wire
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise UserError("--meta needs at least one HOST:PORT")
    for a in addresses:
        try:
            wire.parse_address(a)
        except ValueError as exc:
            raise UserError(f"--meta {a!r}: {exc}") from None
    return addresses


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--lazy", is_flag=True, help="Detach now; finish when the mount is no longer busy.")
@click.option("--force", is_flag=True,
              help="Unmount even when written data cannot be stored (full or missing peers): it is lost.")
@click.option("--wait", "busy_wait", type=click.FloatRange(0), default=UMOUNT_BUSY_WAIT, show_default=True,
              help="Seconds to keep retrying a busy mount, naming the processes holding it (0: fail at once).")
def umount(mountpoint: Path, lazy: bool, force: bool, busy_wait: float) -> None:
    """Flush and unmount a lakefs-fuse mount (refused while written data cannot be stored)."""
    from ..mount import daemon
    daemon.unmount(mountpoint, lazy=lazy, force=force, busy_wait=busy_wait,
                   notify=lambda msg: click.echo(f"lakefs-fuse: {msg}", err=True))


# ----------------------------------------------------------------- inspection

def _resolve(path: Path, data_dir: Path | None):
    """(Lake opened read-only, inode number) for a path in a mount or, with --data, in a lake."""
    from ..lake.lake import Lake
    from ..mount import daemon
    if data_dir is not None:
        lake = Lake.open(data_dir, read_only=True)
        ino = 1
        try:
            for part in [p for p in str(path).split("/") if p and p != "."]:
                ino = lake.sm.lookup(ino, os.fsencode(part)).ino
        except LakeError as exc:
            lake.close()
            raise UserError(f"{path}: {str(exc) or os.strerror(exc.errno)} (in the lake in {data_dir})") from None
        return lake, ino
    p = Path(path).absolute()
    try:
        s = os.lstat(p)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    best = None
    for _src, mnt, fstype in daemon.mounts():
        inside = str(p) == mnt or str(p).startswith(mnt.rstrip("/") + "/")
        if fstype == daemon.FSTYPE and inside and (best is None or len(mnt) > len(best)):
            best = mnt
    if best is None:
        raise UserError(f"{path} is not inside a lakefs-fuse mount (give --data DIR and a path in the lake)")
    reg = daemon.read_registry(Path(best))
    if not reg:
        raise UserError(f"no running daemon is registered for {best}")
    # fsync of a directory in the mount commits every buffered write, so the read-only
    # view of the metadata opened next shows what the user just wrote.
    barrier = p if st.S_ISDIR(s.st_mode) else p.parent
    try:
        fd = os.open(barrier, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"{path}: cannot sync the mount: {exc.strerror}") from None
    if reg.get("meta"):  # a cluster lake: ask its metadata servers
        return Lake.open_remote(reg["meta"], Path(reg["secret_file"])), s.st_ino
    return Lake.open(Path(reg["data_dir"]), read_only=True), s.st_ino


def _kind(mode: int) -> str:
    return {st.S_IFREG: "file", st.S_IFDIR: "dir", st.S_IFLNK: "symlink", st.S_IFIFO: "fifo",
            st.S_IFSOCK: "socket", st.S_IFCHR: "chardev", st.S_IFBLK: "blockdev"}.get(st.S_IFMT(mode), "?")


async def _file_info(lake, ino: int, *, shards: bool) -> dict:
    from ..meta.schema import ChunkRecord
    inode = await lake.meta.getattr(ino)
    info = {"inode": ino, "type": _kind(inode.mode), "mode": f"{st.S_IMODE(inode.mode):04o}",
            "size": inode.size, "nlink": inode.nlink, "uid": inode.uid, "gid": inode.gid,
            "atime_ns": inode.atime_ns, "mtime_ns": inode.mtime_ns, "ctime_ns": inode.ctime_ns}
    # the profile new data is written with (user.lakefs.ec, inherited from the directory)
    k, m = inode.profile or (lake.config.ec_k, lake.config.ec_m)
    info["ec_profile"] = f"{k}+{m}" + ("" if inode.profile else " (lake default)")
    if not inode.is_reg:
        return info
    peers = {p.peer_id: p for p in lake.peer_records}
    extents = await lake.meta.extents(ino, 0, 1 << 62)
    chunk_ids = sorted({e.chunk_id for e in extents})
    health = {}
    records: dict[int, ChunkRecord] = {}
    for cid in chunk_ids:
        try:
            records[cid] = await lake.meta.chunk(cid)
        except LakeError:
            continue
    if shards:
        for cid, rec in records.items():
            health[cid] = await lake.chunks.verify(lake.layout_of(rec))
    info["extents"] = []
    for e in extents:
        rec = records.get(e.chunk_id)
        item = {"file_offset": e.file_off, "length": e.length, "chunk": e.chunk_id, "chunk_offset": e.chunk_off}
        if rec:
            item["ec"] = f"{rec.k}+{rec.m}"
            item["chunk_length"] = rec.length
            if shards:
                item["shards"] = [{"index": i, "peer": pid,
                                   "address": lake.peer_address(peers[pid]) if pid in peers else "?",
                                   "health": health[e.chunk_id][i]} for i, pid in enumerate(rec.peers)]
        else:
            item["ec"] = "missing chunk record"
        info["extents"].append(item)
    info["chunks"] = len(chunk_ids)
    if shards:
        bad = sum(1 for cid in chunk_ids for h in health.get(cid, []) if h != "ok")
        info["health"] = "ok" if not bad else f"{bad} bad shard(s)"
        lost = [cid for cid in chunk_ids if cid in records and
                sum(1 for h in health[cid] if h != "ok") > records[cid].m]
        if lost:
            info["health"] += f"; {len(lost)} chunk(s) unreadable"
    return info


def _local_time(ns: int) -> str:
    """Nanoseconds since the epoch as local time to the nanosecond: 2026-12-06 15:45:01.123456789 +0100."""
    seconds, frac = divmod(ns, 1_000_000_000)
    t = time.localtime(seconds)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', t)}.{frac:09d} {time.strftime('%z', t)}"


@main.command("stat")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Read the lake in DIR directly; PATH is then a path inside the lake.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stat_cmd(path: Path, data_dir: Path | None, as_json: bool) -> None:
    """Inode, size, times and every extent's chunk, EC profile and shard health."""
    lake, ino = _resolve(path, data_dir)
    try:
        info = trio.run(partial(_file_info, lake, ino, shards=True))
    finally:
        lake.close()
    if as_json:
        click.echo(json.dumps(info, indent=1))  # times stay integers of nanoseconds (atime_ns...)
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


main.add_command(stat_cmd, "info")  # `info`: what JuiceFS users type for `stat`


@main.command("ls")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Read the lake in DIR directly; PATH is then a path inside the lake.")
@click.option("-l", "long", is_flag=True, help="Long listing with shard health.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls_cmd(path: Path, data_dir: Path | None, long: bool, as_json: bool) -> None:
    """List a directory: size, chunk count, EC profile and health of each file."""
    lake, ino = _resolve(path, data_dir)
    rows = []

    async def listing() -> None:
        if not (await lake.meta.getattr(ino)).is_dir:
            raise UserError(f"{path} is not a directory")
        after = 0
        while True:
            batch = await lake.meta.readdir(ino, after, 1000)
            if not batch:
                break
            for name, child, cookie in batch:
                info = await _file_info(lake, child.ino, shards=long)
                info["name"] = name.decode(errors="surrogateescape")
                ecs = sorted({e.get("ec", "") for e in info.get("extents", [])})
                info["ec"] = ",".join(ecs)
                info.pop("extents", None)
                rows.append(info)
                after = cookie
    try:
        trio.run(listing)
    finally:
        lake.close()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        line = f"{r['type']:<8} {r['size']:>12} {r['name']}"
        if True:
            line = f"{r['type']:<8} {r['mode']} {r['size']:>12} chunks={r.get('chunks', 0):<4} ec={r['ec'] or '-':<5}"
            if long:
                line += f" health={r.get('health', '-')}"
            line += f" {r['name']}"
        click.echo(line)


# ---------------------------------------------------------------- maintenance

def lake_options(fn):
    """--data (embedded lake) or --meta/--secret-file/--tls-ca (cluster lake)."""
    for opt in reversed([
        click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                     help="The embedded lake's data directory."),
        click.option("--meta", "meta", default=None, metavar="HOST:PORT,...",
                     help="A cluster lake: its metadata servers (instead of --data)."),
        click.option("--secret-file", type=click.Path(path_type=Path), default=None,
                     help="The cluster secret (with --meta)."),
        click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
                     help="CA to trust for TLS to peer servers (with --meta)."),
    ]):
        fn = opt(fn)
    return fn


def _open_lake(data_dir: Path | None, meta: str | None, secret_file: Path | None, tls_ca: Path | None, *,
               change: str | None = None):
    """Open the lake the options name. ``change`` (a verb) takes an embedded lake's lock first:
    an embedded lake is changed only while unmounted; a cluster lake's commands are
    compare-and-set, so they run beside its mounts."""
    from ..lake.lake import Lake, in_use
    if meta is not None:
        if data_dir is not None:
            raise UserError("give either --data or --meta, not both")
        return Lake.open_remote(_meta_list(meta), secret_file, tls_ca=tls_ca)
    data_dir = data_dir or default_data_dir()
    if change is None:
        return Lake.open(data_dir, read_only=True)
    if in_use(data_dir):
        raise UserError(f"{data_dir} is mounted; unmount it to {change}")
    return Lake.open(data_dir, lock=True)


def _run_on(lake, run):
    """``trio.run(run)``, then close the lake whatever happened."""
    try:
        return trio.run(run)
    finally:
        lake.close()


def _maintain(lake, *, repair: bool, start_after: int, as_json: bool) -> None:
    from ..lake import repair as maintenance

    async def run():
        total = await maintenance.count_chunks(lake)
        with click.progressbar(length=total, label="repair" if repair else "scrub", file=sys.stderr,
                               show_pos=True) as bar:
            return await maintenance.scrub(lake, start_after=start_after, repair=repair,
                                           on_chunk=lambda _cid: bar.update(1))
    report = _run_on(lake, run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        bad = ", ".join(f"{n} {h}" for h, n in sorted(report.bad.items())) or "none"
        click.echo(f"{report.chunks} chunks, {report.shards} shards checked; bad shards: {bad}")
        for chunk, index, peer, health in report.bad_shards[:20]:
            click.echo(f"  chunk {chunk} shard {index} on peer {peer}: {health}")
        if len(report.bad_shards) > 20:
            click.echo(f"  ... (--json lists up to {len(report.bad_shards)})")
        for f in report.files[:20]:
            click.echo(f"  in file {f['path']}")
        if len(report.files) > 20:
            click.echo(f"  ... (--json lists up to {len(report.files)} files)")
        if repair:
            click.echo(f"repaired {report.repaired} shard(s)")
        for cid, why in report.failed:
            click.echo(f"  chunk {cid}: not repaired: {why}")
        if report.lost:
            click.echo(f"  {len(report.lost)} chunk(s) have more bad shards than parity and cannot be read: "
                       f"{report.lost[:20]}{' ...' if len(report.lost) > 20 else ''}")
    if report.lost or report.failed or (report.bad and not repair):
        sys.exit(3)  # something needs attention


@main.command()
@lake_options
@click.option("--start-after", type=int, default=-1, help="Resume after this chunk id (from a previous run).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def scrub(data_dir, meta, secret_file, tls_ca, start_after: int, as_json: bool) -> None:
    """Read every shard and check it against its checksum (exit 3 if any is bad)."""
    _maintain(_open_lake(data_dir, meta, secret_file, tls_ca), repair=False, start_after=start_after,
              as_json=as_json)


@main.command()
@lake_options
@click.option("--start-after", type=int, default=-1, help="Resume after this chunk id (from a previous run).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def repair(data_dir, meta, secret_file, tls_ca, start_after: int, as_json: bool) -> None:
    """Rebuild missing, corrupt or unreachable shards onto healthy peers (an embedded lake unmounted)."""
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="repair (scrub works while mounted)")
    _maintain(lake, repair=True, start_after=start_after, as_json=as_json)


@main.command()
@lake_options
@click.option("--start-after", type=int, default=-1, help="Resume after this chunk id (from a previous run).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def rebalance(data_dir, meta, secret_file, tls_ca, start_after: int, as_json: bool) -> None:
    """Move shards onto newly added peers and off removed ones (an embedded lake unmounted)."""
    from ..lake import repair as maintenance
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="rebalance")

    async def run():
        total = await maintenance.count_chunks(lake)
        with click.progressbar(length=total, label="rebalance", file=sys.stderr, show_pos=True) as bar:
            return await maintenance.rebalance(lake, start_after=start_after, on_chunk=lambda _cid: bar.update(1))
    report = _run_on(lake, run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    click.echo(f"{report.chunks} chunks checked, {report.repaired} shard(s) moved")
    for cid, why in report.failed:
        click.echo(f"  chunk {cid}: {why}")
    if report.failed:
        click.echo(f"  resume with --start-after {report.cursor} after fixing the above, or run again")
        sys.exit(3)


@main.command()
@lake_options
@click.option("--repair", is_flag=True, help="Fix what is found (an embedded lake unmounted; a cluster lake live).")
@click.option("--no-shards", is_flag=True, help="Check the metadata only, not every shard's checksum.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def fsck(data_dir, meta, secret_file, tls_ca, repair: bool, no_shards: bool, as_json: bool) -> None:
    """Check metadata against chunks against shards: entries naming missing inodes, wrong link
    counts, unnamed inodes (relinked into /lost+found), extents whose chunk is gone (the range
    becomes a hole; the file is listed as damaged), wrong chunk reference counts, and every shard's
    checksum. Exit 3 if anything is wrong and was not repaired."""
    from ..admin import check
    from ..lake import repair as maintenance
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="repair it" if repair else None)

    async def run():
        total = 0 if no_shards else await maintenance.count_chunks(lake)
        with click.progressbar(length=max(total, 1), label="fsck", file=sys.stderr, show_pos=True) as bar:
            return await check.fsck(lake, repair=repair, shards=not no_shards, on_chunk=lambda _cid: bar.update(1))
    report = _run_on(lake, run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(f"{report.inodes} inodes, {report.entries} entries, {report.extents} extents, "
                   f"{report.chunks} chunks checked")
        for kind, found in sorted(report.problems.items()):
            click.echo(f"  {kind.replace('_', ' ')}: {len(found)}")
        for path in report.damaged_files[:50]:
            click.echo(f"  damaged (a range reads as zeros): {path}")
        if report.shards is not None:
            bad = ", ".join(f"{n} {h}" for h, n in sorted(report.shards["bad"].items())) or "none"
            click.echo(f"  shards: {report.shards['shards']} checked, bad: {bad}"
                       + (f", repaired {report.shards['repaired']}" if repair else ""))
        if repair:
            click.echo(f"fixed {report.fixed} metadata problem(s)")
        elif not report.clean:
            click.echo("run again with --repair to fix")
    unrepaired = report.shards and (report.shards["lost"] or report.shards["failed"])
    if (not report.clean and not repair) or unrepaired:
        sys.exit(3)


@main.command()
@lake_options
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help="Seconds an orphan shard must stay an orphan before it is deleted (default 0 for an "
                   "unmounted embedded lake, 300 for a cluster lake, whose mounts may be mid-write).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def gc(data_dir, meta, secret_file, tls_ca, dry_run: bool, grace: float | None, as_json: bool) -> None:
    """Delete what nothing references: chunks in the delete queue, and orphan shards (on a peer
    but in no chunk record, or where the record places that shard elsewhere)."""
    from ..lake.gc import gc as collect
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change=None if dry_run else "collect garbage")
    if grace is None:
        grace = 300.0 if meta else 0.0

    async def run():
        with click.progressbar(length=0, label="gc: listing shards", file=sys.stderr, show_pos=True) as bar:
            return await collect(lake, dry_run=dry_run, grace=grace, on_shard=lambda: bar.update(1))
    report = _run_on(lake, run)
    out = report.to_json()
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"delete queue: {report.queued_chunks} chunk(s), {verb} "
               f"{report.queued_chunks if dry_run else report.deleted_chunks}")
    click.echo(f"orphan shards: {len(report.orphan_shards)} ({out['orphan_bytes']:,} bytes), {verb} "
               f"{len(report.orphan_shards) if dry_run else report.deleted_shards}")
    for peer, why in report.unreachable_peers:
        click.echo(f"  peer {peer} not listed: {why}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@lake_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def dump(path: Path, data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """Write the lake's whole metadata (not file data: shards stay on their peers) to PATH, for
    backup or to move the lake (works beside live mounts; a cluster lake's is a consistent copy)."""
    from ..admin import backup
    lake = _open_lake(data_dir, meta, secret_file, tls_ca)
    info = _run_on(lake, partial(backup.dump, lake, path))
    if as_json:
        click.echo(json.dumps(info, indent=1))
    else:
        click.echo(f"dumped {info['keys']:,} metadata keys to {path} ({info['bytes']:,} bytes)")


@main.command()
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="An empty (or new) directory for the restored lake (embedded).")
@click.option("--meta", "meta", default=None, metavar="HOST:PORT,...",
              help="Metadata servers holding no lake yet, to load the lake onto (instead of --data).")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None,
              help="The cluster secret: needed with --meta, and with --data if the peers are peer servers "
                   "(default there: a new DATA/secret).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def load(path: Path, data_dir: Path | None, meta: str | None, secret_file: Path | None, as_json: bool) -> None:
    """Create a lake from a dump: the same tree, reading the same shards from the same peers --
    an embedded lake in DATA, or on metadata servers (--meta) that hold none yet (e.g. moving an
    embedded lake onto a cluster). Use it instead of the original from then on (both would hand
    out the same chunk ids)."""
    from ..admin import backup
    if (data_dir is None) == (meta is None):
        raise UserError("give --data DIR (an embedded lake) or --meta HOST:PORT,... (metadata servers)")
    if meta is not None and secret_file is None:
        raise UserError("--meta needs --secret-file (the cluster secret)")
    with click.progressbar(length=0, label="load: metadata keys", file=sys.stderr, show_pos=True) as bar:
        if meta is not None:
            info = trio.run(partial(backup.load_remote, path, _meta_list(meta), secret_file, on_keys=bar.update))
        else:
            info = backup.load(path, data_dir, secret_file=secret_file, on_keys=bar.update)
    if as_json:
        click.echo(json.dumps(info, indent=1))
    else:
        click.echo(f"loaded {info['keys']:,} metadata keys into {data_dir or meta} (dumped from {info['source']})")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--big-size", default="1G", show_default=True, help="Total size of the big file(s).")
@click.option("--small-count", type=click.IntRange(1), default=1000, show_default=True, help="Small files.")
@click.option("--small-size", default="128K", show_default=True, help="Size of each small file.")
@click.option("--threads", "-p", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Workers, each with its own big file and share of the small files.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def bench(directory: Path, big_size: str, small_count: int, small_size: str, threads: int, as_json: bool) -> None:
    """Benchmark the filesystem DIRECTORY is on (a mount): big file write/read, small files
    write/read/stat, delete; throughput and latency per operation. Leaves nothing behind."""
    from .benchcmd import run
    big, small = parse_size(big_size), parse_size(small_size)
    with click.progressbar(length=6, label="bench", file=sys.stderr, show_pos=True,
                           item_show_func=lambda name: name) as bar:
        try:
            phases = run(directory, big_size=big, small_count=small_count, small_size=small, threads=threads,
                         progress=lambda name: bar.update(1, name))
        except OSError as exc:
            raise UserError(f"bench in {directory}: {exc.strerror or exc}") from None
    rows = [p.to_json() for p in phases]
    if as_json:
        click.echo(json.dumps({"directory": str(directory), "threads": threads, "phases": rows}, indent=1))
        return
    click.echo(f"{'phase':<20} {'MB/s':>9} {'ops/s':>10} {'ms/op':>9} {'seconds':>8}")
    for r in rows:
        mbps = f"{r['MB_per_s']:.1f}" if r.get("MB_per_s") is not None else "-"
        click.echo(f"{r['phase']:<20} {mbps:>9} {r['ops_per_s'] or 0:>10.1f} {r['ms_per_op'] or 0:>9.3f} "
                   f"{r['seconds']:>8.2f}")


def _view_options(fn):
    fn = click.option("--json", "as_json", is_flag=True, help="One sample as JSON (implies --once).")(fn)
    fn = click.option("--once", is_flag=True, help="Show one sample and exit.")(fn)
    fn = click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
                      help="Seconds between samples; rates are over this interval.")(fn)
    return click.argument("mountpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))(fn)


@main.command()
@_view_options
def stats(mountpoint: Path, interval: float, once: bool, as_json: bool) -> None:
    """Live view of a mount: throughput, FUSE requests by op with mean latency, cache hit ratio
    by tier, peer latency and errors. Reads MOUNTPOINT/.stats (Ctrl-C to leave)."""
    from .statsview import run_view
    run_view(mountpoint, interval=interval, once=once, as_json=as_json, kind="stats")


@main.command()
@_view_options
def top(mountpoint: Path, interval: float, once: bool, as_json: bool) -> None:
    """Per-process data stall: for each process using the mount, the share of its time spent
    waiting on the filesystem, its request rate and read rate (a DataLoader worker at 90 % is
    starved by storage; at 5 % it is busy decoding). Reads MOUNTPOINT/.stats (Ctrl-C to leave)."""
    from .statsview import run_view
    run_view(mountpoint, interval=interval, once=once, as_json=as_json, kind="top")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Files read at once.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def warmup(paths: tuple[Path, ...], jobs: int, as_json: bool) -> None:
    """Read PATHS (files or directory trees inside a mount) once, so the mount's caches -- memory and,
    with --cache-dir, the local disk cache -- hold them before training starts. The kernel's page
    cache is left as it was."""
    import concurrent.futures
    import threading

    from ..mount import daemon
    files: list[tuple[Path, int]] = []
    for p in paths:
        p = p.resolve()
        if daemon.lakefs_mount_of(p) is None:
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
    failed: list[str] = []
    lock = threading.Lock()

    def read(item: tuple[Path, int]) -> int:
        path, size = item
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                while os.read(fd, 1 << 20):
                    pass
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except OSError as exc:
            with lock:
                failed.append(f"{path}: {exc.strerror}")
        return size

    with click.progressbar(length=sum(s for _, s in files), label=f"warmup {len(files)} files",
                           file=sys.stderr) as bar, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for size in pool.map(read, files):
            bar.update(size)
    if as_json:
        click.echo(json.dumps({"files": len(files) - len(failed), "bytes": sum(s for _, s in files),
                               "failed": failed}, indent=1))
    else:
        click.echo(f"warmed {len(files) - len(failed)} files ({sum(s for _, s in files) / 1e6:.1f} MB)")
        for line in failed[:20]:
            click.echo(f"  {line}", err=True)
    if failed:
        sys.exit(3)


@main.command("import")
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("dest", default="/")
@lake_options
@click.option("--jobs", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Files read and written at once.")
@click.option("--overwrite", is_flag=True, help="Replace files that exist (default: skip same-size files).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def import_cmd(src: Path, dest: str, data_dir, meta, secret_file, tls_ca, jobs: int, overwrite: bool,
               as_json: bool) -> None:
    """Copy the local directory SRC into the lake at DEST (a path in the lake, default its root),
    without going through FUSE; small files are packed densely. An embedded lake must be unmounted
    (or copy into its mount); a cluster lake can be imported into beside its mounts. Rerunning
    skips files already imported. Symlinks are copied as links; sockets, FIFOs and devices are
    not copied, and the summary counts them (each is listed on stderr)."""
    from ..admin.importer import import_tree, scan
    from ..mount.vfs import VFS
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="import into it (or copy into the mount)")
    cfg = MountConfig(mountpoint=Path("/"), data_dir=data_dir, pack_delay=1.0)

    async def run():
        tree = await trio.to_thread.run_sync(scan, src)
        files = tree.files
        total = sum(size for _, size in files)
        vfs = VFS(lake.meta, lake.chunks, cfg, chunk_size=lake.config.chunk_size, shared=bool(meta))
        async with trio.open_nursery() as nursery:
            await vfs.start(nursery)
            with click.progressbar(length=total, label=f"import {len(files)} files", file=sys.stderr,
                                   show_pos=False, show_percent=True) as bar:
                report = await import_tree(vfs, src, dest, jobs=jobs, overwrite=overwrite, on_file=bar.update)
            await vfs.shutdown()  # seal everything, sync shards and metadata
            nursery.cancel_scope.cancel()
        return report
    report = _run_on(lake, run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(f"imported {report.files} files ({report.bytes / 1e6:.1f} MB), {report.symlinks} symlinks and "
                   f"{report.dirs} directories into {dest}; {report.skipped} already there"
                   + (f"; {len(report.not_copied)} not copied" if report.not_copied else "")
                   + (f"; {len(report.failed)} failed" if report.failed else ""))
        for rel, why in report.not_copied[:20]:
            click.echo(f"  not copied: {rel}: {why}", err=True)
        for rel, why in report.failed[:20]:
            click.echo(f"  {rel}: {why}", err=True)
        if len(report.not_copied) > 20 or len(report.failed) > 20:
            click.echo("  ... (--json lists them all)", err=True)
    if report.failed:
        sys.exit(3)


@main.command()
@click.argument("path", default="/")
@lake_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def restripe(path: str, data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """Rewrite the files under PATH (a path in the lake, default all of it) whose data is not in
    their EC profile -- after 'setfattr -n user.lakefs.ec -v 1+2 DIR' changed it -- so their chunks
    follow it; the old chunks are freed (gc). Same bytes and inodes."""
    from ..admin.importer import restripe as run_restripe
    from ..mount.vfs import VFS
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="restripe it")
    cfg = MountConfig(mountpoint=Path("/"), data_dir=data_dir, pack_delay=0.0)

    async def run():
        vfs = VFS(lake.meta, lake.chunks, cfg, chunk_size=lake.config.chunk_size, shared=bool(meta))
        async with trio.open_nursery() as nursery:
            await vfs.start(nursery)
            with click.progressbar(length=0, label="restripe", file=sys.stderr, show_pos=True) as bar:
                report = await run_restripe(vfs, path, default=(lake.config.ec_k, lake.config.ec_m),
                                            min_shard=lake.config.min_shard, on_file=lambda: bar.update(1))
            await vfs.shutdown()
            nursery.cancel_scope.cancel()
        return report
    report = _run_on(lake, run)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        click.echo(f"{report.files} files checked, {report.rewritten} rewritten ({report.bytes / 1e6:.1f} MB)")
        for rel, why in report.failed[:20]:
            click.echo(f"  {rel}: {why}", err=True)
    if report.failed:
        sys.exit(3)


@main.command()
@lake_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """Peers (up/down, zone, capacity, shard count), degraded chunks, and (with --meta) each
    metadata server's Raft role, term, commit/applied index, lag and health."""
    from ..lake import repair as maintenance
    lake = _open_lake(data_dir, meta, secret_file, tls_ca)

    async def run():
        info = await maintenance.status(lake)
        if lake.meta_addresses:
            info["meta"] = await _raft_status(lake.meta.service)
        return info
    try:
        info = trio.run(run)
    finally:
        lake.close()
    # Exit 3 (like scrub) when something needs attention: a peer that does not answer (down, or
    # refusing our secret), or chunks below full redundancy.
    unhealthy = any(not r.get("reachable") for r in info["peers"]) or info["degraded"] or info["unreadable"]
    if as_json:
        click.echo(json.dumps(info, indent=1))
    else:
        if "meta" in info:
            _print_raft(info["meta"], False)
        click.echo(f"EC {info['ec']}, {info['chunks']} chunks, {len(info['degraded'])} degraded, "
                   f"{len(info['unreadable'])} unreadable, {info['delete_queue']} queued for deletion")
        waiting = info["chunk_bytes"] - info["live_bytes"]  # compaction, then GC, reclaims it
        click.echo(f"data: {info['live_bytes'] / 2**20:.1f} MiB used by files, {info['chunk_bytes'] / 2**20:.1f} "
                   f"MiB in chunks ({waiting / 2**20:.1f} MiB deleted or overwritten, not reclaimed yet)")
        for r in info["peers"]:
            up = "up" if r.get("reachable") else "DOWN"
            cap = f"{r['avail'] / 1e9:.1f}/{r['total'] / 1e9:.1f} GB free" if r.get("reachable") \
                else r.get("error", "")
            click.echo(f"{r['id']:>3} {r['kind']:<4} {r['address']:<40} zone={r['zone'] or '-':<6} "
                       f"{r['state']:<8} {up:<5} shards={r['shards']:<8} {cap}")
    if unhealthy:
        sys.exit(3)


# ---------------------------------------------------------------------- peers

@main.group()
def peer() -> None:
    """Storage peers: run a peer server, and manage the peers of a lake."""


@peer.command("serve")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
              help="Directory where this peer keeps its shards.")
@click.option("--listen", default="127.0.0.1:7070", show_default=True,
              help="HOST:PORT to listen on (loopback unless told otherwise).")
@click.option("--zone", default="", help="Failure zone (rack, host, disk) reported to lakes.")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True,
              help="The cluster secret (the lake's DATA/secret).")
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None,
              help="Serve TLS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="The certificate's private key (PEM).")
@click.option("--metrics", default=None, metavar="[HOST:]PORT",
              help="Serve Prometheus /metrics, /healthz and /readyz here (a bare PORT binds 127.0.0.1).")
def peer_serve(data_dir: Path, listen: str, zone: str, secret_file: Path, tls_cert: Path | None,
               tls_key: Path | None, metrics: str | None) -> None:
    """Serve shards from DIR to lakes that know the cluster secret (SIGTERM stops it)."""
    import signal
    import ssl

    from .. import wire
    from ..chunks.peer_server import PeerServer
    try:
        host, port = wire.parse_address(listen)
        secret = wire.load_secret(secret_file)
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        ssl_context = wire.server_tls_context(str(tls_cert), str(tls_key)) if tls_cert else None
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise UserError(str(exc)) from None
    _log_setup()
    try:
        server = PeerServer(data_dir, zone=zone)
    except (OSError, ValueError) as exc:
        raise UserError(f"{data_dir}: {exc}") from None
    endpoint = heartbeat = None
    if metrics:
        from ..chunks.peer_server import peer_families
        from ..metrics import start_endpoint
        endpoint, heartbeat = start_endpoint(metrics, partial(peer_families, server), lambda: server.serving)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if heartbeat is not None:
                nursery.start_soon(heartbeat.run)
            try:
                bound = await nursery.start(partial(server.serve, ssl_context=ssl_context), host, port, secret)
            except OSError as exc:
                raise UserError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
            server.serving = True
            logging.getLogger("lakefs_fuse.peer").info("peer %s serving %s on %s:%s", server.ident, data_dir,
                                                       host, bound)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            server.serving = False
            nursery.cancel_scope.cancel()

    try:
        _run_server(run)
    finally:
        if endpoint is not None:
            endpoint.close()


def _run_server(run) -> None:
    """trio.run a server; a UserError from inside its nurseries becomes the one-line error."""
    try:
        trio.run(run)
    except BaseExceptionGroup as group:
        match, _rest = group.split(UserError)
        if match is not None:
            while isinstance(match, BaseExceptionGroup):
                match = match.exceptions[0]
            raise match from None
        raise


@peer.command("add")
@click.argument("address", metavar="HOST:PORT|s3://BUCKET[/PREFIX][?...]")
@lake_options
@click.option("--zone", default=None, help="Failure zone (default: what the peer reports).")
@click.option("--weight", type=click.FloatRange(min=0), default=DEFAULT_PEER_WEIGHT, show_default=True,
              help="Placement weight: the peer's share of new shards relative to the others' (0: none).")
def peer_add(address: str, data_dir, meta, secret_file, tls_ca, zone: str | None, weight: float) -> None:
    """Add a running peer server, or a bucket on an S3-compatible store, to a lake (a server must
    answer with the lake's secret; a bucket must exist and take our credentials). A removed peer
    is added back under its old id. Running mounts of a cluster lake start using it within seconds."""
    from ..chunks.netstore import NetStore
    from ..chunks.s3store import S3Store
    from ..lake.lake import parse_net_peer
    kind, address, given_zone = parse_net_peer(address)
    zone = zone if zone is not None else (given_zone or None)
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="change its peers")
    try:
        known = next((p for p in lake.peer_records if p.kind == kind and p.address == address), None)
        if known is not None and known.state != "removed":
            raise UserError(f"{address} is already a peer of this lake (peer {known.peer_id})")

        async def probe() -> dict:
            if kind == "s3":
                store = S3Store(-1, address)
            else:
                store = NetStore(-1, address, lake.secret or b"", call_timeout=5, connect_timeout=5,
                                 ssl_context=lake.tls_context)
            try:
                return await store.stat()
            finally:
                await store.aclose()
        if lake.secret is None and kind == "net":
            raise UserError("this lake has no cluster secret (DATA/secret)")
        try:
            info = trio.run(probe)
        except Exception as exc:  # PeerUnavailable and friends: one clear line
            raise UserError(f"peer {address} does not answer: {exc}") from None
        pid = known.peer_id if known is not None else max((p.peer_id for p in lake.peer_records), default=-1) + 1
        z = zone if zone is not None else info.get("zone", "")
        extra = {**(known.extra if known is not None else {}), "uuid": info.get("id")}
        trio.run(partial(lake.meta.apply, ["register_peer", pid, [kind, address, z, weight, "up", extra]],
                         sync=True))
        click.echo(f"added peer {pid}{' back' if known is not None else ''}: {address} zone={z or '-'} "
                   f"weight={weight}")
    finally:
        lake.close()


@peer.command("remove")
@click.argument("peer_id", type=int)
@lake_options
def peer_remove(peer_id: int, data_dir, meta, secret_file, tls_ca) -> None:
    """Stop placing new shards on a peer (its shards stay readable until rebalanced)."""
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="change its peers")
    try:
        rec = next((p for p in lake.peer_records if p.peer_id == peer_id), None)
        if rec is None:
            raise UserError(f"no peer {peer_id} in this lake")
        trio.run(partial(lake.meta.apply, ["register_peer", peer_id, [rec.kind, rec.address, rec.zone, rec.weight,
                                                                      "removed", rec.extra]], sync=True))
        click.echo(f"peer {peer_id} ({rec.address}) removed from placement")
    finally:
        lake.close()


@peer.command("weight")
@click.argument("peer_id", type=int)
@click.argument("weight", type=click.FloatRange(min=0))
@lake_options
def peer_weight(peer_id: int, weight: float, data_dir, meta, secret_file, tls_ca) -> None:
    """Set a peer's placement weight: its share of new shards relative to the others' (0: none).
    Shards already placed stay where they are ('rebalance' moves them). Running mounts of a
    cluster lake follow within seconds."""
    lake = _open_lake(data_dir, meta, secret_file, tls_ca, change="change its peers")
    try:
        rec = next((p for p in lake.peer_records if p.peer_id == peer_id), None)
        if rec is None:
            raise UserError(f"no peer {peer_id} in this lake")
        if rec.state == "removed":
            raise UserError(f"peer {peer_id} is removed; 'lakefs-fuse peer add {rec.address}' brings it back")
        trio.run(partial(lake.meta.apply, ["register_peer", peer_id, [rec.kind, rec.address, rec.zone, weight,
                                                                      rec.state, rec.extra]], sync=True))
        click.echo(f"peer {peer_id} ({rec.address}): weight {rec.weight} -> {weight}")
    finally:
        lake.close()


@peer.command("list")
@lake_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def peer_list(data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """The lake's peers: kind, address, zone, weight, state, and whether each answers now."""
    lake = _open_lake(data_dir, meta, secret_file, tls_ca)
    rows = []
    try:
        async def check() -> None:
            async def one(p) -> None:
                row = {"id": p.peer_id, "kind": p.kind, "address": lake.peer_address(p), "zone": p.zone,
                       "weight": p.weight, "state": p.state, "reachable": False}
                store = lake.chunks.stores.get(p.peer_id)
                if store is not None:
                    with trio.move_on_after(5):
                        try:
                            total, avail = await store.capacity()
                            row.update(reachable=True, total=total, avail=avail)
                        except Exception as exc:  # report, don't fail: this is a status listing
                            row["error"] = str(exc)
                rows.append(row)
            async with trio.open_nursery() as nursery:
                for p in lake.peer_records:
                    nursery.start_soon(one, p)
        trio.run(check)
    finally:
        lake.close()
    rows.sort(key=lambda r: r["id"])
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        up = "up" if r["reachable"] else "DOWN"
        cap = f"{r.get('avail', 0) / 1e9:.1f}/{r.get('total', 0) / 1e9:.1f} GB free" if r["reachable"] else \
            r.get("error", "")
        click.echo(f"{r['id']:>3} {r['kind']:<4} {r['address']:<40} zone={r['zone'] or '-':<6} "
                   f"w={r['weight']:<6} {r['state']:<8} {up:<5} {cap}")


# ---------------------------------------------------------------- metadata servers

@main.group("meta")
def meta_group() -> None:
    """Metadata servers: run one, change the cluster's membership, show its Raft state."""


def _run_service(addresses: list[str], secret_file: Path | None, fn):
    """Run ``await fn(service)`` against a metadata cluster; errors become one line."""
    from ..lake.lake import cluster_secret
    from ..meta.remote import MetaService
    secret = cluster_secret(secret_file)

    async def run():
        service = MetaService(addresses, secret, op_timeout=30.0)
        try:
            return await fn(service)
        finally:
            await service.aclose()

    return trio.run(run)


@meta_group.command("serve")
@click.option("--id", "node_id", type=int, required=True, help="This server's member id (1, 2, 3, ...).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
              help="Directory for this server's Raft log, snapshots and state.")
@click.option("--listen", default="127.0.0.1:7200", show_default=True,
              help="HOST:PORT to listen on (loopback unless told otherwise); also the address other members use.")
@click.option("--peers", default=None, metavar="ID=HOST:PORT,...",
              help="All founding members, this one included (first start of a new cluster).")
@click.option("--join", default=None, metavar="HOST:PORT",
              help="Join a running cluster through this member (first start of an added server).")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True, help="The cluster secret.")
@click.option("--snapshot-every", type=click.IntRange(min=10), default=20000, show_default=True,
              help="Snapshot the state and truncate the log every this many applied entries.")
@click.option("--metrics", default=None, metavar="[HOST:]PORT",
              help="Serve Prometheus /metrics, /healthz and /readyz (ready: a leader is known) here "
                   "(a bare PORT binds 127.0.0.1).")
def meta_serve(node_id: int, data_dir: Path, listen: str, peers: str | None, join: str | None,
               secret_file: Path, snapshot_every: int, metrics: str | None) -> None:
    """Serve one replica of the lake's metadata (SIGTERM stops it; a restart recovers its log)."""
    import signal

    from .. import wire
    from ..meta.raft import RaftConfig
    from ..meta.server import MetaServer, parse_members
    if peers and join:
        raise UserError("give --peers (found a cluster) or --join (join one), not both")
    if node_id < 1:
        raise UserError("--id must be >= 1")
    try:
        wire.parse_address(listen)
        secret = wire.load_secret(secret_file)
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if join:
        _meta_list(join)
    members = parse_members(peers) if peers else None
    _log_setup()
    try:
        server = MetaServer(node_id, data_dir, listen, secret, peers=members, join=join,
                            raft_config=RaftConfig(snapshot_every=snapshot_every, lease_reads=True))
    except OSError as exc:
        raise UserError(f"{data_dir}: {exc}") from None
    except Exception as exc:  # rocksdict: locked or corrupt database
        if isinstance(exc, UserError):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{data_dir}: cannot open the metadata store: {first}") from None
    endpoint = heartbeat = None
    if metrics:
        from ..meta.server import meta_families
        from ..metrics import start_endpoint
        try:
            endpoint, heartbeat = start_endpoint(metrics, partial(meta_families, server),
                                                 lambda: server.node.leader_id is not None)
        except UserError:
            server.close()
            raise

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if heartbeat is not None:
                nursery.start_soon(heartbeat.run)
            try:
                await nursery.start(server.run)
            except OSError as exc:
                raise UserError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            logging.getLogger("lakefs_fuse.meta").info("member %d stopping", node_id)
            nursery.cancel_scope.cancel()

    try:
        _run_server(run)
    finally:
        if endpoint is not None:
            endpoint.close()


@meta_group.command("add")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="Any running members.")
@click.option("--id", "node_id", type=int, required=True, help="The new member's id.")
@click.option("--address", required=True, metavar="HOST:PORT", help="Where the new member listens.")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True, help="The cluster secret.")
def meta_add(meta: str, node_id: int, address: str, secret_file: Path) -> None:
    """Add a metadata server (started with 'meta serve --join') as a voting member."""
    _meta_list(address)

    async def add(service):
        res, _ = await service.call("add", {"id": node_id, "address": address}, timeout=60.0)
        return res
    res = _run_service(_meta_list(meta), secret_file, add)
    click.echo(f"member {node_id} ({address}) added; members: {_fmt_members(res.get('members', {}))}")


@meta_group.command("remove")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="Any running members.")
@click.option("--id", "node_id", type=int, required=True, help="The member to remove.")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True, help="The cluster secret.")
def meta_remove(meta: str, node_id: int, secret_file: Path) -> None:
    """Remove a metadata server from the cluster (it may then be stopped)."""
    async def remove(service):
        res, _ = await service.call("remove", {"id": node_id}, timeout=60.0)
        return res
    res = _run_service(_meta_list(meta), secret_file, remove)
    click.echo(f"member {node_id} removed; members: {_fmt_members(res.get('members', {}))}")


@meta_group.command("rebuild")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True,
              help="The stopped member's directory (its --data).")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="The other, healthy members.")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True, help="The cluster secret.")
def meta_rebuild(data_dir: Path, meta: str, secret_file: Path) -> None:
    """Re-seed a stopped member whose storage is corrupt from the others: it is removed from the
    cluster, its storage is set aside, and its next 'meta serve' rejoins and copies the metadata."""
    from ..lake.lake import cluster_secret
    from ..meta.server import rebuild_member
    info = trio.run(rebuild_member, data_dir, _meta_list(meta), cluster_secret(secret_file))
    click.echo(f"member {info['id']} removed from the cluster (members now: {_fmt_members(info['members'])}); "
               f"its old storage is in {info['set_aside']} (delete it once the member is back)")
    click.echo(f"start it again as before ('lakefs-fuse meta serve --id {info['id']} --data {data_dir} "
               "--listen ...'): it rejoins and receives a copy of the metadata from the leader")


def _fmt_members(members: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(members.items(), key=lambda kv: int(kv[0])))


async def _raft_status(service) -> list[dict]:
    """Every member's Raft view: ask the given servers, then the members they name."""
    seen = await service.call_each("status")
    for res in list(seen.values()):
        if isinstance(res, dict):
            for address in res.get("members", {}).values():
                if address not in service.addresses:
                    service.addresses.append(address)
    seen.update(await service.call_each("status"))
    rows, leader_last = [], None
    for res in seen.values():
        if isinstance(res, dict) and res.get("role") == "leader":
            leader_last = res
    for address, res in sorted(seen.items()):
        if not isinstance(res, dict):
            rows.append({"address": address, "health": res})
            continue
        row = {k: res.get(k) for k in ("id", "address", "role", "term", "leader", "commit_index", "last_applied",
                                       "last_index", "snapshot_index", "voters")}
        if leader_last is not None:
            follower = leader_last.get("followers", {}).get(str(res.get("id")))
            row["lag"] = 0 if res is leader_last else (
                follower["lag"] if follower else leader_last["last_index"] - res["last_applied"])
            row["health"] = "ok" if res is leader_last or (follower and follower["last_ack_s"] < 2) else "lagging"
        else:
            row["health"] = "no leader"
        rows.append(row)
    return rows


@meta_group.command("status")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="Any members.")
@click.option("--secret-file", type=click.Path(path_type=Path), required=True, help="The cluster secret.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def meta_status(meta: str, secret_file: Path, as_json: bool) -> None:
    """Each member's role, term, commit and applied index, lag and health."""
    rows = _run_service(_meta_list(meta), secret_file, _raft_status)
    _print_raft(rows, as_json)
    if not any(r.get("role") == "leader" for r in rows):
        sys.exit(3)


def _print_raft(rows: list[dict], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f"{'id':>3} {'address':<22} {'role':<10} {'term':>5} {'commit':>8} {'applied':>8} {'lag':>6}  health")
    for r in rows:
        if "role" not in r:
            click.echo(f"{'?':>3} {r['address']:<22} {'-':<10} {'-':>5} {'-':>8} {'-':>8} {'-':>6}  {r['health']}")
            continue
        click.echo(f"{r['id']:>3} {r['address']:<22} {r['role']:<10} {r['term']:>5} {r['commit_index']:>8} "
                   f"{r['last_applied']:>8} {r.get('lag', '-'):>6}  {r['health']}")


def _name_environment() -> set[str]:
    from . import config_file as cliconfig
    return cliconfig.name_environment(main)


#: Every LAKEFS_FUSE_* variable that means something (the options' names are given here, once every
#: command above is defined).
ENVIRONMENT = _name_environment()


if __name__ == "__main__":
    main()
