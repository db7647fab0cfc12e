"""Erasure codec for chunk shards.

This module owns the mathematics that turns the ``k`` data shards of a chunk
into ``m`` parity shards, and turns any ``k`` surviving shards (or the same
byte range of them) back into whichever shards a reader wants.  Nothing else
in the package should do Galois-field arithmetic.

On-disk meaning
---------------
Shards are RS(k,m) Cauchy over GF(2^8)/0x11d, raw shards:

* Field: GF(2^8) with primitive polynomial x^8+x^4+x^3+x^2+1 (0x11d).
* Code: systematic.  Shard ``i`` for ``i < k`` is the ``i``-th data slice
  verbatim; shard ``k + p`` (``0 <= p < m``) is parity row ``p``.
* Parity coefficients follow ISA-L's ``gf_gen_cauchy1_matrix``: the
  coefficient applied to data shard ``j`` in parity row ``p`` is
  ``1 / ((k + p) XOR j)`` in the field.  Any ``k`` rows of the resulting
  ``(k+m) x k`` matrix are invertible (needs ``k + m <= 256``).
* Every shard of a chunk has the same length ``S`` (the caller pads the
  chunk so that ``k * S`` covers it; see :data:`SHARD_ALIGN`).  Shards are
  stored as plain bytes: no pyeclib/liberasurecode fragment headers.

Why two codecs
--------------
Encoding always sees whole chunks, so it is worth using ISA-L's SIMD kernels
through pyeclib (:class:`IsalCodec`).  pyeclib wraps every fragment in an
80-byte liberasurecode header, which we strip, keeping the shards raw.

Decoding is different: a degraded read usually wants only a byte range
``[x, y)`` of a few shards, and it only has raw shard bytes.  pyeclib's decode
insists on whole fragments carrying its own headers (sizes, indices,
checksums), so it cannot work on a slice.  Reed-Solomon acts independently on
every byte position, so the same matrix decode works on any sub-range: that
is what :class:`MatrixCodec` does, with the matrices computed from reedsolo's
GF(2^8) tables and the bulk multiply done with numpy table lookups.
:class:`IsalCodec` therefore delegates ``decode`` to a :class:`MatrixCodec`.

:class:`MatrixCodec` also serves as the pure-Python reference and as the
encode fallback when pyeclib (or its ISA-L backend) is missing, refuses the
``(k, m)`` profile, or does not reproduce the reference parity.

All public objects are safe to share between threads: the codecs keep only
immutable state, per-call buffers, a per-thread pyeclib driver and a
lock-protected cache.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import reedsolo

if TYPE_CHECKING:
    from pyeclib.ec_iface import ECDriver

try:  # optional fast path
    from pyeclib import ec_iface as _ec_iface

    _ECDriver: type[ECDriver] | None = _ec_iface.ECDriver
except Exception:  # pragma: no cover - depends on the environment
    _ECDriver = None

__all__ = [
    "SHARD_ALIGN",
    "PRIMITIVE_POLY",
    "ISAL_EC_TYPE",
    "NotEnoughShards",
    "MatrixCodec",
    "IsalCodec",
    "get_codec",
]

#: Primitive polynomial of the field (x^8 + x^4 + x^3 + x^2 + 1).
PRIMITIVE_POLY = 0x11D

#: pyeclib backend whose parity matches our matrix convention.
ISAL_EC_TYPE = "isa_l_rs_cauchy"

#: Shard lengths should be a multiple of this.  With the liberasurecode
#: bundled in pyeclib 1.8.0 and ``isa_l_rs_cauchy``, each fragment payload is
#: exactly ``ceil(len(data) / k)`` bytes, so when the input is ``k * S`` bytes
#: the payload is the plain ``S``-byte slice for every ``S`` (measured for
#: S = 0..69 and assorted larger sizes): strictly, an alignment of 1 would do.
#: 64 is kept as a margin: it is a whole number of SIMD blocks for ISA-L's
#: kernels and guards against liberasurecode builds that round fragment sizes
#: up to a small power of two.  The cost is under 64 padding bytes per shard.
#: :meth:`IsalCodec.encode` checks every fragment length anyway and falls back
#: to the matrix codec rather than mis-slicing.
SHARD_ALIGN = 64

BytesLike = bytes | bytearray | memoryview | Any


class NotEnoughShards(ValueError):
    """Fewer than ``k`` shards were supplied to a decode."""


# --------------------------------------------------------------------------
# GF(2^8) tables
# --------------------------------------------------------------------------


def _build_field() -> tuple[list[int], list[int], np.ndarray]:
    # init_tables returns the tables it builds; we keep our own copies so a
    # later init_tables() call elsewhere (with another polynomial) cannot
    # change our arithmetic.  0x11d, generator 2, 8 bits is reedsolo's default
    # field, so refreshing reedsolo's module globals here is harmless.
    gf_log, gf_exp, charac = reedsolo.init_tables(
        prim=PRIMITIVE_POLY, generator=2, c_exp=8
    )
    if charac != 255:  # pragma: no cover - sanity
        raise RuntimeError("unexpected GF field size from reedsolo")
    log = [int(v) for v in gf_log]
    exp = [int(v) for v in gf_exp]  # 510 entries: doubled, no modulo needed

    log_a = np.array(log, dtype=np.int64)
    exp_a = np.array(exp, dtype=np.uint8)
    mul = exp_a[log_a[:, None] + log_a[None, :]]
    mul[0, :] = 0
    mul[:, 0] = 0
    mul.setflags(write=False)

    # Cross-check one row against reedsolo's table-free multiply, which takes
    # the polynomial explicitly and so cannot be affected by global state.
    for b in range(256):
        if int(mul[0x53, b]) != reedsolo.gf_mult_noLUT(0x53, b, prim=PRIMITIVE_POLY):
            raise RuntimeError("GF(2^8) multiplication table mismatch")
    return log, exp, mul


_LOG, _EXP, _MUL = _build_field()


def _gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _gf_inv(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return _EXP[255 - _LOG[a]]


def _gf_invert_matrix(rows: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Gauss-Jordan inverse of a square matrix over GF(2^8)."""
    n = len(rows)
    aug = [list(r) + [1 if i == j else 0 for j in range(n)] for i, r in enumerate(rows)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if aug[r][col]), None)
        if pivot is None:
            raise ValueError("singular matrix (shard indices are not independent)")
        aug[col], aug[pivot] = aug[pivot], aug[col]
        inv = _gf_inv(aug[col][col])
        if inv != 1:
            aug[col] = [_gf_mul(inv, v) for v in aug[col]]
        prow = aug[col]
        for r in range(n):
            f = aug[r][col]
            if r != col and f:
                aug[r] = [v ^ _gf_mul(f, pv) for v, pv in zip(aug[r], prow, strict=False)]
    return tuple(tuple(r[n:]) for r in aug)


