"""A lake's identity and its storage (issue 11, points 3 and 4).

A copy of a lake directory must never write into the original's shards; a moved lake keeps
working; peer servers hold one lake's shards and refuse another's; ``format`` contacts every
peer server and refuses bad ones (unreachable, wrong secret, another lake's) with one line each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from conftest import LiveLake, cli, is_mountpoint, needs_fuse
from test_peers import Peer, write_secret

pytestmark = pytest.mark.timeout(180)


def _tree(root) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _fill(mnt, tag: bytes) -> None:
    for i in range(5):
        with open(mnt / f"file{i}", "wb") as f:
            f.write(tag * (30000 + i * 7777))
            os.fsync(f.fileno())


@needs_fuse
def test_copy_of_a_lake_is_a_lake_of_its_own(tmp_path):
    orig = LiveLake(tmp_path / "orig")
    copy = LiveLake(tmp_path / "copy", format_args=None)
    try:
        orig.mount()
        _fill(orig.mnt, b"original")
        before = _tree(orig.mnt)
        orig.umount()
        subprocess.run(["cp", "-a", str(orig.data), str(copy.data)], check=True)
        copy.mount()
        assert _tree(copy.mnt) == before  # the copy holds the same files
        # Write and overwrite in the copy: same names, same sizes, so the same chunk ids would
        # be reused if the copy still wrote into the original's peer directories.
        _fill(copy.mnt, b"COPY-WRITE")
        with open(copy.mnt / "file0", "r+b") as f:
            f.write(b"overwritten")
            os.fsync(f.fileno())
        copied = _tree(copy.mnt)
        copy.umount()
        orig.mount()
        assert _tree(orig.mnt) == before, "writing in the copy changed the original's files"
        # The original goes on writing: the chunk ids it allocates next are the ones the copy
        # just used. In storage of its own, that changes nothing in the copy.
        for i in range(5):
            with open(orig.mnt / f"later{i}", "wb") as f:
                f.write(b"later" * (9000 + i))
                os.fsync(f.fileno())
        orig.umount()
        copy.mount()
        assert _tree(copy.mnt) == copied, "writing in the original changed the copy's files"
        ids = {json.loads((lake.data / "lake.json").read_text())["uuid"] for lake in (orig, copy)}
        assert len(ids) == 2, "the copy kept the original's identity"
    finally:
        orig.teardown()
        copy.teardown()
    assert not is_mountpoint(orig.mnt) and not is_mountpoint(copy.mnt)


@needs_fuse
def test_copy_sharing_outside_peers_refuses_to_mount_and_a_moved_lake_mounts(tmp_path):
    peers = [str(tmp_path / "disks" / f"d{i}") for i in range(3)]
    orig = LiveLake(tmp_path / "orig", format_args=("--ec", "2+1", *sum((["--peer", p] for p in peers), [])))
    copy = LiveLake(tmp_path / "copy", format_args=None)
    moved = LiveLake(tmp_path / "moved", format_args=None)
    try:
        orig.mount()
        _fill(orig.mnt, b"original")
        before = _tree(orig.mnt)
        orig.umount()
        subprocess.run(["cp", "-a", str(orig.data), str(copy.data)], check=True)
        res = cli("mount", str(copy.mnt), "--data", str(copy.data), env=copy.env)
        assert res.returncode == 1 and not is_mountpoint(copy.mnt)
        assert "is a copy of the lake in" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        # Moved (the original is gone): the same lake, mounted from its new place.
        shutil.move(str(orig.data), str(moved.data))
        moved.mount()
        assert _tree(moved.mnt) == before
    finally:
        orig.teardown()
        copy.teardown()
        moved.teardown()


def _peers(tmp_path, n: int, secret):
    return [Peer(tmp_path, f"peer{i}", secret) for i in range(n)]


@contextlib.contextmanager
def _lake_on_peer_servers(tmp_path, n: int = 3):
    """``n`` peer servers and an EC 2+1 lake formatted on them (not mounted); all torn down."""
    secret = write_secret(tmp_path / "secret")
    peers = _peers(tmp_path, n, secret)
    lake = LiveLake(tmp_path / "lake", format_args=None)
    try:
        for p in peers:
            p.start()
        net = sum((["--net-peer", p.address] for p in peers), [])
        cli("format", "--data", str(lake.data), "--ec", "2+1", "--secret-file", str(secret), *net,
            env=lake.env, check=True)
        yield lake, peers
    finally:
        lake.teardown()
        for p in peers:
            p.stop()


def test_format_checks_every_peer_server_and_two_lakes_never_share_one(tmp_path):
    secret = write_secret(tmp_path / "secret")
    wrong = write_secret(tmp_path / "wrong", "f" * 32)
    peers = _peers(tmp_path, 3, secret)
    try:
        for p in peers:
            p.start()
        net = sum((["--net-peer", p.address] for p in peers), [])
        env = {"LAKEFS_FUSE_RUNTIME": str(tmp_path / "run")}
        # A secret the peers do not share: refused, one line per peer, nothing created.
        res = cli("format", "--data", str(tmp_path / "bad"), "--ec", "2+1", "--secret-file", str(wrong),
                  *net, env=env)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 3 and all("secret" in line for line in lines), res.stderr
        assert not (tmp_path / "bad" / "lake.json").exists()
        # A peer that is not there at all.
        stopped = peers[2]
        stopped.stop()
        res = cli("format", "--data", str(tmp_path / "bad2"), "--ec", "2+1", "--secret-file", str(secret),
                  *net, env=env)
        assert res.returncode == 1 and stopped.address in res.stderr, res.stderr
        stopped.start()
        net = sum((["--net-peer", p.address] for p in peers), [])
        cli("format", "--data", str(tmp_path / "a"), "--ec", "2+1", "--secret-file", str(secret), *net,
            env=env, check=True)
        # A second lake onto the same servers would share chunk ids with the first: refused.
        res = cli("format", "--data", str(tmp_path / "b"), "--ec", "2+1", "--secret-file", str(secret), *net,
                  env=env)
        assert res.returncode == 1 and "another lake" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 3
    finally:
        for p in peers:
            p.stop()


def test_peer_server_refuses_puts_of_another_lake(tmp_path):
    import trio

    from lakefs_fuse.chunks.netstore import NetStore
    from lakefs_fuse.chunks.store import ForeignLake
    from lakefs_fuse.wire import load_secret
    secret = write_secret(tmp_path / "secret")
    peer = _peers(tmp_path, 1, secret)[0]

    async def run() -> None:
        key = load_secret(secret)
        async with NetStore(0, peer.address, key, lake_id="lake-a") as a, \
                NetStore(0, peer.address, key, lake_id="lake-b") as b:
            await a.put(7, 0, b"A" * 1000)
            with pytest.raises(ForeignLake):
                await b.put(7, 0, b"B" * 1000)  # same chunk id, another lake
            with pytest.raises(ForeignLake):
                await b.delete(7, 0)
            out = bytearray(1000)
            await a.get_into(7, 0, 0, 1000, memoryview(out))
            assert bytes(out) == b"A" * 1000
    try:
        peer.start()
        trio.run(run)
    finally:
        peer.stop()


@needs_fuse
def test_a_mount_whose_peers_refuse_its_secret_says_so(tmp_path):
    other = write_secret(tmp_path / "other", "e" * 32)
    with _lake_on_peer_servers(tmp_path) as (lake, peers):
        for p in peers:  # the peers come back with another secret (an operator's mistake)
            p.stop()
            p.secret = other
            p.start()
        res = cli("status", "--data", str(lake.data), env=lake.env)
        assert res.returncode == 3, res.stdout + res.stderr
        assert res.stdout.count("authentication failed") == 3, res.stdout
        lake.mount()
        os.statvfs(lake.mnt)  # df
        with pytest.raises(OSError) as err, open(lake.mnt / "f", "wb") as f:
            f.write(b"x" * 1000)
        assert err.value.errno == 28
        log = lake.log()
        assert "statfs: 3 of 3 peers did not report" in log and "authentication failed" in log, log
        refused = [line for line in log.splitlines() if "writes refused with ENOSPC" in line]
        assert refused and "authentication failed" in refused[0], log


@needs_fuse
def test_mount_refuses_when_a_peer_server_belongs_to_another_lake(tmp_path):
    with _lake_on_peer_servers(tmp_path) as (lake, peers):
        owner = peers[1].dir / "shards" / "lake-owner.json"
        assert json.loads(owner.read_text())["lake"] == json.loads((lake.data / "lake.json").read_text())["uuid"]
        peers[1].stop()  # the server is handed to another lake (its owner record says so)
        owner.write_text(json.dumps({"lake": "someone-else"}) + "\n")
        peers[1].start()
        res = cli("mount", str(lake.mnt), "--data", str(lake.data), env=lake.env)
        assert res.returncode == 1 and not is_mountpoint(lake.mnt), res.stdout + res.stderr
        assert "holds the shards of another lake" in res.stderr and peers[1].address in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        owner.write_text(json.dumps({"lake": json.loads((lake.data / "lake.json").read_text())["uuid"]}) + "\n")
        peers[1].stop()
        peers[1].start()
        lake.mount()  # its own again: mounts
