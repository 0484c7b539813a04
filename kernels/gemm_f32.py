"""Single-precision GEMM ``C = A @ B`` with BLIS-style cache blocking and a register micro-kernel.

Decomposition (the GotoBLAS/BLIS loop nest, blocked by :class:`codesign.kernels.specs.TileSpec`)::

    for jc in 0..N step nc:            B panel kc x nc packed once per (jc, pc)  -> L2/L3
      for pc in 0..K step kc:
        pack B[pc:pc+kc, jc:jc+nc] into nr-wide slivers (k-major, zero-padded on the N edge)
        for ic in 0..M step mc:        A block mc x kc packed into mr-tall panels -> L2
          pack A[ic:ic+mc, pc:pc+kc]  (k-major within a panel, zero-padded on the M edge)
          for jr in 0..nc step nr:     one kc x nr sliver of B stays in L1
            for ir in 0..mc step mr:
              micro-kernel: mr x nr accumulators += A panel (kc x mr) x B sliver (kc x nr)

Micro-kernel (per (mr, nr), ``micro=`` of :func:`gemm_f32_kernel`):

* ``"ir"`` (default): explicit vector IR (:func:`codesign.kernels._simd_ir.make_f32_tile`): per k,
  ``nr / 8`` vector loads of the B sliver, then per row one ``vbroadcastss`` and
  ``nr / 8`` ``vfmadd231ps``. Deterministic code shape, independent of vectoriser heuristics.
* ``"slp"``: the same loop written as straight-line Python with ``mr * nr`` scalar
  accumulators (:func:`micro_kernel_source`), compiled with the SLP vectoriser on and the loop
  vectoriser off (``codesign.kernels._numba_config``). Code-shape details found with
  ``inspect_asm``: panels and the result scratch must be *flat* 1-D arrays indexed from the
  ``range`` variable only (2-D panels with a run-time stride, or a 2-D scratch, kept all mr
  broadcasts live and spilled accumulators: 2.3x slower; a run-time offset argument brought back
  numba's negative-index wraparound selects: 13 instead of 80 GFLOP/s).

Both reach ~100 GFLOP/s in L1 on the Zen 3 host (the FMA peak). Results leave through a small
scratch block that a fully unrolled loop writes into C, so edge tiles need no special kernel.
A panels are packed with an mr x 8 SIMD block transpose
(:func:`codesign.kernels._simd_ir.make_pack_a_block`): with a scalar packing loop, packing A cost as
much as the arithmetic for N = 64 (conv layers), 30 % of their time.

Register budget (16 ymm on AVX2): ``mr * nr / 8`` accumulators + ``nr / 8`` B vectors + one A
broadcast. 6x16 (12 + 2 + 1), 5x16, 4x16, 4x24 and 8x8 fit; 4x8 fits but has only four
independent FMA chains, fewer than the FMA latency x throughput (4 cycles x 2 pipes) needs, so
it runs at about half speed: it is in the search space precisely because it is slower.
"""
from __future__ import annotations

import numpy as np

from . import _numba_config as cfg
from ._operands import check_array, check_tile_type, result_matrix
from ._simd_ir import make_f32_tile, make_pack_a_block
from .specs import TileSpec

#: Micro-tiles (mr, nr) this module can generate. nr must be a multiple of the 8-lane ymm width.
SUPPORTED_MICRO_TILES = ((6, 16), (5, 16), (4, 16), (4, 24), (8, 8), (4, 8), (6, 8), (3, 16))

DEFAULT_TILE = TileSpec()


def micro_kernel_source(mr: int, nr: int, name: str, dtype: str = "np.float32") -> str:
    """Source of ``name(kc, ap, bp, out)``: ``out[i*nr+j] = sum_p ap[p*mr+i] * bp[p*nr+j]``.

    ``ap`` is one packed A panel and ``bp`` one packed B sliver (flat, k-major); ``out`` is a
    flat mr*nr scratch (overwritten, not accumulated). Indices are built from the ``range``
    variable only, so LLVM can prove them non-negative and drop numba's negative-index
    wraparound selects (a run-time offset argument brought them back: 13 vs 70+ GFLOP/s).
    """
    lines = [f"def {name}(kc, ap, bp, out):"]
    for i in range(mr):
        lines.append("    " + "; ".join(f"c{i}_{j} = {dtype}(0)" for j in range(nr)))
    lines.append("    for p in range(kc):")
    lines.append(f"        pa = p * {mr}")
    lines.append(f"        pb = p * {nr}")
    lines.append("        " + "; ".join(f"b{j} = bp[pb + {j}]" for j in range(nr)))
    for i in range(mr):
        lines.append(f"        a{i} = ap[pa + {i}]")
        lines.append("        " + "; ".join(f"c{i}_{j} += a{i} * b{j}" for j in range(nr)))
    for i in range(mr):
        lines.append("    " + "; ".join(f"out[{i * nr + j}] = c{i}_{j}" for j in range(nr)))
    return "\n".join(lines) + "\n"


