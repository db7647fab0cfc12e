"""The in-process Python client (issue 13) shared with other processes: forked children using an
inherited client, and a cluster lake read and written beside a mount, close-to-open.

(The DataLoader over the client dataset is tested with the dataset, ``test_torch.py``.)
"""

from __future__ import annotations

import glob
import hashlib
import multiprocessing
import os
import tempfile

import pytest

from lakefs_fuse.client import connect

from conftest import cli, needs_fuse, wait_for
from test_metacluster import meta_cluster

MiB = 1 << 20


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files() -> dict[str, bytes]:
    return {"empty": b"", "one": b"1", "d/110k": os.urandom(110_000), "d/e/5m": os.urandom(5 * MiB + 3),
            **{f"many/{i:03d}": os.urandom(i * 97) for i in range(40)}}


def _read_in_child(client, names: list[str], results) -> None:
    """A forked child: every file through the inherited client object, two ways."""
    try:
        got = {}
        for name in names:
            with client.open(name, "rb") as f:
                whole = f.read()
            if client.read_bytes(name) != whole:
                raise AssertionError(f"{name}: read_bytes and open().read() differ")
            got[name] = _digest(whole)
        results.put(("ok", os.getpid(), client.read_only, got, sorted(client.listdir("many"))))
    except BaseException as exc:
        results.put(("error", os.getpid(), repr(exc), {}, []))
        raise


