"""The lowering rules: which op-list IR record each ATen op of an exported program becomes.

The rule set is table-driven. An op is in exactly one of:
- ``FREE_TARGETS``: no data moves (views that keep the element order, eval-mode dropout in every
  form, metadata assertions): an ``OpKind.FREE`` record, priced at zero by that rule.
- ``ACTIVATIONS`` / ``BATCHNORM``: fused into their producer where it alone reads them
  (``codesign.cost_models.lowering``).
- ``GENERATORS``: constants and index tensors built from static shapes (arange, zeros, ...):
  folded, as a constant-propagating exporter does.
- ``RULES``: every other op, by a function of (lowerer, node) that emits the op's records with
  its FLOPs and the bytes it reads and writes. The simple ones come from the tables below:
  ``ELEMENTWISE`` (kind, FLOPs per output element), ``REDUCTIONS`` (FLOPs per input element),
  ``COPIES`` (data movement only), ``GATHERS``, ``NORMS``, ``RESIZES``, ``SELECTIONS``.
An op in none of them has no rule, and lowering it raises ``LoweringError`` naming it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from codesign.cost_models.ir import OpKind, Op

aten = torch.ops.aten


class LoweringError(ValueError):
    """The model cannot be lowered; the message names the op and why."""


def node_val(node):
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, (tuple, list)):
        val = val[0] if val else None
    return val


def _dim(node, d) -> int:
    """A size; a data-dependent one (an MoE's rows per expert) by the values the graph was
    given for its symbols (``graph.unbacked_values``, ``lm_unbacked``), else an error."""
    if isinstance(d, int):
        return d
    values = getattr(getattr(node, "graph", None), "unbacked_values", None) or {}
    expr = getattr(getattr(d, "node", None), "expr", None)
    if expr is not None and values and expr.free_symbols <= set(values):
        return int(expr.subs(values))
    try:
        return int(d)
    except Exception:  # noqa: BLE001 - torch raises its own guard errors for unbacked sizes
        raise TypeError(d) from None


def node_shape(node) -> tuple[int, ...]:
    val = node_val(node)
    if val is None or not hasattr(val, "shape"):
        raise LoweringError(f"node {node} has no static shape")
    try:
        return tuple(_dim(node, d) for d in val.shape)
    except TypeError:
        raise LoweringError(f"node {node} has a dynamic shape {tuple(val.shape)}; "
                            "give a fixed --input-shape") from None


def node_shapes(node) -> list[tuple[int, ...]]:
    """Every output's shape (a split or unbind has several)."""
    vals = node.meta.get("val")
    vals = vals if isinstance(vals, (tuple, list)) else [vals]
    try:
        return [tuple(_dim(node, d) for d in v.shape) for v in vals if hasattr(v, "shape")]
    except TypeError:
        raise LoweringError(f"node {node} has a dynamic shape; give a fixed "
                            "--input-shape") from None


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


# ------------------------------------------------------------------------------------ tables
# Views that keep the element order (ExecuTorch's memory planner turns view_copy into a view),
# eval-mode dropout in every form, and assertions on metadata: no kernel runs.
FREE_TARGETS = {
    aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default, aten.expand.default,
    aten.expand_as.default, aten.dropout.default, aten.dropout_.default, aten.clone.default,
    aten.contiguous.default, aten.alias.default, aten.detach.default, aten.detach_.default,
    aten.feature_dropout.default, aten.feature_dropout_.default, aten.alpha_dropout.default,
    aten.alpha_dropout_.default, aten.feature_alpha_dropout.default, aten.unflatten.int,
    aten._unsafe_view.default, aten.lift_fresh_copy.default, aten.reshape_as.default,
    aten.view_as.default, aten.broadcast_to.default, aten.meshgrid.default,
    aten.meshgrid.indexing, aten._assert_tensor_metadata.default, aten._assert_async.msg,
    aten._assert_async.default, aten._assert_scalar.default,
    # one scalar read back for a check (static in practice, so folded)
    aten.item.default, aten._local_scalar_dense.default,
    aten.unsqueeze_.default, aten.squeeze_.dim, aten.resolve_conj.default,
    aten.resolve_neg.default,
}
ACTIVATIONS = {
    aten.relu.default: "relu", aten.relu_.default: "relu", aten.hardtanh.default: "hardtanh",
    aten.hardtanh_.default: "hardtanh", aten.relu6.default: "relu6",
    aten.hardswish.default: "hardswish", aten.hardswish_.default: "hardswish",
    aten.silu.default: "silu", aten.silu_.default: "silu", aten.gelu.default: "gelu",
    aten.gelu_.default: "gelu", aten.sigmoid.default: "sigmoid", aten.sigmoid_.default: "sigmoid",
    aten.hardsigmoid.default: "hardsigmoid", aten.hardsigmoid_.default: "hardsigmoid",
    aten.clamp.default: "clamp", aten.clamp_.default: "clamp", aten.tanh.default: "tanh",
    aten.tanh_.default: "tanh", aten.leaky_relu.default: "leaky_relu",
    aten.leaky_relu_.default: "leaky_relu", aten.elu.default: "elu", aten.elu_.default: "elu",
    aten.mish.default: "mish", aten.softplus.default: "softplus", aten.prelu.default: "prelu",
}
BATCHNORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
# Tensors made from shapes alone: static once the input shape is fixed, so priced as constants.
GENERATORS = {
    aten.arange.default, aten.arange.start, aten.arange.start_step, aten.full.default,
    aten.zeros.default, aten.ones.default, aten.empty.memory_format, aten.zeros_like.default,
    aten.ones_like.default, aten.full_like.default, aten.empty_like.default,
    aten.new_ones.default, aten.new_zeros.default, aten.new_full.default,
    aten.new_empty.default, aten.linspace.default, aten.scalar_tensor.default, aten.eye.default,
    aten.tril.default, aten.triu.default,
}
# dtype conversions: free when the dtype does not change (a no-op cast), else one pass.
CASTS = {aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device,
         aten.to.other, aten.type_as.default}

_TRANSCENDENTAL = 8.0  # a vectorised exp/log/erf/sin: range reduction + a degree-5..7 polynomial
_DIVIDE = 4.0  # a vector divide or square root issues at a fraction of the FMA rate
ELEMENTWISE: dict = {
    **{t: (OpKind.ADD, 1.0) for t in (
        aten.add.Scalar, aten.sub.Scalar, aten.sub_.Tensor, aten.rsub.Scalar, aten.rsub.Tensor,
        aten.add_.Scalar)},
    **{t: (OpKind.MUL, 1.0) for t in (
        aten.mul.Scalar, aten.mul_.Scalar, aten.div.Scalar, aten.div_.Scalar, aten.div_.Tensor,
        aten.div.Tensor_mode)},
    **{t: (OpKind.ELEMENTWISE, 1.0) for t in (
        aten.neg.default, aten.abs.default, aten.abs_.default, aten.sign.default,
        aten.square.default, aten.floor.default, aten.ceil.default, aten.round.default,
        aten.trunc.default, aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf,
        aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.masked_fill_.Scalar,
        aten.masked_fill_.Tensor, aten.eq.Scalar, aten.eq.Tensor, aten.ne.Scalar, aten.ne.Tensor,
        aten.lt.Scalar, aten.lt.Tensor, aten.le.Scalar, aten.le.Tensor, aten.gt.Scalar,
        aten.gt.Tensor, aten.ge.Scalar, aten.ge.Tensor, aten.logical_and.default,
        aten.logical_or.default, aten.logical_not.default, aten.logical_xor.default,
        aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, aten.bitwise_not.default,
        aten.__and__.Tensor, aten.__or__.Tensor, aten.clamp_min.default,
        aten.clamp_min_.default, aten.clamp_max.default, aten.clamp.Tensor,
        aten.minimum.default, aten.maximum.default, aten.remainder.Scalar,
        aten.remainder.Tensor, aten.fmod.Scalar, aten.floor_divide.default, aten.lerp.Scalar,
        aten.pow.Tensor_Scalar, aten.addcmul.default, aten.isnan.default, aten.sgn.default)},
    **{t: (OpKind.ELEMENTWISE, _DIVIDE) for t in (
        aten.sqrt.default, aten.sqrt_.default, aten.rsqrt.default, aten.rsqrt_.default,
        aten.reciprocal.default, aten.reciprocal_.default)},
    **{t: (OpKind.ELEMENTWISE, _TRANSCENDENTAL) for t in (
        aten.exp.default, aten.exp_.default, aten.log.default, aten.log1p.default,
        aten.log2.default, aten.sin.default, aten.cos.default, aten.erf.default,
        aten.erfinv.default, aten.pow.Tensor_Tensor, aten.pow.Scalar, aten.atan2.default,
        aten.expm1.default)},
}
# Reductions read every input element: FLOPs per input element.
REDUCTIONS = {
    aten.sum.dim_IntList: 1.0, aten.sum.default: 1.0, aten.mean.default: 1.0,
    aten.amax.default: 1.0, aten.amin.default: 1.0, aten.max.dim: 1.0, aten.min.dim: 1.0,
    aten.max.default: 1.0, aten.min.default: 1.0, aten.argmax.default: 1.0,
    aten.argmin.default: 1.0, aten.prod.dim_int: 1.0, aten.any.dim: 1.0, aten.all.dim: 1.0,
    aten.any.default: 1.0, aten.all.default: 1.0, aten._is_all_true.default: 1.0,
    aten._is_any_true.default: 1.0,
    aten.var.correction: 3.0, aten.var_mean.correction: 3.0, aten.std.correction: 3.0,
    aten.std_mean.correction: 3.0, aten.linalg_vector_norm.default: 2.0,
    aten.norm.ScalarOpt_dim: 2.0, aten.logsumexp.default: 1.0 + _TRANSCENDENTAL,
    aten.cumsum.default: 1.0,
}
# Data movement with no arithmetic: the output is written from a rearranged read of the input.
COPIES = {
    aten.permute.default, aten.transpose.int, aten.t.default, aten.numpy_T.default,
    aten.repeat.default, aten.roll.default, aten.flip.default, aten.im2col.default,
    aten.col2im.default, aten.pixel_shuffle.default, aten.pixel_unshuffle.default,
    aten.repeat_interleave.self_int, aten.unfold.default, aten.movedim.int,
    aten.swapaxes.default, aten.channel_shuffle.default, aten.tile.default,
}
# Writes into a copy of the first input: reads and writes it whole.
SCATTERS = {aten.index_put.default, aten.index_put_.default, aten.masked_scatter.default,
            aten.scatter.src, aten.scatter.value, aten.slice_scatter.default,
            aten.select_scatter.default, aten.index_copy.default}
# Reads one row per index: the output's elements and the indices, not the whole table.
GATHERS = {aten.index.Tensor: OpKind.LAYOUT, aten.index_select.default: OpKind.LAYOUT,
           aten.gather.default: OpKind.LAYOUT, aten.embedding.default: OpKind.EMBEDDING}
NORMS = {  # FLOPs per element: mean, variance, normalise, scale and shift
    aten.layer_norm.default: 5.0, aten.native_layer_norm.default: 5.0,
    aten.group_norm.default: 5.0, aten.native_group_norm.default: 5.0,
    aten.instance_norm.default: 5.0, aten.rms_norm.default: 4.0,
}
# Interpolation: FLOPs per output element (taps x a multiply-add; nearest only indexes).
RESIZES = {
    aten.upsample_nearest2d.vec: 1.0, aten.upsample_nearest2d.default: 1.0,
    aten._upsample_nearest_exact2d.vec: 1.0, aten._upsample_nearest_exact2d.default: 1.0,
    aten.upsample_nearest1d.vec: 1.0, aten.upsample_bilinear2d.vec: 8.0,
    aten.upsample_bilinear2d.default: 8.0, aten._upsample_bilinear2d_aa.vec: 8.0,
    aten._upsample_bilinear2d_aa.default: 8.0, aten.upsample_linear1d.vec: 4.0,
    aten.upsample_bicubic2d.vec: 32.0, aten.upsample_bicubic2d.default: 32.0,
    aten.grid_sampler_2d.default: 8.0,
}
# Views that pick a part of a tensor: ExecuTorch runs them as *_copy kernels (select_copy,
# slice_copy, split_with_sizes_copy, unbind_copy; XNNPACK's static slice), so they copy what they
# keep, unless they keep everything (a no-op, removed by the exporter).
SELECTIONS = {aten.select.int, aten.slice.Tensor, aten.narrow.default, aten.unbind.int,
              aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
              aten.tensor_split.sections, aten.diagonal.default, aten.as_strided.default}


# ------------------------------------------------------------------------------------ rules
def _conv(lw, node) -> None:
    x, w = node.args[0], node.args[1]
    groups = int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))
    if node.target is aten.convolution.default:
        groups = int(node.args[8])
        if node.args[6]:
            raise LoweringError(f"transposed convolution {node.name} has no lowering rule")
    # padding="same" (aten.conv2d.padding) needs no padding arithmetic: the output shape is read
    # from the node, and the FLOPs follow from it as for any convolution
    xs, ws, out = node_shape(x), node_shape(w), node_shape(node)
    if len(ws) != 4:
        raise LoweringError(f"{node.name}: only 2-D convolutions are supported, got weight {ws}")
    cout, cin_g, kh, kw = ws
    m = out[0] * out[2] * out[3]
    n, k = cout // groups, cin_g * kh * kw
    depthwise = groups > 1 and cin_g == 1 and groups == xs[1]
    lw.emit(node, Op(
        lw.name_for(node), OpKind.DEPTHWISE_CONV2D if depthwise else OpKind.CONV2D, out, (xs,),
        m=m, n=n, k=k, groups=groups, flops=2.0 * m * n * k * groups, weight_elems=numel(ws),
        out_channels=cout, inputs=(lw.producer(x),), source=str(node.target)))


