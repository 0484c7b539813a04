"""Lowering MBConv candidates to the op-list IR: one candidate's op records, and many candidates'
``OpBatch`` columns at once.

``lower_arch`` builds one candidate's op records (``MBConvSpace.to_ops`` adds the precision
boundaries). Pricing thousands of candidates that way spends nearly all its time creating records
whose numbers repeat: the shipped space's 10^21 and more members are built from a few thousand
distinct ops (ten thousand random members of it have about two thousand).
``MBConvLowering.op_batch`` therefore memoises each op's ``OpBatch`` row under the few numbers
that decide it (shapes, precision, sparsity: an op's row never depends on its name or inputs) and
each unit's run of rows (a block's convert/expand/depthwise/project/add), and assembles a batch
from those with numpy. Its columns equal ``OpBatch.from_oplists`` of ``to_ops`` bit for bit
(``tests/test_mbconv_lowering.py``); the records themselves are built only if read.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from codesign.cost_models.backends import BackendSpec, Precision
from codesign.cost_models.ir import N_COLS, DeferredOps, Op, OpBatch, OpKind, op_row
from codesign.cost_models.precision_boundaries import boundary_op, insert_precision_boundaries
from codesign.kernels.specs import (DENSE, QuantSpec, TileSpec, block, two_four,
                                    unstructured)
from codesign.search_spaces.mbconv_candidate import Candidate, LayerChoice

if TYPE_CHECKING:  # the config module reads SPARSITY_CHOICES from here
    from codesign.search_spaces.mbconv_config import MBConvConfig

SPARSITY_CHOICES = {
    "dense": DENSE, "2:4": two_four(), "block4x4": block(4, 4, 0.75),
    "unstructured50": unstructured(0.5), "unstructured75": unstructured(0.75),
}
# The op kinds that run a unit's chosen tile: its GEMMs, except depthwise convs (no tiled kernel).
TILED_KINDS = frozenset({OpKind.CONV2D, OpKind.LINEAR})


@functools.lru_cache(maxsize=4096)
def _quant(precision: str, k: int, group_sizes: tuple[int, ...]) -> QuantSpec:
    """Sub-byte weights are group-wise where the activations are dynamic (torchao's
    int8-dynamic-activation / intx-weight linears, which XNNPACK runs) and per output channel
    where they are static (the project's int4 GEMM: one scale per column)."""
    p = Precision.parse(precision)
    group = 0
    if p.weight_bits < 8 and p.dynamic_act:
        divisors = [g for g in sorted(group_sizes, reverse=True) if k % g == 0]
        group = divisors[0] if divisors else 0
    return QuantSpec(p.weight_bits, p.act_bits, group, p.dynamic_act)


class _Formats:
    """What a back-end and a space's tiles make of a unit's choice, op by op."""

    def __init__(self, backend: BackendSpec, tiles: Mapping[str, TileSpec]) -> None:
        self.tiles = tiles
        self.group_sizes = {}
        for kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR):
            cap = backend.capability(kind)
            self.group_sizes[kind] = tuple(cap.group_sizes) if cap else ()


