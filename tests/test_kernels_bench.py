"""Benchmark harness, result cache, kernel benchmarks and host probe (smoke sizes)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from codesign.kernels import bench, bench_harness, host_probe
from codesign.kernels.bench_harness import BenchRecord, Case, ResultCache
from codesign.kernels.specs import DENSE, TileSpec, block, two_four

ROOT = Path(__file__).resolve().parents[1]


def test_measure_produces_consistent_frozen_record():
    a = np.ones((32, 32), np.float32)
    rec = bench_harness.measure(lambda: a @ a, name="tiny", work=2 * 32 ** 3,
                                params={"shape": (32, 32, 32)}, repeats=5, min_sample_s=0.001)
    assert len(rec.times_s) == 5 and rec.loops >= 1 and rec.threads == 1
    assert rec.min_s <= rec.q1_s <= rec.median_s <= rec.q3_s <= rec.max_s
    lo, hi = rec.rate_iqr
    assert 0 < lo <= rec.rate <= hi
    assert dict(rec.params) == {"shape": "32x32x32"}
    assert BenchRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.work = 1.0  # type: ignore[misc]
    assert "tiny" in rec.summary()


def test_host_info_and_thread_pinning():
    host = bench_harness.host_info()
    assert host.fingerprint() == bench_harness.HostInfo.from_dict(host.to_dict()).fingerprint()
    assert len(host.fingerprint()) == 16 and host.numba == numba.__version__
    before = numba.get_num_threads()
    with bench_harness.pinned_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError):
        with bench_harness.pinned_threads(0):
            pass


def test_interleaved_measurement_orders_cases():
    a = np.ones(1000, np.float32)
    recs = bench_harness.measure_interleaved(
        [Case("sum", lambda: a.sum(), 1000.0, "OP"), Case("copy", lambda: a.copy(), 4000.0, "B")],
        repeats=3, min_sample_s=0.0005)
    assert [r.name for r in recs] == ["sum", "copy"] and recs[1].unit == "B"
    host = bench_harness.host_info()
    slow = BenchRecord("a", (), 1.0, "FLOP", 1, (2.0, 4.0, 9.0), 1, 0, host)
    fast = BenchRecord("b", (), 1.0, "FLOP", 1, (1.0, 2.0, 1.0), 1, 0, host)
    assert bench_harness.paired_speedup(slow, fast) == 2.0  # median of 2, 2, 9
    with pytest.raises(ValueError, match="interleaved"):
        bench_harness.paired_speedup(slow, BenchRecord("c", (), 1.0, "FLOP", 1, (1.0,), 1, 0,
                                                       host))


def test_interleaved_measurement_uses_the_given_clock():
    # a fake clock that advances 0.5 s per reading: every timed sample is one reading apart
    ticks = iter(range(10_000))
    recs = bench_harness.measure_interleaved(
        [Case("noop", lambda: None, 1.0)], repeats=4, min_sample_s=0.0,
        clock=lambda: 0.5 * next(ticks))
    assert recs[0].times_s == (0.5 / recs[0].loops,) * 4


_WRITER = """
import json, sys
from codesign.kernels.bench_harness import BenchRecord, HostInfo, ResultCache
host = HostInfo.from_dict(json.loads(sys.argv[2]))
cache = ResultCache(sys.argv[1], host)
for i in range(int(sys.argv[4])):
    cache.put(BenchRecord(f"w{sys.argv[3]}-{i}", (("i", i),), 1.0, "FLOP", 1, (1e-3,), 1, 0, host))