def _linear_op(lw, node, x, ws: tuple[int, int]) -> None:
    """x @ W with a stored W of shape (N, K)."""
    xs, out = node_shape(x), node_shape(node)
    n, k = ws
    m = numel(xs[:-1])
    lw.emit(node, Op(lw.name_for(node), OpKind.LINEAR, out, (xs,), m=m, n=n, k=k,
                     flops=2.0 * m * n * k, weight_elems=n * k, out_channels=n,
                     inputs=(lw.producer(x),), source=str(node.target)))


def _linear(lw, node) -> None:
    _linear_op(lw, node, node.args[0], node_shape(node.args[1]))


def _addmm(lw, node) -> None:
    _bias, x, wt = node.args[:3]
    if lw.is_param(wt):
        k, n = node_shape(wt)
        _linear_op(lw, node, x, (n, k))
    else:
        matmul_rule(lw, node, x, wt)


def matmul_rule(lw, node, a=None, b=None) -> None:
    a = node.args[0] if a is None else a
    b = node.args[1] if b is None else b
    if lw.is_param(b) and len(node_shape(b)) == 2:  # x @ W with a parameter: a linear layer
        k, n = node_shape(b)
        return _linear_op(lw, node, a, (n, k))
    as_, bs, out = node_shape(a), node_shape(b), node_shape(node)
    m, k, n = as_[-2] if len(as_) > 1 else 1, as_[-1], bs[-1]
    batch = numel(out[:-2]) if len(out) > 2 else 1
    lw.emit(node, Op(lw.name_for(node), OpKind.MATMUL, out, (as_, bs), m=m, n=n, k=k,
                     groups=batch, flops=2.0 * m * n * k * batch,
                     inputs=(lw.producer(a), lw.producer(b)), source=str(node.target)))


