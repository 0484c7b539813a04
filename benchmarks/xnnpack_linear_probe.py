"""How fast ExecuTorch's XNNPACK runs small-M linears by weight format, on this host.

The decode GEMV (M = 1) of a transformer, at the formats ``codesign export`` realises: 4-bit
block-wise weights with int8 dynamic activations (torchao ``Int8DynamicActivationIntxWeightConfig``
int4 ``PerGroup(g)``, XNNPACK's QD8 x QB4W kernels) for g = 32, 64, 128; 8-bit per-channel weights
(QD8 x QC8W); fp32. Each program is a stack of ``DEPTH`` linears alternating K -> N and N -> K
(one delegate call, so the runtime's per-call cost is spread over many kernels), 1 thread, all
programs of a shape timed interleaved in one process (``--rounds`` rounds, each a fresh load in a
rotated order), the executing thread's CPU clock. Printed per shape and M: ms per linear, the
weight bytes it streams, and the time ratio of each format over QC8W.

The median (over shapes, at M = 1) of the QB4W / QC8W time ratio sets the back-end's
``blockwise_weights.efficiency`` in ``configs/backends/xnnpack.yaml`` (the int8 linear
efficiency over that ratio, for group-wise sub-byte linears). For fp32 at M = 1 it also prints
the GEMV's efficiency as the analytic model composes it: FLOPs / ((time - the back-end's
dispatch term) x the host's fp32 peak); its median over LLC-resident shapes (``--shapes
256x256,256x768,512x512``) sets ``gemv.x86-64.efficiency.fp32``.

    .venv/bin/python -m benchmarks.xnnpack_linear_probe [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import warnings

import torch
from torch import nn

SHAPES = ((256, 768), (512, 1536), (1024, 1024))  # K, N
FORMATS = ("fp32", "w8", "w4g32", "w4g64", "w4g128")
DEPTH = 16


class Stack(nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(k, n, bias=False) if i % 2 == 0 else
                                    nn.Linear(n, k, bias=False) for i in range(DEPTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _program(fmt: str, k: int, n: int, m: int) -> bytes:
    from codesign.export.transformer import lower_decoder
    from codesign.measure.pte import quiet_imports

    torch.manual_seed(0)
    model = Stack(k, n).eval()
    if fmt != "fp32":
        with quiet_imports():
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
            from torchao.quantization.granularity import PerAxis, PerGroup
        gran = PerAxis(0) if fmt == "w8" else PerGroup(int(fmt[3:]))
        dtype = torch.int8 if fmt == "w8" else torch.int4
        with torch.no_grad():
            quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype,
                                                                   weight_granularity=gran))
    x = torch.randn(m, k)
    with torch.no_grad():
        exported = torch.export.export(model, (x,), strict=False)
    return lower_decoder(exported)


def _weight_bytes(fmt: str, k: int, n: int) -> float:
    elems = DEPTH * k * n
    if fmt == "fp32":
        return 4.0 * elems
    if fmt == "w8":
        return elems + DEPTH * 4 * (n + k) / 2
    g = int(fmt[3:])
    return elems / 2 + 2.0 * elems / g  # nibbles + one bf16/fp16-sized scale per group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--ms", default="1", help="rows M (1 = the decode GEMV)")
    parser.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES),
                        help="K x N of the stacked linears, comma-separated")
    parser.add_argument("--json")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in kn.split("x")) for kn in args.shapes.split(",")]
    warnings.filterwarnings("ignore")
    from benchmarks.interleaved import interleaved_runs
    from codesign.cost_models.backends import load_backend
    from codesign.cost_models.devices import load_device

    core = load_device("host").cpu.cores_for_threads(1)[0]
    peak = core.flops_per_cycle["fp32"].value * core.sustained_hz.value
    dispatch = load_backend("xnnpack").dispatch_overhead_s.value
    torch.set_num_threads(1)
    out = {"loadavg_1m_start": os.getloadavg()[0], "depth": DEPTH, "rows": []}
    ratios: dict[tuple[int, str], list[float]] = {}
    for m in (int(v) for v in args.ms.split(",")):
        for k, n in shapes:
            progs = {f: _program(f, k, n, m) for f in FORMATS}
            x = (torch.randn(m, k),)
            runs, _ = interleaved_runs(progs, lambda f: x, rounds=args.rounds, warmup=5,
                                       repeats=args.repeats)
            per = {f: [statistics.median(s) for s in v] for f, v in runs.items()}
            med = {f: statistics.median(v) / DEPTH for f, v in per.items()}
            row = {"m": m, "k": k, "n": n, "ms_per_linear": {f: round(v * 1e3, 5)
                                                             for f, v in med.items()},
                   "weight_gbs": {f: round(_weight_bytes(f, k, n) / DEPTH / v / 1e9, 1)
                                  for f, v in med.items()},
                   "ratio_over_w8": {f: round(statistics.median(
                       a / b for a, b in zip(per[f], per["w8"])), 2) for f in FORMATS}}
            if m == 1:
                row["fp32_gemv_efficiency"] = round(
                    2.0 * k * n / ((med["fp32"] - dispatch) * peak), 4)
            for f in FORMATS:
                ratios.setdefault((m, f), []).append(row["ratio_over_w8"][f])
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    out["median_ratio_over_w8"] = {f"m{m}:{f}": statistics.median(v)
                                   for (m, f), v in ratios.items()}
    out["loadavg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(out["median_ratio_over_w8"], indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
