"""A short quantization-aware fine-tune of one searched member, in its own formats.

The member's architecture is trained as a slice of a private copy of the supernet, its units in
their formats (``codesign.search_spaces.mbconv_qat``: fake-quantized weights with a straight-through
gradient, int8 activations, sparse layers masked by magnitude every step, as in the supernet's
training; a masked weight gets no gradient, so at this small rate the masks barely move, and the
evaluator prunes the fine-tuned weights to the member's patterns again before it scores or
exports them). The loss is the supernet's: half cross-entropy on the train split (with its
augmentation), half distillation from the largest subnet in fp32 (in-place distillation's
teacher, batch statistics); AdamW at a small constant rate after a short warm-up. On the built-in
task's front this moves accuracy by less than the splits resolve (BENCHMARKS.md): the QAT
supernet's one-shot subnets already sit near the task's ceiling; a plain cross-entropy
fine-tune at 3e-4 lowered them. Returns the member as a static subnet (module names = op
names), ready for the evaluator's calibration and for export.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F

from codesign.search_spaces.mbconv import Candidate, Format
from codesign.search_spaces.mbconv_qat import train_format
from codesign.search_spaces.mbconv_supernet import (MBConvSubnet, MBConvSupernet, TrainProgress,
                                                    extract_subnet)
from codesign.search_spaces.mbconv_training import random_shift
from codesign.search_spaces.tasks import TaskData


def finetune_subnet(supernet: MBConvSupernet, candidate: Candidate, data: TaskData, steps: int,
                    *, seed: int = 0, lr: float = 1e-4, batch_size: int = 32,
                    shift_px: int = 6, distill_weight: float = 0.5,
                    progress: Callable[[TrainProgress], None] | None = None) -> MBConvSubnet:
    """``candidate`` fine-tuned for ``steps`` steps (see the module docstring); deterministic
    given ``seed``. The supernet is not modified."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    formats = {unit: train_format(Format(c.precision, c.sparsity).label)
               for unit, c in candidate.layers}
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = copy.deepcopy(supernet).train()
        teacher = copy.deepcopy(supernet).train()  # batch statistics, as in training
        teacher_arch = supernet.config.max_arch()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(seed + 7)
        n = len(data.y_train)
        warmup = max(1, steps // 10)
        start = time.perf_counter()
        for step in range(steps):
            idx = torch.randint(0, n, (batch_size,), generator=gen)
            x = random_shift(data.x_train[idx], shift_px, gen).contiguous(
                memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup)
            opt.zero_grad(set_to_none=True)
            out = net(x, candidate.arch, formats)
            with torch.no_grad():
                soft = F.softmax(teacher(x, teacher_arch), dim=1)
            loss = ((1 - distill_weight) * F.cross_entropy(out, data.y_train[idx])
                    + distill_weight * F.kl_div(F.log_softmax(out, dim=1), soft,
                                                reduction="batchmean"))
            loss.backward()
            opt.step()
            if progress is not None:
                progress(TrainProgress(step + 1, steps, 0, loss.item(),
                                       time.perf_counter() - start))
    return extract_subnet(net.eval(), candidate)
