"""Calibration benchmark: leave-one-device-out transfer on the full measured tables.

For each space (NAS-Bench-201, FBNet) and each device column as the target, the learned model is
fitted from N target rows drawn with seeds 0-4 plus every row of the other columns (the priors),
and scored on the remaining rows (``codesign.calibrate.fit_and_score``, the engine of
``codesign calibrate``). Baselines on the same split:
- ``flops``: total FLOPs, scaled by the median latency/FLOPs ratio of the N rows;
- ``op_counts``: a ridge regression (alpha by leave-one-out) of latency on op counts by kind
  group, fitted on the N rows;
- ``best_prior``: the prior column with the highest Spearman on the N rows, scaled by the
  median ratio (and, for reference, ``best_prior_oracle``: the best column on the test rows).

Stage 1 (the prior devices' models) is fitted once per table and shared by every target, exactly
as ``fit_and_score`` would refit it (it does not depend on the target's rows).

    .venv/bin/python -m benchmarks.calibration_benchmark \
        --data ../shared/data/measured --out benchmarks/results/calibration
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.linear_model import RidgeCV

from codesign.calibrate import fit_and_score, metrics, read_measurements, split_rows
from codesign.cost_models.features import FEATURE_NAMES
from codesign.cost_models.learned import LearnedCostModel

log = logging.getLogger("calibration_benchmark")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "measured"
RUNS = {"nasbench201": (10, 100), "fbnet": (10, 100)}
COUNT_COLUMNS = [i for i, n in enumerate(FEATURE_NAMES)
                 if n.endswith(".count") and not n.startswith("total.")]
TARGETS = {("nasbench201", 10, "spearman"): 0.95, ("nasbench201", 100, "within_10pct"): 0.85,
           ("fbnet", 10, "spearman"): 0.95}


def _scaled(reference: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
    return reference * float(np.median(y[train] / reference[train]))


def baselines(data, target: str, train: np.ndarray, test: np.ndarray) -> dict[str, dict]:
    y = data.column(target)
    flops = data.features[:, FEATURE_NAMES.index("total.flops")]
    out = {"flops": metrics(_scaled(flops, y, train)[test], y[test])}
    counts = data.features[:, COUNT_COLUMNS]
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(counts[train], y[train])
    out["op_counts"] = metrics(np.maximum(ridge.predict(counts[test]), 1e-6), y[test])
    priors = [c for c in data.columns if c != target]

    def rho(col, rows):
        r = stats.spearmanr(data.column(col)[rows], y[rows])[0]
        return -1.0 if np.isnan(r) else r

    chosen = max(priors, key=lambda c: rho(c, train))
    out["best_prior"] = metrics(_scaled(data.column(chosen), y, train)[test], y[test])
    out["best_prior"]["column"] = chosen
    oracle = max(priors, key=lambda c: rho(c, test))
    out["best_prior_oracle"] = metrics(_scaled(data.column(oracle), y, train)[test], y[test])
    out["best_prior_oracle"]["column"] = oracle
    return out


def run_space(space: str, path: Path, seeds: list[int]) -> dict:
    start = time.perf_counter()
    data = read_measurements(space, path)
    featurise_s = time.perf_counter() - start
    log.info("%s: %d rows featurised in %.1f s", space, len(data.archs), featurise_s)
    start = time.perf_counter()
    stage = LearnedCostModel.fit_priors(data.table, data.features, data.latency_ms,
                                        list(data.columns))
    stage1_s = time.perf_counter() - start
    results = {"rows": len(data.archs), "featurise_s": featurise_s,
               "stage1_all_devices_s": stage1_s, "targets": {}}
    for target in data.columns:
        priors = [c for c in data.columns if c != target]
        per_n = {}
        for n in RUNS[space]:
            runs = []
            for seed in seeds:
                t0 = time.perf_counter()
                model_metrics, model = fit_and_score(data, target, priors, n, seed,
                                                     prior_stage=stage)
                fit_s = time.perf_counter() - t0
                train, test = split_rows(len(data.archs), n, seed)
                runs.append({"seed": seed, "model": model_metrics, "fit_s": fit_s,
                             "selected": [str(v) for v in model.target.selected],
                             "blend_weight": model.blend.weight,
                             **baselines(data, target, train, test)})
            per_n[str(n)] = runs
            log.info("%s %s N=%d: spearman %.3f within10 %.3f", space, target, n,
                     np.mean([r["model"]["spearman"] for r in runs]),
                     np.mean([r["model"]["within_10pct"] for r in runs]))
        results["targets"][target] = per_n
    return results


def _agg(runs: list[dict], method: str, key: str) -> tuple[float, float]:
    vals = np.array([np.nan if r[method][key] is None else r[method][key] for r in runs])
    return float(np.nanmean(vals)), float(np.nanstd(vals))


def summarise(results: dict) -> dict:
    summary = {}
    for space, res in results["spaces"].items():
        for target, per_n in res["targets"].items():
            for n, runs in per_n.items():
                for method in ("model", "flops", "op_counts", "best_prior", "best_prior_oracle"):
                    for key in ("spearman", "kendall", "within_10pct", "mape",
                                "mape_excluding_near_zero"):
                        mean, std = _agg(runs, method, key)
                        summary.setdefault(space, {}).setdefault(target, {}).setdefault(
                            n, {}).setdefault(method, {})[key] = {"mean": mean, "std": std}
    return summary


def _cell(s, method, key):
    return f"{s[method][key]['mean']:.3f} ± {s[method][key]['std']:.3f}" if method == "model" \
        else f"{s[method][key]['mean']:.3f}"


def never_below_flops(results: dict, n: int) -> list[str]:
    """Per target: the model's Spearman (min and mean over seeds), FLOPs' on the same test rows,
    how many seeds fell below FLOPs and the blend weights (0: the FLOPs prior, 1: the fit)."""
    lines = []
    for space, res in results["spaces"].items():
        lines += [f"### {space}, N = {n}: Spearman never below FLOPs?", "",
                  "| target | min over seeds | mean | FLOPs (mean) | seeds below FLOPs | "
                  "blend weights |", "|---|---|---|---|---|---|"]
        means, below_total = [], 0
        for target, per_n in res["targets"].items():
            runs = per_n[str(n)]
            model = np.array([r["model"]["spearman"] for r in runs])
            flops = np.array([r["flops"]["spearman"] for r in runs])
            below = [r["seed"] for r, m, f in zip(runs, model, flops) if m < f]
            below_total += len(below)
            means.append(model.mean())
            weights = " ".join(f"{r['blend_weight']:g}" for r in runs)
            lines.append(f"| {target} | {model.min():.3f} | {model.mean():.3f} | "
                         f"{flops.mean():.3f} | {len(below)}{' ' + str(below) if below else ''}"
                         f" | {weights} |")
        lines += [f"| **mean of {len(means)}** | | **{np.mean(means):.3f}** | | "
                  f"{below_total} | |", ""]
    return lines


def markdown(results: dict, summary: dict, command: str) -> str:
    lines = ["# Calibration benchmark: leave-one-device-out transfer", "",
             f"Command: `{command}`", "",
             f"Seeds {results['seeds']}; mean ± std over seeds for the learned model, mean for "
             "baselines. Every column is the target in turn; priors = every other column. "
             "Baselines: `flops` (total FLOPs scaled on the N rows), `counts` (ridge on op "
             "counts by kind, N rows), `prior` (the prior column with the best Spearman on the "
             "N rows, scaled), `oracle` (the prior column best on the test rows).", ""]
    lines += ["## Targets (pixel3)", ""]
    for (space, n, key), goal in TARGETS.items():
        if space in summary:
            got = summary[space]["pixel3"][str(n)]["model"][key]["mean"]
            lines.append(f"- {space}, N = {n}, {key}: {got:.3f} (goal >= {goal}: "
                         f"{'met' if got >= goal else 'not met'})")
    lines.append("")
    lines += never_below_flops(results, 10)
    for space, res in results["spaces"].items():
        lines += [f"## {space} ({res['rows']} rows; featurised in {res['featurise_s']:.1f} s, "
                  f"stage 1 for all {len(res['targets'])} devices in "
                  f"{res['stage1_all_devices_s']:.1f} s)", ""]
        for n in RUNS[space]:
            for key in ("spearman", "within_10pct"):
                goal = TARGETS.get((space, n, key))
                title = f"### N = {n}: {key}" + (f" (target: pixel3 >= {goal})" if goal else "")
                lines += [title, "", "| target | learned | flops | counts | prior | oracle |"
                          " MAPE learned (excl. near-zero) | fit s |",
                          "|---|---|---|---|---|---|---|---|"]
                for target, per_n in summary[space].items():
                    s = per_n[str(n)]
                    fit_s = np.mean([r["fit_s"] for r in res["targets"][target][str(n)]])
                    excl = s["model"]["mape_excluding_near_zero"]["mean"]
                    lines.append(
                        f"| {target} | {_cell(s, 'model', key)} | {_cell(s, 'flops', key)} | "
                        f"{_cell(s, 'op_counts', key)} | {_cell(s, 'best_prior', key)} | "
                        f"{_cell(s, 'best_prior_oracle', key)} | "
                        f"{s['model']['mape']['mean']:.3f} ({excl:.3f}) | {fit_s:.1f} |")
                lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with nasbench201_latency_ms.csv and fbnet_latency_ms.csv")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--spaces", default="nasbench201,fbnet")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/calibration"),
                        help="writes OUT.md and OUT.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    seeds = [int(s) for s in args.seeds.split(",")]
    command = " ".join([".venv/bin/python -m benchmarks.calibration_benchmark"] + (
        argv if argv is not None else sys.argv[1:]))
    results = {"seeds": seeds, "spaces": {}}
    for space in args.spaces.split(","):
        results["spaces"][space] = run_space(space, args.data / f"{space}_latency_ms.csv", seeds)
    summary = summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "summary": summary, "runs": results}, separators=(",", ":")))
    args.out.with_suffix(".md").write_text(markdown(results, summary, command))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
