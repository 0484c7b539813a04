"""Check an exported ``.pte`` on ExecuTorch's runtime on this machine.

* Outputs: fp32 programs against the eager module with ``atol = rtol = 1e-3`` (what ExecuTorch's
  own XNNPACK tests use); quantized programs against the PT2E-converted / torchao reference with
  ``atol = 1e-3 + QTOL_STEPS x step`` where ``step`` is the scale of the int8 output when the
  graph's output is dequantized from int8 (the tester's ``qtol``), else one step of an 8-bit grid
  over the reference output's range. ``max_diff_steps`` reports the difference in those steps.
* Accuracy of a program on a split, image by image, as it would run on the device.
* Latency through ``time_pte`` (threadpool set before loading, warm-ups, repeats, p50/p90,
  first-run cost) and the planned memory read from the program.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from codesign.measure.host_runner import run_pte_batches

ATOL = RTOL = 1e-3
QTOL_STEPS = 2  # ExecuTorch's quantized conv tests compare with qtol=2


@dataclass(frozen=True)
class OutputCheck:
    max_abs_diff: float
    atol: float
    rtol: float
    step: float | None
    max_diff_steps: float | None
    n_inputs: int
    ok: bool

    def as_json(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "atol": self.atol, "rtol": self.rtol,
                "quant_step": self.step, "max_diff_steps": self.max_diff_steps,
                "n_inputs": self.n_inputs, "within_tolerance": self.ok}


def check_outputs(pte: bytes, reference: Callable[[torch.Tensor], torch.Tensor],
                  inputs: Sequence[torch.Tensor], *, quantized: bool,
                  output_scale: float | None, threads: int = 1) -> OutputCheck:
    """Run ``pte`` on each input (one image each) and compare with ``reference``."""
    outs = [o[0] for o in run_pte_batches(pte, [[x] for x in inputs], threads=threads)]
    with torch.no_grad():
        refs = [reference(x) for x in inputs]
    diff = max(float((o - r).abs().max()) for o, r in zip(outs, refs))
    step = None
    atol = ATOL
    if quantized:
        if output_scale is not None:
            step = output_scale
        else:
            span = max(float(r.max() - r.min()) for r in refs)
            step = max(span, 1e-12) / 255.0
        atol = ATOL + QTOL_STEPS * step
    ok = all(torch.allclose(o, r, atol=atol, rtol=RTOL) for o, r in zip(outs, refs))
    return OutputCheck(diff, atol, RTOL, step, diff / step if step else None, len(inputs), ok)


def program_accuracy(pte: bytes, images: torch.Tensor, labels: torch.Tensor, *,
                     threads: int = 1) -> float:
    """Top-1 accuracy of the program over ``images`` (N, C, H, W), run one image at a time."""
    outs = run_pte_batches(pte, [[images[i:i + 1]] for i in range(len(images))], threads=threads)
    pred = torch.cat([o[0].argmax(dim=1) for o in outs])
    return float((pred == labels).float().mean())
