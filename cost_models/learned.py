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

Hyperparameters are the module constants below: the same for every device and space, never
tuned per target (the only per-target choice is the cross-validated grid point above; a target
with no prior devices is never offered the grid points that drop the analytic terms, which would
leave a constant).

Persistence: ``save`` writes JSON (format ``codesign.learned``, ``FORMAT_VERSION``): arrays as
lists, latencies in milliseconds, the op-signature registry with each signature's reference
analytic latency (so a loaded model prices known ops exactly as when it was fitted), both
stages' coefficients and the target's training rows (so ``update`` can refit), and an optional
``target_info`` object saying what was measured (device, back-end, threads, and whether the
features were the target device's own analytic terms: ``kind`` "hybrid") so ``search`` can check
it prices the device it was fitted for; files without it stay readable. ``load`` rejects other
formats and versions; version 1 files (features version 1: a live flag where version 2 has the
liveness state) load and price exactly as when they were saved, and are written back as version 1.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

from codesign.cost_models.base import CostModel, Prediction
from codesign.cost_models.features import (FEATURE_NAMES, FEATURE_VERSION, SIGNATURE_WIDTH,
                                           FeatureConfig, OpFeaturizer, SignatureTable,
                                           signatures_from_batch)
from codesign.cost_models.ir import OpBatch

FORMAT = "codesign.learned"
# 2: signatures carry the liveness state (features version 2). Version 1 files (a live flag)
# still load and predict as they did: ``design`` looks their signatures up by that flag.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# ---------------------------------------------------------------------------- hyperparameters
HUBER_LOG = 0.1  # |log error| where the loss turns linear: a 10 % miss is the "typical" error
GROSS_LOG = math.log(3.0)  # rows off by more than 3x get no weight (unless that is most rows)
IRLS_STEPS = 6  # reweighting steps; the fits settle in 3-4
ROW_FLOOR = 0.1  # x median latency: the smallest latency a row is weighted as before reweighting
PRIOR_BASIS_RIDGE = 1e-4  # stage 1 shrinkage of the analytic coefficients (scaled units)
PRIOR_SIGNATURE_RIDGE = 1e-2  # stage 1 shrinkage of per-signature deviations
MIN_ROWS_PER_SIGNATURE = 3  # a deviation seen in fewer rows cannot be told from noise
MAX_SIGNATURE_TERMS = 1000  # keep the most frequent signatures' deviations
# Stage 2 grid of (analytic, signature) shrinkage, most regularised first; inf drops the terms.
TARGET_GRID = ((math.inf, math.inf), (1.0, math.inf), (0.0, math.inf), (math.inf, 0.1),
               (1.0, 0.1), (0.0, 0.1), (1.0, 0.01), (0.0, 0.01))
LOO_MAX_ROWS = 20
CV_FOLDS = 5

PRIOR_BASIS = tuple(n for n in FEATURE_NAMES if not n.startswith("total.") and (
    n.endswith(".latency_s") or n.endswith(".count")))
TARGET_BASIS = tuple(n for n in PRIOR_BASIS if n.endswith(".latency_s"))
_PRIOR_COLS = np.array([FEATURE_NAMES.index(n) for n in PRIOR_BASIS])
_TARGET_COLS = np.array([FEATURE_NAMES.index(n) for n in TARGET_BASIS])
_MS = np.array([1e3 if n.endswith("_s") else 1.0 for n in FEATURE_NAMES])  # seconds -> ms


class ModelFormatError(ValueError):
    """A saved model this code cannot read; the message says why."""


# ---------------------------------------------------------------------------- robust solver
def robust_fit(Z: np.ndarray, y: np.ndarray, penalty: np.ndarray, *, nonneg: np.ndarray | None,
               steps: int = IRLS_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``y ~ Z @ theta`` minimising sum Huber(log y - log(Z theta)) + ridge.

    Args:
        Z: (n, p) design, additive terms in ms.
        y: (n,) measured latencies in ms, all > 0.
        penalty: (p,) ridge weight per column, in units of the column's relative scale.
        nonneg: (p,) True where theta must be >= 0; None for an unconstrained fit.
    Returns:
        theta (p,) and the final per-row |log error| (n,).
    """
    n, p = Z.shape
    floor = ROW_FLOOR * float(np.median(y))
    scale = np.sqrt(np.mean((Z / np.maximum(y, floor)[:, None]) ** 2, axis=0))
    scale[scale == 0] = 1.0
    ridge = np.sqrt(penalty * n) * scale
    w, t = 1.0 / np.maximum(y, floor), y.astype(np.float64)
    free = np.flatnonzero(~nonneg) if nonneg is not None else None
    theta = np.zeros(p)
    for _ in range(steps):
        A = Z * w[:, None]
        b = t * w
        if free is None:
            theta = np.linalg.solve(A.T @ A + np.diag(ridge ** 2), A.T @ b)
        else:
            theta = _ridge_nnls(A, b, ridge, free)
        pred = np.maximum(Z @ theta, 1e-6 * floor)
        err = np.log(y / pred)
        h = np.minimum(1.0, HUBER_LOG / np.maximum(np.abs(err), 1e-12))
        gross = np.abs(err) > GROSS_LOG
        if gross.sum() < n / 2:  # a handful of rows no additive model explains: drop them
            h[gross] = 0.0
        # Gauss-Newton step on log(Z theta); no row weighs more than one at the floor latency.
        w, t = np.sqrt(h) / np.maximum(pred, floor), pred * (1.0 + err)
    pred = np.maximum(Z @ theta, 1e-6 * floor)
    return theta, np.abs(np.log(y / pred))


def _ridge_nnls(A: np.ndarray, b: np.ndarray, ridge: np.ndarray, free: np.ndarray) -> np.ndarray:
    """argmin ||A theta - b||^2 + ||ridge * theta||^2 with theta >= 0 except at ``free``.

    The free coefficients are eliminated in closed form (for fixed constrained ones they are a
    ridge regression), leaving an NNLS over the few constrained columns: with hundreds of free
    per-signature terms this is the same optimum as NNLS over the free terms split in positive
    and negative parts, orders of magnitude faster.
    """
    p = A.shape[1]
    cons = np.setdiff1d(np.arange(p), free)
    Ac, rc = A[:, cons], ridge[cons]
    theta = np.zeros(p)
    if len(free):
        Af, rf = A[:, free], ridge[free]
        # theta_f = K (b - Ac theta_c); the residual is M (b - Ac theta_c), M = I - Af K,
        # so the objective in theta_c is (b - Ac theta_c)' M (b - Ac theta_c) + ||rc theta_c||^2
        if np.all(rf > 0):  # push-through / Woodbury: only rows x rows systems
            AfR = Af / rf ** 2
            vals, vecs = np.linalg.eigh(np.eye(len(b)) + AfR @ Af.T)  # = M^-1, SPD
            root = vecs / np.sqrt(vals)  # M = root @ root.T
            K = AfR.T @ (root @ root.T)
        else:
            K = np.linalg.lstsq(Af.T @ Af + np.diag(rf ** 2), Af.T, rcond=None)[0]
            M = np.eye(len(b)) - Af @ K
            vals, vecs = np.linalg.eigh((M + M.T) / 2)
            root = vecs * np.sqrt(np.clip(vals, 0.0, None))
        Ac_, b_ = root.T @ Ac, root.T @ b
    else:
        Ac_, b_ = Ac, b
    X = np.vstack([Ac_, np.diag(rc)])
    theta[cons] = optimize.nnls(X, np.concatenate([b_, np.zeros(len(cons))]),
                                maxiter=50 * max(1, X.shape[1]))[0]
    if len(free):
        theta[free] = K @ (b - Ac @ theta[cons])
    return theta


# ---------------------------------------------------------------------------- model pieces
@dataclass
class DeviceFit:
    """One device's additive model: ``basis . basis_coef + counts . signature_coef + intercept``.

    For a prior device the basis is ``PRIOR_BASIS``; for the target it is the prior devices'
    predictions followed by ``TARGET_BASIS``.
    """

    name: str
    basis_coef: np.ndarray
    signature_coef: np.ndarray  # over the model's signature terms (zeros where unused)
    intercept: float
    selected: tuple[float, float] = (math.inf, math.inf)
    cv_log_errors: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        nz = np.flatnonzero(self.signature_coef)
        return {"name": self.name, "basis_coef": self.basis_coef.tolist(),
                "signature_coef": [[int(i), float(self.signature_coef[i])] for i in nz],
                "intercept": self.intercept,
                "selected": [_json_float(v) for v in self.selected],
                "cv_log_errors": list(self.cv_log_errors)}

    @classmethod
    def from_json(cls, d: dict[str, Any], n_terms: int) -> "DeviceFit":
        coef = np.zeros(n_terms)
        for i, v in d["signature_coef"]:
            coef[int(i)] = float(v)
        return cls(d["name"], np.asarray(d["basis_coef"], dtype=np.float64), coef,
                   float(d["intercept"]), tuple(_unjson_float(v) for v in d["selected"]),
                   tuple(float(v) for v in d["cv_log_errors"]))


def _json_float(v: float) -> float | str:
    return "inf" if math.isinf(v) else v


def _unjson_float(v) -> float:
    return math.inf if v == "inf" else float(v)


@dataclass(frozen=True)
class Design:
    """What the fits read for a set of candidates: features (ms) and signature-term counts."""

    prior_basis: np.ndarray  # (n, len(PRIOR_BASIS))
    target_basis: np.ndarray  # (n, len(TARGET_BASIS))
    terms: np.ndarray  # (n, n_terms) dense counts of the model's signature terms

    def rows(self, idx) -> "Design":
        return Design(self.prior_basis[idx], self.target_basis[idx], self.terms[idx])


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
                 feature_version: int = FEATURE_VERSION) -> None:
        self.config = config
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
        return Design(X[:, _PRIOR_COLS], X[:, _TARGET_COLS], terms)

    # ------------------------------------------------------------------ prediction
    def prior_predictions(self, d: Design) -> np.ndarray:
        """(n, n_priors) stage-1 latencies (ms) of every prior device."""
        if not self.priors:
            return np.zeros((len(d.terms), 0))
        return np.column_stack([d.prior_basis @ f.basis_coef + d.terms @ f.signature_coef
                                + f.intercept for f in self.priors])

    def predict_design(self, d: Design) -> np.ndarray:
        """Target latencies (ms) of the candidates of ``d``."""
        t = self.target
        basis = np.column_stack([self.prior_predictions(d), d.target_basis])
        return basis @ t.basis_coef + d.terms @ t.signature_coef + t.intercept

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
            fits = {name: _fit_prior(name, design, prior[:, j])
                    for j, name in enumerate(prior_names)}
        return PriorStage(model, design, fits)

    @classmethod
    def fit(cls, table: SignatureTable, features: np.ndarray, *, target_name: str,
            train_rows: np.ndarray, target_latency_ms: np.ndarray,
            prior_latency_ms: np.ndarray | None = None, prior_names: Sequence[str] = (),
            config: FeatureConfig = FeatureConfig(), featurizer: OpFeaturizer | None = None,
            prior_stage: "PriorStage | None" = None) -> "LearnedCostModel":
        """Fit both stages (stage 1 reused from ``prior_stage`` when given).

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
        model._fit_target(stage.design.rows(train_rows), y)
        return model

    def _fit_target(self, d: Design, y: np.ndarray) -> None:
        self.training = {"latency_ms": y.tolist(), "design": d}
        with threadpool_limits(limits=1, user_api="blas"):
            self.target = _fit_target(self.target.name, self.prior_predictions(d), d, y)

    def update(self, batch: OpBatch, measured_latency_s: np.ndarray) -> None:
        """Add measured candidates to the target's training rows and refit stage 2."""
        measured = np.asarray(measured_latency_s, dtype=np.float64) * 1e3
        if measured.shape != (batch.n_candidates,) or not np.all(measured > 0):
            raise ValueError(f"update needs one positive latency per candidate "
                             f"({batch.n_candidates}), got shape {measured.shape}")
        new = self.design(signatures_from_batch(batch))
        old = self.training["design"]
        d = Design(np.vstack([old.prior_basis, new.prior_basis]),
                   np.vstack([old.target_basis, new.target_basis]),
                   np.vstack([old.terms, new.terms]))
        self._fit_target(d, np.concatenate([self.training["latency_ms"], measured]))

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
            "training": {"latency_ms": list(self.training["latency_ms"]),
                         "prior_basis": d.prior_basis.tolist(),
                         "target_basis": d.target_basis.tolist(),
                         "terms": [[[int(i), float(r[i])] for i in np.flatnonzero(r)]
                                   for r in d.terms]},
            "hyperparameters": {"huber_log": HUBER_LOG, "irls_steps": IRLS_STEPS,
                                "row_floor": ROW_FLOOR, "prior_basis_ridge": PRIOR_BASIS_RIDGE,
                                "prior_signature_ridge": PRIOR_SIGNATURE_RIDGE,
                                "target_grid": [[_json_float(a), _json_float(b)]
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
            design = Design(np.asarray(tr["prior_basis"], dtype=np.float64).reshape(
                -1, len(PRIOR_BASIS)), np.asarray(tr["target_basis"], dtype=np.float64).reshape(
                -1, len(TARGET_BASIS)), terms)
        except ModelFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFormatError(f"{path}: malformed {FORMAT} model: "
                                   f"{type(exc).__name__}: {exc}") from None
        return cls(config, signatures, latency_s, priors, target,
                   {"latency_ms": list(tr["latency_ms"]), "design": design}, featurizer,
                   target_info, feature_version=feature_version)


@dataclass(frozen=True)
class PriorStage:
    """Stage 1 of a table: the signature registry, the table's design and per-device fits."""

    model: LearnedCostModel
    design: Design
    fits: dict[str, DeviceFit]


# ---------------------------------------------------------------------------- stage fits
def _fit_prior(name: str, d: Design, y: np.ndarray) -> DeviceFit:
    nb, nt = d.prior_basis.shape[1], d.terms.shape[1]
    Z = np.column_stack([d.prior_basis, d.terms, np.ones(len(y))])
    penalty = np.concatenate([np.full(nb, PRIOR_BASIS_RIDGE), np.full(nt, PRIOR_SIGNATURE_RIDGE),
                              [0.0]])
    theta, _ = robust_fit(Z, y, penalty, nonneg=None)
    return DeviceFit(name, theta[:nb], theta[nb:nb + nt], float(theta[-1]))


def _target_design(prior_pred: np.ndarray, d: Design, setting: tuple[float, float]):
    """Columns and penalties of one grid setting; returns (Z, penalty, nonneg, slices)."""
    lam_basis, lam_sig = setting
    blocks, pens, nonneg = [prior_pred], [np.zeros(prior_pred.shape[1])], \
        [np.ones(prior_pred.shape[1], bool)]
    if math.isfinite(lam_basis):
        blocks.append(d.target_basis)
        pens.append(np.full(d.target_basis.shape[1], lam_basis))
        nonneg.append(np.ones(d.target_basis.shape[1], bool))
    used = np.flatnonzero(d.terms.any(axis=0)) if math.isfinite(lam_sig) else np.zeros(0, int)
    blocks.append(d.terms[:, used])
    pens.append(np.full(len(used), lam_sig if math.isfinite(lam_sig) else 0.0))
    nonneg.append(np.zeros(len(used), bool))
    blocks.append(np.ones((len(d.terms), 1)))
    pens.append(np.zeros(1))
    nonneg.append(np.ones(1, bool))
    return np.column_stack(blocks), np.concatenate(pens), np.concatenate(nonneg), used


def _fit_setting(prior_pred, d, y, setting):
    Z, pen, nonneg, used = _target_design(prior_pred, d, setting)
    theta, _ = robust_fit(Z, y, pen, nonneg=nonneg)
    k = prior_pred.shape[1]
    nb = d.target_basis.shape[1] if math.isfinite(setting[0]) else 0
    basis = np.concatenate([theta[:k], theta[k:k + nb] if nb else np.zeros(
        d.target_basis.shape[1])])
    sig = np.zeros(d.terms.shape[1])
    sig[used] = theta[k + nb:k + nb + len(used)]
    return basis, sig, float(theta[-1])


def _fit_target(name: str, prior_pred: np.ndarray, d: Design, y: np.ndarray) -> DeviceFit:
    n = len(y)
    folds = np.arange(n) % (n if n <= LOO_MAX_ROWS else CV_FOLDS)
    # Without prior devices the analytic terms are the model's only view of the candidates: a
    # setting that drops them predicts one constant, which the one-standard-error rule would
    # pick whenever the target's measurements are noisy.
    grid = TARGET_GRID if prior_pred.shape[1] else tuple(
        s for s in TARGET_GRID if math.isfinite(s[0]))
    results = []
    for setting in grid:
        errs = np.empty(n)
        for f in np.unique(folds):
            test = folds == f
            basis, sig, b = _fit_setting(prior_pred[~test], d.rows(~test), y[~test], setting)
            pred = np.column_stack([prior_pred[test], d.target_basis[test]]) @ basis + \
                d.terms[test] @ sig + b
            errs[test] = np.abs(np.log(y[test] / np.maximum(pred, 1e-9 * np.median(y))))
        errs = np.minimum(errs, 1.0)  # a fold's miss beyond e^1 counts as e^1: one bad fold
        results.append((float(errs.mean()), float(errs.std(ddof=1) / math.sqrt(n)), errs))
    best = min(range(len(results)), key=lambda i: results[i][0])
    limit = results[best][0] + results[best][1]
    chosen = next(i for i in range(len(results)) if results[i][0] <= limit)
    basis, sig, b = _fit_setting(prior_pred, d, y, grid[chosen])
    return DeviceFit(name, basis, sig, b, grid[chosen], tuple(results[chosen][2].tolist()))


__all__ = ["FORMAT", "FORMAT_VERSION", "LearnedCostModel", "PriorStage", "DeviceFit", "Design",
           "ModelFormatError", "robust_fit", "TARGET_GRID"]
