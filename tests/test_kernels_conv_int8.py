"""Quantised NHWC conv2d (int8 im2col + integer GEMM) and depthwise conv against naive numpy
references: int32 results exactly equal, requantised int8 outputs equal to the reference's
float32 multiply and round-half-to-even."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codesign.kernels import conv_int8
from codesign.kernels.conv_int8 import (PackedDepthwiseInt4, conv2d_int8, depthwise_conv2d_int8,
                                        im2col_int8, pack_conv_weights, pack_depthwise_weights_int4)
from codesign.kernels.specs import TileSpec


# ------------------------------------------------------------------- naive references ---
def pad_same(k: int, padding) -> int:
    return k // 2 if padding == "same" else padding


def naive_conv(x, w, stride, pad, depthwise=False):
    """int64 cross-correlation: x (N,H,W,C) zero-padded, w (KH,KW,C_in,C_out) or (KH,KW,C)."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    xp = np.zeros((n, h + 2 * pad, wd + 2 * pad, c), np.int64)
    xp[:, pad:pad + h, pad:pad + wd] = x
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, oh, ow, w.shape[-1]), np.int64)
    for u in range(kh):
        for v in range(kw):
            patch = xp[:, u:u + stride * (oh - 1) + 1:stride, v:v + stride * (ow - 1) + 1:stride]
            tap = w[u, v].astype(np.int64)
            out += patch * tap if depthwise else patch @ tap
    return out


def naive_requant(acc, mult, bias, zero_point):
    y = (acc + bias).astype(np.float32) * mult
    return np.clip(np.rint(y).astype(np.int64) + zero_point, -128, 127).astype(np.int8)


def operands(rng, shape_x, shape_w, bits):
    x = rng.integers(-128, 128, shape_x, dtype=np.int8)
    lo, hi = (-8, 8) if bits == 4 else (-128, 128)
    return x, rng.integers(lo, hi, shape_w).astype(np.int8)


def epilogue(rng, c):
    # multipliers that put |acc| ~ 1e4..1e5 into int8 range and saturate some outputs
    mult = rng.uniform(2e-4, 4e-3, c).astype(np.float32)
    bias = rng.integers(-3000, 3000, c).astype(np.int32)
    return mult, bias


def test_naive_reference_matches_torch():
    """The reference itself, against torch's float64 convolution (exact for these sums)."""
    rng = np.random.default_rng(0)
    x, w = operands(rng, (2, 7, 9, 5), (3, 3, 5, 6), 8)
    ref = F.conv2d(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2),
                   torch.from_numpy(w.astype(np.float64)).permute(3, 2, 0, 1), stride=2,
                   padding=1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(naive_conv(x, w, 2, 1), ref)
    wd = w[..., 0].copy()
    ref_dw = F.conv2d(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2),
                      torch.from_numpy(wd.astype(np.float64)).permute(2, 0, 1)[:, None],
                      padding=1, groups=5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(naive_conv(x, wd, 1, 1, depthwise=True), ref_dw)


# ---------------------------------------------------------------------------- conv2d ---
CONV_CASES = [  # n, h, w, c_in, c_out, k, stride, padding
    (1, 13, 11, 3, 24, 3, 2, "same"),   # the stem: 3 input channels, stride 2
    (2, 9, 7, 5, 7, 3, 1, 1),
    (1, 6, 5, 13, 19, 1, 1, 0),         # 1x1 stride 1: the GEMM-only path
    (1, 7, 6, 11, 9, 1, 2, 0),          # strided 1x1 goes through im2col
    (1, 9, 10, 6, 17, 5, 2, "same"),
    (1, 11, 8, 4, 10, 7, 1, "same"),
    (1, 8, 9, 3, 5, 5, 1, 0),           # valid padding
    (1, 10, 9, 7, 3, 7, 2, 3),
]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n,h,w,cin,cout,k,stride,padding", CONV_CASES)
def test_conv2d_int8_exact(n, h, w, cin, cout, k, stride, padding, bits):
    rng = np.random.default_rng(h * w + cin * k + bits)
    x, wt = operands(rng, (n, h, w, cin), (k, k, cin, cout), bits)
    acc = naive_conv(x, wt, stride, pad_same(k, padding))
    packed = pack_conv_weights(wt, bits)
    np.testing.assert_array_equal(conv2d_int8(x, packed, stride=stride, padding=padding), acc)
    mult, bias = epilogue(rng, cout)
    got = conv2d_int8(x, packed, mult, bias, stride=stride, padding=padding, zero_point=-3)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, naive_requant(acc, mult, bias, -3))
    # int32 output with bias
    np.testing.assert_array_equal(
        conv2d_int8(x, packed, bias=bias, stride=stride, padding=padding), acc + bias)


