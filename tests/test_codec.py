"""Tests for lakefs_fuse.chunks.codec: RS(k,m) Cauchy over GF(2^8)/0x11d, raw shards."""

from __future__ import annotations

import itertools
import random
import threading
import time

import numpy as np
import pytest
import reedsolo

from lakefs_fuse.chunks import codec as codec_mod
from lakefs_fuse.chunks.codec import (
    SHARD_ALIGN,
    IsalCodec,
    MatrixCodec,
    NotEnoughShards,
    get_codec,
)

try:
    import pyeclib.ec_iface  # noqa: F401

    HAVE_PYECLIB = True
except Exception:  # pragma: no cover
    HAVE_PYECLIB = False

needs_pyeclib = pytest.mark.skipif(not HAVE_PYECLIB, reason="pyeclib not installed")

PROFILES = [(6, 3), (4, 2), (10, 4), (1, 2), (2, 1)]


def make_data(k: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(k)]


def brute_inverse(a: int) -> int:
    # Independent of reedsolo's tables: polynomial multiply with explicit 0x11d.
    for x in range(1, 256):
        if reedsolo.gf_mult_noLUT(a, x, prim=0x11D) == 1:
            return x
    raise AssertionError("no inverse")


def brute_parity(k: int, m: int, data: list[bytes]) -> list[bytes]:
    """Slow byte-by-byte reference using reedsolo's table-free multiply."""
    out = []
    for p in range(m):
        acc = bytearray(len(data[0]))
        for j in range(k):
            c = brute_inverse((k + p) ^ j)
            for i, b in enumerate(data[j]):
                acc[i] ^= reedsolo.gf_mult_noLUT(c, b, prim=0x11D)
        out.append(bytes(acc))
    return out


# ---------------------------------------------------------------- convention


def test_parity_coefficient_pinned_4_2():
    reedsolo.init_tables(0x11D)
    expected = reedsolo.gf_inverse(4)  # (k + p) ^ j with k=4, p=0, j=0
    assert expected == brute_inverse(4)
    mc = MatrixCodec(4, 2)
    assert mc.parity_matrix[0][0] == expected
    # And through encode: unit byte in data shard 0 only.
    parity = mc.encode([b"\x01", b"\x00", b"\x00", b"\x00"])
    assert parity[0] == bytes([expected])
    # The whole matrix follows the gf_gen_cauchy1_matrix formula.
    for p in range(2):
        for j in range(4):
            assert mc.parity_matrix[p][j] == brute_inverse((4 + p) ^ j)


def test_matrix_encode_matches_bytewise_reference():
    data = make_data(4, 37, seed=1)
    assert MatrixCodec(4, 2).encode(data) == brute_parity(4, 2, data)


# ---------------------------------------------------------------- ISA-L parity


@needs_pyeclib
@pytest.mark.parametrize("k,m", PROFILES)
@pytest.mark.parametrize("size", [SHARD_ALIGN, 3 * SHARD_ALIGN, 64 * SHARD_ALIGN])
def test_isal_parity_equals_matrix_parity(k, m, size):
    codec = get_codec(k, m)
    assert isinstance(codec, IsalCodec), f"pyeclib unexpectedly refused RS({k},{m})"
    assert codec.header_size == 80
    mc = MatrixCodec(k, m)
    data = make_data(k, size, seed=1000 * k + 10 * m + size)
    parity = codec.encode(data)
    assert len(parity) == m
    assert all(type(p) is bytes and len(p) == size for p in parity)
    assert parity == mc.encode(data)


@needs_pyeclib
@pytest.mark.parametrize("size", [1, 7, 100, 1000])
def test_isal_unaligned_sizes_still_exact(size):
    # SHARD_ALIGN is a margin: the bundled liberasurecode slices exactly anyway.
    codec = IsalCodec(4, 2)
    data = make_data(4, size, seed=size)
    assert codec.encode(data) == MatrixCodec(4, 2).encode(data)


def test_refused_profile_falls_back_to_matrix():
    # pyeclib refuses m == 0 ("Invalid number of parity fragments").
    codec = get_codec(3, 0)
    assert type(codec) is MatrixCodec
    data = make_data(3, 64, seed=3)
    assert codec.encode(data) == []
    assert codec.decode({0: data[0], 1: data[1], 2: data[2]}) == dict(enumerate(data))
    with pytest.raises(NotEnoughShards):
        codec.decode({0: data[0], 2: data[2]})
    if HAVE_PYECLIB:
        with pytest.raises(codec_mod._BackendUnusable):
            IsalCodec(3, 0)


