"""Keeping a lake whole and moving data in and out: ``scrub``, ``repair``, ``rebalance``, ``fsck``,
``gc``, ``dump``, ``load``, ``import``, ``restripe``.

Each opens the lake (:func:`.options.open_lake`; a change to an embedded lake needs it unmounted),
runs one tool of :mod:`lakefs_fuse.lake` or :mod:`lakefs_fuse.admin` under a progress bar on stderr
and prints its report. Exit status 3: something needs attention (bad shards left, chunks lost,
files that failed).

The layers are imported inside each command, so that ``lakefs-fuse --help`` and every command
start without loading what the others need (RocksDB, erasure coding, pyfuse3).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import click
import trio

from ..config import GC_GRACE_CLUSTER, GC_GRACE_EMBEDDED, IMPORT_JOBS, parse_addresses
from ..errors import UserError
from .options import echo_json, json_option, lake_options, open_lake, run_on

_start_after = click.option("--start-after", type=int, default=-1,
                            help="Resume after this chunk id (from a previous run).")


def _progress(label: str, length: int = 0, **kw):
    return click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True, **kw)


def _maintain(opening, *, repair: bool, start_after: int, as_json: bool) -> None:
    from ..lake import repair as maintenance

    async def run(lake):
        total = await maintenance.count_chunks(lake)
        with _progress("repair" if repair else "scrub", total) as bar:
            return await maintenance.scrub(lake, start_after=start_after, repair=repair,
                                           on_chunk=lambda _cid: bar.update(1))
    report = run_on(opening, run)
    if as_json:
        echo_json(report.to_json())
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


@click.command("scrub")
@lake_options
@_start_after
@json_option()
def scrub(data_dir, meta, secret_file, tls_ca, start_after: int, as_json: bool) -> None:
    """Read every shard and check it against its checksum (exit 3 if any is bad)."""
    _maintain(open_lake(data_dir, meta, secret_file, tls_ca), repair=False, start_after=start_after,
              as_json=as_json)


@click.command("repair")
@lake_options
@_start_after
@json_option()
def repair(data_dir, meta, secret_file, tls_ca, start_after: int, as_json: bool) -> None:
    """Rebuild missing, corrupt or unreachable shards onto healthy peers (an embedded lake unmounted)."""
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="repair (scrub works while mounted)")
    _maintain(opening, repair=True, start_after=start_after, as_json=as_json)


@click.command("rebalance")
@lake_options
@_start_after
@json_option()
def rebalance(data_dir, meta, secret_file, tls_ca, start_after: int, as_json: bool) -> None:
    """Move shards onto newly added peers and off removed ones (an embedded lake unmounted)."""
    from ..lake import repair as maintenance
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="rebalance")

    async def run(lake):
        with _progress("rebalance", await maintenance.count_chunks(lake)) as bar:
            return await maintenance.rebalance(lake, start_after=start_after, on_chunk=lambda _cid: bar.update(1))
    report = run_on(opening, run)
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(f"{report.chunks} chunks checked, {report.repaired} shard(s) moved")
    for cid, why in report.failed:
        click.echo(f"  chunk {cid}: {why}")
    if report.failed:
        click.echo(f"  resume with --start-after {report.cursor} after fixing the above, or run again")
        sys.exit(3)


@click.command("fsck")
@lake_options
@click.option("--repair", is_flag=True, help="Fix what is found (an embedded lake unmounted; a cluster lake live).")
@click.option("--no-shards", is_flag=True, help="Check the metadata only, not every shard's checksum.")
@json_option()
def fsck(data_dir, meta, secret_file, tls_ca, repair: bool, no_shards: bool, as_json: bool) -> None:
    """Check metadata against chunks against shards: entries naming missing inodes, wrong link
    counts, unnamed inodes (relinked into /lost+found), extents whose chunk is gone (the range
    becomes a hole; the file is listed as damaged), wrong chunk reference counts, and every shard's
    checksum. Exit 3 if anything is wrong and was not repaired."""
    from ..admin import check
    from ..lake import repair as maintenance
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="repair it" if repair else None)

    async def run(lake):
        total = 0 if no_shards else await maintenance.count_chunks(lake)
        with _progress("fsck", max(total, 1)) as bar:
            return await check.fsck(lake, repair=repair, shards=not no_shards, on_chunk=lambda _cid: bar.update(1))
    report = run_on(opening, run)
    if as_json:
        echo_json(report.to_json())
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


@click.command("gc")
@lake_options
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help=f"Seconds an orphan shard must stay an orphan before it is deleted (default {GC_GRACE_EMBEDDED:g} "
                   f"for an unmounted embedded lake, {GC_GRACE_CLUSTER:g} for a cluster lake, whose mounts may be "
                   "mid-write).")
@json_option()
def gc(data_dir, meta, secret_file, tls_ca, dry_run: bool, grace: float | None, as_json: bool) -> None:
    """Delete what nothing references: chunks in the delete queue, and orphan shards (on a peer
    but in no chunk record, or where the record places that shard elsewhere)."""
    from ..lake.gc import gc as collect
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change=None if dry_run else "collect garbage")
    if grace is None:
        grace = GC_GRACE_CLUSTER if meta else GC_GRACE_EMBEDDED

    async def run(lake):
        with _progress("gc: listing shards") as bar:
            return await collect(lake, dry_run=dry_run, grace=grace, on_shard=lambda: bar.update(1))
    report = run_on(opening, run)
    out = report.to_json()
    if as_json:
        echo_json(out)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"delete queue: {report.queued_chunks} chunk(s), {verb} "
               f"{report.queued_chunks if dry_run else report.deleted_chunks}")
    click.echo(f"orphan shards: {len(report.orphan_shards)} ({out['orphan_bytes']:,} bytes), {verb} "
               f"{len(report.orphan_shards) if dry_run else report.deleted_shards}")
    for peer, why in report.unreachable_peers:
        click.echo(f"  peer {peer} not listed: {why}")


@click.command("dump")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@lake_options
@json_option()
def dump(path: Path, data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """Write the lake's whole metadata (not file data: shards stay on their peers) to PATH, for
    backup or to move the lake (works beside live mounts; a cluster lake's is a consistent copy)."""
    from ..admin import backup
    info = run_on(open_lake(data_dir, meta, secret_file, tls_ca), partial(backup.dump, path=path))
    if as_json:
        echo_json(info)
    else:
        click.echo(f"dumped {info['keys']:,} metadata keys to {path} ({info['bytes']:,} bytes)")


@click.command("load")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="An empty (or new) directory for the restored lake (embedded).")
@click.option("--meta", "meta", default=None, metavar="HOST:PORT,...",
              help="Metadata servers holding no lake yet, to load the lake onto (instead of --data).")
