"""The op-list IR: what a runtime executes, one typed record per kernel call.

Every model — a search-space candidate or any ``torch.nn.Module`` — lowers to a tuple of ``Op``
records; every cost model prices that list. ``OpBatch`` packs many op lists into flat numpy
columns so a cost model scores thousands of candidates without per-op Python work.

Conventions: FLOPs count a multiply-add as 2 and are *dense* (sparsity is applied by the cost
model, which knows whether the back-end accelerates it); element counts are per inference.
"""
from __future__ import annotations

import enum
import math
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, overload

import numpy as np

from codesign.kernels.specs import DENSE, FP32, QuantSpec, SparsityPattern, SparsitySpec, TileSpec


class OpKind(str, enum.Enum):
    CONV2D = "conv2d"  # dense or grouped convolution (groups < channels)
    DEPTHWISE_CONV2D = "depthwise_conv2d"
    LINEAR = "linear"  # activation x weight matrix
    MATMUL = "matmul"  # activation x activation (attention scores, context)
    ADD = "add"
    MUL = "mul"
    ELEMENTWISE = "elementwise"  # an activation or arithmetic that had no producer to fuse into
    AVG_POOL = "avg_pool"
    MAX_POOL = "max_pool"
    GLOBAL_POOL = "global_pool"
    SOFTMAX = "softmax"
    NORM = "norm"  # layer/RMS norm, or a BatchNorm with no conv to fold into
    CONCAT = "concat"
    PAD = "pad"
    LAYOUT = "layout"  # a transpose/permute that moves data
    QUANTIZE = "quantize"  # float -> int at a precision boundary
    DEQUANTIZE = "dequantize"  # int -> float at a precision boundary
    EMBEDDING = "embedding"
    ROPE = "rope"
    ATTENTION = "attention"  # fused scaled-dot-product attention over a KV cache
    FREE = "free"  # view / reshape / flatten / dropout in eval: no data moves


# Ops a runtime executes without a kernel: priced at zero by this explicit rule.
PRICED_FREE_KINDS = frozenset({OpKind.FREE})
GEMM_KINDS = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR, OpKind.MATMUL})
WEIGHTED_KINDS = frozenset({OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR,
                            OpKind.EMBEDDING})
KIND_CODES = {k: i for i, k in enumerate(OpKind)}
KINDS_BY_CODE = list(OpKind)
DTYPE_CODES = {"fp32": 0, "fp16": 1, "int8": 2}
PATTERN_CODES = {p: i for i, p in enumerate(SparsityPattern)}


@dataclass(frozen=True)
class Op:
    """One kernel call.

    GEMM view (conv, linear, matmul): ``m`` output rows (batch x output pixels or tokens),
    ``n`` output channels per group, ``k`` reduction length per group (Cin/groups x kh x kw),
    ``groups`` independent GEMMs (``groups == channels`` for depthwise). Zero for other kinds.

    A MATMUL's ``weight_elems`` is its stationary operand when that lives in memory across calls
    (a K or V cache, ``quant`` its precision): priced as streamed like weights, but it is state,
    not stored with the model, so ``model_bytes`` leaves it out.
    """

    name: str
    kind: OpKind
    out_shape: tuple[int, ...]
    in_shapes: tuple[tuple[int, ...], ...] = ()
    m: int = 0
    n: int = 0
    k: int = 0
    groups: int = 1
    flops: float = 0.0
    weight_elems: int = 0
    out_channels: int = 0  # for per-channel scales and bias
    quant: QuantSpec = FP32
    sparsity: SparsitySpec = DENSE
    tile: TileSpec | None = None  # None: the back-end's own choice
    fused: tuple[str, ...] = ()  # activations / clamps / folded BatchNorm merged into this op
    inputs: tuple[str, ...] = ()  # names of the ops whose outputs this op reads ("" = model input)
    source: str = ""  # the torch module or node it came from
    # the ATen operator the runtime calls for it, where that is not ``source`` (one node
    # lowered to several ops, e.g. SDPA's decomposition): a back-end's portable-kernel table
    # is keyed by it (``runtime_op``)
    aten: str = ""

    @property
    def runtime_op(self) -> str:
        return self.aten or self.source

    @property
    def act_in_elems(self) -> int:
        return sum(math.prod(s) for s in self.in_shapes)

    @property
    def act_out_elems(self) -> int:
        return math.prod(self.out_shape)

    def weight_bytes(self, *, sparse_format: bool = True) -> float:
        """Stored weight bytes: kept values, sparse indices, scales/zero points and bias.

        ``sparse_format=False`` is the size when the back-end has no kernel for the sparsity
        pattern and the pruned weights are stored (and run) densely.
        """
        if not self.weight_elems:
            return 0.0
        sparse = sparse_format and self.sparsity.pattern is not SparsityPattern.DENSE
        kept = self.weight_elems * (self.sparsity.density if sparse else 1.0)
        values = kept * self.quant.weight_bits / 8
        indices = kept * self.sparsity.index_bits_per_kept_weight() / 8 if sparse else 0.0
        group_scales = self.weight_elems * self.quant.scale_bytes_per_weight()
        # per-output-channel fp32 scale (int8) and the fp32 bias every conv/linear carries here
        channel_scales = 4 * self.out_channels if self.quant.weight_bits <= 8 and not self.quant.group_size else 0
        bias = 4 * self.out_channels
        return values + indices + group_scales + channel_scales + bias

    def quant_for_activation(self) -> QuantSpec:
        """The precision of a weightless op that consumes this op's output as it is."""
        return QuantSpec(self.quant.act_bits, self.quant.act_bits)

    def activation_bytes(self) -> float:
        return (self.act_in_elems + self.act_out_elems) * self.quant.act_bits / 8


