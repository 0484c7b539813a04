"""Lower any ``torch.nn.Module`` to the op-list IR through ``torch.export``.

The lowering follows what on-device runtimes execute, not the Python module tree:
- BatchNorm in inference mode following a convolution or linear layer whose output it alone reads
  is folded into that layer (its weights absorb the affine transform);
- activations and clamps (ReLU, ReLU6/hardtanh, hardswish, SiLU, GELU, sigmoid, clamp) are fused
  into the producer they alone read from (XNNPACK's output clamps and fused activations);
- views that keep the element order, eval-mode dropout (every form), same-dtype casts are
  ``FREE``: priced at zero by that explicit rule (no data moves, or the runtime elides them);
- an op whose inputs are all static (parameters, buffers, constants, tensors generated from
  shapes: arange, zeros, ...) is folded into a constant (``FREE``): its value is known when the
  program is built (ExecuTorch 1.5.1's programs still compute some of it per call, a small
  cost: BENCHMARKS.md, issue 18), provided it has a rule (an op without one is an error even
  there) and is not a layer (``lowering_rules.LAYERS``: convolutions, matmuls, pooling, norms,
  activations run even on constants);
- every other ATen op needs a rule in ``lowering_rules.RULES``; an op without one is an error,
  never 0 ms.
Precision boundaries (``apply_precision``) insert priced quantize/dequantize ops.
"""
from __future__ import annotations

import operator
from dataclasses import replace
from typing import Sequence

import torch

from codesign.cost_models.ir import GEMM_KINDS, Op, OpKind, PRICED_FREE_KINDS, WEIGHTED_KINDS
from codesign.cost_models.lowering_rules import (ACTIVATIONS, BATCHNORM, FREE_TARGETS, GENERATORS,
                                                 LAYERS, RANDOM, RULES, LoweringError,
                                                 node_shape, node_shapes, numel)
# the precision passes need no torch: they live apart so that pricing can run without it
from codesign.cost_models.precision_boundaries import boundary_op, insert_precision_boundaries
from codesign.kernels.specs import QuantSpec

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
        # nodes whose value is known before any input arrives (parameters, constants, what is
        # computed from them alone): folded into constants
        self.static: set[torch.fx.Node] = set()

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

    def is_param(self, arg) -> bool:
        """True for a stored tensor: a parameter, buffer or constant, or a folded function of
        them (a transposed weight)."""
        return isinstance(arg, torch.fx.Node) and arg in self.static

    @staticmethod
    def scalar_arithmetic(node) -> bool:
        """A Python operator or torch.sym_* function on scalars (shape checks): not a tensor op."""
        val = node.meta.get("val")
        module = getattr(node.target, "__module__", "") or ""
        return not isinstance(val, (torch.Tensor, tuple, list)) and (
            module in ("_operator", "operator", "math") or module.startswith("torch.fx")
            or (module == "torch" and getattr(node.target, "__name__", "").startswith("sym_")))

    def free(self, node, source: str = "") -> None:
        """A record priced at zero: the node's value exists without a kernel running."""
        src = node.args[0] if node.args else None
        shapes = node_shapes(node)
        in_shapes = tuple(node_shapes(src)[:1]) if isinstance(src, torch.fx.Node) else ()
        self.emit(node, Op(self.name_for(node), OpKind.FREE, shapes[0] if shapes else (),
                           in_shapes, inputs=(self.producer(src),),
                           source=source or str(node.target)))

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
                if node.name in self.params:
                    self.static.add(node)
            elif node.op == "call_function":
                self.lower(node)
        return self.ops

    def lower(self, node: torch.fx.Node) -> None:
        target = node.target
        if target is operator.getitem:
            self.value_of[node] = self.producer(node.args[0])
            if node.args[0] in self.static:
                self.static.add(node)
            return
        if self.scalar_arithmetic(node):  # Python on the host, between checks: no kernel
            self.value_of[node] = ""
            if all(a in self.static for a in node.all_input_nodes):
                self.static.add(node)
            return
        rule = RULES.get(target)
        if rule is None and not (target in FREE_TARGETS or target in ACTIVATIONS
                                 or target in BATCHNORM or target in GENERATORS):
            label = str(target) if "<" not in str(target) else \
                f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}"
            raise LoweringError(f"no lowering rule for {label} (node {node.name}); "
                                "it cannot be priced")
        if target not in RANDOM and target not in LAYERS and \
                all(a in self.static for a in node.all_input_nodes):
            self.static.add(node)  # computed once, when the program is built
            return self.free(node, source=f"folded {target}")
        if target in FREE_TARGETS or target in GENERATORS:  # GENERATORS: shapes are static
            return self.free(node)
        if target in ACTIVATIONS:
            return self.activation(node, ACTIVATIONS[target])
        if target in BATCHNORM:
            return self.batchnorm(node)
        rule(self, node)

    def activation(self, node, label: str) -> None:
        src = node.args[0]
        if self.sole_user(node, src):
            i = self.index[self.value_of[src]]
            if self.ops[i].kind in _FUSE_INTO:
                self.ops[i] = replace(self.ops[i], fused=self.ops[i].fused + (label,))
                self.value_of[node] = self.ops[i].name
                return
        shape = node_shape(node)
        self.emit(node, Op(self.name_for(node), OpKind.ELEMENTWISE, shape, (node_shape(src),),
                           flops=float(numel(shape)), inputs=(self.producer(src),),
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
        shape = node_shape(node)
        self.emit(node, Op(self.name_for(node), OpKind.NORM, shape, (node_shape(src),),
                           flops=2.0 * numel(shape), weight_elems=0,
                           inputs=(self.producer(src),), source=str(node.target)))

    def simple(self, node, kind: OpKind, flops_per_elem: float = 1.0, from_input: bool = False):
        ins = self.tensor_inputs(node)
        shape = node_shape(node)
        count = numel(node_shape(ins[0])) if (from_input and ins) else numel(shape)
        self.emit(node, Op(self.name_for(node), kind, shape, tuple(node_shape(x) for x in ins),
                           flops=flops_per_elem * count,
                           inputs=tuple(self.producer(x) for x in ins), source=str(node.target)))


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
