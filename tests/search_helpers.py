"""A user-supplied evaluator and space for tests of the plug-in points (``--evaluator``,
``--space``). The proxy accuracy is a deterministic function of the candidate, so driver tests
run in seconds; the real evaluator is exercised by tests/test_search_e2e.py."""
from __future__ import annotations

import math

from codesign.cost_models.backends import Precision
from codesign.search_spaces.mbconv import MBConvSpace


def proxy_accuracy(candidate, split: str) -> float:
    """Bigger nets score higher, low bits and sparsity cost accuracy; test split is 1% lower."""
    arch = candidate.arch
    size = sum(s.width * sum(s.expands) * sum(k * k for k in s.kernels) for s in arch.stages)
    acc = 0.6 + 0.35 * (1 - math.exp(-size / 40_000))
    for _, choice in candidate.layers:
        bits = Precision.parse(choice.precision).weight_bits
        acc -= {2: 0.02, 4: 0.005}.get(bits, 0.0)
        acc -= {"dense": 0.0, "2:4": 0.002, "block4x4": 0.006}.get(choice.sparsity, 0.004)
    return max(0.0, acc - (0.01 if split == "test" else 0.0))


def broken_evaluator(candidate, split: str) -> float:
    if candidate.arch.stages[0].depth == 3:
        raise RuntimeError("cannot build this one")
    return float("nan") if candidate.arch.stages[0].depth == 4 else 0.5


def small_space(backend):
    """A user's own space through --space MODULE:FACTORY (the MBConv family, one thread)."""
    return MBConvSpace(backend, threads_choices=(1,))


def not_a_space(backend):
    return 42


class FragileSpace(MBConvSpace):
    """A user's space with points it cannot build (stage 1 at depth 2 is rejected)."""

    def decode(self, params):
        candidate = super().decode(params)
        if candidate.arch.stages[1].depth == 2:
            raise ValueError("stage 1 at depth 2 has no kernel for this shape")
        return candidate


def fragile_space(backend):
    return FragileSpace(backend, threads_choices=(1,))


def proxy_perplexity(candidate, split: str) -> float:
    """A quality that is lower-is-better: the proxy accuracy mapped to a perplexity-like value
    (for checks that a front, a report or a sweep follows the evaluator's direction)."""
    return 1.0 / max(proxy_accuracy(candidate, split), 1e-3)


proxy_perplexity.metric, proxy_perplexity.higher_is_better = "perplexity", False


def _shaped_space(backend, deploy, evaluated):
    from dataclasses import replace

    from codesign.search_spaces.mbconv import load_mbconv_config

    config = replace(load_mbconv_config(), deploy_input_shape=deploy, eval_input_shape=evaluated,
                     sha256="")
    return MBConvSpace(backend, threads_choices=(1,), config=config)


def resized_space(backend):
    """The MBConv family priced at 256x256 but scored at 64x64 (latency and accuracy at
    different inputs, as the built-in space was in issue 16)."""
    return _shaped_space(backend, (1, 3, 256, 256), (1, 3, 64, 64))


def same_size_space(backend):
    """The MBConv family priced and scored at 64x64."""
    return _shaped_space(backend, (1, 3, 64, 64), (1, 3, 64, 64))


def failing_evaluator(candidate, split: str) -> float:
    """Every trial fails (a data set that cannot be read, say)."""
    raise RuntimeError("the validation data is not there")