def test_conv2d_int8_chunked_im2col_and_small_tile(monkeypatch):
    # tiny chunks: many im2col row chunks, each a GEMM into an accumulator block that is
    # requantised into its slice of the output; small blocks force edge tiles in m, n and k
    monkeypatch.setattr(conv_int8, "IM2COL_CHUNK_BYTES", 200)
    rng = np.random.default_rng(1)
    x, wt = operands(rng, (2, 13, 12, 6), (3, 3, 6, 9), 8)
    tile = TileSpec(mc=8, nc=16, kc=16, mr=4, nr=8)
    packed = pack_conv_weights(wt, 8, nr=8)
    acc = naive_conv(x, wt, 1, 1)
    np.testing.assert_array_equal(conv2d_int8(x, packed, padding=1, tile=tile), acc)
    mult, bias = epilogue(rng, 9)
    np.testing.assert_array_equal(conv2d_int8(x, packed, mult, bias, padding=1, tile=tile),
                                  naive_requant(acc, mult, bias, 0))


def test_conv2d_int8_extremes_do_not_overflow():
    # -128 * -128 everywhere over a 7x7x64 reduction (3136 products of 2^14)
    x = np.full((1, 9, 9, 64), -128, np.int8)
    wt = np.full((7, 7, 64, 5), -128, np.int8)
    got = conv2d_int8(x, pack_conv_weights(wt), padding="same")
    np.testing.assert_array_equal(got, naive_conv(x, wt, 1, 3))
    assert got[0, 4, 4, 0] == 49 * 64 * 16384


def test_im2col_int8_layout_and_zero_padding():
    x = np.arange(1, 1 + 2 * 3 * 3 * 2, dtype=np.int8).reshape(2, 3, 3, 2)
    cols = im2col_int8(x, 3, 3, stride=2, padding=1)
    assert cols.shape == (2 * 2 * 2, 3 * 3 * 2) and cols.dtype == np.int8
    # output pixel (0, 0) of image 0: taps (u, v) row-major, channels innermost; the first
    # row and column of taps fall into the padding and are 0 (the activations' zero point)
    row = cols[0].reshape(3, 3, 2)
    np.testing.assert_array_equal(row[0], 0)
    np.testing.assert_array_equal(row[:, 0], 0)
    np.testing.assert_array_equal(row[1:, 1:], x[0, :2, :2])


# ------------------------------------------------------------------------- depthwise ---
DW_SHAPES = [(2, 9, 11, 5), (1, 10, 7, 19), (1, 4, 3, 33), (1, 8, 8, 12)]