def test_no_pyeclib_falls_back(monkeypatch):
    monkeypatch.setattr(codec_mod, "_ECDriver", None)
    monkeypatch.setattr(codec_mod, "_codecs", {})
    codec = get_codec(4, 2)
    assert type(codec) is MatrixCodec
    data = make_data(4, 128, seed=4)
    parity = codec.encode(data)
    got = codec.decode({1: data[1], 3: data[3], 4: parity[0], 5: parity[1]})
    assert got == dict(enumerate(data))


def test_backend_with_wrong_parity_is_rejected(monkeypatch):
    class LyingDriver:
        def __init__(self, k, m, ec_type):
            self.k, self.m = k, m

        def encode(self, data):
            s = len(data) // self.k
            frags = [b"H" * 80 + data[i * s:(i + 1) * s] for i in range(self.k)]
            return frags + [b"H" * 80 + b"\x00" * s for _ in range(self.m)]

    monkeypatch.setattr(codec_mod, "_ECDriver", LyingDriver)
    monkeypatch.setattr(codec_mod, "_codecs", {})
    assert type(get_codec(4, 2)) is MatrixCodec


@needs_pyeclib
def test_isal_encode_falls_back_when_fragment_size_unexpected():
    codec = IsalCodec(4, 2)
    real = codec._driver()

    class PaddingDriver:
        def encode(self, data):  # as if the library rounded fragments up
            return [f + b"\x00" * 16 for f in real.encode(data)]

    codec._local.driver = PaddingDriver()  # this thread only
    data = make_data(4, 100, seed=11)
    assert codec.encode(data) == MatrixCodec(4, 2).encode(data)


def test_get_codec_is_cached():
    assert get_codec(4, 2) is get_codec(4, 2)
    if HAVE_PYECLIB:
        assert isinstance(get_codec(1, 2), IsalCodec)  # k == 1 is accepted


@pytest.mark.parametrize("k,m", [(0, 2), (4, -1), (200, 57)])
def test_invalid_profiles(k, m):
    with pytest.raises(ValueError):
        MatrixCodec(k, m)
    with pytest.raises(ValueError):
        get_codec(k, m)


# ---------------------------------------------------------------- decode


def _check_pattern(codec, k, m, data, parity, lost):
    shards = data + parity
    available = {i: shards[i] for i in range(k + m) if i not in lost}
    assert codec.decode(available) == dict(enumerate(data))
    every = codec.decode(available, want=list(range(k + m)))
    assert every == dict(enumerate(shards))


@pytest.mark.parametrize("k,m", [(4, 2), (2, 1), (1, 2), (6, 3)])
def test_every_loss_pattern_decodes(k, m):
    codec = get_codec(k, m)
    data = make_data(k, 2 * SHARD_ALIGN, seed=k * 7 + m)
    parity = codec.encode(data)
    for nlost in range(m + 1):
        for lost in itertools.combinations(range(k + m), nlost):
            _check_pattern(codec, k, m, data, parity, set(lost))


def test_sampled_loss_patterns_10_4():
    k, m = 10, 4
    codec = get_codec(k, m)
    data = make_data(k, SHARD_ALIGN, seed=104)
    parity = codec.encode(data)
    rnd = random.Random(104)
    patterns = [set(), set(range(4)), set(range(10, 14)), {0, 5, 9, 13}]
    all_patterns = [c for n in range(1, m + 1) for c in itertools.combinations(range(k + m), n)]
    patterns += [set(p) for p in rnd.sample(all_patterns, 60)]
    for lost in patterns:
        _check_pattern(codec, k, m, data, parity, lost)


@pytest.mark.parametrize("x,y", [(1000, 3000), (7, 2051), (4095, 4096)])
def test_subrange_decode(x, y):
    k, m = 6, 3
    codec = get_codec(k, m)
    data = make_data(k, 4096, seed=x + y)
    shards = data + codec.encode(data)
    lost = {0, 2, 7}
    available = {i: memoryview(shards[i])[x:y] for i in range(k + m) if i not in lost}
    got = codec.decode(available)
    assert got == {j: data[j][x:y] for j in range(k)}
    # Only some shards wanted, including a lost parity one.
    got = codec.decode(available, want=[2, 7])
    assert got == {2: data[2][x:y], 7: shards[7][x:y]}


