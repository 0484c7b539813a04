"""Turn ``benchmarks.xnnpack_op_costs`` timings into the back-end's per-op terms.

``derive(result)`` reads the ``median_s`` table and returns:

* ``program_overhead_s``: the intercept of the 1-thread add chains (median over sizes): what
  one inference costs beyond its operators (ExecuTorch's method call, the delegate call and
  the Python binding the zoo measurements also pay);
* ``dispatch_overhead_s``: the fixed part of one XNNPACK operator at 1 thread (per-op time
  over the chain sizes, ``fixed + S x rate``, least squares);
* ``fork_join_s``: how much that fixed part grows at 2 threads (pthreadpool's fork-join);
* ``stream_rate_scaling_2t``: 1-thread over 2-thread per-element time of the chain's adds;
* ``efficiency``: per grid op kind and dtype, FLOPs / (op time x peak x the model's
  edge-tile and cache-spill terms): the op time is the program time minus the program
  overhead, the op's dispatch and the model's price of the program's other ops (int8's
  quantize/dequantize); computed through ``AnalyticCostModel`` with the measured terms off, so
  the number replaces exactly the back-end efficiency x micro-kernel term it stands for;
  median over the grid shapes of that kind;
* ``portable``: per portable op, ``fixed_s`` and ``per_elem_s`` from n = 1, 8 x two sizes.
"""
from __future__ import annotations

import dataclasses
import statistics

import numpy as np


def _over_n(median: dict, family: str, s: int, t: int) -> tuple[float, float] | None:
    """(intercept, slope) over the chain length N of ``family``'s programs of size ``s`` at
    ``t`` threads: the program's fixed part and one operator; None if not measured."""
    from benchmarks.xnnpack_op_costs import CHAIN_COUNTS

    lo, hi = CHAIN_COUNTS
    a, b = median.get(f"{family}/{s}/{lo}/t{t}"), median.get(f"{family}/{s}/{hi}/t{t}")
    if a is None or b is None:
        return None
    slope = (b - a) / (hi - lo)
    return a - lo * slope, slope


def _chain_fit(median: dict, t: int) -> dict | None:
    from benchmarks.xnnpack_op_costs import CHAIN_SIZES

    per_op, intercept = [], []
    for s in CHAIN_SIZES:
        fit = _over_n(median, "chain", s, t)
        if fit is None:
            return None
        intercept.append(fit[0])
        per_op.append(fit[1])
    rate, fixed = np.polyfit(np.array(CHAIN_SIZES, float), np.array(per_op), 1)
    return {"per_op_s": dict(zip(map(str, CHAIN_SIZES), per_op)),
            "program_s": statistics.median(intercept), "fixed_s": float(fixed),
            "per_elem_s": float(rate)}


def _chain(wall: dict, cpu: dict) -> dict:
    """1 thread on the CPU clock (program and dispatch costs); 1 vs 2 threads on the wall clock
    (the only clock that sees both threads)."""
    one, w1, w2 = _chain_fit(cpu, 1), _chain_fit(wall, 1), _chain_fit(wall, 2)
    if one is None or w1 is None or w2 is None:
        return {}
    return {"program_overhead_s": one["program_s"], "dispatch_overhead_s": one["fixed_s"],
            "fork_join_s": w2["fixed_s"] - w1["fixed_s"],
            "stream_rate_scaling_2t": w1["per_elem_s"] / w2["per_elem_s"],
            "per_threads": {"1 (cpu clock)": one, "1 (wall)": w1, "2 (wall)": w2}}


def _efficiency(median: dict, program_s: float, dispatch_s: float) -> dict:
    """Per grid op: the efficiency that makes the model's compute term equal the measured op
    time. The model prices the op with a measured efficiency of 1 (its compute term is then
    FLOPs / (peak x edge-tile utilisation)), so efficiency = that term / measured op time."""
    from benchmarks.xnnpack_op_costs import GRID, op_module
    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.backends import load_backend
    from codesign.cost_models.devices import Sourced, load_device
    from codesign.cost_models.ir import OpBatch, OpKind
    from codesign.cost_models.lowering import apply_precision, lower_module

    device = load_device("host")
    one = Sourced(1.0, "measured", "unit efficiency: the derivation's reference")
    unit = {device.cpu.isa: {k: {"fp32": one, "int8": one} for k in OpKind
                             if k.value in {g[0] for g in GRID}}}
    backend = dataclasses.replace(load_backend("xnnpack"), measured_efficiency=unit,
                                  program_overhead_s=None, fixed_costs_measured_on=None)
    model = AnalyticCostModel(device, backend, threads=1)
    per_kind: dict = {}
    rows = []
    for kind, label, args in GRID:
        for dtype in ("fp32", "int8"):
            t = median.get(f"op/{label}/{dtype}")
            if t is None:
                continue
            module, shape = op_module(kind, args)
            ops = apply_precision(lower_module(module, shape), backend, dtype)
            pred = model.predict(OpBatch.from_oplists([ops]))
            target = [i for i, op in enumerate(ops) if op.kind.value == kind]
            i = target[0]
            others = float(pred.op_latency_s.sum() - pred.op_latency_s[i])
            op_s = t - program_s - others - dispatch_s
            compute = float(pred.op_compute_s[i])
            one_row = kind == "linear" and ops[i].m == 1  # the GEMV: its own measured term
            eff = compute / op_s if op_s > 0 and not one_row else float("nan")
            rows.append({"op": label, "dtype": dtype, "program_s": t, "op_s": op_s,
                         "unit_eff_compute_s": compute, "efficiency": eff,
                         "model_memory_s": float(pred.op_memory_s[i])})
            if np.isfinite(eff):
                per_kind.setdefault(kind, {}).setdefault(dtype, []).append(eff)
    return {"rows": rows,
            "median": {k: {d: float(np.median(v)) for d, v in per.items()}
                       for k, per in per_kind.items()},
            "with_boundary": _with_boundary(rows),
            "n": {k: {d: len(v) for d, v in per.items()} for k, per in per_kind.items()}}


