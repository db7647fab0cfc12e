"""Deleted data is reclaimed under churn (issue 11, point 23).

Rounds of create / write / delete leave packed chunks that are mostly dead: a small survivor
kept whole chunks alive. With compaction the peers' disk usage comes back to a small bound of
the live data within the GC grace, the survivors read back intact, and `status` shows what is
still waiting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random

import pytest

from conftest import cli, needs_fuse, wait_for

pytestmark = [needs_fuse, pytest.mark.timeout(300)]

MiB = 1 << 20


def _disk_usage(root) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def test_churn_returns_disk_usage_to_the_live_data(make_live):
    lake = make_live()
    lake.umount()
    lake.mount("--compact-interval", "2")
    rng = random.Random(23)
    kept: dict[str, str] = {}
    written = 0
    for rnd in range(4):
        names = []
        for i in range(120):
            data = rng.randbytes(rng.choice([20_000, 150_000, 600_000]))
            path = lake.mnt / f"r{rnd}-{i}"
            path.write_bytes(data)
            written += len(data)
            names.append((path, data))
        for path, data in names:  # most of each round goes again; a few survive in every chunk
            if rng.random() < 0.9:
                path.unlink()
            else:
                kept[path.name] = hashlib.sha256(data).hexdigest()
    live = sum((lake.mnt / n).stat().st_size for n in kept)
    peers = lake.data / "peers"
    bound = 2 * live * 6 // 4 + 8 * MiB  # EC 4+2; chunks at least half used after compaction
    assert written * 6 // 4 > 2 * bound  # what is written is well above the bound
    wait_for(lambda: _disk_usage(peers) <= bound, 150, f"peer usage to come down to {bound >> 20} MiB "
             f"for {live >> 20} MiB of live files", interval=1.0)
    for name, digest in kept.items():
        assert hashlib.sha256((lake.mnt / name).read_bytes()).hexdigest() == digest, name
    lake.umount()
    st = json.loads(cli("status", "--data", str(lake.data), "--json", env=lake.env).stdout)
    assert st["live_bytes"] == live and st["chunk_bytes"] >= live
    assert "delete_queue" in st
    lake.mount()
    for name, digest in kept.items():
        assert hashlib.sha256((lake.mnt / name).read_bytes()).hexdigest() == digest, name
