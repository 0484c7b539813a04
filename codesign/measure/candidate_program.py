"""A search-space candidate as a real ExecuTorch program: module, per-layer precisions, .pte.

``lower_candidate(space, candidate)`` builds the candidate's static MBConv subnet
(``codesign.search_spaces.mbconv_supernet.MBConvSubnet``), folds every BatchNorm into its
convolution (the op list prices conv+BN as one op) and realises each layer's precision *as the op
list states it* (``space.to_ops(candidate)``), so the program timed is the program priced:

* ``w32a32``              the float layer as is;
* ``w8a8`` (static)       PT2E with ``XNNPACKQuantizer`` (symmetric per-channel int8 weights,
                          per-tensor int8 activations) annotated for this layer's modules only
                          (the layer, its ``_bn`` and ``_act``);
* ``w4a8-dyn``/``w8a8-dyn`` linear: torchao ``Int8DynamicActivationIntxWeightConfig`` on this
                          module only (int4 weights in the op's group size, or int8 per channel);
* anything else           ``ValueError``: a precision is never rounded to a neighbouring one.

Mixed precision is realised per layer (precision boundaries become XNNPACK convert ops). One
deliberate difference from the op list: XNNPACK has no quantized global mean, so the global pool
stays float (an int8 pool would leave ``aten::mean`` outside the delegate); the op list prices it
at its input's precision. Weights are seeded random (dense XNNPACK kernels take the same time for
any values); activation ranges are calibrated on seeded random inputs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from codesign.export.program import fold_batchnorm, layer_quantizer, owner_resolver
from codesign.cost_models.ir import Op, OpKind

__all__ = ["LoweredProgram", "layer_precisions", "build_module", "lower_candidate",
           "REALISED_KINDS"]

# Op kinds whose precision the program realises per layer; other ops follow their neighbours.
REALISED_KINDS = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR, OpKind.ADD})
_FLOAT, _STATIC, _DYNAMIC = "w32a32", ("w8a8",), ("w4a8-dyn", "w8a8-dyn")


@dataclass(frozen=True)
class LoweredProgram:
    """A candidate lowered to ExecuTorch.

    Attributes:
        pte: the ``.pte`` file contents.
        inputs: the example inputs (deploy shape) the program takes.
        precisions: per realised layer (op name), the precision it runs at.
        undelegated: operators that run outside XNNPACK (ideally none).
        max_rel_err: max |program - float module| / max |float module| on ``inputs``
            (quantization error for quantized layers; ~1e-6 for an all-float program); NaN when
            not checked.
    """

    pte: bytes
    inputs: tuple[torch.Tensor, ...]
    precisions: dict[str, str]
    undelegated: tuple[str, ...]
    max_rel_err: float = float("nan")

    @property
    def precision_mix(self) -> str:
        """E.g. ``"w32a32:30 w8a8:21 w4a8-dyn:1"``: how many layers run at each precision."""
        counts = Counter(self.precisions.values())
        return " ".join(f"{p}:{n}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))

    @property
    def dominant_precision(self) -> str:
        counts = Counter(self.precisions.values())
        return max(sorted(counts), key=lambda p: counts[p]) if counts else _FLOAT


def _label(op: Op) -> str:
    q = op.quant
    return f"w{q.weight_bits}a{q.act_bits}" + ("-dyn" if q.dynamic_act else "")


def layer_precisions(ops: list[Op]) -> dict[str, tuple[str, int]]:
    """Per realised op name: (precision label, weight group size; 0 = per channel).

    Raises:
        ValueError: a layer at a precision XNNPACK cannot run, naming the layer.
    """
    out: dict[str, tuple[str, int]] = {}
    for op in ops:
        if op.kind not in REALISED_KINDS:
            continue
        label = _label(op)
        if label in _DYNAMIC and op.kind is not OpKind.LINEAR:
            raise ValueError(f"layer {op.name}: XNNPACK runs {label} only on linear layers")
        if label != _FLOAT and label not in _STATIC and label not in _DYNAMIC:
            raise ValueError(f"layer {op.name}: XNNPACK cannot run precision {label}; it runs "
                             f"{', '.join((_FLOAT,) + _STATIC + _DYNAMIC)}")
        out[op.name] = (label, op.quant.group_size)
    return out


def build_module(space: Any, candidate: Any, *, seed: int = 0) -> nn.Module:
    """The candidate's static subnet (seeded random weights), BatchNorm folded, eval mode."""
    from codesign.search_spaces.mbconv_supernet import MBConvSubnet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MBConvSubnet(space.config, candidate.arch)
    return fold_batchnorm(model)


