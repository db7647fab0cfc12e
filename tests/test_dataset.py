"""Dataset mode (``mount --dataset``) on an embedded lake: read-only, long TTLs, cached listings."""

from __future__ import annotations

import errno
import os

import pytest

from conftest import needs_fuse


def listing(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size)
    return out


@needs_fuse
@pytest.mark.timeout(180)
def test_dataset_mode_serves_the_same_tree_read_only(live):
    for c in range(4):
        (live.mnt / f"class{c}").mkdir()
        for i in range(300):  # more than one readdir page per directory
            (live.mnt / f"class{c}" / f"{i:04d}.jpg").write_bytes(bytes([c, i % 256]) * (i + 1))
    before = listing(live.mnt)
    live.umount()
    live.mount("--dataset")
    assert listing(live.mnt) == before
    assert listing(live.mnt) == before  # the second scan comes from cached listings and attributes
    assert (live.mnt / "class2" / "0007.jpg").read_bytes() == bytes([2, 7]) * 8
    for _ in range(2):
        assert not (live.mnt / "class2" / "nope.jpg").exists()
    for action in (lambda: (live.mnt / "x").write_bytes(b"1"), lambda: os.unlink(live.mnt / "class0" / "0000.jpg"),
                   lambda: os.mkdir(live.mnt / "d"), lambda: os.rename(live.mnt / "class0", live.mnt / "c")):
        with pytest.raises(OSError) as err:
            action()
        assert err.value.errno == errno.EROFS
    live.umount()
    live.mount()  # and back to a writable mount: nothing changed
    assert listing(live.mnt) == before
