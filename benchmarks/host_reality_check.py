"""Host reality check: `codesign predict --device host --backend xnnpack` vs measured latencies.

Reads a CSV written by ``benchmarks/measure_host_models.py`` (zoo models lowered to XNNPACK
``.pte`` and timed with the ExecuTorch runtime on this machine), prices every model with the
analytic model (no per-model constants: the same device spec and back-end file for all), and
reports Spearman's rho, Kendall's tau, MAPE and the share within 25%.

    .venv/bin/python -m benchmarks.host_reality_check \
        --measured benchmarks/results/host_xnnpack_fp32_t1.csv --dtype fp32
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from benchmarks.host_models import build
from codesign.pricing import price_module
from codesign.cost_models.devices import load_device


def compare(measured_csv: Path, dtype: str, threads: int | None = None) -> dict:
    """``threads``: only the CSV's rows at that thread count (None: every row)."""
    device = load_device("host")
    rows = list(csv.DictReader(Path(measured_csv).open()))
    names, measured, predicted, bounds = [], [], [], []
    for row in rows:
        if row["precision"] != dtype or (threads is not None and int(row["threads"]) != threads):
            continue
        module, shape = build(row["model"])
        priced = price_module(module, shape, device, backend="xnnpack", dtype=dtype,
                              threads=int(row["threads"]))
        names.append(row["model"])
        measured.append(float(row["p50_ms"]) / 1e3)
        predicted.append(priced.latency_s)
        bounds.append(max(priced.bound_shares().items(), key=lambda kv: kv[1])[0])
    m, p = np.array(measured), np.array(predicted)
    rel = np.abs(p - m) / m
    return {
        "measured_csv": str(measured_csv), "dtype": dtype, "n_models": len(m),
        "spearman": float(stats.spearmanr(m, p).statistic),
        "kendall": float(stats.kendalltau(m, p).statistic),
        "mape": float(rel.mean()), "median_ape": float(np.median(rel)),
        "within_25pct": float((rel <= 0.25).mean()),
        "median_pred_over_measured": float(np.median(p / m)),
        "threads": threads,
        "assumptions": {"device": device.display_name, "backend": "xnnpack"},
        "models": [{"model": n, "measured_ms": a * 1e3, "predicted_ms": b * 1e3, "bound": c}
                   for n, a, b, c in zip(names, m, p, bounds)],
    }


def main(argv=None) -> int:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", required=True, type=Path)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=None,
                        help="only the rows measured at this thread count (default: all)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    result = compare(args.measured, args.dtype, args.threads)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    summary = {k: v for k, v in result.items() if k != "models"}
    print(json.dumps(summary, indent=2))
    for row in sorted(result["models"], key=lambda r: r["measured_ms"]):
        print(f"{row['model']:32s} measured {row['measured_ms']:9.3f} ms  predicted "
              f"{row['predicted_ms']:9.3f} ms  ({row['bound']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
