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

from cost_models.ir import Op, OpKind
from kernels.specs import SparsityPattern, SparsitySpec

_SPARSE_KINDS = (OpKind.CONV2D, OpKind.LINEAR)


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` largest entries of the 1-D ``scores`` (stable on ties)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    order = torch.sort(scores, descending=True, stable=True).indices
    mask[order[:keep]] = True
    return mask


def sparsity_mask(weight: torch.Tensor, spec: SparsitySpec) -> torch.Tensor:
    """The keep-mask (bool, shaped like ``weight``) of magnitude pruning ``weight`` to ``spec``.

    Raises ValueError when the pattern does not tile the weight matrix (N:M needs the reduction
    length divisible by M, a block pattern both dimensions divisible by the block shape).
    """
    w = weight.detach().reshape(weight.shape[0], -1).float()
    rows, k = w.shape
    if spec.pattern is SparsityPattern.DENSE:
        return torch.ones_like(weight, dtype=torch.bool)
    if spec.pattern is SparsityPattern.N_M:
        if k % spec.m:
            raise ValueError(f"{spec.label} needs the reduction length {k} divisible by {spec.m}")
        groups = w.abs().reshape(rows, k // spec.m, spec.m)
        order = torch.sort(groups, dim=2, descending=True, stable=True).indices
        mask = torch.zeros_like(groups, dtype=torch.bool)
        mask.scatter_(2, order[..., :spec.n], True)
        return mask.reshape(weight.shape)
    if spec.pattern is SparsityPattern.BLOCK:
        br, bc = spec.block_rows, spec.block_cols
        if rows % br or k % bc:
            raise ValueError(f"{spec.label} needs a weight matrix divisible into {br}x{bc} "
                             f"blocks, got {rows}x{k}")
        blocks = w.reshape(rows // br, br, k // bc, bc).permute(0, 2, 1, 3)
        norms = blocks.pow(2).sum((2, 3)).flatten()
        keep = _keep_top(norms, int(round(spec.density * norms.numel())))
        keep = keep.reshape(rows // br, k // bc)[:, :, None, None].expand(-1, -1, br, bc)
        return keep.permute(0, 2, 1, 3).reshape(weight.shape)
    if spec.pattern is SparsityPattern.UNSTRUCTURED:
        keep = _keep_top(w.abs().flatten(), int(round(spec.density * w.numel())))
        return keep.reshape(weight.shape)
    raise ValueError(f"unknown sparsity pattern {spec.pattern}")


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
