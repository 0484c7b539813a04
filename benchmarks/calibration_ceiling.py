"""Ceiling of the learned cost model's features on one device column, fitted on ALL its rows.

Any model that sees a candidate only through its op signatures (``codesign.cost_models.features``:
kind, shapes, liveness state) predicts the same latency for candidates with the same signature
counts. So, per target column:
- ``group_mean_loo``: every row predicted by the mean of the *other* rows with its exact
  signature-count vector (rows alone in their group are skipped). This is the best any function
  of the features can do, and the groups' spread is the measurement noise (plus whatever the
  features cannot see): ``median_abs_log`` is its median |log(pred / measured)|.
- ``additive_cv``: the learned model's family (latency additive over op signatures, weighted
  least squares on relative error) fitted by 5-fold cross-validation on all rows.
- ``gbm_cv``: a gradient-boosted tree ensemble on the signature counts (log latency), 5-fold.
- ``gbm_with_devices_cv``: the same ensemble given, besides the counts, every other device
  column's log latency of the same candidate (what a transfer model could at most borrow from
  the prior devices), 5-fold; ``best_other_column`` is the best single prior column's Spearman.
The learned model, fitted on N rows of the target, cannot beat these.

    .venv/bin/python -m benchmarks.calibration_ceiling --space nasbench201 --target pixel3 \
        --data ../shared/data/measured
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.ensemble import HistGradientBoostingRegressor

from codesign.calibrate import metrics, read_measurements

FOLDS = 5


def group_mean_loo(counts: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows in groups of two or more, their leave-one-out group-mean prediction)."""
    _, group = np.unique(counts, axis=0, return_inverse=True)
    group = group.ravel()
    total, size = np.bincount(group, y), np.bincount(group)
    rows = np.flatnonzero(size[group] > 1)
    return rows, (total[group[rows]] - y[rows]) / (size[group[rows]] - 1)


def cross_validated(counts: np.ndarray, y: np.ndarray, fit_predict) -> np.ndarray:
    folds = np.random.default_rng(0).permutation(len(y)) % FOLDS
    pred = np.empty(len(y))
    for f in range(FOLDS):
        test = folds == f
        pred[test] = fit_predict(counts[~test], y[~test], counts[test])
    return np.maximum(pred, 1e-9)


def additive(X, y, X_test):
    """Latency = counts . cost + intercept, least squares on relative error (small ridge)."""
    A = np.column_stack([X, np.ones(len(X))])
    w = 1.0 / np.maximum(y, 0.1 * np.median(y))
    Aw = A * w[:, None]
    theta = np.linalg.solve(Aw.T @ Aw + 1e-3 * np.eye(A.shape[1]), Aw.T @ (y * w))
    return np.column_stack([X_test, np.ones(len(X_test))]) @ theta


def gbm(X, y, X_test):
    model = HistGradientBoostingRegressor(max_iter=300, random_state=0).fit(X, np.log(y))
    return np.exp(model.predict(X_test))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="nasbench201")
    parser.add_argument("--target", default="pixel3")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/measured"))
    args = parser.parse_args(argv)
    data = read_measurements(args.space, args.data / f"{args.space}_latency_ms.csv")
    counts = data.table.counts.toarray()
    y = data.column(args.target)
    rows, loo = group_mean_loo(counts, y)
    out = {"space": args.space, "target": args.target, "rows": len(y),
           "signature_count_groups": int(len(np.unique(counts, axis=0)))}
    if len(rows):
        m = metrics(loo, y[rows])
        out["group_mean_loo"] = {"rows": int(len(rows)), "spearman": m["spearman"],
                                 "within_10pct": m["within_10pct"],
                                 "median_abs_log": float(np.median(np.abs(np.log(loo / y[rows]))))}
    others = [i for i, c in enumerate(data.columns) if c != args.target]
    with_devices = np.hstack([counts, np.log(data.latency_ms[:, others])])
    for name, fn, X in (("additive_cv", additive, counts), ("gbm_cv", gbm, counts),
                        ("gbm_with_devices_cv", gbm, with_devices)):
        pred = cross_validated(X, y, fn)
        out[name] = {"spearman": float(stats.spearmanr(pred, y)[0]),
                     "within_10pct": float(np.mean(np.abs(pred - y) / y <= 0.1))}
    rho = [(float(stats.spearmanr(data.latency_ms[:, i], y)[0]), data.columns[i]) for i in others]
    out["best_other_column"] = dict(zip(("spearman", "column"), max(rho)))
    out["distinct_values"] = int(len(np.unique(y)))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
