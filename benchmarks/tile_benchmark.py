"""Tile tuner and calibrated tile term: how well they do on this host, measured.

Three checks, one thread throughout (the tuned kernels are the serial drivers):

1. **Tile model on held-out shapes.** For every shape of the default ``codesign`` MBConv
   space's max architecture (never used to calibrate: calibration uses the min architecture's
   other shapes), every candidate tile of the tuner is measured (the tuner's records) and
   priced by ``AnalyticCostModel(host, codesign, threads=1)`` with the calibrated tile terms
   (and, for reference, without them). Per shape: Spearman's rho across tiles, and the cost of
   the model's choice (measured time of the tile it ranks first / best measured time).
2. **tuned_vs_default_tile** (:func:`codesign.kernels.bench.tuned_vs_default_tile`): median over the
   max architecture's shapes of best-single-fixed-tile time / tuned-tile time, re-measured.
3. **nn-Meter-style host check.** Candidates of the default ``codesign`` MBConv space (seeded
   random architecture, sparsity and tile choices; precisions redrawn from those with a numba
   kernel: w32a32, w8a8, w4a8; int units dense, as the int kernels are), their free tiles
   resolved by the search hook
   (:func:`codesign.cost_models.tile_resolution.apply_tuned_tiles`). Every layer with a kernel is timed alone
   (best sample): dense GEMMs (fp32 / int8 / int4-weight kernels; the stem as the GEMM of its
   im2col matrix), fp32 sparse GEMMs (2:4, BSR 4x4, CSR) and fp32 depthwise convs
   (``depthwise_conv2d``). Layers with no kernel are left out of both sums and reported as
   coverage: int8/int4 depthwise, element-wise adds, pooling and the
   quantize/dequantize ops at precision boundaries. An int layer whose chosen tile the int
   kernels lack (6x8, 3x16; x8 tiles for int4) runs, and is priced, with the back-end default
   tile. Per candidate, predicted vs measured sums: Spearman, MAPE.

    .venv/bin/python -m benchmarks.tile_benchmark            # writes benchmarks/results/tiles.*
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from codesign import calibrate_tiles
from codesign.cost_models import tile_calibration as tc
from codesign.cost_models import tile_resolution as tr
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import Op, OpBatch, OpKind
from codesign.kernels import tile_tuner as tt
from codesign.kernels.specs import FP32, QuantSpec, SparsityPattern, TileSpec

KERNEL_PRECISIONS = ("w32a32", "w8a8", "w4a8")
_QUANT = {"fp32": FP32, "int8": QuantSpec(8, 8), "int4": QuantSpec(4, 8)}
RESULTS = Path(__file__).resolve().parent / "results"


def _spearman(x, y) -> float:
    # scipy is imported late on purpose: see main()
    from scipy import stats

    return float(stats.spearmanr(x, y).statistic)


def gemm_op(shape, tile: TileSpec, kernel: str) -> Op:
    """A linear op of op shape (m, n, k) running ``tile`` on ``kernel``'s precision."""
    m, n, k = shape
    return Op(f"gemm{m}x{n}x{k}", OpKind.LINEAR, (m, n), ((m, k),), m=m, n=n, k=k,
              flops=2.0 * m * n * k, weight_elems=k * n, out_channels=n, quant=_QUANT[kernel],
              tile=tile)


# ------------------------------------------------------------------------------ 1. tile model
def tile_model_check(kernels=("fp32", "int8", "int4")) -> dict:
    device = load_device("host")
    calibrated = AnalyticCostModel(device, "codesign", threads=1)
    if calibrated.tile_terms is None:
        raise SystemExit("no calibrated tile terms for this host: run "
                         "'python -m codesign.calibrate_tiles' first")
    plain = AnalyticCostModel(device, "codesign", threads=1, tile_terms=None)
    out = {}
    for kernel in kernels:
        rows = {"calibrated": [], "uncalibrated": []}
        for shape in calibrate_tiles.heldout_shapes()[kernel]:
            res = tt.tune(shape, kernel)
            tiles = [tt.parse_tile(dict(r.params)["tile"]) for r in res.records]
            y = np.array([r.min_s for r in res.records])
            batch = OpBatch.from_oplists([[gemm_op(shape, t, kernel)] for t in tiles])
            for name, model in (("calibrated", calibrated), ("uncalibrated", plain)):
                pred = model.predict(batch).latency_s
                rho = _spearman(y, pred) if np.ptp(pred) > 0 else float("nan")
                rows[name].append({
                    "shape": list(shape), "tiles": len(tiles), "spearman": float(rho),
                    "choice": tiles[int(np.argmin(pred))].label,
                    "choice_cost": float(y[int(np.argmin(pred))] / y.min()),
                    "best": tiles[int(np.argmin(y))].label,
                    "mape": float(np.mean(np.abs(pred / y - 1)))})
        out[kernel] = {name: tc.summarize_ranks(r) for name, r in rows.items()}
    out["terms"] = calibrated.tile_terms.describe()
    out["fits"] = {k: {f: v for f, v in kt.fit.items() if f != "train_shapes"}
                   for k, kt in calibrated.tile_terms.kernels.items()}
    return out


