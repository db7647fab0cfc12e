"""lakefs_fuse.torch: the sampler-order prefetch client, and PyTorch data loading over a live mount.

Without a mount, a fake mount table (a tmp dir declared ``fuse.lakefs`` with a plain ``.prefetch``
file in it) shows exactly what the client writes. The live test reads an ImageFolder tree through
the mount and through local disk and wants identical tensors; it passes whether or not the
daemon already serves ``.prefetch`` (without it, prefetch warns and the loader goes on).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import pytest

import lakefs_fuse.torch as lt
from lakefs_fuse.torch import PrefetchUnavailable, mount_root, prefetch

from conftest import needs_fuse

# --- without a mount -----------------------------------------------------------------------------


def test_mount_root_of_a_normal_dir_is_none(tmp_path):
    assert mount_root(tmp_path) is None
    assert mount_root(tmp_path / "no" / "such" / "file") is None


def test_mount_root_picks_the_innermost_mount(monkeypatch):
    monkeypatch.setattr(lt, "_mount_table", lambda: {
        "/": "ext4", "/x/lake": "fuse.lakefs", "/x/lake/inner": "tmpfs", "/x/my lake": "fuse.lakefs"})
    assert mount_root("/x/lake/a/b.jpg") == Path("/x/lake")
    assert mount_root("/x/lake") == Path("/x/lake")
    assert mount_root("/x/lake/inner/b.jpg") is None
    assert mount_root("/x/lakeside/b.jpg") is None
    assert mount_root("/x/my lake/c") == Path("/x/my lake")


def test_mount_table_escapes():
    assert lt._unescape(r"/x/my\040lake\134b") == "/x/my lake\\b"
    assert lt._unescape("/plain") == "/plain"


def test_prefetch_off_a_mount_warns_once_and_returns_false(tmp_path):
    files = [tmp_path / f"{i}.jpg" for i in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prefetch(files) is False
    assert [w.category for w in caught] == [PrefetchUnavailable]
    assert not (tmp_path / ".prefetch").exists()
    assert prefetch([]) is False  # an empty epoch: nothing to say, nothing to warn about


@pytest.fixture
def fake_mounts(tmp_path, monkeypatch):
    """Two dirs declared lakefs mounts (``a`` with a plain .prefetch file, ``b`` without), one not."""
    a, b, plain = tmp_path / "a", tmp_path / "b", tmp_path / "plain"
    for d in (a, b, plain):
        (d / "cls").mkdir(parents=True)
    (a / ".prefetch").write_bytes(b"")
    table = {"/": "ext4", str(a.resolve()): "fuse.lakefs", str(b.resolve()): "fuse.lakefs"}
    monkeypatch.setattr(lt, "_mount_table", lambda: dict(table))
    return a, b, plain


def test_prefetch_writes_relative_lines_per_mount(fake_mounts, monkeypatch):
    a, _, plain = fake_mounts
    monkeypatch.chdir(a)
    (a / "link").symlink_to(a / "cls")  # a directory reached through a symlink is resolved
    paths = [a / "cls" / "1.jpg", plain / "cls" / "2.jpg", "cls/3.jpg", str(a / "link" / "4.jpg"),
             a / "top.jpg", a / "cls" / "bad\nname", a / "--reset", os.fsencode(a / "cls" / "é.jpg")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prefetch(paths) is True
    assert (a / ".prefetch").read_text() == "--reset\ncls/1.jpg\ncls/3.jpg\ncls/4.jpg\ntop.jpg\ncls/é.jpg\n"
    assert caught == []

    (a / ".prefetch").write_bytes(b"")
    assert prefetch([a / "cls" / "5.jpg"], reset=False) is True
    assert (a / ".prefetch").read_text() == "cls/5.jpg\n"


def test_prefetch_chunks_on_line_boundaries(fake_mounts, monkeypatch):
    a, _, _ = fake_mounts
    writes: list[bytes] = []
    real_write_all = lt._write_all
    monkeypatch.setattr(lt, "CHUNK_BYTES", 100)
    monkeypatch.setattr(lt, "_write_all", lambda fd, data: (writes.append(data), real_write_all(fd, data)))
    names = [f"cls/{i:04d}.jpg" for i in range(50)]
    assert prefetch([a / n for n in names]) is True
    assert b"".join(writes).decode().splitlines() == ["--reset", *names]
    assert len(writes) > 5 and all(w.endswith(b"\n") and len(w) < 100 + 20 for w in writes)


def test_a_mount_without_control_file_warns_but_others_take_the_plan(fake_mounts):
    a, b, _ = fake_mounts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prefetch([b / "cls" / "1.jpg", a / "cls" / "2.jpg"]) is True
        assert prefetch([b / "cls" / "1.jpg"]) is False
    assert [w.category for w in caught] == [PrefetchUnavailable] * 2
    assert str(b.resolve()) in str(caught[0].message)
    assert (a / ".prefetch").read_text() == "--reset\ncls/2.jpg\n"
    assert not (b / ".prefetch").exists()  # never created by the client


def test_importing_the_module_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, lakefs_fuse.torch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Folder:
    """Just enough of an ImageFolder for the sampler: ``.samples`` of (path, class)."""

    def __init__(self, n: int):
        self.samples = [(f"/data/c{i % 3}/{i}.jpg", i % 3) for i in range(n)]

    def __len__(self):
        return len(self.samples)


def test_prefetch_sampler_yields_the_wrapped_order_and_sends_its_paths(monkeypatch):
    torch = pytest.importorskip("torch")
    from torch.utils.data import BatchSampler, RandomSampler

    from lakefs_fuse.torch import PrefetchSampler

    calls = []
    monkeypatch.setattr(lt, "prefetch", lambda paths, *, reset=True: calls.append((list(paths), reset)) or True)
    ds = _Folder(20)
    inner = RandomSampler(ds, generator=torch.Generator().manual_seed(7))
    expected = list(RandomSampler(ds, generator=torch.Generator().manual_seed(7)))
    sampler = PrefetchSampler(inner, ds)
    assert isinstance(sampler, torch.utils.data.Sampler) and len(sampler) == 20
    got = list(sampler)
    assert got == expected and sorted(got) == list(range(20))
    assert calls == [([ds.samples[i][0] for i in got], True)]

    calls.clear()  # a second epoch: a new order, sent again
    again = list(sampler)
    assert sorted(again) == list(range(20)) and again != got
    assert calls == [([ds.samples[i][0] for i in again], True)]

    calls.clear()  # a paths callable instead of .samples, and a wrapped batch sampler
    batches = PrefetchSampler(BatchSampler(range(5), 2, drop_last=False), paths=lambda i: f"f{i}", reset=False)
    assert list(batches) == [[0, 1], [2, 3], [4]] and len(batches) == 3
    assert calls == [(["f0", "f1", "f2", "f3", "f4"], False)]

    with pytest.raises(TypeError):
        PrefetchSampler(inner)


# --- live: ImageFolder over the mount ------------------------------------------------------------

CLASSES, PER_CLASS = 5, 12


def _jpegs() -> dict[str, bytes]:
    """class_name/file -> JPEG bytes: deterministic noise and gradients, sizes 20..90 px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1234)
    out = {}
    for c in range(CLASSES):
        for k in range(PER_CLASS):
            h, w = (int(x) for x in rng.integers(20, 91, size=2))
            base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * (c + 1) / CLASSES
            img = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=90)
            out[f"class_{c}/img_{k:02d}.jpg"] = buf.getvalue()
    return out


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _batches(loader):
    images, labels = [], []
    for x, y in loader:
        images.extend(x)
        labels.extend(y.tolist())
    return images, labels


