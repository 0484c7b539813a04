"""Sparse-weight GEMMs ``Y = X @ W``: N:M (2:4), block-sparse (BSR 4x4 / 1x4) and CSR.

X (M x K, float32, rows = spatial positions or batch) is dense; W (K x N) is given in one of the
formats of :mod:`codesign.kernels.sparse_formats`. All three kernels share one scheme: X is packed
transposed into panels of MB = 8 * mv rows (``xt[k, mm] = X[m0 + mm, k]``, K zero-padded), and
each kept weight ``w`` at (k, n) does ``acc_n[0:MB] += w * xt[k, 0:MB]``: a broadcast, mv
contiguous vector loads and mv FMAs (LLVM IR micro-kernels in :mod:`codesign.kernels._simd_ir`). No
zero is multiplied, so time scales with the kept weights, and the packing costs only O(M K).

* N:M: every channel keeps exactly n of each m, so ``rows`` channels walk their kept lists in
  lock-step (rows * mv accumulators) and the K loop is blocked by ``kc``: a kc x MB slice of
  the X panel stays in L1 while all channels sweep it (each X load feeds one FMA, so the loads
  must hit L1 for the kernel to run at FMA speed).
* BSR rows x cols: one block-column index per block; each X row load is shared by the block's
  ``rows`` channels (4 FMAs per load for 4x4 blocks).
* CSR: the 1 x 1 case of BSR with int16 indices.

The micro-kernels accumulate a panel's outputs transposed (``yt[n, mm]``, whole-vector loads
and stores, N:M re-loading them per K block); one pass per panel writes them into row-major Y.
"""
from __future__ import annotations

import numpy as np

from . import _numba_config as cfg
from ._alloc import aligned_f32
from ._simd_ir import make_bsr_tile, make_nm_tile, transpose8x8
from .sparse_formats import META_WORD_BITS, BSRWeights, CSRWeights, NMWeights

#: Panel height (rows of M per micro-kernel call) = 8 * mv per kernel, and channels per tile.
NM_MV, NM_ROWS, NM_KC = 4, 2, 128
BSR_MV = {(4, 4): 3, (1, 4): 8, (1, 1): 8}
DEFAULT_BSR_MV = 4

_COMMON_SOURCE = '''
def pack_xt(x, xt, kp):
    # panel p: xt[p*kp*MB + k*MB + mm] = x[p*MB + mm, k]; rows past M and k past K are zero.
    # Full 8x8 blocks go through the SIMD transpose, the ragged edges element by element.
    m, k = x.shape
    xf = x.reshape(-1)
    npan = (m + MB - 1) // MB
    k8 = k - k % 8
    for p in range(npan):
        base = p * kp * MB
        rows = min(MB, m - p * MB)
        r8 = rows - rows % 8
        for k0 in range(0, k8, 8):
            for m0 in range(0, r8, 8):
                transpose8x8(xf, (p * MB + m0) * k + k0, k, xt, base + k0 * MB + m0, MB)
        for mm in range(r8, rows):
            for kk in range(k8):
                xt[base + kk * MB + mm] = x[p * MB + mm, kk]
        for kk in range(k8, k):
            for mm in range(rows):
                xt[base + kk * MB + mm] = x[p * MB + mm, kk]
        for kk in range(k):
            for mm in range(rows, MB):
                xt[base + kk * MB + mm] = 0
        for i in range(base + k * MB, base + kp * MB):
            xt[i] = 0


def store_t(y, yt, m0, rows):
    # the panel's outputs were accumulated transposed, yt[n*MB + mm] = Y[m0+mm, n], so the
    # micro-kernels load and store whole vectors; one transpose per panel writes rows of Y
    n = y.shape[1]
    yf = y.reshape(-1)
    n8 = n - n % 8
    r8 = rows - rows % 8
    for c0 in range(0, n8, 8):
        for mm in range(0, r8, 8):
            transpose8x8(yt, c0 * MB + mm, MB, yf, (m0 + mm) * n + c0, n)
    for mm in range(r8, rows):
        for c in range(n8):
            y[m0 + mm, c] = yt[c * MB + mm]
    for mm in range(rows):
        for c in range(n8, n):
            y[m0 + mm, c] = yt[c * MB + mm]
'''

