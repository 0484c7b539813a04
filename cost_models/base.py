"""The cost-model protocol: batched latency prediction over op lists.

Contract (every cost model, checked by ``tests/test_cost_model_conformance.py``):
- ``predict(batch)`` prices every op of every candidate in an ``OpBatch`` at once and returns a
  ``Prediction``; it never returns 0 s for an op it cannot price — it raises ``UnpriceableOp``.
- Predictions are deterministic for a given model state and batch.
- ``update(batch, measured_latency_s)`` learns from measurements; models with nothing to learn
  (the analytic roofline) keep the no-op default.
- ``save(path)`` / ``load(path)`` round-trip to identical predictions, through a documented,
  versioned JSON format (never a pickle).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codesign.cost_models.ir import KINDS_BY_CODE, OpBatch

BOUNDS = ("compute", "memory", "overhead")


class UnpriceableOp(ValueError):
    """An op the model (or its back-end) cannot price; the message names the op and why."""


@dataclass(frozen=True)
class Prediction:
    """Latencies for every op and candidate of a batch (seconds).

    ``op_bound[i]`` indexes ``BOUNDS``. ``latency_s[c]`` is the sum over candidate ``c``'s ops.
    ``band_s`` is the (low, high) multiplicative error band of the model, when it knows one.
    """

    latency_s: np.ndarray
    op_latency_s: np.ndarray
    op_bound: np.ndarray
    candidate: np.ndarray
    assumptions: dict[str, Any] = field(default_factory=dict)
    op_compute_s: np.ndarray | None = None
    op_memory_s: np.ndarray | None = None
    band: tuple[float, float] = (1.0, 1.0)

    def layers(self, batch: OpBatch, index: int) -> list[dict[str, Any]]:
        """Per-layer breakdown of one candidate, for reports and pareto.json."""
        rows = np.flatnonzero(self.candidate == index)
        out = []
        for i in rows:
            op = batch.ops[i]
            out.append({
                "name": op.name, "kind": KINDS_BY_CODE[batch.kind[i]].value,
                "latency_s": float(self.op_latency_s[i]), "bound": BOUNDS[self.op_bound[i]],
                "flops": float(batch.flops[i]),
                "bytes": float(batch.weight_bytes[i] + batch.act_in_bytes[i]
                               + batch.act_out_bytes[i]),
                "weight_bits": op.quant.weight_bits, "act_bits": op.quant.act_bits,
                "sparsity": op.sparsity.label, "tile": op.tile.label if op.tile else "default",
                "fused": list(op.fused),
            })
        return out


class CostModel(abc.ABC):
    """Prices op lists on one device through one back-end at one thread count."""

    name: str = "abstract"

    @abc.abstractmethod
    def predict(self, batch: OpBatch) -> Prediction:
        """Price every op of every candidate in ``batch``."""

    def update(self, batch: OpBatch, measured_latency_s: np.ndarray) -> None:
        """Learn from measured end-to-end latencies (one per candidate). No-op by default."""

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the model to ``path`` (versioned JSON)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path) -> "CostModel":
        """Read a model written by ``save``."""
