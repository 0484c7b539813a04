"""Co-designed members run end to end (issue 21): the numba programs of codesign searches against
the host prediction, and the best of them against the best XNNPACK ``.pte`` of a search with the
same budget.

Input: RUNS/b<ms> (``codesign search --backend codesign --device host --budget <ms>ms --seed 0
--threads 1``, exported with ``codesign export --format numba``) and RUNS/x<ms> (the same with
``--backend xnnpack``, exported with ``codesign export --format pte``). Per budget:

1. every exported program (numba and .pte) is timed again here, interleaved, ``--rounds``
   rounds of a fresh load each (rotated order), ``--repeats`` timed runs after ``--warmup`` per
   round, on the thread's CPU clock at one thread (immune to being preempted on a shared
   machine); a program's latency is the median over all its samples;
2. the codesign members: Spearman and median |pred/meas - 1| of ``host_latency_s_predicted``
   (the export's, same op list, the ``codesign`` back-end's analytic model for the host at one
   thread) against that latency; a member on several fronts counts once;
3. the fastest XNNPACK member, and the fastest codesign member whose accuracy is equal to it:
   per-image top-1 correctness of both programs on the test split, paired bootstrap 95%
   interval of the difference within +-1 point; ratio = XNNPACK latency / codesign latency.

python -m benchmarks.numba_end_to_end --runs RUNS [--budgets 10,20,40]
  -> benchmarks/results/numba_end_to_end.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

RESULT = Path(__file__).parent / "results" / "numba_end_to_end.json"
EQUAL_POINTS = 0.01


def _members(run: Path, kind: str) -> list[dict]:
    out = []
    for manifest in sorted((run / "export").glob(f"trial-*/{'numba/' if kind == 'numba' else ''}"
                                                 "manifest.json")):
        m = json.loads(manifest.read_text())
        if m.get("status") == "exported":
            m["dir"] = str(manifest.parent)
            out.append(m)
    return out


def _correct_numba(m: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from codesign.export.numba_export import run_batched
    from codesign.export.numba_runtime import load_program

    return run_batched(load_program(m["dir"]), x).argmax(1) == y


def _correct_pte(m: dict, x, y: np.ndarray) -> np.ndarray:
    from codesign.measure.host_runner import run_pte_batches

    pte = (Path(m["dir"]) / "model.pte").read_bytes()
    outs = run_pte_batches(pte, [[x[i:i + 1]] for i in range(len(x))], threads=1)
    return np.array([int(o[0].argmax()) for o in outs]) == y


def _time_all(numba: list[dict], ptes: list[dict], image, rounds: int, warmup: int,
              repeats: int) -> tuple[dict[str, float], list[float]]:
    """Median CPU-clock latency per program dir, all timed interleaved."""
    from codesign.export.numba_runtime import load_program, time_program
    from codesign.export.transformer import quiet_stderr
    from codesign.measure.host_runner import configure_threads, timed_runs

    configure_threads(1)
    programs = [("numba", m["dir"]) for m in numba] + [("pte", m["dir"]) for m in ptes]
    samples: dict[str, list[float]] = {d: [] for _, d in programs}
    loads = []
    x_np = np.ascontiguousarray(image.numpy())
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for kind, d in programs[r % len(programs):] + programs[:r % len(programs)]:
            if kind == "numba":
                program = load_program(d)
                program(x_np)  # compile outside the timed runs (memoised per process)
                t = time_program(program, x_np, warmup=warmup, repeats=repeats, clock="cpu")
                # time_program keeps only summaries: one p50 per round stands for the round
                samples[d].append(t.p50_s)
            else:
                with quiet_stderr():
                    runs = timed_runs((Path(d) / "model.pte").read_bytes(), (image,), "forward",
                                      warmup, repeats)
                samples[d].append(float(np.median(runs.cpu_s)))
    return {d: float(np.median(v)) for d, v in samples.items()}, loads


def budget_result(runs: Path, budget: int, data, args) -> dict:
    from codesign.evaluation.base import paired_difference

    numba = _members(runs / f"b{budget}", "numba")
    ptes = _members(runs / f"x{budget}", "pte")
    latency, loads = _time_all(numba, ptes, data.x_test[:1], args.rounds, args.warmup,
                               args.repeats)
    x, y = data.x_test, data.y_test.numpy()
    rows = []
    for kind, members in (("codesign", numba), ("xnnpack", ptes)):
        for m in members:
            correct = (_correct_numba(m, x.numpy(), y) if kind == "codesign"
                       else _correct_pte(m, x, y))
            rows.append({"kind": kind, "trial": m["trial"], "dir": m["dir"],
                         "params": m["params"], "latency_s": latency[m["dir"]],
                         "host_latency_s_predicted": m.get("host_latency_s_predicted"),
                         "accuracy": float(correct.mean()), "correct": correct,
                         "formats": m.get("layer_formats")})
    out = {"budget_ms": budget, "loadavg_1m": loads, "members": [
        {k: v for k, v in r.items() if k != "correct"} for r in rows]}
    xnn = sorted((r for r in rows if r["kind"] == "xnnpack"), key=lambda r: r["latency_s"])
    cds = sorted((r for r in rows if r["kind"] == "codesign"), key=lambda r: r["latency_s"])
    if not xnn or not cds:
        return out
    best_x = xnn[0]
    pairs = []
    for c in cds:
        d, lo, hi = paired_difference(c["correct"], best_x["correct"], seed=0)
        pairs.append({"trial": c["trial"], "latency_s": c["latency_s"], "diff": d,
                      "ci": [lo, hi], "equal": bool(-EQUAL_POINTS <= lo and hi <= EQUAL_POINTS)})
    equal = [p for p in pairs if p["equal"]]
    out["xnnpack_best"] = {"trial": best_x["trial"], "latency_s": best_x["latency_s"],
                           "accuracy": best_x["accuracy"]}
    out["codesign_vs_xnnpack_best"] = pairs
    if equal:
        best_c = equal[0]
        out["codesign_best_equal"] = best_c
        out["speedup"] = best_x["latency_s"] / best_c["latency_s"]
    out["fastest_codesign_speedup"] = best_x["latency_s"] / cds[0]["latency_s"]
    return out


def prediction_stats(results: list[dict]) -> dict:
    from scipy.stats import spearmanr

    seen, pred, meas = set(), [], []
    for r in results:
        for m in r["members"]:
            key = json.dumps(m["params"], sort_keys=True)
            if m["kind"] != "codesign" or key in seen or not m["host_latency_s_predicted"]:
                continue
            seen.add(key)
            pred.append(m["host_latency_s_predicted"])
            meas.append(m["latency_s"])
    pred_a, meas_a = np.array(pred), np.array(meas)
    return {"n_members": len(pred), "spearman": float(spearmanr(pred_a, meas_a)[0]),
            "median_abs_pred_over_meas_minus_1": float(np.median(np.abs(pred_a / meas_a - 1))),
            "median_meas_over_pred": float(np.median(meas_a / pred_a))}


def fixed_cost_per_layer(calls: int = 2000) -> dict:
    """The cost of one int8 layer step that does (almost) no arithmetic: a 1-pixel, 8 -> 16
    channel 1x1 conv2d_int8 plus its requantisation epilogue, as the runtime calls them (operand
    checks, allocation, numba dispatch); median thread CPU time over ``calls`` calls."""
    import time

    from codesign.kernels import conv_int8
    from codesign.kernels import epilogue as ep

    x = np.ones((1, 1, 1, 8), np.int8)
    w = conv_int8.pack_conv_weights(np.ones((1, 1, 8, 16), np.int8))
    scale, bias = np.ones(16, np.float32), np.zeros(16, np.float32)
    out = {}
    for name, fn in (("conv_only", lambda: conv_int8.conv2d_int8(x, w)),
                     ("conv_and_epilogue", lambda: ep.requantize_act(
                         conv_int8.conv2d_int8(x, w).reshape(-1, 16), scale, bias, "hardswish",
                         0.1))):
        for _ in range(100):
            fn()
        t = []
        for _ in range(calls):
            t0 = time.thread_time()
            fn()
            t.append(time.thread_time() - t0)
        out[f"{name}_s"] = float(np.median(t))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path)
    parser.add_argument("--budgets", default="10,20,40")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    import torch

    from codesign.search_spaces.tasks import load_task

    torch.set_num_threads(1)
    data = load_task("digits", (64, 64), 0)
    results = [budget_result(args.runs, int(b), data, args) for b in args.budgets.split(",")]
    summary = {"prediction": prediction_stats(results), "budgets": results,
               "fixed_cost_per_layer": fixed_cost_per_layer(),
               "protocol": {k: getattr(args, k) for k in ("rounds", "warmup", "repeats")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary["prediction"], indent=2))
    print("fixed cost per layer:", summary["fixed_cost_per_layer"])
    for r in results:
        print(f"budget {r['budget_ms']} ms: xnnpack best {r.get('xnnpack_best')}, codesign "
              f"equal {r.get('codesign_best_equal')}, speedup {r.get('speedup')}, fastest "
              f"codesign speedup {r.get('fastest_codesign_speedup')}")
        for m in sorted(r["members"], key=lambda m: (m["kind"], m["latency_s"])):
            pred = m["host_latency_s_predicted"]
            print(f"  {m['kind']:8s} trial {m['trial']:3d} meas {m['latency_s'] * 1e3:7.3f} ms "
                  f"pred {pred * 1e3 if pred else float('nan'):7.3f} ms acc {m['accuracy']:.4f}")


if __name__ == "__main__":
    main()