#: ``store`` of the generated GEMM drivers (this module's and the integer GEMM's): the micro-tile
#: result leaves through a flat MR*NR scratch, so edge tiles need no special micro-kernel.
STORE_TILE_SOURCE = '''
def store(c, s, r0, c0, rows, cols, first):
    # add (or, for the first k block, write) the micro-tile scratch into C, clipped to the edge
    if rows == MR and cols == NR:
        if first:
            for i in range(MR):
                for j in range(NR):
                    c[r0 + i, c0 + j] = s[i * NR + j]
        else:
            for i in range(MR):
                for j in range(NR):
                    c[r0 + i, c0 + j] += s[i * NR + j]
    else:
        for i in range(rows):
            for j in range(cols):
                if first:
                    c[r0 + i, c0 + j] = s[i * NR + j]
                else:
                    c[r0 + i, c0 + j] += s[i * NR + j]
'''

_DRIVER_SOURCE = STORE_TILE_SOURCE + '''
def pack_a(a, ap, ic, mcb, pc, kcb):
    # panel q holds rows ic+q*MR .. +MR of A[:, pc:pc+kcb], k-major; rows past M are zero.
    # Whole MR x 8 blocks go through the SIMD block transpose, the rest element by element.
    lda = a.shape[1]
    af = a.reshape(-1)
    npan = (mcb + MR - 1) // MR
    k8 = kcb - kcb % 8
    for q in range(npan):
        base = q * kcb * MR
        if (q + 1) * MR <= mcb:
            r0 = (ic + q * MR) * lda + pc
            for p in range(0, k8, 8):
                pack_block(af, r0 + p, lda, ap, base + p * MR)
            for i in range(MR):
                for p in range(k8, kcb):
                    ap[base + p * MR + i] = a[ic + q * MR + i, pc + p]
        else:
            for i in range(MR):
                r = q * MR + i
                if r < mcb:
                    for p in range(kcb):
                        ap[base + p * MR + i] = a[ic + r, pc + p]
                else:
                    for p in range(kcb):
                        ap[base + p * MR + i] = 0


def pack_b(b, bp, pc, kcb, jc, ncb):
    # sliver q holds columns jc+q*NR .. +NR of B[pc:pc+kcb, :], k-major; columns past N are zero
    npan = (ncb + NR - 1) // NR
    for q in range(npan):
        base = q * kcb * NR
        c0 = jc + q * NR
        w = min(NR, ncb - q * NR)
        if w == NR:
            for p in range(kcb):
                for j in range(NR):
                    bp[base + p * NR + j] = b[pc + p, c0 + j]
        else:
            for p in range(kcb):
                for j in range(NR):
                    bp[base + p * NR + j] = b[pc + p, c0 + j] if j < w else 0


def gemm(a, b, c, mc, nc, kc):
    m, k = a.shape
    n = b.shape[1]
    ap = np.empty(((min(mc, m) + MR - 1) // MR) * MR * min(kc, k), DT)
    bp = np.empty(((min(nc, n) + NR - 1) // NR) * NR * min(kc, k), DT)
    for jc in range(0, n, nc):
        ncb = min(nc, n - jc)
        for pc in range(0, k, kc):
            kcb = min(kc, k - pc)
            first = pc == 0
            pack_b(b, bp, pc, kcb, jc, ncb)
            for ic in range(0, m, mc):
                mcb = min(mc, m - ic)
                pack_a(a, ap, ic, mcb, pc, kcb)
                nsl = (ncb + NR - 1) // NR
                for q in RANGE(nsl):
                    jr = q * NR
                    s = np.empty(MR * NR, DT)
                    bsl = bp[q * kcb * NR:(q + 1) * kcb * NR]
                    cols = min(NR, ncb - jr)
                    for ir in range(0, mcb, MR):
                        apan = ap[(ir // MR) * kcb * MR:(ir // MR + 1) * kcb * MR]
                        micro(kcb, apan, bsl, s)
                        store(c, s, ic + ir, jc + jr, min(MR, mcb - ir), cols, first)
'''