def _check_modules(model: nn.Module, names: list[str]) -> None:
    have = dict(model.named_modules())
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"the torch module has no layer named {missing[0]!r}: the op list and "
                         "the module disagree")


def _apply_dynamic(model: nn.Module, plan: dict[str, tuple[str, int]]) -> None:
    from codesign.measure.pte import quiet_imports

    with quiet_imports():
        from torchao.quantization.granularity import PerAxis, PerGroup
        from torchao.quantization.quant_api import (Int8DynamicActivationIntxWeightConfig,
                                                    quantize_)
    for name, (label, group) in plan.items():
        if label not in _DYNAMIC:
            continue
        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int4 if label.startswith("w4") else torch.int8,
            weight_granularity=PerGroup(group) if group else PerAxis(0))
        quantize_(model, config, filter_fn=lambda _m, fqn, target=name: fqn == target)


def _export(model: nn.Module, x: torch.Tensor, plan: dict[str, tuple[str, int]],
            calibration: list[torch.Tensor]) -> torch.export.ExportedProgram:
    from codesign.measure.pte import quiet_imports

    static = {name for name, (label, _) in plan.items() if label in _STATIC}
    if not static:
        return torch.export.export(model, (x,))
    with quiet_imports():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    owner = owner_resolver(list(plan))
    quantizer = layer_quantizer(lambda node: owner(node) in static)
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    for batch in calibration:
        prepared(batch)
    return torch.export.export(convert_pt2e(prepared), (x,))


def lower_candidate(space: Any, candidate: Any, *, seed: int = 0, calibration_batches: int = 2,
                    check_output: bool = True, threads: int = 1) -> LoweredProgram:
    """Lower an MBConv candidate to an XNNPACK ``.pte``, each layer at its op-list precision.

    Args:
        space: an ``MBConvSpace`` (its config and ``to_ops``).
        candidate: a candidate of ``space``.
        seed: seeds the weights, the example input and the calibration inputs.
        calibration_batches: random input batches that set the static int8 activation ranges.
        check_output: run the program once on the ExecuTorch runtime and compare it with the
            float module (``max_rel_err``).
        threads: the runtime's thread count for that check.
    Raises:
        ValueError: a layer at a precision XNNPACK cannot run, or a module/op-list mismatch.
    """
    from codesign.measure.pte import _quiet_export, quiet_imports, undelegated_operators

    ops = space.to_ops(candidate)
    plan = layer_precisions(ops)
    model = build_module(space, candidate, seed=seed)
    _check_modules(model, list(plan))
    gen = torch.Generator().manual_seed(seed + 1)
    shape = tuple(space.deploy_input_shape)
    x = torch.randn(shape, generator=gen)
    calibration = [torch.randn(shape, generator=gen) for _ in range(max(1, calibration_batches))]
    with torch.no_grad():
        reference = model(x)
    with quiet_imports():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from torchao.utils import unwrap_tensor_subclass
    with _quiet_export(), torch.no_grad():
        _apply_dynamic(model, plan)
        model = unwrap_tensor_subclass(model)
        exported = _export(model, x, plan, calibration)
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        pte = bytes(edge.to_executorch().buffer)
    err = float("nan")
    if check_output:
        from codesign.measure.host_runner import run_pte

        out = run_pte(pte, (x,), threads=threads)[0]
        err = float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    return LoweredProgram(pte, (x,), {n: label for n, (label, _) in plan.items()},
                          undelegated_operators(pte), err)
