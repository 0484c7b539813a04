"""Features for learned latency models, from the op list and the analytic model's per-op terms.

Two views of a batch of candidates, both built from *op signatures* (an op's pricing columns in
``OpBatch`` — kind, GEMM dims, FLOPs, bytes, precision, sparsity, tile — without its name):
- ``SignatureTable``: the distinct signatures of the batch and a sparse (candidates x
  signatures) count matrix. Latency models that are additive over kernels (nn-Meter's kernel
  sums, FBNet's per-layer lookup tables) are linear in these counts.
- ``aggregate``: per candidate, sums by kind group (see ``KIND_GROUPS``) of the analytic
  model's per-op latency, compute, memory and overhead terms (seconds), FLOPs, bytes moved and
  op counts, plus totals.

An op's signature also records its *liveness state* (``liveness``): live (it reads the model
input, directly or through other ops, and its result reaches the model output, the last op), dead
(reads the input, result unused), constant (reads no input, result used) or unused (neither).
A runtime that folds constants and removes dead code never runs the non-live ops, one that does
not runs them in full, and converters do one without the other (dead-code elimination is near
universal, folding of a conv over a constant is not): the states are kept apart so the learned
model can price each from the target device's measurements. Liveness needs the ops' ``inputs``;
a batch without its ``ops`` list counts every op as live.

Each distinct signature is priced once, as a one-op candidate on the reference device
(``FeatureConfig``): a cell network of 15,625 architectures has a few dozen distinct ops, so
featurising is dominated by building the op lists, not by pricing. Pricing an op on its own makes
its terms independent of the rest of the model (the analytic model's "whole model's weights stay
in cache" rule sees only that op); the model's total weight bytes are a separate feature.
Free ops (views, reshapes) are priced at zero by rule and are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import sparse

from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import KIND_CODES, PRICED_FREE_KINDS, Op, OpBatch, OpKind

# 2: the signature's last column is the liveness state (``LIVE``/``DEAD``/``CONSTANT``/
# ``UNUSED``); version 1 had a live flag (1 live, 0 any other state). Aggregates are unchanged.
FEATURE_VERSION = 2
LIVE, UNUSED, DEAD, CONSTANT = 1.0, 0.0, -1.0, -2.0  # "> 0" is live in both versions
NONLIVE_STATES = (DEAD, CONSTANT, UNUSED)

KIND_GROUPS: dict[str, tuple[OpKind, ...]] = {
    "conv": (OpKind.CONV2D,),
    "depthwise": (OpKind.DEPTHWISE_CONV2D,),
    "gemm": (OpKind.LINEAR, OpKind.MATMUL, OpKind.ATTENTION),
    "binary": (OpKind.ADD, OpKind.MUL),
    "pool": (OpKind.AVG_POOL, OpKind.MAX_POOL, OpKind.GLOBAL_POOL),
    "activation": (OpKind.ELEMENTWISE, OpKind.SOFTMAX, OpKind.ROPE),
    "norm": (OpKind.NORM,),
    "data_movement": (OpKind.LAYOUT, OpKind.CONCAT, OpKind.PAD, OpKind.EMBEDDING,
                      OpKind.QUANTIZE, OpKind.DEQUANTIZE),
}
GROUP_TERMS = ("latency_s", "compute_s", "memory_s", "overhead_s", "flops", "bytes", "count")
FOLDABLE_TERMS = ("latency_s", "flops", "count")
TOTALS = ("latency_s", "flops", "bytes", "weight_bytes", "count")
# Group terms sum over live ops only; "foldable" sums the ops that are not live; "total" all ops.
FEATURE_NAMES = tuple(f"{g}.{t}" for g in KIND_GROUPS for t in GROUP_TERMS) + tuple(
    f"foldable.{t}" for t in FOLDABLE_TERMS) + tuple(f"total.{t}" for t in TOTALS)

_GROUP_OF_KIND = np.full(len(OpKind), -1, dtype=np.int64)
for _g, _kinds in enumerate(KIND_GROUPS.values()):
    for _k in _kinds:
        _GROUP_OF_KIND[KIND_CODES[_k]] = _g
for _k in OpKind:
    if _k not in PRICED_FREE_KINDS and _GROUP_OF_KIND[KIND_CODES[_k]] < 0:
        raise AssertionError(f"op kind {_k.value} has no feature group")  # a new kind: add it

# OpBatch columns that decide an op's price (everything but its name and graph position).
_SIGNATURE_COLUMNS = ("kind", "m", "n", "k", "groups", "flops", "weight_bytes",
                      "dense_weight_bytes", "out_elems", "act_in_bytes", "act_out_bytes", "dtype",
                      "density", "pattern", "weight_bits", "act_bits", "group_size", "dynamic_act")
# (not the op's ATen operator, OpBatch.runtime_op: the saved models' signature width is fixed;
# two ops alike but for running in portable kernels or not share one signature)
SIGNATURE_WIDTH = len(_SIGNATURE_COLUMNS) + 6  # + the tile (mc, nc, kc, mr, nr) + state


def liveness(ops: Sequence[Op]) -> np.ndarray:
    """Per op its state: ``LIVE``, ``DEAD``, ``CONSTANT`` or ``UNUSED`` (see the module doc).

    An op depends on the input when one of its ``inputs`` is the model input ("") or an op that
    does; names that are no op (parameters, constant buffers) are constants. It reaches the output
    when it is the last op or an op that reaches the output reads it.
    """
    index = {op.name: i for i, op in enumerate(ops)}
    depends = np.zeros(len(ops), dtype=bool)
    for i, op in enumerate(ops):
        depends[i] = any(src == "" or (src in index and depends[index[src]]) for src in op.inputs)
    reaches = np.zeros(len(ops), dtype=bool)
    if len(ops):
        reaches[-1] = True
    for i in range(len(ops) - 1, -1, -1):
        if reaches[i]:
            for src in ops[i].inputs:
                j = index.get(src)
                if j is not None:
                    reaches[j] = True
    return np.select([depends & reaches, depends, reaches], [LIVE, DEAD, CONSTANT], UNUSED)


def live_mask(ops: Sequence[Op]) -> np.ndarray:
    """Per op: does it depend on the model input and reach the model output (the last op)?"""
    return liveness(ops) == LIVE


@dataclass(frozen=True)
class FeatureConfig:
    """The reference device whose analytic terms are the features.

    The features only have to rank and scale ops consistently; a learned model maps them to the
    target device. Defaults: a current phone CPU through XNNPACK on one thread (the benchmark
    data's phones ran single-threaded CPU inference).
    """

    device: str = "pixel7"
    backend: str = "xnnpack"
    threads: int = 1


@dataclass(frozen=True)
class SignatureTable:
    """The distinct op signatures of a batch of candidates.

    Attributes:
        signatures: (n_signatures, SIGNATURE_WIDTH) float array, one row per distinct op.
        counts: sparse (n_candidates, n_signatures) matrix: how often each candidate runs each.
        unique: an ``OpBatch`` with each distinct op as its own one-op candidate.
    """

    signatures: np.ndarray
    counts: sparse.csr_matrix
    unique: OpBatch

    @property
    def n_candidates(self) -> int:
        return self.counts.shape[0]


def _signature_matrix(batch: OpBatch, state: np.ndarray) -> np.ndarray:
    cols = [np.asarray(getattr(batch, c), dtype=np.float64) for c in _SIGNATURE_COLUMNS]
    return np.column_stack(cols + [batch.tile.astype(np.float64), state.astype(np.float64)]) \
        if len(batch) else np.zeros((0, SIGNATURE_WIDTH))


def _take(batch: OpBatch, rows: np.ndarray) -> OpBatch:
    """The ops ``rows`` of ``batch``, each as its own candidate."""
    fields = {name: getattr(batch, name)[rows] for name in (
        "kind", "m", "n", "k", "groups", "flops", "weight_bytes", "dense_weight_bytes",
        "out_elems", "act_in_bytes", "act_out_bytes", "dtype", "density", "pattern", "tile",
        "weight_bits", "act_bits", "group_size", "dynamic_act", "runtime_op")}
    ops = [batch.ops[i] for i in rows] if batch.ops else []
    return OpBatch(n_candidates=len(rows), candidate=np.arange(len(rows)), ops=ops, **fields)


def signatures_from_batch(batch: OpBatch) -> SignatureTable:
    """Distinct (non-free) op signatures of ``batch`` and the per-candidate counts."""
    live = np.full(len(batch), LIVE)
    if batch.ops:
        bounds = np.flatnonzero(np.diff(batch.candidate)) + 1
        live = np.concatenate([liveness(batch.ops[a:b]) for a, b in
                               zip(np.r_[0, bounds], np.r_[bounds, len(batch)])]) \
            if len(batch) else live
    keep = np.flatnonzero(_GROUP_OF_KIND[batch.kind] >= 0)
    sig = _signature_matrix(batch, live)[keep]
    uniq, first, inverse = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    counts = sparse.csr_matrix((np.ones(len(keep)), (batch.candidate[keep], inverse.ravel())),
                               shape=(batch.n_candidates, len(uniq)))
    return SignatureTable(uniq, counts, _take(batch, keep[first]))


def _op_key(op: Op, live: float) -> tuple:
    return (op.kind, op.m, op.n, op.k, op.groups, op.flops, op.weight_elems, op.out_channels,
            op.quant, op.sparsity, op.tile, op.in_shapes, op.out_shape, live)


def signatures_from_oplists(oplists: Iterable[Sequence[Op]]) -> SignatureTable:
    """As ``signatures_from_batch(OpBatch.from_oplists(oplists))``, without building the batch.

    Ops are deduplicated by their fields first (a dict lookup per op), so only distinct ops
    reach ``OpBatch``. ``oplists`` may be a generator: each list is read once and dropped, so
    thousands of candidates never need to be in memory at once.
    """
    index: dict[tuple, int] = {}
    reps: list[Op] = []
    reps_live: list[float] = []
    rows, cols = [], []
    n_candidates = 0
    for c, ops in enumerate(oplists):
        n_candidates = c + 1
        for op, live in zip(ops, liveness(ops).tolist()):
            if op.kind in PRICED_FREE_KINDS:
                continue
            key = _op_key(op, live)
            j = index.get(key)
            if j is None:
                j = index[key] = len(reps)
                reps.append(op)
                reps_live.append(live)
            rows.append(c)
            cols.append(j)
    reps_batch = OpBatch.from_oplists([[op] for op in reps])
    sig = _signature_matrix(reps_batch, np.asarray(reps_live, dtype=np.float64))
    # Different fields can still price identically (e.g. names of shapes): merge equal rows.
    uniq, first, inverse = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    cols = inverse.ravel()[np.asarray(cols, dtype=np.int64)]
    counts = sparse.csr_matrix((np.ones(len(rows)), (np.asarray(rows, dtype=np.int64), cols)),
                               shape=(n_candidates, len(uniq)))
    return SignatureTable(uniq, counts, _take(reps_batch, first))


class OpFeaturizer:
    """Turns signature tables into per-candidate features on the reference device.

    ``signature_terms`` gives each distinct op's analytic terms; ``aggregate`` sums them per
    candidate into ``FEATURE_NAMES`` (seconds, FLOPs, bytes, counts).
    """

    def __init__(self, config: FeatureConfig = FeatureConfig()) -> None:
        self.config = config
        device = load_device(config.device)
        self.analytic = AnalyticCostModel(device, config.backend, threads=config.threads)

    def signature_terms(self, unique: OpBatch) -> dict[str, np.ndarray]:
        """Per distinct op: analytic latency/compute/memory/overhead (s), FLOPs, bytes, group.

        Raises:
            UnpriceableOp: an op the reference back-end cannot run.
        """
        pred = self.analytic.predict(unique)
        compute = pred.op_compute_s
        memory = pred.op_memory_s
        # Each distinct op is priced as a candidate of its own, so the analytic model charged
        # every one the per-inference program cost: taken back out, as it is no op's term (the
        # fit's intercept carries it). Left in, it swamped the per-op terms on light ops.
        latency = np.where(pred.op_latency_s > 0,
                           pred.op_latency_s - self.analytic.program_overhead_s, 0.0)
        return {
            "latency_s": latency, "compute_s": compute, "memory_s": memory,
            "overhead_s": latency - np.maximum(compute, memory), "flops": unique.flops,
            "bytes": unique.weight_bytes + unique.act_in_bytes + unique.act_out_bytes,
            "count": np.ones(len(unique)), "weight_bytes": unique.weight_bytes,
            "group": _GROUP_OF_KIND[unique.kind],
        }

    def aggregate(self, table: SignatureTable,
                  terms: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(n_candidates, len(FEATURE_NAMES)) features of the candidates of ``table``."""
        terms = terms if terms is not None else self.signature_terms(table.unique)
        live = table.signatures[:, -1] > 0
        per_sig = np.zeros((len(table.signatures), len(FEATURE_NAMES)))
        rows = np.flatnonzero(live)
        for t, term in enumerate(GROUP_TERMS):
            per_sig[rows, terms["group"][rows] * len(GROUP_TERMS) + t] = terms[term][rows]
        base = len(KIND_GROUPS) * len(GROUP_TERMS)
        for t, term in enumerate(FOLDABLE_TERMS):
            per_sig[~live, base + t] = terms[term][~live]
        base += len(FOLDABLE_TERMS)
        for t, term in enumerate(TOTALS):
            per_sig[:, base + t] = terms[term]
        return np.asarray(table.counts @ per_sig)

    def features_from_oplists(self, oplists: Sequence[Sequence[Op]]) -> np.ndarray:
        return self.aggregate(signatures_from_oplists(oplists))

    def features_from_batch(self, batch: OpBatch) -> np.ndarray:
        return self.aggregate(signatures_from_batch(batch))


__all__ = ["FEATURE_VERSION", "FEATURE_NAMES", "KIND_GROUPS", "FeatureConfig", "OpFeaturizer",
           "SignatureTable", "LIVE", "DEAD", "CONSTANT", "UNUSED", "NONLIVE_STATES", "liveness",
           "live_mask", "signatures_from_batch", "signatures_from_oplists"]
