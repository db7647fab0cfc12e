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
from functools import partial
from pathlib import Path

import click
import trio

from .config import LakeConfig, MountConfig, default_data_dir, parse_ec, parse_size
from .errors import LakeError, UserError


class LakeGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"lakefs-fuse: {exc}", err=True)
            sys.exit(exc.exit_code)
        except LakeError as exc:
            click.echo(f"lakefs-fuse: {exc or os.strerror(exc.errno)}", err=True)
            sys.exit(1)


@click.group(cls=LakeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lakefs-fuse")
def main() -> None:
    """lakefs-fuse: a POSIX filesystem for training data, on erasure-coded chunks."""


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Lake data directory (default: ~/.local/share/lakefs-fuse/lake or $LAKEFS_FUSE_DATA).")
@click.option("--ec", default="4+2", show_default=True, help="Erasure-coding profile K+M (data+parity shards).")
@click.option("--chunk-size", default="4M", show_default=True, help="Largest chunk (e.g. 4M).")
@click.option("--peer", "peers", multiple=True, type=click.Path(path_type=Path),
              help="A peer directory (repeat; at least K+M). Default: 6 directories inside the data dir.")
@click.option("--net-peer", "net_peers", multiple=True, metavar="HOST:PORT[@ZONE]",
              help="A peer server (repeat; at least K+M) instead of local directories.")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None,
              help="Cluster secret shared with the peer servers (default: a new random DATA/secret).")
@click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
              help="Talk TLS to the peer servers, trusting this CA/certificate (PEM).")
def format(data_dir: Path | None, ec: str, chunk_size: str, peers: tuple[Path, ...], net_peers: tuple[str, ...],
           secret_file: Path | None, tls_ca: Path | None) -> None:
    """Create an empty lake."""
    from .mount.lake import format_lake
    k, m = parse_ec(ec)
    config = LakeConfig(ec_k=k, ec_m=m, chunk_size=parse_size(chunk_size))
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
@click.option("--read-only", is_flag=True, help="Mount read-only.")
@click.option("--attr-timeout", type=float, default=1.0, show_default=True,
              help="Seconds the kernel caches attributes and entries.")
@click.option("--dirty-budget", default="256M", show_default=True, help="Unsealed write memory before writers wait.")
@click.option("--memory-cache", default="512M", show_default=True, help="In-memory chunk cache size.")
@click.option("--pack-delay", type=float, default=2.0, show_default=True,
              help="Seconds closed files wait to be packed with the next ones (0: commit at every close).")
@click.option("--repair-delay", type=float, default=300.0, show_default=True,
              help="Seconds a peer may be down before its shards are rebuilt elsewhere in the background.")
