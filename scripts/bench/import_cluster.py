#!/usr/bin/env python3
"""Import benchmark: ``lakefs-fuse import`` of many small files into a 3-server cluster lake.

One run:

1. writes the source tree on tmpfs (``/dev/shm``): ``--files`` files (default 100,000) spread over
   ``--dirs`` directories (default 100), each 4-16 KiB of random bytes (seeded: the same tree every
   run);
2. starts 3 ``lakefs-fuse peer serve`` and 3 ``lakefs-fuse meta serve`` (one Raft group) on loopback,
   their data under the run directory (on disk: peers and Raft logs fsync as in production), and
   formats the lake ``--ec 2+1`` over them;
3. runs ``lakefs-fuse import SRC /data --json`` once and times it (wall clock from start to exit;
   the import's own exit means its files are committed and its shards synced);
4. checks the report (every file imported, none failed), counts each directory's entries and reads a
   sample of the files back byte for byte through the Python client (``lakefs_fuse.connect``);
5. prints files/s, MB/s and the CPU seconds of every process (importer, each meta server -- the
   leader marked -- and the peers), and the Raft entries committed per file.

Everything started here is stopped in a ``finally`` (SIGTERM, then SIGKILL), the source tree and
run directory are removed (``--keep`` keeps the run directory), and the script checks that none
of its processes is left.

Usage::

    .venv/bin/python scripts/bench/import_cluster.py                  # 100,000 files
    .venv/bin/python scripts/bench/import_cluster.py --quick          # 10,000 files
    .venv/bin/python scripts/bench/import_cluster.py --files 20000 --jobs 16

May import: common.py, lakes.py, the standard library and (for the read-back) lakefs_fuse.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, BenchError, Child, find_cli, log, noproxy_env, pid_alive, set_subreaper, tail
from lakes import Lake, MetaGroup, PeerCluster


def make_tree(src: Path, files: int, dirs: int, lo: int, hi: int, seed: int = 14) -> int:
    """``files`` random files of ``lo``..``hi`` bytes in ``dirs`` directories; returns the bytes."""
    rng = random.Random(seed)
    pool = rng.randbytes(8 << 20)
    total = 0
    for d in range(dirs):
        (src / f"d{d:03d}").mkdir(parents=True)
    for i in range(files):
        size = rng.randint(lo, hi)
        off = rng.randrange(0, len(pool) - size)
        # 8 bytes of the file's index first: no two files are the same bytes
        data = i.to_bytes(8, "little") + pool[off + 8:off + size]
        (src / f"d{i % dirs:03d}" / f"f{i:06d}.bin").write_bytes(data)
        total += size
    return total


def verify(group: MetaGroup, secret: Path, src: Path, dest: str, files: int, dirs: int, sample: int) -> str:
    """Count every directory's entries and compare ``sample`` files byte for byte; raises BenchError."""
    sys.path.insert(0, str(REPO))
    import lakefs_fuse

    rng = random.Random(1)
    with lakefs_fuse.connect(meta=",".join(group.addrs), secret_file=secret) as lake:
        seen = 0
        for d in range(dirs):
            names = lake.listdir(f"{dest}/d{d:03d}")
            expected = len(range(d, files, dirs))
            if len(names) != expected:
                raise BenchError(f"{dest}/d{d:03d} holds {len(names)} entries, {expected} expected")
            seen += len(names)
        picks = rng.sample(range(files), min(sample, files))
        for i in picks:
            rel = f"d{i % dirs:03d}/f{i:06d}.bin"
            if lake.read_bytes(f"{dest}/{rel}") != (src / rel).read_bytes():
                raise BenchError(f"{dest}/{rel} differs from the source")
    return f"{seen:,} entries listed, {len(picks)} files compared byte for byte"


