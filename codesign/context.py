"""Everything a trial needs, built once per search: device, back-end, space, cost models, evaluator.

The driver asks Optuna for params and decodes them (``suggest``); ``evaluate`` prices and scores
a candidate and can run anywhere the context can be rebuilt (a Ray worker included).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from codesign.evaluation.base import metric_keys, metric_of
from codesign.task_option import bind_task, check_evaluator, identity_fields
from codesign.userinput import BadInput, load_reference
from codesign.learned_pricing import CostModels, open_cost_models
from codesign.pricing import PricedCandidate
from codesign.cost_models.backends import BackendSpec, backend_for
from codesign.cost_models.base import CostModel
from codesign.cost_models.devices import DeviceSpec, load_device
from codesign.cost_models.ir import OpBatch, model_bytes, peak_activation_bytes
from codesign.kernels.cache_paths import cache_dir
from codesign.search_spaces.base import SearchSpace

# SearchConfig fields a --resume may change: how long, how wide and where the study runs, not
# what it is. Every other field is in the study's fingerprint (run.json "options"), so a field
# added to SearchConfig is checked on resume without further code.
RESUMABLE_OPTIONS = frozenset({"trials", "timeout_s", "workers", "threads_per_worker",
                               "ray_address", "out", "resume", "progress",
                               "progress_lines"})
# Fields compared by what they resolve to, in the identity's own keys (run_dir.IDENTITY_KEYS):
# a device by its name and spec sha256 (a catalog name or its YAML path), the back-end by name
# (given or default), the budget in seconds ("10ms" or "10 ms"), the space by name and sha256,
# a learned cost model by its file's sha256.
RESOLVED_OPTIONS = frozenset({"device", "backend", "budget_s", "budget_text", "space",
                              "cost_model", "cost_model_file"})


def study_options(config, baseline_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options of ``config`` (a SearchConfig) that define its study and are not in the
    identity already, by field name, as JSON values; ``baseline`` by its params (the same
    file under another path is the same study)."""
    import dataclasses

    if not dataclasses.is_dataclass(config):
        return {}
    out = {}
    for f in dataclasses.fields(config):
        if f.name in RESUMABLE_OPTIONS or f.name in RESOLVED_OPTIONS:
            continue
        value = baseline_params if f.name == "baseline" else getattr(config, f.name)
        out[f.name] = json.loads(json.dumps(value, default=str))
    return out


@dataclass
class TrialOutcome:
    """What one evaluated trial produced (or why it failed). ``accuracy`` holds the value of the
    evaluator's ``metric`` (perplexity for the transformer space)."""

    accuracy: float = float("nan")
    accuracy_interval: tuple[float, float] = (float("nan"), float("nan"))
    n_eval: int = 0
    latency_s: float = float("nan")
    latency_band_s: tuple[float, float] = (float("nan"), float("nan"))
    model_bytes: int = 0
    peak_activation_bytes: int = 0
    candidate_key: str = ""
    eval_seconds: float = 0.0
    pid: int = 0
    error: str | None = None
    # spaces with a second phase / a RAM check (transformer): time to first token, resident
    # bytes, and the constraints beyond the latency budget (feasible when <= 0)
    ttft_s: float | None = None
    memory_bytes: int | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    metric: str = "accuracy"

    def attrs(self) -> dict[str, Any]:
        extra = {k: v for k, v in (("ttft_s", self.ttft_s), ("memory_bytes", self.memory_bytes))
                 if v is not None}
        interval = metric_keys(self.metric)["interval"]
        return {**extra, interval: list(self.accuracy_interval), "n_eval": self.n_eval,
                "latency_s": self.latency_s, "latency_band_s": list(self.latency_band_s),
                "model_bytes": self.model_bytes,
                "peak_activation_bytes": self.peak_activation_bytes,
                "candidate": self.candidate_key, "eval_seconds": self.eval_seconds,
                "pid": self.pid}


