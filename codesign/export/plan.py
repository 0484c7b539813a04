"""What each layer of a Pareto member becomes in the exported artifacts.

A member's op list (``space.to_ops`` at the deploy shape) fixes every layer's precision,
sparsity and tile. ``plan_layers`` decides, per layer, how that precision is *realised* on
ExecuTorch's XNNPACK runtime, or why it cannot be:

* ``fp32``            w32a32: the float layer as is;
* ``pt2e-int8``       w8a8 static: PT2E with the XNNPACKQuantizer (symmetric per-channel int8
                      weights, per-tensor int8 activations), annotated for this layer only;
* ``torchao-dyn``     w4a8-dyn / w8a8-dyn linear: torchao's ``quantize_`` with
                      ``Int8DynamicActivationIntxWeightConfig`` for this layer only (group-wise
                      4-bit or per-channel 8-bit weights, int8 activations quantized at run time);
* ``None``            anything else: the reason is recorded and no ``.pte`` is written for the
                      member. A precision is never rounded to a neighbouring one.

Pruned weights run densely on XNNPACK (it has no sparse kernels): numerically exact, not
accelerated; the plan says so per layer. ``kernel_spec`` is the per-layer contract a kernel
author implements for the ``codesign`` back-end (``kernels.json``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from codesign.cost_models.backends import BackendSpec
from codesign.cost_models.ir import GEMM_KINDS, Op, OpKind
from codesign.kernels.specs import QuantSpec, SparsityPattern, TileSpec

FP32, PT2E_INT8, TORCHAO_DYN = "fp32", "pt2e-int8", "torchao-dyn"
# kinds whose precision the exporter realises per layer; other ops follow their neighbours
PLANNED_KINDS = GEMM_KINDS | {OpKind.ADD}
PRUNED_NOTE = "pruned weights stored and run dense (XNNPACK has no sparse kernels)"


def precision_label(quant: QuantSpec) -> str:
    label = f"w{quant.weight_bits}a{quant.act_bits}"
    if quant.dynamic_act:
        label += "-dyn"
    if quant.group_size:
        label += f"-g{quant.group_size}"
    return label


def sparsity_label(op: Op) -> str:
    sp = op.sparsity
    if sp.pattern is SparsityPattern.DENSE:
        return "dense"
    if sp.pattern is SparsityPattern.N_M:
        return f"{sp.n}:{sp.m}"
    if sp.pattern is SparsityPattern.BLOCK:
        return f"block{sp.block_rows}x{sp.block_cols}@{1 - sp.density:.2f}"
    return f"unstructured@{1 - sp.density:.2f}"


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is realised for XNNPACK (``realisation`` None: it cannot be)."""

    name: str
    kind: str
    precision: str
    sparsity: str
    realisation: str | None
    reason: str = ""
    note: str = ""
    weight_bits: int = 32
    group_size: int = 0

    def as_json(self) -> dict[str, Any]:
        out = {"name": self.name, "kind": self.kind, "precision": self.precision,
               "sparsity": self.sparsity, "xnnpack": self.realisation or "not expressible"}
        if self.reason:
            out["why_not"] = self.reason
        if self.note:
            out["note"] = self.note
        return out


def _realise(op: Op, xnnpack: BackendSpec) -> tuple[str | None, str]:
    q = op.quant
    why = xnnpack.why_not(op.kind, q, op.sparsity)
    if why is not None:
        return None, why
    if q.weight_bits == 32 and q.act_bits == 32:
        return FP32, ""
    if q.weight_bits == 8 and q.act_bits == 8 and not q.dynamic_act:
        return PT2E_INT8, ""
    if op.kind is OpKind.LINEAR and q.dynamic_act and q.act_bits == 8 and q.weight_bits in (4, 8):
        return TORCHAO_DYN, ""
    return None, (f"XNNPACK runs {op.kind.value} at {precision_label(q)}, but the exporter has "
                  "no realisation of it (it would have to round the layer to another precision)")


def plan_layers(ops: Sequence[Op], xnnpack: BackendSpec) -> list[LayerPlan]:
    """One ``LayerPlan`` per conv / linear / add op of ``ops``, in op-list order."""
    plans = []
    for op in ops:
        if op.kind not in PLANNED_KINDS:
            continue
        realisation, reason = _realise(op, xnnpack)
        note = ""
        if op.sparsity.pattern is not SparsityPattern.DENSE and realisation is not None:
            note = PRUNED_NOTE
        plans.append(LayerPlan(op.name, op.kind.value, precision_label(op.quant),
                               sparsity_label(op), realisation, reason, note,
                               op.quant.weight_bits, op.quant.group_size))
    return plans


