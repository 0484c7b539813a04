"""Fraction of this host's peak each ``codesign`` weight format's kernels reach, per MBConv layer.

For every format ``kernels/`` has a tested kernel for (fp32 dense; w8a8 and w4a8: int8
activations x int8 / int4 weights, requantised to int8; fp32-activation sparse GEMMs: 2:4,
BSR 4x4 at 75 %, CSR at 50 % and 75 %), the layers of an MBConv network at the space's eval
input (64x64, batch 1) are timed through the kernels' public functions, weights packed once
beforehand, output allocation and argument checks included (see ``call_overhead_us``):

    stem         3x3 stride-2 conv 3 -> 24 at 64x64        (im2col + GEMM)
    expand       1x1 conv 32 -> 192 at 16x16                (a plain GEMM in NHWC)
    dw k s @hw   depthwise 192 channels, k = 3 / 5 / 7, 16x16 stride 1, 16x16 stride 2, 8x8
    project      1x1 conv 192 -> 32 at 16x16
    expand5      1x1 conv 160 -> 960 at 2x2 (the last stage)
    head         1x1 conv 256 -> 1280 at 2x2
    linear       1280 -> 1280, M = 1

fp32 layers add a bias; int layers requantise to int8 with per-channel multipliers and bias;
sparse formats apply to the 1x1 convs and the linear (the MBConv space prunes those only) and
write fp32 without bias (the kernels have no epilogue). Timing:
:mod:`codesign.kernels.bench_harness` (one thread for numba and BLAS, compilation and warm-ups
excluded, every case of one layer shape interleaved round by round), ``--passes`` passes over the
layer set with ``--repeats`` samples per case each, pooled; best and median of the pooled samples.
Samples are on the calling thread's CPU clock by default (``--clock thread``): on a machine shared
with other processes, wall-clock samples include the time the thread waits for a core, and even the
best of 61 varied by 2-4x between runs.

Efficiency = achieved rate / single-thread peak of :mod:`codesign.kernels.host_probe`, measured in
the same run on the same clock (best of its samples, before the first pass and after each, the
highest kept): fp32 kernels (sparse included) against the fp32 FMA peak, int kernels against
the int8 ``vpmaddwd`` peak (2 ops per multiply-accumulate). Both peaks are those of 256-bit
vector code, the width of the kernels' IR micro-kernels; on an AVX-512 host the loops LLVM
vectorises itself (depthwise, im2col, requantisation) may use 512-bit registers. Work counts
every tap, padding included, as the search space's op list does (2 * M * K * N; depthwise
2 * OH * OW * C * k^2). Sparse kernels are reported against dense-equivalent work (comparable
with the dense kernels; what a format saves) and against their effective work (2 * kept
weights * M; how well the kernel uses the core). ``aggregates`` are per format and layer
class, and per MBConv block (expand 32 -> 192, depthwise k at 16x16 stride 1, project
192 -> 32): total work / total best time / peak.

    .venv/bin/python -m benchmarks.codesign_format_efficiency --json OUT.json
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.report import publish
from codesign.kernels.bench_harness import Case, host_info, measure_interleaved, numba_settings
from codesign.kernels.conv import conv2d, depthwise_conv2d
from codesign.kernels.conv_int8 import (conv2d_int8, depthwise_conv2d_int8, pack_conv_weights,
                                        pack_depthwise_weights_int4)
from codesign.kernels.gemm_f32 import gemm_f32
from codesign.kernels.gemm_int8 import linear_i8, pack_weights_int4, pack_weights_int8
from codesign.kernels.host_probe import cached_profile, peak_fp32_gflops, peak_int8_gops
from codesign.kernels.sparse import spmm_bsr, spmm_csr, spmm_nm
from codesign.kernels.sparse_formats import (compress_nm, prune_blocks, prune_unstructured, to_bsr,
                                             to_csr)

DENSE_FORMATS = ("fp32", "w8a8", "w4a8")
SPARSE_FORMATS = ("fp32_2:4", "fp32_bsr4x4_75", "fp32_csr50", "fp32_csr75")
INT_BITS = {"w8a8": 8, "w4a8": 4}


@dataclass(frozen=True)
class Layer:
    """One layer of the shape set: NHWC input (h x w x cin), k x k kernel, stride."""

    name: str
    kind: str  # "conv2d", "conv1x1", "depthwise" or "linear"
    h: int
    w: int
    cin: int
    cout: int
    k: int = 1
    stride: int = 1

    @property
    def out_hw(self) -> tuple[int, int]:
        return -(-self.h // self.stride), -(-self.w // self.stride)  # 'same' padding

    @property
    def work(self) -> float:
        oh, ow = self.out_hw
        if self.kind == "depthwise":
            return 2.0 * oh * ow * self.cin * self.k * self.k
        return 2.0 * oh * ow * self.k * self.k * self.cin * self.cout

    @property
    def gemm_shape(self) -> tuple[int, int, int]:
        oh, ow = self.out_hw
        return oh * ow, self.k * self.k * self.cin, self.cout


LAYERS = (
    Layer("stem", "conv2d", 64, 64, 3, 24, 3, 2),
    Layer("expand", "conv1x1", 16, 16, 32, 192),
    *(Layer(f"dw{k}_s{s}_{hw}", "depthwise", hw, hw, 192, 192, k, s)
      for hw, s in ((16, 1), (16, 2), (8, 1)) for k in (3, 5, 7)),
    Layer("project", "conv1x1", 16, 16, 192, 32),
    Layer("expand5", "conv1x1", 2, 2, 160, 960),
    Layer("head", "conv1x1", 2, 2, 256, 1280),
    Layer("linear", "linear", 1, 1, 1280, 1280),
)


def _ints(rng, shape, bits):
    lo, hi = (-8, 8) if bits == 4 else (-128, 128)
    return rng.integers(lo, hi, shape).astype(np.int8)


def _epilogue(rng, c):
    return (rng.uniform(1e-4, 1e-3, c).astype(np.float32),
            rng.integers(-1000, 1000, c).astype(np.int32))


def layer_cases(layer: Layer, rng: np.random.Generator) -> list[tuple[Case, str, float]]:
    """(case, peak kind "fp32"/"int8", effective work) for every format that runs ``layer``."""
    out = []
    oh, ow = layer.out_hw
    m, k, n = layer.gemm_shape
    xf = rng.standard_normal((1, layer.h, layer.w, layer.cin), dtype=np.float32)
    xq = _ints(rng, (1, layer.h, layer.w, layer.cin), 8)
    params = {"layer": layer.name, "kind": layer.kind, "in": f"{layer.h}x{layer.w}x{layer.cin}",
              "out": f"{oh}x{ow}x{layer.cout}", "k": layer.k, "stride": layer.stride}

    def add(fmt, fn, peak, kept=1.0):
        case = Case(f"{fmt}:{layer.name}", fn, layer.work, "FLOP" if peak == "fp32" else "OP",
                    dict(params, format=fmt, kept_fraction=round(kept, 4)))
        out.append((case, peak, layer.work * kept))

    if layer.kind == "depthwise":
        c, kk, s = layer.cin, layer.k, layer.stride
        wf = rng.standard_normal((kk, kk, c), dtype=np.float32)
        bf = rng.standard_normal(c, dtype=np.float32)
        add("fp32", lambda: depthwise_conv2d(xf, wf, bf, stride=s), "fp32")
        mult, bias = _epilogue(rng, c)
        w8 = _ints(rng, (kk, kk, c), 8)
        add("w8a8", lambda: depthwise_conv2d_int8(xq, w8, mult, bias, stride=s), "int8")
        # the stored w4 form (nibble-packed), unpacked per call inside the kernel's wrapper
        w4 = pack_depthwise_weights_int4(_ints(rng, (kk, kk, c), 4))
        add("w4a8", lambda: depthwise_conv2d_int8(xq, w4, mult, bias, stride=s), "int8")
        return out

    wf = rng.standard_normal((k, n), dtype=np.float32)
    bf = rng.standard_normal(n, dtype=np.float32)
    mult, bias = _epilogue(rng, n)
    if layer.kind == "linear":
        xl, xlq = xf.reshape(1, k), xq.reshape(1, k)
        add("fp32", lambda: gemm_f32(xl, wf), "fp32")
        for fmt, bits in INT_BITS.items():
            pw = (pack_weights_int8 if bits == 8 else pack_weights_int4)(_ints(rng, (k, n), bits))
            add(fmt, lambda pw=pw: linear_i8(xlq, pw, mult, bias), "int8")
    else:
        w4d = wf.reshape(layer.k, layer.k, layer.cin, n)
        st, pad = layer.stride, "same"
        add("fp32", lambda: conv2d(xf, w4d, bf, stride=st, padding=pad), "fp32")
        for fmt, bits in INT_BITS.items():
            pw = pack_conv_weights(_ints(rng, (layer.k, layer.k, layer.cin, n), bits), bits)
            add(fmt, lambda pw=pw: conv2d_int8(xq, pw, mult, bias, stride=st, padding=pad),
                "int8")
    if layer.kind in ("conv1x1", "linear"):
        x2 = xf.reshape(m, k)
        nm = compress_nm(wf, 2, 4)
        add("fp32_2:4", lambda: spmm_nm(x2, nm), "fp32", 0.5)
        bsr = to_bsr(prune_blocks(wf, 4, 4, 0.75), 4, 4)
        add("fp32_bsr4x4_75", lambda: spmm_bsr(x2, bsr), "fp32", bsr.density)
        for pct in (50, 75):
            csr = to_csr(prune_unstructured(wf, pct / 100))
            add(f"fp32_csr{pct}", lambda csr=csr: spmm_csr(x2, csr), "fp32", csr.density)
    return out


def call_overhead_cases(rng: np.random.Generator) -> list[Case]:
    """Each public entry point on a one-pixel, 8-channel layer: what a call costs beyond the
    arithmetic (argument checks, allocation, dispatch), to read the small layers' figures by."""
    x = rng.standard_normal((1, 1, 1, 8), dtype=np.float32)
    xq = _ints(rng, (1, 1, 1, 8), 8)
    w = rng.standard_normal((8, 8), dtype=np.float32)
    mult, bias = _epilogue(rng, 8)
    pc = pack_conv_weights(_ints(rng, (1, 1, 8, 8), 8))
    pw = pack_weights_int8(_ints(rng, (8, 8), 8))
    wd, wdq = rng.standard_normal((3, 3, 8), dtype=np.float32), _ints(rng, (3, 3, 8), 8)
    nm, csr = compress_nm(w), to_csr(prune_unstructured(w, 0.5))
    calls = {"conv2d_1x1": lambda: conv2d(x, w.reshape(1, 1, 8, 8)),
             "gemm_f32": lambda: gemm_f32(x.reshape(1, 8), w),
             "conv2d_int8_1x1": lambda: conv2d_int8(xq, pc, mult, bias),
             "linear_i8": lambda: linear_i8(xq.reshape(1, 8), pw, mult, bias),
             "depthwise_conv2d": lambda: depthwise_conv2d(x, wd),
             "depthwise_conv2d_int8": lambda: depthwise_conv2d_int8(xq, wdq, mult, bias),
             "spmm_nm": lambda: spmm_nm(x.reshape(1, 8), nm),
             "spmm_csr": lambda: spmm_csr(x.reshape(1, 8), csr)}
    return [Case(name, fn, 1.0) for name, fn in calls.items()]


