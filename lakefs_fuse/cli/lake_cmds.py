"""The lake's life: ``format``, ``mount``, ``umount``, ``status``, ``install-mount-helper``.

``mount`` builds a :class:`~lakefs_fuse.config.MountConfig` (whose ``build`` decides the defaults
that depend on --meta or --dataset) and hands it to :mod:`lakefs_fuse.mount.daemon`: ``-f`` serves
in this process, otherwise the daemon is this same command run again in the background with
``-f`` and every option the user gave (:func:`_child_options`).

The layers are imported inside each command, so that ``lakefs-fuse --help`` and every command
start without loading what the others need (RocksDB, erasure coding, pyfuse3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import (
    CLUSTER_PACK_DELAY,
    DATASET_ATTR_TIMEOUT,
    UMOUNT_BUSY_WAIT,
    LakeConfig,
    MountConfig,
    default_data_dir,
    format_size,
    parse_addresses,
    parse_ec,
    parse_size,
)
from ..errors import UserError
from .meta_cmds import print_raft
from .options import echo_json, json_option, lake_options, log_setup, open_lake, run_on


@click.command("install-mount-helper")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), default=Path("/sbin"),
              show_default=True, help="Where mount(8) looks for mount.fuse.lakefs.")
@click.option("--remove", is_flag=True, help="Remove the helper instead.")
def install_mount_helper(directory: Path, remove: bool) -> None:
    """Install /sbin/mount.fuse.lakefs, so 'mount -t fuse.lakefs SOURCE DIR -o ...' and /etc/fstab
    lines of type fuse.lakefs mount lakes (SOURCE: a lake's data directory, meta:HOST:PORT,... or
    'lakefs' for the default lake; options: the mount command's, e.g. dataset,cache_size=20G)."""
    from .mounthelper import install, uninstall
    if remove:
        click.echo(f"removed {uninstall(directory)}")
    else:
        click.echo(f"installed {install(directory)} (runs {sys.executable})")


@click.command("format")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Lake data directory (default: ~/.local/share/lakefs-fuse/lake or $LAKEFS_FUSE_DATA).")
@click.option("--ec", default=f"{LakeConfig.ec_k}+{LakeConfig.ec_m}", show_default=True,
              help="Erasure-coding profile K+M (data+parity shards).")
@click.option("--chunk-size", default=format_size(LakeConfig.chunk_size), show_default=True,
              help="Largest chunk (e.g. 4M).")
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
def format_cmd(data_dir: Path | None, ec: str, chunk_size: str, peers: tuple[Path, ...], net_peers: tuple[str, ...],
               s3_peers: tuple[str, ...], secret_file: Path | None, tls_ca: Path | None, meta: str | None) -> None:
    """Create an empty lake (embedded in DATA, or on metadata servers with --meta)."""
    from ..lake.format import format_lake, format_remote
    for s3 in s3_peers:
        if not s3.startswith("s3://"):
            raise UserError(f"--s3-peer {s3!r}: expected s3://BUCKET[/PREFIX]")
    net_peers = net_peers + s3_peers
    k, m = parse_ec(ec)
    config = LakeConfig(ec_k=k, ec_m=m, chunk_size=parse_size(chunk_size))
    if meta is not None:
        if data_dir is not None or peers:
            raise UserError("--meta formats a cluster lake: --data and --peer do not apply")
        addresses = parse_addresses(meta)
        format_remote(addresses, config, list(net_peers), secret_file)
        click.echo(f"formatted lake on {','.join(addresses)}: EC {k}+{m}, chunk {config.chunk_size >> 10} KiB, "
                   f"{len(net_peers)} peers")
        return
    data_dir = data_dir or default_data_dir()
    format_lake(data_dir, config, [str(p) for p in peers] or None, list(net_peers) or None, secret_file, tls_ca)
    n = len(peers) or len(net_peers) or max(6, k + m)
    click.echo(f"formatted lake in {data_dir}: EC {k}+{m}, chunk {config.chunk_size >> 10} KiB, {n} peers")


@click.command("mount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Lake data directory; a missing default lake is formatted on first use.")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (log to stderr).")
@click.option("--allow-other", is_flag=True, help="Let other users access the mount.")
@click.option("--read-only", is_flag=True, help="Mount read-only (every change fails with EROFS).")
@click.option("--dataset", is_flag=True,
              help="Dataset mode for training: read-only, attributes/entries/negative lookups cached for "
                   f"--attr-timeout (default {DATASET_ATTR_TIMEOUT:g} s here), directory listings cached; with "
                   "--meta the metadata is read from a snapshot taken at mount time (remount to see changes).")
@click.option("--attr-timeout", type=float, default=None,
              help=f"Seconds the kernel caches attributes and entries (default {MountConfig.attr_timeout:g}; "
                   f"{DATASET_ATTR_TIMEOUT:g} with --dataset).")
@click.option("--dirty-budget", default=format_size(MountConfig.dirty_budget), show_default=True,
              help="Unsealed write memory before writers wait.")
@click.option("--memory-cache", default=format_size(MountConfig.memory_cache), show_default=True,
              help="In-memory chunk cache size.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Local disk cache of chunk ranges, kept across remounts (a subdirectory per lake). "
                   "Default: off for an embedded lake (its peers are local), /var/cache/lakefs-fuse with --meta.")
@click.option("--cache-size", default=format_size(MountConfig.cache_size), show_default=True,
              help="Disk cache size.")
@click.option("--cache-free-floor", default=format_size(MountConfig.cache_free_floor), show_default=True,
              help="The disk cache stops growing when its filesystem has less free space than this.")
@click.option("--no-disk-cache", is_flag=True, help="No disk cache, even with --meta.")
@click.option("--pack-delay", type=float, default=None,
              help="Seconds closed files wait to be packed with the next ones (0: commit at every close). "
                   f"Default {MountConfig.pack_delay:g} for an embedded lake, {CLUSTER_PACK_DELAY:g} with --meta "
                   "(close-to-open between mounts).")
@click.option("--meta", "meta", default=None, metavar="HOST:PORT,...",
              help="Mount a cluster lake served by these metadata servers.")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None,
              help="The cluster secret (with --meta).")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
              help="Talk TLS to the peer servers, trusting this CA (with --meta).")
