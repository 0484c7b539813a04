"""Convolutions in NHWC (channels-last) layout: im2col + GEMM, and direct depthwise.

Layout choice: NHWC activations ``x[n, h, w, c]`` and HWIO weights ``w[kh, kw, c_in, c_out]``.
With channels innermost, one im2col row is KH*KW contiguous runs of C_in floats (memcpy-like
copies), the GEMM ``cols (N*OH*OW, KH*KW*C_in) @ w.reshape(KH*KW*C_in, C_out)`` writes the NHWC
output directly (no transpose), a 1x1 stride-1 convolution needs no im2col at all, and the
depthwise kernel vectorises along contiguous channels. This is also the layout XNNPACK (the
ExecuTorch CPU backend) uses. :func:`weights_from_oihw` converts PyTorch weights.

Padding is symmetric zero padding ``pad`` on each side, or ``"same"`` for ``k // 2`` (the
output of a stride-s conv is then ``ceil(H / s)`` for odd k).
"""
from __future__ import annotations

import numpy as np

from . import _numba_config as cfg
from ._operands import check_array, check_stride
from .gemm_f32 import DEFAULT_TILE, check_tile, gemm_f32_kernel
from .specs import TileSpec


#: Target size of one im2col chunk (rows x K float32) in :func:`conv2d`.
IM2COL_CHUNK_BYTES = 1 << 20


def weights_from_oihw(w_oihw: np.ndarray) -> np.ndarray:
    """PyTorch conv weights (C_out, C_in, KH, KW) -> HWIO (KH, KW, C_in, C_out) float32."""
    return np.ascontiguousarray(np.transpose(w_oihw, (2, 3, 1, 0)), dtype=np.float32)


def depthwise_weights_from_oihw(w_oihw: np.ndarray) -> np.ndarray:
    """PyTorch depthwise weights (C, 1, KH, KW) -> (KH, KW, C) float32."""
    if w_oihw.ndim != 4 or w_oihw.shape[1] != 1:
        raise ValueError(f"depthwise weights must be (C, 1, KH, KW), got {w_oihw.shape}")
    return np.ascontiguousarray(np.transpose(w_oihw[:, 0], (1, 2, 0)), dtype=np.float32)


def _resolve_padding(padding: int | str, kh: int, kw: int) -> int:
    if padding == "same":
        if kh != kw:
            raise ValueError(f"'same' padding needs a square kernel, got {kh}x{kw}")
        return kh // 2
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and padding >= 0:
        return int(padding)
    raise ValueError(f"padding must be a non-negative int or 'same', got {padding!r}")


def output_size(size: int, k: int, stride: int, pad: int) -> int:
    """Output extent of a convolution along one axis (floor mode)."""
    return (size + 2 * pad - k) // stride + 1


def output_hw(h: int, w: int, kh: int, kw: int, stride: int, pad: int) -> tuple[int, int]:
    """(OH, OW) of a convolution, or ValueError when the kernel does not fit the padded input."""
    oh, ow = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"kernel {kh}x{kw} larger than padded input {h}x{w} (pad {pad})")
    return oh, ow


def check_bias(bias: np.ndarray | None, channels: int, dtype=np.float32) -> None:
    """None, or a C-contiguous (channels,) array of ``dtype``."""
    if bias is not None:
        check_array("bias", bias, dtype, 1)
        if bias.shape != (channels,):
            raise ValueError(f"bias must have shape ({channels},), got {bias.shape}")


@cfg.kernel("void(float32[:, :, :, ::1], int64, int64, int64, int64, int64, int64, int64, "
            "float32[:, ::1])",
            "void(int8[:, :, :, ::1], int64, int64, int64, int64, int64, int64, int64, "
            "int8[:, ::1])")
