"""fp32 and integer GEMM kernels against numpy references (odd shapes, edge tiles)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from codesign.kernels.gemm_f32 import SUPPORTED_MICRO_TILES, gemm_f32, gemm_f32_kernel
from codesign.kernels.gemm_int8 import (gemm_i8_i32, linear_i8, pack_weights_int4,
                                        pack_weights_int8, requantize_i32_i8)
from codesign.kernels.specs import TileSpec

# (M, K, N): not multiples of any tile; the small cache blocks below force several mc/nc/kc
# blocks plus ragged edge blocks in every dimension
SHAPES = [(37, 29, 53), (1, 1, 1), (13, 70, 9), (50, 33, 48)]


def small_tile(mr: int, nr: int, kc: int = 16) -> TileSpec:
    return TileSpec(mc=2 * mr, nc=2 * nr, kc=kc, mr=mr, nr=nr)


def rand(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


@pytest.mark.parametrize("mr,nr", [(6, 16), (4, 8), (8, 8)])
def test_gemm_f32_matches_numpy(mr, nr):
    rng = np.random.default_rng(mr * 100 + nr)
    for m, k, n in SHAPES:
        a, b = rand(rng, (m, k)), rand(rng, (k, n))
        for tile in (small_tile(mr, nr), TileSpec(mc=(72 // mr) * mr, nc=(1024 // nr) * nr,
                                                  kc=512, mr=mr, nr=nr)):
            np.testing.assert_allclose(gemm_f32(a, b, tile), a @ b, rtol=2e-5, atol=2e-5)


def test_gemm_f32_out_buffer_and_degenerate_shapes():
    rng = np.random.default_rng(1)
    a, b = rand(rng, (7, 5)), rand(rng, (5, 3))
    out = np.full((7, 3), np.nan, np.float32)
    assert gemm_f32(a, b, out=out) is out
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    assert gemm_f32(np.zeros((0, 5), np.float32), b).shape == (0, 3)
    np.testing.assert_array_equal(gemm_f32(np.zeros((4, 0), np.float32),
                                           np.zeros((0, 2), np.float32)), np.zeros((4, 2)))


def _target_has_fma() -> bool:
    """Whether numba compiles for a CPU with FMA: the host's features unless NUMBA_CPU_NAME
    names another target (generic x86-64 has none)."""
    from llvmlite import binding
    from numba.core import config

    if config.CPU_NAME not in (None, "host"):
        return "+fma" in (config.CPU_FEATURES or "")
    return bool(binding.get_host_cpu_features().get("fma", False))


def test_slp_micro_kernel_source_matches_numpy():
    """The scalar-accumulator variant (micro="slp"): the generated kernel alone, compiled the
    way the driver compiles it (SLP on, loop vectoriser off)."""
    import numba

    from codesign.kernels import _numba_config as cfg
    from codesign.kernels.gemm_f32 import micro_kernel_source

    rng = np.random.default_rng(2)
    mr, nr, kc = 4, 8, 19
    ns = {"np": np}
    fn = cfg.exec_source(micro_kernel_source(mr, nr, "micro"), "micro", ns)
    with cfg.compile_context(slp=True, loop_vectorize=False):
        micro = numba.njit("void(int64, float32[::1], float32[::1], float32[::1])",
                           **cfg.jit_options())(fn)
    ap, bp, out = rand(rng, (kc * mr,)), rand(rng, (kc * nr,)), np.empty(mr * nr, np.float32)
    micro(kc, ap, bp, out)
    np.testing.assert_allclose(out.reshape(mr, nr), ap.reshape(kc, mr).T @ bp.reshape(kc, nr),
                               rtol=1e-5, atol=1e-5)
    asm = next(iter(micro.inspect_asm().values()))
    # SLP packed the scalar accumulators into vector ops ("ps": packed single): FMAs where the
    # compile target has FMA, else packed multiplies and adds (NUMBA_CPU_NAME=generic, SSE2 only)
    assert re.search(r"\b(?:vfmadd\d{3}ps|v?mulps)\b", asm), "SLP did not vectorise the micro-kernel"
    if _target_has_fma():
        assert "vfmadd" in asm


@pytest.mark.slow
def test_gemm_f32_parallel_agrees():
    rng = np.random.default_rng(2)
    a, b = rand(rng, (45, 38)), rand(rng, (38, 27))
    c = np.empty((45, 27), np.float32)
    gemm_f32_kernel(4, 8, parallel=True)(a, b, c, 8, 16, 16)
    np.testing.assert_allclose(c, a @ b, rtol=2e-5, atol=2e-5)


def test_gemm_f32_validation():
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="dtype float32"):
        gemm_f32(a.astype(np.float64), b)
    with pytest.raises(ValueError, match="C-contiguous"):
        gemm_f32(np.ones((3, 4), np.float32).T, b)
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm_f32(a, np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        gemm_f32(np.ones(3, np.float32), b)
    with pytest.raises(ValueError, match="micro-tile 7x16"):
        gemm_f32(a, b, TileSpec(mc=14, nc=32, kc=8, mr=7, nr=16))
    with pytest.raises(ValueError, match="out must have shape"):
        gemm_f32(a, b, out=np.empty((4, 3), np.float32))
    sq = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        gemm_f32(sq, sq, out=sq)
    assert (6, 16) in SUPPORTED_MICRO_TILES and (4, 8) in SUPPORTED_MICRO_TILES


def int_operands(rng, m, k, n, bits):
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    lo, hi = (-8, 8) if bits == 4 else (-128, 128)
    w = rng.integers(lo, hi, (k, n)).astype(np.int8)
    return a, w


@pytest.mark.parametrize("bits,mr,nr", [(8, 6, 16), (8, 4, 8), (4, 6, 16)])
def test_gemm_int_exact(bits, mr, nr):
    rng = np.random.default_rng(bits * 10 + mr)
    pack = pack_weights_int8 if bits == 8 else pack_weights_int4
    for m, k, n in SHAPES + [(9, 2, 17)]:
        a, w = int_operands(rng, m, k, n, bits)
        ref = a.astype(np.int64) @ w.astype(np.int64)
        packed = pack(w, nr)
        for tile in (small_tile(mr, nr, kc=8), TileSpec(mc=(72 // mr) * mr, nc=nr * 8,
                                                          kc=1024, mr=mr, nr=nr)):
            np.testing.assert_array_equal(gemm_i8_i32(a, packed, tile), ref)


def test_gemm_int8_extreme_values_do_not_overflow():
    # -128 * -128 pairs are the worst case of the int16 pair-add (2 * 2^14 fits in int32)
    a = np.full((7, 300), -128, np.int8)
    w = np.full((300, 19), -128, np.int8)
    tile = TileSpec(mc=12, nc=32, kc=64, mr=6, nr=16)
    np.testing.assert_array_equal(gemm_i8_i32(a, pack_weights_int8(w), tile),
                                  np.full((7, 19), 300 * 16384, np.int64))


def test_int4_packing_roundtrip_layout():
    rng = np.random.default_rng(5)
    _, w = int_operands(rng, 1, 11, 21, 4)
    p = pack_weights_int4(w)
    assert p.bits == 4 and p.data.dtype == np.uint8
    # two 16-column slivers x 6 k-pairs x 16 bytes: a quarter of the int16 pairs of int8
    assert p.nbytes == 2 * 6 * 16 == pack_weights_int8(w).nbytes // 4


def test_requantize_matches_reference():
    rng = np.random.default_rng(7)
    acc = rng.integers(-300_000, 300_000, (23, 17)).astype(np.int32)
    mult = rng.uniform(1e-5, 1e-3, 17).astype(np.float32)
    bias = rng.integers(-5000, 5000, 17).astype(np.int32)
    y = (acc.astype(np.int64) + bias).astype(np.float32) * mult
    ref = np.clip(np.rint(y).astype(np.int64) + 3, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(requantize_i32_i8(acc, mult, bias, zero_point=3), ref)
    assert requantize_i32_i8(acc, mult).dtype == np.int8


def test_linear_i8_end_to_end():
    rng = np.random.default_rng(8)
    a, w = int_operands(rng, 19, 40, 24, 8)
    mult = np.full(24, 1.0 / 2048, np.float32)
    out = linear_i8(a, pack_weights_int8(w), mult, tile=small_tile(6, 16, kc=8))
    ref = np.clip(np.rint((a.astype(np.int64) @ w).astype(np.float32) * mult), -128, 127)
    np.testing.assert_array_equal(out, ref.astype(np.int8))


def test_gemm_int_validation():
    rng = np.random.default_rng(9)
    a, w = int_operands(rng, 4, 6, 8, 8)
    packed = pack_weights_int8(w)
    with pytest.raises(ValueError, match="even kc"):
        gemm_i8_i32(a, packed, TileSpec(mc=12, nc=32, kc=7, mr=6, nr=16))
    with pytest.raises(ValueError, match="packing nr"):
        gemm_i8_i32(a, packed, TileSpec(mc=8, nc=8, kc=8, mr=4, nr=8))
    with pytest.raises(ValueError, match="dtype int8"):
        gemm_i8_i32(a.astype(np.int16), packed)
    with pytest.raises(ValueError, match="PackedIntWeights"):
        gemm_i8_i32(a, w)
    import dataclasses
    with pytest.raises(ValueError, match="packed data"):
        gemm_i8_i32(a, dataclasses.replace(packed, data=packed.data[:-1].copy()))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_weights_int4(np.full((2, 2), 9, np.int8))
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_weights_int8(w, nr=12)
    with pytest.raises(ValueError, match="zero_point"):
        requantize_i32_i8(np.zeros((2, 2), np.int32), np.ones(2, np.float32), zero_point=200)
    with pytest.raises(ValueError, match="multipliers"):
        requantize_i32_i8(np.zeros((2, 2), np.int32), np.ones(3, np.float32))


def test_every_supported_micro_tile_kernel():
    """The tile-specific pieces (register kernels, A-block packer) for every supported tile;
    the drivers around them are one template, exercised above for a few tiles."""
    import numba

    from codesign.kernels._simd_ir import make_f32_tile, make_int_tile, make_pack_a_block
    from codesign.kernels.gemm_int8 import SUPPORTED_I4_MICRO_TILES, SUPPORTED_I8_MICRO_TILES

    rng = np.random.default_rng(11)
    kc = 13
    for mr, nr in SUPPORTED_MICRO_TILES:
        tile, pack = make_f32_tile(mr, nr), make_pack_a_block(mr)

        @numba.njit
        def run(ap, bp, out, a, packed):
            tile(kc, ap, bp, out)
            pack(a, 2, a.shape[0] // mr, packed, 1)

        ap, bp = rand(rng, (kc * mr,)), rand(rng, (kc * nr,))
        out, a, packed = np.empty(mr * nr, np.float32), rand(rng, (mr * 11,)), np.zeros(
            8 * mr + 1, np.float32)
        run(ap, bp, out, a, packed)
        ref = ap.reshape(kc, mr).T.astype(np.float64) @ bp.reshape(kc, nr)
        np.testing.assert_allclose(out.reshape(mr, nr), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(packed[1:].reshape(8, mr),
                                      a.reshape(mr, 11)[:, 2:10].T)
    kp = 5
    for bits, tiles in ((8, SUPPORTED_I8_MICRO_TILES), (4, SUPPORTED_I4_MICRO_TILES)):
        for mr, nr in tiles:
            tile = make_int_tile(mr, nr, nibbles=bits == 4)

            @numba.njit
            def run_int(ap, bp, out):
                tile(kp, ap, bp, out)

            a, w = int_operands(rng, mr, 2 * kp, nr, bits)
            ap = a.astype(np.int16).T.reshape(kp, 2, mr).transpose(0, 2, 1).ravel().copy()
            bp = (pack_weights_int8 if bits == 8 else pack_weights_int4)(w, nr).data
            out = np.empty(mr * nr, np.int32)
            run_int(ap, bp, out)
            np.testing.assert_array_equal(out.reshape(mr, nr),
                                          a.astype(np.int64) @ w.astype(np.int64))