# ------------------------------------------------------------------------------ 3. host check
def sample_candidates(space, n: int, seed: int) -> list:
    """``n`` default-space candidates, precisions redrawn from :data:`KERNEL_PRECISIONS` and
    int-precision units made dense (the int kernels are dense-only; sparse int layers would
    have no kernel to time)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        params = space.sample(rng)
        for name in list(params):
            if name.endswith(".prec"):
                prec = KERNEL_PRECISIONS[int(rng.integers(len(KERNEL_PRECISIONS)))]
                params[name] = prec
                unit = name[:-len(".prec")]
                if prec != "w32a32" and f"{unit}.sparsity" in params:
                    params[f"{unit}.sparsity"] = "dense"
        out.append(space.decode(params))
    return out


def _exact_kernel(op: Op) -> str | None:
    q = op.quant
    if (q.weight_bits, q.act_bits) == (32, 32):
        return "fp32"
    if (q.weight_bits, q.act_bits) == (8, 8):
        return "int8"
    if (q.weight_bits, q.act_bits) == (4, 8):
        return "int4"
    return None


def runnable(op: Op, default: TileSpec) -> Op:
    """``op`` with a tile its kernel has (int kernels lack some micro-tiles: default then)."""
    kernel = _exact_kernel(op)
    if op.tile is None or kernel in (None, "fp32"):
        return op
    if (op.tile.mr, op.tile.nr) in tt.micro_tiles(kernel) and op.tile.kc % 2 == 0:
        return op
    return dataclasses.replace(op, tile=default)


def layer_case(op: Op):
    """(key, Case) timing ``op``'s kernel, or None if it has none (see the module docstring)."""
    from codesign.kernels.bench import gemm_case
    from codesign.kernels.bench_harness import Case
    from codesign.kernels.conv import depthwise_conv2d

    kernel = _exact_kernel(op)
    if kernel is None:
        return None
    if op.kind is OpKind.DEPTHWISE_CONV2D:
        if kernel != "fp32":
            return None
        _, c, h, w = op.in_shapes[0]
        ho = op.out_shape[2]
        ksize = int(round(math.sqrt(op.k)))
        stride = int(round(h / ho))
        key = ("dw", c, h, w, ksize, stride)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, h, w, c), dtype=np.float32)
        wt = rng.standard_normal((ksize, ksize, c), dtype=np.float32)
        return key, Case("depthwise", lambda: depthwise_conv2d(x, wt, None, stride, "same"),
                         op.flops, "FLOP", {"key": str(key)})
    if op.kind not in (OpKind.CONV2D, OpKind.LINEAR) or op.groups != 1:
        return None
    shape = (op.m, op.n, op.k)
    if op.sparsity.pattern is not SparsityPattern.DENSE:
        if kernel != "fp32":
            return None
        key = ("spmm", shape, op.sparsity.label)
        return key, gemm_case((op.m, op.k, op.n), sparsity=op.sparsity)
    key = ("gemm", shape, kernel, op.tile.label)
    return key, tt.tile_cases(shape, [op.tile], kernel)[0]


