#!/usr/bin/env python3
"""Metadata at scale: RocksDB bytes per inode, the dump, and one Raft group's commit ceiling.

**Size** (default mode). A real :class:`~lakefs_fuse.meta.state.StateMachine` is filled through
the real command path (``StateMachine.apply`` of catalogue commands, one RocksDB WriteBatch per
command, as the embedded lake and every Raft replica apply them) with an ImageFolder-shaped tree:
``--dirs`` class directories (``n01440764``-style names) of ``--files`` files each
(``n01440764_10026_<n>.JPEG``: ImageNet-style names plus a unique counter), one ``Mknod`` per
file and directory, then one ``Commit`` per 4 MiB chunk (EC 6+3 record: 9 peers, 9 checksums)
holding the extents of the ~35 files (60-172 KB each, one extent per file) packed into it; a
chunk never spans two directories. Then a full manual compaction, and:

* on-disk bytes (SST files after compaction; the whole directory too) per inode, and the logical
  bytes (keys + values) per key kind, which say where the bytes go;
* ``dump()`` -- what a Raft snapshot and ``lakefs-fuse dump`` send today: its time and size;
* peak RSS and wall time of the fill; an extrapolation to 1 B files (linear in every figure:
  same names, same files per chunk, same key layout; see docs/scaling.md for what does not
  scale linearly).

**Raft ceiling** (``--raft-ceiling``). Three ``lakefs-fuse meta serve`` processes on loopback (the
benchmarks' ``MetaGroup`` from scripts/bench/lakes.py: one Raft group, Raft logs fsynced on the
run directory's disk), driven from this process by ``RemoteMeta`` with C concurrent sessions, each
submitting ``AllocChunks(1)`` -- the cheapest command (one counter key) -- back to back for
``--seconds``. Reported per C: commits/s, the mean latency, from the leader's Raft stats the
entries per group commit and per log fsync, and the CPU time per commit of the leader, of a
follower and of this client process: on a shared machine commits/s is what the cores left over
allowed, while ``1e6 / leader CPU us`` is the ceiling of a leader with a core of its own.

Imports ``lakefs_fuse`` (meta, chunks.layout, wire) and, for the Raft ceiling, scripts/bench's
``common`` and ``lakes``. Usage (``nice``: it shares the machine)::

    nice -n 10 .venv/bin/python scripts/sim/metasize.py                    # 1,000 x 1,000 files
    nice -n 10 .venv/bin/python scripts/sim/metasize.py --quick            # 20 x 500 files
    nice -n 10 .venv/bin/python scripts/sim/metasize.py --raft-ceiling     # C = 1, 16, 64, 256
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import stat as st
import sys
import tempfile
import time
from pathlib import Path

from lakefs_fuse.chunks.layout import shard_len_for
from lakefs_fuse.meta.commands import AllocChunks, Commit, CommitExtent, Format, Mknod
from lakefs_fuse.meta.schema import ROOT_INO, ChunkRecord
from lakefs_fuse.meta.state import StateMachine

MiB = 1 << 20
CHUNK = 4 * MiB
K, M = 6, 3
UID = GID = 1000
REPO = Path(__file__).resolve().parents[2]


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _du(path: str, suffix: str = "") -> int:
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file() and e.name.endswith(suffix))


def fill(sm: StateMachine, dirs: int, files: int, rng: random.Random) -> tuple[int, int]:
    """The ImageFolder tree through ``StateMachine.apply``; returns (inodes made, chunks committed)."""
    now = time.time_ns()
    sm.apply(Format({"ec_k": K, "ec_m": M, "chunk_size": CHUNK, "min_shard": 64 * 1024}, now, UID, GID))
    # ~35 files of ~116 KB per 4 MiB chunk: allocate the ids once (one counter write)
    first_chunk = sm.apply(AllocChunks(dirs * files // 30 + dirs + 1))
    chunk_id, inodes, chunks = first_chunk, 0, 0
    pending: list[CommitExtent] = []
    used = 0

    def seal() -> None:
        nonlocal chunk_id, used, chunks, pending
        record = ChunkRecord.from_wire([chunk_id, used, K, M, shard_len_for(used, K),
                                        rng.sample(range(1000), K + M), [rng.getrandbits(64) for _ in range(K + M)]])
        sm.apply(Commit(record, pending, {}, now))
        chunk_id, used, chunks, pending = chunk_id + 1, 0, chunks + 1, []

    for d in range(dirs):
        wnid = f"n{1440764 + d * 7919:08d}"
        dir_ino = sm.apply(Mknod(ROOT_INO, wnid.encode(), st.S_IFDIR | 0o755, 0, UID, GID, now))[0]
        inodes += 1
        for _ in range(files):
            name = f"{wnid}_{rng.randrange(10000, 99999)}_{inodes}.JPEG"
            ino = sm.apply(Mknod(dir_ino, name.encode(), st.S_IFREG | 0o644, 0, UID, GID, now))[0]
            inodes += 1
            size = rng.randint(60_000, 172_000)
            if used + size > CHUNK:
                seal()
            pending.append(CommitExtent(ino, 0, size, chunk_id, used))
            used += size
        if pending:  # a chunk does not span directories: the importer packs one directory at a time
            seal()
    return inodes, chunks


def logical_bytes(sm: StateMachine) -> dict[str, tuple[int, int]]:
    """key kind (first byte) -> (keys, key + value bytes)."""
    out: dict[str, tuple[int, int]] = {}
    it = sm.db.iter()
    it.seek_to_first()
    while it.valid():
        key, value = it.key(), it.value()
        kind = chr(key[0])
        n, b = out.get(kind, (0, 0))
        out[kind] = (n + 1, b + len(key) + len(value))
        it.next()
    return out


def measure_size(args: argparse.Namespace) -> None:
    root = Path(args.path) if args.path else Path(tempfile.mkdtemp(prefix="metasize-", dir="/var/tmp"))
    path = str(root / "meta")
    rng = random.Random(args.seed)
    try:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        sm = StateMachine(path, create=True)
        inodes, chunks = fill(sm, args.dirs, args.files, rng)
        t_fill, cpu_fill = time.perf_counter() - t0, time.process_time() - cpu0
        rss_fill = _peak_rss()
        t1 = time.perf_counter()
        sm.db.flush()
        sm.db.compact_range(None, None)
        t_compact = time.perf_counter() - t1
        sst, whole = _du(path, ".sst"), _du(path)
        kinds = logical_bytes(sm)
        t2 = time.perf_counter()
        data, count = sm.dump()
        t_dump = time.perf_counter() - t2
        dump_bytes = len(data)
        del data
        rss_dump = _peak_rss()
        sm.close()
        per = sst / inodes
        scale = 1e9 / inodes
        print(f"command: nice -n 10 .venv/bin/python scripts/sim/metasize.py --dirs {args.dirs} --files {args.files}"
              f" --seed {args.seed}\n")
        print("| | value | per inode | at 1 B files (linear) |")
        print("|---|---:|---:|---:|")
        print(f"| inodes (dirs + files), chunks | {inodes:,}, {chunks:,} "
              f"({inodes / max(chunks, 1):.1f} inodes per chunk) | | |")
        print(f"| fill through StateMachine.apply: wall, CPU | {t_fill:.0f} s, {cpu_fill:.1f} s "
              f"({inodes / t_fill:,.0f} inodes/s) | {t_fill / inodes * 1e6:.0f} us wall, "
              f"{cpu_fill / inodes * 1e6:.0f} us CPU | {cpu_fill * scale / 3600:.0f} h of CPU |")
        print(f"| full compaction | {t_compact:.1f} s | | |")
        print(f"| RocksDB SST bytes after compaction | {sst / 1e6:,.1f} MB | {per:.1f} B | {per:.0f} GB |")
        print(f"| whole directory (SST + manifest + logs) | {whole / 1e6:,.1f} MB | {whole / inodes:.1f} B | "
              f"{whole / inodes:.0f} GB |")
        print(f"| dump(): msgpack of every key, one message | {dump_bytes / 1e6:,.1f} MB, {count:,} keys, "
              f"{t_dump:.1f} s | {dump_bytes / inodes:.1f} B | {dump_bytes / inodes:.0f} GB, "
              f"{t_dump * scale / 3600:.1f} h |")
        print(f"| peak RSS: after the fill, after dump() | {rss_fill / 1e6:,.0f} MB, {rss_dump / 1e6:,.0f} MB | | |")
        total_logical = sum(b for _, b in kinds.values())
        print(f"| logical bytes (keys + values), all kinds | {total_logical / 1e6:,.1f} MB | "
              f"{total_logical / inodes:.1f} B | compression {total_logical / sst:.2f}x |")
        names = {"I": "inode", "D": "dentry", "K": "readdir cookie", "E": "extents", "C": "chunk record"}
        for kind, (n, b) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
            if b > total_logical / 1000:
                print(f"|   {kind} ({names.get(kind, '?')}) | {n:,} keys, {b / 1e6:,.1f} MB | "
                      f"{b / inodes:.1f} B | |")
    finally:
        if not args.path:
            shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- Raft ceiling


def raft_ceiling(args: argparse.Namespace) -> None:
    import trio

    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    from common import find_cli, noproxy_env  # type: ignore[import-not-found]
    from lakes import MetaGroup  # type: ignore[import-not-found]

    from lakefs_fuse.meta.remote import MetaService, RemoteMeta
    from lakefs_fuse.wire import load_secret

    root = Path(tempfile.mkdtemp(prefix="raft-ceiling-", dir="/var/tmp"))
    secret = root / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    group = MetaGroup(root, find_cli(), 3, secret, noproxy_env())
    rows: list[str] = []

    async def leader_stats(service: MetaService) -> dict:
        answers = await service.call_each("status")
        for address, row in answers.items():
            if isinstance(row, dict) and row.get("role") == "leader":
                return dict(row.get("stats", {}), commit_index=row.get("commit_index", 0), address=address)
        return {}

    def cpu(address: str | None) -> tuple[float, float]:
        """CPU seconds so far of the leader (at ``address``) and of the followers together."""
        leader = followers = 0.0
        for addr, server in zip(group.addrs, group.servers, strict=True):
            if addr == address:
                leader += server.d.cpu()
            else:
                followers += server.d.cpu()
        return leader, followers

    async def drive() -> None:
        async with MetaService(group.addrs, load_secret(secret)) as service:
            await RemoteMeta(service, sessions=1).apply(AllocChunks(1))   # connections up, leader found
            for clients in args.clients:
                meta = RemoteMeta(service, sessions=clients)
                done = 0
                before = await leader_stats(service)
                cpu0, mine0 = cpu(before.get("address")), time.process_time()
                t0 = trio.current_time()
                deadline = t0 + args.seconds

                async def worker(meta: RemoteMeta = meta, deadline: float = deadline) -> None:
                    nonlocal done
                    while trio.current_time() < deadline:
                        await meta.apply(AllocChunks(1))
                        done += 1

                async with trio.open_nursery() as nursery:
                    for _ in range(clients):
                        nursery.start_soon(worker)
                took = trio.current_time() - t0
                cpu1, mine1 = cpu(before.get("address")), time.process_time()
                after = await leader_stats(service)
                groups = after.get("group_commits", 0) - before.get("group_commits", 0)
                entries = after.get("group_committed_entries", 0) - before.get("group_committed_entries", 0)
                syncs = after.get("log_syncs", 0) - before.get("log_syncs", 0)
                per_sync = (after.get("commit_index", 0) - before.get("commit_index", 0)) / max(syncs, 1)
                latency = took * clients / max(done, 1) * 1e3
                n = max(done, 1)
                rows.append(f"| {clients} | {done / took:,.0f} | {latency:.1f} | {entries / max(groups, 1):.1f} | "
                            f"{per_sync:.1f} | {(cpu1[0] - cpu0[0]) / n * 1e6:.0f} | "
                            f"{(cpu1[1] - cpu0[1]) / 2 / n * 1e6:.0f} | {(mine1 - mine0) / n * 1e6:.0f} |")
                print(rows[-1], flush=True)

    try:
        group.start_servers()
        group.wait_leader()
        print(f"command: nice -n 10 .venv/bin/python scripts/sim/metasize.py --raft-ceiling --seconds {args.seconds}"
              f" --clients {','.join(map(str, args.clients))}\n")
        print("| concurrent sessions | commits/s | latency (ms) | entries per group commit "
              "| entries per leader fsync | leader CPU us/commit | follower CPU us/commit | client CPU us/commit |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        trio.run(drive)
    finally:
        problems = group.teardown()
        shutil.rmtree(root, ignore_errors=True)
        if problems:
            print("teardown:", "; ".join(problems), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--files", type=int, default=1000, help="files per directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--path", help="build here and keep it (default: a temporary directory, removed)")
    ap.add_argument("--quick", action="store_true", help="20 directories x 500 files")
    ap.add_argument("--raft-ceiling", action="store_true", help="commits/s of one 3-server Raft group instead")
    ap.add_argument("--seconds", type=float, default=8.0, help="per concurrency level (--raft-ceiling)")
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    args = ap.parse_args()
    if args.quick:
        args.dirs, args.files = 20, 500
    if args.raft_ceiling:
        raft_ceiling(args)
    else:
        measure_size(args)


if __name__ == "__main__":
    main()
