"""Re-time every exported ``model.pte`` of a host run and compare with the predicted latency.

``codesign export`` times each program once as it exports; on a shared machine that number moves
with the load. This re-times them all in one process (threadpool as the member chose, capped to
the host's cores; warm-ups and repeats as ``time_pte``), with the load average beside each, and
reports the share of members whose measured p50 is within the run's budget.

    .venv/bin/python -m benchmarks.export_host_check runs/acc6-host [--repeats 30]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from codesign.measure.host_runner import time_pte


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    pareto = json.loads((args.run_dir / "pareto.json").read_text())
    budget = pareto["budget_s"]
    rows = []
    for manifest_path in sorted((args.run_dir / "export").glob("trial-*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        pte_path = manifest_path.parent / "model.pte"
        if not pte_path.exists():
            continue
        shape = manifest["deploy_input_shape"]
        meas = time_pte(pte_path.read_bytes(), (torch.randn(*shape),), threads=manifest["threads"],
                        warmup=5, repeats=args.repeats)
        rows.append({"trial": manifest["trial"], "threads": manifest["threads"],
                     "predicted_ms": manifest["latency_s_predicted"] * 1e3,
                     "measured_p50_ms": meas.p50_s * 1e3, "measured_p90_ms": meas.p90_s * 1e3,
                     "loadavg_1m": os.getloadavg()[0]})
    within = sum(r["measured_p50_ms"] <= budget * 1e3 for r in rows)
    ratios = sorted(r["measured_p50_ms"] / r["predicted_ms"] for r in rows)
    print(json.dumps({"run_dir": str(args.run_dir), "budget_ms": budget * 1e3,
                      "members": len(rows), "within_budget": within,
                      "share_within_budget": within / len(rows) if rows else None,
                      "measured_over_predicted_median": ratios[len(ratios) // 2] if rows else None,
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
