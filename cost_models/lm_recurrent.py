"""Recurrent state in a causal-LM step (``lm_lowering``): what linear-attention, SSM and
short-convolution layers (mamba, mamba2, qwen3 next's gated delta net, lfm2's conv, rwkv, xlstm)
run instead of attention over a K/V cache.

- **state, not K/V**: each such layer keeps a fixed-size state (a conv window of the last
  kernel-1 inputs, a recurrent matrix per head) whatever the context. ``lm_cache`` registers
  those tensors as buffers the step mutates; here they are counted apart from the K/V cache
  (``state_elems``), at the stream's precision (ExecuTorch keeps them float: they accumulate),
  and each step's write of a state is a copy of its real bytes (``STATE_WRITE``), read back by
  the ops that consume it;
- **the causal short convolution** (``aten.conv1d``, depthwise over the time axis with the
  previous window prepended): a depthwise convolution of ``kernel`` taps per channel over the
  step's tokens (a 1 x T image);
- **the scan**: the model's own reference implementation (the chunked scan of a prefill, the
  per-token update of a decode) is exported op by op: its matmuls, cumulative sums, exps and
  element-wise gates are priced by the ordinary rules, so a prefill pays its real scan work and
  a decode its state read-modify-write; its matmuls at the stream's precision
  (``recurrent_matmuls``), not at the int8 of attention over a K/V cache.
"""
from __future__ import annotations

import torch

from codesign.cost_models.ir import Op, OpKind
from codesign.cost_models.lowering_rules import LoweringError, node_shape as _shape

aten = torch.ops.aten

STATE_WRITE = "state_write"  # the ``source`` of an op storing a recurrent / conv state
RECURRENT = "recurrent"  # the ``source`` of a matmul of a recurrent layer's scan / state update
CONV1D = {aten.conv1d.default, aten.conv1d.padding, aten.convolution.default}


def is_conv1d(node) -> bool:
    if node.target not in CONV1D or len(node.args) < 2:
        return False
    w = node.args[1]
    return isinstance(w, torch.fx.Node) and len(_shape(w)) == 3


def conv1d(lw, node) -> None:
    """A 1-D convolution (B, Cin, T) * (Cout, Cin/groups, K) as a 1 x T 2-D one."""
    x, w = node.args[0], node.args[1]
    if node.target is aten.convolution.default:
        if node.args[6]:
            raise LoweringError(f"transposed 1-D convolution {node.name} has no lowering rule")
        groups = int(node.args[8])
    else:
        groups = int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))
    xs, (cout, cin_g, taps), out = _shape(x), _shape(w), _shape(node)
    if len(xs) == 2:  # unbatched
        xs, out = (1, *xs), (1, *out)
    m, n, k = out[0] * out[2], cout // groups, cin_g * taps
    depthwise = groups > 1 and cin_g == 1 and groups == xs[1]
    lw.emit(node, Op(lw.name_for(node), OpKind.DEPTHWISE_CONV2D if depthwise else OpKind.CONV2D,
                     (out[0], out[1], 1, out[2]), ((xs[0], xs[1], 1, xs[2]),), m=m, n=n, k=k,
                     groups=groups, flops=2.0 * m * n * k * groups, weight_elems=cout * cin_g * taps,
                     out_channels=cout, inputs=(lw.producer(x),), source=str(node.target)))


def recurrent_matmuls(ops, modules: set[str]):
    """The matmuls of a module that reads or writes a recurrent state (its chunked scan, its
    state update) run at the stream's precision, not on the K/V cache's int8 as attention's do:
    tagged ``RECURRENT`` for ``lm_precision`` (the ATen op kept as ``aten``)."""
    from dataclasses import replace

    return [replace(op, source=RECURRENT, aten=op.runtime_op)
            if op.kind is OpKind.MATMUL and op.name.split("#")[0] in modules else op
            for op in ops]
