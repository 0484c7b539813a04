"""The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020) on CIFAR-10 input 1x3x32x32.

Macro-architecture, from the reference implementation (github.com/D-X-Y/AutoDL-Projects,
``lib/models/cell_infers/tiny_network.py`` (``TinyNetwork``), ``cell_infers/cells.py``
(``InferCell``) and ``lib/models/cell_operations.py`` (``ReLUConvBN``, ``POOLING``,
``ResNetBasicblock``, ``Zero``, ``Identity``); HW-NAS-Bench ships the same files):
- stem: 3x3 conv 3->16 (no bias) + BatchNorm, no activation;
- three stages of 5 identical cells at 16/32/64 channels on 32x32/16x16/8x8 maps, with a ResNet
  basic block between stages: ReLU-Conv3x3(stride 2)-BN, ReLU-Conv3x3-BN, and a shortcut of
  AvgPool2d(2, 2) then a 1x1 conv (no BN), summed;
- BatchNorm-ReLU, global average pool, linear classifier to 10 classes.

A cell is a DAG of 4 nodes; node ``i`` sums one op per edge from every earlier node ``j``
(``|op~j|`` in the ``arch_str`` notation ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``). Edge ops:
``nor_conv_3x3``/``nor_conv_1x1`` = ReLU-Conv-BN (the ReLU reads the node, ``inplace=False``),
``avg_pool_3x3`` = AvgPool2d(3, stride 1, pad 1, count_include_pad=False) (no preprocess: cells
keep their width), ``skip_connect`` = identity (no op), ``none`` = zero.

Lowering conventions (what a runtime executes; ``lower_arch`` and ``lower_module`` of
``build_module`` agree, tested):
- ``none`` is zero: it emits no op and adds nothing (the reference multiplies by 0; a runtime
  folds ``x * 0 + y`` to ``y``). Identity edges emit no op either.
- A node with no non-zero term is a zero tensor (a constant buffer). Ops that read it still run:
  the measured devices of HELP execute them (nothing else is constant-folded).
- A node with ``t`` non-zero terms costs ``t - 1`` ADD ops.
- ``lower_module`` treats a constant buffer like a parameter: an add or pooling op reading one
  lists no input for it (a ReLU, BatchNorm or conv does); the direct lowering does the same.
- BatchNorm folds into the conv before it; a ReLU fuses into the op producing its input when
  that op's output has no other reader (``codesign.cost_models.lowering``'s rules), else it is an
  ELEMENTWISE op of its own.
Everything is fp32.
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Sequence

import torch

from torch import nn

from codesign.cost_models.backends import BackendSpec
from codesign.cost_models.ir import Op, OpKind
from codesign.search_spaces.base import FixedChoiceSpace

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node), arch_str order
PARAM_NAMES = tuple(f"node{i}.in{j}" for i, j in EDGES)
STEM_CHANNELS = 16
CELLS_PER_STAGE = 5
NUM_CLASSES = 10
INPUT_SHAPE = (1, 3, 32, 32)
_ZERO = -1  # a node's value when it is zero


@dataclass(frozen=True)
class Cell:
    """One NAS-Bench-201 cell: the op on each edge, in ``EDGES`` order. Hashable."""

    edges: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.edges) != len(EDGES):
            raise ValueError(f"a NAS-Bench-201 cell has {len(EDGES)} edges, got {len(self.edges)}")
        bad = [op for op in self.edges if op not in OPS]
        if bad:
            raise ValueError(f"unknown NAS-Bench-201 op {bad[0]!r}; valid: {', '.join(OPS)}")

    @property
    def arch_str(self) -> str:
        nodes = []
        for node in (1, 2, 3):
            nodes.append("|".join(f"{op}~{j}" for (i, j), op in zip(EDGES, self.edges)
                                  if i == node))
        return "|" + "|+|".join(nodes) + "|"

    @classmethod
    def from_arch_str(cls, text: str) -> "Cell":
        return parse_arch_str(text)


def parse_arch_str(text: str) -> Cell:
    """``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` -> Cell.

    Raises:
        ValueError: naming what is wrong (node count, edge syntax, input index, op name).
    """
    if not isinstance(text, str) or not text.startswith("|") or not text.endswith("|"):
        raise ValueError(f"arch_str {text!r} must look like |op~0|+|op~0|op~1|+|op~0|op~1|op~2|")
    nodes = text[1:-1].split("|+|")
    if len(nodes) != 3:
        raise ValueError(f"arch_str {text!r}: expected 3 nodes separated by '+', got {len(nodes)}")
    ops = []
    for i, node in enumerate(nodes, start=1):
        entries = node.split("|")
        if len(entries) != i:
            raise ValueError(f"arch_str {text!r}: node {i} must have {i} edge(s), "
                             f"got {len(entries)}")
        for j, entry in enumerate(entries):
            op, sep, src = entry.partition("~")
            if not sep or src != str(j):
                raise ValueError(f"arch_str {text!r}: node {i} edge {entry!r} must be op~{j}")
            if op not in OPS:
                raise ValueError(f"arch_str {text!r}: unknown op {op!r}; valid: {', '.join(OPS)}")
            ops.append(op)
    return Cell(tuple(ops))


class NASBench201Space(FixedChoiceSpace):
    """The 15,625 cells of NAS-Bench-201: one categorical choice per edge, fp32 throughout."""

    param_names = PARAM_NAMES
    choices = OPS

    def __init__(self, backend: BackendSpec | None = None, *,
                 input_shape: Sequence[int] = INPUT_SHAPE) -> None:
        super().__init__("nasbench201", backend, input_shape)

    def _build(self, values: tuple[str, ...]) -> Cell:
        return Cell(values)

    def _values(self, candidate: Cell) -> tuple[str, ...]:
        return candidate.edges

    def to_ops(self, candidate: Cell, input_shape: Sequence[int] | None = None) -> list[Op]:
        return list(lower_arch(candidate, tuple(input_shape or self.deploy_input_shape)))

    def parse(self, text: str) -> Cell:
        """The candidate of a measurement row's ``arch_str``."""
        return parse_arch_str(text)


# ------------------------------------------------------------------------------ structure
def _stage_layout():
    """Yield ("cell"|"resblock", channels_in, channels_out, stride) for the 17 cells."""
    c = STEM_CHANNELS
    for stage in range(3):
        if stage:
            yield "resblock", c, 2 * c, 2
            c *= 2
        for _ in range(CELLS_PER_STAGE):
            yield "cell", c, c, 1


def _node_terms(cell: Cell) -> list[list[tuple[int, str]]]:
    """Per node 1..3: the (source node, op) pairs of its non-``none`` edges."""
    terms: list[list[tuple[int, str]]] = [[], [], []]
    for (i, j), op in zip(EDGES, cell.edges):
        if op != "none":
            terms[i - 1].append((j, op))
    return terms


# ------------------------------------------------------------------------------ direct lowering
_FUSE_INTO = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR, OpKind.MATMUL,
                        OpKind.ADD, OpKind.MUL, OpKind.NORM})
_BN_INTO = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR})
_RELU, _BN = "relu", "bn"  # calls that may fuse into their producer
_KEEP_BUFFER_ARGS = frozenset({OpKind.ELEMENTWISE, OpKind.NORM, OpKind.CONV2D, OpKind.LINEAR,
                               OpKind.FREE, _RELU, _BN})


class _Graph:
    """Records calls on tensor ids, then emits ops with ``codesign.cost_models.lowering``'s fusion
    rules.

    ``users[t]`` counts the distinct calls reading tensor ``t`` (torch.fx's ``node.users``): a
    BatchNorm or ReLU fuses into its input's producer only when it is that tensor's sole reader.
    Constant buffers are placeholders like parameters: ops whose rule reads ``tensor_inputs``
    (add, pooling) do not list them as inputs, exactly as ``lower_module`` does.
    """

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.shapes: list[tuple[int, ...]] = [tuple(input_shape)]  # tensor 0: the model input
        self.producer: list[int] = [-1]  # index of the call writing the tensor; -1: none
        self.users: list[int] = [0]
        self.buffers: dict[int, str] = {}  # tensor id -> placeholder name of a constant buffer
        self.calls: list[list] = []  # [kind, module, inputs, gemm, flops, fused, source]

    def buffer(self, shape: tuple[int, ...], name: str) -> int:
        self.shapes.append(shape)
        self.producer.append(-1)
        self.users.append(0)
        self.buffers[len(self.shapes) - 1] = name
        return len(self.shapes) - 1

    def call(self, kind, module: str, inputs: tuple[int, ...], shape: tuple[int, ...],
             source: str, flops: float = 0.0, gemm: dict | None = None,
             fused: tuple[str, ...] = ()) -> int:
        for t in set(inputs):
            self.users[t] += 1
        if kind not in _KEEP_BUFFER_ARGS:
            inputs = tuple(t for t in inputs if t not in self.buffers)
        self.calls.append([kind, module, inputs, gemm, flops, fused, source])
        self.shapes.append(shape)
        self.producer.append(len(self.calls) - 1)
        self.users.append(0)
        return len(self.shapes) - 1

    def relu(self, module: str, x: int) -> int:
        return self.call(_RELU, module, (x,), self.shapes[x], "aten.relu.default",
                         float(math.prod(self.shapes[x])))

    def conv(self, module: str, x: int, cout: int, kernel: int, stride: int, *,
             bn: bool) -> int:
        xs = self.shapes[x]
        shape = (xs[0], cout, -(-xs[2] // stride), -(-xs[3] // stride))
        m, k = xs[0] * shape[2] * shape[3], xs[1] * kernel * kernel
        # A BatchNorm right after a conv is that conv's only reader here: folded on the spot.
        return self.call(OpKind.CONV2D, module, (x,), shape, "aten.conv2d.default",
                         2.0 * m * cout * k, dict(m=m, n=cout, k=k, weight_elems=cout * k,
                                                  out_channels=cout),
                         ("batchnorm",) if bn else ())

    def emit(self) -> list[Op]:
        calls, producer = self.calls, self.producer
        into = list(range(len(calls)))  # call -> the call it fused into (itself if kept)
        for i, c in enumerate(calls):
            kind = c[0]
            if kind is not _RELU and kind is not _BN:
                continue
            src = c[2][0]
            p = into[producer[src]] if producer[src] >= 0 else -1
            if p >= 0 and self.users[src] == 1 and (
                    (kind is _RELU and calls[p][0] in _FUSE_INTO)
                    or (kind is _BN and calls[p][0] in _BN_INTO and not calls[p][5])):
                calls[p][5] += ("relu",) if kind is _RELU else ("batchnorm",)
                into[i] = p
            elif kind is _RELU:
                c[0], c[5] = OpKind.ELEMENTWISE, ("relu",)
            else:
                c[0], c[4], c[6] = OpKind.NORM, 2.0 * c[4], "aten.batch_norm.default"
        names: list[str] = [""] * len(calls)
        counts: dict[str, int] = {}
        ops = []
        shapes = self.shapes
        out_of = {p: t for t, p in enumerate(producer) if p >= 0}
        for i, (kind, module, inputs, gemm, flops, fused, source) in enumerate(calls):
            if into[i] != i:
                continue
            count = counts.get(module, 0)
            counts[module] = count + 1
            names[i] = name = module if not count else f"{module}#{count}"
            refs = tuple(names[into[producer[t]]] if producer[t] >= 0
                         else self.buffers.get(t, "") for t in inputs)
            ops.append(Op(name, kind, shapes[out_of[i]], tuple(shapes[t] for t in inputs),
                          flops=flops, fused=fused, inputs=refs, source=source, **(gemm or {})))
        return ops


@functools.lru_cache(maxsize=1024)
def lower_arch(cell: Cell, input_shape: tuple[int, ...] = INPUT_SHAPE) -> tuple[Op, ...]:
    """The op list of the network of ``cell`` at ``input_shape``, built without torch.

    Op names, kinds, shapes, FLOPs, fusion and inputs are those ``lower_module`` gives for
    ``build_module(cell, input_shape)`` (tests check the two agree). All ops are fp32, so no
    precision boundary is needed. Cached per (cell, shape) for the most recent 1024.
    """
    g = _Graph(input_shape)
    n = input_shape[0]

    def relu_conv_bn(module, x, cout, kernel, stride):
        return g.conv(f"{module}.op.1", g.relu(f"{module}.op.0", x), cout, kernel, stride,
                      bn=True)

    x = g.conv("stem.0", 0, STEM_CHANNELS, 3, 1, bn=True)
    for index, (what, cin, cout, stride) in enumerate(_stage_layout()):
        module = f"cells.{index}"
        if what == "resblock":  # forward: downsample(x) + conv_b(conv_a(x)), left first
            shape = g.shapes[x]
            half = (n, cin, shape[2] // 2, shape[3] // 2)
            r = g.call(OpKind.AVG_POOL, f"{module}.downsample.0", (x,), half,
                       "aten.avg_pool2d.default", 4.0 * math.prod(half))
            r = g.conv(f"{module}.downsample.1", r, cout, 1, 1, bn=False)
            b = relu_conv_bn(f"{module}.conv_b",
                             relu_conv_bn(f"{module}.conv_a", x, cout, 3, stride), cout, 3, 1)
            x = g.call(OpKind.ADD, module, (r, b), g.shapes[b], "aten.add.Tensor",
                       float(math.prod(g.shapes[b])))
            continue
        shape = g.shapes[x]
        zero = g.buffer(shape, f"b_cells_{index}_zero")
        nodes = [x]
        for i, node_terms in enumerate(_node_terms(cell), start=1):
            values = []
            for j, op in node_terms:
                src = nodes[j]
                if op == "skip_connect":
                    if src != _ZERO:
                        values.append(src)
                    continue
                src = zero if src == _ZERO else src
                edge = f"{module}.layers.{EDGES.index((i, j))}"
                if op == "avg_pool_3x3":
                    values.append(g.call(OpKind.AVG_POOL, f"{edge}.op", (src,), shape,
                                         "aten.avg_pool2d.default", 9.0 * math.prod(shape)))
                else:
                    values.append(relu_conv_bn(edge, src, cout, 3 if op[-1] == "3" else 1, 1))
            if not values:
                nodes.append(_ZERO)
                continue
            total = values[0]
            for v in values[1:]:
                total = g.call(OpKind.ADD, module, (total, v), shape, "aten.add.Tensor",
                               float(math.prod(shape)))
            nodes.append(total)
        x = zero if nodes[3] == _ZERO else nodes[3]
    x = g.call(_BN, "lastact.0", (x,), g.shapes[x], "aten.batch_norm.default",
               float(math.prod(g.shapes[x])))
    x = g.relu("lastact.1", x)
    shape = g.shapes[x]
    x = g.call(OpKind.GLOBAL_POOL, "global_pooling", (x,), shape[:2] + (1, 1),
               "aten.adaptive_avg_pool2d.default", float(math.prod(shape)))
    x = g.call(OpKind.FREE, "view", (x,), shape[:2], "aten.view.default")
    g.call(OpKind.LINEAR, "classifier", (x,), (n, NUM_CLASSES), "aten.linear.default",
           2.0 * n * NUM_CLASSES * shape[1], dict(m=n, n=NUM_CLASSES, k=shape[1],
                                                  weight_elems=NUM_CLASSES * shape[1],
                                                  out_channels=NUM_CLASSES))
    return tuple(g.emit())


# ------------------------------------------------------------------------------ torch module
class ReLUConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                                nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.op(x)


class AvgPool3x3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.op = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.op(x)


class InferCell(nn.Module):
    """One cell at ``channels`` on ``hw`` maps; ``zero`` is the constant a zero node holds."""

    def __init__(self, cell: Cell, channels: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.terms = _node_terms(cell)
        layers = []
        for op in cell.edges:
            if op in ("nor_conv_1x1", "nor_conv_3x3"):
                layers.append(ReLUConvBN(channels, channels, 3 if op.endswith("3x3") else 1, 1))
            elif op == "avg_pool_3x3":
                layers.append(AvgPool3x3())
            else:
                layers.append(nn.Identity())  # skip_connect / none: no module runs
        self.layers = nn.ModuleList(layers)
        self.register_buffer("zero", torch.zeros(shape))

    def forward(self, x):
        nodes = [x]
        for i, node_terms in enumerate(self.terms, start=1):
            values = []
            for j, op in node_terms:
                src = nodes[j]
                if op == "skip_connect":
                    if src is not None:
                        values.append(src)
                    continue
                layer = self.layers[EDGES.index((i, j))]
                values.append(layer(self.zero if src is None else src))
            nodes.append(functools.reduce(operator.add, values) if values else None)
        return self.zero if nodes[3] is None else nodes[3]


class ResNetBasicblock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, stride)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class TinyNetwork(nn.Module):
    """NAS-Bench-201's network for one cell (returns the logits only)."""

    def __init__(self, cell: Cell, input_shape: Sequence[int] = INPUT_SHAPE) -> None:
        super().__init__()
        n, _, h, w = input_shape
        self.stem = nn.Sequential(nn.Conv2d(3, STEM_CHANNELS, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(STEM_CHANNELS))
        cells = []
        for what, cin, cout, stride in _stage_layout():
            if what == "resblock":
                cells.append(ResNetBasicblock(cin, cout, stride))
                h, w = -(-h // 2), -(-w // 2)
            else:
                cells.append(InferCell(cell, cout, (n, cout, h, w)))
        self.cells = nn.ModuleList(cells)
        c = 4 * STEM_CHANNELS
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, NUM_CLASSES)

    def forward(self, x):
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        out = self.global_pooling(self.lastact(x))
        return self.classifier(out.view(out.size(0), -1))


def build_module(cell: Cell, input_shape: Sequence[int] = INPUT_SHAPE) -> TinyNetwork:
    """A torch network of ``cell`` (randomly initialised, eval mode) for ``input_shape``."""
    return TinyNetwork(cell, input_shape).eval()


__all__ = ["OPS", "EDGES", "Cell", "parse_arch_str", "NASBench201Space", "lower_arch",
           "build_module", "TinyNetwork"]
