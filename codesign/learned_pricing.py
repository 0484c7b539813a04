"""Which cost model prices a search: the analytic roofline, or a saved learned/hybrid model.

``--cost-model learned|hybrid`` reads a model written by ``codesign calibrate --save`` (the
versioned JSON of ``codesign.cost_models.learned``): ``--cost-model-file PATH``, or by default
``models/<device>-<backend>-<kind>.json`` in the user cache directory
(``codesign.kernels.cache_paths.cache_dir``: ``$CODESIGN_CACHE_DIR``, else the platform's user
cache). The model must have been fitted for the search's device (its target column or recorded
device), back-end and — for a hybrid — on that device's own analytic terms; anything else is bad
input, never a silent fallback to the analytic model.

A learned model was measured at one thread count, so a search it prices offers only that thread
count. Its latency band is its cross-validated error on its own training rows: latency x
exp(-/+ RMS |log error|) (``LearnedCostModel.predict``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codesign.userinput import BadInput
from codesign.kernels.cache_paths import cache_dir

__all__ = ["SEARCH_COST_MODELS", "LearnedPricer", "default_model_path", "load_pricer"]

SEARCH_COST_MODELS = ("analytic", "learned", "hybrid")


def default_model_path(device: str, backend: str, kind: str) -> Path:
    """``models/<device>-<backend>-<kind>.json`` in the user cache directory."""
    return cache_dir("models") / f"{device}-{backend}-{kind}.json"


@dataclass
class LearnedPricer:
    """A loaded learned/hybrid model and where it came from."""

    kind: str
    model: Any  # codesign.cost_models.learned.LearnedCostModel
    path: Path
    sha256: str
    threads: int

    def predict(self, ops):
        """``Prediction`` for one op list (band: the model's held-out multiplicative error)."""
        from codesign.cost_models.ir import OpBatch

        return self.model.predict(OpBatch.from_oplists([ops]))

    def provenance(self) -> dict[str, Any]:
        return {"cost_model_file": str(self.path), "cost_model_sha256": self.sha256,
                "cost_model_threads": self.threads,
                "cost_model_cv_rms_log_error": self.model.error_estimate,
                "cost_model_n_training_rows": len(self.model.training["latency_ms"])}


def load_pricer(kind: str, device, backend, path: Path | None) -> LearnedPricer | None:
    """The pricer for ``--cost-model kind`` on ``device``/``backend`` (None for analytic).

    Raises:
        BadInput: unknown kind; no model file; a model fitted for another device, back-end or
            kind (``ModelFormatError``, also exit 2, for an unreadable file).
    """
    from codesign.cost_models.learned import LearnedCostModel

    if kind not in SEARCH_COST_MODELS:
        raise BadInput(f"unknown --cost-model {kind!r}; valid: {', '.join(SEARCH_COST_MODELS)}")
    if kind == "analytic":
        if path is not None:
            raise BadInput("--cost-model-file needs --cost-model learned or hybrid")
        return None
    chosen = Path(path) if path is not None else default_model_path(device.name, backend.name,
                                                                    kind)
    if not chosen.is_file():
        how = ("--cost-model-file: no such file" if path is not None else
               f"no {kind} cost model for device {device.name} / back-end {backend.name}: "
               "looked for")
        hybrid = f" --cost-model hybrid --device {device.name}" if kind == "hybrid" else ""
        raise BadInput(f"{how} {chosen}; fit one with `codesign calibrate ... --target "
                       f"{device.name}{hybrid} --save {chosen}` or pass --cost-model-file PATH")
    model = LearnedCostModel.load(chosen)
    info = model.target_info
    where = f"--cost-model {kind}: {chosen}"
    fitted_for = info.get("device") or model.target.name
    if fitted_for != device.name:
        raise BadInput(f"{where} was fitted for device {fitted_for!r}, not {device.name!r}")
    if info.get("backend", backend.name) != backend.name:
        raise BadInput(f"{where} was fitted on back-end {info['backend']!r}, this search uses "
                       f"{backend.name!r}")
    model_kind = info.get("kind", "hybrid" if model.config.device == device.name else "learned")
    if model_kind != kind:
        raise BadInput(f"{where} is a {model_kind} model, not a {kind} one (calibrate "
                       f"--cost-model {kind} fits one)")
    if kind == "hybrid" and model.config.device != device.name:
        raise BadInput(f"{where}: its features are {model.config.device}'s analytic terms, a "
                       f"hybrid for {device.name} needs {device.name}'s")
    threads = int(info.get("threads", model.config.threads))
    return LearnedPricer(kind, model, chosen, hashlib.sha256(chosen.read_bytes()).hexdigest(),
                         threads)
