"""Learned and hybrid cost models vs the analytic one on this host's measured MBConv candidates.

Usage (from the repository root)::

    .venv/bin/python benchmarks/host_learned_benchmark.py \
        --measurements benchmarks/results/host_mbconv_measured.csv \
        --samples 10,25,50,100 --seeds 0,1,2 --out benchmarks/results/host_learned.json

The measurements come from ``codesign measure --device host --space mbconv --backend xnnpack
--threads 1`` (one latency column, ``host``). For every seed and training size N, the split is
calibrate's: N rows drawn at random with the seed train, every other row is held out (at least
``--min-test`` rows, else that N is skipped). On the held-out rows:

* ``analytic``: the analytic model for this host (``host`` device, XNNPACK, 1 thread), priced now
  exactly as ``codesign search --cost-model analytic`` prices it; no fitting;
* ``analytic_scaled``: the same times one factor, the median measured/analytic ratio of the N
  training rows (the cheapest possible calibration: a baseline for the learned models);
* ``learned``: ``codesign calibrate --cost-model learned`` (reference-device features, no prior
  devices: this host's CSV has one column);
* ``hybrid``: ``codesign calibrate --cost-model hybrid --device host`` (this host's own analytic
  terms as features: the analytic prior plus a learned residual).

Metrics are calibrate's (``codesign.calibrate.metrics``): MAPE, Spearman, Kendall, share within
10 %. Reported beside them, the measurement noise floor: the rows' round-to-round spread (each
row is the lowest of several rounds, each a fresh load), the re-measurements of
``<measurements>.noise.csv`` (the whole pipeline again, later), the same metrics computed between
the first and second round of every row (what a perfect predictor of one round would score
against the other), and the 1-minute load average while measuring.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from codesign.calibrate import feature_config, fit_and_score, metrics, read_measurements, \
    split_rows  # noqa: E402

MODELS = ("analytic", "analytic_scaled", "learned", "hybrid")
METRICS = ("mape", "spearman", "kendall", "within_10pct")


def analytic_ms(rows: list[dict[str, str]], threads: int) -> np.ndarray:
    """The analytic host prediction of every row, as search prices it today (ms)."""
    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.backends import backend_for
    from codesign.cost_models.devices import load_device
    from codesign.cost_models.ir import OpBatch
    from codesign.cost_models.tile_resolution import apply_tuned_tiles
    from codesign.search_spaces.mbconv import MBConvSpace

    device = load_device("host")
    backend = backend_for(device, "xnnpack")
    space = MBConvSpace(backend, threads_choices=(threads,))
    model = AnalyticCostModel(device, backend, threads=threads)
    oplists = [apply_tuned_tiles(space.to_ops(space.decode(json.loads(r["params"]))), device,
                                 backend) for r in rows]
    return model.predict(OpBatch.from_oplists(oplists)).latency_s * 1e3


def noise_floor(rows: list[dict[str, str]], noise_csv: Path) -> dict:
    rounds = [[float(v) for v in r["round_p50s_ms"].split(";")] for r in rows]
    two = np.array([r[:2] for r in rounds if len(r) >= 2])
    spread = np.array([float(r["round_spread"]) for r in rows])
    load = np.array([float(r["loadavg_1m_before"]) for r in rows])
    out = {"n_rows": len(rows),
           "round_spread_median": float(np.median(spread)),
           "round_spread_p90": float(np.quantile(spread, 0.9)),
           "loadavg_1m_median": float(np.median(load)), "loadavg_1m_min": float(load.min()),
           "loadavg_1m_max": float(load.max())}
    if len(two):
        # round 2 "predicting" round 1: the best any model of one round can do on the other
        between = metrics(two[:, 1], two[:, 0])
        out["round2_vs_round1"] = {k: between[k] for k in METRICS}
    if noise_csv.exists():
        with noise_csv.open(newline="") as fh:
            again = [abs(float(r["rel_diff"])) for r in csv.DictReader(fh)]
        out["remeasure_abs_rel_diff"] = again
        out["remeasure_abs_rel_diff_median"] = float(np.median(again)) if again else None
    return out


def _num(value) -> float:
    """A metric as a float; calibrate reports no rank correlation (None) for constant
    predictions, which rank nothing: counted as 0."""
    return 0.0 if value is None else float(value)


def compare_wallclock(path: Path, rows: list[dict[str, str]]) -> dict:
    """Noise floor of a wall-clock run, and its latency vs this run's for shared candidates."""
    with path.open(newline="") as fh:
        wall_rows = list(csv.DictReader(fh))
    out = {"path": str(path), "noise_floor": noise_floor(wall_rows, Path("/nonexistent"))}
    here = {r["id"]: float(r["host"]) for r in rows}
    common = [r for r in wall_rows if r["id"] in here]
    if common:
        wall = np.array([float(r["host"]) for r in common])
        cpu = np.array([here[r["id"]] for r in common])
        out["shared_candidates"] = len(common)
        out["wall_over_cpu_median"] = float(np.median(wall / cpu))
        out["wall_over_cpu_p90"] = float(np.quantile(wall / cpu, 0.9))
        out["wall_vs_cpu"] = {k: metrics(wall, cpu)[k] for k in METRICS}
    return out


