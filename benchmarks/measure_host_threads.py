"""Time the zoo at 1 and 2 ExecuTorch threads, interleaved, on this host.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.measure_host_threads \
        --precision fp32 --out benchmarks/results/host_xnnpack_fp32_t1t2.csv

Every zoo model is lowered once (``measure_host_models._lower_one``: checked against eager),
then timed in ``--rounds`` sweeps over the zoo; within a sweep each model runs at every thread
count back to back (the order alternating between rounds), so both counts see the same load.
Each (model, threads) keeps its round with the lowest p50, as ``measure_host_models`` does:
contention only adds time. The CSV has ``measure_host_models``' columns plus the 1-minute load
average before the kept round (``loadavg_1m``) and the worst one seen over all rounds.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from benchmarks.host_models import MODELS
from benchmarks.measure_host_models import CSV_COLUMNS, _lower_one, _shape_str
from codesign.measure import PRECISIONS, RuntimeHost, time_pte

COLUMNS = CSV_COLUMNS + ("loadavg_1m", "max_loadavg_1m")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if not counts or min(counts) < 1 or args.rounds < 1 or args.repeats < 1:
        p.error("need thread counts >= 1, --rounds >= 1, --repeats >= 1")
    names = args.models or list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}")
    # _lower_one checks the program against eager at args.threads
    args.threads = counts[0]
    host = RuntimeHost.current()
    lowered = []
    for i, name in enumerate(names, 1):
        try:
            lowered.append(_lower_one(name, args))
        except Exception as exc:  # one bad model must not sink the sweep
            print(f"[lower {i}/{len(names)}] {name}: FAILED {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            continue
        print(f"[lower {i}/{len(names)}] {name}: {lowered[-1].note}", file=sys.stderr)
    best: dict[tuple[str, int], object] = {}
    worst_load: dict[tuple[str, int], float] = {}
    for rnd in range(args.rounds):
        order = counts if rnd % 2 == 0 else counts[::-1]
        for item in lowered:
            for t in order:
                m = time_pte(item.pte, item.inputs, threads=t, warmup=args.warmup,
                             repeats=args.repeats, name=item.name, precision=args.precision,
                             host=host)
                key = (item.name, t)
                load = float(m.extra_dict["loadavg_1m"])
                worst_load[key] = max(worst_load.get(key, 0.0), load)
                if key not in best or m.p50_s < best[key].p50_s:
                    best[key] = m
            print(f"[round {rnd + 1}/{args.rounds}] {item.name}: "
                  + ", ".join(f"t{t} {best[(item.name, t)].p50_s * 1e3:.3f} ms" for t in counts)
                  + f" (load {load:.2f})", file=sys.stderr)
        with open(args.out, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            for item in lowered:
                for t in counts:
                    m = best.get((item.name, t))
                    if m is not None:
                        w.writerow([item.name, _shape_str(item.shape), args.precision, t,
                                    f"{m.p50_s * 1e3:.4f}", f"{m.p90_s * 1e3:.4f}",
                                    f"{m.first_run_s * 1e3:.4f}", m.extra_dict["loadavg_1m"],
                                    f"{worst_load[(item.name, t)]:.2f}"])
    print(f"wrote {args.out} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
