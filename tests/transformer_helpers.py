"""A stand-in quality score for driver tests of ``--space transformer`` (``--evaluator``).

It is a declared proxy, not a language-model measurement: bigger models score higher, fewer
weight bits cost a little. Phase 2 of issue 9 replaces it with held-out perplexity.
"""
from __future__ import annotations

import math

from cost_models.backends import Precision
from search_spaces.transformer import parameter_count


def params_proxy(candidate, split: str) -> float:
    score = 1 - math.exp(-parameter_count(candidate) / 50e6)
    for choice in candidate.layers:
        score -= {4: 0.004, 8: 0.001}.get(Precision.parse(choice.precision).weight_bits, 0.0)
        score -= 0.002 if choice.ffn_sparsity != "dense" else 0.0
    return max(0.0, score - (0.005 if split == "test" else 0.0))