def _cauchy_parity_rows(k: int, m: int) -> tuple[tuple[int, ...], ...]:
    return tuple(
        tuple(_gf_inv((k + p) ^ j) for j in range(k)) for p in range(m)
    )


@functools.lru_cache(maxsize=4096)
def _decode_rows(
    k: int, m: int, sources: tuple[int, ...], targets: tuple[int, ...]
) -> tuple[tuple[int, ...], ...]:
    """Coefficient rows expressing each target shard in terms of ``sources``.

    ``sources`` are exactly ``k`` distinct shard indices.  Result row ``t``
    has one coefficient per source.
    """
    parity = _cauchy_parity_rows(k, m)

    def enc_row(i: int) -> tuple[int, ...]:
        if i < k:
            return tuple(1 if j == i else 0 for j in range(k))
        return parity[i - k]

    inv = _gf_invert_matrix([enc_row(i) for i in sources])  # data = inv * src
    out = []
    for t in targets:
        row = enc_row(t)
        coeffs = [0] * k
        for j, c in enumerate(row):
            if c:
                for s in range(k):
                    coeffs[s] ^= _gf_mul(c, inv[j][s])
        out.append(tuple(coeffs))
    return tuple(out)


# --------------------------------------------------------------------------
# Bulk helpers
# --------------------------------------------------------------------------

_BLOCK = 1 << 16  # bytes per inner-loop block: keeps operands in cache


def _as_u8(buf: BytesLike) -> np.ndarray:
    """Zero-copy uint8 view of a bytes-like object (copies if non-contiguous)."""
    if isinstance(buf, np.ndarray):
        if buf.dtype == np.uint8 and buf.ndim == 1 and buf.flags.c_contiguous:
            return buf
        # The array's raw bytes in C order, as the memoryview cast below gives for other buffers.
        return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    mv = memoryview(buf)
    if not mv.c_contiguous:
        mv = memoryview(mv.tobytes())
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return np.frombuffer(mv, dtype=np.uint8)