def threads_choices(device: DeviceSpec, backend: BackendSpec) -> tuple[int, ...]:
    """Thread counts worth searching: 1, half and all of the device's default threads."""
    top = device.default_threads
    if not backend.threads_choosable:
        return (top,)
    return tuple(sorted({1, max(1, top // 2), top}))


def load_space(ref: str, backend: BackendSpec, device: DeviceSpec,
               threads: tuple[int, ...] | None = None, *, max_formats: int = 3) -> SearchSpace:
    """The space ``ref``; ``threads`` fixes the MBConv thread choices (a learned cost model
    prices the thread count it was measured at, nothing else); ``max_formats`` bounds the
    formats of an MBConv member."""
    from codesign.registry import SPACES

    if ref in SPACES:  # a built-in or a plug-in's entry point (codesign.registry)
        space = SPACES.get(ref).build(backend, device, threads, max_formats)
        space.name = ref  # what run.json records and --resume / export load again
        return space
    if ":" not in ref:
        raise BadInput(f"unknown --space {ref!r}; valid: {', '.join(SPACES.names())} "
                       "or MODULE:FACTORY")
    factory = load_reference(ref, "--space")
    try:
        space = factory(backend)
    except Exception as exc:
        raise BadInput(f"--space {ref!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(space, SearchSpace):
        raise BadInput(f"--space {ref!r} returned {type(space).__name__}, not a "
                       "codesign.search_spaces.base.SearchSpace")
    space.name = ref
    return space


def load_evaluator(ref: str | None, space: SearchSpace, seed: int, *,
                   progress_bar: bool | None = None):
    """The evaluator ``--evaluator ref`` names, else the space's built-in one. ``progress_bar``
    not None: a built-in evaluator's supernet training reports to a
    ``codesign.progress.TrainingProgress`` on stderr (a bar if True and stderr is a terminal,
    plain lines otherwise)."""
    from codesign.evaluation.base import FunctionEvaluator
    from codesign.progress import TrainingProgress

    if ref is not None:
        return FunctionEvaluator(load_reference(ref, "--evaluator"), name=ref)

    def progress(label: str):
        return None if progress_bar is None else TrainingProgress(label, bar=progress_bar)

    # the space's registered default (codesign.registry), by its entry, not its class
    from codesign.registry import EVALUATORS, entry_of

    entry = entry_of(space)
    if entry is not None and entry.evaluator is not None:
        return EVALUATORS.get(entry.evaluator)(space, seed=seed, progress=progress)
    raise BadInput(f"space {space.name!r} has no built-in evaluator; pass --evaluator MODULE:FUNC")


def load_baseline(path: Path, space: SearchSpace) -> dict[str, Any]:
    try:
        params = json.loads(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"--baseline {path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"--baseline {path}: not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise BadInput(f"--baseline {path}: expected a JSON object of params")
    try:
        space.decode(params)
    except ValueError as exc:
        raise BadInput(f"--baseline {path}: not a point of space {space.name}: {exc}") from None
    return params


@dataclass
class SearchContext:
    device: DeviceSpec
    backend: BackendSpec
    space: SearchSpace
    evaluator: Any
    budget_s: float
    cost_model_name: str
    baseline_params: dict[str, Any] | None = None
    # every CostModel that prices (one per thread count, made by the one factory); None: made
    # from cost_model_name here (a saved learned/hybrid model at its default path)
    cost_models: CostModels | None = None
    ttft_budget_s: float | None = None  # spaces with a prefill phase: time-to-first-token budget
    # the accuracy floor (a constraint like the budget) and the reference model it came from
    min_accuracy: float | None = None
    reference: dict[str, Any] | None = None
    task: Any = None  # --task: the user's data (codesign.search_spaces.tasks.UserTask)
    # what classical models reach on the evaluator's own split (perplexity: n-gram models)
    references: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.cost_models is None:
            self.cost_models = open_cost_models(self.cost_model_name, self.device, self.backend,
                                                None)
        if self.references is None and callable(getattr(self.evaluator, "references", None)):
            self.references = self.evaluator.references()

    def cost_model(self, threads: int) -> CostModel:
        """The search's cost model at ``threads`` threads (ValueError: a fitted model measured
        at another thread count)."""
        return self.cost_models.at(threads)

    @property
    def metric(self) -> str:
        """What the evaluator scores (``accuracy`` unless it declares another metric)."""
        return metric_of(self.evaluator)[0]

    @property
    def higher_is_better(self) -> bool:
        return metric_of(self.evaluator)[1]

    @property
    def error_fraction(self) -> float:
        err = self.backend.analytic_error
        return err.value if err is not None else 0.0

    def identity(self, config) -> dict[str, Any]:
        space_sha = getattr(getattr(self.space, "config", None), "sha256", "") or self.space.name
        return {"device": self.device.name, "device_sha256": self.device.sha256,
                "backend": self.backend.name, "budget_s": self.budget_s,
                "space": self.space.name, "space_sha256": space_sha,
                "cost_model": self.cost_model_name, "seed": config.seed,
                "sampler": config.sampler,
                "evaluator": getattr(config, "evaluator", None),
                "metric": self.metric, "higher_is_better": self.higher_is_better,
                "deploy_input_shape": list(self.space.deploy_input_shape),
                "eval_input_shape": list(self.space.eval_input_shape),
                **({"ttft_budget_s": self.ttft_budget_s} if self.ttft_budget_s is not None else {}),
                **({"min_accuracy": self.min_accuracy} if self.min_accuracy is not None else {}),
                **identity_fields(self.task),
                **self.cost_models.provenance(),
                "cache_dir": str(cache_dir()),
                "options": study_options(config, self.baseline_params)}

    def latency_band(self) -> dict[str, Any]:
        """What every member's ``latency_band_s`` is, for pareto.json's ``latency_band``:
        ``lower_fraction`` / ``upper_fraction`` below / above the latency, ``fraction`` the
        larger, and which measured error it is (``source``, ``ref``, ``file``, ``field``) on
        which ``devices``."""
        fitted = self.cost_models.fitted
        if fitted is not None:
            model = fitted.model
            e = float(model.error_estimate)
            lo, hi = (1 - math.exp(-e), math.exp(e) - 1) if math.isfinite(e) else (0.0, 0.0)
            device = model.target_info.get("device") or model.target.name
            n = len(model.training["latency_ms"])
            return {"fraction": hi, "lower_fraction": lo, "upper_fraction": hi,
                    "source": "measured",
                    "ref": f"cross-validated RMS |log error| {e:.3f} of the {fitted.kind} "
                           f"model on its {n} measured training rows",
                    "file": str(fitted.path), "field": "cost_model_cv_rms_log_error",
                    "devices": [device]}
        err = self.backend.analytic_error
        if err is None:
            return {"fraction": 0.0, "lower_fraction": 0.0, "upper_fraction": 0.0,
                    "source": "none", "ref": "the back-end file states no analytic_error: "
                    "the band is the point estimate", "file": _config_path(self.backend.path),
                    "field": "analytic_error", "devices": []}
        from codesign.cost_models.host import unmeasured_clock_note

        note = unmeasured_clock_note(self.device)
        return {"fraction": err.value, "lower_fraction": err.value, "upper_fraction": err.value,
                "source": err.source, "ref": err.ref, "file": _config_path(self.backend.path),
                "field": "analytic_error", "devices": list(self.backend.analytic_error_devices),
                **({"host_clock_note": note} if note else {})}

    def priced_ops(self, candidate) -> list:
        """The op list the search's cost model prices for ``candidate``."""
        from codesign.cost_models.tile_resolution import apply_tuned_tiles

        ops = self.space.to_ops(candidate)
        if self.cost_models.fitted is not None:
            return ops  # exactly as calibrate featurised the fitted model's training rows
        # on the host, a tile the candidate leaves free is the one the tuner measured best
        return apply_tuned_tiles(ops, self.device, self.backend)

    def price(self, candidate) -> PricedCandidate:
        """``candidate`` priced by the search's cost model at its thread count."""
        threads = getattr(candidate, "threads", self.cost_models.threads
                          or self.device.default_threads)
        model = self.cost_model(threads)
        ops = self.priced_ops(candidate)
        batch = OpBatch.from_oplists([ops])
        pred = model.predict(batch)
        latency = float(pred.latency_s[0])
        return PricedCandidate(tuple(ops), batch, pred, latency, self._band(latency),
                               model_bytes(ops), peak_activation_bytes(ops),
                               **self._other_phases(candidate, model))

    def _band(self, latency: float) -> tuple[float, float]:
        lo, hi = self.cost_models.band_factors()
        return (latency * lo, latency * hi)

    def _other_phases(self, candidate, model) -> dict[str, Any]:
        """A space's prefill phase (time to first token) and RAM check, where it has them, as
        ``PricedCandidate`` fields."""
        out: dict[str, Any] = {}
        prefill = self.space.prefill_ops(candidate)
        if prefill is not None:
            from codesign.cost_models.tile_resolution import apply_tuned_tiles

            ops = apply_tuned_tiles(prefill, self.device, self.backend)
            batch = OpBatch.from_oplists([ops])
            pred = model.predict(batch)
            ttft = float(pred.latency_s[0])
            out.update(prefill_batch=batch, prefill_prediction=pred, ttft_s=ttft,
                       ttft_band_s=self._band(ttft),
                       prefill_peak_activation_bytes=peak_activation_bytes(ops))
        resident = self.space.memory_bytes(candidate)
        if resident is not None:
            out.update(memory_bytes=int(resident),
                       memory_share_bytes=int(self.device.memory.app_ram_bytes))
        return out

    def seed_params(self) -> list[dict[str, Any]]:
        """The space's starting points for a search (none where it declares none)."""
        seeds = getattr(self.space, "seed_params", None)
        return list(seeds()) if callable(seeds) else []

    def constraints(self, priced: PricedCandidate) -> dict[str, float]:
        """Constraints beyond the latency budget (feasible when <= 0)."""
        out: dict[str, float] = {}
        if self.ttft_budget_s is not None and priced.ttft_s is not None:
            out["ttft_over_budget_s"] = priced.ttft_s - self.ttft_budget_s
        if priced.memory_bytes is not None:
            # the resident bytes plus the larger phase's activations must fit the RAM share
            peak = max(priced.peak_activation_bytes, priced.prefill_peak_activation_bytes or 0)
            out["memory_over_share_bytes"] = float(priced.memory_bytes + peak
                                                   - priced.memory_share_bytes)
        return out

    def evaluate(self, candidate, *, split: str = "val") -> TrialOutcome:
        start = time.perf_counter()
        try:
            priced = self.price(candidate)
            result = self.evaluator.evaluate(candidate, split=split)
            if not np.isfinite(result.accuracy):
                raise ValueError(f"the evaluator returned {self.metric} {result.accuracy}")
            if getattr(result, "metric", "accuracy") != self.metric:
                raise ValueError(f"the evaluator returned {result.metric}, but declares "
                                 f"{self.metric}")
        except Exception as exc:  # a trial that fails is recorded as FAIL, the search goes on
            return TrialOutcome(error=f"{type(exc).__name__}: {exc}", pid=os.getpid(),
                                eval_seconds=time.perf_counter() - start,
                                candidate_key=_key(candidate))
        return TrialOutcome(
            accuracy=float(result.accuracy), accuracy_interval=tuple(result.interval),
            n_eval=result.n, latency_s=priced.latency_s,
            latency_band_s=priced.latency_band_s, model_bytes=priced.model_bytes,
            peak_activation_bytes=priced.peak_activation_bytes, candidate_key=_key(candidate),
            eval_seconds=time.perf_counter() - start, pid=os.getpid(),
            ttft_s=priced.ttft_s, memory_bytes=priced.memory_bytes,
            constraints={**self.constraints(priced), **self._floor(result.accuracy)},
            metric=self.metric)

    def _floor(self, accuracy: float) -> dict[str, float]:
        if self.min_accuracy is None:
            return {}
        return {"accuracy_below_floor": self.min_accuracy - float(accuracy)}

    def evaluate_params(self, trial) -> TrialOutcome:
        try:
            candidate = self.space.suggest(trial)
        except Exception as exc:
            return TrialOutcome(error=f"cannot build candidate: {type(exc).__name__}: {exc}",
                                pid=os.getpid())
        return self.evaluate(candidate)


def _config_path(path: str) -> str:
    """``path`` relative to the project (``configs/backends/NAME.yaml``) when it is in it."""
    from codesign.cost_models.devices import CONFIG_DIR

    try:
        return str(Path(path).resolve().relative_to(CONFIG_DIR.resolve().parent))
    except ValueError:
        return path


def _key(candidate) -> str:
    key = getattr(candidate, "key", None)
    return key() if callable(key) else str(hash(candidate))


def build_context(config, *, device: DeviceSpec | None = None) -> SearchContext:
    """The context for a ``SearchConfig``; ``device``: the spec already loaded for
    ``config.device`` (a sweep ships specs to nodes that may not have the user's YAML file)."""
    device = device if device is not None else load_device(config.device)
    backend = backend_for(device, config.backend)
    cost_models = open_cost_models(config.cost_model, device, backend,
                                   getattr(config, "cost_model_file", None))
    threads = getattr(config, "threads", None)
    if threads is not None and cost_models.threads not in (None, threads):
        raise BadInput(f"--threads {threads}: the fitted cost model was measured at "
                       f"{cost_models.threads} thread(s) and prices nothing else")
    if threads is None:
        threads = cost_models.threads
    space = load_space(config.space, backend, device,
                       (threads,) if threads is not None else None,
                       max_formats=getattr(config, "max_formats", 3))
    check_evaluator(getattr(config, "task", None), config.evaluator)
    space, task = bind_task(space, getattr(config, "task", None))
    ttft_budget_s = getattr(config, "ttft_budget_s", None)
    if ttft_budget_s is not None and type(space).prefill_ops is SearchSpace.prefill_ops:
        raise BadInput(f"--ttft-budget: space {space.name!r} has no prefill phase (it applies "
                       "to --space transformer)")
    if cost_models.fitted is not None and type(space).prefill_ops is not SearchSpace.prefill_ops:
        raise BadInput(f"--cost-model {config.cost_model}: learned models are fitted on single-"
                       f"phase spaces; space {space.name!r} is priced with --cost-model analytic")
    evaluator = load_evaluator(config.evaluator, space, config.seed,
                               progress_bar=bool(getattr(config, "progress", False)))
    baseline = load_baseline(config.baseline, space) if config.baseline else None
    reference = evaluator.reference() if callable(getattr(evaluator, "reference", None)) \
        else None
    min_accuracy = getattr(config, "min_accuracy", None)
    if min_accuracy is not None and not metric_of(evaluator)[1]:
        raise BadInput(f"--min-accuracy: space {space.name!r} is scored by "
                       f"{metric_of(evaluator)[0]}, not accuracy")
    if min_accuracy is None and reference is not None:
        min_accuracy = reference["accuracy"]
    return SearchContext(device, backend, space, evaluator, config.budget_s, config.cost_model,
                         baseline, cost_models, ttft_budget_s, min_accuracy, reference, task)

