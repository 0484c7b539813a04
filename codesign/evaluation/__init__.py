"""Quality evaluation of candidates: the evaluator protocol and the built-in evaluators (the MBConv
supernet's accuracy, the transformer LM supernet's perplexity).

``base`` (the protocol, ``AccuracyResult``, ``FunctionEvaluator``) imports no torch; the torch
parts (``SupernetEvaluator``, fake quantization, pruning) load on first access.
"""
from __future__ import annotations

import importlib
from typing import Any

from codesign.evaluation.base import (AccuracyResult, Evaluator, FunctionEvaluator,
                                      MetricResult, bootstrap_interval, metric_keys, metric_of)

_LAZY = {"SupernetEvaluator": "codesign.evaluation.supernet_evaluator",
         "OpListExecutor": "codesign.evaluation.fake_quant",
         "quantize_weight": "codesign.evaluation.fake_quant",
         "sparsity_mask": "codesign.evaluation.pruning",
         "prune_to_ops": "codesign.evaluation.pruning",
         "PerplexityEvaluator": "codesign.evaluation.perplexity"}

__all__ = ["AccuracyResult", "Evaluator", "FunctionEvaluator", "MetricResult",
           "bootstrap_interval", "metric_keys", "metric_of", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
