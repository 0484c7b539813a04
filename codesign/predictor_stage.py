"""The predictor-guided stage of a search (APQ): learn accuracy from the trials evaluated so far,
search many more candidates on the predictor and the cost model, evaluate the best for real.

1. An accuracy predictor (a random forest over a fixed-length encoding of the candidate: per-stage
   width, depth, mean kernel and expansion, stem and head widths, threads, and the share of units
   in each format) is fitted on every completed trial; its held-out rank correlation (Spearman,
   5-fold cross-validation) is reported, so a user sees whether it can be trusted.
2. An evolutionary search over at least ``population x generations`` candidates (10,000 by
   default): parents are the predicted-best feasible candidates so far (the study's front to
   start), children mutate a share of a parent's parameters (the space's own sampler redraws
   them, so every child is a point of the space) or cross two parents. Every child is priced by
   the search's cost model, in batches, and scored by the predictor; a child is feasible when it
   fits the budget and its predicted accuracy clears the floor.
3. The ``k`` feasible candidates of best predicted accuracy per latency (the predicted Pareto
   front, then the best predicted accuracy) are enqueued as trials and evaluated for real by the
   search loop (they live in the study's storage, so ``--resume`` runs them if a crash
   interrupts).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from optuna.trial import TrialState

log = logging.getLogger("codesign.predictor")
STAGE = "predictor"
# candidates per generation and generations: 10,000 candidates scored per stage
POPULATION, GENERATIONS = 500, 20


@dataclass(frozen=True)
class StageReport:
    """What the stage did, for pareto.json's ``predictor`` key."""

    n_train: int
    spearman_cv: float
    candidates_scored: int
    distinct_scored: int
    feasible: int
    enqueued: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def features(candidate, formats: Sequence[str]) -> np.ndarray:
    """A fixed-length numeric encoding of an MBConv candidate (see the module docstring)."""
    arch = candidate.arch
    row = [arch.stem_width, arch.head_width, getattr(candidate, "threads", 1)]
    for stage in arch.stages:
        row += [stage.width, stage.depth, float(np.mean(stage.kernels)),
                float(np.mean(stage.expands))]
    labels = [(c.precision if c.sparsity == "dense" else f"{c.precision}+{c.sparsity}")
              for _, c in candidate.layers]
    row += [labels.count(f) / len(labels) for f in formats]
    return np.array(row, dtype=np.float64)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return float(value) if np.isfinite(value) else 0.0


def fit_predictor(x: np.ndarray, y: np.ndarray, seed: int):
    """A random forest on (x, y) and its 5-fold cross-validated Spearman (0 below 10 rows)."""
    from sklearn.ensemble import RandomForestRegressor

    def model():
        return RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed,
                                     n_jobs=1)

    rho = 0.0
    if len(y) >= 10:
        folds = np.random.default_rng(seed).permutation(len(y)) % 5
        pred = np.empty(len(y))
        for f in range(5):
            test = folds == f
            pred[test] = model().fit(x[~test], y[~test]).predict(x[test])
        rho = _spearman(pred, y)
    return model().fit(x, y), rho


def _draw(dist, rng: np.random.Generator):
    return dist.choices[int(rng.integers(len(dist.choices)))]


def _mutate(space, params: dict, rng: np.random.Generator, rate: float) -> dict:
    """``params`` with about ``rate`` of its active parameters redrawn (a point of the space:
    the space's own distributions decide what is active and what each may be)."""
    child: dict[str, Any] = {}
    for name, dist in space.iter_distributions(child):
        keep = name in params and params[name] in dist.choices and rng.random() >= rate
        child[name] = params[name] if keep else _draw(dist, rng)
    return child


def _cross(space, a: dict, b: dict, rng: np.random.Generator) -> dict:
    """Each active parameter from one of two parents (drawn anew where neither has it)."""
    child: dict[str, Any] = {}
    for name, dist in space.iter_distributions(child):
        options = [p[name] for p in (a, b) if name in p and p[name] in dist.choices]
        child[name] = options[int(rng.integers(len(options)))] if options else _draw(dist, rng)
    return child