@click.option("--secret-file", type=click.Path(path_type=Path), default=None,
              help="The cluster secret: needed with --meta, and with --data if the peers are peer servers "
                   "(default there: a new DATA/secret).")
@json_option()
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
    with _progress("load: metadata keys") as bar:
        if meta is not None:
            assert secret_file is not None, "--meta without --secret-file was refused above"
            info = trio.run(partial(backup.load_remote, path, parse_addresses(meta), secret_file, on_keys=bar.update))
        else:
            assert data_dir is not None, "exactly one of --data and --meta was given"
            info = backup.load(path, data_dir, secret_file=secret_file, on_keys=bar.update)
    if as_json:
        echo_json(info)
    else:
        click.echo(f"loaded {info['keys']:,} metadata keys into {data_dir or meta} (dumped from {info['source']})")


@click.command("import")
@click.argument("src", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("dest", default="/")
@lake_options
@click.option("--jobs", type=click.IntRange(1, 256), default=IMPORT_JOBS, show_default=True,
              help="Files read and written at once.")
@click.option("--overwrite", is_flag=True, help="Replace files that exist (default: skip same-size files).")
@json_option()
def import_cmd(src: Path, dest: str, data_dir, meta, secret_file, tls_ca, jobs: int, overwrite: bool,
               as_json: bool) -> None:
    """Copy the local directory SRC into the lake at DEST (a path in the lake, default its root),
    without going through FUSE; small files are packed densely. An embedded lake must be unmounted
    (or copy into its mount); a cluster lake can be imported into beside its mounts. Rerunning
    skips files already imported. Symlinks are copied as links; sockets, FIFOs and devices are
    not copied, and the summary counts them (each is listed on stderr)."""
    from ..admin import ingest
    from ..admin.importer import import_tree, scan
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="import into it (or copy into the mount)")

    async def run(lake):
        tree = await trio.to_thread.run_sync(scan, src)
        files = tree.files
        async with ingest.writing(lake, pack_delay=ingest.IMPORT_PACK_DELAY) as vfs:
            with click.progressbar(length=sum(size for _, size in files), label=f"import {len(files)} files",
                                   file=sys.stderr, show_pos=False, show_percent=True) as bar:
                report = await import_tree(vfs, src, dest, jobs=jobs, overwrite=overwrite, on_file=bar.update,
                                           tree=tree)
        return report
    report = run_on(opening, run)
    if as_json:
        echo_json(report.to_json())
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


@click.command("restripe")
@click.argument("path", default="/")
@lake_options
@json_option()
def restripe_cmd(path: str, data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """Rewrite the files under PATH (a path in the lake, default all of it) whose data is not in
    their EC profile -- after 'setfattr -n user.lakefs.ec -v 1+2 DIR' changed it -- so their chunks
    follow it; the old chunks are freed (gc). Same bytes and inodes."""
    from ..admin import ingest
    from ..admin.importer import restripe
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="restripe it")

    async def run(lake):
        async with ingest.writing(lake, pack_delay=ingest.RESTRIPE_PACK_DELAY) as vfs:
            with _progress("restripe") as bar:
                report = await restripe(vfs, path, default=(lake.config.ec_k, lake.config.ec_m),
                                        min_shard=lake.config.min_shard, on_file=lambda: bar.update(1))
        return report
    report = run_on(opening, run)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(f"{report.files} files checked, {report.rewritten} rewritten ({report.bytes / 1e6:.1f} MB)")
        for rel, why in report.failed[:20]:
            click.echo(f"  {rel}: {why}", err=True)
    if report.failed:
        sys.exit(3)


COMMANDS = [scrub, repair, rebalance, fsck, gc, dump, load, import_cmd, restripe_cmd]
