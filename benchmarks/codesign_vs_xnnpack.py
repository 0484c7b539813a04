"""Co-design vs stock: the same search on both back-ends, compared by hypervolume.

    python -m benchmarks.codesign_vs_xnnpack [--device pixel8] [--budgets 5ms,10ms]
        [--seeds 0,1,2] [--trials 50] [--json OUT.json]

For each budget and sampler seed, ``codesign search`` runs once per back-end with the built-in
evaluator and the same trials (no fine-tuning: the search's own front is compared). Each front
is scored by its hypervolume in (val error, latency, model bytes), every member clearing the
accuracy floor, against the reference point (1 - floor, budget, the largest member's bytes over
all runs), normalised to the unit cube. Then, at xnnpack's best val accuracy, the fastest codesign
member at least as accurate is taken apart: its latency with its tiles reset to the back-end
default (tile), then also dense (sparsity), then also fp32 throughout (precision), each step's
latency ratio being what that choice contributes; the rest is the kernels and architecture.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.hypervolume import hypervolume as exact_hypervolume
from codesign.search import SearchConfig, run_search
from codesign.userinput import parse_budget
from codesign.search_spaces.mbconv import Candidate


def hypervolume(members: list[dict], floor: float, budget_s: float, max_bytes: float) -> float:
    ref = np.array([1.0, 1.0, 1.0])
    points = [[(1 - m["accuracy"]) / (1 - floor), m["latency_s"] / budget_s,
               m["model_bytes"] / max_bytes] for m in members if m["accuracy"] >= floor]
    if not points:
        return 0.0
    return exact_hypervolume(np.array(points), ref)


def _with(candidate: Candidate, **change) -> Candidate:
    layers = tuple((u, dataclasses.replace(c, **change)) for u, c in candidate.layers)
    return dataclasses.replace(candidate, layers=layers)


def decompose(context, member: dict) -> dict[str, float]:
    """Latency of ``member`` (a codesign candidate) as each co-design choice is undone."""
    cand = context.space.decode(member["params"])
    steps = {"as searched": cand}
    steps["default tiles"] = _with(cand, tile="default")
    steps["dense"] = _with(steps["default tiles"], sparsity="dense")
    steps["fp32"] = _with(steps["dense"], precision="w32a32")
    return {name: context.price(c)["latency_s"] for name, c in steps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="pixel8")
    parser.add_argument("--budgets", default="5ms,10ms")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for backend in ("xnnpack", "codesign"):
                    config = SearchConfig(device=args.device, budget_s=parse_budget(budget),
                                          budget_text=budget, backend=backend,
                                          trials=args.trials, seed=seed, progress=False,
                                          out=Path(tmp) / f"{backend}-{budget}-{seed}")
                    result = run_search(config)
                    runs.append({"budget": budget, "budget_s": config.budget_s, "seed": seed,
                                 "backend": backend, "pareto": result.pareto})
                    print(f"{budget} seed {seed} {backend}: {len(result.pareto['members'])} "
                          "members", flush=True)
    max_bytes = max(m["model_bytes"] for r in runs for m in r["pareto"]["members"])
    rows = []
    for r in runs:
        p = r["pareto"]
        r["hypervolume"] = hypervolume(p["members"], p["min_accuracy"], r["budget_s"], max_bytes)
        rows.append({k: r[k] for k in ("budget", "seed", "backend", "hypervolume")}
                    | {"n_members": len(p["members"]),
                       "best_val": max((m["accuracy"] for m in p["members"]), default=None),
                       "fastest_ms": min((m["latency_s"] * 1e3 for m in p["members"]),
                                         default=None)})
    print(f"{'budget':>6} {'seed':>4} {'backend':>9} {'HV':>7} {'members':>7} {'best val':>8} "
          f"{'fastest ms':>10}")
    for row in rows:
        print(f"{row['budget']:>6} {row['seed']:>4} {row['backend']:>9} {row['hypervolume']:7.4f} "
              f"{row['n_members']:>7} {row['best_val'] or float('nan'):8.3f} "
              f"{row['fastest_ms'] or float('nan'):10.3f}")
    # the speed-up at xnnpack's best accuracy, taken apart (per budget and seed)
    from codesign.context import build_context

    splits = []
    for budget in args.budgets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            pair = {r["backend"]: r for r in runs if r["budget"] == budget and r["seed"] == seed}
            xm = pair["xnnpack"]["pareto"]["members"]
            cm = pair["codesign"]["pareto"]["members"]
            if not xm or not cm:
                continue
            best = max(xm, key=lambda m: (m["accuracy"], -m["latency_s"]))
            rivals = [m for m in cm if m["accuracy"] >= best["accuracy"]]
            if not rivals:
                splits.append({"budget": budget, "seed": seed, "xnnpack_best_val":
                               best["accuracy"], "codesign": "no member as accurate"})
                continue
            rival = min(rivals, key=lambda m: m["latency_s"])
            config = SearchConfig(device=args.device, budget_s=parse_budget(budget),
                                  budget_text=budget, backend="codesign", evaluator=None)
            context = build_context(config)
            lat = decompose(context, rival)
            splits.append({"budget": budget, "seed": seed,
                           "xnnpack_best_val": best["accuracy"],
                           "xnnpack_ms": best["latency_s"] * 1e3,
                           "codesign_val": rival["accuracy"], "codesign_formats": rival.get(
                               "formats"), "latency_ms": {k: v * 1e3 for k, v in lat.items()},
                           "speedup": best["latency_s"] / lat["as searched"],
                           "tile": lat["default tiles"] / lat["as searched"],
                           "sparsity": lat["dense"] / lat["default tiles"],
                           "precision": lat["fp32"] / lat["dense"]})
    for s in splits:
        print(json.dumps(s))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "speedup_split": splits},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
