"""Benchmark: batched cost-model scoring throughput over many distinct candidates.

Three stages are timed separately, so the headline number says what it includes:
``decode`` (params -> Candidate), ``lower`` (Candidate -> op list -> OpBatch columns) and
``score`` (AnalyticCostModel.predict over the whole batch).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from cost_models.analytic import AnalyticCostModel
from cost_models.backends import backend_for
from cost_models.devices import load_device
from cost_models.ir import OpBatch
from search_spaces.mbconv import MBConvSpace


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_scoring_benchmark(n: int = 10_000, *, device: str = "pixel8", backend: str = "codesign",
                          seed: int = 0, repeats: int = 3) -> dict[str, Any]:
    spec = load_device(device)
    be = backend_for(spec, backend)
    space = MBConvSpace(be, threads_choices=(spec.default_threads,))
    rng = np.random.default_rng(seed)
    params = [space.sample(rng) for _ in range(n)]

    start = time.perf_counter()
    candidates = [space.decode(p) for p in params]
    decode_s = time.perf_counter() - start
    distinct = len({c.key() for c in candidates})

    start = time.perf_counter()
    oplists = [space.to_ops(c) for c in candidates]
    batch = OpBatch.from_oplists(oplists)
    lower_s = time.perf_counter() - start

    model = AnalyticCostModel(spec, be, threads=spec.default_threads)
    model.predict(batch)  # warm: capability checks are cached per (kind, precision)
    score_s = _best_of(lambda: model.predict(batch), repeats)
    ops_per = np.bincount(batch.candidate)
    return {
        "device": device, "backend": backend, "candidates": n, "distinct_candidates": distinct,
        "ops_per_candidate_mean": float(ops_per.mean()),
        "ops_per_candidate_range": [int(ops_per.min()), int(ops_per.max())],
        "score_only_per_s": n / score_s,
        "lower_and_score_per_s": n / (lower_s + score_s),
        "decode_lower_and_score_per_s": n / (decode_s + lower_s + score_s),
        "seconds": {"decode": decode_s, "lower": lower_s, "score": score_s},
    }
