#!/usr/bin/env python3
"""A thousand peers in simulation: the lake's own placement and repair planning, no network, no lake.

What runs is the lake's code or the same formula vectorised, checked against it:

* **placement** is :func:`lakefs_fuse.chunks.placement.place` -- rendezvous scores
  ``weight / -ln(u)``, ``u`` from xxh3-64 of (chunk id, peer id), zones taken round-robin best
  zone first. Scoring every chunk against 1,000 peers through ``place`` costs ~1 ms a chunk, so
  the fill runs a numpy copy of the same formula (:func:`xxh3_pairs` reimplements XXH3's 9-16
  byte path for the 12-byte key; :func:`place_fast` takes the best peer of the best ``width``
  zones, which is what ``place`` does while ``width <= zones``). ``--check N`` (and the tests)
  compare the hash bit for bit with ``xxhash`` and the placement with ``place`` on sampled chunks.
* **repair targets** are what ``lakefs_fuse.lake.repair._targets`` computes when a spare peer
  exists: ``place_spare(chunk, usable, len(bad), keep, width, zone_of)`` with ``usable`` the peers
  that are up (the lost one is down) and ``keep`` the peers holding the chunk's other shards; it
  offers only zones holding fewer than ``ceil(width / zones)`` of them. :func:`repair_target_reference`
  is that call, verbatim, and the vectorised targets are checked against it. ``--proposal before``
  simulates the call before this rule (``place(..., exclude=keep)``: about 30 % of rebuilt shards
  shared a zone with another shard), ``--proposal spread`` an alternative that also avoids the lost
  peer's zone (docs/scaling.md).
* **rebuild sources** are those ``ChunkClient.rebuild`` reads: the first ``k`` healthy shards in
  shard-index order (shard ``i`` lives on ``place``'s ``i``-th peer).

Peer weights are capacities in TB: the lake does not derive weights itself (every peer weighs 1.0
unless ``peer add --weight`` / ``peer weight`` say otherwise), so this is what an operator of
mixed disks would set. Chunks are full 4 MiB chunks of the EC profile (``--ec``, default 6+3);
a shard's bytes on disk are the lake's own figure (payload, shard-file header, 4 KiB blocks).

Four questions, one table (``--peers 1000 --zones 100`` is the run in docs/scaling.md):

1. **imbalance** at ``--fill`` (70 %): ``max(used/cap) / mean(used/cap) - 1`` over peers and
   per capacity class. A sample of N chunks has counting noise of its own, so the table also
   shows the same statistic for an ideal (proportional) placement of the same number of shards,
   and the exact expectation for a real lake's billions of chunks (:func:`expected_zone_share`).
2. **join**: one peer per capacity class joins; the shards that move if every chunk is placed
   again over the new peer set (set difference, as ``repair.rebalance`` moves them), as a
   ratio to the ideal: the new peer's weight share of all shards (1/N for equal weights).
3. **loss**: one peer of the largest class is lost; its shards' rebuild sources and targets: the
   largest share any one peer serves relative to its capacity-weighted ideal, the same for an
   ideal placement of as many reads (sampling floor), and the zones touched.
4. **zone spread**: every chunk, as placed and after the repair, against the rule the placement
   module states: a zone holds at most ``ceil(width / zones)`` shards of a chunk.

Imports ``lakefs_fuse.chunks`` (placement, layout, shard-file geometry) and numpy; nothing else of
the lake. Usage::

    .venv/bin/python scripts/sim/peers.py --peers 1000 --zones 100 --chunks 1000000 --seed 1
    .venv/bin/python scripts/sim/peers.py --quick            # CI size: 120 peers, 60 zones
    .venv/bin/python scripts/sim/peers.py ... --proposal before  # repair targets as before the zone rule
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xxhash

from lakefs_fuse.chunks.layout import shard_len_for
from lakefs_fuse.chunks.placement import PeerChoice, place, place_spare
from lakefs_fuse.chunks.shardfile import header_size

MiB = 1 << 20
TB = 10**12
CHUNK = 4 * MiB
FS_BLOCK = 4096
#: (secret[24:32] ^ secret[32:40], secret[40:48] ^ secret[48:56]) of XXH3's default secret (seed 0):
#: the two words its 9-16 byte path xors into the input.
_BITFLIP1 = np.uint64(0x6782737BEA4239B9)
_BITFLIP2 = np.uint64(0xAF56BC3B0996523A)
_MIX = np.uint64(0x165667919E3779F9)
_M32 = np.uint64(0xFFFFFFFF)
_S32, _S37 = np.uint64(32), np.uint64(37)
BLOCK = 256  # chunks scored at once (x 1,000 peers: 2 MB per array)
_JOINER = 1 << 30  # the peer id of a joining peer (no simulated peer has it)


# ----------------------------------------------------------------------------- the peers


@dataclass
class Peers:
    """Peers laid out as a zone grid: row z holds zone z's peers, padded with weight-0 slots."""

    ids: np.ndarray        # (P,) peer ids
    zone: np.ndarray       # (P,) zone index
    weight: np.ndarray     # (P,) float, capacity in TB
    zones: int
    grid_ids: np.ndarray = field(init=False)     # (Z, L) peer id, 0 in a pad slot
    grid_w: np.ndarray = field(init=False)       # (Z, L) weight, 0 in a pad slot
    grid_row: np.ndarray = field(init=False)     # (Z, L) index into ids, -1 in a pad slot

    def __post_init__(self) -> None:
        per_zone = np.bincount(self.zone, minlength=self.zones)
        width = int(per_zone.max())
        self.grid_ids = np.zeros((self.zones, width), np.uint64)
        self.grid_w = np.zeros((self.zones, width))
        self.grid_row = np.full((self.zones, width), -1, np.int64)
        fill = np.zeros(self.zones, np.int64)
        for row, (pid, z, w) in enumerate(zip(self.ids, self.zone, self.weight, strict=True)):
            self.grid_ids[z, fill[z]] = pid
            self.grid_w[z, fill[z]] = w
            self.grid_row[z, fill[z]] = row
            fill[z] += 1

    def choices(self, skip: Sequence[int] = ()) -> list[PeerChoice]:
        return [PeerChoice(int(p), f"z{int(z):03d}", float(w))
                for p, z, w in zip(self.ids, self.zone, self.weight, strict=True) if int(p) not in skip]

    def with_peer(self, peer_id: int, zone: int, weight: float) -> Peers:
        return Peers(np.append(self.ids, peer_id), np.append(self.zone, zone), np.append(self.weight, weight),
                     self.zones)


