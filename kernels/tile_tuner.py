"""Tile tuner: pick the GEMM tile (mc, nc, kc, mr, nr) of one layer shape by measuring it here.

Shapes are **op shapes** ``(m, n, k)`` as in :class:`codesign.cost_models.ir.Op` (m output rows, n
output channels, k reduction length); the kernels and :func:`codesign.kernels.bench.measure_gemm`
take ``(M, K, N)``, and the records this module writes carry that kernel order in their ``shape``
param, as ``measure_gemm``'s do.

Search (kernel_tuner's brute force over a small pruned space, every candidate timed in one
:func:`codesign.kernels.bench_harness.measure_interleaved` call so drifts of a shared machine hit
all alike; the decision is the candidate with the best *best sample*): every micro-tile the dtype's
kernel supports x cache blocks kc in 3 sizes, mc = 12 or 32 micro-panels, nc = 16 or 64 slivers.
Candidates whose blocks the shape clips to the same effective blocking are one configuration
(measured once). ``budget`` keeps the first candidates in priority order: every micro-tile at
the BLIS-like middle blocks first, then the block variants. The back-end's default tile is
always among them, so the tuned tile never loses to it on the tuning measurements.

Cache: :class:`TunerCache` (a :class:`codesign.kernels.bench_harness.ResultCache`, one JSON file per
host fingerprint under ``tile_tuner/`` of ``codesign.kernels.cache_paths.cache_dir()``,
``fcntl``-locked, atomic replace, so concurrent processes may tune at once) holds every candidate's
record and one ``tile_tuned`` decision record per (shape, dtype, sparsity). A decision's ``tile``
param is the tuned tile; re-tuning adds a newer decision, and the newest wins. The host is
:func:`kernel_host`: the harness's :class:`~codesign.kernels.bench_harness.HostInfo` without its
BLAS field, which these numba kernels never call and which changes with import order
(``threadpoolctl`` lists scipy's OpenBLAS first once ``scipy.linalg`` is loaded, so the same process
state would otherwise get two fingerprints).

Sparse layers: the sparse kernels (2:4, BSR, CSR) block by format, not by TileSpec, so a
non-dense sparsity is not tuned: :func:`tune` answers the back-end default without measuring
and :func:`tuned_tile` answers None. Tiles are tuned single-threaded (the GEMM drivers the
benchmarks time are the serial ones); the same tile is used at any thread count.

:func:`tuned_tile` is what the search's hook
(:mod:`codesign.cost_models.tile_resolution`) looks up: on ``--device host`` a GEMM op that leaves
its tile free gets the tuned tile (cache lookup only, never a measurement), elsewhere or before
tuning the back-end's default tile.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .specs import DENSE, QuantSpec, SparsityPattern, SparsitySpec, TileSpec

if TYPE_CHECKING:  # numba-free at import: the search imports this module for tuned_tile
    from .bench_harness import BenchRecord, ResultCache

DTYPES = ("fp32", "int8", "int4")
#: kc choices per dtype (int kernels count kc in K elements and need it even).
KC_CHOICES = {"fp32": (256, 128, 512), "int8": (512, 256, 1024), "int4": (512, 256, 1024)}
#: mc = mr x panels, nc = nr x slivers; the first entry of each is the middle (priority) choice.
MC_PANELS = (12, 32)
NC_SLIVERS = (64, 16)
QUICK_MICRO_TILES = 4
DECISION = "tile_tuned"
Shape = tuple[int, int, int]


def micro_tiles(dtype: str) -> tuple[tuple[int, int], ...]:
    """The (mr, nr) micro-tiles the kernel of ``dtype`` ("fp32", "int8", "int4") supports."""
    if dtype == "fp32":
        from .gemm_f32 import SUPPORTED_MICRO_TILES
        return SUPPORTED_MICRO_TILES
    if dtype == "int8":
        from .gemm_int8 import SUPPORTED_I8_MICRO_TILES
        return SUPPORTED_I8_MICRO_TILES
    if dtype == "int4":
        from .gemm_int8 import SUPPORTED_I4_MICRO_TILES
        return SUPPORTED_I4_MICRO_TILES
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def kernel_dtype(quant: QuantSpec) -> str:
    """The GEMM kernel a layer of precision ``quant`` runs on this project's kernels.

    int8 x int8 -> "int8"; int8 activations with <= 4-bit weights -> "int4" (2-bit weights
    have no kernel; the int4 one is the nearest); everything with float activations -> "fp32"
    (weight-only quantization dequantizes into the float pipeline, and fp16 arithmetic is
    converted to fp32 on x86 hosts).
    """
    if quant.compute_dtype == "int8":
        return "int4" if quant.weight_bits <= 4 else "int8"
    return "fp32"


def _shape(shape: Sequence[int]) -> Shape:
    m, n, k = (int(v) for v in shape)
    if min(m, n, k) <= 0:
        raise ValueError(f"shape must be positive (m, n, k), got {tuple(shape)}")
    return m, n, k


def effective_blocks(shape: Sequence[int], tile: TileSpec) -> tuple[int, ...]:
    """What the kernel actually runs for ``tile`` on op shape (m, n, k): blocks clipped to the
    padded problem. Two tiles with the same value run identical loop nests."""
    m, n, k = _shape(shape)
    mpad = -(-m // tile.mr) * tile.mr
    npad = -(-n // tile.nr) * tile.nr
    return (min(tile.mc, mpad), min(tile.nc, npad), min(tile.kc, k), tile.mr, tile.nr)


def candidate_tiles(shape: Sequence[int], dtype: str = "fp32", *, quick: bool = False,
                    default: TileSpec | None = None) -> tuple[TileSpec, ...]:
    """The tiles :func:`tune` measures for op shape (m, n, k), in priority order.

    ``quick`` keeps the middle blocks of the first :data:`QUICK_MICRO_TILES` micro-tiles only
    (the 16- and 24-wide ones, fastest in L1; each new micro-tile costs a compilation, which
    dominates a quick run). ``default`` (the back-end default tile) is inserted after the first
    block preset when it is not already there. Candidates with the same
    :func:`effective_blocks` are dropped after the first.
    """
    shape = _shape(shape)
    micros = micro_tiles(dtype)[:QUICK_MICRO_TILES] if quick else micro_tiles(dtype)
    presets = [(KC_CHOICES[dtype][0], MC_PANELS[0], NC_SLIVERS[0])]
    if not quick:
        presets += [(kc, mp, ns) for kc in KC_CHOICES[dtype] for mp in MC_PANELS
                    for ns in NC_SLIVERS if (kc, mp, ns) != presets[0]]
    tiles = [TileSpec(mc=mr * mp, nc=nr * ns, kc=kc, mr=mr, nr=nr)
             for kc, mp, ns in presets for mr, nr in micros]
    if default is not None and (default.mr, default.nr) in micro_tiles(dtype):
        tiles.insert(len(micros), default)
    seen: set[tuple[int, ...]] = set()
    out = []
    for t in tiles:
        eff = effective_blocks(shape, t)
        if eff not in seen:
            seen.add(eff)
            out.append(t)
    return tuple(out)


def parse_tile(label: str) -> TileSpec:
    """Inverse of :attr:`TileSpec.label` (``"72x1024x512/6x16"``)."""
    blocks, micro = label.split("/")
    mc, nc, kc = (int(v) for v in blocks.split("x"))
    mr, nr = (int(v) for v in micro.split("x"))
    return TileSpec(mc, nc, kc, mr, nr)


# ------------------------------------------------------------------------------ cache
def default_cache_dir() -> Path:
    """``tile_tuner`` in the user cache directory
    (:func:`codesign.kernels.cache_paths.cache_dir`)."""
    from .cache_paths import cache_dir

    return cache_dir("tile_tuner")


def kernel_host():
    """This host as the tuner and the tile terms key it:
    :func:`codesign.kernels.bench_harness.host_info` with ``blas`` blanked (see the module
    docstring), so the fingerprint is the same whatever was imported before."""
    from .bench_harness import host_info

    return dataclasses.replace(host_info(), blas="")


@functools.lru_cache(maxsize=None)  # one class, so a cache's type says it is the tuner's
def _cache_class():
    from .bench_harness import ResultCache

    class TunerCache(ResultCache):
        """A ResultCache that also stores a batch of records under one lock (a tuning session
        writes dozens; one read-merge-replace per record would rewrite the file each time)."""

        def put_many(self, records: Iterable["BenchRecord"]) -> None:
            # measurements of this process carry host_info(); stamp them with the cache's host
            records = [_stamped(rec, self.host) for rec in records]
            self._merge({rec.key: rec.to_dict() for rec in records})

    return TunerCache


def _stamped(rec: "BenchRecord", host) -> "BenchRecord":
    if rec.host.fingerprint() == host.fingerprint():
        return rec
    if dataclasses.replace(rec.host, blas="").fingerprint() != host.fingerprint():
        raise ValueError("record was measured on another host than this cache's")
    return dataclasses.replace(rec, host=host)


def tuner_cache(directory: str | os.PathLike | None = None) -> "ResultCache":
    """The tuner's cache in ``directory`` (default :func:`default_cache_dir`), for
    :func:`kernel_host`."""
    return _cache_class()(directory if directory is not None else default_cache_dir(),
                          kernel_host())


_DEFAULT_CACHE: "ResultCache | None" = None


def _resolve_cache(cache: "ResultCache | None") -> "ResultCache":
    global _DEFAULT_CACHE
    if cache is not None:
        return cache
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = tuner_cache()
    return _DEFAULT_CACHE


def _put(cache: "ResultCache", records: list["BenchRecord"]) -> None:
    if isinstance(cache, _cache_class()):
        cache.put_many(records)
    else:
        for rec in records:
            cache.put(_stamped(rec, cache.host))


# Decisions memoised per cache file, refreshed when the file changes (os.stat per lookup).
_DECISIONS: dict[str, tuple[tuple[int, int], dict]] = {}


def _decisions(cache: "ResultCache") -> dict:
    path = str(cache.path)
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        return {}
    hit = _DECISIONS.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    # per (shape, dtype, sparsity): the newest decision of a full search, and the newest of any
    table: dict = {}
    for rec in sorted((r for r in cache.records() if r.name == DECISION),
                      key=lambda r: r.created):
        p = dict(rec.params)
        key = (p["op_shape"], p["dtype"], p["sparsity"])
        entry = table.setdefault(key, {})
        entry["any"] = rec
        if p.get("candidate_set") == "full":
            entry["full"] = rec
    _DECISIONS[path] = (stamp, table)
    return table


def _decision(cache: "ResultCache", shape: Shape, dtype: str, sparsity: SparsitySpec, *,
              full_only: bool) -> "BenchRecord | None":
    entry = _decisions(cache).get(("x".join(map(str, shape)), dtype, sparsity.label), {})
    return entry.get("full") if full_only else entry.get("full", entry.get("any"))


# ------------------------------------------------------------------------------ measuring
def _params(shape: Shape, tile: TileSpec, dtype: str) -> dict:
    m, n, k = shape
    return {"shape": (m, k, n), "dtype": dtype, "sparsity": DENSE.label, "tile": tile.label}


def tile_cases(shape: Sequence[int], tiles: Sequence[TileSpec], dtype: str = "fp32") -> list:
    """One :class:`codesign.kernels.bench_harness.Case` per tile for dense op shape (m, n, k).

    All cases share the operands (one X, W and C), so they time the same data and the host
    holds one copy whatever the number of tiles. Records are named ``gemm_<dtype>``; their
    params are the kernel-order ``shape`` (M x K x N), ``dtype``, ``sparsity`` and ``tile``.
    """
    from .bench_harness import Case
    from .gemm_f32 import check_tile, gemm_f32_kernel
    from .gemm_int8 import gemm_int_kernel, pack_weights_int4, pack_weights_int8

    shape = _shape(shape)
    m, n, k = shape
    rng = np.random.default_rng(1234)
    work = 2.0 * m * n * k
    cases = []
    if dtype == "fp32":
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        for t in tiles:
            check_tile(t)
            kern = gemm_f32_kernel(t.mr, t.nr)
            cases.append(Case("gemm_fp32", (lambda kern=kern, t=t: kern(x, w, out, t.mc, t.nc,
                                                                       t.kc)),
                              work, "FLOP", _params(shape, t, dtype)))
        return cases
    if dtype not in ("int8", "int4"):
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    lo, hi = (-8, 8) if dtype == "int4" else (-128, 128)
    wq = rng.integers(lo, hi, (k, n)).astype(np.int8)
    pack = pack_weights_int4 if dtype == "int4" else pack_weights_int8
    packed = {}
    out_i = np.empty((m, n), np.int32)
    for t in tiles:
        if t.kc % 2 or (t.mr, t.nr) not in micro_tiles(dtype):
            raise ValueError(f"tile {t.label} cannot run the {dtype} kernel")
        if t.nr not in packed:
            packed[t.nr] = pack(wq, t.nr)
        pw = packed[t.nr]
        kern = gemm_int_kernel(t.mr, t.nr, pw.bits)
        cases.append(Case(f"gemm_{dtype}", (lambda kern=kern, t=t, pw=pw: kern(
            a, pw.data, out_i, pw.kpairs, t.mc, t.nc, t.kc)), work, "OP",
            _params(shape, t, dtype)))
    return cases


def measure_tiles(shape: Sequence[int], tiles: Sequence[TileSpec], dtype: str = "fp32", *,
                  repeats: int = 21, warmups: int = 1,
                  min_sample_s: float = 0.0005) -> list["BenchRecord"]:
    """Time every tile on dense op shape (m, n, k), interleaved (see :func:`tile_cases`).

    Short samples and many of them: on a shared machine a sample that another process
    preempts is discarded by the best-sample estimator, and a short one is less often hit.
    Measured here under load: two sessions of 66 tiles rank them alike with Spearman 0.995 -
    0.998 by best sample at 21 x 0.5 ms (0.97 - 0.996 at 9 x 2 ms; by median, down to 0.03).
    """
    from .bench_harness import measure_interleaved

    return measure_interleaved(tile_cases(shape, tiles, dtype), threads=1, warmups=warmups,
                               repeats=repeats, min_sample_s=min_sample_s)


# ------------------------------------------------------------------------------ tuning
@dataclass(frozen=True)
class TuneResult:
    """Outcome of :func:`tune`.

    Attributes:
        shape: op shape (m, n, k).
        dtype, sparsity: the kernel configuration tuned.
        best_tile: the tuned tile (the back-end default for sparse layers, which are not tuned).
        records: one record per candidate measured (``params['tile']`` its label): this
            session's, or the cached ones of the shape; empty for sparse layers.
        measured: configurations timed by this call; 0 when answered from the cache.
    """

    shape: Shape
    dtype: str
    sparsity: SparsitySpec
    best_tile: TileSpec
    records: tuple["BenchRecord", ...]
    measured: int

    def best_time_s(self, tile: TileSpec) -> float | None:
        """Best-sample seconds of ``tile`` in this session, or None if it was not measured."""
        for rec in self.records:
            if dict(rec.params)["tile"] == tile.label:
                return rec.min_s
        return None


def _decision_record(shape: Shape, dtype: str, sparsity: SparsitySpec, best: "BenchRecord",
                     n_candidates: int, candidate_set: str) -> "BenchRecord":
    params = {"op_shape": "x".join(map(str, shape)), "dtype": dtype,
              "sparsity": sparsity.label, "tile": dict(best.params)["tile"],
              "candidates": n_candidates, "candidate_set": candidate_set}
    from .bench_harness import freeze_params

    return dataclasses.replace(best, name=DECISION, params=freeze_params(params),
                               created=time.time())


#: The tile a GEMM of these kernels runs with untuned, per ISA: 6x16 is the numba micro-kernel
#: measured on AVX2, 8x12 the BLIS-style NEON shape. The ``codesign`` back-end's YAML states the
#: same tiles as its ``default_tile`` (tests/test_tile_tuner.py checks that they agree).
DEFAULT_TILES = {"x86-64": TileSpec(mc=72, nc=1024, kc=512, mr=6, nr=16),
                 "aarch64": TileSpec(mc=64, nc=1020, kc=512, mr=8, nr=12)}


def default_tile() -> TileSpec:
    """This machine's entry of :data:`DEFAULT_TILES`."""
    import platform

    isa = "aarch64" if platform.machine().lower() in ("aarch64", "arm64") else "x86-64"
    return DEFAULT_TILES[isa]


