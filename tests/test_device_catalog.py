"""The device catalog (configs/devices/*.yaml) and the loader's contract for malformed files.

Part one walks every catalog device: it loads, every number carries a valid source, and the
topology claims a reader relies on hold (fastest cluster first, default threads on the fast
cores, the two Galaxy S24 SoCs really differ). Part two writes broken specs to ``tmp_path`` and
checks that each gives a ``SpecError`` naming the file and the field.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from codesign.cost_models.devices import (CONFIG_DIR, DTYPES, SOURCE_KINDS, DeviceSpec, SpecError,
                                          Sourced, catalog_names, load_device)

CATALOG = catalog_names()
# Catalog devices described from documents; ``host`` is read off this machine at run time.
DOCUMENTED = [n for n in CATALOG if n != "host"]
EXPECTED = {"pixel8", "pixel7", "galaxy-s24-snapdragon", "galaxy-s24-exynos", "iphone15pro",
            "quest3", "rpi5", "jetson-orin-nano"}


def sourced_fields(obj, path: str = ""):
    """Yield (dotted path, Sourced) for every Sourced number reachable from ``obj``."""
    if isinstance(obj, Sourced):
        yield path, obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from sourced_fields(getattr(obj, f.name), f"{path}.{f.name}".lstrip("."))
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from sourced_fields(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from sourced_fields(value, f"{path}[{i}]")


def per_core_peak(cluster, dtype: str = "fp32", *, burst: bool = True) -> float:
    return cluster.peak_flops_per_s(dtype, burst=burst)


# ------------------------------------------------------------------------------ the catalog
def test_catalog_has_the_documented_devices():
    assert EXPECTED <= set(CATALOG)


@pytest.mark.parametrize("name", CATALOG)
def test_every_catalog_device_loads(name):
    spec = load_device(name)
    assert isinstance(spec, DeviceSpec)
    assert spec.name == name
    assert spec.sha256


@pytest.mark.parametrize("name", CATALOG)
def test_every_number_has_a_valid_source(name):
    spec = load_device(name)
    found = list(sourced_fields(spec))
    assert len(found) > 10
    for path, num in found:
        assert num.source in SOURCE_KINDS, f"{name}: {path} has source {num.source!r}"
        if num.source in ("published", "reported", "estimated"):
            assert num.ref.strip(), f"{name}: {path} is {num.source} without a ref"
        assert math.isfinite(num.value) and num.value >= 0, f"{name}: {path} = {num.value}"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_devices_detect_nothing(name):
    """'detected' means read off this machine; a phone's spec cannot have been."""
    for path, num in sourced_fields(load_device(name)):
        assert num.source != "detected", f"{name}: {path}"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_backends_and_dtypes(name):
    spec = load_device(name)
    assert spec.backends == ("xnnpack", "codesign")
    for c in spec.cpu.clusters:
        assert set(c.flops_per_cycle) == set(DTYPES)
        assert c.burst_hz.value >= c.sustained_hz.value
        assert c.fp32_lanes == 4 and c.fma_pipes >= 1
    assert 0 < spec.memory.app_ram_fraction.value <= 1


@pytest.mark.parametrize("name", CATALOG)
def test_default_threads_fit_the_cpu(name):
    spec = load_device(name)
    assert 1 <= spec.default_threads <= spec.cpu.n_cores


@pytest.mark.parametrize("name", DOCUMENTED)
def test_default_threads_stay_off_the_slowest_cluster(name):
    """With more than one cluster, the default never spills onto the last (slowest) one."""
    spec = load_device(name)
    if len(spec.cpu.clusters) == 1:
        return
    slowest = spec.cpu.thread_order[-1]
    placed = spec.cpu.cores_for_threads(spec.default_threads)
    assert slowest not in {c.name for c in placed}


@pytest.mark.parametrize("name", DOCUMENTED)
def test_thread_order_is_fastest_first(name):
    spec = load_device(name)
    by_name = {c.name: c for c in spec.cpu.clusters}
    peaks = [per_core_peak(by_name[n]) for n in spec.cpu.thread_order]
    assert peaks == sorted(peaks, reverse=True), f"{name}: {list(zip(spec.cpu.thread_order, peaks))}"


