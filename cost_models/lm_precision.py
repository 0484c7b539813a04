"""The precision of a lowered causal-LM step (``lm_lowering``) as ExecuTorch's Llama export
quantizes it: linears at 4 or 8 bits with int8 (dynamic where the back-end runs it) activations,
attention and its cache at the KV precision, everything else on the residual stream."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from codesign.cost_models.ir import Op, OpKind, PRICED_FREE_KINDS
from codesign.cost_models.lm_lowering import CACHE_WRITE
from codesign.cost_models.lm_recurrent import RECURRENT
from codesign.cost_models.precision_boundaries import insert_precision_boundaries
from codesign.kernels.specs import DENSE, QuantSpec


def linear_quant(backend, weight_bits: int, group_size: int,
                 stream_bits: int = 32) -> QuantSpec:
    """The precision ExecuTorch's Llama export gives linears (8da4w / 8da8w): ``weight_bits``
    weights (4-bit: group-wise, ``group_size`` per scale) with int8 dynamic activations where
    the back-end runs that (XNNPACK), else int8 static activations (the project's kernels).
    ``weight_bits`` 16 or more: not quantized, float at the stream's precision."""
    if weight_bits >= 16:
        return QuantSpec(stream_bits, stream_bits)
    group = group_size if weight_bits < 8 else 0
    tried = []
    for dynamic in (True, False):
        quant = QuantSpec(weight_bits, 8, group, dynamic)
        reason = backend.why_not(OpKind.LINEAR, quant, DENSE)
        if reason is None:
            return quant
        tried.append(reason)
    raise ValueError(tried[0])


def kv_bits(backend, act_bits: int, stream_bits: int) -> int:
    """Bits of a K/V cache element: the linears' activation bits where the back-end runs
    attention's matmuls at that precision, else the stream's (the decoder space's rule)."""
    if backend.capability(OpKind.ATTENTION) is None and \
            backend.why_not(OpKind.MATMUL, QuantSpec(act_bits, act_bits), DENSE) is None:
        return act_bits
    return stream_bits


def lm_precision(ops: Sequence[Op], backend, *, weight_bits: int, group_size: int,
                 stream_bits: int) -> tuple[list[Op], list[str]]:
    """Linears at ``linear_quant``; attention at ``kv_bits``; everything else on the
    ``stream_bits`` residual stream. A linear whose reduction length the group size does not
    divide stays at the stream precision (torchao's quantizer skips it). Returns the ops with
    precision boundaries, and the names of the linears left unquantized."""
    lin = linear_quant(backend, weight_bits, group_size, stream_bits)
    kv = QuantSpec(kv_bits(backend, lin.act_bits, stream_bits),
                   kv_bits(backend, lin.act_bits, stream_bits))
    stream = QuantSpec(stream_bits, stream_bits)
    out, skipped = [], []
    for op in ops:
        if op.kind is OpKind.LINEAR:
            if lin.group_size and op.k % lin.group_size:
                skipped.append(op.name)
                out.append(replace(op, quant=stream))
            else:
                out.append(replace(op, quant=lin))
        elif (op.kind in (OpKind.MATMUL, OpKind.ATTENTION) and op.source != RECURRENT) \
                or op.source == CACHE_WRITE:
            out.append(replace(op, quant=kv))
        else:
            out.append(replace(op, quant=stream))
    bounded = insert_precision_boundaries(out, input_bits=stream_bits)
    return drop_dynamic_dequantize(bounded), skipped


def drop_dynamic_dequantize(ops: list[Op]) -> list[Op]:
    """Remove the DEQUANTIZE after a dynamically quantized op: its kernel quantizes its input
    itself and writes float (the decoder space's rule, ``search_spaces/transformer.py``)."""
    dynamic = {op.name for op in ops if op.quant.dynamic_act}
    for op in ops:  # views of a dynamic op's output are float too
        if op.kind in PRICED_FREE_KINDS and op.inputs and op.inputs[0] in dynamic:
            dynamic.add(op.name)
    dropped = {op.name: op.inputs[0] for op in ops
               if op.kind is OpKind.DEQUANTIZE and op.inputs and op.inputs[0] in dynamic}
    if not dropped:
        return ops
    return [replace(op, inputs=tuple(dropped.get(n, n) for n in op.inputs))
            if any(n in dropped for n in op.inputs) else op
            for op in ops if op.name not in dropped]