@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)])
def test_depthwise_int8_exact(k, stride):
    rng = np.random.default_rng(k * 10 + stride)
    for n, h, w, c in DW_SHAPES:
        x, wt = operands(rng, (n, h, w, c), (k, k, c), 8)
        acc = naive_conv(x, wt, stride, k // 2, depthwise=True)
        np.testing.assert_array_equal(depthwise_conv2d_int8(x, wt, stride=stride), acc)
        mult, bias = epilogue(rng, c)
        got = depthwise_conv2d_int8(x, wt, mult, bias, stride=stride, zero_point=5)
        assert got.dtype == np.int8
        np.testing.assert_array_equal(got, naive_requant(acc, mult, bias, 5))


@pytest.mark.parametrize("k,stride", [(3, 2), (5, 1), (7, 2)])
def test_depthwise_int4_plain_and_nibble_packed(k, stride):
    rng = np.random.default_rng(100 + k)
    for n, h, w, c in DW_SHAPES:  # odd C: the last byte's high nibble is padding
        x, wt = operands(rng, (n, h, w, c), (k, k, c), 4)
        acc = naive_conv(x, wt, stride, k // 2, depthwise=True)
        packed = pack_depthwise_weights_int4(wt)
        assert packed.data.shape == (k, k, (c + 1) // 2) and packed.nbytes * 2 >= wt.nbytes
        np.testing.assert_array_equal(
            depthwise_conv2d_int8(x, wt, stride=stride, weight_bits=4), acc)
        np.testing.assert_array_equal(depthwise_conv2d_int8(x, packed, stride=stride), acc)
        mult, bias = epilogue(rng, c)
        mult *= 16  # int4 sums are ~16x smaller
        np.testing.assert_array_equal(depthwise_conv2d_int8(x, packed, mult, bias, stride=stride),
                                      naive_requant(acc, mult, bias, 0))


def test_depthwise_int8_padding_and_extremes():
    rng = np.random.default_rng(3)
    x, wt = operands(rng, (1, 9, 8, 7), (3, 3, 7), 8)
    for padding in (0, 2):  # valid and wider-than-same padding
        np.testing.assert_array_equal(depthwise_conv2d_int8(x, wt, padding=padding, stride=2),
                                      naive_conv(x, wt, 2, padding, depthwise=True))
    x = np.full((1, 7, 7, 9), -128, np.int8)
    wt = np.full((7, 7, 9), -128, np.int8)
    got = depthwise_conv2d_int8(x, wt, np.full(9, 1.0, np.float32))
    np.testing.assert_array_equal(got, 127)  # saturates, no wrap-around
    assert depthwise_conv2d_int8(x, wt)[0, 3, 3, 0] == 49 * 16384


def test_nibble_packing_layout():
    wt = np.array([[[-8, 7, -1, 3, 5]]], np.int8)  # (1, 1, 5)
    packed = pack_depthwise_weights_int4(wt)
    # channel 2q in the low nibble, 2q + 1 in the high nibble; the sixth channel is padding
    assert packed.data.tolist() == [[[0x78, 0x3F, 0x05]]] and packed.channels == 5
    out = np.empty_like(wt)
    conv_int8._unpack_nibbles(packed.data, out)
    np.testing.assert_array_equal(out, wt)


# ------------------------------------------------------------------------ validation ---
def test_conv2d_int8_validation(monkeypatch):
    rng = np.random.default_rng(4)
    x, wt = operands(rng, (1, 5, 5, 3), (3, 3, 3, 4), 8)
    packed = pack_conv_weights(wt)
    with pytest.raises(ValueError, match="x must have dtype int8, got float32"):
        conv2d_int8(x.astype(np.float32), packed)
    with pytest.raises(ValueError, match="x must have dtype int8, got uint8"):
        conv2d_int8(x.view(np.uint8), packed)
    with pytest.raises(ValueError, match="w must be PackedConvWeights"):
        conv2d_int8(x, wt)
    with pytest.raises(ValueError, match="x has 4 channels but w expects C_in=3"):
        conv2d_int8(np.zeros((1, 5, 5, 4), np.int8), packed)
    with pytest.raises(ValueError, match=r"w: int4 weights must lie in \[-8, 7\]"):
        pack_conv_weights(wt, bits=4)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        pack_conv_weights(wt, bits=2)
    with pytest.raises(ValueError, match="w must have dtype int8, got int16"):
        pack_conv_weights(wt.astype(np.int16))
    with pytest.raises(ValueError, match="w must be 4-D"):
        pack_conv_weights(wt[0])
    with pytest.raises(ValueError, match="multiple of 16 for int4"):
        pack_conv_weights(np.zeros((1, 1, 3, 4), np.int8), bits=4, nr=8)
    with pytest.raises(ValueError, match="packing nr=16"):
        conv2d_int8(x, packed, tile=TileSpec(mc=8, nc=16, kc=16, mr=4, nr=8))
    with pytest.raises(ValueError, match="even kc"):
        conv2d_int8(x, packed, tile=TileSpec(mc=12, nc=32, kc=15, mr=6, nr=16))
    with pytest.raises(ValueError, match=r"multipliers must be a C-contiguous \(4,\) float32"):
        conv2d_int8(x, packed, np.ones(4, np.float64))
    with pytest.raises(ValueError, match=r"bias must be a C-contiguous \(4,\) int32"):
        conv2d_int8(x, packed, np.ones(4, np.float32), np.ones(3, np.int32))
    with pytest.raises(ValueError, match="zero_point applies to the requantised output"):
        conv2d_int8(x, packed, zero_point=1)
    with pytest.raises(ValueError, match=r"zero_point must be an int in \[-128, 127\]"):
        conv2d_int8(x, packed, np.ones(4, np.float32), zero_point=128)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        conv2d_int8(x, packed, stride=0)
    with pytest.raises(ValueError, match="padding must be a non-negative int or 'same'"):
        conv2d_int8(x, packed, padding=-1)
    with pytest.raises(ValueError, match="kernel 3x3 larger than padded input 2x2"):
        conv2d_int8(np.zeros((1, 2, 2, 3), np.int8), packed)
    import dataclasses
    with pytest.raises(ValueError, match="packed weights have K=27 rows"):
        conv2d_int8(x, dataclasses.replace(packed, kh=2))
    monkeypatch.setattr(conv_int8, "MAX_REDUCTION", 20)
    with pytest.raises(ValueError, match="reduction KH\\*KW\\*C_in=27 may overflow int32"):
        conv2d_int8(x, packed)


def test_depthwise_int8_validation():
    rng = np.random.default_rng(5)
    x, wt = operands(rng, (1, 5, 5, 3), (3, 3, 3), 8)
    with pytest.raises(ValueError, match="x must have dtype int8, got float32"):
        depthwise_conv2d_int8(x.astype(np.float32), wt)
    with pytest.raises(ValueError, match="w must have dtype int8, got float32"):
        depthwise_conv2d_int8(x, wt.astype(np.float32))
    with pytest.raises(ValueError, match="w must be 3-D"):
        depthwise_conv2d_int8(x, wt[None])
    with pytest.raises(ValueError, match=r"w: int4 weights must lie in \[-8, 7\], got values"):
        depthwise_conv2d_int8(x, wt, weight_bits=4)
    with pytest.raises(ValueError, match=r"w: int4 weights must lie in \[-8, 7\]"):
        pack_depthwise_weights_int4(wt)
    with pytest.raises(ValueError, match="weight_bits must be 4 or 8"):
        depthwise_conv2d_int8(x, wt, weight_bits=2)
    w4 = np.clip(wt, -8, 7)
    with pytest.raises(ValueError, match="nibble-packed weights are 4-bit"):
        depthwise_conv2d_int8(x, pack_depthwise_weights_int4(w4), weight_bits=8)
    with pytest.raises(ValueError, match="bytes per tap for 3 channels"):
        depthwise_conv2d_int8(x, PackedDepthwiseInt4(np.zeros((3, 3, 1), np.uint8), 3))
    with pytest.raises(ValueError, match="x has 3 channels but w has 4"):
        depthwise_conv2d_int8(x, np.zeros((3, 3, 4), np.int8))
    with pytest.raises(ValueError, match=r"multipliers must be a C-contiguous \(3,\) float32"):
        depthwise_conv2d_int8(x, wt, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"bias must be a C-contiguous \(3,\) int32"):
        depthwise_conv2d_int8(x, wt, bias=np.ones(3, np.int64))
    with pytest.raises(ValueError, match="zero_point applies to the requantised output"):
        depthwise_conv2d_int8(x, wt, zero_point=2)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        depthwise_conv2d_int8(x, wt, stride=1.5)
    with pytest.raises(ValueError, match="'same' padding needs a square kernel"):
        depthwise_conv2d_int8(x, np.zeros((3, 1, 3), np.int8))
    with pytest.raises(ValueError, match="C-contiguous"):
        depthwise_conv2d_int8(np.asfortranarray(x), wt)
