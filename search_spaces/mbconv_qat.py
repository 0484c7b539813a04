"""Quantization- and sparsity-aware supernet training (APQ / BatchQuant / OQAT style).

Each sandwich step of ``mbconv_supernet.train_supernet`` samples, beside the architecture, a
*format* per precision unit (stem, block, head, feature, classifier): weight bits and grouping,
activation bits (static or dynamic) and a sparsity pattern. The supernet then runs that unit with
- its weights pruned to the pattern's magnitude mask (recomputed from the current weights every
  step, as ``torch.ao.pruning``'s WeightNormSparsifier does) and fake-quantized with
  ``codesign.search_spaces.quant_numerics.quantize_weight`` — the very function the evaluator and
  the exporter's reference use — through a straight-through estimator;
- its activations fake-quantized per tensor to 8 bits where the format's activations are int8,
  with the range of the current batch (static scales are calibrated per subnet at evaluation;
  during training the batch range stands in for them), or per example / per token where the
  format's activations are dynamic.
Weights are quantized before BatchNorm is folded: per-output-channel (and per-group) scales are
invariant to the per-channel BN scale, so this equals quantizing the folded weights, which is what
the evaluator and the exported program do.

The format menu (``TrainConfig.conv_formats`` / ``linear_formats``) is the union of the formats
the back-ends offer, so one trained supernet (one set of shipped weights) serves every back-end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from codesign.cost_models.backends import Precision
from codesign.kernels.specs import DENSE, QuantSpec, SparsityPattern, SparsitySpec
from codesign.search_spaces.mbconv import SPARSITY_CHOICES, Format
from codesign.search_spaces.quant_numerics import (fake_quant_dynamic, fake_quant_per_token,
                                                   fake_quant_tensor,
                                                   quantize_weight, sparsity_mask)


@dataclass(frozen=True)
class TrainFormat:
    """How one unit runs in a training step: its weights' quantization and sparsity and its
    activations' precision. ``FP32`` is the float format."""

    quant: QuantSpec = QuantSpec(32, 32)
    sparsity: SparsitySpec = DENSE

    @property
    def is_float(self) -> bool:
        return self.quant.weight_bits >= 32 and self.quant.act_bits >= 32 and not self.sparse

    @property
    def sparse(self) -> bool:
        return self.sparsity != DENSE


FP32 = TrainFormat()