def _baddbmm(lw, node) -> None:
    matmul_rule(lw, node, node.args[1], node.args[2])


def _einsum(lw, node) -> None:
    """A two-operand contraction as the batched matmul it is: the equation's letters in both
    operands and the output are the batch, the ones in neither output are the reduction."""
    equation, operands = node.args[0], node.args[1]
    if len(operands) != 2 or "..." in equation or "->" not in equation:
        raise LoweringError(f"einsum {equation!r} (node {node.name}): only explicit two-operand "
                            "contractions have a rule")
    (sa, sb), so = equation.replace(" ", "").split("->")[0].split(","), equation.split("->")[1]
    a, b = operands
    size = dict(zip(sa, node_shape(a))) | dict(zip(sb, node_shape(b)))
    prod = lambda letters: numel([size[c] for c in letters])  # noqa: E731
    batch = prod(c for c in set(sa) & set(sb) if c in so)
    m = prod(c for c in set(sa) - set(sb) if c in so)
    n = prod(c for c in set(sb) - set(sa) if c in so)
    k = prod(c for c in set(sa) | set(sb) if c not in so)
    lw.emit(node, Op(lw.name_for(node), OpKind.MATMUL, node_shape(node),
                     (node_shape(a), node_shape(b)), m=m, n=n, k=k, groups=batch,
                     flops=2.0 * m * n * k * batch, inputs=(lw.producer(a), lw.producer(b)),
                     source=str(node.target)))


