"""Realise a member's per-layer precisions on a float deployable module and export it.

``build_program(model, plans, example, calibration)``:

1. copy the module, fold every BatchNorm into its convolution (the op list prices conv+BN as
   one op; folding first lets PT2E see conv -> activation patterns inside one layer);
2. ``torchao-dyn`` linears: ``quantize_`` with ``Int8DynamicActivationIntxWeightConfig`` on
   exactly those modules (a filter on the module name);
3. ``pt2e-int8`` layers: ``torch.export`` -> ``prepare_pt2e`` with an XNNPACKQuantizer whose
   filter admits only the graph nodes owned by those layers -> calibration on training images ->
   ``convert_pt2e`` -> re-export. Mixed precision survives: unannotated layers stay float;
4. the result is the ``torch.export`` program (``model.pt2``) and the module that produced it,
   the reference the ``.pte`` is checked against.

Node ownership comes from ``nn_module_stack``: the module path of a node, less a ``_bn`` or
``_act`` suffix (the deployable subnets name the BatchNorm and activation of layer ``X``
``X_bn`` and ``X_act``), is the op name; otherwise the longest op name that is a path prefix.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from codesign.export.plan import PT2E_INT8, TORCHAO_DYN, LayerPlan
from codesign.measure.pte import _quiet_export, quiet_imports

_OWNED_SUFFIXES = ("_bn", "_act")


@dataclass
class BuiltProgram:
    exported: torch.export.ExportedProgram
    reference: Callable[[torch.Tensor], torch.Tensor]
    quantized: bool
    # scale of the int8 output when the graph's output is dequantized from int8, else None
    output_scale: float | None


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with each ``X_bn`` BatchNorm folded into conv ``X``."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bn = getattr(parent, f"{attr}_bn", None)
        if isinstance(bn, nn.BatchNorm2d):
            setattr(parent, attr, fuse_conv_bn_eval(module, bn))
            setattr(parent, f"{attr}_bn", nn.Identity())
    return model


def _module_path(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    for prefix in ("L['self'].", "L__self___"):
        path = path.removeprefix(prefix)
    return path


def owner_resolver(op_names: Sequence[str]) -> Callable[[torch.fx.Node], str | None]:
    """node -> the op name that owns it (see the module docstring), or None."""
    names = set(op_names)

    def owner(node: torch.fx.Node) -> str | None:
        path = _module_path(node)
        if path is None:
            return None
        for suffix in _OWNED_SUFFIXES:
            if path.endswith(suffix) and path[:-len(suffix)] in names:
                return path[:-len(suffix)]
        while path:
            if path in names:
                return path
            path = path.rpartition(".")[0]
        return None

    return owner


def layer_quantizer(admit: Callable[[torch.fx.Node], bool]):
    """An XNNPACKQuantizer (symmetric per-channel int8 weights, per-tensor int8 activations)
    annotating only the nodes ``admit`` accepts: one global config behind a node filter, so one
    annotation pass rather than one per layer. BatchNorm is folded before export, so the
    conv+BN patterns match nothing and are dropped (each costs pattern exports per pass)."""
    with quiet_imports():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)

    class FoldedQuantizer(XNNPACKQuantizer):
        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS
                              if "_bn" not in p.name]

    quantizer = FoldedQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(admit)
    return quantizer


def _apply_torchao(model: nn.Module, plans: Sequence[LayerPlan]) -> None:
    dynamic = {p.name: p for p in plans if p.realisation == TORCHAO_DYN}
    if not dynamic:
        return
    with quiet_imports():
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerAxis, PerGroup

    for name, plan in dynamic.items():
        granularity = PerGroup(plan.group_size) if plan.group_size else PerAxis(0)
        dtype = torch.int4 if plan.weight_bits == 4 else torch.int8
        config = Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype,
                                                       weight_granularity=granularity)
        quantize_(model, config, filter_fn=lambda module, fqn, target=name: fqn == target)


def _output_scale(exported: torch.export.ExportedProgram) -> float | None:
    """Scale of the dequantize feeding the graph output (ExecuTorch's tester uses it for qtol)."""
    dq = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    for node in exported.graph.nodes:
        if node.op != "output":
            continue
        first = node.args[0][0]
        if isinstance(first, torch.fx.Node) and first.target == dq:
            return float(first.args[1])
    return None


def build_program(model: nn.Module, plans: Sequence[LayerPlan], example: torch.Tensor,
                  calibration: Sequence[torch.Tensor], op_names: Sequence[str]) -> BuiltProgram:
    """Export ``model`` with each layer at its planned precision (see the module docstring).

    ``calibration``: single-image batches shaped like ``example`` (static int8 ranges).
    Raises ValueError when a plan holds a layer with no realisation.
    """
    missing = [p.name for p in plans if p.realisation is None]
    if missing:
        raise ValueError(f"layers with no XNNPACK realisation: {', '.join(missing)}")
    # the program keeps its example inputs and torch.export.save writes them into model.pt2:
    # a one-image view of a whole split would carry the split's entire storage with it
    example = example.detach().clone()
    model = fold_batchnorm(model)
    _apply_torchao(model, plans)
    int8 = {p.name for p in plans if p.realisation == PT2E_INT8}
    quantized = bool(int8) or any(p.realisation == TORCHAO_DYN for p in plans)
    with _quiet_export(), torch.no_grad():
        if not int8:
            exported = torch.export.export(model, (example,))
            return BuiltProgram(exported, model, quantized, None)
        with quiet_imports():
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        owner = owner_resolver(op_names)
        quantizer = layer_quantizer(lambda node: owner(node) in int8)
        prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
        for image in calibration:
            prepared(image)
        converted = convert_pt2e(prepared)
        exported = torch.export.export(converted, (example,))
        return BuiltProgram(exported, converted, True, _output_scale(exported))
