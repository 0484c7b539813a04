"""What each linear of a ``transformer`` member becomes in its ExecuTorch/XNNPACK program.

The decode op list (``TransformerSpace.to_ops``) fixes every linear's precision; here each one is
mapped to its module in ExecuTorch's Llama ``Transformer`` (``search_spaces/transformer_model``)
and to a realisation, following ExecuTorch's LLM export recipe (``export_llama --qmode 8da4w``):

* ``w4a8-dyn`` (group g): torchao ``quantize_`` with ``Int8DynamicActivationIntxWeightConfig(
  weight_dtype=int4, PerGroup(g))`` on exactly that module;
* ``w8a8-dyn``: the same config with int8 weights, one scale per output channel (``PerAxis(0)``);
* ``w16a16``: fp32. The space prices the 16-bit stream (fp16 weights, activations and KV cache);
  ExecuTorch's XNNPACK on this host runs the layer in fp32 (twice the priced bytes), and the
  manifest says so;
* ``w8a8`` (static): PT2E with the XNNPACKQuantizer (per-channel int8 weights, per-tensor int8
  activations) admitting only the graph nodes of those modules, calibrated by decoding tokens
  (``transformer.py``); ExecuTorch's LLM recipe itself only quantizes decoder linears dynamically;
* anything else gets no realisation and the member no ``.pte`` (issue 6's policy: a precision is
  never rounded to another one), with the reason per layer: precisions XNNPACK does not run
  (the ``codesign`` back-end's sub-byte weights with static or 16-bit activations).

Pruned (2:4) FFN weights that XNNPACK accepts run dense (no sparse kernels): exact, not faster.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from codesign.export.plan import (FP32, PRUNED_NOTE, PT2E_INT8, TORCHAO_DYN, LayerPlan,
                                  plan_layers)
from codesign.cost_models.backends import BackendSpec
from codesign.cost_models.ir import Op, OpKind
from codesign.kernels.specs import SparsityPattern
from codesign.search_spaces.transformer_model import BLOCK_LINEARS

HEAD_OP, HEAD_MODULE, EMBEDDING_MODULE = "lm_head", "output", "tok_embeddings"
FP16_NOTE = ("priced as w16a16 (fp16 weights and stream); run as fp32 by XNNPACK on this host "
             "(the exported layer holds 2x the priced weight bytes)")


def module_name(op_name: str) -> str:
    """``l3.gate`` -> ``layers.3.feed_forward.w1``; ``lm_head`` -> ``output``."""
    if op_name == HEAD_OP:
        return HEAD_MODULE
    unit, _, part = op_name.partition(".")
    if not unit.startswith("l") or part not in BLOCK_LINEARS:
        raise ValueError(f"{op_name!r} is not a linear of the transformer op list")
    return f"layers.{int(unit[1:])}.{BLOCK_LINEARS[part]}"


def plan_linears(ops: Sequence[Op], xnnpack: BackendSpec) -> list[LayerPlan]:
    """One ``LayerPlan`` per linear of the decode op list, named by its module (what
    ``codesign.export.program._apply_torchao`` filters on), in op-list order: issue 6's
    ``plan_layers``, plus the one realisation a decoder adds — ``w16a16`` as fp32."""
    linears = [op for op in ops if op.kind is OpKind.LINEAR]
    plans = []
    for op, plan in zip(linears, plan_layers(linears, xnnpack)):
        q = op.quant
        if (plan.realisation is None and q.weight_bits == q.act_bits == 16
                and xnnpack.why_not(op.kind, q, op.sparsity) is None):
            sparse = "" if op.sparsity.pattern is SparsityPattern.DENSE else PRUNED_NOTE
            plan = replace(plan, realisation=FP32, reason="",
                           note="; ".join(n for n in (FP16_NOTE, sparse) if n))
        plans.append(replace(plan, name=module_name(op.name)))
    return plans


def weight_bytes(elements: int, weight_bits: int, group_size: int, rows: int) -> int:
    """Bytes of a stored weight at ``weight_bits``: the values plus one 4-byte scale per group
    (4-bit) or per output row (8-bit); fp32 for 16/32-bit (as exported here)."""
    if weight_bits >= 16:
        return 4 * elements
    scales = elements // group_size if group_size else rows
    return elements * weight_bits // 8 + 4 * scales


def head_tie(plans: Sequence[LayerPlan], vocab: int, d_model: int) -> dict[str, Any]:
    """How the tied LM head is exported, with the bytes each copy holds."""
    head = next(p for p in plans if p.name == HEAD_MODULE)
    table = 4 * vocab * d_model
    head_bytes = weight_bytes(vocab * d_model, head.weight_bits, head.group_size, vocab)
    out: dict[str, Any] = {"head_precision": head.precision, "embedding_precision": "fp32",
                           "embedding_table_bytes": table, "head_weight_bytes": head_bytes,
                           "priced": "one matrix: the LM head's weight bytes at its precision "
                                     "(the embedding gather reads a row of it)"}
    if head.realisation == FP32:
        out["export"] = ("tied in the module (output.weight is tok_embeddings.weight); in the "
                         ".pte the embedding gather reads the fp32 table as a program constant "
                         "and XNNPACK's linear packs its own fp32 copy into the delegate: two "
                         "stored copies")
    elif head.realisation in (TORCHAO_DYN, PT2E_INT8):
        out["export"] = (f"untied at export: the head is quantized to {head.precision} from the "
                         "shared table; the embedding gather keeps the fp32 table. Two stored "
                         "matrices: the fp32 table and the quantized head")
    else:
        out["export"] = "no .pte (the head's precision has no realisation)"
    out["stored_bytes"] = table + head_bytes
    return out