def run(args: argparse.Namespace, work: Path, src: Path) -> dict:
    cli = find_cli()
    env = noproxy_env()
    t = time.monotonic()
    nbytes = make_tree(src, args.files, args.dirs, args.min_size, args.max_size)
    log(f"source: {args.files:,} files, {nbytes / 1e6:.0f} MB in {args.dirs} directories "
        f"({time.monotonic() - t:.0f}s)")
    peers = PeerCluster(work / "cluster", cli, args.peers, zones=False, env=env)
    group = MetaGroup(work / "cluster", cli, 3, peers.secret, env)
    lake = Lake(work / "lake", cli, [], [], embedded=False, env=env)
    importer: Child | None = None
    out: dict = {"files": args.files, "bytes": nbytes}
    try:
        peers.start()
        group.start_servers()
        group.wait_leader()
        lake.format_args = [*group.where(), *peers.net_args(), "--ec", args.ec]
        lake.format()
        status = group.status_text()
        leader = group.leader(status)
        commit0 = group.commit_index() or 0
        procs = {**{f"meta{i}" + (" (leader)" if str(i) == leader else ""): s.d
                    for i, s in enumerate(group.servers, 1)},
                 **{c.name: c.d for c in peers.children()}}
        cpu0 = {name: d.cpu() for name, d in procs.items()}
        t0 = time.monotonic()
        importer = Child("import", [*cli, "import", str(src), args.dest, *group.where(), "--json",
                                    *(["--jobs", str(args.jobs)] if args.jobs else [])],
                         work / "import.log", env=lake.env)
        if not importer.d.reap(args.timeout):
            raise BenchError(f"import not done after {args.timeout:.0f}s:\n{importer.tail()}")
        took = time.monotonic() - t0
        cpu = {name: d.cpu() - cpu0[name] for name, d in procs.items()}
        cpu["import"] = importer.d.cpu()
        if importer.d.exit_code() != 0:
            raise BenchError(f"import exited {importer.d.exit_code()}:\n{importer.tail()}")
        text = (work / "import.log").read_text(errors="replace")
        report = json.loads(text[text.index("{"):text.rindex("}") + 1])
        if report["files"] != args.files or report["failed"]:
            raise BenchError(f"import reported {report['files']} files, {len(report['failed'])} failed: "
                             f"{report['failed'][:5]}")
        commits = (group.commit_index() or 0) - commit0
        out.update(seconds=took, files_per_s=args.files / took, mb_per_s=nbytes / took / 1e6, cpu=cpu,
                   raft_entries=commits, leader=leader)
        log(f"import: {args.files:,} files in {took:.1f}s = {args.files / took:,.0f} files/s, "
            f"{nbytes / took / 1e6:.1f} MB/s; {commits:,} Raft entries ({commits / args.files:.3f} per file)")
        out["verified"] = verify(group, peers.secret, src, args.dest.rstrip("/"), args.files, args.dirs,
                                 args.sample)
        log(f"verified: {out['verified']}")
        return out
    finally:
        problems = []
        if importer is not None and not importer.stop(wait=10):
            problems.append(f"import (pid {importer.pid}) survived SIGKILL")
        problems += group.teardown() + peers.teardown()
        left = [c.pid for c in [*group.servers, *peers.children(), *([importer] if importer else [])]
                if pid_alive(c.pid)]
        if left:
            problems.append(f"processes left: {left}")
        if problems:
            for s in group.servers:
                log(f"{s.name} log tail:\n{tail(s.log_path, 15)}")
            raise BenchError("teardown: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--min-size", type=int, default=4096)
    ap.add_argument("--max-size", type=int, default=16384)
    ap.add_argument("--quick", action="store_true", help="10,000 files")
    ap.add_argument("--ec", default="2+1")
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=0, help="the import's --jobs (default: its own default)")
    ap.add_argument("--dest", default="/data")
    ap.add_argument("--sample", type=int, default=500, help="files read back and compared")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds the import may take")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"), help="where peers and servers keep data")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.files = min(args.files, 10_000)
    set_subreaper()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="import-cluster-", dir=args.workdir))
    src_root = Path(tempfile.mkdtemp(prefix="import-src-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        out = run(args, work, src_root / "src")
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        shutil.rmtree(src_root, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"\n{out['files']:,} files ({out['bytes'] / 1e6:.0f} MB), 3 meta servers, {args.peers} peers, "
              f"EC {args.ec}: {out['files_per_s']:,.0f} files/s ({out['mb_per_s']:.1f} MB/s, {out['seconds']:.1f}s); "
              f"{out['raft_entries']:,} Raft entries ({out['raft_entries'] / out['files']:.3f}/file)")
        print("CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in out["cpu"].items()))
        print(f"verified: {out['verified']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
