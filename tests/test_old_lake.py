"""A lake made by the code before issue 12 (commit 8515254) opens, reads, writes and checks
clean with the current code: issue 12 changed no on-disk format.

``tests/data/lake-8515254.tar.gz`` is an embedded lake (EC 2+1, 1 MiB chunks, three peer
directories inside it) formatted and written through a mount of the old code by
``scripts/make_old_lake.py``; ``lake-8515254.manifest.json`` lists every path as the old mount
showed it (type, mode, size, sha256, xattrs, symlink target, link count, mtime). Each test
unpacks the archive into its own temporary directory, so the lake sits at a path other than the
one its marker records: the first open treats it as moved (the original is gone), records the
new path, and keeps writing to its own peer directories.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from conftest import LiveLake, cli, is_mountpoint, needs_fuse

DATA = Path(__file__).resolve().parent / "data"
ARCHIVE = DATA / "lake-8515254.tar.gz"
MANIFEST = json.loads((DATA / "lake-8515254.manifest.json").read_text())
MiB = 1 << 20


@pytest.fixture
def old_lake(tmp_path):
    """The old lake unpacked as ``tmp_path/data`` (a LiveLake, not mounted); always torn down."""
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    shutil.move(tmp_path / "unpacked" / "lake", tmp_path / "data")
    lake = LiveLake(tmp_path, format_args=None)
    try:
        yield lake
    finally:
        lake.teardown()
        if is_mountpoint(lake.mnt):
            pytest.fail("mount left behind")


def marker(lake: LiveLake) -> dict:
    return json.loads((lake.data / "lake.json").read_text())


def fsck_clean(lake: LiveLake) -> str:
    res = cli("fsck", "--data", str(lake.data), env=lake.env, timeout=120)
    assert res.returncode == 0, f"fsck found problems ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    assert "bad: none" in res.stdout, res.stdout
    return res.stdout


def check_against_manifest(mnt: Path, skip: frozenset[str] = frozenset()) -> None:
    """Every path of the manifest (except ``skip``) is in the mount exactly as the old code showed it."""
    for entry in MANIFEST["files"]:
        if entry["path"] in skip:
            continue
        path = mnt / entry["path"]
        st = os.lstat(path)
        what = entry["path"]
        assert stat.S_IMODE(st.st_mode) == entry["mode"], what
        assert st.st_nlink == entry["nlink"], what
        assert st.st_mtime_ns == entry["mtime_ns"], what
        if entry["type"] == "symlink":
            assert stat.S_ISLNK(st.st_mode) and os.readlink(path) == entry["target"], what
            continue
        if entry["type"] == "dir":
            assert stat.S_ISDIR(st.st_mode), what
        else:
            assert stat.S_ISREG(st.st_mode) and st.st_size == entry["size"], what
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], what
        xattrs = {name: os.getxattr(path, name).hex() for name in os.listxattr(path)}
        assert xattrs == entry["xattrs"], what


def listed(mnt: Path) -> set[str]:
    return {str(p.relative_to(mnt)) for p in mnt.rglob("*")}


def test_manifest_describes_the_tree_it_promises():
    """The archive holds what the tests below rely on (a regenerated one must too)."""
    files = {e["path"]: e for e in MANIFEST["files"]}
    assert MANIFEST["commit"] == "8515254" and MANIFEST["chunk_size"] == MiB
    assert files["big.bin"]["size"] > 4 * MiB  # spans five chunks
    assert files["small/readme-hardlink"]["nlink"] == 2 == files["docs/readme.txt"]["nlink"]
    assert files["readme-link"]["target"] == "docs/readme.txt" and files["dangling"]["type"] == "symlink"
    assert files["docs/readme.txt"]["xattrs"]["user.color"] == b"blue".hex()
    assert files["docs"]["xattrs"] == {"user.project": b"lakefs".hex()}
    assert files["bin/run.sh"]["mode"] == 0o755 and files["private"]["mode"] == 0o600
    assert files["empty-file"]["size"] == 0 and files["empty-dir"]["type"] == "dir"
    assert ARCHIVE.stat().st_size < 200 * 1024


@needs_fuse
def test_old_lake_checks_clean_and_reads_back_every_file(old_lake):
    """fsck (clean), then a mount: every path as the old mount showed it; the moved lake records
    its new path and its peer directories stay its own; fsck again after the unmount."""
    before = marker(old_lake)
    assert before["path"] != str(old_lake.data.resolve())  # made elsewhere: this is a moved lake
    assert "5 chunks checked" in fsck_clean(old_lake)
    old_lake.mount()
    mnt = old_lake.mnt
    after = marker(old_lake)
    assert after["path"] == str(old_lake.data.resolve())
    for peer in sorted((old_lake.data / "peers").iterdir()):  # its storage belongs to it
        assert json.loads((peer / "lake-owner.json").read_text())["lake"] == after["uuid"]
    assert listed(mnt) == {e["path"] for e in MANIFEST["files"]}
    check_against_manifest(mnt)
    assert os.stat(mnt / "docs" / "readme.txt").st_ino == os.stat(mnt / "small" / "readme-hardlink").st_ino
    assert (mnt / "readme-link").read_bytes() == (mnt / "docs" / "readme.txt").read_bytes()
    assert not (mnt / "dangling").exists()
    sparse = (mnt / "sparse.bin").read_bytes()
    assert sparse[:MiB] == bytes(MiB) and sparse[-MiB:] == bytes(MiB) and sparse[3 * MiB // 2:][:6] == b"island"
    big = (mnt / "big.bin").read_bytes()
    for i in (0, 17, 68):  # every 64 KiB block carries its number: no block read from elsewhere
        assert big[i * 65536:][:14] == b"<block %06d>" % i
    old_lake.umount()
    fsck_clean(old_lake)


@needs_fuse
def test_old_lake_takes_new_writes_and_keeps_them_over_a_remount(old_lake):
    """New files, a hard link, an overwrite across a chunk boundary, an append, an unlink, a rename
    and a removed subtree, written by the current code into old chunks' neighbourhood: all there
    after a remount, the untouched old files unchanged, fsck clean."""
    old_lake.mount()
    mnt = old_lake.mnt
    new_big = b"".join(b"[new %06d]" % i + bytes([i % 251]) * 4085 for i in range(1300))  # 5.1 MiB
    (mnt / "new").mkdir()
    (mnt / "new" / "big.bin").write_bytes(new_big)
    (mnt / "new" / "small.txt").write_bytes(b"written by the current code\n")
    os.symlink("../docs/readme.txt", mnt / "new" / "link")
    os.link(mnt / "bin" / "run.sh", mnt / "new" / "run-hardlink")
    os.setxattr(mnt / "new" / "small.txt", "user.new", b"yes")
    old_big, old_readme = (mnt / "big.bin").read_bytes(), (mnt / "docs" / "readme.txt").read_bytes()
    with open(mnt / "big.bin", "r+b") as f:  # overwrite across a chunk boundary of an old file
        f.seek(MiB - 100)
        f.write(b"X" * 300)
    with open(mnt / "docs" / "readme.txt", "ab") as f:  # append to an old (hard-linked) file
        f.write(b"appended\n")
    os.unlink(mnt / "small" / "s05.txt")  # free part of an old packed chunk
    os.rename(mnt / "small" / "s06.txt", mnt / "docs" / "s06-moved.txt")
    shutil.rmtree(mnt / "docs" / "a")
    readme = old_readme + b"appended\n"
    assert (mnt / "small" / "readme-hardlink").read_bytes() == readme
    old_lake.remount()

    files = {e["path"]: e for e in MANIFEST["files"]}
    changed = {"big.bin", "docs/readme.txt", "small/readme-hardlink", "small/s05.txt", "small/s06.txt",
               "bin/run.sh", "docs", "docs/a", "docs/a/b", "docs/a/b/c", "docs/a/b/c/deep.txt", "small", "bin"}
    check_against_manifest(mnt, skip=frozenset(changed))
    assert (mnt / "new" / "big.bin").read_bytes() == new_big
    assert (mnt / "new" / "small.txt").read_bytes() == b"written by the current code\n"
    assert os.getxattr(mnt / "new" / "small.txt", "user.new") == b"yes"
    assert os.readlink(mnt / "new" / "link") == "../docs/readme.txt"
    assert (mnt / "new" / "link").read_bytes() == readme
    run = mnt / "bin" / "run.sh"
    assert os.stat(run).st_nlink == 2 and os.stat(run).st_ino == os.stat(mnt / "new" / "run-hardlink").st_ino
    assert hashlib.sha256(run.read_bytes()).hexdigest() == files["bin/run.sh"]["sha256"]
    assert hashlib.sha256(old_big).hexdigest() == files["big.bin"]["sha256"]
    assert (mnt / "big.bin").read_bytes() == old_big[:MiB - 100] + b"X" * 300 + old_big[MiB + 200:]
    assert hashlib.sha256(old_readme).hexdigest() == files["docs/readme.txt"]["sha256"]
    assert (mnt / "docs" / "readme.txt").read_bytes() == readme == (mnt / "small" / "readme-hardlink").read_bytes()
    assert os.stat(mnt / "docs" / "readme.txt").st_nlink == 2
    assert os.getxattr(mnt / "docs" / "readme.txt", "user.color") == b"blue"
    assert not (mnt / "small" / "s05.txt").exists() and not (mnt / "docs" / "a").exists()
    assert hashlib.sha256((mnt / "docs" / "s06-moved.txt").read_bytes()).hexdigest() == files["small/s06.txt"]["sha256"]
    assert os.getxattr(mnt / "docs", "user.project") == b"lakefs"
    old_lake.umount()
    fsck_clean(old_lake)
