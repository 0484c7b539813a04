"""Detect this machine's CPU and memory so it can be priced like any catalog device.

What /proc and /sys state (model, cores, caches, clock, RAM, ISA flags) is ``detected``; what
follows from the ISA by formula (FLOPs per cycle, registers) is ``estimated`` with the formula;
memory bandwidth is ``measured`` when a host characterisation (``codesign.kernels.host_probe``) has
been cached for this machine, else ``estimated``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from codesign.kernels.bench_harness import cache_sizes



# fp32 lanes of codesign.kernels.host_probe's peak loop (``fmuladd <8 x float>``)
PROBE_FP32_LANES = 8


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (p.strip() for p in line.split(":", 1))
                info.setdefault(key, value)
    except OSError:
        pass
    return info


def _ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _isa() -> str:
    import platform

    machine = platform.machine().lower()
    return "aarch64" if machine in ("aarch64", "arm64") else "x86-64"


def _num(value: float, source: str, ref: str) -> dict[str, Any]:
    return {"value": value, "source": source, "ref": ref}


def _core_number(key: str) -> dict[str, Any]:
    from codesign.cost_models.cores import load_core

    num = getattr(load_core("x86-64"), key)
    return _num(num.value, num.source, f"{num.ref} (configs/cores/x86-64.yaml)")


def host_fingerprint() -> str:
    info = _cpuinfo()
    flags = " ".join(sorted(info.get("flags", "").split()))
    return f"{info.get('model name', 'unknown')}|{os.cpu_count()}|{hash(flags) & 0xffffffff:08x}"


def detect_host_fields(template: dict[str, Any], *, path: str) -> dict[str, Any]:
    """Complete the host template with what this machine reports."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    caches = cache_sizes()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mhz = float(info.get("cpu MHz", "0") or 0) or 2000.0
    where = "/proc/cpuinfo"
    if "avx512f" in flags:
        simd, regs = 512, 32
    elif "avx2" in flags:
        simd, regs = 256, 16
    else:
        simd, regs = 128, 16
    lanes = simd // 32
    pipes = 2 if "fma" in flags else 1
    vnni = bool({"avx512_vnni", "avx_vnni"} & flags)
    # int8: VNNI does 4 MACs per 32-bit lane; AVX2's vpmaddwd does 2 (on int16-widened bytes).
    int8_macs_per_lane = 4 if vnni else 2
    hz = mhz * 1e6
    cluster = {
        "name": "cores", "core": info.get("model name", "unknown x86-64"), "count": cores,
        # a VM's 'cpu MHz' is often the nominal clock, not the one the cores run at (here
        # 2.6 GHz stated, 3.9-4.3 GHz measured): the reference says how to measure it
        "sustained_hz": _num(hz, "detected", f"{where} 'cpu MHz' (may be nominal; "
                                             "'codesign bench kernels' measures it)"),
        "burst_hz": _num(hz, "detected", f"{where} 'cpu MHz' (no boost clock exposed; "
                                         "'codesign bench kernels' measures it)"),
        "flops_per_cycle": {
            "fp32": _num(2 * pipes * lanes, "estimated",
                         f"{pipes} FMA pipes x {lanes} fp32 lanes ({simd}-bit) x 2"),
            "fp16": _num(2 * pipes * lanes, "estimated",
                         "no native fp16 arithmetic: converted to fp32 (F16C)"),
            "int8": _num(2 * pipes * lanes * int8_macs_per_lane, "estimated",
                         f"{'VNNI' if vnni else 'vpmaddwd'}: {int8_macs_per_lane} MACs per "
                         f"32-bit lane x {lanes} lanes x {pipes} pipes x 2"),
        },
        "int8_dot_product": vnni,
        "l1d_bytes": _num(caches.get("l1d", 32768), "detected", "/sys/devices/system/cpu/cpu0/cache"),
        "l2_bytes": _num(caches.get("l2", 524288), "detected", "/sys/devices/system/cpu/cpu0/cache"),
        "simd_bits": _num(simd, "detected", f"{where} flags"),
        "vector_registers": _num(regs, "detected", f"{where} flags (ymm0-15 / zmm0-31)"),
        # Not readable off /proc: the generic x86-64 core file's values (configs/cores/x86-64.yaml).
        **{k: _core_number(k) for k in ("fma_latency_cycles", "load_ports")},
    }
    ram = _ram_bytes() or 8 * 2**30
    bandwidth = _num(10e9 * cores, "estimated",
                     "10 GB/s per core, a conservative server-DRAM share; run "
                     "'codesign bench kernels' to measure it")
    profile = _measured_profile()
    if profile is not None:
        # A VM's /proc/cpuinfo shows the nominal clock; the clock the FMA units really run at
        # follows from the measured register-resident FMA peak and the ISA's FLOPs per cycle.
        # The probe's loop is 256-bit (8-lane) FMAs whatever the ISA: divide by what that loop
        # does per cycle, not by the detected ISA's (an AVX-512 core's 64 would halve the clock).
        probe_per_cycle = 2 * pipes * PROBE_FP32_LANES
        clock = profile.peak_fp32_gflops_1t * 1e9 / probe_per_cycle
        ref = (f"codesign.kernels.host_probe: measured fp32 peak "
               f"{profile.peak_fp32_gflops_1t:.1f} GFLOP/s / {probe_per_cycle:g} FLOP/cycle of "
               f"its 256-bit FMA loop (cpuinfo says {mhz:.0f} MHz)")
        cluster["sustained_hz"] = _num(clock, "measured", ref)
        cluster["burst_hz"] = _num(max(clock, hz), "measured", ref)
        if not vnni:
            # the probe's int8 loop is AVX2's vpmaddwd pair, the instruction such a core uses;
            # on a VNNI core the kernels use vpdpbusd, which the probe does not run: the ISA
            # formula above stays
            cluster["flops_per_cycle"]["int8"] = _num(
                profile.peak_int8_gops_1t * 1e9 / clock, "measured",
                f"codesign.kernels.host_probe: measured int8 peak "
                f"{profile.peak_int8_gops_1t:.1f} GOPS / clock")
        bandwidth = _num(profile.stream_triad_gbs_all * 1e9, "measured",
                         f"codesign.kernels.host_probe STREAM triad, {profile.threads_all} threads")
    data = dict(template)
    data.pop("detect", None)
    data.update({
        "display_name": f"This machine: {info.get('model name', 'unknown CPU')}, {cores} cores",
        "soc": info.get("model name", "unknown"),
        "default_threads": cores,
        "cpu": {"thread_order": ["cores"], "isa": _isa(),
                "l3_bytes": _num(caches.get("l3", 0), "detected", "/sys/devices/system/cpu/cpu0/cache"),
                "clusters": [cluster]},
        "memory": {
            "dram_bytes_per_s": bandwidth,
            "ram_bytes": _num(ram, "detected", "/proc/meminfo MemTotal"),
            "app_ram_fraction": _num(0.5, "estimated", "half of RAM for one process"),
        },
    })
    return data


