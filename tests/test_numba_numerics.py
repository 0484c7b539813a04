"""The fake quantization an integer program must match, and search --threads (fast tests)."""
from __future__ import annotations

import pytest
import torch

from codesign.evaluation.fake_quant import ActQuant
from codesign.search_spaces.quant_numerics import (fake_quant_symmetric, fake_quant_tensor,
                                                   quantize_weight, symmetric_scale,
                                                   weight_levels)
from codesign.kernels.specs import QuantSpec


def _bound_with_zero_point_127() -> float:
    """A range bound for which fake_quant_tensor(x, -b, b) picks zero point 127, not 128."""
    for i in range(1, 10000):
        b = 0.01 * i + 0.003
        if round(b / (max(2 * b, 1e-8) / 255)) == 127:
            return b
    raise AssertionError("no such bound")


def test_symmetric_int8_activation_has_zero_point_exactly_0():
    """Before: ActQuant(symmetric) quantized over [-b, b] asymmetrically, and for about one b in
    seven the zero point rounded to 127, giving levels [-127, 128]: +b came out 128 steps, a
    value no int8 tensor holds."""
    b = _bound_with_zero_point_127()
    step = symmetric_scale(b)
    x = torch.tensor([-2 * b, -b, -0.5 * b, 0.0, 0.5 * b, b, 2 * b])
    old = fake_quant_tensor(x, -b, b, 8)
    assert torch.round(old / step).max() == 128  # the defect, reproduced
    act = ActQuant("t", 8, symmetric=True)
    act.observer.observe(torch.tensor([-0.3 * b, b]))
    levels = torch.round(act(x, calibrating=False) / step)
    assert levels.min() == -128 and levels.max() == 127
    assert torch.equal(act(x, calibrating=False), fake_quant_symmetric(x, b, 8))


def test_weight_levels_are_what_quantize_weight_returns():
    w = torch.randn(12, 5, 3, 3)
    for bits in (8, 4):
        levels, scale = weight_levels(w, bits)
        assert levels.abs().max() <= 2 ** (bits - 1)
        assert torch.equal(levels, torch.round(levels))
        assert torch.equal((levels * scale).reshape(w.shape),
                           quantize_weight(w, QuantSpec(bits, 8)))


@pytest.mark.parametrize("threads, want", [(3, (3,)), (None, None)])
def test_search_threads_pins_the_members_thread_count(threads, want):
    from codesign.context import build_context
    from codesign.search import SearchConfig

    context = build_context(SearchConfig(device="pixel8", backend="codesign", budget_s=0.01,
                                         budget_text="10ms", threads=threads, progress=False))
    if want is None:
        assert len(context.space.threads_choices) > 1
    else:
        assert context.space.threads_choices == want
        candidate = context.space.decode(context.space.sample(__import__("numpy").random
                                                              .default_rng(0)))
        assert candidate.threads == 3


def test_search_threads_is_a_cli_option(tmp_path, capsys):
    from codesign.cli import main

    assert main(["search", "--device", "host", "--budget", "10ms", "--threads", "0",
                 "--out", str(tmp_path / "r")]) == 2
    assert "--threads" in capsys.readouterr().err


def test_parallel_convs_match_the_serial_ones():
    """conv2d / conv2d_int8 take parallel=True (codesign run --threads N uses it)."""
    import numpy as np

    from codesign.kernels.conv import conv2d
    from codesign.kernels.conv_int8 import conv2d_int8, pack_conv_weights

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 9, 9, 8)).astype(np.float32)
    w = rng.normal(size=(3, 3, 8, 40)).astype(np.float32)
    np.testing.assert_array_equal(conv2d(x, w, stride=2, padding=1, parallel=True),
                                  conv2d(x, w, stride=2, padding=1))
    xq = rng.integers(-128, 128, size=(1, 9, 9, 8)).astype(np.int8)
    wq = pack_conv_weights(rng.integers(-8, 8, size=(3, 3, 8, 40)).astype(np.int8), bits=4)
    np.testing.assert_array_equal(conv2d_int8(xq, wq, padding=1, parallel=True),
                                  conv2d_int8(xq, wq, padding=1))