def conv_op(name: str, unit: "LayerChoice", n: int, h: int, w: int, cin: int, cout: int, k: int,
            stride: int, groups: int, act: str | None, prev: str, fmts: _Formats, *,
            sparse: bool = True) -> Op:
    """A convolution (depthwise when ``groups > 1``) of an ``h x w`` input, BatchNorm and
    ``act`` folded in, at ``unit``'s format (its sparsity only if ``sparse`` and not grouped)."""
    ho, wo = -(-h // stride), -(-w // stride)
    m, kk = n * ho * wo, (cin // groups) * k * k
    kind = OpKind.DEPTHWISE_CONV2D if groups > 1 else OpKind.CONV2D
    quant = _quant(unit.precision, kk, fmts.group_sizes[kind])
    spars = SPARSITY_CHOICES[unit.sparsity] if (sparse and groups == 1) else DENSE
    tile = fmts.tiles.get(unit.tile) if kind in TILED_KINDS else None
    return Op(name, kind, (n, cout, ho, wo), ((n, cin, h, w),), m=m, n=cout // groups, k=kk,
              groups=groups, flops=2.0 * m * (cout // groups) * kk * groups,
              weight_elems=cout * kk, out_channels=cout, quant=quant, sparsity=spars,
              tile=tile, fused=("batchnorm",) + ((act,) if act else ()), inputs=(prev,))


def linear_op(name: str, unit: "LayerChoice", n: int, fin: int, fout: int, act: str | None,
              prev: str, fmts: _Formats, *, sparse: bool) -> Op:
    quant = _quant(unit.precision, fin, fmts.group_sizes[OpKind.LINEAR])
    return Op(name, OpKind.LINEAR, (n, fout), ((n, fin),), m=n, n=fout, k=fin,
              flops=2.0 * n * fout * fin, weight_elems=fin * fout, out_channels=fout,
              quant=quant, sparsity=SPARSITY_CHOICES[unit.sparsity] if sparse else DENSE,
              tile=fmts.tiles.get(unit.tile), fused=(act,) if act else (), inputs=(prev,))


def add_op(name: str, shape: tuple[int, ...], quant: QuantSpec, a: str, b: str) -> Op:
    """A residual add of two ``shape`` activations, at the precision its inputs arrive in."""
    return Op(name, OpKind.ADD, shape, (shape, shape), flops=float(math.prod(shape)),
              quant=quant, inputs=(a, b))


def pool_op(name: str, n: int, c: int, h: int, w: int, quant: QuantSpec, prev: str) -> Op:
    # kept dims (the form XNNPACK delegates), then a free flatten
    return Op(name, OpKind.GLOBAL_POOL, (n, c, 1, 1), ((n, c, h, w),), flops=float(n * c * h * w),
              quant=quant, inputs=(prev,))


def lower_arch(candidate: "Candidate", cfg: "MBConvConfig", input_shape: Sequence[int],
               backend: BackendSpec, tiles: Mapping[str, TileSpec]) -> list[Op]:
    """The op list of ``candidate`` at ``input_shape``: what lowering its torch subnet gives,
    built directly (tests check the two agree). Precision boundaries are not inserted."""
    n, c, h, w = input_shape
    ops: list[Op] = []
    choice = dict(candidate.layers)
    fmts = _Formats(backend, tiles)

    def conv(name, unit, cin, cout, k, stride, groups, act, prev, *, sparse=True):
        nonlocal h, w
        op = conv_op(name, choice[unit], n, h, w, cin, cout, k, stride, groups, act, prev, fmts,
                     sparse=sparse)
        ops.append(op)
        h, w = op.out_shape[2:]
        return op.name

    arch = candidate.arch
    prev = conv("stem", "stem", c, arch.stem_width, cfg.stem_kernel, cfg.stem_stride, 1,
                "hardswish", "", sparse=False)
    cin = arch.stem_width
    for i, (stage, scfg) in enumerate(zip(arch.stages, cfg.stages)):
        for j in range(stage.depth):
            unit = f"s{i}.b{j}"
            stride = scfg.stride if j == 0 else 1
            hidden = cin * stage.expands[j]
            block_in, block_in_shape = prev, (h, w)
            x = conv(f"{unit}.expand", unit, cin, hidden, 1, 1, 1, scfg.act, prev)
            x = conv(f"{unit}.dw", unit, hidden, hidden, stage.kernels[j], stride, hidden,
                     scfg.act, x)
            x = conv(f"{unit}.project", unit, hidden, stage.width, 1, 1, 1, None, x)
            if stride == 1 and cin == stage.width and (h, w) == block_in_shape:
                ops.append(add_op(f"{unit}.add", (n, stage.width, h, w),
                                  ops[-1].quant_for_activation(), block_in, x))
                x = ops[-1].name
            prev, cin = x, stage.width
    prev = conv("head", "head", cin, arch.head_width, 1, 1, 1, "hardswish", prev)
    ops.append(pool_op("pool", n, arch.head_width, h, w, ops[-1].quant_for_activation(), prev))
    prev = linear_op("feature", choice["feature"], n, arch.head_width, cfg.feature_width,
                     "hardswish", "pool", fmts, sparse=True)
    ops.append(prev)
    ops.append(linear_op("classifier", choice["classifier"], n, cfg.feature_width,
                         cfg.num_classes, None, prev.name, fmts, sparse=False))
    return ops


class MBConvLowering:
    """Lowers candidates of one space, for one back-end, at one input shape.

    ``ops(candidate)`` is the op list (``lower_arch`` plus precision boundaries).
    ``op_batch(candidates)`` is ``OpBatch.from_oplists([ops(c) for c in candidates])`` built from
    memoised rows: the same columns bit for bit, its ``ops`` a ``DeferredOps`` built on first
    read. Its memo lives as long as the object and is bounded by the space (for the shipped one:
    a few thousand op rows, some ten thousand unit runs); one instance is not safe to use from
    several threads at once.
    """

    def __init__(self, cfg: "MBConvConfig", backend: BackendSpec,
                 input_shape: Sequence[int]) -> None:
        self.cfg, self.backend = cfg, backend
        self.input_shape = tuple(input_shape)
        self.fmts = _Formats(backend, cfg.tiles)
        self._row_of: dict[tuple, int] = {}  # op key -> index into _rows
        self._rows: list[tuple] = []
        self._row_tiled: list[bool] = []  # the op runs its unit's tile
        self._table = np.zeros((0, N_COLS))
        self._tiled = np.zeros(0, dtype=bool)
        self._unit_of: dict[tuple, int] = {}  # unit key -> index into the unit runs
        self._unit_runs: list[tuple[int, ...]] = []  # the unit's row indices, in op order
        self._runs_flat = np.zeros(0, dtype=np.int64)
        self._runs_start = np.zeros(0, dtype=np.int64)
        self._runs_len = np.zeros(0, dtype=np.int64)
        tile_names = list(cfg.tiles)
        self._tile_id = {name: i + 1 for i, name in enumerate(tile_names)}  # 0: back-end's own
        self._tile_table = np.array([(0, 0, 0, 0, 0)] + [
            (t.mc, t.nc, t.kc, t.mr, t.nr) for t in (cfg.tiles[name] for name in tile_names)],
            dtype=np.int64).reshape(len(tile_names) + 1, 5)
        self._act_bits: dict[str, int] = {}
        self._block_names = [[f"s{i}.b{j}" for j in range(max(stage.depths))]
                             for i, stage in enumerate(cfg.stages)]

    # ------------------------------------------------------------------ records
    def ops(self, candidate: "Candidate") -> list[Op]:
        return insert_precision_boundaries(
            lower_arch(candidate, self.cfg, self.input_shape, self.backend, self.cfg.tiles))

    # ------------------------------------------------------------------ batch
    def op_batch(self, candidates: Sequence["Candidate"]) -> OpBatch:
        candidates = list(candidates)
        runs: list[int] = []  # one entry per unit of every candidate
        tiles: list[int] = []
        units_per: list[int] = []
        for candidate in candidates:
            before = len(runs)
            self._walk(candidate, runs, tiles)
            units_per.append(len(runs) - before)
        self._sync()
        runs_a = np.array(runs, dtype=np.int64)
        lengths = self._runs_len[runs_a]
        n_ops = int(lengths.sum())
        # op p of unit u sits at _runs_flat[_runs_start[run of u] + p]
        offsets = np.repeat(self._runs_start[runs_a] - (np.cumsum(lengths) - lengths), lengths)
        rows = self._runs_flat[offsets + np.arange(n_ops)]
        tile_ids = np.where(self._tiled[rows], np.repeat(np.array(tiles, dtype=np.int64),
                                                         lengths), 0)
        unit_cand = np.repeat(np.arange(len(candidates)), units_per)
        counts = np.bincount(unit_cand, weights=lengths, minlength=len(candidates)).astype(np.int64)
        ops = DeferredOps(n_ops, lambda: [op for c in candidates for op in self.ops(c)])
        return OpBatch.from_rows(self._table[rows], self._tile_table[tile_ids], counts, ops)

    def _sync(self) -> None:
        """Bring the numpy copies of the memo up to date with rows and runs added since."""
        if len(self._table) < len(self._rows):
            new = np.array(self._rows[len(self._table):], dtype=np.float64).reshape(-1, N_COLS)
            self._table = np.concatenate([self._table, new])
            self._tiled = np.array(self._row_tiled, dtype=bool)
        if len(self._runs_len) < len(self._unit_runs):
            new_runs = self._unit_runs[len(self._runs_len):]
            lengths = np.array([len(r) for r in new_runs], dtype=np.int64)
            self._runs_start = np.concatenate([self._runs_start,
                                               len(self._runs_flat) + np.cumsum(lengths) - lengths])
            self._runs_len = np.concatenate([self._runs_len, lengths])
            self._runs_flat = np.concatenate([self._runs_flat, np.array(
                [i for r in new_runs for i in r], dtype=np.int64)])

    def _bits(self, precision: str) -> int:
        bits = self._act_bits.get(precision)
        if bits is None:
            bits = self._act_bits[precision] = Precision.parse(precision).act_bits
        return bits

    def _walk(self, candidate: "Candidate", runs: list[int], tiles: list[int]) -> None:
        """Append the unit runs of ``candidate`` (and each unit's tile) in ``to_ops`` order."""
        cfg, tile_id, unit_of, act_bits = self.cfg, self._tile_id, self._unit_of, self._act_bits
        n, c, h, w = self.input_shape
        choice = dict(candidate.layers)
        arch = candidate.arch

        lc = choice["stem"]
        key = ("stem", arch.stem_width, lc.precision)
        run = unit_of.get(key)
        runs.append(self._add_unit(key) if run is None else run)
        tiles.append(tile_id.get(lc.tile, 0))
        stride = cfg.stem_stride
        h, w = -(-h // stride), -(-w // stride)
        bits = act_bits.get(lc.precision) or self._bits(lc.precision)
        cin = arch.stem_width
        for i, (stage, scfg) in enumerate(zip(arch.stages, cfg.stages)):
            width, stride = stage.width, scfg.stride
            names = self._block_names[i] if i < len(self._block_names) else ()
            for j, (kernel, expand) in enumerate(zip(stage.kernels, stage.expands)):
                lc = choice[names[j] if j < len(names) else f"s{i}.b{j}"]
                key = ("block", h, w, stride, cin, expand, width, kernel, bits, lc.precision,
                       lc.sparsity)
                run = unit_of.get(key)
                runs.append(self._add_unit(key) if run is None else run)
                tiles.append(tile_id.get(lc.tile, 0))
                h, w = -(-h // stride), -(-w // stride)
                bits = act_bits.get(lc.precision) or self._bits(lc.precision)
                cin, stride = width, 1  # only a stage's first block strides
        for unit, key in (("head", ("head", h, w, cin, arch.head_width)),
                          ("feature", ("feature", arch.head_width)), ("classifier", ("classifier",))):
            lc = choice[unit]
            key = key + (bits, lc.precision, lc.sparsity)
            run = unit_of.get(key)
            runs.append(self._add_unit(key) if run is None else run)
            tiles.append(tile_id.get(lc.tile, 0))
            bits = act_bits.get(lc.precision) or self._bits(lc.precision)

    # ------------------------------------------------------------------ memo misses
    def _add_unit(self, key: tuple) -> int:
        """The rows of one unit, as ``insert_precision_boundaries(lower_arch(...))`` emits them
        for it: a convert where its input arrives at other activation bits, then its ops."""
        cfg, n = self.cfg, self.input_shape[0]
        kind, rest = key[0], key[1:]
        rows: list[int] = []

        def convert(shape, want, have):
            if want != have:
                rows.append(self._row(("convert", shape, want, have)))

        if kind == "stem":
            width, precision = rest
            _, c, h, w = self.input_shape
            convert((n, c, h, w), self._bits(precision), 32)  # the model input is fp32
            rows.append(self._row(("conv", h, w, c, width, cfg.stem_kernel, cfg.stem_stride, 1,
                                   precision, "dense")))
        elif kind == "block":
            h, w, stride, cin, expand, width, kernel, have, precision, sparsity = rest
            bits, hidden = self._bits(precision), cin * expand
            ho, wo = -(-h // stride), -(-w // stride)
            convert((n, cin, h, w), bits, have)
            rows.append(self._row(("conv", h, w, cin, hidden, 1, 1, 1, precision, sparsity)))
            rows.append(self._row(("conv", h, w, hidden, hidden, kernel, stride, hidden,
                                   precision, "dense")))
            rows.append(self._row(("conv", ho, wo, hidden, width, 1, 1, 1, precision, sparsity)))
            if stride == 1 and cin == width and (ho, wo) == (h, w):
                # the add reads the block input through the convert the expand already made
                rows.append(self._row(("add", (n, width, ho, wo), bits)))
        elif kind == "head":
            h, w, cin, width, have, precision, sparsity = rest
            bits = self._bits(precision)
            convert((n, cin, h, w), bits, have)
            rows.append(self._row(("conv", h, w, cin, width, 1, 1, 1, precision, sparsity)))
            rows.append(self._row(("pool", width, h, w, bits)))
        elif kind == "feature":
            width, have, precision, sparsity = rest
            convert((n, width, 1, 1), self._bits(precision), have)  # the pool's kept dims
            rows.append(self._row(("linear", width, cfg.feature_width, precision, sparsity)))
        else:  # classifier: dense (no sparse layer), then back to float for the caller
            have, precision, _ = rest
            bits = self._bits(precision)
            convert((n, cfg.feature_width), bits, have)
            rows.append(self._row(("linear", cfg.feature_width, cfg.num_classes, precision,
                                   "dense")))
            convert((n, cfg.num_classes), 32, bits)
        self._unit_of[key] = len(self._unit_runs)
        self._unit_runs.append(tuple(rows))
        return self._unit_of[key]

    def _row(self, key: tuple) -> int:
        row = self._row_of.get(key)
        if row is None:
            op = self._build(key)
            row = self._row_of[key] = len(self._rows)
            self._rows.append(op_row(op))
            self._row_tiled.append(op.kind in TILED_KINDS)
        return row

    def _build(self, key: tuple) -> Op:
        """The op of a row key, built by the functions ``lower_arch`` uses (names left empty:
        they are not in the row). The format's tile is left to the batch's tile column."""
        n, kind = self.input_shape[0], key[0]
        if kind == "conv":
            h, w, cin, cout, k, stride, groups, precision, sparsity = key[1:]
            return conv_op("", LayerChoice(precision, sparsity), n, h, w, cin, cout, k, stride,
                           groups, None, "", self.fmts)
        if kind == "linear":
            fin, fout, precision, sparsity = key[1:]
            return linear_op("", LayerChoice(precision, sparsity), n, fin, fout, None, "",
                             self.fmts, sparse=True)
        if kind == "add":
            shape, bits = key[1:]
            return add_op("", shape, QuantSpec(bits, bits), "", "")
        if kind == "pool":
            c, h, w, bits = key[1:]
            return pool_op("", n, c, h, w, QuantSpec(bits, bits), "")
        shape, want, have = key[1:]
        return boundary_op("", shape, want, have)