def compare_front(pareto_path: Path, measured_path: Path) -> dict:
    """Each front member's predicted latency (and band) against its measurement."""
    from codesign.search_spaces.mbconv import MBConvSpace
    from codesign.cost_models.backends import load_backend

    pareto = json.loads(pareto_path.read_text())
    with measured_path.open(newline="") as fh:
        measured = {r["id"]: float(r["host"]) for r in csv.DictReader(fh)}
    space = MBConvSpace(load_backend(pareto["backend"]), threads_choices=(1,))
    members = []
    for m in pareto["members"]:
        cid = "c-" + space.decode(m["params"]).key()
        if cid in measured:
            lo, hi = (v * 1e3 for v in m["latency_band_s"])
            members.append({"trial": m["trial"], "id": cid, "predicted_ms": m["latency_s"] * 1e3,
                            "band_ms": [lo, hi], "measured_ms": measured[cid],
                            "in_band": lo <= measured[cid] <= hi,
                            "ape": abs(m["latency_s"] * 1e3 - measured[cid]) / measured[cid]})
    return {"pareto": str(pareto_path), "cost_model": pareto["cost_model"],
            "budget_ms": pareto["budget_s"] * 1e3, "members": members,
            "mape": float(np.mean([m["ape"] for m in members])) if members else None,
            "n_in_band": sum(m["in_band"] for m in members),
            "n_within_budget": sum(m["measured_ms"] <= pareto["budget_s"] * 1e3
                                   for m in members)}


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for run in runs:
        key = f"{run['model']}@{run['n_train']}"
        out.setdefault(key, {m: [] for m in METRICS})
        for m in METRICS:
            out[key][m].append(_num(run[m]))
    return {k: {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
                for m, v in ms.items()} for k, ms in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--measurements", type=Path,
                   default=_ROOT / "benchmarks/results/host_mbconv_measured.csv")
    p.add_argument("--samples", default="10,25,50,100", help="training sizes N")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--min-test", type=int, default=50, help="held-out rows required (default 50)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON results")
    p.add_argument("--front", type=Path, nargs=2, default=None, metavar=("PARETO", "MEASURED"),
                   help="a search's pareto.json and `codesign measure --from-pareto` of it: the "
                        "front's predicted latencies against the measured ones")
    p.add_argument("--wallclock", type=Path, default=None,
                   help="an earlier wall-clock measurement CSV of the same seed: its noise floor, "
                        "and its latencies against this file's for the candidates in both")
    args = p.parse_args(argv)
    start = time.perf_counter()
    with args.measurements.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if {r["threads"] for r in rows} != {str(args.threads)}:
        raise SystemExit(f"{args.measurements}: rows measured at threads "
                         f"{sorted({r['threads'] for r in rows})}, not {args.threads}")
    measured = np.array([float(r["host"]) for r in rows])
    analytic_now = analytic_ms(rows, args.threads)
    analytic_then = np.array([float(r["analytic_ms"]) for r in rows])
    tables = {kind: read_measurements("mbconv", args.measurements,
                                      config=feature_config(kind, "host", "xnnpack", args.threads))
              for kind in ("learned", "hybrid")}
    n = len(rows)
    runs, skipped = [], []
    for n_train in (int(s) for s in args.samples.split(",")):
        if n - n_train < args.min_test:
            skipped.append(n_train)
            continue
        for seed in (int(s) for s in args.seeds.split(",")):
            train, test = split_rows(n, n_train, seed)
            scale = float(np.median(measured[train] / analytic_now[train]))
            preds = {"analytic": analytic_now, "analytic_scaled": analytic_now * scale}
            for model, pred in preds.items():
                runs.append({"model": model, "n_train": n_train, "seed": seed,
                             "n_test": len(test), **metrics(pred[test], measured[test])})
            for kind, data in tables.items():
                result, fitted = fit_and_score(data, "host", [], n_train, seed, kind=kind)
                runs.append({"model": kind, "n_train": n_train, "seed": seed,
                             "cv_rms_log_error": fitted.error_estimate, **result})
            print(f"N={n_train} seed={seed}: " + ", ".join(
                f"{r['model']} mape {r['mape']:.3f} rho {_num(r['spearman']):.3f}"
                for r in runs[-4:]), file=sys.stderr)
    result = {
        "measurements": str(args.measurements), "n_rows": n, "threads": args.threads,
        "measured_ms": {"min": float(measured.min()), "median": float(np.median(measured)),
                        "max": float(measured.max())},
        "analytic_whole_table": {
            "now": {k: metrics(analytic_now, measured)[k] for k in METRICS},
            "at_measure_time": {k: metrics(analytic_then, measured)[k] for k in METRICS},
            "median_measured_over_analytic": float(np.median(measured / analytic_now))},
        "noise_floor": noise_floor(rows, args.measurements.with_name(
            args.measurements.stem + ".noise.csv")),
        "wallclock_run": compare_wallclock(args.wallclock, rows) if args.wallclock else None,
        "front": compare_front(*args.front) if args.front else None,
        "skipped_n_train": skipped, "summary": summarise(runs), "runs": runs,
        "runtime_s": time.perf_counter() - start}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    lines = ["| model | N train | MAPE (mean ± sd) | Spearman | Kendall | within 10 % |",
             "|---|---|---|---|---|---|"]
    for key, ms in result["summary"].items():
        model, n_train = key.split("@")
        cells = [f"{ms[m]['mean']:.3f} ± {ms[m]['std']:.3f}" for m in METRICS]
        lines.append(f"| {model} | {n_train} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