def _price(context, candidates: list) -> tuple[np.ndarray, np.ndarray]:
    """Predicted latency (s) and model bytes of ``candidates``, batched per thread count:
    through the space's ``op_batch`` (the same prices as ``to_ops``, tested; memoised in
    MBConv), or op by op where the device's tiles are tuned by measurement
    (``device.tunes_tiles``); by the search's cost model (a learned/hybrid one too)."""
    from codesign.cost_models.ir import OpBatch, OpKind, KIND_CODES

    fast = not context.device.tunes_tiles
    latency = np.empty(len(candidates))
    size = np.empty(len(candidates))
    threads = np.array([getattr(c, "threads", context.device.default_threads)
                        for c in candidates])
    for t in np.unique(threads):
        idx = np.flatnonzero(threads == t)
        if fast:
            batch = context.space.op_batch([candidates[i] for i in idx])
        else:  # the op lists context.price prices
            batch = OpBatch.from_oplists([context.priced_ops(candidates[i]) for i in idx])
        latency[idx] = context.cost_model(int(t)).predict(batch).latency_s
        stored = np.where(batch.kind == KIND_CODES[OpKind.MATMUL], 0.0, batch.weight_bytes)
        size[idx] = np.round(np.bincount(batch.candidate, weights=stored,
                                          minlength=len(idx)))
    return latency, size


def _front(acc: np.ndarray, lat: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (max acc, min lat, min size), best acc first."""
    keep = []
    for i in np.argsort(-acc, kind="stable"):
        no_worse = (acc >= acc[i]) & (lat <= lat[i]) & (size <= size[i])
        better = (acc > acc[i]) | (lat < lat[i]) | (size < size[i])
        if not np.any(no_worse & better):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


def _topped_up(first: list[int], acc: np.ndarray, n: int) -> list[int]:
    """``first``, then the other indices by predicted accuracy, ``n`` in all."""
    taken = set(first)
    return (first + [int(i) for i in np.argsort(-acc) if int(i) not in taken])[:n]


def run_stage(study, context, *, k: int, seed: int, population: int | None = None,
              generations: int | None = None) -> StageReport | None:
    """Fit, evolve and enqueue ``k`` trials (see the module docstring); None when the space
    cannot be encoded (not an MBConv space) or fewer than 10 trials completed."""
    population = population or POPULATION
    generations = generations or GENERATIONS
    formats = getattr(context.space, "formats", None)
    if formats is None or k <= 0:
        return None
    start = time.perf_counter()
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(done) < 10:
        log.info("predictor stage skipped: %d completed trials (needs 10)", len(done))
        return None
    space = context.space
    x = np.stack([features(space.decode(t.params), formats) for t in done])
    y = np.array([t.values[0] for t in done])
    sign = 1.0 if context.higher_is_better else -1.0
    predictor, rho = fit_predictor(x, sign * y, seed)
    rng = np.random.default_rng(seed)
    floor = sign * context.min_accuracy if context.min_accuracy is not None else -np.inf
    parents = [dict(t.params)
               for t in sorted(done, key=lambda t: -sign * t.values[0])[:population]]
    seen = {json.dumps(p, sort_keys=True, default=str) for p in parents}
    scored = distinct = 0
    pool_params: list[dict] = []
    pool = np.empty((0, 3))
    for _ in range(generations):
        children = []
        for _ in range(population):
            if rng.random() < 0.3 and len(parents) > 1:
                i, j = rng.choice(len(parents), size=2, replace=False)
                child = _cross(space, parents[i], parents[j], rng)
            else:
                child = _mutate(space, parents[int(rng.integers(len(parents)))], rng, 0.15)
            scored += 1
            key = json.dumps(child, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                children.append(child)
        if not children:
            continue
        distinct += len(children)
        candidates = [space.decode(p) for p in children]
        lat, size = _price(context, candidates)
        acc = predictor.predict(np.stack([features(c, formats) for c in candidates]))
        ok = (lat <= context.budget_s) & (acc >= floor)
        pool_params += [children[i] for i in np.flatnonzero(ok)]
        pool = np.vstack([pool, np.column_stack([acc, lat, size])[ok]])
        if len(pool):  # next parents: the predicted front, topped up with the best predicted
            front = list(_front(pool[:, 0], pool[:, 1], pool[:, 2]))
            parents = [pool_params[i] for i in _topped_up(front, pool[:, 0], population)]
    chosen: list[int] = []
    if len(pool):  # spread along the last predicted front, topped up with the best predicted
        chosen = _topped_up(front[::max(1, len(front) // k)][:k], pool[:, 0], k)
    for i in chosen:
        study.enqueue_trial(pool_params[i], user_attrs={"stage": STAGE,
                                                        "predicted": float(sign * pool[i, 0])})
    report = StageReport(len(y), rho, scored, distinct, len(pool), len(chosen),
                         time.perf_counter() - start)
    log.info("predictor stage: %s", report)
    return report
