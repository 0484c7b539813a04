"""One-shot magnitude pruning to a ``SparsitySpec`` (the patterns the cost model prices).

Weights are viewed as a 2-D matrix (output channels x reduction), the reduction dimension being
``in_channels/groups * kh * kw`` flattened in PyTorch's memory order, i.e. the K of the GEMM the
kernel runs:
- N:M (2:4): in every run of M consecutive reduction weights of an output channel, keep the N of
  largest magnitude;
- block r x c: tile the matrix into r-row x c-column blocks, rank blocks by L2 norm, keep the
  ``round(density * blocks)`` largest;
- unstructured: keep the ``round(density * numel)`` weights of largest magnitude in the layer.
Ties are broken by position (stable sort), so masks are deterministic.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from codesign.cost_models.ir import Op, OpKind
from codesign.kernels.specs import SparsityPattern
from codesign.search_spaces.quant_numerics import sparsity_mask  # noqa: F401 (re-exported)

_SPARSE_KINDS = (OpKind.CONV2D, OpKind.LINEAR)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model``'s modules named in ``masks`` (in place)."""
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        weight.mul_(mask.to(weight.dtype))


@torch.no_grad()
def prune_to_ops(model: nn.Module, ops: Sequence[Op]) -> dict[str, torch.Tensor]:
    """Prune every conv / linear layer of ``model`` that ``ops`` marks sparse, in place.

    Layers are matched by name (op name == module name). Returns {name: keep-mask} of the
    pruned layers. Raises ValueError if a sparse op has no matching module, or marks a
    depthwise / grouped layer sparse (there is no sparse kernel for those).
    """
    masks: dict[str, torch.Tensor] = {}
    for op in ops:
        if op.sparsity.pattern is SparsityPattern.DENSE:
            continue
        if op.kind not in _SPARSE_KINDS or op.groups != 1:
            raise ValueError(f"op {op.name}: {op.kind.value} with {op.groups} groups cannot be "
                             f"{op.sparsity.label}-sparse")
        try:
            module = model.get_submodule(op.name)
        except AttributeError:
            raise ValueError(f"op {op.name} has no module of that name in the model") from None
        masks[op.name] = sparsity_mask(module.weight, op.sparsity)
    apply_masks(model, masks)
    return masks