_NM_SOURCE = _COMMON_SOURCE + '''
def spmm(x, meta, vals, y, kp, nwords, cw):
    # meta: (N, nwords) uint64 position words; vals: (N, nwords * E) float32
    m = x.shape[0]
    n = y.shape[1]
    ldv = vals.shape[1]
    npan = (m + MB - 1) // MB
    xt = aligned_f32(npan * kp * MB)
    pack_xt(x, xt, kp)
    nblk = n // R
    metaf = meta.reshape(-1)
    valsf = vals.reshape(-1)
    for p in RANGE(npan):
        yt = aligned_f32(n * MB)
        xp = xt[p * kp * MB:(p + 1) * kp * MB]
        for w0 in range(0, nwords, cw):
            cnt = min(cw, nwords - w0)
            acc = 1 if w0 > 0 else 0
            for b in range(nblk):
                c0 = b * R
                tile(w0, cnt, nwords, metaf[c0 * nwords:(c0 + R) * nwords], ldv,
                     valsf[c0 * ldv:(c0 + R) * ldv], xp, yt[c0 * MB:(c0 + R) * MB], acc)
            for c0 in range(nblk * R, n):
                tile1(w0, cnt, nwords, metaf[c0 * nwords:(c0 + 1) * nwords], ldv,
                      valsf[c0 * ldv:(c0 + 1) * ldv], xp, yt[c0 * MB:(c0 + 1) * MB], acc)
        store_t(y, yt, p * MB, min(MB, m - p * MB))
'''

_BSR_SOURCE = _COMMON_SOURCE + '''
def spmm(x, indptr, bcol, vals, y, kp):
    m = x.shape[0]
    n = y.shape[1]
    npan = (m + MB - 1) // MB
    xt = aligned_f32(npan * kp * MB)
    pack_xt(x, xt, kp)
    nbr = indptr.shape[0] - 1
    for p in RANGE(npan):
        yt = aligned_f32(nbr * R * MB)
        xp = xt[p * kp * MB:(p + 1) * kp * MB]
        for br in range(nbr):
            tile(indptr[br], indptr[br + 1], bcol, vals, xp, yt[br * R * MB:(br + 1) * R * MB])
        store_t(y, yt, p * MB, min(MB, m - p * MB))
'''


def _compile(source: str, ns: dict, sig: str, parallel: bool):
    import numba

    opts = cfg.jit_options()
    ns = dict(ns, np=np, RANGE=numba.prange if parallel else range, aligned_f32=aligned_f32,
              transpose8x8=transpose8x8)
    with cfg.compile_context(slp=True, loop_vectorize=True):
        driver = cfg.exec_source(source, "spmm", ns)
        for helper in ("pack_xt", "store_t"):
            ns[helper] = numba.njit(inline="always", **opts)(ns[helper])
        return numba.njit(sig, **cfg.jit_options(parallel=parallel))(driver)


def _nm_kernel(rows: int, mv: int, n: int, m: int, parallel: bool):
    def build():
        ns = {"MB": 8 * mv, "R": rows, "tile": make_nm_tile(rows, mv, n, m),
              "tile1": make_nm_tile(1, mv, n, m)}
        return _compile(_NM_SOURCE, ns, "void(float32[:, ::1], uint64[:, ::1], float32[:, ::1], "
                        "float32[:, ::1], int64, int64, int64)", parallel)
    return cfg.memoised_build(("spmm_nm", rows, mv, n, m, parallel), build)


def _bsr_kernel(rows: int, cols: int, mv: int, index_type: str, parallel: bool):
    def build():
        ns = {"MB": 8 * mv, "R": rows, "tile": make_bsr_tile(rows, cols, mv)}
        sig = (f"void(float32[:, ::1], int32[::1], {index_type}[::1], float32[::1], "
               "float32[:, ::1], int64)")
        return _compile(_BSR_SOURCE, ns, sig, parallel)
    return cfg.memoised_build(("spmm_bsr", rows, cols, mv, index_type, parallel), build)


def _check_x(x: object, k: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"x must have dtype float32, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (M, K), got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (use np.ascontiguousarray)")
    if x.shape[1] != k:
        raise ValueError(f"x has K={x.shape[1]} but the weights have K={k}")
    return x


def _out(out: np.ndarray | None, x: np.ndarray, n: int) -> np.ndarray:
    m = x.shape[0]
    if out is None:
        return np.empty((m, n), np.float32)
    if (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (m, n)
            or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(m, n)}")
    if np.may_share_memory(out, x):
        raise ValueError("out must not overlap x")
    return out


def _operands(x: object, w: object, weights_type: type, producer: str,
              out: np.ndarray | None) -> np.ndarray:
    """Check ``x`` against weights ``w`` (made by ``codesign.kernels.sparse_formats.<producer>``)
    and return the result buffer (``out`` checked, or a new one)."""
    if not isinstance(w, weights_type):
        raise ValueError(f"w must be {weights_type.__name__} "
                         f"(see codesign.kernels.sparse_formats.{producer})")
    w.check()
    _check_x(x, w.k)
    return _out(out, x, w.n_out)