@click.option("--meta-timeout", type=float, default=MountConfig.meta_timeout, show_default=True,
              help="Seconds one request may wait for the metadata service in total before failing with EIO "
                   "(with --meta).")
@click.option("--repair-delay", type=float, default=MountConfig.repair_delay, show_default=True,
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
    from ..mount import daemon
    addresses = parse_addresses(meta) if meta is not None else []
    if addresses and data_dir is not None:
        raise UserError("give either --data (embedded lake) or --meta (cluster lake), not both")
    if addresses and secret_file is None:
        raise UserError("--meta needs --secret-file (the cluster secret)")
    if not addresses and data_dir is None:
        data_dir = daemon.default_lake()
    cfg = MountConfig.build(mountpoint, data_dir=data_dir, meta=addresses, secret_file=secret_file, tls_ca=tls_ca,
                            read_only=read_only, dataset=dataset, allow_other=allow_other, attr_timeout=attr_timeout,
                            dirty_budget=parse_size(dirty_budget), memory_cache=parse_size(memory_cache),
                            pack_delay=pack_delay, repair_delay=repair_delay, meta_timeout=meta_timeout,
                            extra_fuse_options=tuple(options), compact_interval=compact_interval,
                            cache_dir=cache_dir, disk_cache=not no_disk_cache, cache_size=parse_size(cache_size),
                            cache_free_floor=parse_size(cache_free_floor), metrics=metrics)
    cfg.validate()
    if daemon.clear_dead_mount(mountpoint):
        click.echo(f"lakefs-fuse: {mountpoint} was a mount whose daemon had exited; unmounted it", err=True)
    if foreground:
        log_setup()
        sys.exit(daemon.serve(cfg, ready_fd))
    log_path = daemon.start(cfg, _child_options(ctx, data_dir))
    where = f"the lake on {','.join(addresses)}" if addresses else str(data_dir)
    click.echo(f"mounted {where} at {mountpoint}" + (f" (log: {log_path})" if addresses else ""))


def _child_options(ctx: click.Context, data_dir: Path | None) -> list[str]:
    """The daemon's own options: every one the user gave, with paths made absolute."""
    args = []
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


@click.command("umount")
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


@click.command("status")
@lake_options
@json_option("Machine-readable output.")
def status(data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """Peers (up/down, zone, capacity, shard count), degraded chunks, and (with --meta) each
    metadata server's Raft role, term, commit/applied index, lag and health."""
    from ..admin import inspect
    info = run_on(open_lake(data_dir, meta, secret_file, tls_ca), inspect.lake_status)
    if as_json:
        echo_json(info)
    else:
        if "meta" in info:
            print_raft(info["meta"], False)
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
    if inspect.needs_attention(info):
        sys.exit(3)  # like scrub: a peer does not answer, or chunks are below full redundancy


COMMANDS = [install_mount_helper, format_cmd, mount, umount, status]
