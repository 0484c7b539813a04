"""Host detection with a measured profile: the clock follows from the probe's own loop width."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from codesign.cost_models import host


def _fields(monkeypatch, flags: str, peak_fp32: float, peak_int8: float) -> dict:
    info = {"model name": "Test CPU", "cpu MHz": "2600.0", "flags": flags}
    monkeypatch.setattr(host, "_cpuinfo", lambda: info)
    monkeypatch.setattr(host, "cache_sizes", lambda: {"l1d": 49152, "l2": 1 << 20, "l3": 32 << 20})
    profile = SimpleNamespace(peak_fp32_gflops_1t=peak_fp32, peak_int8_gops_1t=peak_int8,
                              stream_triad_gbs_all=40.0, threads_all=2)
    monkeypatch.setattr(host, "_measured_profile", lambda: profile)
    return host.detect_host_fields({"name": "host", "backends": ["xnnpack"]}, path="host.yaml")


def test_avx512_host_clock_from_the_probes_256_bit_loop(monkeypatch):
    # The probe's FMA loop is 8-lane: 128 GFLOP/s on 2 pipes is 4.0 GHz, whatever the ISA
    # (dividing by AVX-512's 64 FLOP/cycle gave 2.0 GHz, half the clock).
    data = _fields(monkeypatch, "fma avx2 avx512f avx512_vnni", 128.0, 256.0)
    cluster = data["cpu"]["clusters"][0]
    assert cluster["sustained_hz"]["value"] == pytest.approx(4.0e9)
    assert cluster["flops_per_cycle"]["fp32"]["value"] == 64
    # VNNI: the probe's vpmaddwd loop is not what the kernels run; the ISA formula stays
    assert cluster["flops_per_cycle"]["int8"]["value"] == 2 * 2 * 16 * 4
    assert cluster["flops_per_cycle"]["int8"]["source"] == "estimated"


def test_avx2_host_int8_rate_measured(monkeypatch):
    data = _fields(monkeypatch, "fma avx2", 102.4, 204.8)
    cluster = data["cpu"]["clusters"][0]
    assert cluster["sustained_hz"]["value"] == pytest.approx(3.2e9)
    assert cluster["flops_per_cycle"]["int8"]["value"] == pytest.approx(64.0)
    assert cluster["flops_per_cycle"]["int8"]["source"] == "measured"