def _build(mr: int, nr: int, parallel: bool, micro: str):
    """Compile the GEMM driver for one micro-tile (memoised by the caller)."""
    import numba

    ns: dict = {"np": np, "MR": mr, "NR": nr, "DT": np.float32,
                "pack_block": make_pack_a_block(mr),
                "RANGE": numba.prange if parallel else range}
    opts = cfg.jit_options()
    with cfg.compile_context(slp=True, loop_vectorize=False):
        if micro == "ir":
            ns["micro"] = make_f32_tile(mr, nr)
        else:
            src = micro_kernel_source(mr, nr, "micro")
            ns["micro"] = numba.njit(**opts)(cfg.exec_source(src, "micro", ns))
        # the driver's globals are ``ns``: swapping its helpers for dispatchers links them in
        driver = cfg.exec_source(_DRIVER_SOURCE, "gemm", ns)
        for helper in ("pack_a", "pack_b", "store"):
            ns[helper] = numba.njit(inline="always", **opts)(ns[helper])
        sig = "void(float32[:, ::1], float32[:, ::1], float32[:, ::1], int64, int64, int64)"
        return numba.njit(sig, **cfg.jit_options(parallel=parallel))(driver)


def gemm_f32_kernel(mr: int, nr: int, parallel: bool = False, micro: str = "ir"):
    """The compiled private driver ``(a, b, c, mc, nc, kc) -> None`` for micro-tile mr x nr.

    For callers (conv, benchmarks) that have validated their operands themselves. ``micro``
    picks the register kernel: ``"ir"`` (vector IR, the default) or ``"slp"`` (the generated
    scalar-accumulator numba source, vectorised by SLP; same loop, slower to compile).
    """
    if (mr, nr) not in SUPPORTED_MICRO_TILES:
        raise ValueError(f"micro-tile {mr}x{nr} not supported; choose one of "
                         f"{', '.join(f'{a}x{b}' for a, b in SUPPORTED_MICRO_TILES)}")
    if micro not in ("ir", "slp"):
        raise ValueError(f"micro must be 'ir' or 'slp', got {micro!r}")
    return cfg.memoised_build(("gemm_f32", mr, nr, parallel, micro),
                              lambda: _build(mr, nr, parallel, micro))


def check_tile(tile: TileSpec) -> None:
    """Raise ValueError unless ``tile`` is a TileSpec this module can run."""
    check_tile_type(tile)
    if (tile.mr, tile.nr) not in SUPPORTED_MICRO_TILES:
        raise ValueError(f"micro-tile {tile.mr}x{tile.nr} not supported; choose one of "
                         f"{', '.join(f'{a}x{b}' for a, b in SUPPORTED_MICRO_TILES)}")


def gemm_f32(a: np.ndarray, b: np.ndarray, tile: TileSpec = DEFAULT_TILE,
             out: np.ndarray | None = None, parallel: bool = False) -> np.ndarray:
    """``C = A @ B`` in float32.

    Args:
        a: (M, K) float32, C-contiguous.
        b: (K, N) float32, C-contiguous.
        tile: cache blocks (mc, nc, kc) and micro-tile (mr, nr); (mr, nr) must be one of
            :data:`SUPPORTED_MICRO_TILES`.
        out: optional (M, N) float32 C-contiguous result buffer (overwritten).
        parallel: split the nr-wide column slivers of each block over numba's threads
            (``numba.set_num_threads``); False runs on the calling thread only.

    Returns:
        (M, N) float32 array ``out`` (allocated when not given). Sums are accumulated in float32
        in k order within a kc block, so results differ from numpy by rounding only.

    Raises:
        ValueError: wrong dtype, rank, contiguity, mismatched K, bad or overlapping ``out``, or
            an unsupported tile.
    """
    check_array("a", a, np.float32, 2)
    check_array("b", b, np.float32, 2)
    check_tile(tile)
    m, k = a.shape
    if b.shape[0] != k:
        raise ValueError(f"inner dimensions differ: a is {a.shape}, b is {b.shape}")
    n = b.shape[1]
    out = result_matrix(out, (m, n), np.float32, {"a": a, "b": b})
    if m == 0 or n == 0:
        return out
    if k == 0:
        out[...] = 0
        return out
    gemm_f32_kernel(tile.mr, tile.nr, parallel)(a, b, out, tile.mc, tile.nc, tile.kc)
    return out
