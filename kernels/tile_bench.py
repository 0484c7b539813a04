"""What tile tuning buys, and the micro-kernels' ceilings: measurements over the tile tuner.

:func:`tuned_vs_fixed` compares per-shape tuned tiles with the best single fixed tile on a set of
op shapes (``codesign bench kernels`` reports it); :func:`measure_micro_rates` times every
register micro-tile on L1-resident panels (the tile term's starting point,
:mod:`codesign.calibrate_tiles`). Split from :mod:`codesign.kernels.tile_tuner`, which tunes and
caches.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .specs import TileSpec
from .tile_tuner import (_shape, default_tile, effective_blocks, measure_tiles, micro_tiles,
                         parse_tile, tune)

if TYPE_CHECKING:
    from .bench_harness import ResultCache


def tuned_vs_fixed(shapes: Sequence[Sequence[int]], dtype: str = "fp32", *, quick: bool = False,
                   cache: "ResultCache | None" = None, repeats: int = 21,
                   min_sample_s: float = 0.0005) -> dict:
    """What per-shape tuning buys over the best single tile for a set of op shapes.

    1. Tune every shape (:func:`tune`; cached decisions are used as they are).
    2. The best single fixed tile: among the tiles the tuning measured on every shape, the one
       with the smallest geometric mean over shapes of (its time / the shape's best time), on
       the tuning measurements. A tile the candidate pruning dropped on a shape counts with the
       time of the candidate that runs the same loop nest there (:func:`effective_blocks`).
    3. A fresh interleaved measurement per shape of the tuned, the fixed and the back-end
       default tile; the ratio is fixed / tuned (and default / tuned) of the best samples.

    Returns:
        ``tuned_vs_fixed`` (median over shapes of fixed / tuned), ``tuned_vs_backend_default``
        (median of default / tuned), ``fixed_tile``, ``tuning`` ("cached", "measured" or
        "mixed"), ``per_shape`` rows and the settings.
    """
    shapes = [_shape(s) for s in shapes]
    default = default_tile()
    results = [tune(s, dtype, quick=quick, cache=cache) for s in shapes]
    measured = [r.measured > 0 for r in results]
    tuning = "measured" if all(measured) else ("cached" if not any(measured) else "mixed")
    times: list[dict] = []
    for shape, res in zip(shapes, results):
        by_eff = {}
        for rec in res.records:
            by_eff.setdefault(effective_blocks(shape, parse_tile(dict(rec.params)["tile"])),
                              rec.min_s)
        times.append(by_eff)
    pool = {dict(r.params)["tile"] for res in results for r in res.records}
    scores = {}
    for label in sorted(pool):
        tile = parse_tile(label)
        ratios = [by_eff.get(effective_blocks(s, tile)) for s, by_eff in zip(shapes, times)]
        if all(r is not None for r in ratios):
            scores[label] = float(np.exp(np.mean(np.log(
                [r / min(by_eff.values()) for r, by_eff in zip(ratios, times)]))))
    fixed = parse_tile(min(scores, key=scores.get)) if scores else default
    rows = []
    for shape, res in zip(shapes, results):
        wanted = {"tuned": res.best_tile, "fixed": fixed, "default": default}
        distinct: dict[tuple, TileSpec] = {}
        for tile in wanted.values():
            distinct.setdefault(effective_blocks(shape, tile), tile)
        recs = dict(zip(distinct, measure_tiles(shape, list(distinct.values()), dtype,
                                                repeats=repeats, min_sample_s=min_sample_s)))
        t = {name: recs[effective_blocks(shape, tile)].min_s for name, tile in wanted.items()}
        rows.append({"shape": list(shape), "tuned_tile": res.best_tile.label,
                     "tuned_s": t["tuned"], "fixed_s": t["fixed"], "default_s": t["default"],
                     "fixed_over_tuned": t["fixed"] / t["tuned"],
                     "default_over_tuned": t["default"] / t["tuned"]})
    return {"tuned_vs_fixed": float(np.median([r["fixed_over_tuned"] for r in rows])),
            "tuned_vs_backend_default": float(np.median([r["default_over_tuned"]
                                                         for r in rows])),
            "fixed_tile": fixed.label, "backend_default_tile": default.label,
            "fixed_tile_geomean_over_best": scores.get(fixed.label, float("nan")),
            "tuning": tuning, "dtype": dtype, "quick": quick, "per_shape": rows,
            "settings": {"repeats": repeats, "min_sample_s": min_sample_s,
                         "estimator": "best sample of interleaved rounds"}}


def _micro_loop(tile):
    # the intrinsic is a closure constant of the loop numba compiles (one loop per tile)
    def loop(n, s, ap, bp, out):
        for _ in range(n):
            tile(s, ap, bp, out)
    return loop


def measure_micro_rates(dtype: str = "fp32", *, kc: int = 256, calls: int = 200,
                        repeats: int = 41) -> dict[str, float]:
    """Register micro-kernel rate of every supported micro-tile on L1-resident panels.

    Returns ``{"MRxNR": G(FL)OP/s}`` of the best sample, one thread (``kc`` k-steps per call,
    ``calls`` calls per timed loop, all micro-tiles interleaved). The ceiling each tile reaches
    when packing, stores and cache misses cost nothing: the tile term of the cost model starts
    from it.
    """
    import numba

    from . import _numba_config as cfg
    from ._simd_ir import make_f32_tile, make_int_tile
    from .bench_harness import Case, measure_interleaved

    rng = np.random.default_rng(0)
    cases = []
    for mr, nr in micro_tiles(dtype):
        if dtype == "fp32":
            tile = make_f32_tile(mr, nr)
            ap = rng.standard_normal(kc * mr, dtype=np.float32)
            bp = rng.standard_normal(kc * nr, dtype=np.float32)
            out = np.empty(mr * nr, np.float32)
            steps, sig = kc, "void(int64, int64, float32[::1], float32[::1], float32[::1])"
        else:
            tile = make_int_tile(mr, nr, nibbles=dtype == "int4")
            steps = kc // 2
            ap = rng.integers(-128, 128, steps * mr * 2).astype(np.int16)
            if dtype == "int4":
                bp = rng.integers(0, 256, steps * nr).astype(np.uint8)
                bty = "uint8"
            else:
                bp = rng.integers(-128, 128, steps * nr * 2).astype(np.int16)
                bty = "int16"
            out = np.empty(mr * nr, np.int32)
            sig = f"void(int64, int64, int16[::1], {bty}[::1], int32[::1])"

        with cfg.compile_context(slp=True, loop_vectorize=False):
            fn = numba.njit(sig, **cfg.jit_options())(_micro_loop(tile))
        cases.append(Case(f"micro_{dtype}", (lambda fn=fn, ap=ap, bp=bp, out=out, s=steps:
                                             fn(calls, s, ap, bp, out)),
                          2.0 * mr * nr * kc * calls, "FLOP" if dtype == "fp32" else "OP",
                          {"micro": f"{mr}x{nr}", "kc": kc}))
    # many short rounds: a rate of a shared core is only trustworthy as the best of many
    # samples (15 rounds of 2 ms once gave 6x8 half its rate; 41 of 1 ms agree within 2 %)
    recs = measure_interleaved(cases, threads=1, warmups=1, repeats=repeats,
                               min_sample_s=0.001)
    return {dict(r.params)["micro"]: r.work / r.min_s / 1e9 for r in recs}