"""


def test_result_cache_roundtrip_and_concurrent_writers(tmp_path):
    host = bench_harness.host_info()
    cache = ResultCache(tmp_path, host)
    rec = BenchRecord("x", (("a", 1),), 10.0, "FLOP", 1, (1.0, 2.0), 1, 0, host)
    cache.put(rec)
    assert cache.get(rec.key) == rec and cache.path.name == f"{host.fingerprint()}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path),
                               json.dumps(host.to_dict()), str(w), "6"], env=env)
             for w in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    names = {r.name for r in cache.records()}
    assert names == {"x"} | {f"w{w}-{i}" for w in range(3) for i in range(6)}
    other = dataclasses.replace(host, cpu_model="elsewhere")
    with pytest.raises(ValueError, match="another host"):
        cache.put(dataclasses.replace(rec, host=other))


def test_measure_gemm_all_formats_and_cache(tmp_path):
    cache = ResultCache(tmp_path)
    tile = TileSpec(mc=12, nc=32, kc=16, mr=6, nr=16)
    shape = (40, 32, 24)
    first = bench.measure_gemm(shape, tile, "fp32", DENSE, repeats=2, cache=cache)
    again = bench.measure_gemm(shape, tile, "fp32", DENSE, repeats=2, cache=cache)
    assert again == first and first.rate > 0 and first.unit == "FLOP"
    for dtype, sp in (("int8", DENSE), ("int4", DENSE), ("fp32", two_four()),
                      ("fp32", block(4, 4, 0.75))):
        rec = bench.measure_gemm(shape, tile, dtype, sp, repeats=2, min_sample_s=0.0005)
        assert rec.rate > 0 and dict(rec.params)["dtype"] == dtype
    with pytest.raises(ValueError, match="dense only"):
        bench.gemm_case(shape, tile, "int8", two_four())


@pytest.mark.slow
def test_run_kernel_benchmarks_smoke():
    res = bench.run_kernel_benchmarks(quick=True, gemm_size=64, sparse_shapes=((40, 64, 24),),
                                      repeats=2, probe=False)
    for key in ("gemm_f32_vs_blas", "gemm_i8_vs_blas_f32", "spmm_2to4_vs_dense",
                "bsr75_vs_dense", "spmm_2to4_vs_blas", "bsr75_vs_blas", "csr75_vs_dense"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["host"]["fingerprint"] and res["gflops"]["gemm_f32_64"] > 0
    assert res["settings"]["quick"] is True and res["numba"]["cache"] is False
    assert all(isinstance(v, dict) for v in res["records"].values())
    json.dumps(res, default=str)


def test_host_probe_smoke(tmp_path):
    assert host_probe.l3_bytes() > 0
    assert host_probe.cached_profile(tmp_path) is None
    assert host_probe.cached_bandwidth_bytes_per_s(tmp_path) is None
    fake = host_probe.HostProfile(bench_harness.host_info(), 2, 90.0, 150.0, 85.0, 160.0, 300.0,
                                  12.0, 14.0, 15.0, 17.0, 1 << 26)
    host_probe.save_profile(fake, tmp_path)
    assert host_probe.cached_profile(tmp_path) == fake
    assert host_probe.cached_bandwidth_bytes_per_s(tmp_path) == pytest.approx(17e9)
    assert host_probe.peak_fp32_gflops(1, steps=5000, repeats=1) > 1.0
    assert host_probe.peak_int8_gops(1, steps=5000, repeats=1) > 1.0
    assert host_probe.gemm_tile_gflops(repeats=1, calls=50) > 1.0
    copy1, triad1 = host_probe.stream_gbs(1, array_bytes=1 << 20, repeats=1)
    copy2, triad2 = host_probe.stream_gbs(2, array_bytes=1 << 20, repeats=1)
    assert min(copy1, triad1, copy2, triad2) > 0.1


def test_host_profile_is_found_whatever_the_openmp_environment(tmp_path, monkeypatch):
    """A profile probed under OMP_WAIT_POLICY=PASSIVE was keyed with that variable, so a shell
    without it priced ``--device host`` at cpuinfo's nominal clock (1.75x slow) (bug fixed)."""
    with_env = dataclasses.replace(bench_harness.host_info(),
                                   env=(("OMP_WAIT_POLICY", "PASSIVE"),))
    without_env = dataclasses.replace(with_env, env=())
    fake = host_probe.HostProfile(with_env, 2, 90.0, 150.0, 85.0, 160.0, 300.0,
                                  12.0, 14.0, 15.0, 17.0, 1 << 26)
    host_probe.save_profile(fake, tmp_path)
    monkeypatch.setattr(bench_harness, "_HOST", without_env)
    assert host_probe.cached_profile(tmp_path) == fake
    assert with_env.fingerprint() != without_env.fingerprint()
    assert with_env.hardware_fingerprint() == without_env.hardware_fingerprint()
