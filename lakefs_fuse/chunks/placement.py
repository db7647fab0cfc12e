"""Rendezvous (highest-random-weight) placement of a chunk's shards over peers.

Each peer scores ``weight / -ln(u)`` with ``u`` a hash of (chunk id, peer id) in (0, 1):
adding or removing a peer only changes the chunks whose top choices involve it. Shards are
spread across zones round-robin (best-scoring zone first), so losing a zone loses at most
``ceil(width / zones)`` shards. The chosen peers are recorded in the chunk's record, so
reads never depend on the peer set of the day.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
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
