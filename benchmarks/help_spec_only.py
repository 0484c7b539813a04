"""Zero-sample pricing of the HELP phones from spec-sheet device files (issue 19).

Each device file under ``benchmarks/devices/help/`` was written from public spec sheets (SoC,
clusters, clocks, DRAM) through ``configs/cores/``; no measurement of the phone went into it.
Every architecture of the HELP tables is priced by the analytic model of that file (XNNPACK, one
thread: the tables do not document the runtime's settings) and compared with the phone's measured
column: Spearman, and the median predicted/measured ratio (informative only, the runtime is
unknown). FLOPs' Spearman on the same rows is the reference a zero-sample model should beat.

With ``--samples N`` it also fits the hybrid (``calibrate --cost-model hybrid --device FILE``:
the file's analytic model as features and as the prior the fit shrinks toward, the other 12
columns as prior devices) on N rows per seed and scores it on the rest, next to FLOPs there.

    .venv/bin/python -m benchmarks.help_spec_only --data ../shared/data/measured \\
        --out benchmarks/results/help_spec_only.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from codesign.calibrate import fit_and_score, read_measurements, split_rows
from codesign.cost_models.features import FEATURE_NAMES, FeatureConfig

DEVICES = Path(__file__).resolve().parent / "devices" / "help"


def score(space: str, csv: Path, device: Path, threads: int, samples: int,
          seeds: list[int]) -> dict:
    data = read_measurements(space, csv, config=FeatureConfig(str(device), "xnnpack", threads))
    y = data.column(device.stem)
    pred = data.features[:, FEATURE_NAMES.index("total.latency_s")] * 1e3
    flops = data.features[:, FEATURE_NAMES.index("total.flops")]
    ratio = pred / y
    hybrid = []
    for seed in seeds if samples else []:
        priors = [c for c in data.columns if c != device.stem]
        m, model = fit_and_score(data, device.stem, priors, samples, seed, kind="hybrid")
        _, test = split_rows(len(y), samples, seed)
        hybrid.append({"seed": seed, "spearman": m["spearman"], "blend_weight": m["blend_weight"],
                       "flops_spearman": float(stats.spearmanr(flops[test], y[test])[0]),
                       "within_10pct": m["within_10pct"]})
    return {"rows": len(y), "spearman": float(stats.spearmanr(pred, y)[0]), "hybrid": hybrid,
            "flops_spearman": float(stats.spearmanr(flops, y)[0]),
            "median_pred_over_meas": float(np.median(ratio)),
            "p10_pred_over_meas": float(np.percentile(ratio, 10)),
            "p90_pred_over_meas": float(np.percentile(ratio, 90))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/measured"))
    parser.add_argument("--spaces", default="nasbench201,fbnet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=0, help="hybrid fit rows (0: none)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/help_spec_only.json"))
    args = parser.parse_args(argv)
    seeds = [int(v) for v in args.seeds.split(",")]
    out = {"threads": args.threads, "backend": "xnnpack", "samples": args.samples,
           "seeds": seeds, "results": {}}
    for device in sorted(DEVICES.glob("*.yaml")):
        for space in args.spaces.split(","):
            r = score(space, args.data / f"{space}_latency_ms.csv", device, args.threads,
                      args.samples, seeds)
            out["results"].setdefault(device.stem, {})[space] = r
            print(f"{device.stem:15s} {space:12s} spearman {r['spearman']:.3f} (FLOPs "
                  f"{r['flops_spearman']:.3f})  pred/meas median {r['median_pred_over_meas']:.3f}"
                  f" [p10 {r['p10_pred_over_meas']:.3f}, p90 {r['p90_pred_over_meas']:.3f}]",
                  flush=True)
            if r["hybrid"]:
                rho = [h["spearman"] for h in r["hybrid"]]
                below = sum(h["spearman"] < h["flops_spearman"] for h in r["hybrid"])
                print(f"    hybrid N={args.samples}: spearman min {min(rho):.3f} mean "
                      f"{np.mean(rho):.3f}, seeds below FLOPs {below}, weights "
                      f"{[h['blend_weight'] for h in r['hybrid']]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
