"""Host characterisation: peak fp32 FLOP/s, peak int8 op/s and memory bandwidth.

* **Peak fp32** - a register-resident loop of independent ``fmuladd <8 x float>`` chains
  (12 chains: more than FMA latency x FMA pipes on any AVX2 core), no memory traffic: the
  ceiling of the FMA units. Also the *achievable* figure: our fp32 GEMM micro-kernel on
  L1-resident panels (:func:`codesign.kernels._simd_ir.make_f32_tile`).
* **Peak int8** - the same with the ``vpmaddwd`` + ``vpaddd`` step of the int8 GEMM, counted as
  2 ops per int16 x int16 multiply-accumulate (32 ops per instruction pair on AVX2).
* **Bandwidth** - STREAM copy (``a = b``, 2 x 4 bytes moved per element) and triad
  (``a = b + s*c``, 3 x 4 bytes) over arrays of ``4 x L3`` bytes each (at least 64 MiB), the
  STREAM convention of counting bytes the program reads and writes (no write-allocate).

Each is measured single-threaded and with all numba threads (``prange`` over per-thread
work). :func:`probe_host` returns a frozen :class:`HostProfile` and stores it as JSON next to
the benchmark cache (one file per host fingerprint); :func:`cached_profile` and
:func:`cached_bandwidth_bytes_per_s` read it back without measuring (the cost models use the
latter for this machine's DRAM bandwidth).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _numba_config as cfg
from ._simd_ir import _V8F32, _V8I32, _V16I16, _fmuladd, _pair_madd, make_f32_tile
from .bench_harness import (Case, HostInfo, cache_sizes, default_cache_dir, host_info,
                            measure_interleaved)

_CHAINS = 12
_F64 = ir.DoubleType()


def _chain_loop(builder, n, init, step, reduce_):
    accs = [cgutils.alloca_once_value(builder, init(j)) for j in range(_CHAINS)]
    with cgutils.for_range(builder, n):
        for acc in accs:
            builder.store(step(builder.load(acc)), acc)
    total = reduce_(builder.load(accs[0]))
    for acc in accs[1:]:
        total = builder.fadd(total, reduce_(builder.load(acc)))
    return total


@intrinsic
def _fma_chains(typingctx, n):
    """12 independent <8 x float> FMA chains, n steps each; returns a checksum (float64)."""
    sig = types.float64(n)

    def codegen(context, builder, signature, args):
        x = ir.Constant(_V8F32, [1.0000001] * 8)
        y = ir.Constant(_V8F32, [1e-7] * 8)

        def reduce_(v):
            return builder.fpext(builder.extract_element(v, ir.Constant(ir.IntType(32), 0)),
                                 _F64)

        return _chain_loop(builder, args[0],
                           lambda j: ir.Constant(_V8F32, [0.001 * (j + 1)] * 8),
                           lambda v: _fmuladd(builder, v, x, y), reduce_)

    return sig, codegen


@intrinsic
def _madd_chains(typingctx, n):
    """12 independent int16-pair madd + add chains (each step reads its own accumulator, so the
    multiply cannot be hoisted out of the loop); returns a checksum (float64)."""
    sig = types.float64(n)

    def codegen(context, builder, signature, args):
        w = ir.Constant(_V16I16, [1, -1] * 8)

        def step(v):
            return builder.add(v, _pair_madd(builder, builder.bitcast(v, _V16I16), w))

        def reduce_(v):
            return builder.sitofp(builder.extract_element(v, ir.Constant(ir.IntType(32), 0)),
                                  _F64)

        return _chain_loop(builder, args[0], lambda j: ir.Constant(_V8I32, [j + 1] * 8),
                           step, reduce_)

    return sig, codegen


# flops per step of the chain loops: 12 chains x 8 lanes x 2; int: 12 x 16 MACs x 2
FMA_FLOP_PER_STEP = _CHAINS * 8 * 2
MADD_OP_PER_STEP = _CHAINS * 16 * 2


def _serial_and_parallel(chains):
    """Kernels running the chain intrinsic ``chains``: ``serial(n)`` on the calling thread and
    ``parallel(n, nthreads)`` once per thread (prange), returning the summed checksums."""

    @cfg.kernel("float64(int64)")
    def serial(n):
        return chains(n)

    @cfg.kernel("float64(int64, int64)", parallel=True)
    def parallel(n, nthreads):
        out = np.zeros(nthreads)
        for t in prange(nthreads):
            out[t] = chains(n)
        return out.sum()

    return serial, parallel


_fma_serial, _fma_parallel = _serial_and_parallel(_fma_chains)
_madd_serial, _madd_parallel = _serial_and_parallel(_madd_chains)


_TILE_MR, _TILE_NR, _TILE_KC = 6, 16, 256
_f32_tile = make_f32_tile(_TILE_MR, _TILE_NR)


@cfg.kernel("void(int64, float32[::1], float32[::1], float32[::1])", loop_vectorize=False)
def _tile_loop(n, ap, bp, out):
    for _ in range(n):
        _f32_tile(_TILE_KC, ap, bp, out)


@cfg.kernel("void(float32[::1], float32[::1])", parallel=True)
def _copy_par(a, b):
    for i in prange(a.shape[0]):
        a[i] = b[i]


@cfg.kernel("void(float32[::1], float32[::1])")
def _copy_ser(a, b):
    for i in range(a.shape[0]):
        a[i] = b[i]


@cfg.kernel("void(float32[::1], float32[::1], float32[::1], float32)", parallel=True)
def _triad_par(a, b, c, s):
    for i in prange(a.shape[0]):
        a[i] = b[i] + s * c[i]


@cfg.kernel("void(float32[::1], float32[::1], float32[::1], float32)")
def _triad_ser(a, b, c, s):
    for i in range(a.shape[0]):
        a[i] = b[i] + s * c[i]


@cfg.kernel("uint32(uint32[::1])")
def _read_ser(a):
    # integer sum: associative, so LLVM vectorises it; every byte of ``a`` is loaded once
    total = np.uint32(0)
    for i in range(a.shape[0]):
        total += a[i]
    return total


@dataclass(frozen=True)
class HostProfile:
    """Measured capabilities of this host (rates of the best of several samples; G = 1e9).

    Attributes:
        host: the machine and software stack.
        threads_all: thread count of the ``*_all`` figures (numba's maximum).
        peak_fp32_gflops_1t / _all: register-resident FMA loop.
        gemm_tile_fp32_gflops_1t: fp32 6x16 GEMM micro-kernel on L1-resident panels.
        peak_int8_gops_1t / _all: register-resident vpmaddwd + vpaddd loop (2 ops per MAC).
        stream_copy_gbs_1t / _all, stream_triad_gbs_1t / _all: memory bandwidth, GB/s.
        stream_array_bytes: bytes of each STREAM array.
        llc_read_gbs_1t: one thread reading (summing) an array of ``llc_read_bytes`` over and
            over - half the last-level cache (L2 + L3), the case of a model's weights that
            "fit" the LLC and are re-read every inference: the bandwidth the cache level
            really delivers there (0.0 in profiles stored before it was measured).
        llc_read_bytes: the working set of that read.
        read_sweep_gbs_1t: the same read at working sets from 128 KiB to 128 MiB (L1 to DRAM):
            the bandwidth a kernel re-reading that many bytes gets, which the analytic model
            interpolates at a model's weights + KV bytes
            (``codesign.cost_models.host.cache_read_curve``).
    """

    host: HostInfo
    threads_all: int
    peak_fp32_gflops_1t: float
    peak_fp32_gflops_all: float
    gemm_tile_fp32_gflops_1t: float
    peak_int8_gops_1t: float
    peak_int8_gops_all: float
    stream_copy_gbs_1t: float
    stream_copy_gbs_all: float
    stream_triad_gbs_1t: float
    stream_triad_gbs_all: float
    stream_array_bytes: int
    llc_read_gbs_1t: float = 0.0
    llc_read_bytes: int = 0
    read_sweep_gbs_1t: tuple = ()  # ((working-set bytes, GB/s), ...) one thread re-reading

    def to_dict(self) -> dict:
        d = asdict(self)
        d["host"] = self.host.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HostProfile":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["host"] = HostInfo.from_dict(d["host"])
        kw["read_sweep_gbs_1t"] = tuple(tuple(p) for p in kw.get("read_sweep_gbs_1t", ()))
        return cls(**kw)


def l3_bytes() -> int:
    """Largest CPU cache size from sysfs (bytes); 32 MiB when it cannot be read."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            path = os.path.join(base, entry, "size")
            if os.path.exists(path):
                txt = open(path, encoding="utf-8").read().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:], 1)
                best = max(best, int(txt.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        best = 0
    return best or (32 << 20)


def _rate(cases, threads, repeats, clock=time.perf_counter):
    # capabilities are ceilings: rate of the best sample (the STREAM convention), which is
    # also what survives other processes briefly sharing the core on a loaded machine
    # many short samples give the best one a chance to land in an undisturbed time slice
    return [r.work / r.min_s for r in measure_interleaved(cases, threads=threads, warmups=1,
                                                          repeats=repeats, min_sample_s=0.005,
                                                          clock=clock)]


def peak_fp32_gflops(threads: int = 1, steps: int = 200_000, repeats: int = 5,
                     clock=time.perf_counter) -> float:
    """Register-resident FMA throughput, GFLOP/s, on ``threads`` threads.

    ``clock`` times the samples: ``time.thread_time`` (one thread only) leaves out the time the
    thread waits for a core on a shared machine; use it when kernels timed on that clock are
    divided by this peak.
    """
    if threads == 1:
        case = Case("peak_fp32", lambda: _fma_serial(steps), FMA_FLOP_PER_STEP * steps)
    else:
        case = Case("peak_fp32", lambda: _fma_parallel(steps, threads),
                    FMA_FLOP_PER_STEP * steps * threads)
    return _rate([case], threads, repeats, clock)[0] / 1e9


def peak_int8_gops(threads: int = 1, steps: int = 200_000, repeats: int = 5,
                   clock=time.perf_counter) -> float:
    """Register-resident vpmaddwd + vpaddd throughput, G int ops/s (2 per MAC); ``clock`` as
    :func:`peak_fp32_gflops`."""
    if threads == 1:
        case = Case("peak_int8", lambda: _madd_serial(steps), MADD_OP_PER_STEP * steps, "OP")
    else:
        case = Case("peak_int8", lambda: _madd_parallel(steps, threads),
                    MADD_OP_PER_STEP * steps * threads, "OP")
    return _rate([case], threads, repeats, clock)[0] / 1e9


def gemm_tile_gflops(repeats: int = 5, calls: int = 2000) -> float:
    """The 6x16 fp32 micro-kernel on L1-resident packed panels, GFLOP/s, one thread."""
    rng = np.random.default_rng(0)
    ap = rng.standard_normal(_TILE_KC * _TILE_MR, dtype=np.float32)
    bp = rng.standard_normal(_TILE_KC * _TILE_NR, dtype=np.float32)
    out = np.empty(_TILE_MR * _TILE_NR, np.float32)
    work = 2.0 * _TILE_MR * _TILE_NR * _TILE_KC * calls
    return _rate([Case("gemm_tile_f32", lambda: _tile_loop(calls, ap, bp, out), work)], 1,
                 repeats)[0] / 1e9


def stream_gbs(threads: int = 1, array_bytes: int | None = None,
               repeats: int = 5) -> tuple[float, float]:
    """STREAM (copy, triad) bandwidth in GB/s over arrays of ``array_bytes`` (default
    max(4 x L3, 64 MiB)) each."""
    nbytes = array_bytes or max(4 * l3_bytes(), 64 << 20)
    n = nbytes // 4
    a = np.zeros(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.full(n, 2.0, np.float32)
    s = np.float32(3.0)
    copy, triad = (_copy_ser, _triad_ser) if threads == 1 else (_copy_par, _triad_par)
    cases = [Case("stream_copy", lambda: copy(a, b), 8.0 * n, "B"),
             Case("stream_triad", lambda: triad(a, b, c, s), 12.0 * n, "B")]
    r = _rate(cases, threads, repeats)
    return r[0] / 1e9, r[1] / 1e9


def llc_bytes() -> int:
    """L2 + L3 of cpu0 from sysfs (the last-level capacity the cost model uses), bytes."""
    sizes = cache_sizes()
    return sizes.get("l2", 0) + sizes.get("l3", 0) or l3_bytes()


def read_gbs(array_bytes: int, repeats: int = 9) -> float:
    """One thread re-reading (summing) an array of ``array_bytes``, GB/s (bytes read)."""
    a = np.ones(max(array_bytes // 4, 1024), np.uint32)
    case = Case(f"read_{array_bytes}", lambda: _read_ser(a), 4.0 * a.shape[0], "B")
    # one thread: its CPU clock, as the 1-thread peaks (the wall clock counts waits for a core)
    return _rate([case], 1, repeats, clock=time.thread_time)[0] / 1e9


SWEEP_BYTES = (1 << 17, 1 << 19, 1 << 21, 1 << 23, 1 << 24, 3 << 23, 1 << 25, 3 << 24, 1 << 27)


def read_sweep(sizes=SWEEP_BYTES,
               repeats: int = 9) -> dict[int, float]:
    """Read bandwidth (GB/s, one thread) by working set: L1/L2/L3/DRAM in one table."""
    return {n: read_gbs(n, repeats) for n in sizes}


def profile_path(directory: str | os.PathLike | None = None,
                 host: HostInfo | None = None) -> Path:
    """``<dir>/host_profile_<fingerprint>.json`` (dir defaults to the benchmark cache).

    Keyed by the hardware fingerprint: a profile taken under ``OMP_WAIT_POLICY=PASSIVE`` must
    still price ``--device host`` in a shell without it (keyed with the environment, it was
    silently missed and the host priced at cpuinfo's nominal clock, 1.75x slow here)."""
    return _profile_file(directory, (host or host_info()).hardware_fingerprint())


def _profile_file(directory: str | os.PathLike | None, key: str) -> Path:
    base = Path(directory) if directory is not None else default_cache_dir()
    return base / f"host_profile_{key}.json"


def save_profile(profile: HostProfile, directory: str | os.PathLike | None = None) -> Path:
    """Write ``profile`` atomically (concurrent writers: the last complete file wins)."""
    path = profile_path(directory, profile.host)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(profile.to_dict(), f, indent=1)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache is meant to be read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def cached_profile(directory: str | os.PathLike | None = None) -> HostProfile | None:
    """The stored profile of this host (same hardware fingerprint), or None if never measured."""
    # profiles stored before were keyed with the environment variables too
    for path in (profile_path(directory), _profile_file(directory, host_info().fingerprint())):
        try:
            with open(path, encoding="utf-8") as f:
                return HostProfile.from_dict(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def cached_bandwidth_bytes_per_s(directory: str | os.PathLike | None = None) -> float | None:
    """All-thread STREAM triad bandwidth of this host in bytes/s from the stored profile."""
    prof = cached_profile(directory)
    return prof.stream_triad_gbs_all * 1e9 if prof else None


def probe_host(quick: bool = False, save: bool = True,
               directory: str | os.PathLike | None = None) -> HostProfile:
    """Measure everything (about 15 s, 6 s when ``quick``) and return a :class:`HostProfile`,
    stored for :func:`cached_profile` unless ``save`` is False."""
    nt = numba.config.NUMBA_NUM_THREADS
    reps = 9 if quick else 21
    array_bytes = (64 << 20) if quick else None
    c1, t1 = stream_gbs(1, array_bytes, reps)
    ca, ta = stream_gbs(nt, array_bytes, reps)
    profile = HostProfile(
        host=host_info(), threads_all=nt,
        # one thread on its own CPU clock: on a shared machine the wall clock of even the best
        # of many short samples includes time the thread waited for a core (measured here
        # under load 6 on 2 cores: 35-77 GFLOP/s on the wall clock, 128-130 on the thread's)
        peak_fp32_gflops_1t=peak_fp32_gflops(1, repeats=reps, clock=time.thread_time),
        peak_fp32_gflops_all=peak_fp32_gflops(nt, repeats=reps),
        gemm_tile_fp32_gflops_1t=gemm_tile_gflops(reps),
        peak_int8_gops_1t=peak_int8_gops(1, repeats=reps, clock=time.thread_time),
        peak_int8_gops_all=peak_int8_gops(nt, repeats=reps),
        stream_copy_gbs_1t=c1, stream_copy_gbs_all=ca,
        stream_triad_gbs_1t=t1, stream_triad_gbs_all=ta,
        stream_array_bytes=int(array_bytes or max(4 * l3_bytes(), 64 << 20)),
        llc_read_gbs_1t=read_gbs(llc_bytes() // 2, reps), llc_read_bytes=llc_bytes() // 2,
        read_sweep_gbs_1t=tuple((n, g) for n, g in read_sweep(repeats=reps).items()))
    if save:
        save_profile(profile, directory)
    return profile


if __name__ == "__main__":
    import sys

    if "--sweep" in sys.argv:
        # read bandwidth by working set, one thread; --store adds it to this host's stored
        # profile, leaving its other (earlier measured) figures as they are
        sweep = read_sweep(repeats=15)
        print(json.dumps({f"{n >> 10} KiB": round(g, 1) for n, g in sweep.items()}, indent=1))
        stored = cached_profile()
        if "--store" in sys.argv and stored is not None:
            from dataclasses import replace

            half = llc_bytes() // 2
            print(save_profile(replace(stored, read_sweep_gbs_1t=tuple(sweep.items()),
                                       llc_read_gbs_1t=read_gbs(half, 15),
                                       llc_read_bytes=half)))
    else:
        print(json.dumps(probe_host().to_dict(), indent=1))