def measure_peaks(repeats: int, clock) -> dict:
    return {"fp32_gflops": peak_fp32_gflops(1, repeats=repeats, clock=clock),
            "int8_gops": peak_int8_gops(1, repeats=repeats, clock=clock)}


CLOCKS = {"thread": time.thread_time, "wall": time.perf_counter}


def run(repeats: int = 21, min_sample_s: float = 0.002, seed: int = 0, clock: str = "thread",
        passes: int = 5) -> dict:
    """Measure every (layer, format) case and the peaks; returns the JSON document.

    The whole layer set is measured ``passes`` times, ``repeats`` samples per case each, and
    each case's samples are pooled: the best sample of a pass fluctuated by ~20 % between
    passes a minute apart on the shared host (other tenants), so its samples are spread over
    minutes rather than one second. The peaks are measured before the first and after every
    pass; the highest is kept (a ceiling, as :mod:`codesign.kernels.host_probe` reports it).
    """
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    rng = np.random.default_rng(seed)
    groups = [(layer, layer_cases(layer, rng)) for layer in LAYERS]
    overhead_cases = call_overhead_cases(rng)
    peak_runs = [measure_peaks(repeats, CLOCKS[clock])]
    times: dict[str, list[float]] = {}
    loops: dict[str, int] = {}
    overhead: dict[str, float] = {}
    for _ in range(passes):
        for layer, entries in groups:
            recs = measure_interleaved([c for c, _, _ in entries], threads=1, warmups=2,
                                       repeats=repeats, min_sample_s=min_sample_s,
                                       clock=CLOCKS[clock])
            for rec in recs:
                times.setdefault(rec.name, []).extend(rec.times_s)
                loops[rec.name] = rec.loops
        for rec in measure_interleaved(overhead_cases, threads=1, warmups=2, repeats=repeats,
                                       min_sample_s=min_sample_s, clock=CLOCKS[clock]):
            overhead[rec.name] = min(overhead.get(rec.name, np.inf), rec.min_s)
        peak_runs.append(measure_peaks(repeats, CLOCKS[clock]))
    peaks = {key: max(p[key] for p in peak_runs) for key in peak_runs[0]}
    peak_rate = {"fp32": peaks["fp32_gflops"] * 1e9, "int8": peaks["int8_gops"] * 1e9}
    rows = []
    for layer, entries in groups:
        for case, peak_kind, eff_work in entries:
            t = np.asarray(times[case.name])
            p, pk = case.params, peak_rate[peak_kind]
            best, med = float(t.min()), float(np.median(t))
            rows.append({"format": p["format"], "layer": layer.name, "kind": layer.kind,
                         "in": p["in"], "out": p["out"], "k": layer.k, "stride": layer.stride,
                         "peak": peak_kind, "work": case.work, "effective_work": eff_work,
                         "kept_fraction": p["kept_fraction"], "best_s": best, "median_s": med,
                         "q1_s": float(np.percentile(t, 25)),
                         "q3_s": float(np.percentile(t, 75)), "samples": int(t.size),
                         "loops": loops[case.name], "rate_best_g": case.work / best / 1e9,
                         "efficiency_best": case.work / best / pk,
                         "efficiency_median": case.work / med / pk,
                         "efficiency_effective_best": eff_work / best / pk})
    stored = cached_profile()
    return {
        "description": __doc__.split("\n\n")[0],
        "peaks_used": peaks, "peaks_per_pass": peak_runs,
        "peaks_stored_profile": None if stored is None else {
            "fp32_gflops": stored.peak_fp32_gflops_1t, "int8_gops": stored.peak_int8_gops_1t},
        "rows": rows, "aggregates": aggregates(rows, peak_rate),
        "call_overhead_us": {name: t * 1e6 for name, t in overhead.items()},
        "host": host_info().to_dict(), "numba": numba_settings(),
        "settings": {"threads": 1, "passes": passes, "repeats_per_pass": repeats,
                     "min_sample_s": min_sample_s,
                     "clock": clock, "seed": seed, "loadavg_1m_start": load_start,
                     "loadavg_1m_end": os.getloadavg()[0],
                     "elapsed_s": time.perf_counter() - t0},
    }


