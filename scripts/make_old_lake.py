#!/usr/bin/env python3
"""Regenerate tests/data/lake-8515254.tar.gz: a lake formatted and written by the code before
issue 12 (commit 8515254), which tests/test_old_lake.py opens with the current code.

    .venv/bin/python scripts/make_old_lake.py [--commit 8515254] [--out tests/data]

Run as root with /dev/fuse (it mounts). What it does:

1. ``git worktree add`` the old commit in a temporary directory, and runs that tree's code
   (``PYTHONPATH`` = the worktree, started from inside it, so ``python -m lakefs_fuse.cli``
   imports the old package, not this checkout; checked before anything is written);
2. formats an embedded lake, EC 2+1 with 1 MiB chunks on three peer directories inside the data
   directory (recorded relative to it, so the archive carries its storage);
3. mounts it with the old daemon and writes a small tree (see :func:`write_tree`): directories,
   modes, a symlink and a dangling one, xattrs on a file and a directory, a 4.3 MiB file over
   five chunks, a sparse file, small files packed together, an empty file, a hard link; sets
   every mtime; unmounts; runs the old ``fsck`` (must be clean);
4. archives the data directory as ``lake/`` in ``lake-<commit>.tar.gz`` and writes
   ``lake-<commit>.manifest.json``: every path with its type, mode, size, sha256, xattrs,
   symlink target, link count and mtime, as the old mount showed them after the writes.

File contents repeat short patterns so the archive stays small (~100 KB); every 64 KiB block of
the big file carries its own number, so a chunk read at the wrong offset does not pass. The
worktree, mount and temporary directory are removed in ``finally``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
#: Every file's mtime after the writes (2026-01-02 03:04:05 UTC), so the test can check it.
MTIME_NS = 1767323045_000000000


def block(tag: bytes, size: int) -> bytes:
    """``size`` bytes: ``tag`` then a 251-byte cycle (compressible, not aligned to anything)."""
    cycle = bytes((i * 7 + 3) % 251 for i in range(251))
    body = (tag + cycle * (size // 251 + 2))[:size]
    return body


def big_content() -> bytes:
    """4 MiB + 300 KiB + 7 bytes: five 1 MiB chunks, the last one short; each 64 KiB block tagged."""
    size = 4 * MiB + 300 * 1024 + 7
    return b"".join(block(b"<block %06d>" % i, 64 * 1024) for i in range(size // (64 * 1024) + 1))[:size]


def write_tree(mnt: Path) -> None:
    """The files of the old lake (each one written through the old mount)."""
    (mnt / "docs" / "a" / "b" / "c").mkdir(parents=True)
    (mnt / "empty-dir").mkdir()
    (mnt / "bin").mkdir(mode=0o750)
    os.chmod(mnt / "bin", 0o750)
    (mnt / "docs" / "readme.txt").write_bytes(b"an old lake, written before issue 12\n" * 40)
    (mnt / "docs" / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (mnt / "bin" / "run.sh").write_bytes(b"#!/bin/sh\necho old lake\n")
    os.chmod(mnt / "bin" / "run.sh", 0o755)
    (mnt / "private").write_bytes(block(b"private", 5000))
    os.chmod(mnt / "private", 0o600)
    (mnt / "empty-file").write_bytes(b"")
    (mnt / "big.bin").write_bytes(big_content())
    with open(mnt / "sparse.bin", "wb") as f:  # a hole, then 100 KiB at 1.5 MiB, then a hole to 3 MiB
        f.truncate(3 * MiB)
        f.seek(3 * MiB // 2)
        f.write(block(b"island", 100 * 1024))
    small = mnt / "small"
    small.mkdir()
    for i in range(20):
        (small / f"s{i:02d}.txt").write_bytes(block(b"small %d " % i, 100 + 37 * i))
    os.symlink("docs/readme.txt", mnt / "readme-link")
    os.symlink("nowhere/at/all", mnt / "dangling")
    os.link(mnt / "docs" / "readme.txt", mnt / "small" / "readme-hardlink")
    os.setxattr(mnt / "docs" / "readme.txt", "user.color", b"blue")
    os.setxattr(mnt / "docs" / "readme.txt", "user.bin", bytes(range(256)))
    os.setxattr(mnt / "docs", "user.project", b"lakefs")
    for path in sorted(mnt.rglob("*"), reverse=True):  # children first: their changes move dirs' mtimes
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


def manifest(mnt: Path) -> list[dict]:
    """Every path under ``mnt`` as the mount shows it."""
    out = []
    for path in sorted(mnt.rglob("*")):
        st = os.lstat(path)
        entry = {"path": str(path.relative_to(mnt)), "mode": stat.S_IMODE(st.st_mode), "nlink": st.st_nlink,
                 "mtime_ns": st.st_mtime_ns}
        if stat.S_ISLNK(st.st_mode):
            entry.update(type="symlink", target=os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            entry["type"] = "dir"
        else:
            data = path.read_bytes()
            entry.update(type="file", size=st.st_size, sha256=hashlib.sha256(data).hexdigest())
        if not stat.S_ISLNK(st.st_mode):
            entry["xattrs"] = {name: os.getxattr(path, name).hex() for name in sorted(os.listxattr(path))}
        out.append(entry)
    return out


def run(cmd: list[str], *, cwd: Path, env: dict, timeout: float = 120) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


def make(commit: str, out_dir: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="old-lake-"))
    tree = work / f"old-{commit}"
    data, mnt = work / "lake", work / "mnt"
    mnt.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tree), "LAKEFS_FUSE_RUNTIME": str(work / "run")}
    env.pop("LAKEFS_FUSE_DATA", None)
    cli = [sys.executable, "-m", "lakefs_fuse.cli"]
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                   capture_output=True)
    mounted = False
    try:
        where = run([sys.executable, "-c", "import lakefs_fuse; print(lakefs_fuse.__file__)"], cwd=tree, env=env)
        if not where.strip().startswith(str(tree)):
            raise SystemExit(f"the old code is not the one imported: {where}")
        peers = [f"--peer={data / 'peers' / f'p{i}'}" for i in range(3)]
        print(run([*cli, "format", "--data", str(data), "--ec", "2+1", "--chunk-size", "1M", *peers],
                  cwd=tree, env=env).strip())
        run([*cli, "mount", str(mnt), "--data", str(data)], cwd=tree, env=env)
        mounted = True
        write_tree(mnt)
        os.sync()
        entries = manifest(mnt)
        run([*cli, "umount", str(mnt)], cwd=tree, env=env)
        mounted = False
        run([*cli, "mount", str(mnt), "--data", str(data)], cwd=tree, env=env)  # what it stored, read back
        mounted = True
        entries_again = manifest(mnt)
        run([*cli, "umount", str(mnt)], cwd=tree, env=env)
        mounted = False
        if entries_again != entries:
            raise SystemExit("the old code read back something other than it wrote")
        print(run([*cli, "fsck", "--data", str(data)], cwd=tree, env=env).strip())
        for log in (data / "meta").glob("LOG.old.*"):  # RocksDB's info logs of earlier opens
            log.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        archive = out_dir / f"lake-{commit}.tar.gz"

        def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            return info
        with tarfile.open(archive, "w:gz", compresslevel=9) as tar:
            tar.add(data, arcname="lake", filter=clean)
        meta = {"commit": commit, "made_by": "scripts/make_old_lake.py", "ec": "2+1", "chunk_size": MiB,
                "files": entries}
        (out_dir / f"lake-{commit}.manifest.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{archive}: {archive.stat().st_size // 1024} KiB, {len(entries)} paths")
    finally:
        if mounted:
            subprocess.run([*cli, "umount", str(mnt)], cwd=tree, env=env, capture_output=True, timeout=60)
        deadline = time.monotonic() + 5
        while os.path.ismount(mnt) and time.monotonic() < deadline:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            time.sleep(0.2)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", default="8515254", help="the commit whose code makes the lake")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data", help="where the archive goes")
    args = parser.parse_args()
    make(args.commit, args.out)


if __name__ == "__main__":
    main()
