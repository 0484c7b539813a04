"""``codesign calibrate``: fit the learned cost model for a device from a measurement table.

A measurement CSV (the format of ``shared/data/measured/*.csv``) has an architecture column —
``arch_str`` (nasbench201), ``ops`` (fbnet) or ``params`` (mbconv: the space's params as a JSON
object, decoded for the xnnpack back-end) — an optional ``index`` column, and one latency column
in milliseconds per device. ``calibrate`` draws ``samples`` rows at random (seeded) as the target
device's measurements, uses every row of the prior columns as prior knowledge, fits
``codesign.cost_models.learned.LearnedCostModel`` and scores its predictions on every other row.

Metrics over the held-out rows (``metrics``): Spearman and Kendall (tau-b) rank correlations,
``mape`` = mean |pred - meas| / meas as a fraction (0.05 = 5 %) over *every* held-out row,
``within_10pct`` = share of rows with |pred - meas| / meas <= 0.1. Rows whose measurement is below
``NEAR_ZERO_FRACTION`` x the held-out median (some NAS-Bench-201 cells compute almost nothing,
and a converter may fold such a network away) dominate a relative error; they stay in ``mape``
and are also reported on their own: ``n_near_zero``, ``near_zero_threshold_ms`` and
``mape_excluding_near_zero``.

Two kinds of model (``kind``): ``learned`` featurises every candidate on a fixed reference device
(``FeatureConfig()``) and learns the target from the prior columns plus its samples; ``hybrid``
featurises on the *target* device's own analytic model (``--device``/``--backend``/``--threads``),
so the fit is the analytic prior for that device plus a learned residual (per kernel-group scales
and per-signature deviations). The metadata columns of ``codesign measure``/``ingest`` files
(``codesign.measure.table.META_COLUMNS``) are not latency columns.

Either kind is shrunk toward a prior that needs no target rows (``shrink_prior``: total FLOPs,
or for the hybrid the device's analytic latency) by cross-validation on the ``samples`` rows
alone (``codesign.cost_models.learned_fit.choose_blend``); ``blend_weight`` reports the outcome.
``--device`` takes a catalog name or a device YAML path (a phone the catalog lacks).
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

from codesign.measure.table import META_COLUMNS as MEASUREMENT_META_COLUMNS
from codesign.userinput import BadInput
from codesign.cost_models.features import FeatureConfig, OpFeaturizer, SignatureTable, \
    signatures_from_oplists
from codesign.cost_models.ir import Op
from codesign.cost_models.learned import LearnedCostModel, PriorStage

NEAR_ZERO_FRACTION = 0.05
META_COLUMNS = ("index",) + MEASUREMENT_META_COLUMNS
KINDS = ("learned", "hybrid")


@dataclass(frozen=True)
class SpaceReader:
    """How a space's rows become op lists: the architecture column, its parser, the lowering."""

    column: str
    parse: Callable[[str], Any]
    lower: Callable[[Any], Sequence[Op]]


# The lowerings' lru_caches are bypassed (``__wrapped__``): a table's rows are lowered once each.
def nasbench201_reader() -> SpaceReader:
    from codesign.search_spaces import nasbench201
    return SpaceReader("arch_str", nasbench201.parse_arch_str, nasbench201.lower_arch.__wrapped__)


def fbnet_reader() -> SpaceReader:
    from codesign.search_spaces import fbnet
    return SpaceReader("ops", fbnet.parse_ops, fbnet.lower_arch.__wrapped__)


def mbconv_reader() -> SpaceReader:
    from codesign.cost_models.backends import load_backend
    from codesign.search_spaces.mbconv import MBConvSpace

    space = MBConvSpace(load_backend("xnnpack"))

    def parse(text: str):
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object of params: {exc.msg}") from None
        if not isinstance(params, dict):
            raise ValueError("not a JSON object of params")
        return space.decode(params)

    return SpaceReader("params", parse, space.to_ops)



