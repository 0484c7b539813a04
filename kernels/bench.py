"""Kernel benchmarks: our kernels against OpenBLAS (numpy) and against each other.

:func:`run_kernel_benchmarks` is what ``codesign bench kernels`` reports; :func:`measure_gemm`
times one GEMM-shaped configuration (shape x tile x precision x sparsity) for a tile tuner.
All timings come from :mod:`codesign.kernels.bench_harness` (compilation excluded, warm-ups,
repeats, threads pinned), and every ratio compares cases measured interleaved in the same process.
The headline ratios compare the *best* sample of each case
(:func:`codesign.kernels.bench_harness.best_speedup`): on a shared machine another process
preempting one sample makes a median ratio swing by 2x between runs, while the best samples stay
within a few percent (measured here: fp32 0.90 / 0.92 / 0.91 against 0.58 / 0.58 / 0.41). The
median-of-paired-rounds ratios (:func:`codesign.kernels.bench_harness.paired_speedup`) are reported
next to them under ``ratios_paired_median``, and every record keeps median and IQR. Rates of
sparse kernels are quoted two ways: "dense-equivalent" (2*M*K*N / time, comparable with dense
GEMM) and "actual" (2 * kept weights * M / time).

Command line: ``python -m codesign.kernels.bench [--quick] [--threads N]`` prints the JSON summary.
To compare against an unhampered OpenBLAS on hosts that export ``OPENBLAS_CORETYPE`` /
``OPENBLAS_L2_SIZE``, unset them for that command only
(``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m codesign.kernels.bench``); the host record
lists them when set.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from .bench_harness import (BenchRecord, Case, ResultCache, best_speedup, freeze_params,
                            host_info, measure_interleaved, numba_settings, paired_speedup,
                            record_key)
from .gemm_f32 import DEFAULT_TILE, check_tile, gemm_f32_kernel
from .gemm_int8 import DEFAULT_INT_TILE, gemm_int_kernel, pack_weights_int4, pack_weights_int8
from .sparse import spmm_bsr, spmm_csr, spmm_nm
from .sparse_formats import compress_nm, prune_blocks, prune_unstructured, to_bsr, to_csr
from .specs import DENSE, QuantSpec, SparsityPattern, SparsitySpec, TileSpec

#: (M, K, N) of the sparse comparisons: M = spatial positions (1x1-conv / linear layers of
#: MobileNet/ResNet stages at 224x224: 56^2, 28^2, 14^2), weights K x N.
SPARSE_SHAPES_FULL = ((3136, 64, 256), (784, 256, 256), (784, 512, 512), (196, 512, 512))
SPARSE_SHAPES_QUICK = ((784, 512, 512),)
GEMM_SIZE = 512


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _dtype_name(dtype: str | QuantSpec) -> str:
    if isinstance(dtype, QuantSpec):
        if dtype.compute_dtype == "int8":
            return "int4" if dtype.weight_bits <= 4 else "int8"
        if dtype.compute_dtype == "fp32":
            return "fp32"
        raise ValueError(f"no kernel for compute dtype {dtype.compute_dtype}")
    if dtype not in ("fp32", "int8", "int4"):
        raise ValueError(f"dtype must be 'fp32', 'int8', 'int4' or a QuantSpec, got {dtype!r}")
    return dtype


def gemm_case(shape: tuple[int, int, int], tile: TileSpec = DEFAULT_TILE,
              dtype: str | QuantSpec = "fp32", sparsity: SparsitySpec = DENSE,
              name: str | None = None) -> Case:
    """Build the benchmark :class:`Case` of ``Y = X @ W`` for one configuration.

    Args:
        shape: (M, K, N); X is (M, K) activations, W (K, N) weights.
        tile: blocking of the dense kernels (int kernels need an even kc); ignored by the
            sparse kernels, whose blocking is fixed per format.
        dtype: ``"fp32"``, ``"int8"``/``"int4"`` (weights; activations int8) or a QuantSpec.
        sparsity: DENSE, N:M (fp32), BLOCK (fp32, any block shape) or UNSTRUCTURED (fp32).

    Returns:
        A Case whose work is the dense-equivalent 2*M*K*N (FLOP, or OP for integer kernels);
        its params record the kept fraction and actual work.
    """
    m, k, n = (int(v) for v in shape)
    if min(m, k, n) <= 0:
        raise ValueError(f"shape must be positive (M, K, N), got {shape}")
    check_tile(tile)
    dt = _dtype_name(dtype)
    rng = _rng()
    w = rng.standard_normal((k, n), dtype=np.float32)
    params: dict = {"shape": (m, k, n), "dtype": dt, "sparsity": sparsity.label,
                    "tile": tile.label}
    work = 2.0 * m * k * n
    if dt != "fp32":
        if sparsity.pattern is not SparsityPattern.DENSE:
            raise ValueError("integer kernels are dense only")
        if tile.kc % 2:
            raise ValueError("integer kernels need an even kc")
        a = rng.integers(-128, 128, (m, k), dtype=np.int8)
        lo, hi = (-8, 8) if dt == "int4" else (-128, 128)
        wq = rng.integers(lo, hi, (k, n)).astype(np.int8)
        packed = (pack_weights_int4 if dt == "int4" else pack_weights_int8)(wq, tile.nr)
        kern = gemm_int_kernel(tile.mr, tile.nr, packed.bits)
        out_i = np.empty((m, n), np.int32)
        fn = (lambda: kern(a, packed.data, out_i, packed.kpairs, tile.mc, tile.nc, tile.kc))
        return Case(name or f"gemm_{dt}", fn, work, "OP", params)
    x = rng.standard_normal((m, k), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    pat = sparsity.pattern
    if pat is SparsityPattern.DENSE:
        kern = gemm_f32_kernel(tile.mr, tile.nr)
        fn = (lambda: kern(x, w, out, tile.mc, tile.nc, tile.kc))
        kept = 1.0
    elif pat is SparsityPattern.N_M:
        nm = compress_nm(w, sparsity.n, sparsity.m)
        fn = (lambda: spmm_nm(x, nm, out))
        kept = sparsity.n / sparsity.m
    elif pat is SparsityPattern.BLOCK:
        bsr = to_bsr(prune_blocks(w, sparsity.block_rows, sparsity.block_cols,
                                  1.0 - sparsity.density),
                     sparsity.block_rows, sparsity.block_cols)
        fn = (lambda: spmm_bsr(x, bsr, out))
        kept = bsr.density
    else:
        csr = to_csr(prune_unstructured(w, 1.0 - sparsity.density))
        fn = (lambda: spmm_csr(x, csr, out))
        kept = csr.density
    params["kept_fraction"] = round(kept, 4)
    params["actual_flop"] = work * kept
    return Case(name or f"spmm_{sparsity.label}", fn, work, "FLOP", params)


def measure_gemm(shape: tuple[int, int, int], tile: TileSpec = DEFAULT_TILE,
                 dtype: str | QuantSpec = "fp32", sparsity: SparsitySpec = DENSE, *,
                 threads: int = 1, repeats: int = 9, warmups: int = 1,
                 min_sample_s: float = 0.005,
                 cache: ResultCache | None = None) -> BenchRecord:
    """Time one GEMM configuration (see :func:`gemm_case`); the tile tuner's entry point.

    Args:
        shape, tile, dtype, sparsity: the configuration.
        threads: numba/BLAS threads during the measurement.
        repeats, warmups, min_sample_s: harness settings.
        cache: if given, return a cached record for the same configuration on this host, or
            measure and store one.

    Returns:
        A :class:`BenchRecord` with ``rate`` in dense-equivalent FLOP/s (or op/s for int).
    """
    case = gemm_case(shape, tile, dtype, sparsity)
    if cache is not None:
        hit = cache.get(record_key(case.name, freeze_params(case.params), threads))
        if hit is not None:
            return hit
    rec = measure_interleaved([case], threads=threads, warmups=warmups, repeats=repeats,
                              min_sample_s=min_sample_s)[0]
    if cache is not None:
        cache.put(rec)
    return rec


def _geomean(values: list[float]) -> float:
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


def _compact(rec: BenchRecord) -> dict:
    lo, hi = rec.rate_iqr
    return {"params": dict(rec.params), "median_ms": rec.median_s * 1e3,
            "rate_g": rec.rate / 1e9, "rate_iqr_g": [lo / 1e9, hi / 1e9], "unit": rec.unit,
            "samples": len(rec.times_s), "loops": rec.loops}


def tuned_vs_default_tile(shapes: Sequence[tuple[int, int, int]], quick: bool = False) -> dict:
    """``tuned_vs_default_tile``: what per-shape tile tuning buys on a co-design candidate.

    Shapes: the caller's (m, n, k) GEMM shapes — ``codesign bench kernels`` passes the conv2d /
    linear ops of the default ``codesign`` MBConv space's max architecture
    (:func:`codesign.calibrate_tiles.space_gemm_shapes`, 20 shapes; ``quick``: every 5th from the
    third, 4 shapes, tuned with the quick candidate set unless a tuning is cached). Value: median over
    the shapes of (time with the best single fixed tile over the set) / (time with the
    shape's tuned tile), both re-measured in a fresh interleaved run, one thread
    (:func:`codesign.kernels.tile_bench.tuned_vs_fixed`). The detail says whether the tuning was
    read from the tuner cache or measured in this run.
    """
    from .tile_bench import tuned_vs_fixed

    shapes = list(shapes)
    res = tuned_vs_fixed(shapes[2::5] if quick else shapes, "fp32", quick=quick)
    return {"tuned_vs_default_tile": res["tuned_vs_fixed"],
            "tuned_vs_default_tile_detail": res}


def run_kernel_benchmarks(quick: bool = False, threads: int = 1, *,
                          gemm_size: int = GEMM_SIZE,
                          sparse_shapes: tuple[tuple[int, int, int], ...] | None = None,
                          repeats: int | None = None, probe: bool = True,
                          tile_shapes: Sequence[tuple[int, int, int]] | None = None) -> dict:
    """Benchmark the kernels against OpenBLAS and the dense kernel.

    Args:
        quick: CI mode (< 60 s here, including compilation): one sparse shape, fewer samples.
        threads: numba and BLAS threads for every case (1 = the single-thread comparison).
        gemm_size: side of the square GEMM comparison (512 by default).
        sparse_shapes: (M, K, N) shapes of the sparse comparison (default by ``quick``).
        repeats: samples per case (default 11 quick / 21 full).
        probe: also run :func:`codesign.kernels.host_probe.probe_host` (quick when ``quick``), store
            the profile for the cost models and report it under ``host_profile``.
        tile_shapes: also report :func:`tuned_vs_default_tile` (and its detail) on these GEMM
            shapes (a search space's; this package does not know the spaces).

    Returns:
        ``gemm_f32_vs_blas`` (our fp32 GEMM / numpy fp32 matmul at 512^3, default tile),
        ``gemm_i8_vs_blas_f32`` and ``gemm_i4_vs_blas_f32`` (int op/s / BLAS fp32 FLOP/s),
        ``spmm_2to4_vs_dense``, ``bsr75_vs_dense`` (BSR 4x4 at 75 % sparsity),
        ``bsr1x4_75_vs_dense``, ``csr75_vs_dense``, ``csr90_vs_dense`` (best time of our dense
        fp32 GEMM / best time of the sparse kernel, geometric mean over the sparse shapes), the
        same
        ``*_vs_blas``, ``ratios_paired_median`` (the main ratios as medians of per-round
        ratios); ``gflops`` (raw rates at the median time, G(FL)OP/s), ``records`` (every
        case, keyed by name and shape), ``host``, ``numba``, ``settings`` and, with ``probe``,
        ``host_profile`` and ``gemm_f32_fraction_of_peak`` (best sample of our fp32 GEMM /
        register-resident FMA peak, one thread); with ``tile_shapes``, ``tuned_vs_default_tile`` and
        ``tuned_vs_default_tile_detail``. Ratios > 1 mean faster than the reference.
    """
    t_start = time.perf_counter()
    reps, warm, min_s = (11, 1, 0.004) if quick else (21, 3, 0.02)
    repeats = reps if repeats is None else repeats
    host = host_info()
    s = int(gemm_size)
    rng = _rng()
    a = rng.standard_normal((s, s), dtype=np.float32)
    b = rng.standard_normal((s, s), dtype=np.float32)
    c = np.empty((s, s), np.float32)
    flop = 2.0 * s ** 3
    shape = (s, s, s)
    cases = [Case("blas_f32", lambda: np.matmul(a, b, out=c), flop, "FLOP",
                  {"shape": shape, "impl": "numpy"}),
             gemm_case(shape, DEFAULT_TILE, "fp32"),
             gemm_case(shape, DEFAULT_INT_TILE, "int8"),
             gemm_case(shape, DEFAULT_INT_TILE, "int4")]
    recs = measure_interleaved(cases, threads=threads, warmups=warm, repeats=repeats,
                               min_sample_s=min_s)
    blas, f32, i8, i4 = recs
    # work per call is the same 2*s^3 for all four, so time ratios are rate ratios
    paired: dict = {"gemm_f32_vs_blas": paired_speedup(blas, f32),
                    "gemm_i8_vs_blas_f32": paired_speedup(blas, i8),
                    "gemm_i4_vs_blas_f32": paired_speedup(blas, i4)}
    out: dict = {
        "gemm_f32_vs_blas": best_speedup(blas, f32),
        "gemm_i8_vs_blas_f32": best_speedup(blas, i8),
        "gemm_i4_vs_blas_f32": best_speedup(blas, i4),
        "gflops": {f"blas_f32_{s}": blas.rate / 1e9, f"gemm_f32_{s}": f32.rate / 1e9,
                   f"gemm_i8_{s}_gops": i8.rate / 1e9, f"gemm_i4_{s}_gops": i4.rate / 1e9},
    }
    all_recs = list(recs)
    variants = {"2to4": SparsitySpec(SparsityPattern.N_M, 0.5, n=2, m=4),
                "bsr75": SparsitySpec(SparsityPattern.BLOCK, 0.25, block_rows=4, block_cols=4),
                "bsr1x4_75": SparsitySpec(SparsityPattern.BLOCK, 0.25, block_rows=1,
                                          block_cols=4),
                "csr75": SparsitySpec(SparsityPattern.UNSTRUCTURED, 0.25),
                "csr90": SparsitySpec(SparsityPattern.UNSTRUCTURED, 0.10)}
    vs_dense: dict[str, list[float]] = {v: [] for v in variants}
    vs_blas: dict[str, list[float]] = {v: [] for v in variants}
    vs_dense_paired: dict[str, list[float]] = {v: [] for v in variants}
    if sparse_shapes is None:
        sparse_shapes = SPARSE_SHAPES_QUICK if quick else SPARSE_SHAPES_FULL
    shapes = tuple(tuple(int(v) for v in sh) for sh in sparse_shapes)
    for (m, k, n) in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        y = np.empty((m, n), np.float32)
        tag = f"{m}x{k}x{n}"
        cs = [Case("blas_f32", lambda x=x, w=w, y=y: np.matmul(x, w, out=y), 2.0 * m * k * n,
                   "FLOP", {"shape": (m, k, n), "impl": "numpy"}),
              gemm_case((m, k, n), DEFAULT_TILE, "fp32", DENSE, "gemm_f32")]
        cs += [gemm_case((m, k, n), DEFAULT_TILE, "fp32", spec, f"spmm_{v}")
               for v, spec in variants.items()]
        rs = measure_interleaved(cs, threads=threads, warmups=warm, repeats=repeats,
                                 min_sample_s=min_s)
        all_recs += rs
        blas_r, dense_r = rs[0], rs[1]
        out["gflops"][f"blas_f32_{tag}"] = blas_r.rate / 1e9
        out["gflops"][f"gemm_f32_{tag}"] = dense_r.rate / 1e9
        for v, r in zip(variants, rs[2:]):
            vs_dense[v].append(best_speedup(dense_r, r))
            vs_blas[v].append(best_speedup(blas_r, r))
            vs_dense_paired[v].append(paired_speedup(dense_r, r))
            kept = dict(r.params)["kept_fraction"]
            out["gflops"][f"spmm_{v}_{tag}_dense_equiv"] = r.rate / 1e9
            out["gflops"][f"spmm_{v}_{tag}_actual"] = r.rate * kept / 1e9
    names = {"2to4": "spmm_2to4", "bsr75": "bsr75", "bsr1x4_75": "bsr1x4_75",
             "csr75": "csr75", "csr90": "csr90"}
    for v, key in names.items():
        out[f"{key}_vs_dense"] = _geomean(vs_dense[v])
        out[f"{key}_vs_blas"] = _geomean(vs_blas[v])
        paired[f"{key}_vs_dense"] = _geomean(vs_dense_paired[v])
    out["ratios_paired_median"] = paired
    if tile_shapes is not None:
        out.update(tuned_vs_default_tile(tile_shapes, quick))
    out["records"] = {f"{r.name}[{dict(r.params)['shape']}]": _compact(r) for r in all_recs}
    if probe:
        from .host_probe import probe_host

        prof = probe_host(quick=quick).to_dict()
        prof.pop("host")
        out["host_profile"] = prof
        best_gflops = f32.work / f32.min_s / 1e9
        out["gemm_f32_fraction_of_peak"] = best_gflops / prof["peak_fp32_gflops_1t"]
    out["host"] = host.to_dict()
    out["numba"] = numba_settings()
    out["settings"] = {"quick": quick, "threads": threads, "repeats": repeats, "warmups": warm,
                       "gemm_size": s, "sparse_shapes": [list(sh) for sh in shapes],
                       "fp32_tile": DEFAULT_TILE.label, "int_tile": DEFAULT_INT_TILE.label,
                       "elapsed_s": time.perf_counter() - t_start}
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI mode (< 60 s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-records", action="store_true", help="print every case too")
    args = ap.parse_args(argv)
    res = run_kernel_benchmarks(quick=args.quick, threads=args.threads)
    if not args.full_records:
        res.pop("records")
    print(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