def _with_boundary(rows: list[dict]) -> dict:
    """Per kind and dtype with at least 3 grid shapes: op time = compute at efficiency 1 / eff
    + (input + output elements) x c, least squares. A one-op program converts its input and
    output between NCHW and NHWC, which a whole model does once; ``c`` takes that out of the
    efficiency. Kept where 0 < eff <= 1 and c >= 0 (else the median stands)."""
    import math

    import torch

    from benchmarks.xnnpack_op_costs import GRID, op_module

    elems = {}
    for kind, label, args in GRID:
        module, shape = op_module(kind, args)
        with torch.no_grad():
            elems[label] = math.prod(shape) + math.prod(module.eval()(torch.zeros(shape)).shape)
    kinds = {label: kind for kind, label, _ in GRID}
    groups: dict = {}
    for r in rows:
        if np.isfinite(r["efficiency"]):
            groups.setdefault((kinds[r["op"]], r["dtype"]), []).append(r)
    out: dict = {}
    for (kind, dtype), rs in groups.items():
        if len(rs) < 3:
            continue
        a = np.array([[r["unit_eff_compute_s"], elems[r["op"]]] for r in rs])
        (inv_eff, c), *_ = np.linalg.lstsq(a, np.array([r["op_s"] for r in rs]), rcond=None)
        eff = 1.0 / inv_eff if inv_eff > 0 else float("inf")
        out.setdefault(kind, {})[dtype] = {"efficiency": float(eff),
                                           "boundary_s_per_elem": float(c),
                                           "kept": bool(0 < eff <= 1 and c >= 0), "n": len(rs)}
    return out


def _portable(median: dict) -> dict:
    """Per op: per-call time at each size (slope over the chain length), then a line over
    the two sizes: fixed + elements x rate."""
    from benchmarks.xnnpack_op_costs import PORTABLE, PORTABLE_COUNTS, PORTABLE_SHAPES

    lo, hi = PORTABLE_COUNTS
    out = {}
    for op in PORTABLE:
        sizes, per_call = [], []
        for shape in PORTABLE_SHAPES:
            s = int(np.prod(shape))
            a, b = median.get(f"portable/{op}/{s}/{lo}"), median.get(f"portable/{op}/{s}/{hi}")
            if a is not None and b is not None:
                sizes.append(s)
                per_call.append((b - a) / (hi - lo))
        if len(sizes) != 2:
            continue
        rate = (per_call[1] - per_call[0]) / (sizes[1] - sizes[0])
        out[op] = {"per_call_s": dict(zip(map(str, sizes), per_call)),
                   "fixed_s": per_call[0] - rate * sizes[0], "per_elem_s": rate}
    return out


def _handoff(wall: dict) -> dict:
    """Per size S of the ``handoff`` chains (wall clock): the intercept over N at 1 and 2
    threads, its rise (``rise_s``: the program's fp32 input and output, 8 x S bytes, passing
    between the calling thread and the pool at 2 threads), and the per-operator time ratio."""
    from benchmarks.xnnpack_op_costs import HANDOFF_SIZES

    out = {}
    for s in HANDOFF_SIZES:
        fit = {t: _over_n(wall, "handoff", s, t) for t in (1, 2)}
        if None not in fit.values():
            out[str(s)] = {"io_bytes": 8 * s, "intercept_1t_s": fit[1][0],
                           "intercept_2t_s": fit[2][0], "rise_s": fit[2][0] - fit[1][0],
                           "per_op_1t_s": fit[1][1], "per_op_2t_s": fit[2][1],
                           "op_speedup_2t": fit[1][1] / fit[2][1]}
    return out


def derive(result: dict) -> dict:
    wall, cpu = result["median_s"], result.get("median_cpu_s", result["median_s"])
    out = _chain(wall, cpu)
    handoff = _handoff(wall)
    if handoff:
        out["handoff"] = handoff
    if any(k.startswith("op/") for k in cpu) and out:
        out["efficiency"] = _efficiency(cpu, out["program_overhead_s"],
                                        out["dispatch_overhead_s"])
    out["portable"] = _portable(cpu)
    return out