def _aggregate(rows: list[dict], peak_rate: dict) -> dict:
    work = sum(r["work"] for r in rows)
    eff_work = sum(r["effective_work"] for r in rows)
    best = sum(r["best_s"] for r in rows)
    pk = peak_rate[rows[0]["peak"]]
    return {"layers": [r["layer"] for r in rows], "best_s": best,
            "efficiency_best": work / best / pk,
            "efficiency_median": work / sum(r["median_s"] for r in rows) / pk,
            "efficiency_effective_best": eff_work / best / pk}


def aggregates(rows: list[dict], peak_rate: dict) -> list[dict]:
    """Per format: each layer class, and each MBConv block (expand, dw k 16x16 s1, project)."""
    out = []
    for fmt in DENSE_FORMATS + SPARSE_FORMATS:
        mine = [r for r in rows if r["format"] == fmt]
        for kind in ("conv2d", "conv1x1", "depthwise", "linear"):
            sel = [r for r in mine if r["kind"] == kind]
            if sel:
                out.append(dict(_aggregate(sel, peak_rate), format=fmt, group=kind))
        if fmt in DENSE_FORMATS:
            for k in (3, 5, 7):
                names = ("expand", f"dw{k}_s1_16", "project")
                sel = [r for r in mine if r["layer"] in names]
                out.append(dict(_aggregate(sel, peak_rate), format=fmt,
                                group=f"mbconv_block_k{k}"))
    return out


