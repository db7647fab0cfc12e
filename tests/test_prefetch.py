"""Sampler-order prefetch through the mount's ``.prefetch`` control file (live mounts)."""

from __future__ import annotations

import errno
import json
import os
import random
import socket
from pathlib import Path

import pytest

from conftest import needs_fuse, wait_for


def plan_report(mnt: Path) -> dict:
    return json.loads((mnt / ".prefetch").read_text())


def send_plan(mnt: Path, text: bytes) -> dict:
    """A read-only mount's plan: the kernel refuses to open .prefetch for writing, so it goes to the
    daemon's socket. Returns the report the daemon answers with once it took every line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(plan_report(mnt)["plan_socket"])
        s.sendall(text)
        s.shutdown(socket.SHUT_WR)
        return json.loads(b"".join(iter(lambda: s.recv(1 << 16), b"")))


def write_tree(mnt: Path, n: int, classes: int = 2) -> dict[str, bytes]:
    rng = random.Random(5)
    files = {}
    for c in range(classes):
        (mnt / f"c{c}").mkdir()
    for i in range(n):
        rel = f"c{i % classes}/f{i}.bin"
        data = rng.randbytes(100_000 + rng.randrange(20_000))
        (mnt / rel).write_bytes(data)
        files[rel] = data
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # commit everything before the remount
    finally:
        os.close(fd)
    return files


@needs_fuse
@pytest.mark.timeout(180)
def test_planned_files_are_fetched_ahead_of_the_reader(live):
    files = write_tree(live.mnt, 120)
    live.remount()  # cold: nothing in the daemon's memory cache
    order = list(files)
    random.Random(9).shuffle(order)
    assert plan_report(live.mnt)["planned"] == 0
    with open(live.mnt / ".prefetch", "w") as f:
        f.write("--reset\n" + "\n".join(order) + "\nno/such/file\n")
    for rel in order[:10]:  # the loader starts: the cursor follows it
        assert (live.mnt / rel).read_bytes() == files[rel]
    wait_for(lambda: plan_report(live.mnt)["prefetched"] >= 10 + 64, 60, "the window to be fetched")
    report = plan_report(live.mnt)
    assert report["cursor"] == 9 and report["planned"] == 121

    # Take the peers away: the next 64 files in plan order must still read (from the prefetch),
    # while a file the plan never reached cannot.
    peers = live.data / "peers"
    os.rename(peers, live.data / "peers.away")
    try:
        for rel in order[10:74]:
            assert (live.mnt / rel).read_bytes() == files[rel], rel
        with pytest.raises(OSError) as err:
            (live.mnt / order[-1]).read_bytes()
        assert err.value.errno == errno.EIO
    finally:
        os.rename(live.data / "peers.away", peers)
    report = plan_report(live.mnt)
    assert report["cursor"] >= 73 and report["opened_in_plan"] >= 74


@needs_fuse
@pytest.mark.timeout(120)
def test_control_file_rules(live):
    (live.mnt / "a").write_bytes(b"x")
    assert ".prefetch" not in os.listdir(live.mnt)
    st = os.stat(live.mnt / ".prefetch")
    assert st.st_size == 0 and st.st_mode & 0o777 == 0o666
    with pytest.raises(FileExistsError):
        os.open(live.mnt / ".prefetch", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with pytest.raises(PermissionError):
        os.unlink(live.mnt / ".prefetch")
    with pytest.raises(PermissionError):
        os.rename(live.mnt / "a", live.mnt / ".prefetch")
    # Partial lines are kept until the newline (or close); garbage is counted, not fatal.
    fd = os.open(live.mnt / ".prefetch", os.O_WRONLY)
    try:
        os.write(fd, b"--reset\nmissing/one\na")
        os.write(fd, b"\n\xff\xfe/bad-utf8\n")
    finally:
        os.close(fd)
    report = wait_for(lambda: (r := plan_report(live.mnt))["resolved"] + r["unresolved"] == 3 and r, 10,
                      "the plan to resolve")
    assert report["planned"] == 3 and report["resolved"] == 1 and report["unresolved"] == 2
    with open(live.mnt / ".prefetch", "w") as f:
        f.write("--reset\n")
    assert plan_report(live.mnt)["planned"] == 0
    assert (live.mnt / "a").read_bytes() == b"x"


@needs_fuse
@pytest.mark.timeout(120)
def test_read_only_mount_takes_a_plan_but_no_writes(make_live):
    lake = make_live(mount=False)
    lake.mount()
    (lake.mnt / "f").write_bytes(b"data")
    lake.umount()
    lake.mount("--read-only")
    with pytest.raises(OSError) as err:
        (lake.mnt / "g").write_bytes(b"x")
    assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        os.unlink(lake.mnt / "f")
    assert err.value.errno == errno.EROFS
    send_plan(lake.mnt, b"f\n")
    wait_for(lambda: plan_report(lake.mnt)["resolved"] == 1, 10, "the plan on a read-only mount")
    assert (lake.mnt / "f").read_bytes() == b"data"


@needs_fuse
@pytest.mark.timeout(180)
def test_dataset_plan_fills_the_kernel_page_cache(make_live):
    lake = make_live(mount=False)
    lake.mount()
    files = write_tree(lake.mnt, 40)
    lake.umount()
    lake.mount("--dataset")
    for c in range(2):
        os.listdir(lake.mnt / f"c{c}")  # the loader's scan: the kernel now knows every inode
    order = list(files)
    random.Random(3).shuffle(order)
    send_plan(lake.mnt, ("--reset\n" + "\n".join(order) + "\n").encode())
    wait_for(lambda: plan_report(lake.mnt)["page_cache"]["pushed"] == 40, 60, "the files in the page cache")
    reads_before = plan_report(lake.mnt)["read_requests"]
    for rel in order:
        assert (lake.mnt / rel).read_bytes() == files[rel], rel
    report = plan_report(lake.mnt)
    # The loader's reads were served by the kernel: no READ reached the daemon.
    assert report["read_requests"] == reads_before
    assert report["page_cache"]["refused"] == 0 and report["opened_in_plan"] == 40

    # Second epoch, same files: the kernel still holds them, nothing is fetched or pushed again.
    send_plan(lake.mnt, ("--reset\n" + "\n".join(reversed(order)) + "\n").encode())
    wait_for(lambda: plan_report(lake.mnt)["resolved"] == 80, 30, "the second plan")
    for rel in reversed(order):
        assert (lake.mnt / rel).read_bytes() == files[rel], rel
    report = plan_report(lake.mnt)
    assert report["page_cache"]["pushed"] == 40 and report["read_requests"] == reads_before


@needs_fuse
@pytest.mark.timeout(120)
def test_read_only_mount_closes_without_flush_and_keeps_unterminated_plan_lines(make_live):
    lake = make_live(mount=False)
    lake.mount()
    for i in range(3):
        (lake.mnt / f"f{i}").write_bytes(b"%d" % i * 1000)
    lake.umount()
    lake.mount("--read-only")
    for _ in range(2):  # the first close tells the kernel to stop sending FLUSH; both must work
        for i in range(3):
            with open(lake.mnt / f"f{i}", "rb") as f:
                assert f.read() == b"%d" % i * 1000
    send_plan(lake.mnt, b"f1\nf2")  # no newline at the end: taken when the client closes its side
    wait_for(lambda: plan_report(lake.mnt)["resolved"] == 2, 10, "both plan lines")
