"""Which cost model prices a search: the analytic roofline, a saved learned/hybrid model, or a
plug-in's (any name in ``codesign.registry.COST_MODELS``, entry point group
``codesign.cost_models``; its factory gets ``path=None``).

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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codesign.userinput import BadInput
from codesign.kernels.cache_paths import cache_dir

__all__ = ["FITTED_COST_MODELS", "cost_model_names", "CostModels", "LearnedPricer", "default_model_path",
           "load_pricer", "open_cost_models"]

# the kinds ``codesign calibrate`` fits and saves: read from a file, checked against the search
FITTED_COST_MODELS = ("learned", "hybrid")


def cost_model_names() -> list[str]:
    """What ``--cost-model`` takes: every registered cost model, built-ins first."""
    from codesign.registry import COST_MODELS

    return COST_MODELS.names()


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

    names = cost_model_names()
    if kind not in names:
        raise BadInput(f"unknown --cost-model {kind!r}; valid: {', '.join(names)}")
    if kind not in FITTED_COST_MODELS:  # the analytic model or a plug-in: nothing to load
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
    # the features' device by name: a hybrid fitted on a device YAML file keeps the file's path
    features_of = model.featurizer.analytic.device.name
    model_kind = info.get("kind", "hybrid" if features_of == device.name else "learned")
    if model_kind != kind:
        raise BadInput(f"{where} is a {model_kind} model, not a {kind} one (calibrate "
                       f"--cost-model {kind} fits one)")
    if kind == "hybrid" and features_of != device.name:
        raise BadInput(f"{where}: its features are {features_of}'s analytic terms, a "
                       f"hybrid for {device.name} needs {device.name}'s")
    threads = int(info.get("threads", model.config.threads))
    return LearnedPricer(kind, model, chosen, hashlib.sha256(chosen.read_bytes()).hexdigest(),
                         threads)


@dataclass
class CostModels:
    """``--cost-model KIND`` on one device / back-end: the ``CostModel`` (``predict(batch)``)
    pricing each thread count, every one made by the one factory, the ``COST_MODELS`` registry
    (``codesign.registry``), and kept. ``fitted``: the saved model of a learned/hybrid kind and
    where it came from (None: analytic); it prices its own thread count only (the factory
    refuses another)."""

    kind: str
    device: Any  # codesign.cost_models.devices.DeviceSpec
    backend: Any  # codesign.cost_models.backends.BackendSpec
    fitted: LearnedPricer | None = None
    _built: dict[int, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.fitted is not None:  # already loaded and checked by load_pricer: not read again
            self._built[self.fitted.threads] = self.fitted.model

    @property
    def threads(self) -> int | None:
        """The one thread count a fitted model prices (None: any)."""
        return self.fitted.threads if self.fitted is not None else None

    def at(self, threads: int):
        """The ``CostModel`` pricing ``threads`` threads.

        Raises:
            ValueError: a fitted model measured at another thread count.
        """
        if threads not in self._built:
            from codesign.registry import COST_MODELS

            path = self.fitted.path if self.fitted is not None else None
            self._built[threads] = COST_MODELS.get(self.kind)(self.device, self.backend,
                                                              threads=threads, path=path)
        return self._built[threads]

    def band_factors(self) -> tuple[float, float]:
        """What a predicted latency is multiplied by for its (low, high) band: a fitted model's
        cross-validated RMS |log error| e as exp(-/+e) (as ``LearnedCostModel.predict`` states
        it), the analytic model's the back-end's measured ``analytic_error`` e as 1 -/+ e (none,
        or a plug-in's: no band)."""
        if self.fitted is not None:
            e = float(self.fitted.model.error_estimate)
            return (math.exp(-e), math.exp(e)) if math.isfinite(e) else (1.0, 1.0)
        err = self.backend.analytic_error
        # the back-end's error was measured for the analytic model: a plug-in's is unknown
        e = err.value if err is not None and self.kind == "analytic" else 0.0
        return (1 - e, 1 + e)

    def provenance(self) -> dict[str, Any]:
        """The fitted model's file, hash, threads and error (empty for analytic)."""
        return self.fitted.provenance() if self.fitted is not None else {}


def open_cost_models(kind: str, device, backend, path: Path | None) -> CostModels:
    """The cost models of ``--cost-model kind`` [``--cost-model-file path``] on
    ``device``/``backend``. Raises BadInput as ``load_pricer`` does."""
    return CostModels(kind, device, backend, load_pricer(kind, device, backend, path))