def unexpressible(plans: Sequence[LayerPlan]) -> list[LayerPlan]:
    return [p for p in plans if p.realisation is None]


def refusal_reason(bad: Sequence[LayerPlan], unit: str = "layer") -> str:
    """Why a member gets no .pte: how many of its ``unit``s XNNPACK cannot express, the first
    three with their reasons."""
    return (f"XNNPACK cannot express {len(bad)} {unit}(s): "
            + "; ".join(f"{p.name} ({p.precision}): {p.reason}" for p in bad[:3])
            + (" ..." if len(bad) > 3 else ""))


# ------------------------------------------------------------------------------ kernels.json
_SPARSE_FORMATS = {SparsityPattern.N_M: "N:M compressed (kept values + in-group indices)",
                   SparsityPattern.BLOCK: "BSR (block compressed sparse rows)",
                   SparsityPattern.UNSTRUCTURED: "CSR"}


def _reference_kernel(op: Op) -> str:
    """The project's numba kernel that implements this layer on the host, if there is one."""
    q, pattern = op.quant, op.sparsity.pattern
    if op.kind is OpKind.DEPTHWISE_CONV2D:
        if q.weight_bits >= 32:
            return "codesign.kernels.conv.depthwise_conv2d"
        if q.act_bits == 8 and q.weight_bits in (4, 8):
            return "codesign.kernels.conv_int8.depthwise_conv2d_int8"
        return ""
    if op.kind not in GEMM_KINDS:
        return ""
    if pattern is SparsityPattern.N_M:
        return "codesign.kernels.sparse.spmm_nm"
    if pattern is SparsityPattern.BLOCK:
        return "codesign.kernels.sparse.spmm_bsr"
    if pattern is SparsityPattern.UNSTRUCTURED:
        return "codesign.kernels.sparse.spmm_csr"
    if q.weight_bits == 32:
        if op.kind is OpKind.CONV2D:
            return "codesign.kernels.conv.conv2d"
        return "codesign.kernels.gemm_f32.gemm_f32"
    if q.act_bits == 8 and q.weight_bits in (4, 8) and op.kind is OpKind.CONV2D:
        return f"codesign.kernels.conv_int8.conv2d_int8 (pack_conv_weights bits={q.weight_bits})"
    if q.weight_bits == 8 and q.act_bits == 8:
        return "codesign.kernels.gemm_int8.gemm_i8_i32 (pack_weights_int8)"
    if q.weight_bits == 4 and q.act_bits == 8:
        return "codesign.kernels.gemm_int8.gemm_i8_i32 (pack_weights_int4)"
    return ""


def _tile_json(tile: TileSpec | None) -> dict[str, int] | None:
    if tile is None:
        return None
    return {k: getattr(tile, k) for k in ("mc", "nc", "kc", "mr", "nr")}


def kernel_spec(ops: Sequence[Op], tiles: dict[str, TileSpec | None],
                layer_latency_s: dict[str, float]) -> list[dict[str, Any]]:
    """Per-layer kernel contract: shape, precision, sparse format, tile, predicted latency."""
    out = []
    for op in ops:
        if op.kind not in PLANNED_KINDS:
            continue
        q, sp = op.quant, op.sparsity
        entry: dict[str, Any] = {
            "name": op.name, "kind": op.kind.value, "out_shape": list(op.out_shape),
            "gemm": {"m": op.m, "n": op.n, "k": op.k, "groups": op.groups},
            "weight_bits": q.weight_bits, "act_bits": q.act_bits, "group_size": q.group_size,
            "dynamic_act": q.dynamic_act, "precision": precision_label(q),
            "sparsity": {"pattern": sp.pattern.value, "density": sp.density, "n": sp.n, "m": sp.m,
                         "block": [sp.block_rows, sp.block_cols]},
            "sparse_format": _SPARSE_FORMATS.get(sp.pattern, "dense"),
            "tile": _tile_json(tiles.get(op.name)),
            "fused": list(op.fused), "inputs": list(op.inputs),
            "reference_kernel": _reference_kernel(op) or None,
        }
        if op.name in layer_latency_s:
            entry["latency_s_predicted"] = layer_latency_s[op.name]
        out.append(entry)
    return out