def gemm_flops(m: int, n: int, k: int, groups: int = 1) -> float:
    return 2.0 * m * n * k * groups


class DeferredOps(Sequence[Op]):
    """The op records of a batch built on first access: a batch priced from memoised rows
    (``codesign.search_spaces.mbconv_lowering``) has its columns at once and its records only when a
    report or an error message reads one, as the records cost far more to build than the rows.
    """

    def __init__(self, n_ops: int, build: Callable[[], Sequence[Op]]) -> None:
        self._n_ops = n_ops
        self._build: Callable[[], Sequence[Op]] | None = build
        self._ops: list[Op] = []

    def _records(self) -> list[Op]:
        if self._build is not None:
            ops = list(self._build())
            if len(ops) != self._n_ops:  # the columns and the records must describe one list
                raise RuntimeError(f"deferred op records: built {len(ops)} ops for a batch of "
                                   f"{self._n_ops}")
            self._ops, self._build = ops, None
        return self._ops

    def __len__(self) -> int:
        return self._n_ops

    @overload
    def __getitem__(self, index: int) -> Op: ...

    @overload
    def __getitem__(self, index: slice) -> list[Op]: ...

    def __getitem__(self, index):
        return self._records()[index]

    def __iter__(self):
        return iter(self._records())

    def __reduce__(self):  # the builder is a closure: a pickled batch carries the records
        return list, (self._records(),)


@dataclass
class OpBatch:
    """Flat numpy columns over the ops of many candidates (structure of arrays).

    ``candidate[i]`` is the index of the candidate op ``i`` belongs to; ops of one candidate are
    contiguous. ``ops`` keeps the records for reporting (it is not touched by scoring; it may be
    a ``DeferredOps`` that builds them when first read).
    """

    n_candidates: int
    candidate: np.ndarray
    kind: np.ndarray
    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    groups: np.ndarray
    flops: np.ndarray
    weight_bytes: np.ndarray  # stored in the sparse format where there is one
    dense_weight_bytes: np.ndarray  # stored densely (back-ends without that sparse kernel)
    out_elems: np.ndarray
    runtime_op: np.ndarray  # runtime_op_code of each op's ATen operator (0: none)
    act_in_bytes: np.ndarray
    act_out_bytes: np.ndarray
    dtype: np.ndarray
    density: np.ndarray
    pattern: np.ndarray
    tile: np.ndarray  # (n_ops, 5): mc, nc, kc, mr, nr; zeros where the back-end chooses
    weight_bits: np.ndarray
    act_bits: np.ndarray
    group_size: np.ndarray
    dynamic_act: np.ndarray
    ops: Sequence[Op] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def from_oplists(cls, oplists: Sequence[Sequence[Op]]) -> "OpBatch":
        flat = [op for ops in oplists for op in ops]
        counts = np.fromiter((len(ops) for ops in oplists), dtype=np.int64, count=len(oplists))
        table = np.array([op_row(op) for op in flat], dtype=np.float64).reshape(len(flat), N_COLS)
        tiles = np.array([tile_row(op) for op in flat], dtype=np.int64).reshape(len(flat), 5)
        return cls.from_rows(table, tiles, counts, flat)

    @classmethod
    def from_rows(cls, table: np.ndarray, tiles: np.ndarray, counts: np.ndarray,
                  ops: Sequence[Op]) -> "OpBatch":
        """The batch of ``table`` (one ``op_row`` per op, float64, shape (n_ops, N_COLS)) and
        ``tiles`` (one ``tile_row`` per op, int64), ``counts[c]`` ops per candidate ``c``."""
        col = table.T
        return cls(
            n_candidates=len(counts),
            candidate=np.repeat(np.arange(len(counts)), counts),
            kind=col[0].astype(np.int64), m=col[1], n=col[2], k=col[3], groups=col[4],
            flops=col[5], weight_bytes=col[6], act_in_bytes=col[7], act_out_bytes=col[8],
            dtype=col[9].astype(np.int64), density=col[10], pattern=col[11].astype(np.int64),
            tile=tiles, weight_bits=col[12], act_bits=col[13], group_size=col[14],
            dynamic_act=col[15], dense_weight_bytes=col[16], out_elems=col[17],
            runtime_op=col[18].astype(np.int64), ops=ops,
        )


