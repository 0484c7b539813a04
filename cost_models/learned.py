"""A learned latency model for one target device, transferred from other devices' measurements.

Latency is modelled as additive over kernels, as nn-Meter and FBNet's lookup tables do: a
candidate costs the sum of its ops' costs, and an op's cost on a device is a device-specific
linear function of its analytic terms (``codesign.cost_models.features``) plus a per-signature
deviation (a lookup-table correction). Two stages:

1. **Prior devices** (every measured row of every prior column): per device ``d``,
   ``y_d(x) = X(x) . a_d + counts(x) . delta_d + b_d`` — ``X`` the per-group analytic latency and
   op-count sums, ``counts`` how often the candidate runs each op signature.
2. **Target** (N measured rows): ``y(x) = sum_d alpha_d y_d(x) + X_lat(x) . beta + b +
   counts(x) . delta``, with ``alpha, beta, b >= 0`` (costs add up) — the target's per-op costs
   are a mix of the prior devices' per-op costs and the analytic terms, corrected per signature
   when there are enough samples to tell. The stage-1 *predictions* enter, never a prior row's
   measurement, so any candidate is priced from its op list alone (and the fitted model is
   smoother than the raw prior measurements: it averages their noise out).

Fits minimise a Huber loss on log latency (iteratively reweighted, Gauss-Newton on the additive
model), and rows more than 3x off the current fit get no weight: rows a device's runtime treats
specially (a graph its converter folds to nothing) cannot drag the fit. The target's shrinkage is
chosen from a fixed grid by cross-validation on its N rows (leave-one-out up to 20 rows, else
5-fold) with the one-standard-error rule (the most regularised setting within one standard error
of the best), and the chosen setting's cross-validated errors are the model's error estimate
(``Prediction.band``).

3. **Shrinkage toward a prior** that needs no target rows to rank candidates — total FLOPs (the
   ``learned`` kind) or the target's own analytic latency (the ``hybrid``): the prediction is
   ``fit^w x (scale x prior)^(1 - w)``, with ``w`` from ``learned_fit.BLEND_WEIGHTS`` chosen by
   nested cross-validation of the whole stage 2 on the N target rows (how often each weight
   misorders pairs of rows it did not see), the prior winning unless the fit is better by more
   than one standard error (``learned_fit.choose_blend``). With few rows the fit must be clearly
   better to replace the prior: a learned model should not rank worse than what it learned from.
   When the prior is kept, the error estimate is the blend's own out-of-fold error.

Hyperparameters are the constants of ``codesign.cost_models.learned_fit`` (the fitting
numerics: solver, stage fits, cross-validation): the same for every device and space, never
tuned per target (the only per-target choice is the cross-validated grid point above; a target
with no prior devices is never offered the grid points that drop the analytic terms, which would
leave a constant).

Persistence: ``save`` writes JSON (format ``codesign.learned``, ``FORMAT_VERSION``): arrays as
lists, latencies in milliseconds, the op-signature registry with each signature's reference
analytic latency (so a loaded model prices known ops exactly as when it was fitted), both
stages' coefficients and the target's training rows (so ``update`` can refit), and an optional
``target_info`` object saying what was measured (device, back-end, threads, and whether the
features were the target device's own analytic terms: ``kind`` "hybrid") so ``search`` can check
it prices the device it was fitted for; files without it stay readable. ``blend`` (and each
training row's ``shrink_priors``) records the shrinkage; a file without it prices by the fit alone,
as it did when it was saved. ``load`` rejects other
formats and versions; version 1 files (features version 1: a live flag where version 2 has the
liveness state) load and price exactly as when they were saved, and are written back as version 1.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from codesign.cost_models.base import CostModel, Prediction
from codesign.cost_models.features import (FEATURE_NAMES, FEATURE_VERSION, SIGNATURE_WIDTH,
                                           FeatureConfig, OpFeaturizer, SignatureTable,
                                           signatures_from_batch)
from codesign.cost_models.ir import OpBatch
from codesign.cost_models.learned_fit import (
    HUBER_LOG, IRLS_STEPS, MAX_SIGNATURE_TERMS, MIN_BLEND_ROWS, MIN_ROWS_PER_SIGNATURE,
    PRIOR_BASIS_RIDGE, PRIOR_SIGNATURE_RIDGE, ROW_FLOOR, SHRINK_PRIORS, TARGET_GRID, Blend, Design,
    DeviceFit, choose_blend, cv_folds, fit_prior_device, fit_target_device, json_float,
    monotone_map, prior_scale, robust_fit, target_prediction)

FORMAT = "codesign.learned"
# 2: signatures carry the liveness state (features version 2). Version 1 files (a live flag)
# still load and predict as they did: ``design`` looks their signatures up by that flag.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

PRIOR_BASIS = tuple(n for n in FEATURE_NAMES if not n.startswith("total.") and (
    n.endswith(".latency_s") or n.endswith(".count")))
TARGET_BASIS = tuple(n for n in PRIOR_BASIS if n.endswith(".latency_s"))
_PRIOR_COLS = np.array([FEATURE_NAMES.index(n) for n in PRIOR_BASIS])
_TARGET_COLS = np.array([FEATURE_NAMES.index(n) for n in TARGET_BASIS])
_SHRINK_COLS = np.array([FEATURE_NAMES.index(n) for n in SHRINK_PRIORS])
_MS = np.array([1e3 if n.endswith("_s") else 1.0 for n in FEATURE_NAMES])  # seconds -> ms


class ModelFormatError(ValueError):
    """A saved model this code cannot read; the message says why."""


class LearnedCostModel(CostModel):
    """Latency on one target device from its op list (see the module docstring).

    Build with ``fit``; ``predict`` prices an ``OpBatch``; ``predict_table`` prices candidates
    already featurised (calibration over a whole benchmark table).
    """

    name = "learned"

    def __init__(self, config: FeatureConfig, signatures: np.ndarray,
                 signature_latency_s: np.ndarray, priors: list[DeviceFit], target: DeviceFit,
                 training: dict[str, Any], featurizer: OpFeaturizer | None = None,
                 target_info: dict[str, Any] | None = None, *,
                 feature_version: int = FEATURE_VERSION, blend: Blend | None = None) -> None:
        self.config = config
        # The target fit shrunk toward a prior (``learned_fit.choose_blend``); None: the fit
        # alone (models saved before the shrinkage existed)
        self.blend = blend
        self.feature_version = feature_version  # 1: a model loaded from a version-1 file
        # What the target rows measured: {"kind", "device", "backend", "threads", "column"}
        # (keys present where known). Saved with the model; never read by the fits.
        self.target_info = dict(target_info or {})
        self.signatures = signatures  # (n_terms, SIGNATURE_WIDTH): the deviation terms' keys
        # Their analytic latency on the reference device when the model was fitted: features of
        # known ops use these, so later edits to device files or the analytic model do not move
        # this model's predictions (unknown ops are priced by the current analytic model).
        self.signature_latency_s = signature_latency_s
        self._index = {tuple(row): i for i, row in enumerate(signatures.tolist())}
        self.priors = priors
        self.target = target
        self.training = training  # {"latency_ms": [...], "design": Design}
        self.featurizer = featurizer or OpFeaturizer(config)

    # ------------------------------------------------------------------ featurising
    def design(self, table: SignatureTable, features: np.ndarray | None = None) -> Design:
        """The model's view of the candidates of ``table``.

        ``features`` (from an ``OpFeaturizer`` with this model's config) skips featurising.
        """
        keys = table.signatures
        if self.feature_version == 1:  # its signatures end with a live flag, not the state
            keys = keys.copy()
            keys[:, -1] = keys[:, -1] > 0
        cols = np.array([self._index.get(tuple(row), -1) for row in keys.tolist()],
                        dtype=np.int64)
        known = np.flatnonzero(cols >= 0)
        if features is None:
            terms = self.featurizer.signature_terms(table.unique)
            terms["latency_s"][known] = self.signature_latency_s[cols[known]]
            features = self.featurizer.aggregate(table, terms)
        X = features * _MS
        counts = table.counts.tocsc()[:, known]
        terms = np.zeros((table.n_candidates, len(self.signatures)))
        if len(known):  # summed: a version-1 model maps ops of several states to one term
            np.add.at(terms.T, cols[known], counts.toarray().T)
        return Design(X[:, _PRIOR_COLS], X[:, _TARGET_COLS], terms, X[:, _SHRINK_COLS])

    # ------------------------------------------------------------------ prediction
    def prior_predictions(self, d: Design) -> np.ndarray:
        """(n, n_priors) stage-1 latencies (ms) of every prior device."""
        if not self.priors:
            return np.zeros((len(d.terms), 0))
        return np.column_stack([d.prior_basis @ f.basis_coef + d.terms @ f.signature_coef
                                + f.intercept for f in self.priors])

    def predict_design(self, d: Design) -> np.ndarray:
        """Target latencies (ms) of the candidates of ``d``."""
        fit = target_prediction(self.target, self.prior_predictions(d), d)
        if self.blend is None:
            return fit
        return self.blend.apply(fit, self._shrink_prior(d, self.blend.prior))

    @staticmethod
    def _shrink_prior(d: Design, name: str) -> np.ndarray:
        if d.shrink_priors is None:
            raise ValueError("these training rows were saved without their prior features")
        return d.shrink_priors[:, SHRINK_PRIORS.index(name)]

    def predict_table(self, table: SignatureTable, features: np.ndarray | None = None
                      ) -> np.ndarray:
        """Target latencies (ms) of the candidates of a signature table."""
        return self.predict_design(self.design(table, features))

    @property
    def error_estimate(self) -> float:
        """Root-mean-square cross-validated |log error| of the target fit (0.1 ~ 10 %)."""
        errs = np.asarray(self.target.cv_log_errors)
        return float(np.sqrt(np.mean(errs ** 2))) if len(errs) else float("nan")

    def predict(self, batch: OpBatch) -> Prediction:
        """Target latency of every candidate; per-op terms are the analytic model's, rescaled
        so each candidate's ops sum to its learned latency (their bounds stay the analytic)."""
        total_ms = self.predict_table(signatures_from_batch(batch))
        analytic = self.featurizer.analytic.predict(batch)
        ratio = total_ms * 1e-3 / np.maximum(analytic.latency_s, 1e-30)
        op_latency = analytic.op_latency_s * ratio[batch.candidate]
        e = self.error_estimate
        band = (math.exp(-e), math.exp(e)) if math.isfinite(e) else (1.0, 1.0)
        assumptions = dict(analytic.assumptions)
        assumptions.update({"cost_model": self.name, "target": self.target.name,
                            "priors": [p.name for p in self.priors],
                            "reference_device": self.config.device,
                            "cv_rms_log_error": e,
                            "blend": None if self.blend is None else self.blend.to_json(),
                            "n_training_rows": len(self.training["latency_ms"])})
        return Prediction(latency_s=total_ms * 1e-3, op_latency_s=op_latency,
                          op_bound=analytic.op_bound, candidate=batch.candidate,
                          assumptions=assumptions,
                          op_compute_s=analytic.op_compute_s * ratio[batch.candidate],
                          op_memory_s=analytic.op_memory_s * ratio[batch.candidate], band=band)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit_priors(cls, table: SignatureTable, features: np.ndarray,
                   prior_latency_ms: np.ndarray | None, prior_names: Sequence[str], *,
                   config: FeatureConfig = FeatureConfig(),
                   featurizer: OpFeaturizer | None = None) -> "PriorStage":
        """Stage 1: one additive model per prior device, from every row of its column.

        Args:
            table, features: every candidate's signatures and ``OpFeaturizer`` features.
            prior_latency_ms: (n_candidates, n_priors) latencies (ms, > 0), every candidate
                measured on every prior device; None (or no columns) when there are none.
            prior_names: one name per prior column.
        """
        rows_with = np.diff(table.counts.tocsc().indptr)  # candidates running each signature
        frequent = np.flatnonzero(rows_with >= MIN_ROWS_PER_SIGNATURE)
        frequent = frequent[np.argsort(-rows_with[frequent], kind="stable")][:MAX_SIGNATURE_TERMS]
        frequent.sort()
        featurizer = featurizer or OpFeaturizer(config)
        latency_s = featurizer.signature_terms(table.unique)["latency_s"][frequent]
        model = cls(config, table.signatures[frequent], latency_s, [], DeviceFit(
            "", np.zeros(0), np.zeros(len(frequent)), 0.0), {"latency_ms": []}, featurizer)
        design = model.design(table, features)
        prior = np.zeros((table.n_candidates, 0)) if prior_latency_ms is None else \
            np.asarray(prior_latency_ms, dtype=np.float64)
        if prior.shape[1] != len(prior_names):
            raise ValueError(f"{prior.shape[1]} prior columns but {len(prior_names)} names")
        # Small dense solves: BLAS threads only add contention (100x slower on a busy host).
        with threadpool_limits(limits=1, user_api="blas"):
            fits = {name: fit_prior_device(name, design, prior[:, j])
                    for j, name in enumerate(prior_names)}
        return PriorStage(model, design, fits)

    @classmethod
    def fit(cls, table: SignatureTable, features: np.ndarray, *, target_name: str,
            train_rows: np.ndarray, target_latency_ms: np.ndarray,
            prior_latency_ms: np.ndarray | None = None, prior_names: Sequence[str] = (),
            config: FeatureConfig = FeatureConfig(), featurizer: OpFeaturizer | None = None,
            prior_stage: "PriorStage | None" = None,
            shrink_prior: str | None = "total.flops") -> "LearnedCostModel":
        """Fit both stages (stage 1 reused from ``prior_stage`` when given), then shrink the
        target fit toward ``shrink_prior`` (a ``SHRINK_PRIORS`` feature; None: the fit alone)
        as far as cross-validation on the target rows says (``learned_fit.choose_blend``).

        Args:
            table, features, prior_latency_ms, prior_names: as ``fit_priors``; with
                ``prior_stage`` the latencies are not needed and ``prior_names`` picks its fits.
            target_name: the target device's name (for reports).
            train_rows: indices (into ``table``) of the candidates measured on the target.
            target_latency_ms: their latencies (ms, > 0), aligned with ``train_rows``.
        """
        y = np.asarray(target_latency_ms, dtype=np.float64)
        train_rows = np.asarray(train_rows, dtype=np.int64)
        if y.shape != train_rows.shape or not np.all(y > 0):
            raise ValueError("target latencies must be positive, one per training row")
        stage = prior_stage or cls.fit_priors(table, features, prior_latency_ms, prior_names,
                                              config=config, featurizer=featurizer)
        base = stage.model
        model = cls(base.config, base.signatures, base.signature_latency_s,
                    [stage.fits[n] for n in prior_names],
                    DeviceFit(target_name, np.zeros(0), np.zeros(len(base.signatures)), 0.0),
                    {"latency_ms": []}, base.featurizer)
        if shrink_prior is not None and shrink_prior not in SHRINK_PRIORS:
            raise ValueError(f"shrink_prior {shrink_prior!r} is not one of {SHRINK_PRIORS}")
        # the table's candidates (op lists, never a target measurement) carry a kept prior
        # onto the fit's latencies
        model._fit_target(stage.design.rows(train_rows), y, shrink_prior, stage.design)
        return model

    def _fit_target(self, d: Design, y: np.ndarray, shrink_prior: str | None,
                    reference: Design | None = None) -> None:
        """Stage 2 on the training rows ``d``, then the shrinkage. ``reference``: candidates
        (their op lists only, no measurement) over which a kept prior is mapped onto the fit's
        latencies; None keeps the current model's map (``update``)."""
        self.training = {"latency_ms": y.tolist(), "design": d}
        pp = self.prior_predictions(d)
        old = self.blend
        with threadpool_limits(limits=1, user_api="blas"):
            self.target = fit_target_device(self.target.name, pp, d, y)
            self.blend = None if shrink_prior is None else self._choose_blend(
                pp, d, y, shrink_prior, reference, old)

    def _reference_map(self, fit: DeviceFit, ref: tuple[np.ndarray, Design], name: str):
        """Knots of the map from the prior to ``fit``'s latencies over the reference rows."""
        pp_ref, reference = ref
        return monotone_map(self._shrink_prior(reference, name),
                            target_prediction(fit, pp_ref, reference))

    def _choose_blend(self, pp: np.ndarray, d: Design, y: np.ndarray, name: str,
                      reference: Design | None, old: Blend | None) -> Blend:
        """Shrink the fitted target toward the prior ``name`` (see ``choose_blend``). The fit's
        out-of-fold predictions refit the whole stage 2 (its grid choice included) without each
        fold: nested cross-validation, so the fit is judged as it would price unseen rows."""
        prior = self._shrink_prior(d, name)
        folds = cv_folds(len(y))
        fold_fits = {}
        if len(y) < MIN_BLEND_ROWS:  # the fit cannot be cross-validated: the prior wins
            oof, blend = None, Blend(name, 0.0, prior_scale(y, prior))
        else:
            oof = np.empty(len(y))
            for f in np.unique(folds):
                test = folds == f
                fold_fits[f] = fit_target_device(self.target.name, pp[~test], d.rows(~test),
                                                 y[~test])
                oof[test] = target_prediction(fold_fits[f], pp[test], d.rows(test))
            blend = choose_blend(name, oof, prior, y)
            if blend.weight == 1.0:
                return blend
        ref = None if reference is None else (self.prior_predictions(reference), reference)
        if ref is not None:
            blend = replace(blend, knots=self._reference_map(self.target, ref, name))
        elif old is not None and old.prior == name:
            blend = replace(blend, knots=old.knots)
        # The error estimate (the search's band) is then the blend's own out-of-fold error:
        # each fold's prior mapped from that fold's fit (or scaled on the other rows).
        errs = np.empty(len(y))
        for f in np.unique(folds):
            test = folds == f
            rest = ~test if (~test).any() else test
            fold = Blend(name, blend.weight, prior_scale(y[rest], prior[rest]))
            if ref is not None and f in fold_fits:
                fold = replace(fold, knots=self._reference_map(fold_fits[f], ref, name))
            pred = fold.apply(prior[test] if oof is None else oof[test], prior[test])
            errs[test] = np.minimum(np.abs(np.log(y[test] / pred)), 1.0)
        self.target = replace(self.target, cv_log_errors=tuple(errs.tolist()))
        return blend

    def update(self, batch: OpBatch, measured_latency_s: np.ndarray) -> None:
        """Add measured candidates to the target's training rows and refit stage 2."""
        measured = np.asarray(measured_latency_s, dtype=np.float64) * 1e3
        if measured.shape != (batch.n_candidates,) or not np.all(measured > 0):
            raise ValueError(f"update needs one positive latency per candidate "
                             f"({batch.n_candidates}), got shape {measured.shape}")
        new = self.design(signatures_from_batch(batch))
        old = self.training["design"]
        shrink = None if old.shrink_priors is None else np.vstack([old.shrink_priors,
                                                                   new.shrink_priors])
        d = Design(np.vstack([old.prior_basis, new.prior_basis]),
                   np.vstack([old.target_basis, new.target_basis]),
                   np.vstack([old.terms, new.terms]), shrink)
        # a model saved before the shrinkage existed keeps pricing by its fit alone
        prior = None if self.blend is None or shrink is None else self.blend.prior
        self._fit_target(d, np.concatenate([self.training["latency_ms"], measured]), prior)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        d: Design = self.training["design"]
        payload = {
            "format": FORMAT, "version": 1 if self.feature_version == 1 else FORMAT_VERSION,
            "units": "milliseconds",
            "features": {"device": self.config.device, "backend": self.config.backend,
                         "threads": self.config.threads, "feature_version": self.feature_version,
                         "device_sha256": self.featurizer.analytic.device.sha256},
            "prior_basis": list(PRIOR_BASIS), "target_basis": list(TARGET_BASIS),
            "signatures": self.signatures.tolist(),
            "signature_latency_s": self.signature_latency_s.tolist(),
            "priors": [p.to_json() for p in self.priors],
            "target": self.target.to_json(),
            "target_info": self.target_info,
            "blend": None if self.blend is None else self.blend.to_json(),
            "training": {"latency_ms": list(self.training["latency_ms"]),
                         "prior_basis": d.prior_basis.tolist(),
                         "target_basis": d.target_basis.tolist(),
                         "terms": [[[int(i), float(r[i])] for i in np.flatnonzero(r)]
                                   for r in d.terms],
                         "shrink_priors": None if d.shrink_priors is None else
                         d.shrink_priors.tolist()},
            "hyperparameters": {"huber_log": HUBER_LOG, "irls_steps": IRLS_STEPS,
                                "row_floor": ROW_FLOOR, "prior_basis_ridge": PRIOR_BASIS_RIDGE,
                                "prior_signature_ridge": PRIOR_SIGNATURE_RIDGE,
                                "target_grid": [[json_float(a), json_float(b)]
                                                for a, b in TARGET_GRID]},
        }
        Path(path).write_text(json.dumps(payload))

    @classmethod
    def load(cls, path: Path) -> "LearnedCostModel":
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path}: cannot read a learned model: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else None
            raise ModelFormatError(f"{path}: not a {FORMAT} model (format {found!r})")
        version = payload.get("version")
        if version not in READABLE_VERSIONS:
            raise ModelFormatError(f"{path}: {FORMAT} version {version!r} is not supported; this "
                                   f"code reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        feature_version = 1 if version == 1 else FEATURE_VERSION
        try:
            feat = payload["features"]
            if feat["feature_version"] != feature_version or \
                    payload["prior_basis"] != list(PRIOR_BASIS) or \
                    payload["target_basis"] != list(TARGET_BASIS):
                raise ModelFormatError(f"{path}: written with other features (version "
                                       f"{feat['feature_version']}); re-run calibrate")
            config = FeatureConfig(feat["device"], feat["backend"], int(feat["threads"]))
            featurizer = OpFeaturizer(config)
            signatures = np.asarray(payload["signatures"], dtype=np.float64).reshape(
                -1, SIGNATURE_WIDTH)
            n_terms = len(signatures)
            latency_s = np.asarray(payload["signature_latency_s"], dtype=np.float64)
            if latency_s.shape != (n_terms,):
                raise ValueError(f"signature_latency_s has {latency_s.size} values for "
                                 f"{n_terms} signatures")
            priors = [DeviceFit.from_json(p, n_terms) for p in payload["priors"]]
            target = DeviceFit.from_json(payload["target"], n_terms)
            target_info = payload.get("target_info", {})
            if not isinstance(target_info, dict):
                raise ValueError("target_info is not an object")
            tr = payload["training"]
            terms = np.zeros((len(tr["latency_ms"]), n_terms))
            for r, row in enumerate(tr["terms"]):
                for i, v in row:
                    terms[r, int(i)] = float(v)
            shrink = tr.get("shrink_priors")  # absent or null: saved before the shrinkage
            design = Design(np.asarray(tr["prior_basis"], dtype=np.float64).reshape(
                -1, len(PRIOR_BASIS)), np.asarray(tr["target_basis"], dtype=np.float64).reshape(
                -1, len(TARGET_BASIS)), terms, None if shrink is None else np.asarray(
                    shrink, dtype=np.float64).reshape(-1, len(SHRINK_PRIORS)))
            blend = None if payload.get("blend") is None else Blend.from_json(payload["blend"])
        except ModelFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFormatError(f"{path}: malformed {FORMAT} model: "
                                   f"{type(exc).__name__}: {exc}") from None
        return cls(config, signatures, latency_s, priors, target,
                   {"latency_ms": list(tr["latency_ms"]), "design": design}, featurizer,
                   target_info, feature_version=feature_version, blend=blend)


@dataclass(frozen=True)
class PriorStage:
    """Stage 1 of a table: the signature registry, the table's design and per-device fits."""

    model: LearnedCostModel
    design: Design
    fits: dict[str, DeviceFit]


# DeviceFit, Design, robust_fit and TARGET_GRID live in learned_fit; still importable from here.
__all__ = ["FORMAT", "FORMAT_VERSION", "LearnedCostModel", "PriorStage", "DeviceFit", "Design",
           "ModelFormatError", "robust_fit", "TARGET_GRID"]
