"""The numerics of the learned latency model (``codesign.cost_models.learned``): its
hyperparameters, the robust additive solver, the per-device fits and how the target's shrinkage
is chosen by cross-validation. The model class, its featurising and its file format stay in
``learned``; this module knows nothing of op lists, only of designs (feature and signature-count
matrices) and measured latencies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy.optimize import isotonic_regression

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
                "selected": [json_float(v) for v in self.selected],
                "cv_log_errors": list(self.cv_log_errors)}

    @classmethod
    def from_json(cls, d: dict[str, Any], n_terms: int) -> "DeviceFit":
        coef = np.zeros(n_terms)
        for i, v in d["signature_coef"]:
            coef[int(i)] = float(v)
        return cls(d["name"], np.asarray(d["basis_coef"], dtype=np.float64), coef,
                   float(d["intercept"]), tuple(unjson_float(v) for v in d["selected"]),
                   tuple(float(v) for v in d["cv_log_errors"]))


def json_float(v: float) -> float | str:
    return "inf" if math.isinf(v) else v


def unjson_float(v) -> float:
    return math.inf if v == "inf" else float(v)


@dataclass(frozen=True)
class Design:
    """What the fits read for a set of candidates: features (ms) and signature-term counts."""

    prior_basis: np.ndarray  # (n, len(PRIOR_BASIS))
    target_basis: np.ndarray  # (n, len(TARGET_BASIS))
    terms: np.ndarray  # (n, n_terms) dense counts of the model's signature terms
    # (n, len(SHRINK_PRIORS)) the candidates' values of the priors a fit may shrink toward;
    # None for training rows of a model saved before the shrinkage existed
    shrink_priors: np.ndarray | None = None

    def rows(self, idx) -> "Design":
        return Design(self.prior_basis[idx], self.target_basis[idx], self.terms[idx],
                      None if self.shrink_priors is None else self.shrink_priors[idx])


# ---------------------------------------------------------------------------- stage fits
def fit_prior_device(name: str, d: Design, y: np.ndarray) -> DeviceFit:
    """Stage 1 for one prior device: its analytic basis, signature deviations and intercept,
    lightly shrunk (``PRIOR_*_RIDGE``), from its measured latencies ``y`` (ms)."""
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


def cv_folds(n: int) -> np.ndarray:
    """Fold of each of ``n`` rows: leave-one-out up to ``LOO_MAX_ROWS`` rows, else ``CV_FOLDS``."""
    return np.arange(n) % (n if n <= LOO_MAX_ROWS else CV_FOLDS)


def target_prediction(fit: DeviceFit, prior_pred: np.ndarray, d: Design) -> np.ndarray:
    """Stage-2 latencies (ms) of the rows of ``d`` (``prior_pred``: their stage-1 latencies)."""
    return np.column_stack([prior_pred, d.target_basis]) @ fit.basis_coef + \
        d.terms @ fit.signature_coef + fit.intercept


def fit_target_device(name: str, prior_pred: np.ndarray, d: Design, y: np.ndarray) -> DeviceFit:
    """Stage 2: the target as a non-negative mix of the prior devices' predictions
    ``prior_pred`` (n, n_priors) and its analytic terms, plus signature deviations, at the
    ``TARGET_GRID`` setting cross-validation picks (the one-standard-error rule)."""
    n = len(y)
    folds = cv_folds(n)
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


# ---------------------------------------------------------------------------- shrinkage
# What a fit can fall back to: total FLOPs (the learned kind: its features are another device's)
# or the total analytic latency (the hybrid: its features are the target's own analytic model).
SHRINK_PRIORS = ("total.flops", "total.latency_s")
# Weights of the fit in the log-space blend fit^w (scale x prior)^(1 - w), prior first. Only the
# two ends: with 10 target rows, intermediate weights (0.5; 0.25 steps) were tried on the HELP
# leave-one-device-out runs and let more seeds fall below the prior (BENCHMARKS.md, issue 19).
BLEND_WEIGHTS = (0.0, 1.0)
MIN_BLEND_ROWS = 3  # the fit's out-of-fold predictions need folds of >= 2 training rows
MAP_KNOTS = 256  # knots kept of the prior -> latency map (a saved model stays small)
# Slope (in log latency per log prior) added to the map so flat stretches of the isotonic fit
# still order candidates as the prior does; 1e-6 moves no latency by a visible amount.
MAP_TIE_BREAK = 1e-6


@dataclass(frozen=True)
class Blend:
    """A target fit shrunk toward a prior: ``fit^weight x (scale x prior)^(1 - weight)``.

    ``prior`` names a ``SHRINK_PRIORS`` feature, ``scale`` (ms per unit of it) is the median
    measured/prior ratio of the training rows, ``cv_discordance`` the cross-validated share of
    misordered training pairs of each ``BLEND_WEIGHTS`` entry (what chose ``weight``).
    ``knots``: (log prior, log ms) points of a non-decreasing map from the prior to the fit's
    latencies (``monotone_map``); with them the prior's part is that map (the prior's order, the
    fit's latencies), without them ``scale x prior``.
    """

    prior: str
    weight: float
    scale: float
    cv_discordance: tuple[float, ...] = ()
    knots: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())

    def prior_log_ms(self, prior: np.ndarray) -> np.ndarray:
        """log ms of the prior's part: strictly increasing in the prior."""
        lp = np.log(np.maximum(prior, 1e-300))
        if not self.knots[0]:
            return math.log(self.scale) + lp
        x, g = np.asarray(self.knots[0]), np.asarray(self.knots[1])
        # beyond the knots latency is taken proportional to the prior
        out = np.where(lp < x[0], g[0] + lp - x[0], np.where(
            lp > x[-1], g[-1] + lp - x[-1], np.interp(lp, x, g)))
        return out + MAP_TIE_BREAK * (lp - x[0])

    def apply(self, fit_ms: np.ndarray, prior: np.ndarray) -> np.ndarray:
        if self.weight == 1.0:
            return fit_ms
        log_prior = self.prior_log_ms(prior)
        if self.weight == 0.0:
            return np.exp(log_prior)
        floor = 1e-9 * np.exp(log_prior)  # a fit can go non-positive far from its rows
        return np.exp(self.weight * np.log(np.maximum(fit_ms, floor)) +
                      (1.0 - self.weight) * log_prior)

    def to_json(self) -> dict[str, Any]:
        return {"prior": self.prior, "weight": self.weight, "scale": self.scale,
                "cv_discordance": list(self.cv_discordance),
                "knots": [list(self.knots[0]), list(self.knots[1])]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Blend":
        if d["prior"] not in SHRINK_PRIORS:
            raise ValueError(f"blend prior {d['prior']!r} is not one of {SHRINK_PRIORS}")
        x, g = d.get("knots", [[], []])
        if len(x) != len(g) or np.any(np.diff(x) <= 0) or np.any(np.diff(g) < 0):
            raise ValueError("blend knots must be increasing in the prior, non-decreasing in ms")
        return cls(d["prior"], float(d["weight"]), float(d["scale"]),
                   tuple(float(v) for v in d["cv_discordance"]),
                   (tuple(float(v) for v in x), tuple(float(v) for v in g)))


def monotone_map(prior: np.ndarray, fit_ms: np.ndarray
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Knots of the isotonic regression of log ``fit_ms`` on log ``prior`` over a set of
    candidates: the non-decreasing function of the prior closest to the fit (least squares in
    logs), kept at up to ``MAP_KNOTS`` evenly spaced distinct prior values."""
    lp = np.log(np.maximum(prior, 1e-300))
    lf = np.log(np.maximum(fit_ms, 1e-9 * float(np.median(np.abs(fit_ms))) + 1e-300))
    order = np.argsort(lp, kind="stable")
    g = isotonic_regression(lf[order]).x
    x, inverse = np.unique(lp[order], return_inverse=True)
    # equal priors: one value; the running max undoes rounding of the means (one ulp down)
    g = np.maximum.accumulate(np.bincount(inverse, g) / np.bincount(inverse))
    keep = np.unique(np.linspace(0, len(x) - 1, MAP_KNOTS).round().astype(int))
    return tuple(x[keep].tolist()), tuple(g[keep].tolist())


def prior_scale(y: np.ndarray, prior: np.ndarray) -> float:
    """ms per unit of the prior: the median measured/prior ratio of the rows (in logs)."""
    return float(np.exp(np.median(np.log(y) - np.log(np.maximum(prior, 1e-300)))))


def row_discordance(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, the share of its pairs with another row that ``pred`` orders against ``y``.

    Pairs tied in ``y`` carry no order and are left out; a tie in ``pred`` counts half (it
    orders nothing). The mean over rows weighs every pair equally (each counts for both rows).
    """
    n = len(y)
    i, j = np.triu_indices(n, 1)
    dy, dp = np.sign(y[i] - y[j]), np.sign(pred[i] - pred[j])
    wrong = np.where(dy == 0, 0.0, np.where(dp == 0, 0.5, (dy * dp < 0).astype(np.float64)))
    valid = (dy != 0).astype(np.float64)
    den = np.bincount(i, valid, n) + np.bincount(j, valid, n)
    return (np.bincount(i, wrong, n) + np.bincount(j, wrong, n)) / np.maximum(den, 1.0)


def choose_blend(prior_name: str, fit_oof_ms: np.ndarray, prior: np.ndarray,
                 y: np.ndarray) -> Blend:
    """The blend weight whose cross-validated ranking of the training rows is best, by the
    one-standard-error rule toward the prior.

    ``fit_oof_ms``: each training row's latency predicted by the fit refitted without its fold
    (``cv_folds``), so the fit is judged on rows it did not see; the prior has no parameter that
    changes an order (its scale does not), so its ranking of the rows is already out of sample.
    The error is ``row_discordance`` (ranking is what a search uses the model for). The weight
    picked is the most prior-ward one whose mean error is within one standard error (over the N
    rows, of the paired difference between the best weight and the prior) of the best: the fit
    has to order the rows better than the prior by more than the N rows can tell apart by chance,
    which with few rows it rarely can unless it is much better.
    """
    logp = np.log(np.maximum(prior, 1e-300))
    scale = prior_scale(y, prior)
    floor = 1e-9 * float(np.median(y))
    logf = np.log(np.maximum(fit_oof_ms, floor))
    per = [row_discordance(w * logf + (1.0 - w) * logp, y) for w in BLEND_WEIGHTS]
    means = np.array([e.mean() for e in per])
    best = int(np.argmin(means))  # the first minimum: on an exact tie the prior wins
    diff = per[best] - per[0]
    se = float(diff.std(ddof=1) / math.sqrt(len(y))) if len(y) > 1 else 0.0
    chosen = next(k for k in range(len(BLEND_WEIGHTS)) if means[k] <= means[best] + se)
    return Blend(prior_name, float(BLEND_WEIGHTS[chosen]), scale, tuple(means.tolist()))