def make_peers(n: int, zones: int, classes: Sequence[float], rng: np.random.Generator) -> Peers:
    """Peer i in zone i % zones, its capacity class drawn at random (zones differ in capacity)."""
    ids = np.arange(n, dtype=np.uint64)
    return Peers(ids, np.arange(n) % zones, rng.choice(np.asarray(classes, float), size=n), zones)


# ----------------------------------------------------------------------------- placement, vectorised


def xxh3_pairs(chunk_ids: np.ndarray, peer_ids: np.ndarray) -> np.ndarray:
    """``xxh3_64(chunk_id.to_bytes(8, "little") + peer_id.to_bytes(4, "little"))`` for every chunk
    (rows) and peer (columns): XXH3's path for 9-16 byte inputs, seed 0, in uint64 arithmetic."""
    c = np.asarray(chunk_ids, np.uint64).reshape(-1, *([1] * peer_ids.ndim))
    p = np.asarray(peer_ids, np.uint64)[None, ...]
    lo = c ^ _BITFLIP1                            # input bytes 0..7
    hi = ((c >> _S32) | (p << _S32)) ^ _BITFLIP2  # input bytes 4..11
    # 128-bit product lo * hi folded (low ^ high) from four 32 x 32 -> 64 bit products
    a0, a1 = lo & _M32, lo >> _S32
    b0, b1 = hi & _M32, hi >> _S32
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _S32) + (p10 & _M32) + (p01 & _M32)
    high = a1 * b1 + (p10 >> _S32) + (p01 >> _S32) + (mid >> _S32)
    acc = (lo.byteswap() + np.uint64(12)) + hi + ((lo * hi) ^ high)
    acc ^= acc >> _S37
    acc *= _MIX
    acc ^= acc >> _S32
    return acc


