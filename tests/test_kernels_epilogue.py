"""codesign.kernels.epilogue against naive numpy references (bit for bit: no fastmath)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codesign.kernels import epilogue as ep


def _hardswish(y: np.ndarray) -> np.ndarray:
    return F.hardswish(torch.from_numpy(y.copy())).numpy()


@pytest.mark.parametrize("act", [None, "relu", "hardswish", "relu6"])
def test_requantize_act_is_torch_arithmetic_op_for_op(act):
    rng = np.random.default_rng(0)
    acc = rng.integers(-40000, 40000, size=(37, 19), dtype=np.int32)
    scale = rng.uniform(1e-5, 1e-3, 19).astype(np.float32)
    bias = rng.normal(0, 0.5, 19).astype(np.float32)
    out_scale = 0.0371
    # the fake-quantized model's order: multiply, add (two roundings), activation, quantize
    y = torch.from_numpy(acc.astype(np.float32)).mul_(torch.from_numpy(scale)).add_(
        torch.from_numpy(bias))
    y = {None: lambda t: t, "relu": torch.relu, "hardswish": F.hardswish,
         "relu6": F.relu6}[act](y)
    want = y.mul(1.0 / out_scale).round_().clamp_(-128, 127).numpy().astype(np.int8)
    got = ep.requantize_act(acc, scale, bias, act, out_scale)
    assert got.dtype == np.int8 and np.array_equal(got, want)
    deq = ep.dequantize_act(acc, scale, bias, act)
    assert np.array_equal(deq, y.numpy())


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 127.4, 127.6, 500.0, -500.0], np.float32)
    assert ep.quantize(x, 1.0).tolist() == [0, 2, 2, 0, -2, 127, 127, 127, -128]
    q = np.array([-128, -1, 0, 127], np.int8)
    assert np.array_equal(ep.dequantize(q, 0.25), q.astype(np.float32) * np.float32(0.25))


def test_bias_act_in_place():
    y = np.array([[-4.0, -1.0, 0.5, 4.0]], np.float32)
    bias = np.zeros(4, np.float32)
    ep.bias_act(y, bias, "hardswish")
    assert np.array_equal(y, _hardswish(np.array([[-4.0, -1.0, 0.5, 4.0]], np.float32)))


def test_add_int8_dequantizes_adds_and_requantizes():
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, 1000).astype(np.int8)
    b = rng.integers(-128, 128, 1000).astype(np.int8)
    sa, sb, so = 0.02, 0.03, 0.045
    fa = a.astype(np.float32) * np.float32(sa)
    fb = b.astype(np.float32) * np.float32(sb)
    want = np.clip(np.rint((fa + fb) * np.float32(1.0 / so)), -128, 127).astype(np.int8)
    assert np.array_equal(ep.add_int8(a, sa, b, sb, so), want)


def test_global_pools():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(ep.global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
    q = rng.integers(-128, 128, size=(2, 3, 5, 7)).astype(np.int8)
    sums = q.astype(np.int64).sum(axis=(1, 2)).astype(np.float32)
    assert np.array_equal(ep.global_avg_pool_int8(q, 0.1),
                          sums * np.float32(0.1) / np.float32(15))


def test_operand_errors():
    with pytest.raises(ValueError, match="no epilogue for activation 'gelu'"):
        ep.act_code("gelu")
    with pytest.raises(ValueError, match="scale must be a positive"):
        ep.quantize(np.zeros(3, np.float32), 0.0)
    with pytest.raises(ValueError, match=r"scale must have shape \(4,\)"):
        ep.requantize_act(np.zeros((2, 4), np.int32), np.zeros(3, np.float32),
                          np.zeros(4, np.float32), None, 1.0)