def _im2col(x, kh, kw, stride, pad, oh, ow, row0, cols):
    """cols[r - row0, (u*kw + v)*c + ch] = x[b, i*s - pad + u, j*s - pad + v, ch] (0 in the
    padding) for the output pixels r = (b*oh + i)*ow + j in row0 .. row0 + len(cols) - 1.
    fp32 for codesign.kernels.conv, int8 (zero point 0) for codesign.kernels.conv_int8."""
    nb, h, w, c = x.shape
    for r in range(row0, row0 + cols.shape[0]):
        b = r // (oh * ow)
        i = (r // ow) % oh
        j = r % ow
        row = r - row0
        col = 0
        for u in range(kh):
            ih = i * stride - pad + u
            for v in range(kw):
                iw = j * stride - pad + v
                if ih >= 0 and ih < h and iw >= 0 and iw < w:
                    for ch in range(c):
                        cols[row, col + ch] = x[b, ih, iw, ch]
                else:
                    for ch in range(c):
                        cols[row, col + ch] = 0
                col += c


@cfg.kernel("void(float32[:, ::1], float32[::1])")
def _add_bias(y, bias):
    m, n = y.shape
    for i in range(m):
        for j in range(n):
            y[i, j] += bias[j]


def im2col(x: np.ndarray, kh: int, kw: int, stride: int = 1,
           padding: int | str = 0) -> np.ndarray:
    """Unfold NHWC ``x`` into the (N*OH*OW, KH*KW*C) patch matrix (zero padding).

    Column order is (kh, kw, c), matching HWIO weights reshaped to (KH*KW*C_in, C_out).
    """
    check_array("x", x, np.float32, 4)
    if kh <= 0 or kw <= 0 or stride <= 0:
        raise ValueError(f"kernel size and stride must be positive, got {kh}x{kw}/{stride}")
    pad = _resolve_padding(padding, kh, kw)
    nb, h, w, c = x.shape
    oh, ow = output_hw(h, w, kh, kw, stride, pad)
    cols = np.empty((nb * oh * ow, kh * kw * c), np.float32)
    _im2col(x, kh, kw, stride, pad, oh, ow, 0, cols)
    return cols


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: int = 1,
           padding: int | str = 0, tile: TileSpec = DEFAULT_TILE,
           parallel: bool = False) -> np.ndarray:
    """2-D convolution (cross-correlation, groups=1) via im2col + :func:`gemm_f32`.

    Args:
        x: (N, H, W, C_in) float32 NHWC, C-contiguous.
        w: (KH, KW, C_in, C_out) float32 HWIO (see :func:`weights_from_oihw`).
        bias: optional (C_out,) float32.
        stride: positive int, both axes.
        padding: zero padding per side (int) or ``"same"`` (k // 2).
        tile: GEMM blocking for the (N*OH*OW, KH*KW*C_in) x (KH*KW*C_in, C_out) product.
        parallel: split the GEMM's column slivers over numba's threads (``gemm_f32``'s).

    Returns:
        (N, OH, OW, C_out) float32 NHWC.

    Raises:
        ValueError: dtype/rank/contiguity errors, channel mismatch, bad stride/padding/tile.
    """
    check_array("x", x, np.float32, 4)
    check_array("w", w, np.float32, 4)
    check_tile(tile)
    kh, kw, cin, cout = w.shape
    if x.shape[3] != cin:
        raise ValueError(f"x has {x.shape[3]} channels but w expects C_in={cin}")
    stride = check_stride(stride)
    check_bias(bias, cout)
    pad = _resolve_padding(padding, kh, kw)
    nb, h, wd, _ = x.shape
    oh, ow = output_hw(h, wd, kh, kw, stride, pad)
    m, k = nb * oh * ow, kh * kw * cin
    y = np.empty((m, cout), np.float32)
    if y.size == 0:
        return y.reshape(nb, oh, ow, cout)
    gemm = gemm_f32_kernel(tile.mr, tile.nr, parallel)
    w2 = w.reshape(k, cout)
    if kh == 1 and kw == 1 and stride == 1 and pad == 0:
        # a 1x1 conv is a plain GEMM in NHWC
        gemm(x.reshape(m, cin), w2, y, tile.mc, tile.nc, tile.kc)
    else:
        # im2col in row chunks of about IM2COL_CHUNK_BYTES into one reused buffer: the chunk
        # is still in cache when the GEMM packs it, and a full patch matrix (9x the input for
        # 3x3) is never allocated (fresh pages cost a fault each: ~1/3 of im2col time)
        rows = max(tile.mc, IM2COL_CHUNK_BYTES // (4 * k) // tile.mc * tile.mc)
        buf = np.empty((min(rows, m), k), np.float32)
        for r0 in range(0, m, rows):
            cols = buf[:min(rows, m - r0)]
            _im2col(x, kh, kw, stride, pad, oh, ow, r0, cols)
            gemm(cols, w2, y[r0:r0 + cols.shape[0]], tile.mc, tile.nc, tile.kc)
    if bias is not None:
        _add_bias(y, bias)
    return y.reshape(nb, oh, ow, cout)


def _accumulate_pixel(x, w, b, i, j, stride, pad, acc):
    # acc[ch] (holding the bias) += x * w over the taps of output pixel (b, i, j). Channels are
    # innermost and contiguous, so each tap is a multiply-add of two channel vectors: ymm FMAs
    # for float32; for int8 the loop vectoriser's vpmovsx + vpmulld + vpaddd (numba types the
    # product int64, but only its low 32 bits reach the int32 accumulator, so LLVM narrows it).
    # Taps falling into the zero padding are skipped, not multiplied.
    h, wd, c = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    for u in range(kh):
        ih = i * stride - pad + u
        if ih < 0 or ih >= h:
            continue
        for v in range(kw):
            iw = j * stride - pad + v
            if iw < 0 or iw >= wd:
                continue
            xr = x[b, ih, iw]
            wr = w[u, v]
            for ch in range(c):
                acc[ch] += xr[ch] * wr[ch]


def _njit_inline(fn):
    import numba

    # inlined at numba-IR level, so it is optimised with its caller's vectoriser settings
    return numba.njit(inline="always", **cfg.jit_options())(fn)


#: The depthwise tap loop of one output pixel, for :func:`_depthwise` and the int8 kernels of
#: ``codesign.kernels.conv_int8``.
accumulate_pixel = _njit_inline(_accumulate_pixel)


@cfg.kernel("void(float32[:, :, :, ::1], float32[:, :, ::1], float32[::1], int64, int64, "
            "float32[:, :, :, ::1])",
            "void(int8[:, :, :, ::1], int8[:, :, ::1], int32[::1], int64, int64, "
            "int32[:, :, :, ::1])")
def _depthwise(x, w, bias, stride, pad, out):
    """out = bias + depthwise(x, w): float32, or int8 operands into exact int32 accumulators
    (for codesign.kernels.conv_int8)."""
    nb, oh, ow, c = out.shape
    for b in range(nb):
        for i in range(oh):
            for j in range(ow):
                o = out[b, i, j]
                for ch in range(c):
                    o[ch] = bias[ch]
                accumulate_pixel(x, w, b, i, j, stride, pad, o)


def depthwise_conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                     stride: int = 1, padding: int | str = "same") -> np.ndarray:
    """Direct depthwise convolution (one filter per channel), NHWC.

    Args:
        x: (N, H, W, C) float32 NHWC, C-contiguous.
        w: (KH, KW, C) float32 (see :func:`depthwise_weights_from_oihw`); 3x3 and 5x5 are the
            MobileNet/EfficientNet cases, any size works.
        bias: optional (C,) float32.
        stride: 1 or 2 (any positive int works).
        padding: zero padding per side or ``"same"`` (k // 2, the default).

    Returns:
        (N, OH, OW, C) float32 with ``OH = (H + 2*pad - KH) // stride + 1``.
    """
    check_array("x", x, np.float32, 4)
    check_array("w", w, np.float32, 3)
    kh, kw, c = w.shape
    if x.shape[3] != c:
        raise ValueError(f"x has {x.shape[3]} channels but w has {c}")
    stride = check_stride(stride)
    check_bias(bias, c)
    if bias is None:
        bias = np.zeros(c, np.float32)
    pad = _resolve_padding(padding, kh, kw)
    nb, h, wd, _ = x.shape
    oh, ow = output_hw(h, wd, kh, kw, stride, pad)
    out = np.empty((nb, oh, ow, c), np.float32)
    _depthwise(x, w, bias, stride, pad, out)
    return out
