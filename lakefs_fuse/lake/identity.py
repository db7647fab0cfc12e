"""Whose lake this is and whose storage it may write: the marker, the secret, the peers' owners.

* The marker (``lake.json``, written last by format: a directory is a lake once it exists) holds
  the lake's id (``uuid``, which owns its peers' shards) and where it was made (``path``).
* :func:`settle_identity` -- at a writable open of an embedded lake: a *copy* of a data directory
  (found elsewhere while the original is still there) becomes a lake of its own with a new id; a
  *moved* one keeps its id; every local peer directory must belong to this lake.
* :func:`claim_net_peers` / :func:`check_remote_owners` -- peer servers and buckets: reachable,
  sharing our secret, and holding no other lake's shards (format refuses; a mount refuses too,
  and claims the ones nobody owns yet).
* :func:`cluster_secret` and :func:`tls_context` -- the trust a lake's connections need.

Imports ``chunks`` (stores, owner files), ``meta.schema`` (peer records) and the base layer.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import ssl
import uuid
from functools import partial
from pathlib import Path

import trio

from .. import wire
from ..chunks.netstore import NetStore
from ..chunks.s3store import S3Store
from ..chunks.store import ForeignLake, PeerUnavailable, read_owner, write_owner
from ..errors import UserError
from ..meta.schema import PeerRecord
from ..private import owner_only_umask

log = logging.getLogger("lakefs_fuse.lake.lake")  # the lake's log, as before the split

MARKER = "lake.json"
FORMAT_NAME = "lakefs-fuse-lake"
FORMAT_VERSION = 1


def is_lake(data_dir: Path) -> bool:
    return (data_dir / MARKER).is_file()


def write_marker(data_dir: Path, secret_file: Path | None, extra: dict, lake_id: str | None = None) -> None:
    """The lake's marker file, written last: a directory is a lake once it exists. It holds the
    lake's identity (``uuid``, its shards' owner) and where it was made (``path``: a copy is told
    from a move by the original still being there). The cluster secret is ``secret_file``
    (recorded) or a new random ``<data>/secret``."""
    marker = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "uuid": lake_id or str(uuid.uuid4()),
              "path": str(Path(data_dir).resolve()), **extra}
    if secret_file is not None:
        marker["secret_file"] = str(Path(secret_file).resolve())
    else:
        fd = os.open(data_dir / "secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    tmp = data_dir / (MARKER + ".tmp")
    with owner_only_umask():
        tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, data_dir / MARKER)


def cluster_secret(secret_file: Path | None) -> bytes:
    if secret_file is None:
        raise UserError("a lake on metadata servers needs --secret-file (the cluster secret)")
    try:
        return wire.load_secret(secret_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"secret file {secret_file}: {exc}") from None


def tls_context(tls_ca: Path | str | None) -> ssl.SSLContext | None:
    """The client TLS context trusting ``tls_ca`` (None: plain TCP), or one line saying what is wrong."""
    if tls_ca is None:
        return None
    try:
        return wire.client_tls_context(str(tls_ca))
    except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError)
        raise UserError(f"TLS CA file {tls_ca}: {exc}") from None


def peer_root(data_dir: Path | None, address: str) -> str:
    """A local peer directory's path: recorded relative to the data directory (the default peers
    inside it) or absolute (``--peer DIR`` elsewhere)."""
    if data_dir is None or os.path.isabs(address):
        return address
    return str(Path(data_dir).resolve() / address)


def settle_identity(data_dir: Path, marker: dict, peers: list[PeerRecord]) -> tuple[dict, dict[int, str]]:
    """Make sure this lake writes only to storage that is its own; returns the (updated) marker
    and where each local peer directory is now.

    A data directory remembers where it was made (``path``). Found elsewhere while a lake with
    the same id is still there, it is a *copy*: it takes a new id, and its peer directories
    inside it (copies too) become its own; storage outside it is the original's, so the copy
    refuses to open (one line). Found elsewhere with the original gone, it was *moved*: it keeps
    its id. Every local peer directory must belong to this lake (``lake-owner.json``); one
    that belongs to another lake is refused, an unclaimed one (a lake made before owners were
    recorded) is claimed. Peer paths recorded absolute inside the old place follow the lake.
    """
    here = data_dir.resolve()
    recorded = Path(marker["path"]) if marker.get("path") else None
    moved_from = recorded if recorded is not None and recorded != here else None
    original = None
    if moved_from is not None:
        try:
            other = json.loads((moved_from / MARKER).read_text())
        except (OSError, ValueError):
            other = None
        if other is not None and other.get("uuid") == marker.get("uuid"):
            original = moved_from
    roots: dict[int, str] = {}
    for p in peers:
        if p.kind in ("net", "s3"):
            if original is not None:
                raise UserError(f"{here} is a copy of the lake in {original} and shares its peer {p.address}: "
                                "writing here would change that lake's files; mount the original, or give "
                                "the copy storage of its own (format a new lake and copy the files in)")
            continue
        root = peer_root(data_dir, p.address)
        if moved_from is not None and Path(root).is_relative_to(moved_from):
            root = str(here / Path(root).relative_to(moved_from))  # a legacy absolute path inside the lake
        roots[p.peer_id] = root
    outside = [r for r in roots.values() if not Path(r).is_relative_to(here)]
    if original is not None and outside:
        raise UserError(f"{here} is a copy of the lake in {original} and shares its peer directory {outside[0]}: "
                        "writing here would change that lake's files; mount the original, or give the copy "
                        "storage of its own (format a new lake and copy the files in)")
    lake_id = str(uuid.uuid4()) if original is not None else marker["uuid"]
    for root in roots.values():
        if not os.path.isdir(root):
            continue  # a lost peer: reads go degraded
        try:
            owner = read_owner(root)
        except PeerUnavailable as exc:
            raise UserError(str(exc)) from None
        if owner == lake_id:
            continue
        if owner is not None and not (original is not None and owner == marker["uuid"]):
            raise UserError(f"peer directory {root} holds the shards of another lake ({owner}); "
                            f"this lake is {lake_id}")
        write_owner(root, lake_id)
    if original is not None or moved_from is not None or recorded is None:
        if original is not None:
            log.warning("%s is a copy of the lake in %s: it is a lake of its own now (id %s)",
                        here, original, lake_id)
        marker = {**marker, "uuid": lake_id, "path": str(here)}
        tmp = data_dir / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1) + "\n")
        os.replace(tmp, data_dir / MARKER)
    return marker, roots


def claim_net_peers(nets: list[tuple[str, str, str]], secret: bytes, lake_id: str, ssl_context=None,
                    *, dry: bool = False) -> None:
    """Contact every peer server and bucket: reachable, sharing our secret (servers), and holding
    no other lake's shards -- or one line per peer that is not (format never writes a lake onto
    bad peers). Unless ``dry``, each peer then belongs to ``lake_id``."""
    if not any(kind in ("net", "s3") for kind, _, _ in nets):
        return
    # format's entry point runs outside trio: this is its own short run
    problems = trio.run(partial(remote_owner_problems, nets, secret, lake_id, ssl_context, dry=dry, timeout=5.0))
    if problems:
        raise UserError("\n".join(f"peer {a}: {why}" for a, why in sorted(problems.items())))


async def remote_owner_problems(nets: list[tuple[str, str, str]], secret: bytes, lake_id: str, ssl_context=None,
                                *, dry: bool, timeout: float) -> dict[str, str]:
    """address -> what is wrong, for the peer servers and buckets among ``nets`` (asked at once)."""
    problems: dict[str, str] = {}

    async def one(kind: str, address: str, nursery: trio.Nursery) -> None:
        store: NetStore | S3Store
        if kind == "net":
            store = NetStore(-1, address, secret, call_timeout=timeout, connect_timeout=timeout,
                             ssl_context=ssl_context, lake_id=lake_id)
            store.bind(nursery)  # its connections end with the store (aclose below)
        else:
            store = S3Store(-1, address)
        try:
            with trio.fail_after(timeout + 1):
                if isinstance(store, NetStore):
                    await store.claim(dry=dry)
                else:
                    await store.claim(lake_id, dry=dry)
        except ForeignLake:
            problems[address] = "holds the shards of another lake (give this lake peers of its own)"
        except PeerUnavailable as exc:
            text = str(exc)
            problems[address] = ("refused our secret (the peer was started with another --secret-file)"
                                 if "authentication" in text else text.replace(f"peer {address}: ", ""))
        except trio.TooSlowError:
            problems[address] = f"did not answer within {timeout:.0f}s"
        finally:
            await store.aclose()

    async with trio.open_nursery() as nursery:
        for kind, address, _zone in nets:
            if kind in ("net", "s3"):
                nursery.start_soon(one, kind, address, nursery)
    return problems


async def check_remote_owners(peers: list[PeerRecord], secret: bytes | None, lake_id: str,
                              ssl_context=None) -> None:
    """At a writable open: refuse (one line) if a peer server or bucket holds another lake's shards,
    and claim the ones nobody owns yet (lakes formatted before owners were recorded). A peer that
    does not answer now is not held against the lake (reads go degraded, writes elsewhere)."""
    nets = [(p.kind, p.address, p.zone) for p in peers if p.kind in ("net", "s3") and p.state == "up"]
    problems = await remote_owner_problems(nets, secret or b"", lake_id, ssl_context, dry=False, timeout=3.0)
    foreign = sorted(a for a, why in problems.items() if "another lake" in why)
    if foreign:
        raise UserError(f"peer {foreign[0]} holds the shards of another lake, not of this one ({lake_id})"
                        + (f"; so do {len(foreign) - 1} more" if len(foreign) > 1 else ""))
    for address, why in sorted(problems.items()):
        log.warning("peer %s: %s", address, why)
