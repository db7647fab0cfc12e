"""A lake's storage peers from the operator's side: ``peer add``, ``remove``, ``weight``, ``list``.

A peer's record (kind, address, zone, weight, state, extra) lives in the lake's metadata and is
changed only by the ``register_peer`` command (:class:`~..meta.commands.RegisterPeer`); each change
here is one such command, applied durably. Nothing is deleted: a removed peer keeps its record
(state ``removed``), so placement no longer picks it while its shards stay readable, and adding its
address again brings it back under its old id. Running mounts of a cluster lake re-read the
records every few seconds (``daemon._follow_peers``); an embedded lake's change while unmounted.

Before a peer is added it must answer: a peer server with the lake's secret, a bucket with our
credentials; its ``stat`` gives the zone it reports and the identity recorded in ``extra``.

Imports ``lake``, ``chunks`` (the stores, to probe), ``meta`` (the command) and the base layer.
"""

from __future__ import annotations

from typing import Any

from ..chunks.netstore import NetStore
from ..chunks.s3store import S3Store
from ..errors import UserError
from ..lake.lake import Lake
from ..lake.repair import peer_liveness
from ..meta.commands import RegisterPeer
from ..meta.schema import PeerRecord

#: Seconds a peer has to answer a probe (``add``) or a capacity question (``list``).
PROBE_TIMEOUT = 5


async def _register(lake: Lake, record: PeerRecord) -> None:
    await lake.meta.apply(RegisterPeer(record), sync=True)


def _find(lake: Lake, peer_id: int) -> PeerRecord:
    rec = next((p for p in lake.peer_records if p.peer_id == peer_id), None)
    if rec is None:
        raise UserError(f"no peer {peer_id} in this lake")
    return rec


async def add_peer(lake: Lake, target: tuple[str, str, str], *, zone: str | None,
                   weight: float) -> tuple[PeerRecord, bool]:
    """Add the peer ``target`` (``(kind, address, zone)`` as :func:`..lake.format.parse_net_peer`
    reads it) with ``weight``. Its zone: ``zone``, else the one in the address, else what the peer
    reports. Returns (its record, whether it came back under an old id)."""
    kind, address, given_zone = target
    zone = zone if zone is not None else (given_zone or None)
    known = next((p for p in lake.peer_records if p.kind == kind and p.address == address), None)
    if known is not None and known.state != "removed":
        raise UserError(f"{address} is already a peer of this lake (peer {known.peer_id})")
    if lake.secret is None and kind == "net":
        raise UserError("this lake has no cluster secret (DATA/secret)")

    async def probe() -> dict:
        store: S3Store | NetStore
        if kind == "s3":
            store = S3Store(-1, address)
        else:
            store = NetStore(-1, address, lake.secret or b"", call_timeout=PROBE_TIMEOUT,
                             connect_timeout=PROBE_TIMEOUT, ssl_context=lake.tls_context)
        async with store:  # its connections (and probes) end with the check
            return await store.stat()
    try:
        info = await probe()
    except Exception as exc:  # PeerUnavailable and friends: one clear line
        raise UserError(f"peer {address} does not answer: {exc}") from None
    pid = known.peer_id if known is not None else max((p.peer_id for p in lake.peer_records), default=-1) + 1
    extra = {**(known.extra if known is not None else {}), "uuid": info.get("id")}
    record = PeerRecord(pid, kind, address, zone if zone is not None else info.get("zone", ""), weight, "up", extra)
    await _register(lake, record)
    return record, known is not None


async def remove_peer(lake: Lake, peer_id: int) -> PeerRecord:
    """Stop placing new shards on peer ``peer_id``; returns its record as it was."""
    rec = _find(lake, peer_id)
    await _register(lake, PeerRecord(peer_id, rec.kind, rec.address, rec.zone, rec.weight, "removed", rec.extra))
    return rec


async def set_weight(lake: Lake, peer_id: int, weight: float) -> PeerRecord:
    """Give peer ``peer_id`` a new placement weight; returns its record as it was."""
    rec = _find(lake, peer_id)
    if rec.state == "removed":
        raise UserError(f"peer {peer_id} is removed; 'lakefs-fuse peer add {rec.address}' brings it back")
    await _register(lake, PeerRecord(peer_id, rec.kind, rec.address, rec.zone, weight, rec.state, rec.extra))
    return rec


async def list_peers(lake: Lake) -> list[dict]:
    """Every peer record, by id, with whether its store answers now (and its capacity, or the
    error): a listing reports a peer that is down, it does not fail."""
    live = await peer_liveness(lake, PROBE_TIMEOUT)
    rows: list[dict[str, Any]] = []
    for p in sorted(lake.peer_records, key=lambda p: p.peer_id):
        row: dict[str, Any] = {"id": p.peer_id, "kind": p.kind, "address": lake.peer_address(p), "zone": p.zone,
                               "weight": p.weight, "state": p.state}
        row.update(live.get(p.peer_id, {"reachable": False}))
        rows.append(row)
    return rows
