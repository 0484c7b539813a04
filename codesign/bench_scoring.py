"""Benchmark: pricing throughput over many distinct MBConv candidates, end to end.

Candidates are priced as a batch pricer would: ``chunk`` at a time (numpy's temporaries for a
thousand candidates stay in cache; for ten thousand at once scoring runs about 4x slower per
candidate). Three stages are timed separately, so each number says what it includes: ``decode``
(params -> Candidate), ``lower`` (Candidates -> OpBatch columns, through ``MBConvSpace.op_batch``'s
memoised rows) and ``score`` (AnalyticCostModel.predict). ``params_to_latency_per_s`` is the three
once over distinct candidates, from a space whose memo starts empty: what fresh candidates cost.

The reference path (the per-op one every caller took before: ``check_params``'s define-by-run
walk, ``to_ops`` record by record, ``OpBatch.from_oplists``) is timed in the same process on the
first ``reference_candidates`` of them, as one chunk, and must give the same latencies.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import backend_for
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpBatch
from codesign.search_spaces.mbconv import MBConvSpace


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _distinct_params(space: MBConvSpace, n: int, rng: np.random.Generator) -> list[dict]:
    """Random params of ``n`` distinct members (a repeat is redrawn)."""
    seen: set = set()
    params = []
    while len(params) < n:
        p = space.sample(rng)
        candidate = space.decode(p)
        if candidate not in seen:
            seen.add(candidate)
            params.append(p)
    return params


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_scoring_benchmark(n: int = 10_000, *, device: str = "pixel8", backend: str = "codesign",
                          seed: int = 0, repeats: int = 3, chunk: int = 1000,
                          reference_candidates: int = 1000) -> dict[str, Any]:
    """Price ``n`` distinct random members of the MBConv space for ``backend`` on ``device``.

    Returns:
        ``params_to_latency_per_s`` (decode + lower + score, each once, chunk by chunk),
        ``score_only_per_s`` / ``lower_and_score_per_s`` / ``decode_lower_and_score_per_s``
        (scoring best of ``repeats``), ``reference_params_to_latency_per_s`` (the per-op path)
        and ``speedup_vs_reference``, candidates/s at one thread; ``seconds`` per stage.

    Raises:
        RuntimeError: the two paths priced a candidate differently.
    """
    spec = load_device(device)
    be = backend_for(spec, backend)
    threads = spec.default_threads
    rng = np.random.default_rng(seed)
    params = _distinct_params(MBConvSpace(be, threads_choices=(threads,)), n, rng)

    space = MBConvSpace(be, threads_choices=(threads,))  # its lowering memo starts empty
    model = AnalyticCostModel(spec, be, threads=threads)
    decode_s = lower_s = first_score_s = 0.0
    batches, latencies, decoded = [], [], []
    for start in range(0, n, chunk):
        candidates, seconds = _timed(lambda: [space.decode(p) for p in params[start:start + chunk]])
        decode_s += seconds
        batch, seconds = _timed(lambda: space.op_batch(candidates))
        lower_s += seconds
        prediction, seconds = _timed(lambda: model.predict(batch))
        first_score_s += seconds
        batches.append(batch)
        latencies.append(prediction.latency_s)
        decoded += candidates
    score_s = _best_of(lambda: [model.predict(b) for b in batches], repeats)

    m = min(reference_candidates, n)
    ref_space = MBConvSpace(be, threads_choices=(threads,))
    ref_model = AnalyticCostModel(spec, be, threads=threads)

    def reference_decode():
        for p in params[:m]:
            ref_space.check_params(p)
        return [ref_space.decode(p) for p in params[:m]]

    ref_candidates, ref_decode_s = _timed(reference_decode)
    ref_batch, ref_lower_s = _timed(
        lambda: OpBatch.from_oplists([ref_space.to_ops(c) for c in ref_candidates]))
    ref_prediction, ref_score_s = _timed(lambda: ref_model.predict(ref_batch))
    if not np.array_equal(ref_prediction.latency_s, np.concatenate(latencies)[:m]):
        raise RuntimeError("the memoised pricing path disagrees with the per-op one")

    ops_per = np.concatenate([np.bincount(b.candidate) for b in batches])
    e2e_s = decode_s + lower_s + first_score_s
    ref_e2e_s = ref_decode_s + ref_lower_s + ref_score_s
    return {
        "device": device, "backend": backend, "candidates": n,
        "distinct_candidates": len(set(decoded)),
        "chunk_candidates": chunk,
        "ops_per_candidate_mean": float(ops_per.mean()),
        "ops_per_candidate_range": [int(ops_per.min()), int(ops_per.max())],
        "params_to_latency_per_s": n / e2e_s,
        "score_only_per_s": n / score_s,
        "lower_and_score_per_s": n / (lower_s + score_s),
        "decode_lower_and_score_per_s": n / (decode_s + lower_s + score_s),
        "reference_candidates": m,
        "reference_params_to_latency_per_s": m / ref_e2e_s,
        "speedup_vs_reference": (n / e2e_s) / (m / ref_e2e_s),
        "seconds": {"decode": decode_s, "lower": lower_s, "score": score_s,
                    "first_score": first_score_s},
        "reference_seconds": {"decode": ref_decode_s, "lower": ref_lower_s,
                              "score": ref_score_s},
    }