def _combine(coeffs: Sequence[int], srcs: Sequence[np.ndarray], size: int) -> bytes:
    """Return sum_i coeffs[i] * srcs[i] (GF(2^8), element-wise) as bytes."""
    terms = [(c, s) for c, s in zip(coeffs, srcs, strict=False) if c]
    if not terms:
        return bytes(size)
    if len(terms) == 1 and terms[0][0] == 1:
        return terms[0][1].tobytes()
    acc = np.empty(size, dtype=np.uint8)
    tmp = np.empty(min(size, _BLOCK), dtype=np.uint8)
    for off in range(0, size, _BLOCK):
        end = min(off + _BLOCK, size)
        a = acc[off:end]
        t = tmp[: end - off]
        first = True
        for c, s in terms:
            piece = s[off:end]
            if c != 1:
                np.take(_MUL[c], piece, out=t)
                piece = t
            if first:
                a[...] = piece
                first = False
            else:
                np.bitwise_xor(a, piece, out=a)
    return acc.tobytes()


def _check_km(k: int, m: int) -> tuple[int, int]:
    if isinstance(k, bool) or isinstance(m, bool):
        raise TypeError("k and m must be integers")
    k = operator.index(k)
    m = operator.index(m)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if m < 0:
        raise ValueError(f"m must be >= 0, got {m}")
    if k + m > 256:
        raise ValueError(f"k + m must be <= 256 for GF(2^8) Cauchy codes, got {k + m}")
    return k, m


# --------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------


class MatrixCodec:
    """RS(k, m) Cauchy codec done with explicit matrices and numpy lookups.

    Works on any equal-length byte range of the shards, which is what degraded
    range reads need.  Instances hold only immutable state.
    """

    def __init__(self, k: int, m: int):
        self.k, self.m = _check_km(k, m)
        self.n = self.k + self.m
        #: ``parity_matrix[p][j]`` = coefficient of data shard j in parity p.
        self.parity_matrix: tuple[tuple[int, ...], ...] = _cauchy_parity_rows(self.k, self.m)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, m={self.m})"

    def _data_arrays(self, data_shards: Sequence[BytesLike]) -> tuple[list[np.ndarray], int]:
        if len(data_shards) != self.k:
            raise ValueError(f"expected {self.k} data shards, got {len(data_shards)}")
        arrs = [_as_u8(s) for s in data_shards]
        size = arrs[0].size
        if any(a.size != size for a in arrs):
            raise ValueError("data shards must all have the same length")
        return arrs, size

    def encode(self, data_shards: Sequence[BytesLike]) -> list[bytes]:
        """Return the ``m`` parity shards for ``k`` equal-length data shards."""
        arrs, size = self._data_arrays(data_shards)
        if size == 0:
            return [b""] * self.m
        return [_combine(row, arrs, size) for row in self.parity_matrix]

    def decode(
        self,
        available: Mapping[int, BytesLike],
        want: Sequence[int] | None = None,
    ) -> dict[int, bytes]:
        """Reconstruct shards from at least ``k`` others.

        ``available`` maps shard index (``0 .. k+m-1``) to the same byte range
        of that shard; all values must have equal length.  ``want`` lists the
        shard indices to return (default: the ``k`` data shards).  Wanted
        shards that are available are copied through; the rest are computed
        over the same byte range.
        """
        k, n = self.k, self.n
        if want is None:
            want = range(k)
        want = [operator.index(w) for w in want]
        for idx in list(available) + want:
            if not 0 <= idx < n:
                raise IndexError(f"shard index {idx} out of range 0..{n - 1}")
        if len(available) < k:
            raise NotEnoughShards(
                f"need {k} shards to decode RS({k},{self.m}), got {len(available)}"
            )
        arrs = {i: _as_u8(b) for i, b in available.items()}
        sizes = {a.size for a in arrs.values()}
        if len(sizes) != 1:
            raise ValueError("available shards must all have the same length")
        size = sizes.pop()

        out: dict[int, bytes] = {}
        missing: list[int] = []
        for w in want:
            if w in out:
                continue
            if w in arrs:
                src = available[w]
                out[w] = src if type(src) is bytes else arrs[w].tobytes()
            elif w not in missing:
                missing.append(w)
        if not missing:
            return out
        if size == 0:
            out.update((w, b"") for w in missing)
            return out

        # Ascending order puts data shards first: their rows are unit rows,
        # which keeps the decode coefficients sparse.
        sources = tuple(sorted(arrs)[:k])
        rows = _decode_rows(k, self.m, sources, tuple(missing))
        src_arrs = [arrs[i] for i in sources]
        for w, row in zip(missing, rows, strict=False):
            out[w] = _combine(row, src_arrs, size)
        return {w: out[w] for w in want}