def _key(image, label) -> tuple[int, str]:
    return label, hashlib.sha256(image.numpy().tobytes()).hexdigest()


@needs_fuse
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::lakefs_fuse.torch.PrefetchUnavailable")
def test_imagefolder_over_the_mount_matches_local_disk(live, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torch.utils.data import DataLoader, RandomSampler
    from torchvision import datasets, transforms

    from lakefs_fuse.torch import PrefetchSampler

    files = _jpegs()
    local, remote = tmp_path / "local" / "train", live.mnt / "train"
    _write_tree(local, files)
    _write_tree(remote, files)
    assert mount_root(remote / "class_0" / "img_00.jpg") == live.mnt.resolve()

    tf = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    ds_local = datasets.ImageFolder(str(local), transform=tf)
    ds = datasets.ImageFolder(str(remote), transform=tf)
    assert ds.class_to_idx == ds_local.class_to_idx and len(ds.classes) == CLASSES
    assert len(ds) == len(ds_local) == CLASSES * PER_CLASS
    assert [(os.path.relpath(p, remote), y) for p, y in ds.samples] == \
        [(os.path.relpath(p, local), y) for p, y in ds_local.samples]

    def load(d, **kw):
        return _batches(DataLoader(d, batch_size=8, num_workers=2, **kw))

    want_x, want_y = load(ds_local, shuffle=False)
    got_x, got_y = load(ds, shuffle=False)
    assert got_y == want_y == [y for _, y in ds_local.samples]
    assert len(got_x) == len(want_x) and all(torch.equal(g, w) for g, w in zip(got_x, want_x, strict=True))

    # Shuffled epochs with sampler-order prefetch: the loader reads in exactly the order it sent.
    plans = []
    real_prefetch = lt.prefetch

    def recording_prefetch(paths, *, reset=True):
        paths = list(paths)
        took = real_prefetch(paths, reset=reset)
        plans.append((paths, took))
        return took

    monkeypatch.setattr(lt, "prefetch", recording_prefetch)
    key_of_path = {os.path.relpath(p, remote): _key(x, y) for (p, _), x, y in zip(ds.samples, want_x, want_y,
                                                                                   strict=True)}
    sampler = PrefetchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(42)), ds)
    orders = []
    for _epoch in range(2):
        xs, ys = load(ds, sampler=sampler)
        keys = [_key(x, y) for x, y in zip(xs, ys, strict=True)]
        assert sorted(keys) == sorted(key_of_path.values())  # every sample exactly once
        sent, _took = plans[-1]
        assert keys == [key_of_path[os.path.relpath(p, remote)] for p in sent]
        orders.append(keys)
    assert len(plans) == 2 and orders[0] != orders[1]
    if not plans[0][1]:  # a daemon without .prefetch: the client must not have created one
        assert not os.path.lexists(live.mnt / lt.CONTROL_NAME)
