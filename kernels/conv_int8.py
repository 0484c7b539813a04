"""Quantised NHWC convolutions: int8 activations x int8 / int4 weights -> int32 -> int8.

The integer counterparts of :mod:`codesign.kernels.conv`, in the quantisation scheme of
:mod:`codesign.kernels.gemm_int8`: activations symmetric int8 (zero point 0), weights symmetric per
output channel (int8 in [-128, 127], or int4 values in [-8, 7]), exact int32 accumulation, then an
optional requantisation to int8 with per-channel float32 multipliers and an int32 bias
(:func:`codesign.kernels.gemm_int8.requantize_i32_i8`'s formula, round half to even).

* :func:`conv2d_int8`: an int8 im2col (:func:`im2col_int8`) feeding the integer GEMM
  (:func:`codesign.kernels.gemm_int8.gemm_int_kernel`), weights packed once by
  :func:`pack_conv_weights`; 1x1 stride-1 convs skip the im2col.
* :func:`depthwise_conv2d_int8`: direct, channels innermost, int32 accumulators per output
  pixel; weights int8 ``(KH, KW, C)`` (8-bit, or 4-bit values in [-8, 7]) or nibble-packed by
  :func:`pack_depthwise_weights_int4`.

Padding: the zero point of the activations is 0, so the padded border is the integer 0 (the
real value 0.0) and padded taps contribute nothing: im2col writes zeros, the depthwise kernel
skips them. An asymmetric activation (zero point z != 0) would need the border filled with z
and a ``-z * sum(w)`` correction; the GEMM does not support that, so neither do these.

Exactness: ``|x * w| <= 2^14``, so int32 holds any sum of fewer than 2^17 products; the
wrappers reject reductions (``KH * KW * C_in``) that long.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _numba_config as cfg
from ._operands import check_array, check_int_tile, check_stride
from .conv import (IM2COL_CHUNK_BYTES, _depthwise, _im2col, _resolve_padding, accumulate_pixel,
                   output_hw)
from .gemm_int8 import (DEFAULT_INT_TILE, PackedIntWeights, _requantize, gemm_int_kernel,
                        pack_weights_int4, pack_weights_int8)
from .specs import TileSpec

#: Longest reduction whose int32 sum cannot overflow (see module docstring).
MAX_REDUCTION = (1 << 17) - 1


def _check_int4_range(name: str, w: np.ndarray) -> None:
    if w.size and (int(w.min()) < -8 or int(w.max()) > 7):
        raise ValueError(f"{name}: int4 weights must lie in [-8, 7], got values in "
                         f"[{int(w.min())}, {int(w.max())}]")


def _check_requant(multipliers, bias, zero_point: int, c: int) -> None:
    """Validate the epilogue operands of a layer with ``c`` output channels."""
    for name, vec, dt in (("multipliers", multipliers, np.float32), ("bias", bias, np.int32)):
        if vec is None:
            continue
        if (not isinstance(vec, np.ndarray) or vec.dtype != dt or vec.shape != (c,)
                or not vec.flags.c_contiguous):
            raise ValueError(f"{name} must be a C-contiguous ({c},) {np.dtype(dt).name} array")
    if multipliers is None and zero_point != 0:
        raise ValueError("zero_point applies to the requantised output; pass multipliers")
    if not isinstance(zero_point, (int, np.integer)) or not -128 <= int(zero_point) <= 127:
        raise ValueError(f"zero_point must be an int in [-128, 127], got {zero_point!r}")


# ------------------------------------------------------------------------------ conv2d ---
@dataclass(frozen=True, eq=False)
class PackedConvWeights:
    """HWIO conv weights packed for the integer GEMM (:func:`pack_conv_weights`).

    Attributes:
        gemm: the (KH*KW*C_in, C_out) weight matrix, packed (int8 pairs or int4 nibbles).
        kh, kw, c_in: filter height, width and input channels.
    """

    gemm: PackedIntWeights
    kh: int
    kw: int
    c_in: int

    @property
    def c_out(self) -> int:
        return self.gemm.n

    @property
    def bits(self) -> int:
        return self.gemm.bits

    def check(self) -> None:
        """Raise ValueError unless the packed matrix matches the filter shape."""
        if not isinstance(self.gemm, PackedIntWeights):
            raise ValueError("PackedConvWeights.gemm must be PackedIntWeights")
        self.gemm.check()
        if min(self.kh, self.kw, self.c_in) <= 0 or self.gemm.k != self.kh * self.kw * self.c_in:
            raise ValueError(f"packed weights have K={self.gemm.k} rows, not KH*KW*C_in = "
                             f"{self.kh}*{self.kw}*{self.c_in}")


def pack_conv_weights(w: np.ndarray, bits: int = 8, nr: int = 16) -> PackedConvWeights:
    """Pack quantised HWIO conv weights once, for :func:`conv2d_int8`.

    Args:
        w: (KH, KW, C_in, C_out) int8, C-contiguous (from PyTorch's OIHW:
            ``np.ascontiguousarray(w_oihw.transpose(2, 3, 1, 0))``). Values in [-8, 7] when
            ``bits`` is 4.
        bits: 8 (:func:`codesign.kernels.gemm_int8.pack_weights_int8`) or 4 (``pack_weights_int4``).
        nr: GEMM sliver width; must equal the ``tile.nr`` the conv runs with.

    Raises:
        ValueError: not a C-contiguous 4-D int8 array, bits not 4 or 8, int4 values out of
            range, or an nr the packer does not support.
    """
    check_array("w", w, np.int8, 4)
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    kh, kw, cin, cout = w.shape
    if bits == 4:
        _check_int4_range("w", w)
    w2 = w.reshape(kh * kw * cin, cout)  # rows in (kh, kw, c_in) order, as im2col's columns
    packed = (pack_weights_int8 if bits == 8 else pack_weights_int4)(w2, nr)
    return PackedConvWeights(packed, kh, kw, cin)


def im2col_int8(x: np.ndarray, kh: int, kw: int, stride: int = 1,
                padding: int | str = 0) -> np.ndarray:
    """Unfold NHWC int8 ``x`` into the (N*OH*OW, KH*KW*C) int8 patch matrix.

    Column order is (kh, kw, c), matching :func:`pack_conv_weights`; the padding is the
    integer 0 (the zero point of symmetric activations).
    """
    check_array("x", x, np.int8, 4)
    if kh <= 0 or kw <= 0:
        raise ValueError(f"kernel size must be positive, got {kh}x{kw}")
    stride = check_stride(stride)
    pad = _resolve_padding(padding, kh, kw)
    nb, h, w, c = x.shape
    oh, ow = output_hw(h, w, kh, kw, stride, pad)
    cols = np.empty((nb * oh * ow, kh * kw * c), np.int8)
    if cols.size:
        _im2col(x, kh, kw, stride, pad, oh, ow, 0, cols)
    return cols


def _epilogue(acc: np.ndarray, y: np.ndarray, multipliers: np.ndarray | None,
              bias: np.ndarray | None, zero_point: int) -> None:
    """Requantise the int32 block ``acc`` into its int8 rows ``y``; without multipliers
    (``acc is y``), add the bias in place."""
    if multipliers is not None:
        _requantize(acc, bias, multipliers, int(zero_point), y)
    elif bias is not None:
        acc += bias


def conv2d_int8(x: np.ndarray, w: PackedConvWeights, multipliers: np.ndarray | None = None,
                bias: np.ndarray | None = None, stride: int = 1, padding: int | str = 0,
                zero_point: int = 0, tile: TileSpec = DEFAULT_INT_TILE,
                parallel: bool = False) -> np.ndarray:
    """Quantised 2-D convolution (groups=1): int8 im2col + integer GEMM (+ requantisation).

    Args:
        x: (N, H, W, C_in) int8 NHWC, C-contiguous; symmetric (zero point 0).
        w: weights from :func:`pack_conv_weights` (int8 or int4), packed with ``tile.nr``.
        multipliers: (C_out,) float32 ``act_scale * weight_scale[c] / out_scale``; None
            returns the int32 accumulators (plus bias) instead of int8.
        bias: optional (C_out,) int32, quantised at ``act_scale * weight_scale[c]``.
        stride: positive int, both axes.
        padding: zero padding per side (int) or ``"same"`` (k // 2); default 0 as
            :func:`codesign.kernels.conv.conv2d`.
        zero_point: output zero point in [-128, 127] (requantised output only).
        tile: integer GEMM blocking (even kc; (mr, nr) supported for ``w.bits``).
        parallel: split the GEMM's column slivers over numba's threads.

    Returns:
        (N, OH, OW, C_out): int8 ``clip(rint(float32(acc + bias) * multipliers) + zero_point,
        -128, 127)`` with multipliers, else int32 ``acc + bias`` (exact).

    Raises:
        ValueError: dtype/rank/contiguity errors, channel mismatch, bad stride/padding/tile,
            epilogue operands of the wrong shape or dtype, or a reduction KH*KW*C_in longer
            than :data:`MAX_REDUCTION`.
    """
    check_array("x", x, np.int8, 4)
    if not isinstance(w, PackedConvWeights):
        raise ValueError("w must be PackedConvWeights (use pack_conv_weights)")
    w.check()
    kh, kw, cin, cout = w.kh, w.kw, w.c_in, w.c_out
    if x.shape[3] != cin:
        raise ValueError(f"x has {x.shape[3]} channels but w expects C_in={cin}")
    k = kh * kw * cin
    if k > MAX_REDUCTION:
        raise ValueError(f"reduction KH*KW*C_in={k} may overflow int32 (max {MAX_REDUCTION})")
    stride = check_stride(stride)
    _check_requant(multipliers, bias, zero_point, cout)
    check_int_tile(tile, w.gemm.nr)
    gemm = gemm_int_kernel(tile.mr, tile.nr, w.bits, parallel)
    pad = _resolve_padding(padding, kh, kw)
    nb, h, wd, _ = x.shape
    oh, ow = output_hw(h, wd, kh, kw, stride, pad)
    m = nb * oh * ow
    requant = multipliers is not None
    y = np.empty((m, cout), np.int8 if requant else np.int32)
    if y.size == 0:
        return y.reshape(nb, oh, ow, cout)
    data, kpairs = w.gemm.data, w.gemm.kpairs
    if requant and bias is None:
        bias = np.zeros(cout, np.int32)
    if kh == 1 and kw == 1 and stride == 1 and pad == 0:
        # a 1x1 conv is a plain GEMM in NHWC
        acc = np.empty((m, cout), np.int32) if requant else y
        gemm(x.reshape(m, cin), data, acc, kpairs, tile.mc, tile.nc, tile.kc)
        _epilogue(acc, y, multipliers, bias, zero_point)
    else:
        # im2col in row chunks into one reused buffer (as codesign.kernels.conv.conv2d): the chunk
        # is still in cache when the GEMM packs it, and its int32 block when it is requantised;
        # no full patch matrix is allocated
        rows = max(tile.mc, IM2COL_CHUNK_BYTES // k // tile.mc * tile.mc)
        buf = np.empty((min(rows, m), k), np.int8)
        accbuf = np.empty((min(rows, m), cout), np.int32) if requant else None
        for r0 in range(0, m, rows):
            n_rows = min(rows, m - r0)
            cols = buf[:n_rows]
            _im2col(x, kh, kw, stride, pad, oh, ow, r0, cols)
            acc = accbuf[:n_rows] if requant else y[r0:r0 + n_rows]
            gemm(cols, data, acc, kpairs, tile.mc, tile.nc, tile.kc)
            _epilogue(acc, y[r0:r0 + n_rows], multipliers, bias, zero_point)
    return y.reshape(nb, oh, ow, cout)


# --------------------------------------------------------------------------- depthwise ---
@dataclass(frozen=True, eq=False)
class PackedDepthwiseInt4:
    """4-bit depthwise weights, two channels per byte (:func:`pack_depthwise_weights_int4`).

    Attributes:
        data: (KH, KW, ceil(C / 2)) uint8; byte q of tap (u, v) holds channel 2q in the low
            and channel 2q + 1 in the high nibble, two's complement (high nibble 0 past C).
        channels: C.
    """

    data: np.ndarray
    channels: int

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def check(self) -> None:
        """Raise ValueError unless ``data`` matches ``channels`` (kernels index it unchecked)."""
        check_array("packed depthwise data", self.data, np.uint8, 3)
        if self.channels <= 0 or self.data.shape[2] != (self.channels + 1) // 2:
            raise ValueError(f"packed depthwise data must have {(self.channels + 1) // 2} "
                             f"bytes per tap for {self.channels} channels, got "
                             f"{self.data.shape[2]}")


def pack_depthwise_weights_int4(w: np.ndarray) -> PackedDepthwiseInt4:
    """Pack (KH, KW, C) int8 depthwise weights with values in [-8, 7] into nibble pairs.

    Raises:
        ValueError: not a C-contiguous 3-D int8 array, or values outside [-8, 7].
    """
    check_array("w", w, np.int8, 3)
    _check_int4_range("w", w)
    kh, kw, c = w.shape
    nib = np.zeros((kh, kw, 2 * ((c + 1) // 2)), np.uint8)
    nib[..., :c] = w.view(np.uint8) & 0xF
    return PackedDepthwiseInt4(np.ascontiguousarray(nib[..., 0::2] | (nib[..., 1::2] << 4)), c)


@cfg.kernel("void(uint8[:, :, ::1], int8[:, :, ::1])")
def _unpack_nibbles(packed, w):
    kh, kw, c = w.shape
    for u in range(kh):
        for v in range(kw):
            for ch in range(c):
                nib = (np.int64(packed[u, v, ch >> 1]) >> (4 * (ch & 1))) & 15
                w[u, v, ch] = nib - ((nib & 8) << 1)  # sign-extend the 4-bit value


@cfg.kernel("void(int8[:, :, :, ::1], int8[:, :, ::1], int32[::1], float32[::1], int64, int64, "
            "int64, int8[:, :, :, ::1])")
def _depthwise_i8(x, w, bias, mult, zero_point, stride, pad, out):
    # one pixel's int32 accumulators live in an L1-resident scratch row, requantised as soon as
    # the pixel is complete (requantize_i32_i8's formula: float32 multiply, round half even)
    nb, oh, ow, c = out.shape
    acc = np.empty(c, np.int32)
    for b in range(nb):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    acc[ch] = bias[ch]
                accumulate_pixel(x, w, b, i, j, stride, pad, acc)
                o = out[b, i, j]
                for ch in range(c):
                    q = np.int64(np.rint(np.float32(acc[ch]) * mult[ch])) + zero_point
                    o[ch] = min(max(q, -128), 127)


def depthwise_conv2d_int8(x: np.ndarray, w: np.ndarray | PackedDepthwiseInt4,
                          multipliers: np.ndarray | None = None,
                          bias: np.ndarray | None = None, stride: int = 1,
                          padding: int | str = "same", zero_point: int = 0,
                          weight_bits: int | None = None) -> np.ndarray:
    """Quantised direct depthwise convolution (one filter per channel), NHWC.

    Args:
        x: (N, H, W, C) int8 NHWC, C-contiguous; symmetric (zero point 0).
        w: (KH, KW, C) int8 weights (PyTorch's (C, 1, KH, KW) transposed by
            ``np.ascontiguousarray(w_oihw[:, 0].transpose(1, 2, 0))``), or 4-bit weights
            nibble-packed by :func:`pack_depthwise_weights_int4` (half the bytes; unpacked
            into an int8 scratch of KH*KW*C bytes per call, the arithmetic is the same).
        multipliers: (C,) float32 per-channel requantisation multipliers; None returns the
            int32 accumulators (plus bias) instead of int8.
        bias: optional (C,) int32.
        stride: positive int, both axes.
        padding: zero padding per side or ``"same"`` (k // 2, the default, as
            :func:`codesign.kernels.conv.depthwise_conv2d`).
        zero_point: output zero point in [-128, 127] (requantised output only).
        weight_bits: 8 or 4 for int8 ``w`` (4 checks the values lie in [-8, 7]); default 8,
            and 4 for packed weights (which accept nothing else).

    Returns:
        (N, OH, OW, C): int8 ``clip(rint(float32(acc + bias) * multipliers) + zero_point,
        -128, 127)`` with multipliers, else int32 ``acc + bias`` (exact).

    Raises:
        ValueError: dtype/rank/contiguity errors, channel mismatch, int4 values out of
            range, bad weight_bits/stride/padding or epilogue operands.
    """
    check_array("x", x, np.int8, 4)
    if isinstance(w, PackedDepthwiseInt4):
        if weight_bits not in (None, 4):
            raise ValueError(f"nibble-packed weights are 4-bit, got weight_bits={weight_bits!r}")
        w.check()
        kh, kw, c = w.data.shape[0], w.data.shape[1], w.channels
    else:
        weight_bits = 8 if weight_bits is None else weight_bits
        if weight_bits not in (4, 8):
            raise ValueError(f"weight_bits must be 4 or 8, got {weight_bits!r}")
        check_array("w", w, np.int8, 3)
        if weight_bits == 4:
            _check_int4_range("w", w)
        kh, kw, c = w.shape
    if x.shape[3] != c:
        raise ValueError(f"x has {x.shape[3]} channels but w has {c}")
    if kh * kw > MAX_REDUCTION:
        raise ValueError(f"kernel {kh}x{kw} may overflow int32 (max {MAX_REDUCTION} taps)")
    stride = check_stride(stride)
    _check_requant(multipliers, bias, zero_point, c)
    pad = _resolve_padding(padding, kh, kw)
    nb, h, wd, _ = x.shape
    oh, ow = output_hw(h, wd, kh, kw, stride, pad)
    if isinstance(w, PackedDepthwiseInt4):
        packed, w = w.data, np.empty((kh, kw, c), np.int8)
        _unpack_nibbles(packed, w)
    if bias is None:
        bias = np.zeros(c, np.int32)
    if multipliers is None:
        out = np.empty((nb, oh, ow, c), np.int32)
        if out.size:
            _depthwise(x, w, bias, stride, pad, out)
    else:
        out = np.empty((nb, oh, ow, c), np.int8)
        if out.size:
            _depthwise_i8(x, w, bias, multipliers, int(zero_point), stride, pad, out)
    return out