def host_check(n_candidates: int, seed: int, log=print) -> dict:
    from codesign.kernels.bench_harness import measure_interleaved
    from codesign.search_spaces.mbconv import MBConvSpace

    device = load_device("host")
    backend = load_backend("codesign")
    default = backend.default_tile(device.cpu.isa)
    space = MBConvSpace(backend)
    models = {"calibrated": AnalyticCostModel(device, backend, threads=1),
              "uncalibrated": AnalyticCostModel(device, backend, threads=1, tile_terms=None)}
    measured: dict = {}
    per_cand, per_layer = [], []
    t0 = time.perf_counter()
    for i, cand in enumerate(sample_candidates(space, n_candidates, seed)):
        ops = [runnable(op, default)
               for op in tr.apply_tuned_tiles(space.to_ops(cand), device, backend)]
        batch = OpBatch.from_oplists([ops])
        preds = {name: m.predict(batch).op_latency_s for name, m in models.items()}
        meas, covered = np.full(len(ops), np.nan), np.zeros(len(ops), bool)
        for j, op in enumerate(ops):
            lc = layer_case(op)
            if lc is None:
                continue
            key, case = lc
            if key not in measured:
                rec = measure_interleaved([case], threads=1, warmups=1, repeats=15,
                                          min_sample_s=0.0005)[0]
                measured[key] = rec.min_s
            meas[j], covered[j] = measured[key], True
            per_layer.append({"kind": key[0] if key[0] != "gemm" else f"gemm_{key[2]}",
                              "measured_s": measured[key],
                              **{f"{n}_s": float(p[j]) for n, p in preds.items()}})
        row = {"candidate": cand.key(), "layers": len(ops), "measured_layers": int(covered.sum()),
               "measured_s": float(meas[covered].sum()),
               "coverage_of_predicted": float(preds["calibrated"][covered].sum()
                                              / preds["calibrated"].sum())}
        row.update({f"{n}_s": float(p[covered].sum()) for n, p in preds.items()})
        per_cand.append(row)
        log(f"candidate {i}: {row['measured_layers']}/{row['layers']} layers, measured "
            f"{row['measured_s'] * 1e3:.2f} ms, predicted {row['calibrated_s'] * 1e3:.2f} ms "
            f"({time.perf_counter() - t0:.0f} s)")
    m = np.array([r["measured_s"] for r in per_cand])
    summary = {}
    for name in models:
        p = np.array([r[f"{name}_s"] for r in per_cand])
        summary[name] = {"spearman": _spearman(m, p),
                         "mape": float(np.mean(np.abs(p / m - 1))),
                         "median_pred_over_measured": float(np.median(p / m))}
    by_kind = {}
    for kind in sorted({r["kind"] for r in per_layer}):
        rows = [r for r in per_layer if r["kind"] == kind]
        mm = np.array([r["measured_s"] for r in rows])
        by_kind[kind] = {"layers": len(rows), "measured_share": float(mm.sum() / m.sum()),
                         **{f"{n}_mape": float(np.mean(np.abs(
                             np.array([r[f"{n}_s"] for r in rows]) / mm - 1))) for n in models}}
    return {"candidates": len(per_cand), "seed": seed, "unique_layers_measured": len(measured),
            "median_coverage": float(np.median([r["coverage_of_predicted"] for r in per_cand])),
            "summary": summary, "by_layer_kind": by_kind, "per_candidate": per_cand}


