"""Lower any ``torch.nn.Module`` to the op-list IR through ``torch.export``.

The lowering follows what on-device runtimes execute, not the Python module tree:
- BatchNorm in inference mode following a convolution or linear layer whose output it alone reads
  is folded into that layer (its weights absorb the affine transform);
- activations and clamps (ReLU, ReLU6/hardtanh, hardswish, SiLU, GELU, sigmoid, clamp) are fused
  into the producer they alone read from (XNNPACK's output clamps and fused activations);
- view/reshape/flatten/squeeze/unsqueeze/expand/dropout/clone/contiguous/alias are ``FREE``: priced
  at zero by that explicit rule (no data moves, or the runtime elides them);
- every other ATen op needs a rule in ``_RULES``; an op without one is an error, never 0 ms.
Precision boundaries (``apply_precision``) insert priced quantize/dequantize ops.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import torch

from codesign.cost_models.ir import GEMM_KINDS, Op, OpKind, PRICED_FREE_KINDS, WEIGHTED_KINDS
# the precision passes need no torch: they live apart so that pricing can run without it
from codesign.cost_models.precision_boundaries import boundary_op, insert_precision_boundaries
from codesign.kernels.specs import QuantSpec

aten = torch.ops.aten


class LoweringError(ValueError):
    """The model cannot be lowered; the message names the op and why."""


def _shape(node) -> tuple[int, ...]:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, (tuple, list)):
        val = val[0]
    if val is None or not hasattr(val, "shape"):
        raise LoweringError(f"node {node} has no static shape")
    try:
        return tuple(int(d) for d in val.shape)
    except TypeError:
        raise LoweringError(f"node {node} has a dynamic shape {tuple(val.shape)}; "
                            "give a fixed --input-shape") from None


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


_FREE_TARGETS = {
    aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default, aten.expand.default,
    aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
    aten.detach.default, aten.feature_dropout.default, aten.alpha_dropout.default,
    aten.unflatten.int, aten._unsafe_view.default, aten.lift_fresh_copy.default,
}
_ACTIVATIONS = {
    aten.relu.default: "relu", aten.relu_.default: "relu", aten.hardtanh.default: "hardtanh",
    aten.hardtanh_.default: "hardtanh", aten.relu6.default: "relu6",
    aten.hardswish.default: "hardswish", aten.hardswish_.default: "hardswish",
    aten.silu.default: "silu", aten.silu_.default: "silu", aten.gelu.default: "gelu",
    aten.sigmoid.default: "sigmoid", aten.sigmoid_.default: "sigmoid",
    aten.hardsigmoid.default: "hardsigmoid", aten.hardsigmoid_.default: "hardsigmoid",
    aten.clamp.default: "clamp", aten.clamp_.default: "clamp", aten.tanh.default: "tanh",
    aten.leaky_relu.default: "leaky_relu", aten.elu.default: "elu",
}
_BATCHNORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_FUSE_INTO = {OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR, OpKind.MATMUL, OpKind.ADD,
              OpKind.MUL, OpKind.NORM}


class _Lowerer:
    def __init__(self, ep: torch.export.ExportedProgram) -> None:
        self.ep = ep
        self.graph = ep.graph
        sig = ep.graph_signature
        self.params = set(sig.inputs_to_parameters) | set(sig.inputs_to_buffers) | set(
            getattr(sig, "inputs_to_lifted_tensor_constants", {}))
        self.ops: list[Op] = []
        self.value_of: dict[torch.fx.Node, str] = {}  # node -> name of the op producing it
        self.index: dict[str, int] = {}
        self.names: dict[str, int] = {}

    # ---------------------------------------------------------------- helpers
    def name_for(self, node: torch.fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        base = list(stack.values())[-1][0] if stack else node.name
        base = base.replace("L['self'].", "").replace("L__self___", "") or node.name
        count = self.names.get(base, 0)
        self.names[base] = count + 1
        return base if count == 0 else f"{base}#{count}"

    def producer(self, arg) -> str:
        if isinstance(arg, torch.fx.Node):
            return self.value_of.get(arg, "")
        return ""

    def tensor_inputs(self, node) -> list[torch.fx.Node]:
        out = []
        for a in node.args:
            items = a if isinstance(a, (list, tuple)) else [a]
            out += [x for x in items if isinstance(x, torch.fx.Node) and x.name not in self.params]
        return out

    def emit(self, node, op: Op) -> None:
        self.index[op.name] = len(self.ops)
        self.ops.append(op)
        self.value_of[node] = op.name

    def sole_user(self, node: torch.fx.Node, producer: torch.fx.Node) -> bool:
        return isinstance(producer, torch.fx.Node) and len(producer.users) == 1 and \
            producer in self.value_of and self.value_of[producer] in self.index

    # ---------------------------------------------------------------- main loop
    def run(self) -> list[Op]:
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.value_of[node] = "" if node.name not in self.params else node.name
            elif node.op == "call_function":
                self.lower(node)
        return self.ops

    def lower(self, node: torch.fx.Node) -> None:
        target = node.target
        if target is __import__("operator").getitem:
            self.value_of[node] = self.producer(node.args[0])
            return
        if target in _FREE_TARGETS:
            src = node.args[0]
            op = Op(self.name_for(node), OpKind.FREE, _shape(node),
                    (_shape(src),) if isinstance(src, torch.fx.Node) else (),
                    inputs=(self.producer(src),), source=str(target))
            self.emit(node, op)
            return
        if target in _ACTIVATIONS:
            return self.activation(node, _ACTIVATIONS[target])
        if target in _BATCHNORM:
            return self.batchnorm(node)
        rule = _RULES.get(target)
        if rule is None:
            raise LoweringError(f"no lowering rule for {target} (node {node.name}); "
                                "it cannot be priced")
        rule(self, node)

    def activation(self, node, label: str) -> None:
        src = node.args[0]
        if self.sole_user(node, src):
            i = self.index[self.value_of[src]]
            if self.ops[i].kind in _FUSE_INTO:
                self.ops[i] = replace(self.ops[i], fused=self.ops[i].fused + (label,))
                self.value_of[node] = self.ops[i].name
                return
        shape = _shape(node)
        self.emit(node, Op(self.name_for(node), OpKind.ELEMENTWISE, shape, (_shape(src),),
                           flops=float(_numel(shape)), inputs=(self.producer(src),),
                           fused=(label,), source=str(node.target)))

    def batchnorm(self, node) -> None:
        src = node.args[0]
        if self.sole_user(node, src):
            i = self.index[self.value_of[src]]
            if self.ops[i].kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR) \
                    and not self.ops[i].fused:
                self.ops[i] = replace(self.ops[i], fused=self.ops[i].fused + ("batchnorm",))
                self.value_of[node] = self.ops[i].name
                return
        shape = _shape(node)
        self.emit(node, Op(self.name_for(node), OpKind.NORM, shape, (_shape(src),),
                           flops=2.0 * _numel(shape), weight_elems=0,
                           inputs=(self.producer(src),), source=str(node.target)))

    def simple(self, node, kind: OpKind, flops_per_elem: float = 1.0, from_input: bool = False):
        ins = self.tensor_inputs(node)
        shape = _shape(node)
        count = _numel(_shape(ins[0])) if (from_input and ins) else _numel(shape)
        self.emit(node, Op(self.name_for(node), kind, shape, tuple(_shape(x) for x in ins),
                           flops=flops_per_elem * count,
                           inputs=tuple(self.producer(x) for x in ins), source=str(node.target)))


def _conv(self: _Lowerer, node) -> None:
    x, w = node.args[0], node.args[1]
    groups = int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))
    if node.target is aten.convolution.default:
        groups = int(node.args[8])
        if node.args[6]:
            raise LoweringError(f"transposed convolution {node.name} has no lowering rule")
    xs, ws, out = _shape(x), _shape(w), _shape(node)
    if len(ws) != 4:
        raise LoweringError(f"{node.name}: only 2-D convolutions are supported, got weight {ws}")
    cout, cin_g, kh, kw = ws
    m = out[0] * out[2] * out[3]
    n, k = cout // groups, cin_g * kh * kw
    depthwise = groups > 1 and cin_g == 1 and groups == xs[1]
    self.emit(node, Op(
        self.name_for(node), OpKind.DEPTHWISE_CONV2D if depthwise else OpKind.CONV2D, out, (xs,),
        m=m, n=n, k=k, groups=groups, flops=2.0 * m * n * k * groups, weight_elems=_numel(ws),
        out_channels=cout, inputs=(self.producer(x),), source=str(node.target)))


def _linear(self: _Lowerer, node) -> None:
    x, w = node.args[0], node.args[1]
    xs, ws, out = _shape(x), _shape(w), _shape(node)
    n, k = ws
    m = _numel(xs[:-1])
    self.emit(node, Op(self.name_for(node), OpKind.LINEAR, out, (xs,), m=m, n=n, k=k,
                       flops=2.0 * m * n * k, weight_elems=n * k, out_channels=n,
                       inputs=(self.producer(x),), source=str(node.target)))


def _addmm(self: _Lowerer, node) -> None:
    bias, x, wt = node.args[:3]
    xs, ws, out = _shape(x), _shape(wt), _shape(node)
    k, n = ws
    m = xs[0]
    if wt.name in self.params or (isinstance(wt, torch.fx.Node) and self.producer(wt) in self.params):
        self.emit(node, Op(self.name_for(node), OpKind.LINEAR, out, (xs,), m=m, n=n, k=k,
                           flops=2.0 * m * n * k, weight_elems=n * k, out_channels=n,
                           inputs=(self.producer(x),), source=str(node.target)))
    else:
        _matmul(self, node, x, wt)


def _matmul(self: _Lowerer, node, a=None, b=None) -> None:
    a = node.args[0] if a is None else a
    b = node.args[1] if b is None else b
    if isinstance(b, torch.fx.Node) and b.name in self.params:
        ws = _shape(b)
        if len(ws) == 2:  # x @ W with a parameter: a linear layer written as matmul
            xs, out = _shape(a), _shape(node)
            k, n = ws
            m = _numel(xs[:-1])
            self.emit(node, Op(self.name_for(node), OpKind.LINEAR, out, (xs,), m=m, n=n, k=k,
                               flops=2.0 * m * n * k, weight_elems=n * k, out_channels=n,
                               inputs=(self.producer(a),), source=str(node.target)))
            return
    as_, bs, out = _shape(a), _shape(b), _shape(node)
    m, k, n = as_[-2] if len(as_) > 1 else 1, as_[-1], bs[-1]
    batch = _numel(out[:-2]) if len(out) > 2 else 1
    self.emit(node, Op(self.name_for(node), OpKind.MATMUL, out, (as_, bs), m=m, n=n, k=k,
                       groups=batch, flops=2.0 * m * n * k * batch,
                       inputs=(self.producer(a), self.producer(b)), source=str(node.target)))


def _binary(kind: OpKind) -> Callable:
    def rule(self: _Lowerer, node) -> None:
        self.simple(node, kind)
    return rule


def _pool(kind: OpKind) -> Callable:
    def rule(self: _Lowerer, node) -> None:
        ks = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size", 1)
        area = math.prod(ks) if isinstance(ks, (list, tuple)) else int(ks) ** 2
        self.simple(node, kind, flops_per_elem=float(area))
    return rule


def _global_pool(self: _Lowerer, node) -> None:
    self.simple(node, OpKind.GLOBAL_POOL, from_input=True)


def _adaptive_pool(self: _Lowerer, node) -> None:
    out = _shape(node)
    if math.prod(out[2:]) == 1:
        return _global_pool(self, node)
    self.simple(node, OpKind.AVG_POOL, from_input=True)


def _mean(self: _Lowerer, node) -> None:
    self.simple(node, OpKind.GLOBAL_POOL, from_input=True)


def _layout(self: _Lowerer, node) -> None:
    self.simple(node, OpKind.LAYOUT, flops_per_elem=0.0)


_RULES: dict = {
    aten.conv2d.default: _conv, aten.convolution.default: _conv,
    aten.linear.default: _linear, aten.addmm.default: _addmm,
    aten.matmul.default: _matmul, aten.mm.default: _matmul, aten.bmm.default: _matmul,
    aten.add.Tensor: _binary(OpKind.ADD), aten.add_.Tensor: _binary(OpKind.ADD),
    aten.sub.Tensor: _binary(OpKind.ADD), aten.mul.Tensor: _binary(OpKind.MUL),
    aten.mul_.Tensor: _binary(OpKind.MUL), aten.div.Tensor: _binary(OpKind.MUL),
    aten.max_pool2d.default: _pool(OpKind.MAX_POOL), aten.avg_pool2d.default: _pool(OpKind.AVG_POOL),
    aten.adaptive_avg_pool2d.default: _adaptive_pool, aten.mean.dim: _mean,
    aten.softmax.int: lambda self, n: self.simple(n, OpKind.SOFTMAX, 5.0),
    aten._softmax.default: lambda self, n: self.simple(n, OpKind.SOFTMAX, 5.0),
    aten.layer_norm.default: lambda self, n: self.simple(n, OpKind.NORM, 5.0),
    aten.cat.default: lambda self, n: self.simple(n, OpKind.CONCAT, 0.0),
    aten.constant_pad_nd.default: lambda self, n: self.simple(n, OpKind.PAD, 0.0),
    aten.pad.default: lambda self, n: self.simple(n, OpKind.PAD, 0.0),
    aten.permute.default: _layout, aten.transpose.int: _layout,
}


def lower_module(module: torch.nn.Module, input_shape: Sequence[int]) -> list[Op]:
    """Export ``module`` in eval mode at ``input_shape`` and lower it to fp32 ops.

    Raises:
        LoweringError: the model does not export, or has an op with no rule.
    """
    if not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise LoweringError(f"input shape must be positive integers, got {list(input_shape)}")
    module = module.eval()
    example = torch.zeros(*input_shape)
    try:
        with torch.no_grad():
            ep = torch.export.export(module, (example,))
    except Exception as exc:  # torch raises many types; the user needs the one-line reason
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoweringError(f"torch.export failed at input shape {list(input_shape)}: "
                            f"{type(exc).__name__}: {first}") from None
    ops = _Lowerer(ep).run()
    if not any(op.kind not in PRICED_FREE_KINDS for op in ops):
        raise LoweringError("the model has no op that runs a kernel")
    return ops


# ------------------------------------------------------------------------ precision
def apply_precision(ops: Sequence[Op], backend, dtype: str) -> list[Op]:
    """Run every op at ``dtype`` where the back-end can, else at fp32, and price boundaries.

    ``dtype`` is fp32, fp16 or int8 (int8 = static 8-bit weights and activations, PT2E style).
    Returns a new op list with QUANTIZE/DEQUANTIZE ops where activation precision changes.
    """
    target = {"fp32": QuantSpec(32, 32), "fp16": QuantSpec(16, 16),
              "int8": QuantSpec(8, 8)}.get(dtype)
    if target is None:
        raise ValueError(f"unknown dtype {dtype!r}; valid: fp32, fp16, int8")
    out = []
    for op in ops:
        quant = target
        if op.kind not in PRICED_FREE_KINDS and backend.why_not(op.kind, quant, op.sparsity):
            quant = QuantSpec(32, 32)
        out.append(replace(op, quant=quant))
    return insert_precision_boundaries(out)


def describe_gemm(op: Op) -> str:
    if op.kind in GEMM_KINDS:
        return f"M={op.m} N={op.n} K={op.k}" + (f" x{op.groups}" if op.groups > 1 else "")
    return ""


__all__ = ["LoweringError", "lower_module", "apply_precision", "insert_precision_boundaries",
           "boundary_op", "WEIGHTED_KINDS", "describe_gemm"]
