"""``peer serve`` (:mod:`lakefs_fuse.admin.serve`) and a lake's peers: ``peer add``, ``remove``,
``weight``, ``list`` (:mod:`lakefs_fuse.admin.peers`).

The layers are imported inside each command, so that ``lakefs-fuse --help`` and every command
start without loading what the others need (RocksDB, erasure coding, pyfuse3).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from ..config import DEFAULT_PEER_WEIGHT
from .options import echo_json, json_option, lake_options, log_setup, open_lake, run_on


@click.group("peer")
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
    from ..admin import serve
    log_setup()
    serve.serve_peer(data_dir, listen, secret_file=secret_file, zone=zone, tls_cert=tls_cert, tls_key=tls_key,
                     metrics=metrics)


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
    from ..admin import peers as lake_peers
    from ..lake.format import parse_net_peer
    target = parse_net_peer(address)
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="change its peers")
    rec, back = run_on(opening, partial(lake_peers.add_peer, target=target, zone=zone, weight=weight))
    click.echo(f"added peer {rec.peer_id}{' back' if back else ''}: {rec.address} zone={rec.zone or '-'} "
               f"weight={weight}")


@peer.command("remove")
@click.argument("peer_id", type=int)
@lake_options
def peer_remove(peer_id: int, data_dir, meta, secret_file, tls_ca) -> None:
    """Stop placing new shards on a peer (its shards stay readable until rebalanced)."""
    from ..admin import peers as lake_peers
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="change its peers")
    rec = run_on(opening, partial(lake_peers.remove_peer, peer_id=peer_id))
    click.echo(f"peer {peer_id} ({rec.address}) removed from placement")


@peer.command("weight")
@click.argument("peer_id", type=int)
@click.argument("weight", type=click.FloatRange(min=0))
@lake_options
def peer_weight(peer_id: int, weight: float, data_dir, meta, secret_file, tls_ca) -> None:
    """Set a peer's placement weight: its share of new shards relative to the others' (0: none).
    Shards already placed stay where they are ('rebalance' moves them). Running mounts of a
    cluster lake follow within seconds."""
    from ..admin import peers as lake_peers
    opening = open_lake(data_dir, meta, secret_file, tls_ca, change="change its peers")
    rec = run_on(opening, partial(lake_peers.set_weight, peer_id=peer_id, weight=weight))
    click.echo(f"peer {peer_id} ({rec.address}): weight {rec.weight} -> {weight}")


@peer.command("list")
@lake_options
@json_option("Machine-readable output.")
def peer_list(data_dir, meta, secret_file, tls_ca, as_json: bool) -> None:
    """The lake's peers: kind, address, zone, weight, state, and whether each answers now."""
    from ..admin import peers as lake_peers
    rows = run_on(open_lake(data_dir, meta, secret_file, tls_ca), lake_peers.list_peers)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        up = "up" if r["reachable"] else "DOWN"
        cap = f"{r.get('avail', 0) / 1e9:.1f}/{r.get('total', 0) / 1e9:.1f} GB free" if r["reachable"] else \
            r.get("error", "")
        click.echo(f"{r['id']:>3} {r['kind']:<4} {r['address']:<40} zone={r['zone'] or '-':<6} "
                   f"w={r['weight']:<6} {r['state']:<8} {up:<5} {cap}")