def _sdpa(lw, node) -> None:
    """Scaled dot-product attention as the exported program runs it on a CPU back-end: ExecuTorch
    takes PyTorch's math decomposition. Q and K are each scaled by sqrt(scale); scores = Q K^T
    (batched over heads); with a mask (or is_causal), the mask is added (a boolean one turned
    into 0 / -inf first, in every call: ExecuTorch runs that select) and the softmax is the
    "safe" one, which zeroes rows that are wholly masked: a compare over the scores, a row
    reduction and a select; then context = P V."""
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    causal = bool(node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False))
    qs, ks, vs, out = node_shape(q), node_shape(k), node_shape(v), node_shape(node)
    length, e, s, ev = qs[-2], qs[-1], ks[-2], vs[-1]
    batch = numel(qs[:-2])
    base, src = lw.name_for(node), str(node.target)
    sc = qs[:-2] + (length, s)  # the scores
    n_sc = float(numel(sc))

    def add(suffix, kind, shape, in_shapes, inputs, flops=0.0, aten="", **gemm):
        lw.emit(node, Op(f"{base}.{suffix}", kind, shape, in_shapes, flops=flops,
                         inputs=inputs, source=src, aten=aten, **gemm))
        return f"{base}.{suffix}"

    sq = add("scale_q", OpKind.MUL, qs, (qs,), (lw.producer(q),), float(numel(qs)))
    sk = add("scale_k", OpKind.MUL, ks, (ks,), (lw.producer(k),), float(numel(ks)))
    x = add("scores", OpKind.MATMUL, sc, (qs, ks), (sq, sk), 2.0 * length * s * e * batch,
            m=length, n=s, k=e, groups=batch)
    masked = isinstance(mask, torch.fx.Node) or causal
    if masked:
        mask_shape = node_shape(mask) if isinstance(mask, torch.fx.Node) else (length, s)
        m = lw.producer(mask)
        if not isinstance(mask, torch.fx.Node) or node_val(mask).dtype == torch.bool:
            # a boolean (or causal) mask becomes 0 / -inf in every call: a select over the mask
            m = add("mask_values", OpKind.ELEMENTWISE, mask_shape, (mask_shape,), (m,),
                    float(numel(mask_shape)), aten="aten.where.self")
        x = add("mask", OpKind.ADD, sc, (sc, mask_shape), (x, m), n_sc)
    p = add("softmax", OpKind.SOFTMAX, sc, (sc,), (x,), 5.0 * n_sc)
    if masked:
        rows = sc[:-1] + (1,)
        # the ATen kernels PyTorch's _safe_softmax decomposes into (ExecuTorch runs them)
        hit = add("masked", OpKind.ELEMENTWISE, sc, (sc,), (x,), n_sc, aten="aten.eq.Scalar")
        dead = add("masked_rows", OpKind.GLOBAL_POOL, rows, (sc,), (hit,), n_sc,
                   aten="aten.any.dim")
        p = add("safe_softmax", OpKind.ELEMENTWISE, sc, (sc, rows), (p, dead), n_sc,
                aten="aten.where.self")
    add("context", OpKind.MATMUL, out, (sc, vs), (p, lw.producer(v)),
        2.0 * length * ev * s * batch, m=length, n=ev, k=s, groups=batch)


