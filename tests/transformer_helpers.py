"""Helpers for ``--space transformer`` tests: a stand-in quality score for driver tests
(``--evaluator``), real-LLM dims for pricing tests, and a tiny LM supernet config.

``params_proxy`` is a declared proxy, not a language-model measurement: bigger models score
higher, fewer weight bits cost a little (the built-in evaluator measures held-out perplexity).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace

from codesign.cost_models.backends import Precision
from codesign.search_spaces.transformer import load_transformer_config, parameter_count


def llm_config():
    """The default space's config at real on-device LLM dims (up to d 2048, 24 layers): what the
    pricing tests use; the default space is sized for the supernet trained on this CPU."""
    return replace(load_transformer_config(), layers=(4, 8, 12, 16, 24),
                   d_model=(256, 512, 768, 1024, 1536, 2048), heads=(4, 8, 16),
                   gqa_ratios=(1, 2, 4), ffn_mults=(2, 3, 4), context=(256, 512, 1024, 2048),
                   sha256="")


def tiny_config():
    """A tiny transformer space whose LM supernet trains in about a second (tests)."""
    return replace(load_transformer_config(), layers=(1, 2), d_model=(128, 256),
                   heads=(2, 4), gqa_ratios=(1, 2), ffn_mults=(2,), context=(32, 64),
                   prompt_tokens=32, sha256="")


def tiny_train():
    from codesign.search_spaces.transformer_lm import LMTrainConfig

    return LMTrainConfig(steps=40, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=4)


def params_proxy(candidate, split: str) -> float:
    score = 1 - math.exp(-parameter_count(candidate) / 50e6)
    for choice in candidate.layers:
        score -= {4: 0.004, 8: 0.001}.get(Precision.parse(choice.precision).weight_bits, 0.0)
        score -= 0.002 if choice.ffn_sparsity != "dense" else 0.0
    return max(0.0, score - (0.005 if split == "test" else 0.0))


def tiny_space(backend):
    """``--space tests.transformer_helpers:tiny_space``: the tiny space as a run names it."""
    from codesign.search_spaces.transformer import TransformerSpace

    return TransformerSpace(backend, threads_choices=(1,), config=tiny_config())


@contextmanager
def temporary_lm_cache(directory):
    """``CODESIGN_CACHE_DIR`` set to ``directory``, the in-memory LM weights cleared before and
    after: LM supernets trained inside stay in the test's cache."""
    import pytest

    from codesign.search_spaces import transformer_lm

    mp = pytest.MonkeyPatch()
    mp.setenv("CODESIGN_CACHE_DIR", str(directory))
    transformer_lm._LOADED.clear()
    try:
        yield
    finally:
        transformer_lm._LOADED.clear()
        mp.undo()