def tune(shape: Sequence[int], dtype: str = "fp32", sparsity: SparsitySpec = DENSE, *,
         budget: int | None = None, quick: bool = False, cache: "ResultCache | None" = None,
         repeats: int = 21, min_sample_s: float = 0.0005, retune: bool = False) -> TuneResult:
    """Tune the tile of op shape (m, n, k) on this host, or answer from the cache.

    Args:
        shape: (m, n, k) in the op convention (see the module docstring).
        dtype: "fp32", "int8" or "int4" (int8 activations x int4 weights).
        sparsity: DENSE is tuned; other patterns run kernels with fixed blocking and get the
            back-end default tile without any measurement.
        budget: measure at most this many candidates (priority order of
            :func:`candidate_tiles`); None = all.
        quick: the quick candidate set (:func:`candidate_tiles` with ``quick``).
        cache: where records and the decision live (default :func:`tuner_cache`).
        repeats, min_sample_s: harness settings of the interleaved measurement.
        retune: measure even when a decision is cached.

    Returns:
        A :class:`TuneResult`; ``measured == 0`` when the decision came from the cache (then
        ``records`` are the cached candidate records of the shape). A full search (no
        ``quick``, no ``budget``) only accepts a cached decision of a full search; a quick or
        budgeted one accepts any.
    """
    shape = _shape(shape)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    default = default_tile()
    if sparsity.pattern is not SparsityPattern.DENSE:
        return TuneResult(shape, dtype, sparsity, default, (), 0)
    cache = _resolve_cache(cache)
    candidate_set = "quick" if quick else ("full" if budget is None else f"budget{budget}")
    if not retune:
        hit = _decision(cache, shape, dtype, sparsity, full_only=candidate_set == "full")
        if hit is not None:
            return TuneResult(shape, dtype, sparsity, parse_tile(dict(hit.params)["tile"]),
                              tuple(_cached_candidates(cache, shape, dtype)), 0)
    tiles = candidate_tiles(shape, dtype, quick=quick, default=default)
    if budget is not None:
        tiles = tiles[:budget]
    records = measure_tiles(shape, tiles, dtype, repeats=repeats, min_sample_s=min_sample_s)
    best = min(records, key=lambda r: r.min_s)
    _put(cache, records + [_decision_record(shape, dtype, sparsity, best, len(records),
                                            candidate_set)])
    return TuneResult(shape, dtype, sparsity, parse_tile(dict(best.params)["tile"]),
                      tuple(records), len(records))


def _cached_candidates(cache: "ResultCache", shape: Shape, dtype: str) -> list["BenchRecord"]:
    """The newest cached record of every tile measured on dense op shape (m, n, k)."""
    m, n, k = shape
    want = f"{m}x{k}x{n}"
    newest: dict[str, "BenchRecord"] = {}
    for r in cache.records():
        p = dict(r.params)
        if (r.name == f"gemm_{dtype}" and p.get("shape") == want
                and p.get("sparsity") == DENSE.label
                and (p["tile"] not in newest or newest[p["tile"]].created < r.created)):
            newest[p["tile"]] = r
    return list(newest.values())


def tuned_tile(shape: Sequence[int], dtype: str = "fp32", sparsity: SparsitySpec = DENSE, *,
               cache: "ResultCache | None" = None) -> TileSpec | None:
    """The cached tuned tile of op shape (m, n, k) (a full search's decision when there is one,
    else a quick one), or None if it was never tuned (or the layer is sparse). Never measures."""
    if sparsity.pattern is not SparsityPattern.DENSE:
        return None
    hit = _decision(_resolve_cache(cache), _shape(shape), dtype, sparsity, full_only=False)
    return parse_tile(dict(hit.params)["tile"]) if hit is not None else None
