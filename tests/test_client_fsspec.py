"""The ``lakefs://`` fsspec filesystem (found through the entry point, round trips, errors) and
pickling of the filesystem and of a client.

No mount: the filesystem is the in-process client over an embedded lake formatted here.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from conftest import cli

fsspec = pytest.importorskip("fsspec")

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def lake_dir(tmp_path):
    data = tmp_path / "lake"
    cli("format", "--data", str(data), check=True)
    return data


@pytest.fixture
def fs(lake_dir):
    # skip_instance_cache: every test gets its own client (fsspec caches instances by options).
    fs = fsspec.filesystem("lakefs", data=str(lake_dir), skip_instance_cache=True)
    try:
        yield fs
    finally:
        fs.close()


def test_the_entry_point_registers_the_protocol():
    from lakefs_fuse.client.fsspec import LakeFileSystem

    assert fsspec.get_filesystem_class("lakefs") is LakeFileSystem


def test_round_trip_through_urls(lake_dir, fs):
    opts = {"data": str(lake_dir)}
    payload = os.urandom(3 << 20) + b"tail"
    with fsspec.open("lakefs://runs/a/blob.bin", "wb", **opts) as f:  # parents made on the way
        f.write(payload)
    with fsspec.open("lakefs://runs/a/notes.txt", "w", encoding="utf-8", **opts) as f:
        f.write("grüße\nzwei\n")
    with fsspec.open("lakefs:///runs/a/blob.bin", "rb", **opts) as f:  # a leading slash is the same path
        assert f.read() == payload
    with fsspec.open("lakefs://runs/a/notes.txt", "r", encoding="utf-8", **opts) as f:
        assert f.read().splitlines() == ["grüße", "zwei"]
    assert fs.cat_file("runs/a/blob.bin", start=10, end=20) == payload[10:20]
    assert fs.cat_file("lakefs://runs/a/blob.bin") == payload
    info = fs.info("lakefs://runs/a/blob.bin")
    assert (info["type"], info["size"], info["name"]) == ("file", len(payload), "runs/a/blob.bin")
    assert fs.ls("runs/a", detail=False) == ["runs/a/blob.bin", "runs/a/notes.txt"]
    assert fs.ls("runs", detail=True)[0]["type"] == "directory"
    assert sorted(fs.find("")) == ["runs/a/blob.bin", "runs/a/notes.txt"]
    assert fs.glob("runs/*/*.txt") == ["runs/a/notes.txt"]


def test_put_get_copy_move_remove(tmp_path, fs):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"one.bin": os.urandom(1000), "sub/two.bin": os.urandom(200_000)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    fs.put(str(src), "up", recursive=True)
    assert fs.cat_file("up/sub/two.bin") == files["sub/two.bin"]
    fs.cp_file("up/one.bin", "copies/one.bin")
    assert fs.cat_file("copies/one.bin") == files["one.bin"]
    fs.mv("copies/one.bin", "copies/renamed.bin")
    assert not fs.exists("copies/one.bin") and fs.exists("copies/renamed.bin")
    fs.pipe_file("copies/piped", b"piped bytes")
    assert fs.cat_file("copies/piped") == b"piped bytes"
    out = tmp_path / "down"
    fs.get("up", str(out), recursive=True)
    assert (out / "sub" / "two.bin").read_bytes() == files["sub/two.bin"]
    fs.rm("up", recursive=True)
    assert not fs.exists("up")
    assert fs.ls("", detail=False) == ["copies"]


def test_errors_are_oserrors(fs):
    with pytest.raises(FileNotFoundError):
        fs.info("missing")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("missing/file")
    fs.pipe_file("f", b"x")
    with pytest.raises(NotADirectoryError):
        fs.ls("f/inside")
    fs.mkdir("d")
    fs.pipe_file("d/x", b"y")
    with pytest.raises(OSError) as exc:
        fs.rmdir("d")
    assert exc.value.errno == 39  # ENOTEMPTY
    with pytest.raises(FileExistsError):
        fs.pipe_file("f", b"again", mode="create")


def test_a_pickled_filesystem_reconnects_in_another_process(lake_dir, fs):
    fs.pipe_file("shared/data", b"from the parent")
    fs.close()  # the lake is free again: the child opens it writable
    blob = pickle.dumps(fsspec.filesystem("lakefs", data=str(lake_dir), skip_instance_cache=True))
    code = ("import pickle, sys; fs = pickle.loads(sys.stdin.buffer.read()); "
            "sys.stdout.buffer.write(fs.cat_file('shared/data')); fs.pipe_file('shared/child', b'child'); fs.close()")
    res = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"from the parent"
    again = fsspec.filesystem("lakefs", data=str(lake_dir), skip_instance_cache=True)
    try:
        assert again.cat_file("shared/child") == b"child"
    finally:
        again.close()


def test_a_pickled_client_opens_the_lake_in_the_process_that_unpickles_it(lake_dir):
    import lakefs_fuse

    with lakefs_fuse.connect(data=lake_dir) as lake:
        lake.write_bytes("p", b"pickled")
        blob = pickle.dumps(lake)
    code = ("import pickle, sys; lake = pickle.loads(sys.stdin.buffer.read()); "
            "sys.stdout.buffer.write(lake.read_bytes('p')); lake.close()")
    res = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == b"pickled"