def space_reader(space: str) -> SpaceReader:
    """The measurement reader of the registered space ``space`` (``SpaceEntry.reader``).

    Raises:
        BadInput: no registered space of that name reads measurements.
    """
    from codesign.registry import SPACES

    readable = [name for name, entry in SPACES.items() if entry.reader is not None]
    if space not in readable:
        raise BadInput(f"unknown --space {space!r}; valid: {', '.join(readable)}")
    return SPACES.get(space).reader()


@dataclass(frozen=True)
class MeasurementTable:
    """A parsed measurement CSV, featurised.

    Attributes:
        space: the space name.
        path: where it was read from.
        archs: the architecture column's text, one per row.
        columns: the latency columns' names.
        latency_ms: (n_rows, n_columns) latencies in ms.
        table, features: the rows' op signatures and ``OpFeaturizer`` features.
        config: the device whose analytic terms the features are.
    """

    space: str
    path: str
    archs: tuple[str, ...]
    columns: tuple[str, ...]
    latency_ms: np.ndarray
    table: SignatureTable
    features: np.ndarray
    config: FeatureConfig = FeatureConfig()

    def column(self, name: str) -> np.ndarray:
        return self.latency_ms[:, self.columns.index(name)]


def read_measurements(space: str, path: Path, *,
                      config: FeatureConfig = FeatureConfig()) -> MeasurementTable:
    """Parse, validate and featurise a measurement CSV.

    Raises:
        BadInput: unknown space; unreadable file; missing architecture column; a row with the
            wrong number of fields, an unparsable architecture or a latency that is not a
            positive number (naming the line and column).
    """
    reader = space_reader(space)
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BadInput(f"--measurements {path}: cannot read: {reason}") from None
    except csv.Error as exc:
        raise BadInput(f"--measurements {path}: not a CSV file: {exc}") from None
    if not rows:
        raise BadInput(f"--measurements {path}: empty file (expected a header line)")
    header = [h.strip() for h in rows[0]]
    if reader.column not in header:
        raise BadInput(f"--measurements {path}: no {reader.column!r} column for space {space}; "
                       f"columns: {', '.join(header)}")
    arch_at = header.index(reader.column)
    lat_at = [i for i, h in enumerate(header) if h != reader.column and h not in META_COLUMNS]
    if not lat_at:
        raise BadInput(f"--measurements {path}: no latency columns besides {reader.column!r}")
    archs, values, candidates = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise BadInput(f"--measurements {path}: line {line}: expected {len(header)} fields, "
                           f"got {len(row)}")
        try:
            candidates.append(reader.parse(row[arch_at]))
        except ValueError as exc:
            raise BadInput(f"--measurements {path}: line {line}, column {reader.column}: "
                           f"{exc}") from None
        archs.append(row[arch_at])
        rec = []
        for i in lat_at:
            try:
                v = float(row[i])
            except ValueError:
                v = math.nan
            if not math.isfinite(v) or v <= 0:
                raise BadInput(f"--measurements {path}: line {line}, column {header[i]}: "
                               f"{row[i]!r} is not a positive latency in ms")
            rec.append(v)
        values.append(rec)
    if not archs:
        raise BadInput(f"--measurements {path}: no data rows")
    featurizer = OpFeaturizer(config)
    table = signatures_from_oplists(reader.lower(c) for c in candidates)
    return MeasurementTable(space, str(path), tuple(archs), tuple(header[i] for i in lat_at),
                            np.asarray(values, dtype=np.float64), table,
                            featurizer.aggregate(table), config)


def metrics(pred_ms: np.ndarray, meas_ms: np.ndarray) -> dict[str, Any]:
    """Rank and relative-error metrics of predictions against measurements (both ms)."""
    ape = np.abs(pred_ms - meas_ms) / meas_ms
    threshold = NEAR_ZERO_FRACTION * float(np.median(meas_ms))
    near = meas_ms < threshold
    constant = np.ptp(pred_ms) == 0 or np.ptp(meas_ms) == 0
    return {
        "spearman": None if constant else float(stats.spearmanr(pred_ms, meas_ms)[0]),
        "kendall": None if constant else float(stats.kendalltau(pred_ms, meas_ms)[0]),
        "mape": float(ape.mean()),
        "within_10pct": float(np.mean(ape <= 0.1)),
        "median_ape": float(np.median(ape)),
        "n_near_zero": int(near.sum()),
        "near_zero_threshold_ms": threshold,
        "mape_excluding_near_zero": float(ape[~near].mean()) if (~near).any() else None,
    }


