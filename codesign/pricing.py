"""Pricing a user's model on a device: the engine behind ``codesign predict``.

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

from codesign.learned_pricing import SEARCH_COST_MODELS as COST_MODELS, load_pricer
from codesign.userinput import BadInput
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import backend_for
from codesign.cost_models.base import BOUNDS, Prediction
from codesign.cost_models.devices import DeviceSpec
from codesign.cost_models.ir import OpBatch, Op
from codesign.cost_models.lowering import apply_precision, lower_module

DTYPES = ("fp32", "fp16", "int8")


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
    if cost_model not in COST_MODELS:
        raise BadInput(f"unknown cost model {cost_model!r}; valid: {', '.join(COST_MODELS)}")
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    spec = backend_for(device, backend)
    if threads is not None and not spec.threads_choosable and threads != device.default_threads:
        raise BadInput(f"back-end {spec.name} does not let the thread count be chosen")
    if threads is not None and not 1 <= threads <= device.cpu.n_cores:
        raise BadInput(f"--threads {threads}: {device.name} has {device.cpu.n_cores} cores")
    pricer = load_pricer(cost_model, device, spec, cost_model_file)
    if pricer is not None and threads is not None and threads != pricer.threads:
        raise BadInput(f"--cost-model {cost_model}: the model was measured at {pricer.threads} "
                       f"thread(s), not {threads}")
    ops = apply_precision(lower_module(module, input_shape), spec, dtype)
    batch = OpBatch.from_oplists([ops])
    if pricer is None:
        prediction = AnalyticCostModel(device, spec, threads=threads).predict(batch)
    else:
        prediction = pricer.model.predict(batch)
        prediction.assumptions.update({**pricer.provenance(), "threads": pricer.threads})
    return PricedModel(device, spec.name, tuple(ops), batch, prediction)