def _fork_and_read(client, files: dict[str, bytes]) -> list[tuple]:
    """Two forked children read every file through ``client``; their reports, checked."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    children = [ctx.Process(target=_read_in_child, args=(client, sorted(files), results)) for _ in range(2)]
    try:
        for p in children:
            p.start()
        reports = [results.get(timeout=120) for _ in children]
        for p in children:
            p.join(60)
            assert p.exitcode == 0, f"child {p.pid} exited with {p.exitcode}"
    finally:
        for p in children:
            if p.is_alive():
                p.kill()
                p.join(10)
        results.close()
        results.join_thread()
    assert not multiprocessing.active_children(), "processes left behind"
    expected = {name: _digest(data) for name, data in files.items()}
    for status, pid, read_only, got, listing in reports:
        assert status == "ok", f"child {pid}: {read_only}"
        assert got == expected and listing == sorted(n.split("/")[1] for n in files if n.startswith("many/"))
        assert pid != os.getpid()
    return reports


def _follow_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "lakefs-follow.*")))


@pytest.mark.timeout(240)
def test_forked_children_read_through_an_inherited_follower(tmp_path):
    data = tmp_path / "data"
    cli("format", "--data", str(data), check=True)
    files = _files()
    with connect(data=data) as writer:
        for name, blob in files.items():
            writer.makedirs(os.path.dirname(name), exist_ok=True)
            writer.write_bytes(name, blob)
    before = _follow_dirs()
    with connect(data=data, read_only=True) as client:
        for name, blob in files.items():  # the parent has used the lake before the fork
            assert client.read_bytes(name) == blob
        reports = _fork_and_read(client, files)
        assert all(read_only for _s, _p, read_only, _g, _l in reports)
        # The parent keeps working with the same object.
        for name, blob in files.items():
            assert client.read_bytes(name) == blob
        assert client.stat("d/e/5m").st_size == len(files["d/e/5m"])
    assert _follow_dirs() <= before, "a child left its follower's files behind"


@pytest.mark.timeout(240)
def test_children_of_a_writer_fall_back_to_followers(tmp_path):
    data = tmp_path / "data"
    cli("format", "--data", str(data), check=True)
    files = _files()
    before = _follow_dirs()
    with connect(data=data) as client:
        assert not client.read_only
        for name, blob in files.items():
            client.makedirs(os.path.dirname(name), exist_ok=True)
            client.write_bytes(name, blob)
        reports = _fork_and_read(client, files)
        assert all(read_only for _s, _p, read_only, _g, _l in reports)  # the parent holds the lake
        # The parent still writes (its lock was not lost to the children) and reads.
        assert not client.read_only
        client.write_bytes("after-fork", b"parent")
        assert client.read_bytes("after-fork") == b"parent"
        assert client.read_bytes("d/e/5m") == files["d/e/5m"]
    with connect(data=data) as again:
        assert not again.read_only and again.read_bytes("after-fork") == b"parent"
    assert _follow_dirs() <= before, "a child left its follower's files behind"


@pytest.mark.timeout(120)
def test_an_idle_child_does_not_keep_the_lake_locked(tmp_path):
    """A child forked while the parent writes, which never uses the client: once the parent closes
    the lake, it is free for a writer again (or a mount) while the child still runs."""
    data = tmp_path / "data"
    cli("format", "--data", str(data), check=True)
    ctx = multiprocessing.get_context("fork")
    release = ctx.Event()
    client = connect(data=data)
    try:
        client.write_bytes("x", b"1")
        child = ctx.Process(target=release.wait, args=(60,))
        child.start()
    finally:
        client.close()
    try:
        assert child.is_alive()
        with connect(data=data, read_only=False) as again:
            assert again.read_bytes("x") == b"1"
    finally:
        release.set()
        child.join(30)
    assert child.exitcode == 0 and not multiprocessing.active_children()


# ---------------------------------------------------------------------- cluster lake


@needs_fuse
@pytest.mark.timeout(300)
def test_cluster_client_and_mount_close_to_open(tmp_path):
    with meta_cluster(tmp_path) as cluster:
        mount = cluster.mount("m")
        m = mount.mnt
        ttl = 1.0 + 2.0  # the mount's attribute/entry TTL, plus slack for a loaded machine
        with connect(meta=cluster.meta, secret_file=cluster.secret, disk_cache=False) as client:
            assert not client.read_only
            # Client -> mount: a file closed by the client is read by the next open on the mount.
            data = os.urandom(5 * MiB + 11)
            client.makedirs("from-client")
            with client.open("from-client/big", "wb") as f:
                f.write(data)
            client.write_bytes("small", b"client bytes")
            assert (m / "from-client" / "big").read_bytes() == data
            assert (m / "small").read_bytes() == b"client bytes"
            # Mount -> client: closed on the mount, read by the client at once.
            other = os.urandom(300_000)
            (m / "from-mount").write_bytes(other)
            assert client.read_bytes("from-mount") == other
            assert client.stat("from-mount").st_size == len(other)
            # Rewrites in place, both ways.
            new = os.urandom(len(data))
            with client.open("from-client/big", "r+b") as f:
                f.write(new)
            assert (m / "from-client" / "big").read_bytes() == new
            (m / "small").write_bytes(b"mount rewrote it")
            assert client.read_bytes("small") == b"mount rewrote it"
            # Renames and removes by one, seen by the other.
            client.rename("from-mount", "from-client/moved")
            wait_for(lambda: (m / "from-client" / "moved").exists() and not (m / "from-mount").exists(), ttl,
                     "the client's rename on the mount")
            assert (m / "from-client" / "moved").read_bytes() == other
            client.remove("small")
            wait_for(lambda: not (m / "small").exists(), ttl, "the client's remove on the mount")
            os.rename(m / "from-client" / "big", m / "big-moved")
            assert not client.exists("from-client/big") and client.read_bytes("big-moved") == new
            os.remove(m / "big-moved")
            assert not client.exists("big-moved")
            os.mkdir(m / "dir-from-mount")
            assert client.isdir("dir-from-mount")
            client.rmdir("dir-from-mount")
            wait_for(lambda: not (m / "dir-from-mount").exists(), ttl, "the client's rmdir on the mount")
            assert sorted(client.listdir("")) == sorted(os.listdir(m)) == ["from-client"]
            assert sorted(client.listdir("from-client")) == sorted(os.listdir(m / "from-client")) == ["moved"]
