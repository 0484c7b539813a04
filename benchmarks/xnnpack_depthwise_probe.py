"""How fast ExecuTorch's XNNPACK runs depthwise convolutions by kernel size, on this host.

XNNPACK has dedicated depthwise micro-kernels up to 25 taps (3x3, 5x5); a 7x7 layer takes a generic
path. This probe times single depthwise layers (k = 3, 5, 7) lowered to XNNPACK ``.pte`` programs,
fp32 and int8, 1 thread, and prints the per-FLOP rate ratio of k = 5 over k = 7 (measured in one
process, so machine load cancels to first order). The ratio sets the back-end's
``depthwise_large_kernel.efficiency`` in ``configs/backends/xnnpack.yaml`` (dwconv efficiency /
ratio).

    .venv/bin/python -m benchmarks.xnnpack_depthwise_probe
"""
from __future__ import annotations

import json
import os
import statistics

import torch
from torch import nn

from codesign.measure.host_runner import time_pte
from codesign.measure.pte import lower_to_pte

SHAPES = ((96, 64, 1), (192, 32, 1), (144, 64, 2))  # channels, input H = W, stride


class Depthwise(nn.Module):
    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels,
                              bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {"loadavg_1m_start": os.getloadavg()[0], "rows": []}
    for dtype in ("fp32", "int8"):
        ratios = []
        for channels, hw, stride in SHAPES:
            rates = {}
            for kernel in (3, 5, 7):
                model = Depthwise(channels, kernel, stride).eval()
                x = torch.randn(1, channels, hw, hw)
                pte = lower_to_pte(model, (x,), precision=dtype)
                p50 = time_pte(pte, (x,), threads=1, warmup=3, repeats=10).p50_s
                out_hw = (hw + stride - 1) // stride
                rates[kernel] = channels * out_hw * out_hw * kernel * kernel * 2 / p50 / 1e9
            ratios.append(rates[5] / rates[7])
            out["rows"].append({"dtype": dtype, "channels": channels, "hw": hw, "stride": stride,
                                "gflops": {k: round(v, 3) for k, v in rates.items()},
                                "ratio_5_over_7": round(rates[5] / rates[7], 2)})
        out[f"median_ratio_{dtype}"] = round(statistics.median(ratios), 2)
    out["loadavg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
