"""Measure this host's GEMM tiles and fit the analytic model's tile terms to them.

The measuring half of :mod:`codesign.cost_models.tile_calibration` (which holds the terms, their
fit and their lookup): it tunes tiles with :mod:`codesign.kernels.tile_tuner` on the GEMM shapes of
the default ``codesign`` MBConv space and writes ``configs/tile_terms/<fingerprint>.json``. It
lives above ``cost_models`` because it needs the search space for its shapes (imports flow
codesign -> search_spaces -> cost_models -> kernels).

    .venv/bin/python -m codesign.calibrate_tiles [--kernels fp32,int8,int4] [--quick] [--dry-run]
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from codesign.cost_models.ir import DTYPE_CODES
from codesign.cost_models.tile_calibration import (TileTerms, fit_kernel, samples_from_records,
                                                   terms_path)


# ------------------------------------------------------------------------------ calibrating
def best_micro_rates(kernel: str, sessions: int = 3) -> dict[str, float]:
    """Per micro-tile, the best rate of ``sessions`` measurement sessions: a ceiling, and one
    session on a shared core can catch a tile at the all-core clock where the others ran at
    the boost clock (seen here: 4x16 at 96 in one session, 101-102 in the others)."""
    from codesign.kernels.tile_bench import measure_micro_rates

    runs = [measure_micro_rates(kernel) for _ in range(sessions)]
    return {t: max(r[t] for r in runs) for t in runs[0]}


def calibrate(train_shapes: Mapping[str, Sequence[Sequence[int]]], *, cache=None,
              save: bool = True, directory: str | os.PathLike | None = None,
              quick: bool = False, log=print) -> TileTerms:
    """Measure and fit the terms of this host (see the module docstring).

    Args:
        train_shapes: per kernel ("fp32", "int8", "int4"), the op shapes (m, n, k) to calibrate
            on; each is tuned with :func:`codesign.kernels.tile_tuner.tune` (cached tunings are
            reused).
        cache: the tile tuner cache (default: the tuner's).
        save: write the result to ``directory`` (default :func:`terms_dir`).
        quick: tune with the quick candidate set (fewer tiles per shape).

    Returns:
        The fitted :class:`TileTerms`.
    """
    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.devices import load_device
    from codesign.kernels import tile_tuner

    device = load_device("host")
    plain = AnalyticCostModel(device, "codesign", threads=1, tile_terms=None)
    lead = device.cpu.clusters[0]
    l1, l2 = lead.l1d_bytes.value, lead.l2_bytes.value
    kernels = {}
    for kernel, shapes in train_shapes.items():
        if not shapes:
            continue
        micro = best_micro_rates(kernel)
        log(f"{kernel}: micro-kernels " + ", ".join(f"{t} {g:.0f}" for t, g in micro.items()))
        records = []
        for shape in shapes:
            res = tile_tuner.tune(shape, kernel, cache=cache, quick=quick)
            records += res.records
            log(f"{kernel} {tuple(shape)}: {len(res.records)} tiles, best {res.best_tile.label}"
                f" ({'cached' if res.measured == 0 else 'measured'})")
        dtype = "int8" if kernel != "fp32" else "fp32"
        peak = plain.assumptions["peak_flops_per_s"][dtype]  # one thread: one core's peak
        ratios = []
        for label, gops in micro.items():
            a, b = (int(v) for v in label.split("x"))
            eff = plain.micro_kernel_efficiency(np.array([a]), np.array([b]),
                                                np.array([DTYPE_CODES[dtype]]))[0]
            ratios.append(gops * 1e9 / (peak * float(eff)))
        kernels[kernel] = fit_kernel(
            kernel, samples_from_records(records), micro, l1, l2,
            fallback_ratio=float(np.median(ratios)),
            note={"train_shapes": [list(s) for s in shapes], "quick": quick})
        log(f"{kernel}: fit {kernels[kernel].fit}")
    terms = TileTerms(tile_tuner.kernel_host().fingerprint(), l1, l2, kernels,
                      source="python -m codesign.calibrate_tiles")
    if save:
        path = terms.save(terms_path(terms.fingerprint, directory))
        log(f"wrote {path}")
    return terms


# ------------------------------------------------------------------------------ shape sets
def space_gemm_shapes(arch: str = "max", *, seed: int | None = None) -> list[tuple[int, int, int]]:
    """Distinct op shapes (m, n, k) of the conv2d / linear ops of one default-space ``codesign``
    MBConv candidate: its ``max`` or ``min`` architecture, or (``arch="sample"``) the one a
    seeded random sampler decodes. Sorted by (m, n, k)."""
    from codesign.cost_models.backends import load_backend
    from codesign.cost_models.ir import OpKind
    from codesign.search_spaces.mbconv import Candidate, LayerChoice, MBConvSpace, units

    space = MBConvSpace(load_backend("codesign"))
    if arch == "sample":
        candidate = space.decode(space.sample(np.random.default_rng(seed or 0)))
    else:
        a = space.config.max_arch() if arch == "max" else space.config.min_arch()
        candidate = Candidate(a, tuple(sorted((u, LayerChoice("w32a32")) for u in units(a))), 1)
    return sorted({(op.m, op.n, op.k) for op in space.to_ops(candidate)
                   if op.kind in (OpKind.CONV2D, OpKind.LINEAR)})


def calibration_shapes() -> dict[str, list[tuple[int, int, int]]]:
    """Calibration shapes per kernel: the ``min`` architecture's GEMMs minus any shape of the
    ``max`` architecture (which is held out for evaluation); every other one for the int
    kernels, whose tuning costs the same per shape but matters less in the search."""
    held = set(space_gemm_shapes("max"))
    train = [s for s in space_gemm_shapes("min") if s not in held]
    return {"fp32": train, "int8": train[::2], "int4": train[1::2]}


def heldout_shapes() -> dict[str, list[tuple[int, int, int]]]:
    """Evaluation shapes per kernel: the ``max`` architecture's GEMMs (never calibrated on)."""
    held = space_gemm_shapes("max")
    return {"fp32": held, "int8": held[::2], "int4": held[1::2]}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default="fp32,int8,int4", help="comma-separated kernels")
    ap.add_argument("--quick", action="store_true", help="quick tile candidate sets")
    ap.add_argument("--dry-run", action="store_true", help="fit and print, do not write")
    args = ap.parse_args(argv)
    train = calibration_shapes()
    chosen = [k for k in args.kernels.split(",") if k]
    terms = calibrate({k: train[k] for k in chosen}, quick=args.quick, save=not args.dry_run)
    print(json.dumps({k: v.fit for k, v in terms.kernels.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
