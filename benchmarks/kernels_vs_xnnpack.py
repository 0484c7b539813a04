"""Our kernels against ExecuTorch's XNNPACK at the same layer shapes, on this host, one thread.

The ``codesign`` back-end prices the formats both back-ends run (fp32, w8a8) relative to
``xnnpack`` by this measurement, not by estimates. Each *stack* is a chain of ``DEPTH`` layers
of the MBConv space's shapes at its 64x64 eval input, alternating where the shape would not
chain (expand 32 -> 192 then project 192 -> 32 at 16x16), so the per-call costs of both sides
(ExecuTorch's program call and its input/output conversion; our Python calls) are spread over
the layers the way a whole network spreads them:

    pw16        1x1 conv 32 <-> 192 at 16x16 (the MBConv block's expand/project)
    pw2         1x1 conv 160 <-> 960 at 2x2 (the last stage's expand/project)
    head2       1x1 conv 256 <-> 1280 at 2x2 (the head)
    dw{k}_{hw}  depthwise 192 channels, k = 3 / 5 / 7, stride 1, at 16x16 and 8x8
    linear      1280 <-> 1280 at M = 1

and ``stem`` (3x3 stride-2 conv 3 -> 24 at 64x64) is one layer, so its row includes one call's
fixed costs on each side (ExecuTorch's quantize/dequantize of the 64x64x3 input and 32x32x24
output at int8; our im2col and Python call).

XNNPACK: ``lower_to_pte`` (fp32; int8 = PT2E static per-channel QS8, XNNPACKQuantizer), timed
by ``benchmarks.interleaved`` (fresh load per round, rotated order). Ours: the kernels' public
functions on NHWC arrays with weights packed once, the output of a layer feeding the next
(fp32: :func:`codesign.kernels.conv.conv2d` / :func:`depthwise_conv2d` / :func:`gemm_f32`; w8a8 and
w4a8: :func:`codesign.kernels.conv_int8.conv2d_int8` / :func:`depthwise_conv2d_int8` /
:func:`codesign.kernels.gemm_int8.linear_i8`, requantised to int8 between layers), timed by
:func:`codesign.kernels.bench_harness.measure_interleaved`. Both on the calling thread's CPU clock,
both medians of their samples. ``ratio`` = our time / XNNPACK's time at the same format (w4a8
against XNNPACK's w8a8, the nearest format it runs for convolutions): > 1 means ours is slower.

Each row also carries the analytic model's price ratio (codesign / xnnpack, host, 1 thread) for
the same ops, and each op class the ``scale`` = model ratio / measured ratio (at most 1) by
which ``configs/backends/codesign.yaml``'s efficiency of that class and dtype (int8 from w8a8)
was multiplied, so that a format both back-ends run is priced at the measured relative speed.
Re-run after changing the YAML: the model column then matches the measured one (scale ~1).

    .venv/bin/python -m benchmarks.kernels_vs_xnnpack [--json OUT.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from benchmarks.report import publish

DEPTH = 8
FORMATS = ("fp32", "w8a8", "w4a8")
XNN_FORMAT = {"fp32": "fp32", "w8a8": "int8", "w4a8": "int8"}


@dataclass(frozen=True)
class Stack:
    """``depth`` layers: kind "pw" (1x1 conv cin <-> cout), "dw" (depthwise cin channels, k x k),
    "linear" (cin <-> cout at M = 1) or "stem" (3x3 stride-2 conv cin -> cout, one layer)."""

    name: str
    kind: str
    hw: int
    cin: int
    cout: int = 0
    k: int = 1
    depth: int = DEPTH
    op_class: str = "conv2d"  # the back-end efficiency entry the stack informs

    def channels(self, i: int) -> tuple[int, int]:
        if self.kind == "dw":
            return self.cin, self.cin
        return (self.cin, self.cout) if i % 2 == 0 else (self.cout, self.cin)

    @property
    def work(self) -> float:
        """FLOPs (2 per multiply-accumulate) of the whole stack, padding taps included."""
        if self.kind == "dw":
            return self.depth * 2.0 * self.hw * self.hw * self.cin * self.k * self.k
        if self.kind == "stem":
            oh = -(-self.hw // 2)
            return 2.0 * oh * oh * 9 * self.cin * self.cout
        return self.depth * 2.0 * self.hw * self.hw * self.cin * self.cout


STACKS = (
    Stack("stem", "stem", 64, 3, 24, 3, depth=1),
    Stack("pw16", "pw", 16, 32, 192),
    Stack("pw2", "pw", 2, 160, 960),
    Stack("head2", "pw", 2, 256, 1280),
    *(Stack(f"dw{k}_{hw}", "dw", hw, 192, 192, k, op_class="depthwise_conv2d")
      for hw in (16, 8) for k in (3, 5, 7)),
    Stack("linear", "linear", 1, 1280, 1280, op_class="linear"),
)


class TorchStack(nn.Module):
    """The stack as PyTorch layers (NCHW), for ``lower_to_pte``."""

    def __init__(self, s: Stack) -> None:
        super().__init__()
        layers = []
        for i in range(s.depth):
            cin, cout = s.channels(i)
            if s.kind == "linear":
                layers.append(nn.Linear(cin, cout))
            elif s.kind == "dw":
                layers.append(nn.Conv2d(cin, cin, s.k, 1, s.k // 2, groups=cin))
            elif s.kind == "stem":
                layers.append(nn.Conv2d(cin, cout, 3, 2, 1))
            else:
                layers.append(nn.Conv2d(cin, cout, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @staticmethod
    def example(s: Stack) -> torch.Tensor:
        if s.kind == "linear":
            return torch.randn(1, s.cin)
        return torch.randn(1, s.cin, s.hw, s.hw)


def xnnpack_programs(s: Stack) -> dict[str, bytes]:
    """fp32 and int8 ``.pte`` programs of the stack (int8 calibrated on 8 random batches)."""
    from codesign.measure.pte import lower_to_pte

    torch.manual_seed(0)
    model = TorchStack(s).eval()
    x = TorchStack.example(s)
    calib = [(torch.randn_like(x),) for _ in range(8)]
    return {dtype: lower_to_pte(model, (x,), precision=dtype, calibration_inputs=calib)
            for dtype in ("fp32", "int8")}


def our_chain(s: Stack, fmt: str, rng: np.random.Generator):
    """A no-argument callable running the stack with our kernels in format ``fmt``."""
    from codesign.kernels.conv import conv2d, depthwise_conv2d
    from codesign.kernels.conv_int8 import (conv2d_int8, depthwise_conv2d_int8, pack_conv_weights,
                                            pack_depthwise_weights_int4)
    from codesign.kernels.gemm_f32 import gemm_f32
    from codesign.kernels.gemm_int8 import linear_i8, pack_weights_int4, pack_weights_int8

    bits = {"w8a8": 8, "w4a8": 4}.get(fmt)

    def ints(shape, b):
        lo, hi = (-8, 8) if b == 4 else (-128, 128)
        return rng.integers(lo, hi, shape).astype(np.int8)

    steps = []
    for i in range(s.depth):
        cin, cout = s.channels(i)
        mult = rng.uniform(1e-4, 1e-3, cout).astype(np.float32)
        bias_q = rng.integers(-1000, 1000, cout).astype(np.int32)
        bias_f = rng.standard_normal(cout, dtype=np.float32)
        if s.kind == "dw":
            if bits is None:
                w = rng.standard_normal((s.k, s.k, cin), dtype=np.float32)
                steps.append(lambda x, w=w, b=bias_f: depthwise_conv2d(x, w, b, stride=1))
            else:
                w = ints((s.k, s.k, cin), bits)
                w = pack_depthwise_weights_int4(w) if bits == 4 else w
                steps.append(lambda x, w=w, m=mult, b=bias_q:
                             depthwise_conv2d_int8(x, w, m, b, stride=1))
        elif s.kind == "linear":
            if bits is None:
                w = rng.standard_normal((cin, cout), dtype=np.float32)
                steps.append(lambda x, w=w, b=bias_f: gemm_f32(x, w) + b)
            else:
                pack = pack_weights_int8 if bits == 8 else pack_weights_int4
                w = pack(ints((cin, cout), bits))
                steps.append(lambda x, w=w, m=mult, b=bias_q: linear_i8(x, w, m, b))
        else:
            k, stride = (3, 2) if s.kind == "stem" else (1, 1)
            if bits is None:
                w = rng.standard_normal((k, k, cin, cout), dtype=np.float32)
                steps.append(lambda x, w=w, b=bias_f, st=stride:
                             conv2d(x, w, b, stride=st, padding="same"))
            else:
                w = pack_conv_weights(ints((k, k, cin, cout), bits), bits)
                steps.append(lambda x, w=w, m=mult, b=bias_q, st=stride:
                             conv2d_int8(x, w, m, b, stride=st, padding="same"))
    shape = (1, s.cin) if s.kind == "linear" else (1, s.hw, s.hw, s.cin)
    x0 = (rng.standard_normal(shape, dtype=np.float32) if bits is None else ints(shape, 8))

    def run():
        x = x0
        for step in steps:
            x = step(x)
        return x
    return run


def run(rounds: int = 5, repeats: int = 30) -> dict:
    """Measure every stack on both sides; returns the JSON document."""
    from benchmarks.interleaved import interleaved_runs
    from codesign.kernels.bench_harness import Case, host_info, measure_interleaved, numba_settings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    rows = []
    for s in STACKS:
        progs = xnnpack_programs(s)
        x = TorchStack.example(s)
        runs, _ = interleaved_runs(progs, lambda _name: (x,), rounds=rounds, warmup=5,
                                   repeats=repeats)
        xnn = {dtype: statistics.median(t for r in v for t in r) for dtype, v in runs.items()}
        cases = [Case(f"{s.name}:{fmt}", our_chain(s, fmt, rng), s.work) for fmt in FORMATS]
        ours = {}
        for rec in measure_interleaved(cases, threads=1, warmups=3, repeats=rounds * 6,
                                       min_sample_s=0.002, clock=time.thread_time):
            ours[rec.name.split(":")[1]] = float(np.median(rec.times_s))
        for fmt in FORMATS:
            t_x = xnn[XNN_FORMAT[fmt]]
            rows.append({"stack": s.name, "op_class": s.op_class, "kind": s.kind,
                         "depth": s.depth, "format": fmt, "xnnpack_format": XNN_FORMAT[fmt],
                         "work": s.work, "ours_s": ours[fmt], "xnnpack_s": t_x,
                         "ratio": ours[fmt] / t_x})
        print(" ".join(f"{r['stack']}:{r['format']} {r['ratio']:.2f}" for r in rows[-3:]),
              flush=True)
    add_model_ratios(rows)
    return {"description": __doc__.split("\n\n")[0], "rows": rows,
            "aggregates": aggregates(rows), "host": host_info().to_dict(),
            "numba": numba_settings(),
            "settings": {"threads": 1, "depth": DEPTH, "rounds": rounds, "repeats": repeats,
                         "clock": "thread", "loadavg_1m_start": load_start,
                         "loadavg_1m_end": os.getloadavg()[0],
                         "elapsed_s": time.perf_counter() - t0}}


def model_times(s: Stack, fmt: str, backend: str) -> float:
    """The analytic model's host price (1 thread) of the stack's conv/linear ops in ``fmt`` on
    ``backend`` (w4a8: int8 ops with 4-bit per-channel weights; boundary ops left out)."""
    from dataclasses import replace

    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.devices import load_device
    from codesign.cost_models.ir import GEMM_KINDS, OpBatch
    from codesign.cost_models.lowering import apply_precision, lower_module
    from codesign.kernels.specs import QuantSpec

    model = AnalyticCostModel(load_device("host"), backend, threads=1)
    shape = tuple(TorchStack.example(s).shape)
    ops = apply_precision(lower_module(TorchStack(s), shape), model.backend,
                          XNN_FORMAT[fmt])
    ops = [op for op in ops if op.kind in GEMM_KINDS]
    if fmt == "w4a8":
        ops = [replace(op, quant=QuantSpec(4, 8)) for op in ops]
    return float(model.predict(OpBatch.from_oplists([ops])).latency_s[0])


def add_model_ratios(rows: list[dict]) -> None:
    """Each row gains the analytic model's codesign / xnnpack price ratio at the same shapes
    (w4a8 priced as codesign w4a8 over xnnpack w8a8, as measured)."""
    stacks = {s.name: s for s in STACKS}
    for r in rows:
        s = stacks[r["stack"]]
        r["model_codesign_s"] = model_times(s, r["format"], "codesign")
        r["model_xnnpack_s"] = model_times(s, "fp32" if r["format"] == "fp32" else "w8a8",
                                           "xnnpack")
        r["model_ratio"] = r["model_codesign_s"] / r["model_xnnpack_s"]


def aggregates(rows: list[dict]) -> list[dict]:
    """Per op class and format: summed time ratio over its stacks (the stem apart: one call)."""
    out = []
    for op_class in ("conv2d", "depthwise_conv2d", "linear"):
        for fmt in FORMATS:
            sel = [r for r in rows if r["op_class"] == op_class and r["format"] == fmt
                   and r["kind"] != "stem"]
            if op_class == "depthwise_conv2d":
                # XNNPACK's dedicated depthwise micro-kernels (k <= 5): its 7x7 generic path
                # has its own term (depthwise_large_kernel in configs/backends/xnnpack.yaml)
                sel = [r for r in sel if not r["stack"].startswith("dw7")]
            ours, xnn = sum(r["ours_s"] for r in sel), sum(r["xnnpack_s"] for r in sel)
            agg = {"op_class": op_class, "format": fmt, "stacks": [r["stack"] for r in sel],
                   "ours_s": ours, "xnnpack_s": xnn, "ratio": ours / xnn,
                   "ratio_median": statistics.median(r["ratio"] for r in sel)}
            if "model_ratio" in sel[0]:
                agg["model_ratio"] = (sum(r["model_codesign_s"] for r in sel)
                                      / sum(r["model_xnnpack_s"] for r in sel))
                # what the codesign back-end's efficiency is multiplied by so that the model
                # prices codesign/xnnpack at the measured ratio; never above 1: our own
                # microbenchmark (benchmarks.codesign_format_efficiency) stays the ceiling
                agg["codesign_efficiency_scale"] = min(1.0, agg["model_ratio"] / agg["ratio"])
            out.append(agg)
    return out


def table(doc: dict) -> str:
    lines = [f"{'stack':<9} {'format':<6} {'ours us/layer':>14} {'xnnpack us/layer':>17} "
             f"{'ratio':>6} {'model':>6}"]
    for r in doc["rows"]:
        lines.append(f"{r['stack']:<9} {r['format']:<6} {r['ours_s'] / r['depth'] * 1e6:14.1f} "
                     f"{r['xnnpack_s'] / r['depth'] * 1e6:17.1f} {r['ratio']:6.2f} "
                     f"{r.get('model_ratio', float('nan')):6.2f}")
    lines.append("")
    lines.append(f"{'op class':<17} {'format':<6} {'ratio (sum)':>11} {'median':>7} "
                 f"{'model':>6} {'scale':>6}")
    for a in doc["aggregates"]:
        lines.append(f"{a['op_class']:<17} {a['format']:<6} {a['ratio']:11.2f} "
                     f"{a['ratio_median']:7.2f} {a.get('model_ratio', float('nan')):6.2f} "
                     f"{a.get('codesign_efficiency_scale', float('nan')):6.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the full results here")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    doc = run(args.rounds, args.repeats)
    return publish(table(doc), doc, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
