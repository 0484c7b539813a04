"""What one operator costs beyond its arithmetic in ExecuTorch's XNNPACK programs, on this host.

Three program families of tiny ops (a 1 x 64 fp32 tensor, so the arithmetic is negligible),
lowered with the XNNPACK partitioner and timed on the runtime (1 thread, interleaved rounds, the
executing thread's CPU clock), N = 8, 16, 32, 64 ops each:

* ``xnn``: N adds in one delegate call - the slope is the cost of one XNNPACK operator;
* ``break``: N (add, mean, subtract) steps - the mean runs as an ExecuTorch kernel outside the
  delegate (as RMSNorm's mean does in an exported decoder), so each step is one delegate call
  (subtract + next add) + one kernel call; slope minus 2 x ``xnn``'s is the cost of a graph
  break (delegate re-entry + one kernel call);
* ``portable``: N means alone (no delegate) - the cost of one ExecuTorch kernel call.

The slopes set ``dispatch_overhead_s`` (an XNNPACK operator) and ``graph_break_overhead_s``
in ``configs/backends/xnnpack.yaml``.

    .venv/bin/python -m benchmarks.xnnpack_dispatch_probe [--json OUT.json]
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

COUNTS = (8, 16, 32, 64)


class Chain(nn.Module):
    def __init__(self, kind: str, n: int) -> None:
        super().__init__()
        self.kind, self.n = kind, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            if self.kind in ("xnn", "break"):
                x = x + 1.0
            if self.kind == "break":
                x = x - x.mean(dim=-1, keepdim=True)
            elif self.kind == "portable":
                x = x.mean(dim=-1, keepdim=True)
        return x


def _program(kind: str, n: int) -> bytes:
    from codesign.export.transformer import lower_decoder

    x = torch.randn(1, 64)
    with torch.no_grad():
        exported = torch.export.export(Chain(kind, n).eval(), (x,), strict=False)
    return lower_decoder(exported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from benchmarks.interleaved import interleaved_runs

    torch.set_num_threads(1)
    progs = {(k, n): _program(k, n) for k in ("xnn", "break", "portable") for n in COUNTS}
    out = {"loadavg_1m_start": os.getloadavg()[0]}
    x = (torch.randn(1, 64),)
    per, _ = interleaved_runs(progs, lambda key: x, rounds=args.rounds, warmup=10,
                              repeats=args.repeats)
    us = {f"{k}/{n}": statistics.median(statistics.median(s) for s in v) * 1e6
          for (k, n), v in per.items()}
    slopes = {}
    for kind in ("xnn", "break", "portable"):
        y = [us[f"{kind}/{n}"] for n in COUNTS]
        slope, icpt = np.polyfit(np.array(COUNTS, float), np.array(y), 1)
        slopes[kind] = {"us_per_op": round(float(slope), 3), "fixed_us": round(float(icpt), 2)}
    out.update({"us": {k: round(v, 2) for k, v in us.items()}, "slopes": slopes,
                "xnnpack_op_us": slopes["xnn"]["us_per_op"],
                "graph_break_us": round(slopes["break"]["us_per_op"]
                                        - 2 * slopes["xnn"]["us_per_op"], 3),
                "loadavg_1m_end": os.getloadavg()[0]})
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
