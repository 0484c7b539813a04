"""Precision boundaries in an op list: the priced QUANTIZE/DEQUANTIZE ops where activations
change bits. Apart from ``codesign.cost_models.lowering`` (torch.export) so that spaces which build
their op lists directly, and the pricing path, run without importing torch.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from codesign.cost_models.ir import Op, OpKind, PRICED_FREE_KINDS
from codesign.kernels.specs import QuantSpec


def insert_precision_boundaries(ops: Sequence[Op], input_bits: int = 32) -> list[Op]:
    """Insert a QUANTIZE (to fewer bits) or DEQUANTIZE (to more) wherever an op reads
    activations at another precision than their producer wrote them.

    Free ops take the precision of what they alias. The model input arrives at ``input_bits``.
    """
    bits_of: dict[str, int] = {"": input_bits}
    shape_of: dict[str, tuple[int, ...]] = {}
    converted: dict[tuple[str, int], str] = {}
    result: list[Op] = []
    for op in ops:
        if op.kind in PRICED_FREE_KINDS:
            src = op.inputs[0] if op.inputs else ""
            bits = bits_of.get(src, input_bits)
            same = op.quant.act_bits == bits and op.quant.weight_bits == bits
            result.append(op if same else replace(op, quant=QuantSpec(bits, bits)))
            bits_of[op.name], shape_of[op.name] = bits, op.out_shape
            continue
        want = op.quant.act_bits
        new_inputs = []
        for j, src in enumerate(op.inputs):
            have = bits_of.get(src, input_bits)
            if have == want:
                new_inputs.append(src)
                continue
            key = (src, want)
            if key not in converted:
                shape = shape_of.get(src, op.in_shapes[j] if j < len(op.in_shapes) else op.out_shape)
                result.append(boundary_op(src, shape, want, have))
                name = result[-1].name
                converted[key] = name
                bits_of[name], shape_of[name] = want, shape
            new_inputs.append(converted[key])
        new_inputs = tuple(new_inputs)
        result.append(op if new_inputs == op.inputs else replace(op, inputs=new_inputs))
        bits_of[op.name], shape_of[op.name] = want, op.out_shape
    last = result[-1]
    if bits_of.get(last.name, 32) != 32:  # the caller gets float outputs back
        result.append(boundary_op(last.name, last.out_shape, 32, bits_of[last.name]))
    return result


def boundary_op(src: str, shape: tuple[int, ...], want: int, have: int) -> Op:
    """The op converting ``src``'s output (``shape``) from ``have`` to ``want`` activation bits:
    a QUANTIZE to fewer bits, a DEQUANTIZE to more (``src`` "" is the model input)."""
    kind = OpKind.QUANTIZE if want < have else OpKind.DEQUANTIZE
    wide = max(want, have)
    return Op(f"{src or 'input'}:{kind.value}{want}", kind, shape, (shape,),
              flops=float(math.prod(shape)), quant=QuantSpec(wide, wide), inputs=(src,))