def _pool(kind: OpKind) -> Callable:
    def rule(lw, node) -> None:
        ks = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size", 1)
        area = math.prod(ks) if isinstance(ks, (list, tuple)) else int(ks) ** 2
        lw.simple(node, kind, flops_per_elem=float(area))
    return rule


def _adaptive_pool(kind: OpKind) -> Callable:
    def rule(lw, node) -> None:
        pooled_to_one = math.prod(node_shape(node)[2:]) == 1
        lw.simple(node, OpKind.GLOBAL_POOL if pooled_to_one else kind, from_input=True)
    return rule


def _elementwise(kind: OpKind, flops: float) -> Callable:
    def rule(lw, node) -> None:
        lw.simple(node, kind, flops)
    return rule


def _reduction(flops: float) -> Callable:
    def rule(lw, node) -> None:
        lw.simple(node, OpKind.GLOBAL_POOL, flops, from_input=True)
    return rule


def _copy(lw, node) -> None:
    lw.simple(node, OpKind.LAYOUT, flops_per_elem=0.0)


def _scatter(lw, node) -> None:
    lw.simple(node, OpKind.LAYOUT, flops_per_elem=0.0)


def _gather(kind: OpKind) -> Callable:
    def rule(lw, node) -> None:
        ins = lw.tensor_inputs(node)
        out = node_shape(node)
        # the source tensor is read only where indexed: the output's worth, plus the indices
        index_shapes = tuple(node_shape(x) for x in ins[1:] if x is not node.args[0])
        if node.target is aten.embedding.default:  # embedding(weight, indices)
            index_shapes = (node_shape(node.args[1]),)
        lw.emit(node, Op(lw.name_for(node), kind, out, (out,) + index_shapes,
                         inputs=tuple(lw.producer(x) for x in ins), source=str(node.target)))
    return rule


