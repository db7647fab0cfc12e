"""Per-directory erasure-coding profiles: the ``user.lakefs.ec`` xattr, inherited by new files and
directories, obeyed by the writer (files of different profiles never share a chunk), shown by
``stat``, survived as promised, and applied to existing files by ``restripe``."""

from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import cli, needs_fuse

EC = "user.lakefs.ec"


def stat_json(lake, rel: str) -> dict:
    return json.loads(cli("stat", str(lake.mnt / rel), "--json", env=lake.env, check=True).stdout)


def extent_profiles(info: dict) -> set[str]:
    return {e["ec"] for e in info.get("extents", [])}


@needs_fuse
@pytest.mark.timeout(240)
def test_directory_profile_is_inherited_obeyed_and_restriped(live):
    mnt = live.mnt
    (mnt / "hot").mkdir()
    (mnt / "small").mkdir()
    os.setxattr(mnt / "small", EC, b"1+2")  # three replicas
    assert os.getxattr(mnt / "small", EC) == b"1+2"
    (mnt / "small" / "sub").mkdir()
    assert os.getxattr(mnt / "small" / "sub", EC) == b"1+2"  # directories inherit
    small = {f"small/sub/img{i}.jpg": os.urandom(40_000 + i) for i in range(6)}
    hot = {"hot/a.bin": os.urandom(300_000), "hot/b.bin": os.urandom(200_000)}
    for rel, data in {**small, **hot}.items():  # written together: packing must keep profiles apart
        (mnt / rel).write_bytes(data)
    fd = os.open(mnt, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    for rel in small:
        assert os.getxattr(mnt / rel, EC) == b"1+2" and EC in os.listxattr(mnt / rel)
        info = stat_json(live, rel)
        assert info["ec_profile"] == "1+2" and extent_profiles(info) == {"1+2"}
    for rel in hot:
        info = stat_json(live, rel)
        assert info["ec_profile"] == "4+2 (lake default)"
        assert {p.split("+")[1] for p in extent_profiles(info)} == {"2"} and "1+2" not in extent_profiles(info)
    with pytest.raises(OSError):
        os.getxattr(mnt / "hot" / "a.bin", EC)

    for bad in (b"0+2", b"9+9", b"lots", b"1+2+3"):
        with pytest.raises(OSError) as err:
            os.setxattr(mnt / "hot", EC, bad)
        assert err.value.errno == errno.EINVAL, bad

    # Replicas survive two lost shards: take two of each small file's three copies away.
    live.umount()
    peer_dirs = sorted((live.data / "peers").iterdir())
    moved = []
    for rel in small:
        info = json.loads(cli("stat", rel, "--data", str(live.data), "--json", env=live.env, check=True).stdout)
        assert all(len(e["shards"]) == 3 for e in info["extents"])
        cid = info["extents"][0]["chunk"]
        for idx in (0, 1):
            for d in peer_dirs:
                p = d / f"{cid & 0xff:02x}" / f"{cid:016x}.{idx}"
                if p.exists():  # (small files share chunks: each shard is moved once)
                    moved.append((p, p.with_suffix(p.suffix + ".away")))
                    os.rename(p, p.with_suffix(p.suffix + ".away"))
    assert moved
    live.mount()
    for rel, data in small.items():
        assert (mnt / rel).read_bytes() == data, rel
    live.umount()
    for away, there in moved:
        os.rename(there, away)

    # A profile set later applies to new data; restripe brings the existing files in line.
    live.mount()
    os.setxattr(mnt / "hot", EC, b"2+1")
    live.umount()
    res = cli("restripe", "/hot", "--data", str(live.data), "--json", env=live.env)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["files"] == 2 and report["rewritten"] == 2
    res = cli("restripe", "/hot", "--data", str(live.data), "--json", env=live.env)
    assert json.loads(res.stdout)["rewritten"] == 0  # nothing left to do
    gc = json.loads(cli("gc", "--data", str(live.data), "--json", env=live.env, check=True).stdout)
    assert gc["deleted_chunks"] >= 1  # the old 4+2 chunks
    live.mount()
    for rel, data in hot.items():
        assert (mnt / rel).read_bytes() == data
        info = stat_json(live, rel)
        assert info["ec_profile"] == "2+1" and {p.split("+")[1] for p in extent_profiles(info)} == {"1"}
    for rel, data in small.items():  # untouched
        assert (mnt / rel).read_bytes() == data and extent_profiles(stat_json(live, rel)) == {"1+2"}