@click.option("-o", "options", multiple=True, help="Extra FUSE mount option (repeatable).")
@click.option("--ready-fd", type=int, default=None, hidden=True)
def mount(mountpoint: Path, data_dir: Path | None, foreground: bool, allow_other: bool, read_only: bool,
          attr_timeout: float, dirty_budget: str, memory_cache: str, pack_delay: float, repair_delay: float,
          options: tuple[str, ...],
          ready_fd: int | None) -> None:
    """Mount a lake at MOUNTPOINT (daemonizes; returns once the mount is live)."""
    from .mount import daemon
    from .mount.lake import format_lake, is_lake
    if data_dir is None:
        data_dir = default_data_dir()
        if not is_lake(data_dir) and not (data_dir.exists() and any(data_dir.iterdir())):
            format_lake(data_dir, LakeConfig())
    cfg = MountConfig(mountpoint=mountpoint, data_dir=data_dir, read_only=read_only, allow_other=allow_other,
                      attr_timeout=attr_timeout, entry_timeout=attr_timeout,
                      dirty_budget=parse_size(dirty_budget), memory_cache=parse_size(memory_cache),
                      pack_delay=pack_delay, repair_delay=repair_delay, extra_fuse_options=tuple(options))
    cfg.validate()
    if foreground:
        logging.basicConfig(level=os.environ.get("LAKEFS_FUSE_LOG", "INFO"),
                            format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        sys.exit(daemon.serve(cfg, ready_fd))
    daemon.check_mountpoint(mountpoint)
    from .mount.lake import Lake, in_use
    if in_use(data_dir):
        raise UserError(f"{data_dir} is already mounted by another lakefs-fuse process")
    Lake.open(data_dir, read_only=True).close()  # fail here, with the reason, if it is no lake
    args = [str(Path(mountpoint).resolve()), "--data", str(Path(data_dir).resolve()),
            "--attr-timeout", str(attr_timeout), "--dirty-budget", dirty_budget, "--memory-cache", memory_cache,
            "--pack-delay", str(pack_delay), "--repair-delay", str(repair_delay)]
    args += ["--allow-other"] if allow_other else []
    args += ["--read-only"] if read_only else []
    for o in options:
        args += ["-o", o]
    daemon.spawn(args, Path(mountpoint).resolve(), Path(data_dir) / "mount.log")
    click.echo(f"mounted {data_dir} at {mountpoint}")


@main.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--lazy", is_flag=True, help="Detach now; finish when the mount is no longer busy.")
def umount(mountpoint: Path, lazy: bool) -> None:
    """Flush and unmount a lakefs-fuse mount."""
    from .mount import daemon
    daemon.unmount(mountpoint, lazy=lazy)


# ----------------------------------------------------------------- inspection

def _resolve(path: Path, data_dir: Path | None):
    """(Lake opened read-only, inode number) for a path in a mount or, with --data, in a lake."""
    from .mount import daemon
    from .mount.lake import Lake
    if data_dir is not None:
        lake = Lake.open(data_dir, read_only=True)
        ino = 1
        for part in [p for p in str(path).split("/") if p and p != "."]:
            ino = lake.sm.lookup(ino, part.encode()).ino
        return lake, ino
    p = Path(path).absolute()
    try:
        s = os.lstat(p)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    best = None
    for _src, mnt, fstype in daemon.mounts():
        if fstype == daemon.FSTYPE and (str(p) == mnt or str(p).startswith(mnt.rstrip("/") + "/")):
            if best is None or len(mnt) > len(best):
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
    return Lake.open(Path(reg["data_dir"]), read_only=True), s.st_ino


def _kind(mode: int) -> str:
    return {st.S_IFREG: "file", st.S_IFDIR: "dir", st.S_IFLNK: "symlink", st.S_IFIFO: "fifo",
            st.S_IFSOCK: "socket", st.S_IFCHR: "chardev", st.S_IFBLK: "blockdev"}.get(st.S_IFMT(mode), "?")


def _file_info(lake, ino: int, *, shards: bool) -> dict:
    from .meta.schema import ChunkRecord
    inode = lake.sm.getattr(ino)
    info = {"inode": ino, "type": _kind(inode.mode), "mode": f"{st.S_IMODE(inode.mode):04o}",
            "size": inode.size, "nlink": inode.nlink, "uid": inode.uid, "gid": inode.gid,
            "atime_ns": inode.atime_ns, "mtime_ns": inode.mtime_ns, "ctime_ns": inode.ctime_ns}
    if not inode.is_reg:
        return info
    peers = {p.peer_id: p for p in lake.peer_records}
    extents = lake.sm.extents(ino, 0, 1 << 62)
    chunk_ids = sorted({e.chunk_id for e in extents})
    health = {}
    records: dict[int, ChunkRecord] = {}
    for cid in chunk_ids:
        try:
            records[cid] = lake.sm.chunk(cid)
        except LakeError:
            continue
    if shards:
        async def check():
            for cid, rec in records.items():
                health[cid] = await lake.chunks.verify(lake.layout_of(rec))
        trio.run(check)
    info["extents"] = []
    for e in extents:
        rec = records.get(e.chunk_id)
        item = {"file_offset": e.file_off, "length": e.length, "chunk": e.chunk_id, "chunk_offset": e.chunk_off}
        if rec:
            item["ec"] = f"{rec.k}+{rec.m}"
            item["chunk_length"] = rec.length
            if shards:
                item["shards"] = [{"index": i, "peer": pid, "address": peers[pid].address if pid in peers else "?",
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


@main.command("stat")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Read the lake in DIR directly; PATH is then a path inside the lake.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stat_cmd(path: Path, data_dir: Path | None, as_json: bool) -> None:
    """Inode, size, times and every extent's chunk, EC profile and shard health."""
    lake, ino = _resolve(path, data_dir)
    try:
        info = _file_info(lake, ino, shards=True)
    finally:
        lake.close()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for key in ("inode", "type", "mode", "size", "nlink", "uid", "gid", "mtime_ns", "chunks", "health"):
        if key in info:
            click.echo(f"{key:>8}: {info[key]}")
    for e in info.get("extents", []):
        click.echo(f"  extent @{e['file_offset']} +{e['length']} -> chunk {e['chunk']} @{e['chunk_offset']} "
                   f"EC {e.get('ec')}")
        for s in e.get("shards", []):
            click.echo(f"      shard {s['index']}: peer {s['peer']} {s['address']} {s['health']}")


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
    try:
        if not lake.sm.getattr(ino).is_dir:
            raise UserError(f"{path} is not a directory")
        after = 0
        while True:
            batch = lake.sm.readdir(ino, after, 1000)
            if not batch:
                break
            for name, child, cookie in batch:
                info = _file_info(lake, child.ino, shards=long)
                info["name"] = name.decode(errors="surrogateescape")
                ecs = sorted({e.get("ec", "") for e in info.get("extents", [])})
                info["ec"] = ",".join(ecs)
                info.pop("extents", None)
                rows.append(info)
                after = cookie
    finally:
        lake.close()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        line = f"{r['type']:<8} {r['size']:>12} {r['name']}"
        if long or True:
            line = f"{r['type']:<8} {r['mode']} {r['size']:>12} chunks={r.get('chunks', 0):<4} ec={r['ec'] or '-':<5}"
            if long:
                line += f" health={r.get('health', '-')}"
            line += f" {r['name']}"
        click.echo(line)


# ---------------------------------------------------------------- maintenance

def _maintain(data_dir: Path | None, *, repair: bool, start_after: int, as_json: bool) -> None:
    from .mount import maintenance
    from .mount.lake import Lake, in_use
    data_dir = data_dir or default_data_dir()
    if repair:
        if in_use(data_dir):
            raise UserError(f"{data_dir} is mounted; unmount it to repair (scrub works while mounted)")
        lake = Lake.open(data_dir, lock=True)
    else:
        lake = Lake.open(data_dir, read_only=True)
    try:
        total = maintenance.count_chunks(lake)
        with click.progressbar(length=total, label="repair" if repair else "scrub", file=sys.stderr,
                               show_pos=True) as bar:
            report = trio.run(lambda: maintenance.scrub(lake, start_after=start_after, repair=repair,
                                                        on_chunk=lambda _cid: bar.update(1)))
    finally:
        lake.close()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        bad = ", ".join(f"{n} {h}" for h, n in sorted(report.bad.items())) or "none"
        click.echo(f"{report.chunks} chunks, {report.shards} shards checked; bad shards: {bad}")
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
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help="The lake's data directory.")
@click.option("--start-after", type=int, default=-1, help="Resume after this chunk id (from a previous run).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def scrub(data_dir: Path | None, start_after: int, as_json: bool) -> None:
    """Read every shard and check it against its checksum (exit 3 if any is bad)."""
    _maintain(data_dir, repair=False, start_after=start_after, as_json=as_json)


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help="The lake's data directory.")
@click.option("--start-after", type=int, default=-1, help="Resume after this chunk id (from a previous run).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def repair(data_dir: Path | None, start_after: int, as_json: bool) -> None:
    """Rebuild missing, corrupt or unreachable shards onto healthy peers (lake unmounted)."""
    _maintain(data_dir, repair=True, start_after=start_after, as_json=as_json)


@main.command()
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help="The lake's data directory.")
@click.option("--start-after", type=int, default=-1, help="Resume after this chunk id (from a previous run).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def rebalance(data_dir: Path | None, start_after: int, as_json: bool) -> None:
    """Move shards onto newly added peers and off removed ones (lake unmounted)."""
    from .mount import maintenance
    from .mount.lake import Lake, in_use
    data_dir = data_dir or default_data_dir()
    if in_use(data_dir):
        raise UserError(f"{data_dir} is mounted; unmount it to rebalance")
    lake = Lake.open(data_dir, lock=True)
    try:
        total = maintenance.count_chunks(lake)
        with click.progressbar(length=total, label="rebalance", file=sys.stderr, show_pos=True) as bar:
            report = trio.run(lambda: maintenance.rebalance(lake, start_after=start_after,
                                                            on_chunk=lambda _cid: bar.update(1)))
    finally:
        lake.close()
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
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help="The lake's data directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(data_dir: Path | None, as_json: bool) -> None:
    """Peers (up/down, zone, capacity, shard count) and chunks that are degraded."""
    from .mount import maintenance
    from .mount.lake import Lake
    lake = Lake.open(data_dir or default_data_dir(), read_only=True)
    try:
        info = maintenance.status(lake)
    finally:
        lake.close()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    click.echo(f"EC {info['ec']}, {info['chunks']} chunks, {len(info['degraded'])} degraded, "
               f"{len(info['unreadable'])} unreadable, {info['delete_queue']} queued for deletion")
    for r in info["peers"]:
        up = "up" if r.get("reachable") else "DOWN"
        cap = f"{r['avail'] / 1e9:.1f}/{r['total'] / 1e9:.1f} GB free" if r.get("reachable") else ""
        click.echo(f"{r['id']:>3} {r['kind']:<4} {r['address']:<40} zone={r['zone'] or '-':<6} {r['state']:<8} "
                   f"{up:<5} shards={r['shards']:<8} {cap}")


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
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None, help="Serve TLS with this certificate (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path), default=None, help="The certificate's private key (PEM).")
def peer_serve(data_dir: Path, listen: str, zone: str, secret_file: Path, tls_cert: Path | None,
               tls_key: Path | None) -> None:
    """Serve shards from DIR to lakes that know the cluster secret (SIGTERM stops it)."""
    import signal
    import ssl

    from . import wire
    from .chunks.peer_server import PeerServer
    try:
        host, port = wire.parse_address(listen)
        secret = wire.load_secret(secret_file)
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        ssl_context = wire.server_tls_context(str(tls_cert), str(tls_key)) if tls_cert else None
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise UserError(str(exc)) from None
    logging.basicConfig(level=os.environ.get("LAKEFS_FUSE_LOG", "INFO"),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    try:
        server = PeerServer(data_dir, zone=zone)
    except (OSError, ValueError) as exc:
        raise UserError(f"{data_dir}: {exc}") from None

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            try:
                bound = await nursery.start(partial(server.serve, ssl_context=ssl_context), host, port, secret)
            except OSError as exc:
                raise UserError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
            logging.getLogger("lakefs_fuse.peer").info("peer %s serving %s on %s:%s", server.ident, data_dir,
                                                       host, bound)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except BaseExceptionGroup as group:  # a UserError raised inside the nursery
        users = [e for e in group.exceptions if isinstance(e, UserError)]
        if users:
            raise users[0] from None
        raise


def _open_for_change(data_dir: Path | None):
    from .mount.lake import Lake, in_use
    data_dir = data_dir or default_data_dir()
    if in_use(data_dir):
        raise UserError(f"{data_dir} is mounted; unmount it to change its peers")
    return Lake.open(data_dir, lock=True)


@peer.command("add")
@click.argument("address", metavar="HOST:PORT")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help="The lake's data directory.")
@click.option("--zone", default=None, help="Failure zone (default: what the peer reports).")
@click.option("--weight", type=float, default=None, help="Placement weight (default: the peer's capacity in TB).")
def peer_add(address: str, data_dir: Path | None, zone: str | None, weight: float | None) -> None:
    """Add a running peer server to a lake (it must answer with the lake's secret)."""
    from .chunks.netstore import NetStore
    from .mount.lake import parse_net_peer
    address, _ = parse_net_peer(address)
    lake = _open_for_change(data_dir)
    try:
        if any(p.kind == "net" and p.address == address for p in lake.peer_records):
            raise UserError(f"{address} is already a peer of this lake")

        async def probe() -> dict:
            store = NetStore(-1, address, lake.secret or b"", call_timeout=5, connect_timeout=5,
                             ssl_context=lake.tls_context)
            try:
                return await store.stat()
            finally:
                await store.aclose()
        if lake.secret is None:
            raise UserError("this lake has no cluster secret (DATA/secret)")
        try:
            info = trio.run(probe)
        except Exception as exc:  # PeerUnavailable and friends: one clear line
            raise UserError(f"peer {address} does not answer: {exc}") from None
        pid = max((p.peer_id for p in lake.peer_records), default=-1) + 1
        w = weight if weight is not None else round(max(0.001, info["total"] / 1e12), 3)
        z = zone if zone is not None else info.get("zone", "")
        lake.sm.apply(["register_peer", pid, ["net", address, z, w, "up", {"uuid": info.get("id")}]], sync=True)
        click.echo(f"added peer {pid}: {address} zone={z or '-'} weight={w}")
    finally:
        lake.close()


@peer.command("remove")
@click.argument("peer_id", type=int)
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help="The lake's data directory.")
def peer_remove(peer_id: int, data_dir: Path | None) -> None:
    """Stop placing new shards on a peer (its shards stay readable until rebalanced)."""
    lake = _open_for_change(data_dir)
    try:
        rec = next((p for p in lake.peer_records if p.peer_id == peer_id), None)
        if rec is None:
            raise UserError(f"no peer {peer_id} in this lake")
        lake.sm.apply(["register_peer", peer_id, [rec.kind, rec.address, rec.zone, rec.weight, "removed",
                                                  rec.extra]], sync=True)
        click.echo(f"peer {peer_id} ({rec.address}) removed from placement")
    finally:
        lake.close()


@peer.command("list")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help="The lake's data directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def peer_list(data_dir: Path | None, as_json: bool) -> None:
    """The lake's peers: kind, address, zone, weight, state, and whether each answers now."""
    from .mount.lake import Lake
    lake = Lake.open(data_dir or default_data_dir(), read_only=True)
    rows = []
    try:
        async def check() -> None:
            async def one(p) -> None:
                row = {"id": p.peer_id, "kind": p.kind, "address": p.address, "zone": p.zone, "weight": p.weight,
                       "state": p.state, "reachable": False}
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


if __name__ == "__main__":
    main()
