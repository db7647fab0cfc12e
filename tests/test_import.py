"""``lakefs-fuse import``: bulk ingest without FUSE, packed densely, resumable."""

from __future__ import annotations

import json
import os
import random

import pytest

from conftest import LiveLake, cli, needs_fuse


def make_tree(root):
    rng = random.Random(3)
    files = {}
    for c in range(3):
        for i in range(60):
            rel = f"train/class{c}/{i:03d}.jpg"
            files[rel] = rng.randbytes(rng.randrange(1, 150_000))
    files["train/empty"] = b""
    files["big.bin"] = rng.randbytes(9 * 1024 * 1024 + 5)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


@needs_fuse
@pytest.mark.timeout(180)
def test_import_packs_resumes_and_reads_back(tmp_path):
    src = tmp_path / "src"
    files = make_tree(src)
    lake = LiveLake(tmp_path / "lake")
    try:
        res = cli("import", str(src), "datasets/one", "--data", str(lake.data), "--json", env=lake.env)
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["files"] == len(files) and report["failed"] == []
        res = cli("import", str(src), "datasets/one", "--data", str(lake.data), "--json", env=lake.env)
        assert json.loads(res.stdout)["skipped"] == len(files)  # a rerun skips what is there
        status = json.loads(cli("status", "--data", str(lake.data), "--json", env=lake.env).stdout)
        small = sum(len(d) for r, d in files.items() if r != "big.bin")
        assert status["chunks"] <= small // (4 << 20) + 1 + 3 + 2  # packed: ~full chunks, not one per file
        lake.mount()
        for rel, data in files.items():
            assert (lake.mnt / "datasets/one" / rel).read_bytes() == data, rel
        # An embedded lake that is mounted refuses a direct import (one line, exit 1).
        res = cli("import", str(src), "x", "--data", str(lake.data), env=lake.env)
        assert res.returncode == 1 and "mounted" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        lake.teardown()


def test_import_bad_source_is_one_line(tmp_path):
    res = cli("import", str(tmp_path / "missing"), "x", "--data", str(tmp_path / "lake"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    os.mkdir(tmp_path / "src")
    res = cli("import", str(tmp_path / "src"), "x", "--data", str(tmp_path / "nolake"))
    assert res.returncode == 1 and "does not exist" in res.stderr