def _cast(lw, node) -> None:
    src = node.args[0]
    before, after = node_val(src), node_val(node)
    if before is not None and after is not None and before.dtype == after.dtype:
        return lw.free(node)  # a cast to the dtype it already has: no kernel
    lw.simple(node, OpKind.ELEMENTWISE, 1.0)


def _selection(lw, node) -> None:
    src = node.args[0]
    in_shape, outs = node_shape(src), node_shapes(node)
    if len(outs) == 1 and outs[0] == in_shape:
        return lw.free(node)  # keeps the whole tensor: removed as a no-op
    out = outs[0] if len(outs) == 1 else in_shape
    kept = (out,) if len(outs) == 1 else (in_shape,)
    lw.emit(node, Op(lw.name_for(node), OpKind.LAYOUT, out, kept, inputs=(lw.producer(src),),
                     source=str(node.target)))


RULES: dict = {
    aten.conv2d.default: _conv, aten.conv2d.padding: _conv, aten.convolution.default: _conv,
    aten.linear.default: _linear, aten.addmm.default: _addmm,
    aten.matmul.default: matmul_rule, aten.mm.default: matmul_rule, aten.bmm.default: matmul_rule,
    aten.baddbmm.default: _baddbmm, aten.einsum.default: _einsum,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten.add.Tensor: _elementwise(OpKind.ADD, 1.0), aten.add_.Tensor: _elementwise(OpKind.ADD, 1.0),
    aten.sub.Tensor: _elementwise(OpKind.ADD, 1.0), aten.mul.Tensor: _elementwise(OpKind.MUL, 1.0),
    aten.mul_.Tensor: _elementwise(OpKind.MUL, 1.0), aten.div.Tensor: _elementwise(OpKind.MUL, 1.0),
    aten.max_pool2d.default: _pool(OpKind.MAX_POOL),
    aten.max_pool2d_with_indices.default: _pool(OpKind.MAX_POOL),
    aten.avg_pool2d.default: _pool(OpKind.AVG_POOL),
    aten.adaptive_avg_pool2d.default: _adaptive_pool(OpKind.AVG_POOL),
    aten.adaptive_avg_pool1d.default: _adaptive_pool(OpKind.AVG_POOL),
    aten.adaptive_max_pool2d.default: _adaptive_pool(OpKind.MAX_POOL),
    aten.mean.dim: _reduction(1.0),
    aten.softmax.int: _elementwise(OpKind.SOFTMAX, 5.0),
    aten._softmax.default: _elementwise(OpKind.SOFTMAX, 5.0),
    aten.log_softmax.int: _elementwise(OpKind.SOFTMAX, 5.0),
    aten._log_softmax.default: _elementwise(OpKind.SOFTMAX, 5.0),
    aten.cat.default: _elementwise(OpKind.CONCAT, 0.0),
    aten.concat.default: _elementwise(OpKind.CONCAT, 0.0),
    aten.stack.default: _elementwise(OpKind.CONCAT, 0.0),
    aten.constant_pad_nd.default: _elementwise(OpKind.PAD, 0.0),
    aten.pad.default: _elementwise(OpKind.PAD, 0.0),
    aten.reflection_pad2d.default: _elementwise(OpKind.PAD, 0.0),
    aten.replication_pad2d.default: _elementwise(OpKind.PAD, 0.0),
    **{t: _elementwise(kind, flops) for t, (kind, flops) in ELEMENTWISE.items()},
    **{t: _reduction(flops) for t, flops in REDUCTIONS.items()},
    **{t: _elementwise(OpKind.NORM, flops) for t, flops in NORMS.items()},
    **{t: _elementwise(OpKind.ELEMENTWISE, flops) for t, flops in RESIZES.items()},
    **{t: _copy for t in COPIES},
    **{t: _scatter for t in SCATTERS},
    **{t: _gather(kind) for t, kind in GATHERS.items()},
    **{t: _cast for t in CASTS},
    **{t: _selection for t in SELECTIONS},
}
# ATen's spelled-out aliases run the same kernels
RULES.update({aten.multiply.Tensor: RULES[aten.mul.Tensor],
              aten.subtract.Tensor: RULES[aten.sub.Tensor],
              aten.divide.Tensor: RULES[aten.div.Tensor]})
# Layers run even when every input is a constant (a zero buffer of NAS-Bench-201 still feeds its
# convolutions on the devices HELP measured, search_spaces/nasbench201.py): only the index, mask
# and position arithmetic around them is folded.
LAYERS = {aten.conv2d.default, aten.conv2d.padding, aten.convolution.default,
          aten.linear.default, aten.addmm.default, aten.matmul.default, aten.mm.default,
          aten.bmm.default, aten.baddbmm.default, aten.einsum.default,
          aten.scaled_dot_product_attention.default, aten.max_pool2d.default,
          aten.max_pool2d_with_indices.default, aten.avg_pool2d.default,
          aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool1d.default,
          aten.adaptive_max_pool2d.default, aten.softmax.int, aten._softmax.default,
          aten.log_softmax.int, aten._log_softmax.default, *NORMS, *ACTIVATIONS, *BATCHNORM}
# Ops that draw random numbers are never folded as constants, whatever their inputs.
RANDOM = {aten.rand.default, aten.randn.default, aten.rand_like.default, aten.randn_like.default,
          aten.bernoulli.default, aten.randint.default, aten.normal.Tensor_float}