def spmm_nm(x: np.ndarray, w: NMWeights, out: np.ndarray | None = None, *, rows: int = NM_ROWS,
            mv: int = NM_MV, kc: int = NM_KC, parallel: bool = False) -> np.ndarray:
    """``Y = X @ W`` for N:M-compressed W (2:4 and friends).

    Args:
        x: (M, K) float32, C-contiguous.
        w: :class:`NMWeights` from :func:`codesign.kernels.sparse_formats.compress_nm`.
        out: optional (M, N) float32 C-contiguous result buffer.
        rows: channels per micro-tile (1..12); mv: 8-row vectors per panel (1..4);
            rows * mv accumulators must fit 16 ymm registers with one X vector and a
            broadcast: rows * mv <= 13.
        kc: K block whose X panel slice is kept in L1; rounded down to whole metadata words
            (64 K for 2:4), at least one word.
        parallel: split X panels over numba's threads.

    Returns:
        (M, N) float32.

    Raises:
        ValueError: bad x/out, K mismatch, or an invalid rows/mv/kc.
    """
    y = _operands(x, w, NMWeights, "compress_nm", out)
    if not (1 <= rows <= 12 and 1 <= mv <= 4 and rows * mv <= 13):
        raise ValueError(f"rows={rows}, mv={mv}: need 1<=rows<=12, 1<=mv<=4, rows*mv<=13")
    if kc <= 0:
        raise ValueError(f"kc must be positive, got {kc}")
    if y.size == 0:
        return y
    per_word = META_WORD_BITS // w.bits
    nwords = w.values.shape[1] // per_word
    kp = -(-nwords * per_word // w.n) * w.m  # X rows touched, padding entries included
    cw = max(1, kc // w.m * w.n // per_word)  # metadata words per K block
    # rows are whole 8-byte words (check()); copy only if the buffer is not 8-byte aligned
    meta64 = np.require(w.meta.view(np.uint64), requirements=["A", "C"])
    _nm_kernel(rows, mv, w.n, w.m, parallel)(x, meta64, w.values, y, kp, nwords, cw)
    return y


def spmm_bsr(x: np.ndarray, w: BSRWeights, out: np.ndarray | None = None, *,
             mv: int | None = None, parallel: bool = False) -> np.ndarray:
    """``Y = X @ W`` for block-sparse W (any block shape; 4x4 and 1x4 are tuned).

    Args:
        x: (M, K) float32, C-contiguous.
        w: :class:`BSRWeights` from :func:`codesign.kernels.sparse_formats.to_bsr`.
        out: optional (M, N) float32 C-contiguous result buffer.
        mv: 8-row vectors per X panel (default per block shape, :data:`BSR_MV`);
            rows * mv must be <= 13.
        parallel: split X panels over numba's threads.

    Returns:
        (M, N) float32.
    """
    y = _operands(x, w, BSRWeights, "to_bsr", out)
    rows, cols = w.block
    mv = BSR_MV.get((rows, cols), DEFAULT_BSR_MV) if mv is None else mv
    if not (1 <= mv <= 12 and rows * mv <= 13):
        raise ValueError(f"mv={mv} with {rows}-row blocks: need 1 <= mv and rows*mv <= 13")
    if y.size == 0:
        return y
    kp = -(-w.k // cols) * cols
    vals = w.data.reshape(-1)
    _bsr_kernel(rows, cols, mv, "int32", parallel)(x, w.indptr, w.indices, vals, y, kp)
    return y


def spmm_csr(x: np.ndarray, w: CSRWeights, out: np.ndarray | None = None, *,
             mv: int = BSR_MV[(1, 1)], parallel: bool = False) -> np.ndarray:
    """``Y = X @ W`` for unstructured W in CSR (over W^T, int16 k indices).

    Args:
        x: (M, K) float32, C-contiguous.
        w: :class:`CSRWeights` from :func:`codesign.kernels.sparse_formats.to_csr`.
        out: optional (M, N) float32 C-contiguous result buffer.
        mv: 8-row vectors per X panel (1..13).
        parallel: split X panels over numba's threads.

    Returns:
        (M, N) float32.
    """
    y = _operands(x, w, CSRWeights, "to_csr", out)
    if not 1 <= mv <= 13:
        raise ValueError(f"mv must be in 1..13, got {mv}")
    if y.size == 0:
        return y
    _bsr_kernel(1, 1, mv, "int16", parallel)(x, w.indptr, w.indices, w.data, y, max(w.k, 1))
    return y
