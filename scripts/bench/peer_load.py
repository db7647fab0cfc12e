#!/usr/bin/env python3
"""One storage peer under load: its CPU per request and per GiB, by kind of request.

Starts one ``lakefs-fuse peer serve`` on 127.0.0.1 (port 0, a fresh directory), stores shards
through a :class:`~lakefs_fuse.chunks.netstore.NetStore` from this process, then sends N requests
of one kind, ``--inflight`` at a time, and reads the peer's CPU time (``/proc/PID/stat``) before
and after. Kinds:

  getv        ranged reads, as lakes read (sent from the shard file, checked here)
  get         the older ranged read (verified and copied by the server)
  *-cold      the same over N distinct shards after syncfs + drop_caches (root), each read once
  put         shard writes (each fsynced by the peer)
  stat, claim requests without data (one thread hand-off in the server / none)

Prints requests/s, GB/s, and the peer's CPU in µs per request and in CPU-s per GiB. This is the
measurement behind the "worker-thread hand-off" and "hot/cold getv" figures in
docs/benchmarks.md (issue 14). The peer is stopped and its directory removed in a ``finally``.

Usage::

    .venv/bin/python scripts/bench/peer_load.py getv-cold --size 699051 --requests 800
    .venv/bin/python scripts/bench/peer_load.py getv get claim stat --size 4096
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from lakefs_fuse.chunks.netstore import NetStore  # noqa: E402

KINDS = ("getv", "get", "getv-cold", "get-cold", "put", "stat", "claim")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_for_port(log: Path, proc: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"peer serve exited: {log.read_text()[-2000:]}")
        await trio.sleep(0.05)
    raise SystemExit("peer serve did not report its port in time")


async def measure(kind: str, root: Path, size: int, requests: int, inflight: int) -> str:
    secret = root / "secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    log = root / "peer.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lakefs_fuse.cli", "peer", "serve", "--data",
                                 str(root / "peer"), "--listen", "127.0.0.1:0", "--secret-file", str(secret)],
                                stdout=out, stderr=out, cwd=REPO)
    try:
        port = await wait_for_port(log, proc)
        cold = kind.endswith("-cold")
        op = kind.removesuffix("-cold")
        shard_len = max(size, 699_051)
        shard = os.urandom(shard_len)
        async with trio.open_nursery() as nursery:
            store = NetStore(1, f"127.0.0.1:{port}", secret.read_bytes().strip(), lake_id="bench")
            store.bind(nursery)
            shards = requests if cold else 64
            if op in ("get", "getv"):
                for c in range(shards):
                    await store.put(c, 0, shard)
                if cold:
                    os.sync()
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
            if op == "get":
                store._getv = False  # the older request, as a peer without getv is asked
            buffers = [memoryview(bytearray(size)) for _ in range(inflight)]
            issued = 0

            async def worker(k: int) -> None:
                nonlocal issued
                while issued < requests:
                    i = issued
                    issued += 1
                    if op == "put":
                        await store.put(1_000_000 + i, 0, memoryview(shard)[:size])
                    elif op == "stat":
                        await store.stat()
                    elif op == "claim":
                        await store.claim(dry=True)
                    else:
                        offset = 0 if cold else (i // 64 * size) % max(1, shard_len - size)
                        await store.get_into(i % shards, 0, offset, size, buffers[k])

            c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            async with trio.open_nursery() as workers:
                for k in range(inflight):
                    workers.start_soon(worker, k)
            wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - c0
            await store.release()
            nursery.cancel_scope.cancel()
        gib = requests * size / 2**30 if op not in ("stat", "claim") else 0
        per_gib = f"{cpu / gib:.2f} CPU-s/GiB" if gib else "-"
        return (f"{kind:10} size={size:>8} inflight={inflight}: {requests / wall:8.0f} req/s  "
                f"{requests * size / wall / 1e9 if gib else 0:5.2f} GB/s  peer CPU {cpu / requests * 1e6:6.0f} us/req  "
                f"{per_gib}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kinds", nargs="+", choices=KINDS)
    ap.add_argument("--size", type=int, default=699_051, help="bytes per request (default: a 4 MiB chunk's 6+3 shard)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    a = ap.parse_args(argv)
    if any(k.endswith("-cold") for k in a.kinds) and os.geteuid() != 0:
        ap.error("the -cold kinds drop the page cache: run as root")
    for kind in a.kinds:
        root = Path(tempfile.mkdtemp(prefix="lakefs-peer-load.", dir=a.workdir))
        try:
            print(trio.run(measure, kind, root, a.size, a.requests, a.inflight), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
