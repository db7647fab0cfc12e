"""``meta serve`` (:mod:`lakefs_fuse.admin.serve`) and a metadata cluster's membership and Raft
state: ``meta add``, ``remove``, ``rebuild``, ``status`` (:mod:`lakefs_fuse.admin.members`).

The layers are imported inside each command, so that ``lakefs-fuse --help`` and every command
start without loading what the others need (RocksDB, erasure coding, pyfuse3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import META_SNAPSHOT_EVERY, parse_addresses, parse_members
from ..errors import UserError
from .options import echo_json, json_option, log_setup


@click.group("meta")
def meta_group() -> None:
    """Metadata servers: run one, change the cluster's membership, show its Raft state."""


_secret_option = click.option("--secret-file", type=click.Path(path_type=Path), required=True,
                              help="The cluster secret.")


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
@_secret_option
@click.option("--snapshot-every", type=click.IntRange(min=10), default=META_SNAPSHOT_EVERY, show_default=True,
              help="Snapshot the state and truncate the log every this many applied entries.")
@click.option("--metrics", default=None, metavar="[HOST:]PORT",
              help="Serve Prometheus /metrics, /healthz and /readyz (ready: a leader is known) here "
                   "(a bare PORT binds 127.0.0.1).")
def meta_serve(node_id: int, data_dir: Path, listen: str, peers: str | None, join: str | None,
               secret_file: Path, snapshot_every: int, metrics: str | None) -> None:
    """Serve one replica of the lake's metadata (SIGTERM stops it; a restart recovers its log)."""
    from ..admin import serve
    if peers and join:
        raise UserError("give --peers (found a cluster) or --join (join one), not both")
    if node_id < 1:
        raise UserError("--id must be >= 1")
    if join:
        parse_addresses(join, "--join")
    members = parse_members(peers) if peers else None
    log_setup()
    serve.serve_meta(node_id, data_dir, listen, secret_file=secret_file, members=members, join=join,
                     snapshot_every=snapshot_every, metrics=metrics)


@meta_group.command("add")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="Any running members.")
@click.option("--id", "node_id", type=int, required=True, help="The new member's id.")
@click.option("--address", required=True, metavar="HOST:PORT", help="Where the new member listens.")
@_secret_option
def meta_add(meta: str, node_id: int, address: str, secret_file: Path) -> None:
    """Add a metadata server (started with 'meta serve --join') as a voting member."""
    from ..admin import members as cluster
    parse_addresses(address, "--address")
    now = cluster.add_member(parse_addresses(meta), secret_file, node_id, address)
    click.echo(f"member {node_id} ({address}) added; members: {_fmt_members(now)}")


@meta_group.command("remove")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="Any running members.")
@click.option("--id", "node_id", type=int, required=True, help="The member to remove.")
@_secret_option
def meta_remove(meta: str, node_id: int, secret_file: Path) -> None:
    """Remove a metadata server from the cluster (it may then be stopped)."""
    from ..admin import members as cluster
    now = cluster.remove_member(parse_addresses(meta), secret_file, node_id)
    click.echo(f"member {node_id} removed; members: {_fmt_members(now)}")


@meta_group.command("rebuild")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True,
              help="The stopped member's directory (its --data).")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="The other, healthy members.")
@_secret_option
def meta_rebuild(data_dir: Path, meta: str, secret_file: Path) -> None:
    """Re-seed a stopped member whose storage is corrupt from the others: it is removed from the
    cluster, its storage is set aside, and its next 'meta serve' rejoins and copies the metadata."""
    from ..admin import members as cluster
    info = cluster.rebuild_member(data_dir, parse_addresses(meta), secret_file)
    click.echo(f"member {info['id']} removed from the cluster (members now: {_fmt_members(info['members'])}); "
               f"its old storage is in {info['set_aside']} (delete it once the member is back)")
    click.echo(f"start it again as before ('lakefs-fuse meta serve --id {info['id']} --data {data_dir} "
               "--listen ...'): it rejoins and receives a copy of the metadata from the leader")


@meta_group.command("status")
@click.option("--meta", "meta", required=True, metavar="HOST:PORT,...", help="Any members.")
@_secret_option
@json_option("Machine-readable output.")
def meta_status(meta: str, secret_file: Path, as_json: bool) -> None:
    """Each member's role, term, commit and applied index, lag and health."""
    from ..admin import members as cluster
    from ..admin.inspect import has_leader
    rows = cluster.cluster_status(parse_addresses(meta), secret_file)
    print_raft(rows, as_json)
    if not has_leader(rows):
        sys.exit(3)


def _fmt_members(members: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(members.items(), key=lambda kv: int(kv[0])))


def print_raft(rows: list[dict], as_json: bool) -> None:
    """Raft rows (:func:`lakefs_fuse.admin.inspect.raft_status`) as JSON or a table."""
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'id':>3} {'address':<22} {'role':<10} {'term':>5} {'commit':>8} {'applied':>8} {'lag':>6}  health")
    for r in rows:
        if "role" not in r:
            click.echo(f"{'?':>3} {r['address']:<22} {'-':<10} {'-':>5} {'-':>8} {'-':>8} {'-':>6}  {r['health']}")
            continue
        click.echo(f"{r['id']:>3} {r['address']:<22} {r['role']:<10} {r['term']:>5} {r['commit_index']:>8} "
                   f"{r['last_applied']:>8} {r.get('lag', '-'):>6}  {r['health']}")