def test_reconstruct_parity_shards():
    k, m = 4, 2
    codec = get_codec(k, m)
    data = make_data(k, 3 * SHARD_ALIGN, seed=42)
    parity = codec.encode(data)
    # Parity rebuilt from data alone ...
    got = codec.decode(dict(enumerate(data)), want=[k, k + 1])
    assert got == {k: parity[0], k + 1: parity[1]}
    # ... and from a mix that lacks two data shards and one parity shard.
    got = codec.decode({0: data[0], 3: data[3], 4: parity[0], 2: data[2]}, want=[k + 1, 1])
    assert got == {k + 1: parity[1], 1: data[1]}


def test_not_enough_shards():
    k, m = 4, 2
    codec = get_codec(k, m)
    data = make_data(k, SHARD_ALIGN, seed=5)
    parity = codec.encode(data)
    with pytest.raises(NotEnoughShards):
        codec.decode({0: data[0], 4: parity[0], 5: parity[1]})
    with pytest.raises(ValueError):  # NotEnoughShards is a ValueError
        codec.decode({})
    with pytest.raises(NotEnoughShards):
        MatrixCodec(2, 1).decode({2: b"abc"})


def test_zero_length_shards():
    for codec in (get_codec(4, 2), MatrixCodec(4, 2)):
        assert codec.encode([b""] * 4) == [b"", b""]
        got = codec.decode({1: b"", 3: b"", 4: b"", 5: b""}, want=[0, 1, 2, 5])
        assert got == {0: b"", 1: b"", 2: b"", 5: b""}


def test_bytes_like_inputs_and_validation():
    k, m = 4, 2
    codec = get_codec(k, m)
    data = make_data(k, 128, seed=9)
    parity = codec.encode(data)
    mixed = [bytearray(data[0]), memoryview(data[1]), np.frombuffer(data[2], dtype=np.uint8), data[3]]
    assert codec.encode(mixed) == parity
    assert MatrixCodec(k, m).encode(mixed) == parity
    got = codec.decode({0: bytearray(data[0]), 2: memoryview(data[2]), 4: parity[0],
                        5: np.frombuffer(parity[1], np.uint8)})
    assert got == dict(enumerate(data))
    assert all(type(v) is bytes for v in got.values())

    with pytest.raises(ValueError):
        codec.encode(data[:3])
    with pytest.raises(ValueError):
        codec.encode(data[:3] + [data[3][:-1]])
    with pytest.raises(ValueError):
        codec.decode({0: data[0], 1: data[1], 2: data[2], 4: parity[0][:-1]})
    with pytest.raises(IndexError):
        codec.decode({0: data[0], 1: data[1], 2: data[2], 6: parity[0]})
    with pytest.raises(IndexError):
        codec.decode(dict(enumerate(data)), want=[6])


def test_thread_safety():
    k, m = 6, 3
    codec = get_codec(k, m)
    jobs = []
    for seed in range(8):
        data = make_data(k, 16 * SHARD_ALIGN, seed=seed)
        jobs.append((data, MatrixCodec(k, m).encode(data)))
    errors: list[BaseException] = []

    def worker(tid: int) -> None:
        try:
            for rnd in range(10):
                data, parity = jobs[(tid + rnd) % len(jobs)]
                assert codec.encode(data) == parity
                lost = {(tid + rnd) % k, k + (rnd % m)}
                shards = data + parity
                avail = {i: shards[i] for i in range(k + m) if i not in lost}
                assert codec.decode(avail) == dict(enumerate(data))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_matrix_decode_4mib_is_fast():
    k, m = 4, 2
    size = (4 << 20) // k
    mc = MatrixCodec(k, m)
    data = make_data(k, size, seed=77)
    parity = get_codec(k, m).encode(data)
    available = {1: data[1], 3: data[3], 4: parity[0], 5: parity[1]}
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        got = mc.decode(available)
        best = min(best, time.perf_counter() - t0)
    assert got[0] == data[0] and got[2] == data[2]
    assert best < 0.1, f"4 MiB 4+2 decode took {best * 1000:.1f} ms"
