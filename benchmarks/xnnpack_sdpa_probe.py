"""What ExecuTorch's decode attention kernel (``llama::custom_sdpa``) costs vs context, on this host.

``codesign export`` runs a transformer's attention with ExecuTorch's custom ops (the LLM recipe's
``--use_sdpa_with_kv_cache``): ``llama::custom_sdpa`` is an ExecuTorch kernel next to the XNNPACK
delegate, reading the whole fp32 K/V cache (layout [1, context, kv_heads, head_dim]) for one
query token. This probe exports programs of ``CALLS`` such calls (one query token at position
context - 1, the priced worst case, heads / kv_heads / head_dim as the space's decoders) at
several contexts, times them on the runtime (1 thread, interleaved rounds, the executing thread's
CPU clock). Per point, the kernel's efficiency = its FLOPs (QK and PV: 4 x heads x head_dim x
context) / (time per call x the host's measured fp32 peak); the median over all points sets
``efficiency.attention`` in ``configs/backends/xnnpack.yaml``. A line time = fixed + slope x
context is fitted too: a positive intercept would be a per-call cost (scratch allocation: the
Python runtime gives the kernel no temp allocator) to price separately.

    .venv/bin/python -m benchmarks.xnnpack_sdpa_probe [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import warnings

import numpy as np
import torch
from torch import nn

CONTEXTS = (128, 256, 512, 1024, 2048)
SHAPES = ((4, 2, 64), (8, 2, 64), (16, 4, 64))  # heads, kv_heads, head_dim
CALLS = 8


class Sdpa(nn.Module):
    def __init__(self, heads: int, kv_heads: int, head_dim: int, context: int) -> None:
        super().__init__()
        self.pos = context - 1
        for i in range(CALLS):
            self.register_buffer(f"k{i}", torch.randn(1, context, kv_heads, head_dim))
            self.register_buffer(f"v{i}", torch.randn(1, context, kv_heads, head_dim))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        out = q
        for i in range(CALLS):
            out = torch.ops.llama.custom_sdpa(out, getattr(self, f"k{i}"), getattr(self, f"v{i}"),
                                              self.pos, None, 0, True)
        return out


def _program(heads, kv_heads, head_dim, context) -> bytes:
    from codesign.export.transformer import lower_decoder
    from codesign.measure.pte import quiet_imports

    with quiet_imports():
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers ops)
    torch.manual_seed(0)
    model = Sdpa(heads, kv_heads, head_dim, context).eval()
    q = torch.randn(1, 1, heads, head_dim)
    with torch.no_grad():
        exported = torch.export.export(model, (q,), strict=False)
    return lower_decoder(exported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from benchmarks.interleaved import interleaved_runs
    from codesign.cost_models.devices import load_device

    device = load_device("host")
    core = device.cpu.cores_for_threads(1)[0]
    peak = core.flops_per_cycle["fp32"].value * core.sustained_hz.value
    torch.set_num_threads(1)
    out = {"loadavg_1m_start": os.getloadavg()[0], "calls": CALLS, "peak_fp32": peak, "rows": []}
    effs, fixed = [], []
    for heads, kvh, hd in SHAPES:
        progs = {c: _program(heads, kvh, hd, c) for c in CONTEXTS}
        per, _ = interleaved_runs(progs, lambda c: (torch.randn(1, 1, heads, hd),),
                                  rounds=args.rounds, warmup=5, repeats=args.repeats)
        us = {c: statistics.median(statistics.median(s) / CALLS for s in v) * 1e6
              for c, v in per.items()}
        slope, icpt = np.polyfit(np.array(CONTEXTS, float), np.array([us[c] for c in CONTEXTS]), 1)
        flops_per_token = 4.0 * heads * hd
        eff = flops_per_token / (slope * 1e-6) / peak
        row = {"heads": heads, "kv_heads": kvh, "head_dim": hd,
               "us_per_call": {c: round(v, 2) for c, v in us.items()},
               "fixed_us": round(float(icpt), 2), "us_per_context_token": round(float(slope), 4),
               "slope_efficiency": round(float(eff), 4),
               "kv_read_gbs": round(2 * kvh * hd * 4 / (slope * 1e-6) / 1e9, 1)}
        points = {c: flops_per_token * c / (us[c] * 1e-6) / peak for c in CONTEXTS}
        row["efficiency_per_context"] = {c: round(float(e), 4) for c, e in points.items()}
        effs.extend(points.values())
        fixed.append(icpt)
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    out["median_efficiency"] = float(statistics.median(effs))
    out["median_fixed_us"] = float(statistics.median(fixed))
    out["loadavg_1m_end"] = os.getloadavg()[0]
    print(json.dumps({k: out[k] for k in ("median_efficiency", "median_fixed_us")}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
