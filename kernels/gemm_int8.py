"""Integer GEMMs: int8 activations x int8 (or int4) weights -> int32, plus requantisation.

``C[m, n] = sum_k A[m, k] * W[k, n]`` exactly in int32 (no saturation: |A*W| <= 2^14, so any
K < 2^17 is safe), then optionally ``requantize_i32_i8`` maps C to int8 with per-output-channel
multipliers. Activations are symmetric int8 (zero point 0), weights symmetric per channel, the
layout of torchao / PT2E "int8 dynamic activation, int8 (or int4) weight" linear layers.

Weights are static in inference, so they are packed once (:func:`pack_weights_int8`,
:func:`pack_weights_int4`) into nr-column slivers with k-pairs interleaved; activations are packed
per cache block inside the kernel into mr-row panels of k-pairs. The register micro-kernel is
the ``vpmaddwd`` IR kernel of :mod:`codesign.kernels._simd_ir`; the blocking (mc, nc, kc of
:class:`codesign.kernels.specs.TileSpec`) is the same BLIS loop nest as
:mod:`codesign.kernels.gemm_f32`, with kc counted in K elements (it must be even: blocks hold whole
k-pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _numba_config as cfg
from ._operands import check_array, check_int_tile, result_matrix
from ._simd_ir import PERM16, make_int_tile
from .gemm_f32 import STORE_TILE_SOURCE
from .specs import TileSpec

#: Micro-tiles (mr, nr) of the int8-weight kernel: mr*nr/8 accumulators + nr/8 B vectors + 1
#: broadcast must fit AVX2's 16 ymm registers.
SUPPORTED_I8_MICRO_TILES = ((6, 16), (5, 16), (4, 16), (4, 24), (8, 8), (4, 8))
#: Micro-tiles of the int4-weight kernel (16-column nibble groups).
SUPPORTED_I4_MICRO_TILES = ((6, 16), (5, 16), (4, 16))

DEFAULT_INT_TILE = TileSpec(mc=72, nc=1024, kc=1024, mr=6, nr=16)


@dataclass(frozen=True, eq=False)
class PackedIntWeights:
    """Weights W (K x N) packed for the integer GEMM.

    Attributes:
        data: flat packed array; int16 k-pairs (bits=8) or uint8 nibble pairs (bits=4). Sliver
            q (columns q*nr .. q*nr+nr-1, zero-padded past N) occupies
            ``data[q * kpairs * per_pair : (q + 1) * kpairs * per_pair]``.
        k, n: logical shape of W.
        nr: sliver width; must equal the micro-tile nr of the GEMM that uses it.
        bits: 8 or 4.
    """

    data: np.ndarray
    k: int
    n: int
    nr: int
    bits: int

    @property
    def kpairs(self) -> int:
        return (self.k + 1) // 2

    @property
    def per_pair(self) -> int:
        """Array elements per k-pair of one sliver."""
        return 2 * self.nr if self.bits == 8 else self.nr

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def check(self) -> None:
        """Raise ValueError unless ``data`` matches the declared shape (kernels index it
        unchecked)."""
        dtype = {8: np.int16, 4: np.uint8}.get(self.bits)
        if dtype is None or self.nr <= 0 or self.nr % (8 if self.bits == 8 else 16):
            raise ValueError(f"invalid packing bits={self.bits}, nr={self.nr}")
        want = -(-self.n // self.nr) * self.kpairs * self.per_pair
        if (not isinstance(self.data, np.ndarray) or self.data.dtype != dtype
                or self.data.ndim != 1 or self.data.size != want
                or not self.data.flags.c_contiguous):
            raise ValueError(f"packed data must be a contiguous 1-D {np.dtype(dtype).name} "
                             f"array of {want} elements")


def _padded_pairs(w: np.ndarray, nr: int) -> np.ndarray:
    """W zero-padded to (2*kpairs, nslivers*nr), reshaped to (nslivers, kpairs, nr, 2)."""
    k, n = w.shape
    kp, ns = (k + 1) // 2, -(-n // nr)
    pad = np.zeros((2 * kp, ns * nr), np.int16)
    pad[:k, :n] = w
    return pad.reshape(kp, 2, ns, nr).transpose(2, 0, 3, 1)


def pack_weights_int8(w: np.ndarray, nr: int = 16) -> PackedIntWeights:
    """Pack int8 weights W (K, N) into k-pair-interleaved int16 slivers of nr columns.

    Raises:
        ValueError: W not a C-contiguous 2-D int8 array, or nr not a multiple of 8.
    """
    check_array("w", w, np.int8, 2)
    if nr <= 0 or nr % 8:
        raise ValueError(f"nr must be a positive multiple of 8, got {nr}")
    data = np.ascontiguousarray(_padded_pairs(w, nr)).ravel()
    return PackedIntWeights(data, w.shape[0], w.shape[1], nr, 8)


def pack_weights_int4(w: np.ndarray, nr: int = 16) -> PackedIntWeights:
    """Pack int4 weights (given as int8 values in [-8, 7], shape (K, N)) into nibble pairs.

    Byte ``pos`` of a 16-column group at k-pair p holds column ``PERM16[pos]`` with k = 2p in
    the low and k = 2p + 1 in the high nibble (see :mod:`codesign.kernels._simd_ir`): half the bytes
    of the int8 packing, unpacked to int16 pairs inside the micro-kernel.

    Raises:
        ValueError: W not a C-contiguous 2-D int8 array, values outside [-8, 7], or nr not a
            multiple of 16.
    """
    check_array("w", w, np.int8, 2)
    if nr <= 0 or nr % 16:
        raise ValueError(f"nr must be a positive multiple of 16 for int4 weights, got {nr}")
    if w.size and (int(w.min()) < -8 or int(w.max()) > 7):
        raise ValueError("int4 weights must lie in [-8, 7]")
    pairs = _padded_pairs(w, nr)  # (ns, kp, nr, 2)
    ns, kp = pairs.shape[0], pairs.shape[1]
    groups = pairs.reshape(ns, kp, nr // 16, 16, 2)[:, :, :, PERM16, :]
    nib = groups.astype(np.uint8) & 0xF
    data = (nib[..., 0] | (nib[..., 1] << 4)).astype(np.uint8)
    return PackedIntWeights(np.ascontiguousarray(data).ravel(), w.shape[0], w.shape[1], nr, 4)


_DRIVER_SOURCE = STORE_TILE_SOURCE + '''
def pack_a(a, ap, ic, mcb, p0, kpb):
    # panel q: rows ic+q*MR.., k-pairs p0..p0+kpb of A as int16 pairs; padding is zero
    k = a.shape[1]
    npan = (mcb + MR - 1) // MR
    for q in range(npan):
        base = q * kpb * MR * 2
        for i in range(MR):
            r = q * MR + i
            if r < mcb:
                for p in range(kpb):
                    kk = 2 * (p0 + p)
                    o = base + (p * MR + i) * 2
                    ap[o] = a[ic + r, kk]
                    ap[o + 1] = a[ic + r, kk + 1] if kk + 1 < k else 0
            else:
                for p in range(kpb):
                    o = base + (p * MR + i) * 2
                    ap[o] = 0
                    ap[o + 1] = 0


def gemm(a, bp, c, kpairs, mc, nc, kc):
    m = a.shape[0]
    n = c.shape[1]
    kcp = kc // 2
    ap = np.empty(((min(mc, m) + MR - 1) // MR) * MR * 2 * min(kcp, kpairs), np.int16)
    for jc in range(0, n, nc):
        ncb = min(nc, n - jc)
        for p0 in range(0, kpairs, kcp):
            kpb = min(kcp, kpairs - p0)
            first = p0 == 0
            for ic in range(0, m, mc):
                mcb = min(mc, m - ic)
                pack_a(a, ap, ic, mcb, p0, kpb)
                nsl = (ncb + NR - 1) // NR
                for qq in RANGE(nsl):
                    q = jc // NR + qq
                    s = np.empty(MR * NR, np.int32)
                    boff = (q * kpairs + p0) * PER_PAIR
                    bsl = bp[boff:boff + kpb * PER_PAIR]
                    cols = min(NR, ncb - qq * NR)
                    for ir in range(0, mcb, MR):
                        pan = ir // MR
                        apan = ap[pan * kpb * MR * 2:(pan + 1) * kpb * MR * 2]
                        tile(kpb, apan, bsl, s)
                        store(c, s, ic + ir, jc + qq * NR, min(MR, mcb - ir), cols, first)
'''


def _build(mr: int, nr: int, bits: int, parallel: bool):
    import numba

    ns: dict = {"np": np, "MR": mr, "NR": nr, "PER_PAIR": 2 * nr if bits == 8 else nr,
                "RANGE": numba.prange if parallel else range,
                "tile": make_int_tile(mr, nr, nibbles=bits == 4)}
    opts = cfg.jit_options()
    with cfg.compile_context(slp=True, loop_vectorize=True):
        driver = cfg.exec_source(_DRIVER_SOURCE, "gemm", ns)
        for helper in ("pack_a", "store"):
            ns[helper] = numba.njit(inline="always", **opts)(ns[helper])
        bty = "int16" if bits == 8 else "uint8"
        sig = (f"void(int8[:, ::1], {bty}[::1], int32[:, ::1], int64, int64, int64, int64)")
        return numba.njit(sig, **cfg.jit_options(parallel=parallel))(driver)


def gemm_int_kernel(mr: int, nr: int, bits: int, parallel: bool = False):
    """Compiled private driver ``(a, w.data, c, kpairs, mc, nc, kc) -> None`` (memoised)."""
    tiles = SUPPORTED_I8_MICRO_TILES if bits == 8 else SUPPORTED_I4_MICRO_TILES
    if (mr, nr) not in tiles:
        raise ValueError(f"int{bits} micro-tile {mr}x{nr} not supported; choose one of "
                         f"{', '.join(f'{a}x{b}' for a, b in tiles)}")
    return cfg.memoised_build(("gemm_int", mr, nr, bits, parallel),
                              lambda: _build(mr, nr, bits, parallel))


def gemm_i8_i32(a: np.ndarray, w: PackedIntWeights, tile: TileSpec = DEFAULT_INT_TILE,
                out: np.ndarray | None = None, parallel: bool = False) -> np.ndarray:
    """``C = A @ W`` with int8 activations and packed int8/int4 weights, int32 result.

    Args:
        a: (M, K) int8, C-contiguous.
        w: weights from :func:`pack_weights_int8` or :func:`pack_weights_int4`, with
            ``w.nr == tile.nr``.
        tile: blocking; kc counts K elements and must be even; (mr, nr) one of
            :data:`SUPPORTED_I8_MICRO_TILES` (int8) / :data:`SUPPORTED_I4_MICRO_TILES` (int4).
        out: optional (M, N) int32 C-contiguous buffer (overwritten).
        parallel: spread column slivers over numba's threads.

    Returns:
        (M, N) int32, exact.

    Raises:
        ValueError: bad dtype/shape/contiguity, K mismatch, odd kc, tile/weights nr mismatch or
            unsupported micro-tile.
    """
    check_array("a", a, np.int8, 2)
    if not isinstance(w, PackedIntWeights):
        raise ValueError("w must be PackedIntWeights (use pack_weights_int8/pack_weights_int4)")
    w.check()
    check_int_tile(tile, w.nr)
    m, k = a.shape
    if k != w.k:
        raise ValueError(f"inner dimensions differ: a is {a.shape}, w is ({w.k}, {w.n})")
    kern = gemm_int_kernel(tile.mr, tile.nr, w.bits, parallel)
    out = result_matrix(out, (m, w.n), np.int32, {"a": a, "the weights": w.data})
    if m == 0 or w.n == 0:
        return out
    if k == 0:
        out[...] = 0
        return out
    kern(a, w.data, out, w.kpairs, tile.mc, tile.nc, tile.kc)
    return out


@cfg.kernel("void(int32[:, ::1], int32[::1], float32[::1], int64, int8[:, ::1])")
def _requantize(acc, bias, mult, zero_point, out):
    m, n = acc.shape
    for i in range(m):
        for j in range(n):
            y = np.float32(acc[i, j] + bias[j]) * mult[j]
            q = np.int64(np.rint(y)) + zero_point
            out[i, j] = min(max(q, -128), 127)


def requantize_i32_i8(acc: np.ndarray, multipliers: np.ndarray, bias: np.ndarray | None = None,
                      zero_point: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Map int32 accumulators to int8 with per-output-channel multipliers.

    ``out[m, n] = clip(rint(float32(acc[m, n] + bias[n]) * multipliers[n]) + zero_point,
    -128, 127)`` with float32 arithmetic and round-half-to-even, where
    ``multipliers[n] = act_scale * weight_scale[n] / out_scale`` and bias is quantised at
    ``act_scale * weight_scale[n]``.

    Args:
        acc: (M, N) int32, C-contiguous.
        multipliers: (N,) float32.
        bias: optional (N,) int32.
        zero_point: output zero point in [-128, 127].
        out: optional (M, N) int8 C-contiguous buffer.

    Returns:
        (M, N) int8.
    """
    check_array("acc", acc, np.int32, 2)
    m, n = acc.shape
    for name, vec, dt in (("multipliers", multipliers, np.float32), ("bias", bias, np.int32)):
        if vec is None:
            continue
        if not isinstance(vec, np.ndarray) or vec.dtype != dt or vec.shape != (n,):
            raise ValueError(f"{name} must be a ({n},) {np.dtype(dt).name} array")
        if not vec.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if not -128 <= int(zero_point) <= 127:
        raise ValueError(f"zero_point must be in [-128, 127], got {zero_point}")
    if bias is None:
        bias = np.zeros(n, np.int32)
    out = result_matrix(out, (m, n), np.int8)
    _requantize(acc, bias, multipliers, int(zero_point), out)
    return out


def linear_i8(a: np.ndarray, w: PackedIntWeights, multipliers: np.ndarray,
              bias: np.ndarray | None = None, zero_point: int = 0,
              tile: TileSpec = DEFAULT_INT_TILE) -> np.ndarray:
    """Quantised linear layer: :func:`gemm_i8_i32` then :func:`requantize_i32_i8` (int8 out)."""
    return requantize_i32_i8(gemm_i8_i32(a, w, tile), multipliers, bias, zero_point)
