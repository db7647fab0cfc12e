"""Rendezvous (highest-random-weight) placement of a chunk's shards over peers.

Each peer scores ``weight / -ln(u)`` with ``u`` a hash of (chunk id, peer id) in (0, 1):
adding or removing a peer only changes the chunks whose top choices involve it. Shards are
spread across zones round-robin (best-scoring zone first), so losing a zone loses at most
``ceil(width / zones)`` shards. A shard placed later beside the others (a write's replacement for
a refusing peer, a repair's target) keeps that rule: :func:`place_spare` only offers zones that
hold fewer than ``ceil(width / zones)`` of the chunk's shards. The chosen peers are recorded in the chunk's record, so
reads never depend on the peer set of the day.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import xxhash


@dataclass(frozen=True, slots=True)
class PeerChoice:
    peer_id: int
    zone: str = ""
    weight: float = 1.0


def score(chunk_id: int, peer_id: int, weight: float) -> float:
    h = xxhash.xxh3_64_intdigest(chunk_id.to_bytes(8, "little") + peer_id.to_bytes(4, "little"))
    u = (h + 1) / (2**64 + 2)
    return weight / -math.log(u)


def place(chunk_id: int, peers: Iterable[PeerChoice], width: int, exclude: Sequence[int] = ()) -> list[int]:
    """Choose up to ``width`` distinct peers for a chunk (fewer if fewer are eligible)."""
    by_zone: dict[str, list[tuple[float, int]]] = {}
    for p in peers:
        if p.peer_id in exclude or p.weight <= 0:
            continue
        by_zone.setdefault(p.zone, []).append((score(chunk_id, p.peer_id, p.weight), p.peer_id))
    for ranked in by_zone.values():
        ranked.sort(reverse=True)
    zones = sorted(by_zone.values(), key=lambda r: r[0][0], reverse=True)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < width and any(depth < len(z) for z in zones):
        for ranked in zones:
            if depth < len(ranked) and len(chosen) < width:
                chosen.append(ranked[depth][1])
        depth += 1
    return chosen


def place_spare(chunk_id: int, peers: Sequence[PeerChoice], n: int, holders: Iterable[int],
                width: int, zone_of: Mapping[int, str], exclude: Iterable[int] = ()) -> list[int]:
    """Up to ``n`` more peers for a chunk of ``width`` shards whose other shards are on ``holders``
    (never one of them, nor of ``exclude``): only peers in zones holding fewer than
    ``ceil(width / zones)`` of those shards, so losing a zone still loses no more than placement
    allows; if that leaves fewer than ``n``, any peer. ``zone_of`` is every peer's zone (a holder
    that is down or removed, and so not among ``peers``, still counts for its zone)."""
    held_by = set(holders)
    barred = sorted(held_by | set(exclude))
    zones = {p.zone for p in peers if p.weight > 0}
    cap = -(-width // max(1, len(zones)))
    held = Counter(zone_of.get(h, "") for h in held_by)
    spare = place(chunk_id, [p for p in peers if held[p.zone] < cap], n, exclude=barred)
    return spare if len(spare) >= n else place(chunk_id, peers, n, exclude=barred)