def test_pixel8_topology():
    spec = load_device("pixel8")
    layout = [(c.name, c.core, c.count) for c in spec.cpu.clusters]
    assert layout == [("prime", "cortex-x3", 1), ("big", "cortex-a715", 4),
                      ("little", "cortex-a510", 4)]
    assert spec.cpu.thread_order == ("prime", "big", "little")
    assert spec.cpu.n_cores == 9 and spec.default_threads == 4


def test_pixel8_prime_core_fp32_peak_is_sane():
    prime = load_device("pixel8").cpu.clusters[0]
    for burst in (False, True):
        assert 50e9 <= per_core_peak(prime, burst=burst) <= 150e9


def test_galaxy_s24_variants_are_different_socs():
    snap, exy = load_device("galaxy-s24-snapdragon"), load_device("galaxy-s24-exynos")
    assert snap.soc != exy.soc
    def layout(spec):
        return [(c.core, c.count) for c in spec.cpu.clusters]

    assert layout(snap) != layout(exy)
    assert snap.cpu.n_cores == 8 and exy.cpu.n_cores == 10
    assert [c.count for c in exy.cpu.clusters] == [1, 2, 3, 4]
    assert [c.count for c in snap.cpu.clusters] == [1, 3, 2, 2]


def test_apple_neural_engine_is_vendor_published():
    npu = load_device("iphone15pro").npu
    assert npu is not None
    assert npu.peak_ops_per_s["int8"].value == pytest.approx(35e12)
    assert npu.peak_ops_per_s["int8"].source == "published"


# ------------------------------------------------------------------------------ malformed specs
@pytest.fixture
def base() -> dict:
    """A valid spec as raw YAML data (the Pixel 8 catalog file)."""
    return yaml.safe_load((CONFIG_DIR / "devices" / "pixel8.yaml").read_text())