def split_rows(n_rows: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: ``samples`` rows drawn without replacement with ``seed``."""
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(n_rows, size=samples, replace=False))
    test = np.setdiff1d(np.arange(n_rows), train)
    return train, test


def resolve_columns(data: MeasurementTable, target: str,
                    prior_columns: Sequence[str] | None) -> list[str]:
    """The prior columns to use (default: every latency column but the target).

    Raises:
        BadInput: unknown target or prior column (listing the valid ones), the target among the
            priors, or a column named twice.
    """
    valid = ", ".join(data.columns)
    if target not in data.columns:
        raise BadInput(f"--target {target!r} is not a latency column of {data.path}; "
                       f"valid: {valid}")
    if prior_columns is None:
        return [c for c in data.columns if c != target]
    priors = [c.strip() for c in prior_columns if c.strip()]
    unknown = [c for c in priors if c not in data.columns]
    if unknown:
        raise BadInput(f"--prior-columns: unknown column {unknown[0]!r}; valid: {valid}")
    if target in priors:
        raise BadInput(f"--prior-columns must not include the target {target!r}")
    if len(set(priors)) != len(priors):
        raise BadInput(f"--prior-columns names a column twice: {','.join(priors)}")
    return priors


def shrink_prior(kind: str) -> str:
    """The prior a ``kind`` model shrinks toward: the learned kind's features are another
    device's, so total FLOPs; the hybrid's are the target's own analytic model, its latency."""
    return "total.latency_s" if kind == "hybrid" else "total.flops"


def fit_and_score(data: MeasurementTable, target: str, priors: Sequence[str], samples: int,
                  seed: int, *, prior_stage: PriorStage | None = None, kind: str = "learned"
                  ) -> tuple[dict[str, Any], LearnedCostModel]:
    """Fit on ``samples`` seeded target rows (+ all prior rows), score on the other rows.

    ``prior_stage`` (from ``LearnedCostModel.fit_priors`` on ``data``, covering ``priors``)
    skips refitting stage 1 when one table is calibrated for many targets or seeds. ``kind``
    picks the prior the fit is shrunk toward (``shrink_prior``). Only the ``samples`` rows
    choose anything; the held-out rows are only scored.
    """
    n = len(data.archs)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or \
            not 2 <= samples < n:
        raise BadInput(f"--samples must be an integer from 2 to {n - 1} (the table has {n} "
                       f"rows), got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInput(f"--seed must be a non-negative integer, got {seed!r}")
    train, test = split_rows(n, int(samples), int(seed))
    y = data.column(target)
    prior = np.column_stack([data.column(c) for c in priors]) if priors else None
    model = LearnedCostModel.fit(data.table, data.features, target_name=target,
                                 train_rows=train, target_latency_ms=y[train],
                                 prior_latency_ms=prior, prior_names=list(priors),
                                 config=data.config, prior_stage=prior_stage,
                                 shrink_prior=shrink_prior(kind))
    pred = model.predict_table(data.table, data.features)
    result = metrics(pred[test], y[test])
    result.update({"n_train": int(len(train)), "n_test": int(len(test)),
                   "target": target, "prior_columns": list(priors), "space": data.space,
                   "seed": int(seed), "cv_rms_log_error": model.error_estimate,
                   "shrink_prior": model.blend.prior, "blend_weight": model.blend.weight})
    return result, model


def feature_config(kind: str, device: str | None, backend: str, threads: int) -> FeatureConfig:
    """The features' device: the reference one (``learned``) or the target's own (``hybrid``).

    ``device`` is a catalog name or a device YAML path (a phone not in the catalog); a path is
    kept, made absolute, as the features' device so the saved model can load it again.

    Raises:
        BadInput: unknown kind, a hybrid without ``device``, bad threads.
        SpecError: an unknown device or an unreadable / invalid device file.
    """
    if kind not in KINDS:
        raise BadInput(f"unknown --cost-model {kind!r}; valid: {', '.join(KINDS)}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BadInput(f"--threads must be a positive integer, got {threads!r}")
    if kind == "hybrid" and not device:
        raise BadInput("--cost-model hybrid needs --device: the catalog device the target column "
                       "was measured on (its analytic model is the prior)")
    if not device:
        return FeatureConfig()
    from codesign.cost_models.backends import backend_for
    from codesign.cost_models.devices import load_device

    spec = load_device(device)
    backend_for(spec, backend)  # the device must have that back-end
    if threads > spec.cpu.n_cores:
        raise BadInput(f"--threads {threads}: {spec.name} has {spec.cpu.n_cores} cores")
    if kind == "learned":
        return FeatureConfig()
    return FeatureConfig(device_reference(device, spec.name), backend, threads)


def device_reference(device: str, name: str) -> str:
    """How a saved model names its device: the catalog name, or a YAML file's absolute path."""
    from codesign.cost_models.devices import CONFIG_DIR

    path = Path(device)
    if not (device.endswith((".yaml", ".yml")) or path.is_file()):
        return name
    path = path.resolve()
    return name if path == (CONFIG_DIR / "devices" / f"{name}.yaml").resolve() else str(path)


def calibrate(space: str, measurements: Path, target: str, prior_columns: list[str] | None,
              samples: int, seed: int, save: Path | None, *, kind: str = "learned",
              device: str | None = None, backend: str = "xnnpack",
              threads: int = 1) -> dict[str, Any]:
    """The ``codesign calibrate`` contract (see /work/shared/CLI.md).

    Args:
        space: nasbench201, fbnet or mbconv.
        measurements: the measurement CSV.
        target: the latency column to model.
        prior_columns: prior latency columns (None: every other latency column).
        samples: target rows to fit on (2 <= samples < rows), drawn with ``seed``.
        seed: the sampling seed.
        save: where to write the fitted model (JSON), or None.
        kind: "learned" or "hybrid" (see the module docstring).
        device, backend, threads: what the target column measured (a catalog device name or a
            device YAML path); needed for a hybrid, recorded in the saved model either way (the
            device's name) so ``search`` can check it.
    Returns:
        {"spearman", "kendall", "mape", "within_10pct", "n_train", "n_test"} plus
        "median_ape", "n_near_zero", "near_zero_threshold_ms", "mape_excluding_near_zero",
        "target", "prior_columns", "space", "seed", "cv_rms_log_error", "shrink_prior",
        "blend_weight" (1: the fit alone, 0: the prior alone), "cost_model",
        "runtime_s" and "saved" (the path, when ``save`` is given).
    Raises:
        BadInput: anything the user can fix, in one line.
    """
    start = time.perf_counter()
    if save is not None and not Path(save).parent.is_dir():
        raise BadInput(f"--save {save}: directory {Path(save).parent} does not exist")
    config = feature_config(kind, device, backend, threads)
    data = read_measurements(space, Path(measurements), config=config)
    priors = resolve_columns(data, target, prior_columns)
    result, model = fit_and_score(data, target, priors, samples, seed, kind=kind)
    model.target_info = {"kind": kind, "column": target, "space": space}
    if device:
        from codesign.cost_models.devices import load_device

        model.target_info.update({"device": load_device(device).name, "backend": backend,
                                  "threads": threads})
    result["cost_model"] = kind
    if save is not None:
        try:
            model.save(Path(save))
        except OSError as exc:
            raise BadInput(f"--save {save}: cannot write: {exc.strerror or exc}") from None
        result["saved"] = str(save)
    result["runtime_s"] = time.perf_counter() - start
    return result


__all__ = ["calibrate", "read_measurements", "fit_and_score", "metrics", "split_rows",
           "resolve_columns", "MeasurementTable", "space_reader", "NEAR_ZERO_FRACTION", "KINDS",
           "feature_config", "shrink_prior", "device_reference"]
