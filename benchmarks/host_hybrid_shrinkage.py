"""The host hybrid with and without the shrinkage toward its analytic prior (issue 19).

Fits ``calibrate``'s hybrid on this project's host mbconv measurements (N rows, seeds), scores it
on the other rows, then scores the same fit with its blend removed (the fit alone).

    .venv/bin/python -m benchmarks.host_hybrid_shrinkage --samples 10,100 --seeds 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codesign.calibrate import feature_config, fit_and_score, metrics, read_measurements, \
    split_rows

CSV = Path(__file__).resolve().parent / "results" / "host_mbconv_measured.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="10,100")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args(argv)
    data = read_measurements("mbconv", CSV, config=feature_config("hybrid", "host", "xnnpack", 1))
    y = data.column("host")
    for n in (int(v) for v in args.samples.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            shrunk, model = fit_and_score(data, "host", [], n, seed, kind="hybrid")
            _, test = split_rows(len(y), n, seed)
            weight, model.blend = model.blend.weight, None
            alone = metrics(model.predict_table(data.table, data.features)[test], y[test])
            print(f"N={n} seed={seed} blend_weight={weight:g}: shrunk spearman "
                  f"{shrunk['spearman']:.3f} mape {shrunk['mape']:.3f} | fit alone spearman "
                  f"{alone['spearman']:.3f} mape {alone['mape']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