def cache_read_curve(device) -> tuple[tuple[float, float], ...] | None:
    """This host's measured read bandwidth by working set, ((bytes, bytes/s), ...) sorted by
    bytes: one thread re-reading an array of that size (``codesign.kernels.host_probe.read_sweep``,
    stored by ``python -m codesign.kernels.host_probe``). None for any other device (a catalog
    device keeps the cache bandwidth its spec implies) or when this host's profile has no sweep."""
    if not getattr(device, "is_this_machine", False):
        return None
    profile = _measured_profile()
    if profile is None or not profile.read_sweep_gbs_1t:
        return None
    return tuple(sorted((float(n), float(g) * 1e9) for n, g in profile.read_sweep_gbs_1t))


def unmeasured_clock_note(device) -> str | None:
    """For this machine's spec priced without a probe profile: one line saying its clock is
    cpuinfo's, which a VM often reports below the real one (2.6 GHz here against a measured
    3.98: every host price 1.5-1.75x slow). None for any other device or a measured clock."""
    if not getattr(device, "is_this_machine", False):
        return None
    clock = device.cpu.clusters[0].sustained_hz
    if clock.source == "measured":
        return None
    return (f"note: this host's clock is cpuinfo's {clock.value / 1e9:.2f} GHz, not measured (a "
            f"VM often reports a nominal clock below the real one); 'codesign bench kernels' "
            f"(about a minute) measures it once and every later price uses it")


def _measured_profile():
    """The cached host characterisation (``codesign bench kernels`` writes it), if any."""
    try:
        from codesign.kernels.host_probe import cached_profile
    except ImportError:
        return None
    return cached_profile()  # stored per host fingerprint: another machine finds none
