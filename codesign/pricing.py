"""Pricing on a device: a user's model (the engine behind ``codesign predict``) and the record a
search's candidate is priced into (``PricedCandidate``, made by ``SearchContext.price``).

``cost_model`` is ``analytic`` (the roofline from the device spec) or ``learned``/``hybrid``: a
model saved by ``codesign calibrate --save`` for this device and back-end, found as ``search``
finds it (``codesign.learned_pricing``). A learned model was measured at one thread count, so it
prices only that one; its per-layer terms are the analytic ones rescaled to its total.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codesign.learned_pricing import cost_model_names, open_cost_models
from codesign.userinput import BadInput
from codesign.cost_models.backends import backend_for
from codesign.cost_models.base import BOUNDS, Prediction
from codesign.cost_models.devices import DeviceSpec
from codesign.cost_models.ir import OpBatch, Op

DTYPES = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class PricedCandidate:
    """One search candidate priced by the search's cost model: its (decode) phase, and where the
    space has them a prefill phase (time to first token) and a RAM check; a phase or check the
    space lacks is None. Bands are (low, high) in seconds."""

    ops: tuple[Op, ...]
    batch: OpBatch
    prediction: Prediction
    latency_s: float
    latency_band_s: tuple[float, float]
    model_bytes: int
    peak_activation_bytes: int
    # the prefill phase (spaces with one): latency_s is then per decoded token
    ttft_s: float | None = None
    ttft_band_s: tuple[float, float] | None = None
    prefill_batch: OpBatch | None = None
    prefill_prediction: Prediction | None = None
    prefill_peak_activation_bytes: int | None = None
    # the RAM check (spaces with one): resident bytes, and the device's share for the app
    memory_bytes: int | None = None
    memory_share_bytes: int | None = None


@dataclass(frozen=True)
class PricedModel:
    device: DeviceSpec
    backend: str
    ops: tuple[Op, ...]
    batch: OpBatch
    prediction: Prediction

    @property
    def latency_s(self) -> float:
        return float(self.prediction.latency_s[0])

    def bound_shares(self) -> dict[str, float]:
        shares = np.bincount(self.prediction.op_bound, weights=self.prediction.op_latency_s,
                             minlength=len(BOUNDS)) / max(self.latency_s, 1e-30)
        return {b: float(s) for b, s in zip(BOUNDS, shares)}

    def to_json(self) -> dict[str, Any]:
        layers = [{k: row[k] for k in ("name", "kind", "latency_s", "bound", "flops", "bytes",
                                        "weight_bits", "act_bits", "sparsity", "fused")}
                  for row in self.prediction.layers(self.batch, 0)]
        return {"device": self.device.name, "backend": self.backend, "latency_s": self.latency_s,
                "assumptions": self.prediction.assumptions, "bound_shares": self.bound_shares(),
                "layers": layers}


def price_module(module, input_shape, device: DeviceSpec, *, backend: str | None = None,
                 dtype: str = "fp32", threads: int | None = None,
                 cost_model: str = "analytic", cost_model_file: Path | None = None
                 ) -> PricedModel:
    """Lower ``module`` at ``input_shape`` and price it on ``device``.

    Raises:
        BadInput, SpecError, LoweringError, UnpriceableOp: bad choices, an unknown back-end, a
            model that cannot be lowered, or an op the back-end cannot run.
    """
    from codesign.cost_models.lowering import apply_precision, lower_module  # imports torch

    if cost_model not in cost_model_names():
        raise BadInput(f"unknown --cost-model {cost_model!r}; "
                       f"valid: {', '.join(cost_model_names())}")
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    spec = backend_for(device, backend)
    if threads is not None and not spec.threads_choosable and threads != device.default_threads:
        raise BadInput(f"back-end {spec.name} does not let the thread count be chosen")
    if threads is not None and not 1 <= threads <= device.cpu.n_cores:
        raise BadInput(f"--threads {threads}: {device.name} has {device.cpu.n_cores} cores")
    models = open_cost_models(cost_model, device, spec, cost_model_file)
    if models.threads is not None and threads is not None and threads != models.threads:
        raise BadInput(f"--cost-model {cost_model}: the model was measured at {models.threads} "
                       f"thread(s), not {threads}")
    ops = apply_precision(lower_module(module, input_shape), spec, dtype)
    batch = OpBatch.from_oplists([ops])
    threads = threads if threads is not None else models.threads or device.default_threads
    prediction = models.at(threads).predict(batch)
    if models.fitted is not None:  # which saved model priced it
        prediction.assumptions.update({**models.provenance(), "threads": threads})
    return PricedModel(device, spec.name, tuple(ops), batch, prediction)
