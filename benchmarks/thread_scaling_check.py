"""Predicted vs measured 1 -> 2 thread scaling of the zoo on this host.

Reads a CSV of ``benchmarks.measure_host_threads`` (each model at 1 and 2 threads, timed
interleaved), prices every model at both thread counts with the analytic model
(``--device host --backend xnnpack``) and reports, over the zoo, the median measured and
predicted speed-up (t1 / t2), the median |predicted speed-up / measured - 1| and the median
|predicted t2 / measured t2 - 1|.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.thread_scaling_check \
        --measured benchmarks/results/host_xnnpack_fp32_t1t2.csv --dtype fp32
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.host_models import build
from codesign.cost_models.devices import load_device
from codesign.pricing import price_module


def compare(measured_csv: Path, dtype: str) -> dict:
    device = load_device("host")
    times: dict[str, dict[int, float]] = {}
    loads: dict[str, float] = {}
    for row in csv.DictReader(Path(measured_csv).open()):
        if row["precision"] == dtype:
            times.setdefault(row["model"], {})[int(row["threads"])] = float(row["p50_ms"]) / 1e3
            loads[row["model"]] = max(loads.get(row["model"], 0.0),
                                      float(row.get("max_loadavg_1m") or 0.0))
    rows = []
    for name, t in times.items():
        if 1 not in t or 2 not in t:
            continue
        module, shape = build(name)
        p1 = price_module(module, shape, device, backend="xnnpack", dtype=dtype, threads=1)
        p2 = price_module(module, shape, device, backend="xnnpack", dtype=dtype, threads=2)
        rows.append({"model": name, "measured_t1_ms": t[1] * 1e3, "measured_t2_ms": t[2] * 1e3,
                     "predicted_t1_ms": p1.latency_s * 1e3, "predicted_t2_ms": p2.latency_s * 1e3,
                     "measured_speedup": t[1] / t[2],
                     "predicted_speedup": p1.latency_s / p2.latency_s,
                     "max_loadavg_1m": loads[name]})
    ms = np.array([r["measured_speedup"] for r in rows])
    ps = np.array([r["predicted_speedup"] for r in rows])
    m2 = np.array([r["measured_t2_ms"] for r in rows])
    p2 = np.array([r["predicted_t2_ms"] for r in rows])
    return {"measured_csv": str(measured_csv), "dtype": dtype, "n_models": len(rows),
            "median_measured_speedup": float(np.median(ms)),
            "median_predicted_speedup": float(np.median(ps)),
            "median_abs_speedup_error": float(np.median(np.abs(ps / ms - 1))),
            "median_abs_t2_error": float(np.median(np.abs(p2 / m2 - 1))),
            "median_pred_over_measured_t2": float(np.median(p2 / m2)),
            "models": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", required=True, type=Path)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = compare(args.measured, args.dtype)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
