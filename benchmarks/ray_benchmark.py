"""Ray benchmark (issue 7): evaluation-bound trials/s with 1 vs 2 workers, and a sweep's wall time
against the same searches run one after another.

Trials: the real default evaluator (the trained MBConv supernet: extract, prune, calibrate,
fake-quantize, score the validation split) on pixel8 / 10 ms, the ``random`` sampler with one
seed, so every configuration evaluates the same candidates in the same order. Threads: one torch
/ numba thread per worker in every configuration (``set_thread_counts(1)``). Ray start-up and
worker warm-up are excluded: Ray is started before the clock, and a search's throughput is its
trial count over the span from its first trial's start to its last trial's end (the Optuna
journal's timestamps), after its workers have loaded the supernet and data.

Sweep: ``run_sweep`` over 2 devices x 2 budgets on the already-started 2-CPU Ray, against
``run_search`` of the same four (device, budget) pairs in this process, one after another (each
loads the supernet from the disk cache, as ``codesign search`` does). Both wall times include
everything after Ray is up; Ray's own start-up time is reported separately.

    .venv/bin/python -m benchmarks.ray_benchmark --trials 24 --sweep-trials 6
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _span_trials_per_s(run_dir: Path) -> dict:
    from tests.test_search import load_trials

    trials = load_trials(run_dir)
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    span = (end - start).total_seconds()
    return {"trials": len(trials), "complete": sum(t.state.name == "COMPLETE" for t in trials),
            "span_s": round(span, 2), "trials_per_s": len(trials) / span,
            "worker_pids": len({t.user_attrs.get("worker_pid") for t in trials}),
            # seconds one trial's evaluation took inside its worker: if it grows with more
            # workers, they slow each other down (shared caches, memory bandwidth)
            "median_eval_s": round(statistics.median(
                t.user_attrs.get("eval_seconds", float("nan")) for t in trials), 3)}


def search_throughput(workers: int, trials: int, seed: int, root: Path, *, on_ray: bool) -> dict:
    from codesign.search import SearchConfig, run_search

    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms", trials=trials,
                          seed=seed, sampler="random", workers=workers, threads_per_worker=1,
                          out=root / f"search-w{workers}-{'ray' if on_ray else 'local'}",
                          progress=False,
                          # with an address set, even one worker runs as a Ray actor
                          ray_address="auto" if on_ray else None)
    wall = time.perf_counter()
    result = run_search(config)
    return {**_span_trials_per_s(result.run_dir), "workers": workers, "on_ray": on_ray,
            "wall_s_incl_worker_start": round(time.perf_counter() - wall, 2)}


def sweep_vs_sequential(trials: int, seed: int, root: Path) -> dict:
    from codesign.search import SearchConfig, run_search
    from codesign.sweep import SweepConfig, run_sweep
    from codesign.userinput import parse_budget

    devices, budgets = ("pixel8", "rpi5"), ("5ms", "10ms")
    wall = time.perf_counter()
    sweep = run_sweep(SweepConfig(devices=devices, budgets=budgets, out=root / "sweep",
                                  trials=trials, seed=seed, sampler="random",
                                  ray_address="auto"), echo=lambda line: None)
    sweep_s = time.perf_counter() - wall
    assert sweep.n_failed == 0, [r.reason for r in sweep.rows]
    wall = time.perf_counter()
    for device in devices:
        for budget in budgets:
            run_search(SearchConfig(device=device, budget_s=parse_budget(budget),
                                    budget_text=budget, trials=trials, seed=seed,
                                    sampler="random", out=root / f"seq-{device}-{budget}",
                                    progress=False))
    sequential_s = time.perf_counter() - wall
    return {"runs": len(sweep.rows), "trials_per_run": trials, "sweep_wall_s": round(sweep_s, 2),
            "sequential_wall_s": round(sequential_s, 2),
            "speedup_sequential_over_sweep": sequential_s / sweep_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="trials per throughput search")
    parser.add_argument("--sweep-trials", type=int, default=6,
                        help="trials per sweep run (0: skip the sweep comparison)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sequential", action="store_true",
                        help="skip the in-process 1-thread reference search")
    args = parser.parse_args()

    import optuna
    import ray

    from codesign.parallel import set_thread_counts
    from tests.ray_helpers import start_local_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_thread_counts(1)
    out = {"host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                    "python": platform.python_version(), "ray": ray.__version__},
           "loadavg_at_start": os.getloadavg(), "trials": args.trials, "sampler": "random",
           "evaluator": "supernet (default)", "threads_per_worker": 1}
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        root = Path(tmp)
        if not args.no_sequential:
            out["sequential_no_ray"] = search_throughput(1, args.trials, args.seed, root,
                                                         on_ray=False)
        t0 = time.perf_counter()
        start_local_ray(2)
        out["ray_start_s"] = round(time.perf_counter() - t0, 2)
        try:
            one = search_throughput(1, args.trials, args.seed, root, on_ray=True)
            two = search_throughput(2, args.trials, args.seed, root, on_ray=True)
            out["ray_1_worker"], out["ray_2_workers"] = one, two
            out["ratio_2_vs_1_workers"] = two["trials_per_s"] / one["trials_per_s"]
            if args.sweep_trials:
                out["sweep"] = sweep_vs_sequential(args.sweep_trials, args.seed, root)
        finally:
            ray.shutdown()
    out["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