def scores(peers: Peers, chunk_ids: np.ndarray) -> np.ndarray:
    """(B, Z, L) rendezvous scores ``weight / -ln(u)``, u = (h + 1) / (2**64 + 2) as
    ``placement.score`` computes it (float rounding may differ in the last bit); pads score 0."""
    h = xxh3_pairs(chunk_ids, peers.grid_ids)
    u = (h.astype(np.float64) + 1.0) / float(2**64 + 2)
    return peers.grid_w / -np.log(u)


def place_fast(peers: Peers, s: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``place`` over scores ``s`` (B, Z, L; 0 = not eligible) for ``width <= zones``: the best peer
    of each of the ``width`` best zones, best zone first. Returns (peer rows (B, width), the
    ``width``-th best zone's best score (B,): a newcomer must beat it to enter the chunk)."""
    zone_best = s.max(axis=2)
    zone_arg = s.argmax(axis=2)
    top = np.argpartition(-zone_best, width - 1, axis=1)[:, :width]
    order = np.argsort(-np.take_along_axis(zone_best, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    best = np.take_along_axis(zone_best, top, 1)
    if (best[:, -1] <= 0).any():
        raise ValueError("fewer eligible zones than the chunk's width")
    rows = peers.grid_row[top, np.take_along_axis(zone_arg, top, 1)]
    return rows, best[:, -1]


# ----------------------------------------------------------------------------- references: the lake's own calls


PROPOSALS = ("none", "before", "spread")


def repair_target_reference(chunk_id: int, layout_peers: list[int], bad: list[int], usable: list[PeerChoice],
                            proposal: str = "none", zone_of: dict[int, str] | None = None) -> list[int]:
    """The spare peers ``repair._targets`` asks for (its first call, unchanged: ``place_spare``).

    ``before``: the call before the zone rule, ``place`` excluding only the kept shards' peers.
    ``spread`` (docs/scaling.md) also leaves out the zones of the shards being replaced (whose
    remaining peers would otherwise inherit most of a lost peer's shards), falling back to the
    lake's call when it leaves too few peers. ``zone_of`` names the zones of peers that are not
    usable (the lost one)."""
    keep = [p for i, p in enumerate(layout_peers) if i not in bad]
    if proposal == "none":
        zones = {c.peer_id: c.zone for c in usable} | (zone_of or {})
        return place_spare(chunk_id, usable, len(bad), keep, len(layout_peers), zones)
    if proposal == "spread":
        zones = {c.peer_id: c.zone for c in usable} | (zone_of or {})
        cap = -(-len(layout_peers) // len({c.zone for c in usable}))
        held: dict[str, int] = {}
        for p in keep:
            held[zones[p]] = held.get(zones[p], 0) + 1
        for i in bad:
            held[zones[layout_peers[i]]] = cap
        spread = [c for c in usable if held.get(c.zone, 0) < cap]
        spare = place(chunk_id, spread, len(bad), exclude=keep)
        if len(spare) == len(bad):
            return spare
        return place_spare(chunk_id, usable, len(bad), keep, len(layout_peers), zones)
    return place(chunk_id, usable, len(bad), exclude=keep)


# ----------------------------------------------------------------------------- expectation at real scale


def expected_zone_share(zone_w: np.ndarray, width: int, points: int = 8001) -> np.ndarray:
    """P(zone z is among the ``width`` zones a chunk uses), for a lake of infinitely many chunks.

    A zone's best score ``w_i / E_i`` (E_i ~ Exp(1)) beats the others' exactly when its time
    ``T_z = min E_i / w_i`` ~ Exp(W_z) comes first: the chosen zones are the ``width`` earliest
    of independent exponentials. P = integral of ``W_z e^(-W_z t) P(at most width-1 others
    before t) dt``, the count of others a Poisson binomial (dynamic programming on a t grid).
    Within a zone, a peer is the zone's best with probability ``w / W_z``.
    """
    zones = len(zone_w)
    target = min(zones - 1.0, width + 60.0)  # past this many other zones done, P(count < width) ~ 0
    lo, hi = 0.0, 1.0
    while (1 - np.exp(-zone_w * hi)).sum() < target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 - np.exp(-zone_w * mid)).sum() < target else (lo, mid)
    t_max = hi if zones - 1 > width + 60 else 60 / zone_w.min()
    # a log grid resolves both the scale of one zone (1 / W_z) and that of the race (width / sum W)
    t = np.concatenate([[0.0], np.geomspace(1e-4 / zone_w.sum(), t_max, points - 1)])
    done = 1 - np.exp(-np.outer(zone_w, t))          # (Z, T): P(zone j done by t)
    share = np.zeros(zones)
    for z in range(zones):
        dist = np.zeros((points, width))
        dist[:, 0] = 1.0
        for j in range(zones):
            if j != z:
                q = done[j][:, None]
                dist[:, 1:] = dist[:, 1:] * (1 - q) + dist[:, :-1] * q
                dist[:, :1] *= 1 - q
        f = zone_w[z] * np.exp(-zone_w[z] * t) * dist.sum(axis=1)
        share[z] = float(np.sum((f[1:] + f[:-1]) * np.diff(t)) / 2)
    return share


# ----------------------------------------------------------------------------- the simulation


@dataclass
class Config:
    peers: int = 1000
    zones: int = 100
    chunks: int = 1_000_000
    seed: int = 1
    k: int = 6
    m: int = 3
    fill: float = 0.70
    classes: tuple[float, ...] = (4.0, 8.0, 16.0)   # TB
    check: int = 200                                 # chunks compared with the lake's own calls
    proposal: str = "none"                           # repair targets: one of PROPOSALS


@dataclass
class Result:
    config: Config
    shard_bytes: int = 0
    real_chunks: float = 0.0
    imbalance: float = 0.0
    imbalance_floor: float = 0.0
    imbalance_expected: float = 0.0
    chi2_expected: float = 0.0        # sample vs exact expectation, per degree of freedom (~1: noise only)
    chi2_proportional: float = 0.0    # sample vs shares proportional to capacity
    class_imbalance: dict[float, float] = field(default_factory=dict)
    class_mean: dict[float, float] = field(default_factory=dict)
    class_expected: dict[float, float] = field(default_factory=dict)
    zone_share_sum: float = 0.0
    join: dict[float, tuple[int, float, float]] = field(default_factory=dict)  # class -> (moved, ideal, ratio)
    lost_peer: int = -1
    lost_shards: int = 0
    source_max_ratio: float = 0.0
    source_floor: float = 0.0
    source_max_share: float = 0.0
    source_zones: int = 0
    target_max_ratio: float = 0.0
    target_floor: float = 0.0
    target_max_share: float = 0.0
    target_zones: int = 0
    target_own_zone: float = 0.0      # share of rebuilt shards put in the lost peer's zone
    lost_zone_weight: float = 0.0     # that zone's share of the surviving weight
    rebalance_after: int = 0          # shards a rebalance would move after the repair
    violations_placed: int = 0
    violations_repaired: int = 0
    checked: int = 0
    mismatches: int = 0
    seconds: float = 0.0


def _multinomial_max_ratio(n: int, probs: np.ndarray, rng: np.random.Generator, draws: int = 20) -> float:
    """Mean over draws of max(count / (n * p)) for n items dealt with probabilities ``probs``."""
    ok = probs > 0
    out = [float((rng.multinomial(n, probs)[ok] / (n * probs[ok])).max()) for _ in range(draws)]
    return float(np.mean(out))


def zone_violations(zone_rows: np.ndarray, cap: int) -> int:
    """Chunks (rows of zone indexes) with more than ``cap`` shards in one zone."""
    s = np.sort(zone_rows, axis=1)
    if s.shape[1] <= cap:
        return 0
    return int((s[:, cap:] == s[:, :-cap]).any(axis=1).sum())


@dataclass
class Fill:
    """Chunks 1..N placed: their peers (rows into ``Peers.ids``), the ``width``-th best zone score
    of each, and for each joiner's zone that zone's best score (what a newcomer must beat)."""

    chunk_ids: np.ndarray
    placed: np.ndarray                   # (N, width)
    kth: np.ndarray                      # (N,)
    join_zones: dict[float, int]         # capacity class -> zone the joiner of that class joins
    zone_best: dict[float, np.ndarray]   # capacity class -> (N,)


def run(cfg: Config) -> Result:
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    peers = make_peers(cfg.peers, cfg.zones, cfg.classes, rng)
    if cfg.k + cfg.m > cfg.zones:
        raise SystemExit("the fast path needs width <= zones (place then takes one peer per zone)")
    res = Result(cfg)
    shard_len = shard_len_for(CHUNK, cfg.k)
    res.shard_bytes = -(-(shard_len + header_size(shard_len)) // FS_BLOCK) * FS_BLOCK
    res.real_chunks = cfg.fill * peers.weight.sum() * TB / ((cfg.k + cfg.m) * res.shard_bytes)
    # joiners are drawn first so their zones' best scores can be kept during the fill
    fill = _fill(cfg, peers, {c: int(rng.integers(cfg.zones)) for c in cfg.classes})
    _imbalance(cfg, peers, fill, res, rng)
    _joins(cfg, peers, fill, res)
    hit, targets = _loss(cfg, peers, fill, res, rng)
    res.checked, res.mismatches = _check(cfg, peers, fill, hit, targets, rng)
    res.seconds = time.perf_counter() - started
    return res


def _fill(cfg: Config, peers: Peers, join_zones: dict[float, int]) -> Fill:
    width = cfg.k + cfg.m
    chunk_ids = np.arange(1, cfg.chunks + 1, dtype=np.uint64)
    fill = Fill(chunk_ids, np.empty((cfg.chunks, width), np.int64), np.empty(cfg.chunks), join_zones,
                {c: np.empty(cfg.chunks) for c in join_zones})
    for start in range(0, cfg.chunks, BLOCK):
        s = scores(peers, chunk_ids[start:start + BLOCK])
        fill.placed[start:start + BLOCK], fill.kth[start:start + BLOCK] = place_fast(peers, s, width)
        for c, z in join_zones.items():
            fill.zone_best[c][start:start + BLOCK] = s[:, z, :].max(axis=1)
    return fill


def _imbalance(cfg: Config, peers: Peers, fill: Fill, res: Result, rng: np.random.Generator) -> None:
    """1. used/cap per peer at ``cfg.fill``, the noise floor, the exact expectation."""
    width = cfg.k + cfg.m
    cap_bytes = peers.weight * TB
    counts = np.bincount(fill.placed.ravel(), minlength=cfg.peers).astype(float)
    used = counts * res.shard_bytes * res.real_chunks / cfg.chunks
    fullness = used / cap_bytes
    res.imbalance = float(fullness.max() / fullness.mean() - 1)
    probs = peers.weight / peers.weight.sum()
    ideal = rng.multinomial(cfg.chunks * width, probs) / (cfg.chunks * width * probs)
    res.imbalance_floor = float(ideal.max() / ideal.mean() - 1)
    zone_w = np.bincount(peers.zone, weights=peers.weight, minlength=cfg.zones)
    share = expected_zone_share(zone_w, width)
    res.zone_share_sum = float(share.sum())
    per_cap = share[peers.zone] / zone_w[peers.zone]   # expected shards per TB, up to a constant
    for c in cfg.classes:
        mine = peers.weight == c
        res.class_imbalance[c] = float(fullness[mine].max() / fullness[mine].mean() - 1)
        res.class_mean[c] = float(fullness[mine].mean())
        res.class_expected[c] = float(per_cap[mine].mean() / per_cap.mean() * fullness.mean())
    res.imbalance_expected = float(per_cap.max() / per_cap.mean() - 1)
    want = cfg.chunks * width * per_cap * peers.weight / (per_cap * peers.weight).sum()
    res.chi2_expected = float(((counts - want) ** 2 / want).sum() / (cfg.peers - 1))
    want = cfg.chunks * width * probs
    res.chi2_proportional = float(((counts - want) ** 2 / want).sum() / (cfg.peers - 1))
    res.violations_placed = zone_violations(peers.zone[fill.placed], -(-width // cfg.zones))


def _joins(cfg: Config, peers: Peers, fill: Fill, res: Result) -> None:
    """2. One peer per capacity class joins: a chunk moves one shard to it exactly when it beats
    its zone's best and that zone is (or now gets) among the chunk's ``width`` best."""
    total_shards = cfg.chunks * (cfg.k + cfg.m)
    in_zone = peers.zone[fill.placed]
    for c, z in fill.join_zones.items():
        s_new = c / -np.log((xxh3_pairs(fill.chunk_ids, np.array([_JOINER], np.uint64))[:, 0]
                             .astype(np.float64) + 1.0) / float(2**64 + 2))
        takes = (s_new > fill.zone_best[c]) & ((in_zone == z).any(axis=1) | (s_new > fill.kth))
        moved = int(takes.sum())
        ideal_moved = total_shards * c / (peers.weight.sum() + c)
        res.join[c] = (moved, ideal_moved, moved / ideal_moved)


def _lost_peer(cfg: Config, peers: Peers) -> int:
    return int(np.flatnonzero(peers.weight == max(cfg.classes))[0])


def _loss(cfg: Config, peers: Peers, fill: Fill, res: Result,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3. The first peer of the largest class is lost: its chunks' rebuild sources and targets,
    and 4. the zone rule after the repair. Returns (the chunks hit, their targets)."""
    width = cfg.k + cfg.m
    lost = res.lost_peer = _lost_peer(cfg, peers)
    hit = np.flatnonzero((fill.placed == lost).any(axis=1))
    res.lost_shards = len(hit)
    layouts = fill.placed[hit]
    bad_index = np.argmax(layouts == lost, axis=1)
    keep_mask = layouts != lost
    keep = layouts[keep_mask].reshape(len(hit), width - 1)
    sources = keep[:, :cfg.k]                       # the first k healthy shards, by index
    targets = np.empty(len(hit), np.int64)
    wanted = np.empty((len(hit), width), np.int64)   # where placement puts the chunk now (rebalance)
    cap = -(-width // cfg.zones)
    lost_slot = tuple(np.argwhere(peers.grid_row == lost)[0])
    for start in range(0, len(hit), BLOCK):
        rows = hit[start:start + BLOCK]
        s = scores(peers, fill.chunk_ids[rows])
        s[:, lost_slot[0], lost_slot[1]] = 0.0
        wanted[start:start + BLOCK] = place_fast(peers, s, width)[0]
        kept = keep[start:start + BLOCK]
        excluded = np.zeros((len(rows), cfg.peers), bool)
        np.put_along_axis(excluded, kept, True, axis=1)
        excluded[:, lost] = True                    # down: not usable
        if cfg.proposal != "before":
            held = np.zeros((len(rows), cfg.zones), np.int64)
            np.add.at(held, (np.arange(len(rows))[:, None], peers.zone[kept]), 1)
            if cfg.proposal == "spread":
                held[:, peers.zone[lost]] = cap
            excluded |= held[:, peers.zone] >= cap
        pad = peers.grid_row < 0
        mask = excluded[:, np.where(pad, 0, peers.grid_row)] & ~pad
        s[mask] = 0.0
        targets[start:start + BLOCK] = place_fast(peers, s, 1)[0][:, 0]
    survivors = np.ones(cfg.peers, bool)
    survivors[lost] = False
    src_ok = survivors & (peers.zone != peers.zone[lost])
    src_counts = np.bincount(sources.ravel(), minlength=cfg.peers)
    src_probs = np.where(src_ok, peers.weight, 0) / peers.weight[src_ok].sum()
    n_src = int(src_counts.sum())
    res.source_max_ratio = float((src_counts[src_ok] / (n_src * src_probs[src_ok])).max())
    res.source_floor = _multinomial_max_ratio(n_src, src_probs, rng)
    res.source_max_share = float(src_counts.max() / max(n_src, 1))
    res.source_zones = len(np.unique(peers.zone[sources]))
    tgt_counts = np.bincount(targets, minlength=cfg.peers)
    tgt_probs = np.where(survivors, peers.weight, 0) / peers.weight[survivors].sum()
    res.target_max_ratio = float((tgt_counts[survivors] / (len(hit) * tgt_probs[survivors])).max())
    res.target_floor = _multinomial_max_ratio(len(hit), tgt_probs, rng)
    res.target_max_share = float(tgt_counts.max() / max(len(hit), 1))
    res.target_zones = len(np.unique(peers.zone[targets]))
    res.lost_zone_weight = float(peers.weight[survivors & (peers.zone == peers.zone[lost])].sum()
                                 / peers.weight[survivors].sum())
    res.target_own_zone = float((peers.zone[targets] == peers.zone[lost]).mean()) if len(hit) else 0.0
    repaired = layouts.copy()
    repaired[np.arange(len(hit)), bad_index] = targets
    res.violations_repaired = zone_violations(peers.zone[repaired], cap)
    res.rebalance_after = int(sum(len(set(w) - set(r)) for w, r in zip(wanted.tolist(), repaired.tolist(),
                                                                           strict=True)))
    return hit, targets


def _check(cfg: Config, peers: Peers, fill: Fill, hit: np.ndarray, targets: np.ndarray,
           rng: np.random.Generator) -> tuple[int, int]:
    """The lake's own calls on sampled chunks: the hash against ``xxhash``, the placement and the
    joins against ``place``, the repair targets against :func:`repair_target_reference`.
    Returns (comparisons, mismatches)."""
    width = cfg.k + cfg.m
    chunk_ids, placed = fill.chunk_ids, fill.placed
    choices = peers.choices()
    ids = [int(i) for i in peers.ids]
    checked = mismatches = 0
    sample = rng.choice(cfg.chunks, size=min(cfg.check, cfg.chunks), replace=False)
    pids = rng.choice(peers.ids, size=len(sample))
    hashes = np.diagonal(xxh3_pairs(chunk_ids[sample], np.asarray(pids, np.uint64)))
    for row, pid, h in zip(sample, pids, hashes, strict=True):
        key = int(chunk_ids[row]).to_bytes(8, "little") + int(pid).to_bytes(4, "little")
        mismatches += int(h) != xxhash.xxh3_64_intdigest(key)
        mismatches += [ids[r] for r in placed[row]] != place(int(chunk_ids[row]), choices, width)
        checked += 2
    for c, z in fill.join_zones.items():
        grown = choices + [PeerChoice(_JOINER, f"z{z:03d}", c)]
        for row in sample[: max(1, len(sample) // 4)]:
            old = {ids[r] for r in placed[row]}
            moved = len(set(place(int(chunk_ids[row]), grown, width)) - old)
            s_new = c / -math.log((xxhash.xxh3_64_intdigest(int(chunk_ids[row]).to_bytes(8, "little")
                                                            + _JOINER.to_bytes(4, "little")) + 1) / (2**64 + 2))
            fast = int(s_new > fill.zone_best[c][row] and (z in set(peers.zone[placed[row]]) or s_new > fill.kth[row]))
            mismatches += moved != fast
            checked += 1
    lost = _lost_peer(cfg, peers)
    usable = peers.choices(skip=[lost])
    lost_zone = {lost: f"z{int(peers.zone[lost]):03d}"}
    for j in rng.choice(len(hit), size=min(cfg.check, len(hit)), replace=False):
        layout = [ids[r] for r in placed[hit[j]]]
        want = repair_target_reference(int(chunk_ids[hit[j]]), layout, [layout.index(lost)], usable,
                                       proposal=cfg.proposal, zone_of=lost_zone)
        mismatches += want != [ids[targets[j]]]
        checked += 1
    return checked, mismatches


# ----------------------------------------------------------------------------- report


def table(res: Result) -> str:
    cfg = res.config
    w = cfg.k + cfg.m
    ok = lambda good: "yes" if good else "**no**"  # noqa: E731
    rows = [
        ("peers / zones / EC / fill", f"{cfg.peers} / {cfg.zones} / {cfg.k}+{cfg.m} / {cfg.fill:.0%}", "", ""),
        ("capacity classes (TB, = weight)", " / ".join(f"{c:g}" for c in cfg.classes), "", ""),
        ("chunks simulated (a real lake at this fill)", f"{cfg.chunks:,} ({res.real_chunks:.3g})", "", ""),
        ("shard on disk (4 MiB chunk)", f"{res.shard_bytes:,} B", "", ""),
        ("imbalance max/mean - 1, this sample", f"{res.imbalance:.2%}", "<= 5 %", ok(res.imbalance <= 0.05)),
        ("  same for ideal proportional placement (noise floor)", f"{res.imbalance_floor:.2%}", "", ""),
        ("  sample vs exact expectation, vs proportional: chi2/dof",
         f"{res.chi2_expected:.2f}, {res.chi2_proportional:.2f}", "~ 1",
         ok(res.chi2_expected < 1 + 4 * math.sqrt(2 / (cfg.peers - 1)))),
        ("  expected for a real lake (exact, infinitely many chunks)", f"{res.imbalance_expected:.2%}", "<= 5 %",
         ok(res.imbalance_expected <= 0.05)),
    ]
    for c in cfg.classes:
        rows.append((f"  class {c:g} TB: mean fullness (expected), imbalance in class",
                     f"{res.class_mean[c]:.2%} ({res.class_expected[c]:.2%}), {res.class_imbalance[c]:.2%}", "", ""))
    for c, (moved, ideal, ratio) in res.join.items():
        rows.append((f"join of a {c:g} TB peer: shards moved / ideal", f"{moved:,} / {ideal:,.0f} = {ratio:.3f}",
                     "~ 1", ok(abs(ratio - 1) <= 0.1)))
    rows += [
        (f"lost peer {res.lost_peer} ({max(cfg.classes):g} TB): shards rebuilt", f"{res.lost_shards:,}", "", ""),
        ("  sources: max share / ideal (floor for as many reads)",
         f"{res.source_max_ratio:.2f} ({res.source_floor:.2f})", "~ floor", ok(res.source_max_ratio
                                                                              <= 1.25 * res.source_floor)),
        ("  sources: largest share of one peer, zones touched",
         f"{res.source_max_share:.3%}, {res.source_zones}", "", ""),
        ("  targets: max share / ideal (floor for as many writes)",
         f"{res.target_max_ratio:.2f} ({res.target_floor:.2f})", "~ floor", ok(res.target_max_ratio
                                                                               <= 1.25 * res.target_floor)),
        ("  targets: largest share of one peer, zones touched",
         f"{res.target_max_share:.3%}, {res.target_zones}", "", ""),
        ("  targets in the lost peer's zone (its zone's share of weight)",
         f"{res.target_own_zone:.1%} ({res.lost_zone_weight:.1%})", "", ""),
        (f"zone rule (<= {-(-w // cfg.zones)} shard(s) of a chunk per zone): chunks breaking it, as placed",
         f"{res.violations_placed:,}", "0", ok(res.violations_placed == 0)),
        ("  after the lost peer's repair" + (f" (--proposal {cfg.proposal})" if cfg.proposal != "none" else ""),
         f"{res.violations_repaired:,} of {res.lost_shards:,}", "0", ok(res.violations_repaired == 0)),
        ("  shards a later rebalance moves (placement without the lost peer)",
         f"{res.rebalance_after:,}", "", ""),
        ("checks against place/xxhash (mismatches)", f"{res.checked:,} ({res.mismatches})", "0",
         ok(res.mismatches == 0)),
        ("sum of expected zone shares (= width)", f"{res.zone_share_sum:.4f} ({w})", "", ""),
        ("seconds", f"{res.seconds:.0f}", "", ""),
    ]
    out = ["| | value | goal | met |", "|---|---:|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--zones", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ec", default="6+3", help="K+M (default 6+3)")
    ap.add_argument("--fill", type=float, default=0.70)
    ap.add_argument("--classes", default="4,8,16", help="capacity classes in TB (weights), comma-separated")
    ap.add_argument("--check", type=int, default=200, help="sampled chunks compared with place()")
    ap.add_argument("--proposal", choices=PROPOSALS, default="none",
                    help="repair targets: none = the lake's (place_spare), before = before the zone rule, "
                         "spread = also avoid the lost peer's zone")
    ap.add_argument("--quick", action="store_true", help="CI size: 120 peers, 60 zones, 30,000 chunks")
    a = ap.parse_args(argv)
    k, m = (int(x) for x in a.ec.split("+"))
    cfg = Config(a.peers, a.zones, a.chunks, a.seed, k, m, a.fill, tuple(float(c) for c in a.classes.split(",")),
                 a.check, a.proposal)
    if a.quick:
        cfg.peers, cfg.zones, cfg.chunks = 120, 60, 30_000
    print(table(run(cfg)))


if __name__ == "__main__":
    main()
