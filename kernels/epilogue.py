"""The element-wise glue a whole network runs between its GEMM / conv kernels.

A layer kernel (:mod:`codesign.kernels.conv`, :mod:`codesign.kernels.conv_int8`,
:mod:`codesign.kernels.gemm_int8`, :mod:`codesign.kernels.sparse`) leaves float32 outputs or exact
int32 accumulators; a network then needs the layer's bias, its fused activation and, for an int8
layer, the requantisation of its output to the next layer's int8 grid. These kernels do that in
one pass, plus the precision boundaries (quantize / dequantize), the residual add and global
average pooling.

Quantisation scheme (the ``codesign`` back-end's, ``int8_activations: symmetric``): an int8
tensor ``q`` holds ``q * scale`` (zero point 0, levels [-128, 127]); an int8 layer's accumulator
``acc[m, c]`` holds ``sum q_x * q_w`` so its real value is ``acc * s_x * s_w[c]``.

Arithmetic is the fake quantization the search scores, operation for operation
(``codesign.evaluation.fake_quant``, symmetric int8): ``y = float32(acc) * scale[c]``, then
``+ bias[c]`` (two roundings, never a fused multiply-add), the activation as torch writes it,
then ``clip(rint(y * float32(1 / out_scale)), -128, 127)`` (round half to even). The kernels are
compiled without fastmath, so an int8 chain of layers gives the fake-quantized model's levels
bit for bit (``tests/test_numba_program.py``).

Activation codes (:data:`ACTS`): 0 none, 1 relu, 2 hardswish (``x * min(max(x + 3, 0), 6) / 6``,
torch's formula), 3 relu6.
"""
from __future__ import annotations

import numpy as np

from . import _numba_config as cfg
from ._operands import check_array

#: fused activation name -> code the kernels take
ACTS = {None: 0, "": 0, "relu": 1, "hardswish": 2, "relu6": 3}


def act_code(name: str | None) -> int:
    """The kernels' code of activation ``name`` (ValueError for one they do not run)."""
    if name not in ACTS:
        raise ValueError(f"no epilogue for activation {name!r}; valid: relu, hardswish, relu6")
    return ACTS[name]


def _act(y, act):
    if act == 1:
        return max(y, np.float32(0.0))
    if act == 2:
        return y * min(max(y + np.float32(3.0), np.float32(0.0)), np.float32(6.0)) / np.float32(6.0)
    if act == 3:
        return min(max(y, np.float32(0.0)), np.float32(6.0))
    return y


def _njit_inline(fn):
    import numba

    return numba.njit(inline="always", **cfg.jit_options(fastmath=False))(fn)


apply_act = _njit_inline(_act)


def _exact(*signatures: str):
    # strict IEEE arithmetic: a multiply-add contracted to an FMA, or a division by 6 turned
    # into a multiply by 1/6, rounds differently from the fake-quantized torch model
    return cfg.kernel(*signatures, fastmath=False)


def _q8(y, inv):
    q = np.rint(y * inv)
    return np.int8(min(max(q, np.float32(-128.0)), np.float32(127.0)))


quantize_value = _njit_inline(_q8)


@_exact("void(int32[:, ::1], float32[::1], float32[::1], int64, float32, int8[:, ::1])")
def _requant_act(acc, scale, bias, act, inv_out, out):
    m, n = acc.shape
    for i in range(m):
        for j in range(n):
            y = np.float32(acc[i, j]) * scale[j] + bias[j]
            out[i, j] = quantize_value(apply_act(y, act), inv_out)


@_exact("void(int32[:, ::1], float32[::1], float32[::1], int64, float32[:, ::1])")
def _dequant_act(acc, scale, bias, act, out):
    m, n = acc.shape
    for i in range(m):
        for j in range(n):
            out[i, j] = apply_act(np.float32(acc[i, j]) * scale[j] + bias[j], act)


@_exact("void(float32[:, ::1], float32[::1], int64)")
def _bias_act(y, bias, act):
    m, n = y.shape
    for i in range(m):
        for j in range(n):
            y[i, j] = apply_act(y[i, j] + bias[j], act)


@_exact("void(float32[::1], float32, int8[::1])")
def _quantize(x, inv, out):
    for i in range(x.shape[0]):
        out[i] = quantize_value(x[i], inv)


@_exact("void(int8[::1], float32, float32[::1])")
def _dequantize(q, scale, out):
    for i in range(q.shape[0]):
        out[i] = np.float32(q[i]) * scale


@_exact("void(int8[::1], float32, int8[::1], float32, float32, int8[::1])")
def _add_i8(a, sa, b, sb, inv_out, out):
    for i in range(a.shape[0]):
        out[i] = quantize_value(np.float32(a[i]) * sa + np.float32(b[i]) * sb, inv_out)


