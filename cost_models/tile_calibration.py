"""Calibrated tile term of the analytic model: how a GEMM's tile sets its time on this host.

The analytic model's uncalibrated tile term is a spec-sheet derivation (register micro-kernel
efficiency from FMA/load ports, edge-tile utilisation, a fixed spill efficiency). On a host
whose kernels we can time, :class:`TileTerms` replaces it, for the ops the project's kernels run
(dense conv2d / linear / matmul at fp32, int8 or int4 weights), by the time of the BLIS loop
nest of ``codesign.kernels.gemm_f32`` / ``codesign.kernels.gemm_int8`` counted term by term (one
thread)::

    t = s * F_pad / (R[mr x nr] * e1 * e2)     register micro-kernel on the padded problem
      + c_call[mr x nr] * calls                one call per (A panel, B sliver, kc block): its
                                               prologue, epilogue and the mr x nr C update
      + c_visit * slivers * k_blocks * m_blocks  per B sliver per A block (loop, scratch alloc)
      + c_a * M_pad * K * n_blocks             packing A, once per nc panel
      + c_b[nr] * K * N_pad                    packing B (fp32 only; int weights are pre-packed)

``R`` is **measured**, not fitted: each micro-kernel's rate on L1-resident panels
(:func:`codesign.kernels.tile_bench.measure_micro_rates`, best of three sessions). ``e1`` / ``e2``
are the model's ``CacheTerms.l1_spill_efficiency`` / ``l2_spill_efficiency``, applied when the
kc x (mr + nr) slivers overflow L1 or the mc x kc A block overflows L2. Fitted per kernel: the
scale ``s``, one call cost per micro-tile (the per-micro-tile correction: calls dominate small-k
shapes, and their cost is not proportional to mr x nr), ``c_visit``, ``c_a``, one B-packing
cost per sliver width (the copy loop compiles to 1, 2 or 3 vectors per row) and the two
efficiencies - 14 numbers for fp32, 10 for int8, 6 for int4. Non-negative least squares on
relative error over the tile tuner's measurements of the calibration shapes, the efficiencies
by grid search. Chosen on held-out shapes against simpler forms (one call cost plus a per-row
and a per-element store cost: held-out median Spearman 0.97, min 0.67; this form: 0.99, 0.84).
A micro-tile without a measured rate (an int8 layer asking for 6x8, another ISA's tile) uses
the analytic efficiency times the median measured/analytic ratio, and the median call cost.

Storage: ``configs/tile_terms/<fingerprint>.json`` (``$CODESIGN_TILE_TERMS_DIR`` overrides the
directory), format ``codesign.tile_terms`` version :data:`FORMAT_VERSION`, fingerprint of
:func:`codesign.kernels.tile_tuner.kernel_host`. The analytic model loads it for ``--device host``
with the ``codesign`` back-end when this host's file exists; other devices and back-ends never see
it. fp16 ops (no fp16 kernel: x86 converts to fp32) use the fp32 terms at the device's
fp16 : fp32 peak ratio; 2-bit weights use the int4 kernel's terms (the nearest kernel).

Calibrate: ``python -m codesign.calibrate_tiles`` (tunes the calibration shapes,
measures the micro-kernels, fits, writes the file).
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from codesign.cost_models.devices import CONFIG_DIR
from codesign.cost_models.ir import DTYPE_CODES

FORMAT = "codesign.tile_terms"
FORMAT_VERSION = 1
KERNELS = ("fp32", "int8", "int4")
SHARED = ("micro_scale", "visit_s", "pack_a_s_per_elem")
#: bytes per packed element of (A panel, B sliver): int kernels widen to int16 pairs and the
#: int4 kernel keeps nibbles.
_PACKED_BYTES = {"fp32": (4.0, 4.0), "int8": (2.0, 2.0), "int4": (2.0, 0.5)}
_SPILL_GRID = np.round(np.arange(0.5, 1.0001, 0.05), 2)


def call_key(mr: int, nr: int) -> str:
    return f"call_s[{int(mr)}x{int(nr)}]"


def pack_b_key(nr: int) -> str:
    return f"pack_b_s_per_elem[nr={int(nr)}]"


def terms_dir() -> Path:
    """``$CODESIGN_TILE_TERMS_DIR`` or ``configs/tile_terms``."""
    env = os.environ.get("CODESIGN_TILE_TERMS_DIR")
    return Path(env) if env else CONFIG_DIR / "tile_terms"


# ------------------------------------------------------------------------------ the term
def gemm_features(kernel: str, m, n, k, mc, nc, kc, mr, nr, l1_bytes: float,
                  l2_bytes: float) -> dict[str, np.ndarray]:
    """Counts of the loop nest of ``codesign.kernels.gemm_f32`` / ``gemm_int8`` for op shape (m, n,
    k) and tile (mc, nc, kc, mr, nr), element-wise over arrays (see the module docstring)."""
    m, n, k, mc, nc, kc, mr, nr = (np.asarray(v, dtype=np.float64)
                                   for v in (m, n, k, mc, nc, kc, mr, nr))
    if kernel == "fp32":
        k_blocks = np.ceil(k / kc)
        k_run = k
    else:  # int kernels step over k-pairs, kc // 2 pairs per block
        kpairs = np.ceil(k / 2)
        k_blocks = np.ceil(kpairs / np.floor(kc / 2))
        k_run = 2 * kpairs
    panels, slivers = np.ceil(m / mr), np.ceil(n / nr)
    m_blocks, n_blocks = np.ceil(m / mc), np.ceil(n / nc)
    a_bytes, b_bytes = _PACKED_BYTES[kernel]
    kc_eff = np.minimum(kc, k_run)
    mc_eff = np.minimum(mc, panels * mr)
    return {
        "padded_flops": 2.0 * panels * mr * slivers * nr * k_run,
        "calls": panels * slivers * k_blocks,
        "visits": slivers * k_blocks * m_blocks,
        "pack_a": panels * mr * k_run * n_blocks,
        "pack_b": (k_run * slivers * nr if kernel == "fp32"
                   else np.zeros(np.broadcast(m, n, k, mr, nr).shape)),
        "l1_over": kc_eff * (nr * b_bytes + mr * a_bytes) > l1_bytes,
        "l2_over": mc_eff * kc_eff * a_bytes > l2_bytes,
    }


def _lookup(mr: np.ndarray, nr: np.ndarray, table: Mapping[tuple[int, int], float],
            default: float) -> np.ndarray:
    out = np.full(np.broadcast(mr, nr).shape, float(default))
    for (a, b), v in table.items():
        out = np.where(((mr == a) if a else True) & (nr == b), v, out)
    return out


@dataclass(frozen=True)
class KernelTerms:
    """Calibrated terms of one kernel ("fp32", "int8" or "int4").

    Attributes:
        micro_gops: measured L1-resident rate per micro-tile, ``{"MRxNR": G(FL)OP/s}``.
        coef: fitted non-negative coefficients: :data:`SHARED` (the micro-kernel scale is
            dimensionless, the others seconds per unit), ``call_s[MRxNR]`` per micro-tile and,
            for fp32, ``pack_b_s_per_elem[nr=W]`` per sliver width.
        l1_spill_efficiency, l2_spill_efficiency: fitted (the model's CacheTerms fields).
        fallback_ratio: measured / analytic micro-kernel rate (median over the measured tiles),
            for micro-tiles without a measured rate.
        fit: provenance and quality (shapes, points, relative RMS error, ...).
    """

    micro_gops: Mapping[str, float]
    coef: Mapping[str, float]
    l1_spill_efficiency: float
    l2_spill_efficiency: float
    fallback_ratio: float = 1.0
    fit: Mapping[str, Any] = field(default_factory=dict)

    def _tables(self) -> tuple[dict, float, dict, float]:
        calls = {tuple(int(v) for v in key[7:-1].split("x")): c
                 for key, c in self.coef.items() if key.startswith("call_s[")}
        packs = {(0, int(key[len("pack_b_s_per_elem[nr="):-1])): c
                 for key, c in self.coef.items() if key.startswith("pack_b_s_per_elem[")}
        return (calls, float(np.median(list(calls.values()))) if calls else 0.0,
                packs, float(np.mean(list(packs.values()))) if packs else 0.0)

    def rates(self, mr: np.ndarray, nr: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        """Micro-kernel FLOP/s per row: measured where known, else ``fallback_ratio x fallback``."""
        table = {tuple(int(v) for v in label.split("x")): g * 1e9
                 for label, g in self.micro_gops.items()}
        out = np.asarray(fallback, dtype=np.float64) * self.fallback_ratio
        for (a, b), v in table.items():
            out = np.where((mr == a) & (nr == b), v, out)
        return out

    def seconds(self, feats: Mapping[str, np.ndarray], mr: np.ndarray, nr: np.ndarray,
                fallback_rate: np.ndarray) -> np.ndarray:
        """One-thread seconds per row for the features of :func:`gemm_features`."""
        eff = (np.where(feats["l1_over"], self.l1_spill_efficiency, 1.0)
               * np.where(feats["l2_over"], self.l2_spill_efficiency, 1.0))
        calls, call_default, packs, pack_default = self._tables()
        c = self.coef
        return (c["micro_scale"] * feats["padded_flops"] / (self.rates(mr, nr, fallback_rate)
                                                            * eff)
                + c["visit_s"] * feats["visits"] + c["pack_a_s_per_elem"] * feats["pack_a"]
                + _lookup(mr, nr, packs, pack_default) * feats["pack_b"]
                + _lookup(mr, nr, calls, call_default) * feats["calls"])


@dataclass(frozen=True)
class TileTerms:
    """The calibrated tile term of one host (see the module docstring).

    Attributes:
        fingerprint: fingerprint of :func:`codesign.kernels.tile_tuner.kernel_host`.
        l1_bytes, l2_bytes: the data caches the spill conditions compare against.
        kernels: per kernel name, its :class:`KernelTerms`.
        created: UNIX time of the calibration; source: how it was produced.
    """

    fingerprint: str
    l1_bytes: float
    l2_bytes: float
    kernels: Mapping[str, KernelTerms]
    created: float = field(default_factory=time.time)
    source: str = ""
    version: int = FORMAT_VERSION

    # -------------------------------------------------------------- pricing
    def kernel_seconds(self, kernel: str, m, n, k, mc, nc, kc, mr, nr,
                       fallback_rate) -> np.ndarray:
        """One-thread seconds of one GEMM per row for kernel ``kernel`` (arrays broadcast)."""
        feats = gemm_features(kernel, m, n, k, mc, nc, kc, mr, nr, self.l1_bytes, self.l2_bytes)
        return self.kernels[kernel].seconds(feats, np.asarray(mr), np.asarray(nr),
                                            np.asarray(fallback_rate, dtype=np.float64))

    def compute_seconds(self, dtype: np.ndarray, weight_bits: np.ndarray, m, n, k, groups,
                        tile: np.ndarray, fallback_rate: np.ndarray,
                        fp16_rate_scale: float) -> np.ndarray:
        """One-thread compute seconds of dense GEMM ops, NaN where no kernel term applies.

        Args:
            dtype, weight_bits: the OpBatch columns (``codesign.cost_models.ir.DTYPE_CODES``).
            m, n, k, groups: GEMM view of each op; ``groups`` GEMMs are run one after another.
            tile: (n_ops, 5) mc, nc, kc, mr, nr actually used.
            fallback_rate: the analytic model's micro-kernel FLOP/s per row (one core).
            fp16_rate_scale: the device's fp16 / fp32 peak ratio (fp16 runs the fp32 terms).
        """
        out = np.full(len(dtype), np.nan)
        mc, nc, kc, mr, nr = np.asarray(tile, dtype=np.float64).T
        is_int = dtype == DTYPE_CODES["int8"]
        low_bits = weight_bits <= 4
        selections = {"fp32": ~is_int,
                      "int8": is_int & (~low_bits if "int4" in self.kernels else True),
                      "int4": is_int & low_bits}
        for kernel, rows in selections.items():
            if kernel not in self.kernels or not rows.any():
                continue
            rows = np.flatnonzero(rows)
            t = self.kernel_seconds(kernel, m[rows], n[rows], k[rows], mc[rows], nc[rows],
                                    kc[rows], mr[rows], nr[rows], fallback_rate[rows])
            # an fp16 op does the same work at the fp16 peak: only its arithmetic rate differs
            scale = np.where(dtype[rows] == DTYPE_CODES["fp16"], fp16_rate_scale, 1.0)
            out[rows] = t / scale * groups[rows]
        return out

    def describe(self) -> dict:
        """Short provenance for a model's ``assumptions``."""
        return {"fingerprint": self.fingerprint, "version": self.version,
                "created": self.created, "kernels": sorted(self.kernels),
                "path": str(terms_path(self.fingerprint))}

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": self.version, "fingerprint": self.fingerprint,
                "created": self.created, "source": self.source, "l1_bytes": self.l1_bytes,
                "l2_bytes": self.l2_bytes,
                "kernels": {name: {"micro_gops": dict(kt.micro_gops), "coef": dict(kt.coef),
                                   "l1_spill_efficiency": kt.l1_spill_efficiency,
                                   "l2_spill_efficiency": kt.l2_spill_efficiency,
                                   "fallback_ratio": kt.fallback_ratio, "fit": dict(kt.fit)}
                            for name, kt in self.kernels.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TileTerms":
        if d.get("format") != FORMAT or d.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} document of version {FORMAT_VERSION}")
        kernels = {}
        for name, kd in d["kernels"].items():
            coef = {str(c): float(v) for c, v in kd["coef"].items()}
            if name not in KERNELS or not set(SHARED) <= set(coef):
                raise ValueError(f"kernel {name!r}: unknown kernel or missing coefficients")
            kernels[name] = KernelTerms(
                micro_gops={str(k): float(v) for k, v in kd["micro_gops"].items()}, coef=coef,
                l1_spill_efficiency=float(kd["l1_spill_efficiency"]),
                l2_spill_efficiency=float(kd["l2_spill_efficiency"]),
                fallback_ratio=float(kd.get("fallback_ratio", 1.0)), fit=dict(kd.get("fit", {})))
        return cls(fingerprint=str(d["fingerprint"]), l1_bytes=float(d["l1_bytes"]),
                   l2_bytes=float(d["l2_bytes"]), kernels=kernels, created=float(d["created"]),
                   source=str(d.get("source", "")), version=int(d["version"]))

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write atomically to ``path`` (default :func:`terms_path` of the fingerprint)."""
        path = Path(path) if path is not None else terms_path(self.fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1, sort_keys=True)
                f.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        load_terms.cache_clear()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TileTerms":
        return cls.from_dict(json.loads(Path(path).read_text()))


def terms_path(fingerprint: str, directory: str | os.PathLike | None = None) -> Path:
    return (Path(directory) if directory is not None else terms_dir()) / f"{fingerprint}.json"


@functools.lru_cache(maxsize=8)
def load_terms(path: str) -> TileTerms | None:
    """The terms stored at ``path``, None if there are none (memoised per path)."""
    try:
        return TileTerms.load(path)
    except FileNotFoundError:
        return None


def terms_for(device, backend) -> TileTerms | None:
    """The calibrated terms the analytic model uses for ``device`` / ``backend``: this host's
    file when the device is this machine and the back-end tunes its tiles (``codesign``), else
    None."""
    if not getattr(device, "tunes_tiles", False) or not getattr(backend, "tiles_choosable", False):
        return None
    from codesign.kernels.tile_tuner import kernel_host

    fingerprint = kernel_host().fingerprint()
    terms = load_terms(str(terms_path(fingerprint)))
    return terms if terms is not None and terms.fingerprint == fingerprint else None


# ------------------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class Sample:
    """One measurement: op shape (m, n, k), tile (mc, nc, kc, mr, nr), best-sample seconds."""

    shape: tuple[int, int, int]
    tile: tuple[int, int, int, int, int]
    seconds: float


def _columns(samples: Sequence[Sample]) -> tuple[np.ndarray, ...]:
    s = np.array([x.shape for x in samples], dtype=np.float64).reshape(-1, 3)
    t = np.array([x.tile for x in samples], dtype=np.float64).reshape(-1, 5)
    y = np.array([x.seconds for x in samples])
    return s[:, 0], s[:, 1], s[:, 2], t[:, 0], t[:, 1], t[:, 2], t[:, 3], t[:, 4], y


def fit_kernel(kernel: str, samples: Sequence[Sample], micro_gops: Mapping[str, float],
               l1_bytes: float, l2_bytes: float, *, fallback_ratio: float = 1.0,
               note: Mapping[str, Any] | None = None) -> KernelTerms:
    """Fit the coefficients and spill efficiencies of ``kernel`` on ``samples``.

    Non-negative least squares on relative error (every row divided by its measured time, so a
    0.1 ms shape counts as much as a 5 ms one) for each (e1, e2) of a 0.05 grid on [0.5, 1]
    (only where some sample spills); the pair with the smallest residual wins. Every
    micro-tile of the samples needs a measured rate in ``micro_gops``.
    """
    from scipy.optimize import nnls

    m, n, k, mc, nc, kc, mr, nr, y = _columns(samples)
    micro_set = sorted({(int(a), int(b)) for a, b in zip(mr, nr)})
    missing = {f"{a}x{b}" for a, b in micro_set} - set(micro_gops)
    if missing:
        raise ValueError(f"no measured micro-kernel rate for {sorted(missing)}")
    widths = sorted({b for _, b in micro_set}) if kernel == "fp32" else []
    names = list(SHARED) + [pack_b_key(w) for w in widths] + [call_key(a, b)
                                                               for a, b in micro_set]
    if len(samples) < 2 * len(names):
        raise ValueError(f"need at least {2 * len(names)} samples to fit {len(names)} "
                         f"coefficients, got {len(samples)}")
    feats = gemm_features(kernel, m, n, k, mc, nc, kc, mr, nr, l1_bytes, l2_bytes)
    rate = KernelTerms(micro_gops, {}, 1.0, 1.0).rates(mr, nr, np.ones_like(y))
    fixed = [feats["visits"], feats["pack_a"]]
    fixed += [feats["pack_b"] * (nr == w) for w in widths]
    fixed += [feats["calls"] * ((mr == a) & (nr == b)) for a, b in micro_set]
    best = None
    grid1 = _SPILL_GRID if feats["l1_over"].any() else np.array([1.0])
    grid2 = _SPILL_GRID if feats["l2_over"].any() else np.array([1.0])
    for e1 in grid1:
        for e2 in grid2:
            eff = np.where(feats["l1_over"], e1, 1.0) * np.where(feats["l2_over"], e2, 1.0)
            a = np.stack([feats["padded_flops"] / (rate * eff)] + fixed, axis=1) / y[:, None]
            # unit-norm columns: the coefficients span 1e-10 .. 1, nnls needs them comparable
            norm = np.linalg.norm(a, axis=0)
            norm[norm == 0] = 1.0
            beta, resid = nnls(a / norm, np.ones_like(y))
            if best is None or resid < best[0] - 1e-12:
                best = (resid, beta / norm, float(e1), float(e2))
    _, beta, e1, e2 = best
    kt = KernelTerms(dict(micro_gops), dict(zip(names, map(float, beta))), e1, e2,
                     fallback_ratio)
    rel = kt.seconds(feats, mr, nr, np.ones_like(y)) / y - 1
    fit = {"points": len(y), "shapes": len({x.shape for x in samples}),
           "coefficients": len(names) + (len(grid1) > 1) + (len(grid2) > 1),
           "rms_rel_err": float(np.sqrt(np.mean(rel ** 2))),
           "mape": float(np.mean(np.abs(rel)))}
    fit.update(note or {})
    return KernelTerms(kt.micro_gops, kt.coef, e1, e2, fallback_ratio, fit)


def samples_from_records(records: Iterable) -> list[Sample]:
    """Samples from tile tuner / ``measure_gemm`` records (dense GEMMs; best sample each)."""
    from codesign.kernels.tile_tuner import parse_tile

    out = []
    for rec in records:
        p = dict(rec.params)
        if not rec.name.startswith("gemm_") or p.get("sparsity") != "dense":
            continue
        mm, kk, nn = (int(v) for v in str(p["shape"]).split("x"))
        t = parse_tile(p["tile"])
        out.append(Sample((mm, nn, kk), (t.mc, t.nc, t.kc, t.mr, t.nr), rec.min_s))
    return out


def rank_check(terms: TileTerms, kernel: str, samples: Sequence[Sample],
               fallback_rate: float = 1e11) -> dict:
    """Within-shape agreement of ``terms`` with ``samples``: per shape, Spearman's rho across
    tiles, and the measured cost of the model's tile choice (measured time of the tile the
    terms rank first / best measured time)."""
    from scipy import stats

    by_shape: dict[tuple, list[Sample]] = {}
    for s in samples:
        by_shape.setdefault(s.shape, []).append(s)
    rows = []
    for shape, group in sorted(by_shape.items()):
        m, n, k, mc, nc, kc, mr, nr, y = _columns(group)
        pred = terms.kernel_seconds(kernel, m, n, k, mc, nc, kc, mr, nr,
                                    np.full_like(y, fallback_rate))
        rho = float(stats.spearmanr(y, pred).statistic) if len(y) > 2 else float("nan")
        rows.append({"shape": list(shape), "tiles": len(y), "spearman": rho,
                     "choice_cost": float(y[np.argmin(pred)] / y.min()),
                     "mape": float(np.mean(np.abs(pred / y - 1)))})
    return summarize_ranks(rows)


def summarize_ranks(rows: list[dict]) -> dict:
    """Aggregate per-shape ``spearman`` / ``choice_cost`` rows (see :func:`rank_check`)."""
    rhos = [r["spearman"] for r in rows if np.isfinite(r["spearman"])]
    costs = [r["choice_cost"] for r in rows]
    nan = float("nan")
    return {"shapes": rows, "min_spearman": float(min(rhos)) if rhos else nan,
            "median_spearman": float(np.median(rhos)) if rhos else nan,
            "share_spearman_ge_0.9": float(np.mean([r >= 0.9 for r in rhos])) if rhos else nan,
            "median_choice_cost": float(np.median(costs)) if costs else nan,
            "max_choice_cost": float(max(costs)) if costs else nan}