# ------------------------------------------------------------------------------ report
def _markdown(res: dict, commands: list[str]) -> str:
    lines = ["# Tile tuner and calibrated tile term on this host", "",
             f"Host: {res['host']['cpu_model']} ({res['host']['logical_cpus']} CPUs, shared "
             f"with other jobs), fingerprint `{res['terms']['fingerprint']}`; one thread.", "",
             "Commands:", "", "```"] + commands + ["```", ""]
    lines += ["## 1. Tile model on held-out shapes (max architecture; calibrated on the min "
              "architecture's other shapes)", "",
              "| kernel | model | shapes | min rho | median rho | share rho >= 0.9 | "
              "median choice cost | max choice cost |", "|---|---|---|---|---|---|---|---|"]
    for kernel in ("fp32", "int8", "int4"):
        for name in ("calibrated", "uncalibrated"):
            s = res["tile_model"][kernel][name]
            lines.append(f"| {kernel} | {name} | {len(s['shapes'])} | {s['min_spearman']:.3f} | "
                         f"{s['median_spearman']:.3f} | {s['share_spearman_ge_0.9']:.2f} | "
                         f"{s['median_choice_cost']:.3f} | {s['max_choice_cost']:.3f} |")
    lines += ["", "Shapes below rho 0.9 (calibrated):", ""]
    for kernel in ("fp32", "int8", "int4"):
        for r in res["tile_model"][kernel]["calibrated"]["shapes"]:
            if not r["spearman"] >= 0.9:
                lines.append(f"- {kernel} (m, n, k) = {tuple(r['shape'])}: rho {r['spearman']:.3f}"
                             f" over {r['tiles']} tiles, choice {r['choice']} costs "
                             f"{r['choice_cost']:.3f}x the best ({r['best']})")
    fits = res["tile_model"]["fits"]
    lines += ["", "Calibration fits (training shapes): " + "; ".join(
        f"{k}: {v['points']} points / {v['shapes']} shapes, {v['coefficients']} coefficients, "
        f"rms rel err {v['rms_rel_err']:.3f}" for k, v in fits.items()), ""]
    if "tuned_vs_default_tile" in res:
        d = res["tuned_vs_default_tile_detail"]
        lines += ["## 2. tuned_vs_default_tile", "",
                  f"**{res['tuned_vs_default_tile']:.3f}** = median over {len(d['per_shape'])} "
                  f"shapes of (best single fixed tile `{d['fixed_tile']}`) / (tuned tile), "
                  f"fresh interleaved run (tuning {d['tuning']}). Against the back-end default "
                  f"`{d['backend_default_tile']}`: {d['tuned_vs_backend_default']:.3f}.", "",
                  "| (m, n, k) | tuned tile | fixed / tuned | default / tuned |",
                  "|---|---|---|---|"]
        for r in d["per_shape"]:
            lines.append(f"| {tuple(r['shape'])} | {r['tuned_tile']} | "
                         f"{r['fixed_over_tuned']:.3f} | {r['default_over_tuned']:.3f} |")
        big = [r for r in d["per_shape"] if r["fixed_over_tuned"] > 1.1]
        lines += ["", f"On the tuning measurements the fixed tile is within "
                  f"{d['fixed_tile_geomean_over_best']:.3f}x of each shape's best (geometric "
                  f"mean); {len(big)} of {len(d['per_shape'])} shapes gain more than 10 % from "
                  "tuning: " + (", ".join(str(tuple(r["shape"])) for r in big) or "none") + ".",
                  ""]
    if "host_check" in res:
        h = res["host_check"]
        lines += ["## 3. nn-Meter-style check: predicted vs sum of measured layer kernels", "",
                  f"{h['candidates']} candidates (seed {h['seed']}), {h['unique_layers_measured']}"
                  f" distinct layers timed; median coverage {h['median_coverage']:.2f} of the "
                  "predicted latency (the rest has no kernel; see the module docstring). The "
                  "calibrated model differs from the uncalibrated one in the dense GEMM terms "
                  "only: depthwise (dw) and sparse (spmm) layers keep the back-end's estimated "
                  "efficiencies.", "",
                  "| model | Spearman | MAPE | median predicted / measured |", "|---|---|---|---|"]
        for name, s in h["summary"].items():
            lines.append(f"| {name} | {s['spearman']:.3f} | {s['mape']:.3f} | "
                         f"{s['median_pred_over_measured']:.3f} |")
        lines += ["", "| layer kind | layers | share of measured time | calibrated MAPE | "
                  "uncalibrated MAPE |", "|---|---|---|---|---|"]
        for kind, s in h["by_layer_kind"].items():
            lines.append(f"| {kind} | {s['layers']} | {s['measured_share']:.2f} | "
                         f"{s['calibrated_mape']:.3f} | {s['uncalibrated_mape']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-bench", action="store_true", help="skip tuned_vs_default_tile")
    ap.add_argument("--skip-host-check", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from codesign.kernels.bench_harness import host_info

    # host_info() lists the first BLAS threadpoolctl finds, which becomes scipy's once
    # scipy.linalg is loaded; computed now, before scipy, it matches the fingerprint under
    # which `codesign bench kernels` stored the measured host profile the device spec reads
    host_info()
    t0 = time.perf_counter()
    res: dict = {"tile_model": tile_model_check()}
    res["terms"] = res["tile_model"].pop("terms")
    res["host"] = tt.kernel_host().to_dict()
    if not args.skip_bench:
        from codesign.kernels.bench import tuned_vs_default_tile

        res.update(tuned_vs_default_tile(calibrate_tiles.space_gemm_shapes("max"), quick=False))
    if not args.skip_host_check:
        res["host_check"] = host_check(args.candidates, args.seed,
                                       log=lambda s: print(s, file=sys.stderr))
    res["elapsed_s"] = time.perf_counter() - t0
    commands = [".venv/bin/python -m codesign.calibrate_tiles"
                "   # writes configs/tile_terms/",
                " ".join([".venv/bin/python -m benchmarks.tile_benchmark",
                          *(argv if argv is not None else sys.argv[1:])])]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "tiles.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (args.out_dir / "tiles.md").write_text(_markdown(res, commands))
    print(_markdown(res, commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