@_exact("void(float32[:, :, ::1], float32[:, ::1])")
def _mean_pool(x, out):
    nb, hw, c = x.shape
    for b in range(nb):
        o = out[b]
        for ch in range(c):
            o[ch] = 0.0
        for p in range(hw):
            row = x[b, p]
            for ch in range(c):
                o[ch] += row[ch]
        for ch in range(c):
            o[ch] = o[ch] / np.float32(hw)


@_exact("void(int8[:, :, ::1], float32, float32[:, ::1])")
def _mean_pool_i8(q, scale, out):
    nb, hw, c = q.shape
    acc = np.empty(c, np.int32)
    for b in range(nb):
        for ch in range(c):
            acc[ch] = 0
        for p in range(hw):
            row = q[b, p]
            for ch in range(c):
                acc[ch] += row[ch]
        for ch in range(c):
            out[b, ch] = np.float32(acc[ch]) * scale / np.float32(hw)


def _vec(name: str, v: np.ndarray, n: int) -> None:
    check_array(name, v, np.float32, 1)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")


def _inverse(scale: float) -> np.float32:
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return np.float32(1.0 / float(scale))


def requantize_act(acc: np.ndarray, scale: np.ndarray, bias: np.ndarray, act: str | None,
                   out_scale: float) -> np.ndarray:
    """int32 accumulators (M, N) -> int8: ``q(act(acc * scale[n] + bias[n]))`` on the grid
    ``out_scale`` (``scale[n] = s_x * s_w[n]``; bias float32, not quantised).

    Raises:
        ValueError: dtype/shape errors, an unknown activation or a non-positive out_scale.
    """
    check_array("acc", acc, np.int32, 2)
    _vec("scale", scale, acc.shape[1])
    _vec("bias", bias, acc.shape[1])
    out = np.empty(acc.shape, np.int8)
    _requant_act(acc, scale, bias, act_code(act), _inverse(out_scale), out)
    return out


def dequantize_act(acc: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                   act: str | None) -> np.ndarray:
    """int32 accumulators (M, N) -> float32 ``act(acc * scale[n] + bias[n])``."""
    check_array("acc", acc, np.int32, 2)
    _vec("scale", scale, acc.shape[1])
    _vec("bias", bias, acc.shape[1])
    out = np.empty(acc.shape, np.float32)
    _dequant_act(acc, scale, bias, act_code(act), out)
    return out


def bias_act(y: np.ndarray, bias: np.ndarray, act: str | None) -> np.ndarray:
    """``y[m, n] = act(y[m, n] + bias[n])`` in place on float32 (M, N); returns ``y``."""
    check_array("y", y, np.float32, 2)
    _vec("bias", bias, y.shape[1])
    _bias_act(y, bias, act_code(act))
    return y


def quantize(x: np.ndarray, scale: float) -> np.ndarray:
    """float32 -> int8 on the grid ``scale`` (any shape, C-contiguous)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("x must be a C-contiguous float32 array")
    out = np.empty(x.shape, np.int8)
    _quantize(x.reshape(-1), _inverse(scale), out.reshape(-1))
    return out


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    """int8 -> float32 ``q * scale`` (any shape, C-contiguous)."""
    if not isinstance(q, np.ndarray) or q.dtype != np.int8 or not q.flags.c_contiguous:
        raise ValueError("q must be a C-contiguous int8 array")
    _inverse(scale)
    out = np.empty(q.shape, np.float32)
    _dequantize(q.reshape(-1), np.float32(scale), out.reshape(-1))
    return out


def add_int8(a: np.ndarray, a_scale: float, b: np.ndarray, b_scale: float,
             out_scale: float) -> np.ndarray:
    """Residual add of two int8 tensors on their own grids, requantised to ``out_scale``."""
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, np.ndarray) or v.dtype != np.int8 or not v.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous int8 array")
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in shape: {a.shape} vs {b.shape}")
    _inverse(a_scale), _inverse(b_scale)
    out = np.empty(a.shape, np.int8)
    _add_i8(a.reshape(-1), np.float32(a_scale), b.reshape(-1), np.float32(b_scale),
            _inverse(out_scale), out.reshape(-1))
    return out


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    """NHWC float32 (N, H, W, C) -> (N, C) mean over H and W (float32 accumulation)."""
    check_array("x", x, np.float32, 4)
    nb, h, w, c = x.shape
    out = np.empty((nb, c), np.float32)
    _mean_pool(x.reshape(nb, h * w, c), out)
    return out


def global_avg_pool_int8(q: np.ndarray, scale: float) -> np.ndarray:
    """NHWC int8 (N, H, W, C) on the grid ``scale`` -> float32 (N, C) means: the exact integer
    sum of the levels, times ``scale``, divided by H * W (no summation-order dependence)."""
    check_array("q", q, np.int8, 4)
    _inverse(scale)
    nb, h, w, c = q.shape
    out = np.empty((nb, c), np.float32)
    _mean_pool_i8(q.reshape(nb, h * w, c), np.float32(scale), out)
    return out