def write(tmp_path: Path, data, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(SpecError) as err:
        load_device(str(path))
    message = str(err.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_unmodified_base_loads_from_a_path(tmp_path, base):
    spec = load_device(str(write(tmp_path, base, "ok.yaml")))
    assert spec.cpu.n_cores == 9


def test_missing_field(tmp_path, base):
    del base["soc"]
    expect_error(write(tmp_path, base), "'soc'", "missing")


def test_missing_nested_field(tmp_path, base):
    del base["cpu"]["clusters"][1]["burst_hz"]
    expect_error(write(tmp_path, base), "'cpu.clusters[1].burst_hz'", "missing")


def test_a_per_core_field_left_out_comes_from_the_core_file(tmp_path, base):
    """The A715's L2 is not in pixel8.yaml: the core file's default (and its source) is used;
    a cluster that writes the field overrides it."""
    assert "l2_bytes" not in base["cpu"]["clusters"][1]
    spec = load_device(str(write(tmp_path, base, "ok.yaml")))
    l2 = spec.cpu.clusters[1].l2_bytes
    assert l2.value == 524288 and l2.origin == str(CONFIG_DIR / "cores" / "cortex-a715.yaml")
    base["cpu"]["clusters"][1]["l2_bytes"] = {"value": 262144, "source": "reported", "ref": "x"}
    path = write(tmp_path, base, "override.yaml")
    l2 = load_device(str(path)).cpu.clusters[1].l2_bytes
    assert (l2.value, l2.source, l2.origin) == (262144, "reported", str(path))


def test_wrong_type(tmp_path, base):
    base["default_threads"] = "four"
    expect_error(write(tmp_path, base), "'default_threads'", "integer")


def test_wrong_type_for_a_sourced_number(tmp_path, base):
    base["memory"]["ram_bytes"] = 8e9
    expect_error(write(tmp_path, base), "'memory.ram_bytes'")


def test_unknown_source_kind(tmp_path, base):
    base["memory"]["ram_bytes"]["source"] = "guessed"
    expect_error(write(tmp_path, base), "'memory.ram_bytes.source'", "guessed")


def test_estimated_without_ref(tmp_path, base):
    base["memory"]["app_ram_fraction"]["ref"] = "  "
    expect_error(write(tmp_path, base), "'memory.app_ram_fraction.ref'", "estimated")


def test_negative_number(tmp_path, base):
    base["cpu"]["clusters"][0]["l1d_bytes"] = {"value": -65536, "source": "published", "ref": "x"}
    expect_error(write(tmp_path, base), "'cpu.clusters[0].l1d_bytes.value'", "positive")


def test_unknown_backend(tmp_path, base):
    base["backends"] = ["codesign", "tflite"]
    msg = expect_error(write(tmp_path, base), "'backends'", "tflite")
    assert "xnnpack" in msg  # lists the valid ones


def test_thread_order_not_matching_clusters(tmp_path, base):
    base["cpu"]["thread_order"] = ["prime", "big"]
    expect_error(write(tmp_path, base), "'cpu.thread_order'")


def test_thread_order_naming_an_unknown_cluster(tmp_path, base):
    base["cpu"]["thread_order"] = ["prime", "big", "tiny"]
    expect_error(write(tmp_path, base), "'cpu.thread_order'", "tiny")


def test_burst_below_sustained(tmp_path, base):
    base["cpu"]["clusters"][0]["burst_hz"]["value"] = 1.0e9
    expect_error(write(tmp_path, base), "'cpu.clusters[0].burst_hz'", "sustained")


def test_invalid_yaml_syntax_names_the_line(tmp_path):
    path = write(tmp_path, "name: broken\ncpu: {clusters: [\n  - oops\nsoc: x\n")
    msg = expect_error(path, "not valid YAML")
    assert "line" in msg


def test_file_not_found(tmp_path):
    expect_error(tmp_path / "no-such-device.yaml", "no such device file")


def test_unknown_catalog_name_lists_valid_names():
    with pytest.raises(SpecError) as err:
        load_device("pixel99")
    message = str(err.value)
    assert "pixel99" in message
    for name in CATALOG:
        assert name in message


def test_app_ram_fraction_above_one(tmp_path, base):
    base["memory"]["app_ram_fraction"]["value"] = 1.5
    expect_error(write(tmp_path, base), "'memory.app_ram_fraction.value'", "<= 1")


def test_unknown_dtype_in_flops_per_cycle(tmp_path, base):
    flops = base["cpu"]["clusters"][1]["flops_per_cycle"]
    flops["bf16"] = copy.deepcopy(flops["fp16"])
    expect_error(write(tmp_path, base), "'cpu.clusters[1].flops_per_cycle'", "bf16")


def test_missing_dtype_in_flops_per_cycle_of_an_unlisted_core(tmp_path, base):
    """A core with no core file must state every per-core field; the message says which not."""
    cluster = base["cpu"]["clusters"][2]
    cluster["core"] = "my-core"
    msg = expect_error(write(tmp_path, base), "'cpu.clusters[2].core'", "my-core",
                       "flops_per_cycle", "l1d_bytes", "cortex-a510")
    assert "\n" not in msg


def test_default_threads_above_core_count(tmp_path, base):
    base["default_threads"] = 10
    expect_error(write(tmp_path, base), "'default_threads'", "9 cores")


def test_project_kernels_is_a_backend_trait():
    """Whether export writes a member's kernel contract (kernels.json) is the back-end's field,
    not its name: only the project's own kernels have one."""
    from codesign.cost_models.backends import load_backend, parse_backend
    from codesign.cost_models.devices import load_yaml

    assert load_backend("codesign").project_kernels is True
    assert load_backend("xnnpack").project_kernels is False
    raw, _ = load_yaml(CONFIG_DIR / "backends" / "codesign.yaml")
    with pytest.raises(SpecError, match="project_kernels"):
        parse_backend({**raw, "project_kernels": "yes"}, "mine.yaml")