N_COLS = 19


def runtime_op_code(name: str) -> int:
    """A stable code of an ATen operator name (CRC-32): the same in every process, so batches
    pickled to workers keep it; 0 for no name."""
    return zlib.crc32(name.encode()) if name else 0


def op_row(op: Op) -> tuple:
    """The numbers ``OpBatch`` keeps of ``op`` (its columns, ``tile`` apart): they depend on
    its kind, shapes, precision and sparsity, never on its name, inputs or fused activations."""
    q = op.quant
    act = q.act_bits / 8
    out = op.act_out_elems
    return (KIND_CODES[op.kind], op.m, op.n, op.k, op.groups, op.flops, op.weight_bytes(),
            op.act_in_elems * act, out * act, DTYPE_CODES[q.compute_dtype],
            op.sparsity.density, PATTERN_CODES[op.sparsity.pattern], q.weight_bits, q.act_bits,
            q.group_size, float(q.dynamic_act), op.weight_bytes(sparse_format=False), out,
            runtime_op_code(op.runtime_op))



def tile_row(op: Op) -> tuple[int, int, int, int, int]:
    t = op.tile
    return (t.mc, t.nc, t.kc, t.mr, t.nr) if t else (0, 0, 0, 0, 0)


def total_flops(ops: Iterable[Op]) -> float:
    return float(sum(op.flops for op in ops))


def model_bytes(ops: Iterable[Op], *, sparse_format: bool = True) -> int:
    """Bytes of everything stored with the model: weights, scales, zero points, sparse indices
    (not a MATMUL's cached operand: that is run-time state, see ``Op``)."""
    return int(round(sum(op.weight_bytes(sparse_format=sparse_format) for op in ops
                         if op.kind is not OpKind.MATMUL)))


def peak_activation_bytes(ops: Sequence[Op]) -> int:
    """Largest sum of live activation buffers over the op sequence (a simple memory planner).

    An op's output is live from the op until its last reader; free ops alias their input.
    """
    alias: dict[str, str] = {}
    for op in ops:
        if op.kind in PRICED_FREE_KINDS and op.inputs:
            alias[op.name] = alias.get(op.inputs[0], op.inputs[0])
    reads = [tuple(alias.get(n, n) for n in op.inputs) for op in ops]
    last_use: dict[str, int] = {}
    for i, names in enumerate(reads):
        for name in names:
            last_use[name] = i
    live: dict[str, float] = {}
    peak = 0.0
    for i, op in enumerate(ops):
        if op.kind in PRICED_FREE_KINDS:
            continue
        live[op.name] = op.act_out_elems * op.quant.act_bits / 8
        peak = max(peak, sum(live.values()))
        for name in reads[i]:
            if last_use.get(name) == i:
                live.pop(name, None)
        if op.name not in last_use:
            live.pop(op.name, None)  # never read again (the model output) once written
    return int(round(peak))