class _BackendUnusable(RuntimeError):
    pass


class IsalCodec:
    """RS(k, m) codec encoding through pyeclib's ``isa_l_rs_cauchy`` backend.

    Fragment headers are stripped so the shards are raw; decoding goes to a
    :class:`MatrixCodec` (see module docstring).  Construction probes the
    backend once and raises if it refuses ``(k, m)`` or if its parity differs
    from the reference matrix codec.
    """

    def __init__(self, k: int, m: int):
        if _ECDriver is None:
            raise _BackendUnusable("pyeclib is not importable")
        self._driver_class = _ECDriver
        self._matrix = MatrixCodec(k, m)
        self.k, self.m, self.n = self._matrix.k, self._matrix.m, self._matrix.n
        self.parity_matrix = self._matrix.parity_matrix
        self._local = threading.local()
        self.header_size = self._probe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, m={self.m})"

    def _driver(self) -> ECDriver:
        # One driver per thread: liberasurecode instances are cheap and this
        # avoids relying on the C library being re-entrant per instance.
        drv: ECDriver | None = getattr(self._local, "driver", None)
        if drv is None:
            drv = self._driver_class(k=self.k, m=self.m, ec_type=ISAL_EC_TYPE)
            self._local.driver = drv
        return drv

    def _probe(self) -> int:
        k, m = self.k, self.m
        size = 2 * SHARD_ALIGN
        rng = np.random.default_rng(0x11D + 1000 * k + m)
        data = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(k)]
        try:
            frags = self._driver().encode(b"".join(data))
        except Exception as exc:
            raise _BackendUnusable(f"pyeclib refused RS({k},{m}): {exc}") from exc
        if len(frags) != k + m:
            raise _BackendUnusable("pyeclib returned an unexpected fragment count")
        headers = {len(f) - size for f in frags}
        if len(headers) != 1:
            raise _BackendUnusable("pyeclib fragments have inconsistent header sizes")
        header = headers.pop()
        if header < 0:
            raise _BackendUnusable("pyeclib fragment shorter than its payload")
        payloads = [bytes(f[header:]) for f in frags]
        if payloads[:k] != data:
            raise _BackendUnusable("pyeclib data fragments are not the plain slices")
        if payloads[k:] != self._matrix.encode(data):
            raise _BackendUnusable("pyeclib parity differs from the Cauchy reference")
        return header

    def encode(self, data_shards: Sequence[BytesLike]) -> list[bytes]:
        """Return the ``m`` parity shards (raw, headers stripped)."""
        k = self.k
        if len(data_shards) != k:
            raise ValueError(f"expected {k} data shards, got {len(data_shards)}")
        views = [memoryview(s) for s in data_shards]
        size = views[0].nbytes
        if any(v.nbytes != size for v in views):
            raise ValueError("data shards must all have the same length")
        if size == 0:
            return [b""] * self.m
        if any(not v.c_contiguous for v in views):
            return self._matrix.encode(data_shards)
        joined = b"".join(v.cast("B") if v.format != "B" or v.ndim != 1 else v for v in views)
        frags = self._driver().encode(joined)
        h = self.header_size
        if len(frags) != self.n or any(len(f) != h + size for f in frags):
            # Payload would not be the plain slice (alignment changed?):
            # stay correct and use the reference path.
            return self._matrix.encode(data_shards)
        return [bytes(f[h:]) for f in frags[k:]]

    def decode(
        self,
        available: Mapping[int, BytesLike],
        want: Sequence[int] | None = None,
    ) -> dict[int, bytes]:
        """Same contract as :meth:`MatrixCodec.decode` (delegates to it)."""
        return self._matrix.decode(available, want)


_codecs: dict[tuple[int, int], MatrixCodec | IsalCodec] = {}
_codecs_lock = threading.Lock()


def get_codec(k: int, m: int) -> MatrixCodec | IsalCodec:
    """Shared codec for RS(k, m): ISA-L encode when usable, else MatrixCodec."""
    k, m = _check_km(k, m)
    key = (k, m)
    codec = _codecs.get(key)
    if codec is not None:
        return codec
    with _codecs_lock:
        codec = _codecs.get(key)
        if codec is None:
            try:
                codec = IsalCodec(k, m)
            except _BackendUnusable:
                codec = MatrixCodec(k, m)
            _codecs[key] = codec
        return codec