class _StraightThrough(torch.autograd.Function):
    """Forward ``q``, backward the identity to ``x`` (the STE of QAT)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return q

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def fake_weight(weight: torch.Tensor, fmt: TrainFormat | None, *,
                prunable: bool = True) -> torch.Tensor:
    """``weight`` as the unit's format runs it: masked to its sparsity pattern (the gradient of a
    pruned weight is zero, as with a mask), then fake-quantized with a straight-through
    gradient. ``prunable`` False (depthwise convs, the stem, the classifier) skips the mask."""
    if fmt is None or fmt.is_float:
        return weight
    w = weight
    if fmt.sparse and prunable:
        w = w * training_mask(w.detach(), fmt.sparsity).to(w.dtype)
    if fmt.quant.weight_bits < 32:
        group = fmt.quant.group_size
        if group and (w[0].numel() % group):
            group = 0  # a layer the group does not divide runs per channel (as _quant decides)
        quant = QuantSpec(fmt.quant.weight_bits, fmt.quant.act_bits, group,
                          fmt.quant.dynamic_act)
        w = _StraightThrough.apply(w, quantize_weight(w.detach(), quant).to(w.dtype))
    return w


def training_mask(weight: torch.Tensor, spec: SparsitySpec) -> torch.Tensor:
    """``sparsity_mask`` without its stable sorts, for a mask recomputed every step: the
    k-th largest magnitude (or block norm) as a threshold. It differs from the evaluator's
    mask only on exact ties at the threshold."""
    if spec.pattern is SparsityPattern.N_M:
        return sparsity_mask(weight, spec)  # a top-n over runs of m: already cheap
    w = weight.reshape(weight.shape[0], -1)
    rows, k = w.shape
    if spec.pattern is SparsityPattern.UNSTRUCTURED:
        scores = w.abs().flatten()
    elif spec.pattern is SparsityPattern.BLOCK:
        br, bc = spec.block_rows, spec.block_cols
        if rows % br or k % bc:
            return sparsity_mask(weight, spec)  # raises the evaluator's error
        scores = w.reshape(rows // br, br, k // bc, bc).pow(2).sum((1, 3)).flatten()
    else:
        return sparsity_mask(weight, spec)
    keep = int(round(spec.density * scores.numel()))
    if keep <= 0:
        return torch.zeros_like(weight, dtype=torch.bool)
    threshold = torch.kthvalue(scores, scores.numel() - keep + 1).values
    mask = scores >= threshold
    if spec.pattern is SparsityPattern.BLOCK:
        mask = mask.reshape(rows // br, 1, k // bc, 1).expand(-1, br, -1, bc)
    return mask.reshape(weight.shape)


def fake_activation(x: torch.Tensor, fmt: TrainFormat | None, *,
                    per_token: bool = False) -> torch.Tensor:
    """``x`` held at the format's activation precision, with a straight-through gradient."""
    if fmt is None or fmt.quant.act_bits >= 32:
        return x
    if fmt.quant.act_bits == 16:
        q = x.detach().half().float()
    elif fmt.quant.dynamic_act:
        q = (fake_quant_per_token if per_token else fake_quant_dynamic)(x.detach(), 8)
    else:
        # a static per-tensor scale: the batch range stands in for the calibrated one
        lo, hi = torch.aminmax(x.detach())
        q = fake_quant_tensor(x.detach(), float(lo), float(hi), 8)
    return _StraightThrough.apply(x, q)


def train_format(label: str) -> TrainFormat:
    """The training format of a space label (``w8a8``, ``w4a8-dyn``, ``w32a32+2:4``): sub-byte
    weights group-wise (128, the group the space gives most linears) where the activations are
    dynamic (torchao's linears), per channel otherwise; the sparsity names are the space's
    (``codesign.search_spaces.mbconv.SPARSITY_CHOICES``)."""
    fmt = Format.parse(label)
    p = Precision.parse(fmt.precision)
    if fmt.sparsity not in SPARSITY_CHOICES:
        raise ValueError(f"unknown sparsity {fmt.sparsity!r} in format {label!r}; valid: "
                         f"{', '.join(SPARSITY_CHOICES)}")
    group = 128 if (p.weight_bits < 8 and p.dynamic_act) else 0
    return TrainFormat(QuantSpec(p.weight_bits, p.act_bits, group, p.dynamic_act),
                       SPARSITY_CHOICES[fmt.sparsity])


def sample_unit_formats(units: list[str], menu: Mapping[str, tuple[TrainFormat, ...]],
                        rng: np.random.Generator, *, max_formats: int = 3
                        ) -> dict[str, TrainFormat]:
    """Formats for ``units`` as a searched member has them: a palette of at most
    ``max_formats`` formats drawn from the menu, each unit assigned one of them (a unit that
    cannot run a palette format — a conv unit and a linear-only format — takes the first
    palette entry it can run, else fp32). Half the draws are a single uniform format."""
    pool = sorted(set(menu["conv"]) | set(menu["linear"]), key=repr)
    size = 1 if rng.random() < 0.5 else int(rng.integers(1, max_formats + 1))
    palette = [pool[int(i)] for i in rng.choice(len(pool), size=size, replace=False)]
    out = {}
    for unit in units:
        kind = "linear" if unit in ("feature", "classifier") else "conv"
        pick = palette[int(rng.integers(len(palette)))]
        if pick not in menu[kind]:
            pick = next((f for f in palette if f in menu[kind]), FP32)
        out[unit] = pick
    return out