def table(doc: dict) -> str:
    """The rows and aggregates as fixed-width text."""
    pk = doc["peaks_used"]
    lines = [f"host peak, 1 thread: fp32 {pk['fp32_gflops']:.1f} GFLOP/s, "
             f"int8 {pk['int8_gops']:.1f} GOP/s (codesign.kernels.host_probe, best sample)",
             f"{'format':<15} {'layer':<11} {'in':>10} {'out':>10} {'best us':>9} "
             f"{'med us':>9} {'G/s':>7} {'eff':>6} {'eff med':>7} {'eff eff.':>8}"]
    for r in doc["rows"]:
        eff_e = (f"{r['efficiency_effective_best']:8.3f}" if r["kept_fraction"] < 1
                 else f"{'':>8}")
        lines.append(f"{r['format']:<15} {r['layer']:<11} {r['in']:>10} {r['out']:>10} "
                     f"{r['best_s'] * 1e6:9.1f} {r['median_s'] * 1e6:9.1f} "
                     f"{r['rate_best_g']:7.1f} {r['efficiency_best']:6.3f} "
                     f"{r['efficiency_median']:7.3f} {eff_e}")
    lines.append("")
    lines.append(f"{'format':<15} {'group':<16} {'best us':>9} {'eff':>6} {'eff med':>7} "
                 f"{'eff eff.':>8}")
    for a in doc["aggregates"]:
        lines.append(f"{a['format']:<15} {a['group']:<16} {a['best_s'] * 1e6:9.1f} "
                     f"{a['efficiency_best']:6.3f} {a['efficiency_median']:7.3f} "
                     f"{a['efficiency_effective_best']:8.3f}")
    lines.append("")
    lines.append("call overhead (1-pixel, 8-channel call, best, us): " + ", ".join(
        f"{k} {v:.1f}" for k, v in doc["call_overhead_us"].items()))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the full results here")
    ap.add_argument("--repeats", type=int, default=21, help="samples per case and pass")
    ap.add_argument("--passes", type=int, default=5,
                    help="measure the layer set this many times, pooling the samples")
    ap.add_argument("--min-sample-s", type=float, default=0.002,
                    help="calibrate calls per sample to at least this long (short samples: "
                         "more chances for an undisturbed one)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="thread",
                    help="sample clock of the layer cases: this thread's CPU time (default; "
                         "leaves out time spent waiting for a core on a shared machine) or "
                         "wall time")
    args = ap.parse_args(argv)
    doc = run(args.repeats, args.min_sample_s, clock=args.clock, passes=args.passes)
    return publish(table(doc), doc, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
