"""Core files (configs/cores/*.yaml) and devices built on them (issue 19, item 1).

Every core file loads and is internally consistent; every catalog cluster names one; a device
file's numbers override the core file's and each number says which file it came from; a device
described from a spec sheet in ~10 lines prices a model; an unknown core or a malformed core file
is one SpecError line naming the file and the field (exit 2 from the CLI).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from codesign.cli import main
from codesign.cost_models.cores import CORES_DIR, CoreSpec, core_names, load_core
from codesign.cost_models.devices import (CONFIG_DIR, SpecError, catalog_names, load_device,
                                          source_counts)
from codesign.report_tables import estimated_summary, format_device

# The cores the catalog's devices use, the host's generic x86-64 default, and the older/other
# Arm cores issue 19 lists.
EXPECTED = {"cortex-a510", "cortex-a520", "cortex-a55", "cortex-a715", "cortex-a720",
            "cortex-a76", "cortex-a78", "cortex-a78ae", "cortex-x1", "cortex-x3", "cortex-x4",
            "apple-a17-pro-p", "apple-a17-pro-e", "kryo-gold", "kryo-gold-plus", "x86-64",
            "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a73", "cortex-a75", "cortex-a77",
            "cortex-x2", "cortex-a710"}
DOCUMENTED = [n for n in catalog_names() if n != "host"]

# The spec sheet of a phone not in the catalog (MediaTek Dimensity 9200 numbers) and no more:
# clusters by core name, count and clock; DRAM and RAM; back-ends. README "Describe a new device".
SPEC_SHEET = """\
name: myphone
soc: MediaTek Dimensity 9200
backends: [xnnpack, codesign]
cpu:
  clusters:
    - {name: prime, core: cortex-x3, count: 1, burst_hz: {value: 3.05e+9, source: published, ref: "MediaTek Dimensity 9200 page"}}
    - {name: big, core: cortex-a715, count: 3, burst_hz: {value: 2.85e+9, source: published, ref: "MediaTek Dimensity 9200 page"}}
    - {name: little, core: cortex-a510, count: 4, burst_hz: {value: 1.8e+9, source: published, ref: "MediaTek Dimensity 9200 page"}}
memory:
  dram_bytes_per_s: {value: 6.8e+10, source: estimated, ref: "LPDDR5X-8533 on a 64-bit bus: 8.533e9 x 8 B"}
  ram_bytes: {value: 1.2e+10, source: published, ref: "spec sheet: 12 GB"}
"""


def write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ the core files
def test_the_listed_cores_have_files():
    assert EXPECTED <= set(core_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_core_file_loads_and_is_consistent(name):
    core = load_core(name)
    assert isinstance(core, CoreSpec) and core.name == name
    fpc = {d: v.value for d, v in core.flops_per_cycle.items()}
    # fp16 runs at least at the fp32 rate (converted when not native); the int8 rate follows
    # from the instruction counted: SDOT 4 MACs per 32-bit lane, else a widening 2.
    assert fpc["fp16"] >= fpc["fp32"]
    assert fpc["int8"] == (4 if core.int8_dot_product else 2) * fpc["fp32"]
    assert not core.i8mm or core.int8_dot_product  # i8mm (Armv8.6) implies dotprod (v8.2)
    assert core.decode_width.value <= core.dispatch_width.value or not core.out_of_order
    assert core.simd_bits.value in (128, 256, 512) and core.fp_pipes.value >= 1
    for key in ("decode_width", "dispatch_width", "fp_pipes", "fma_latency_cycles", "load_ports",
                "l1d_bytes", "l2_bytes", "simd_bits", "vector_registers"):
        num = getattr(core, key)
        assert num.source in ("published", "reported", "estimated"), (name, key)
        assert num.ref.strip() and num.origin == str(CORES_DIR / f"{name}.yaml")


def test_the_wide_cores_have_twice_the_pipes_of_the_big_ones():
    """The X-series and Apple P-cores carry four 128-bit FP pipes, the A7x big cores two."""
    for wide, big in (("cortex-x3", "cortex-a715"), ("cortex-x4", "cortex-a720"),
                      ("cortex-x1", "cortex-a78"), ("apple-a17-pro-p", "apple-a17-pro-e")):
        assert load_core(wide).fp_pipes.value == 2 * load_core(big).fp_pipes.value
        assert (load_core(wide).flops_per_cycle["fp32"].value
                == 2 * load_core(big).flops_per_cycle["fp32"].value)


def test_in_order_little_cores():
    for name in ("cortex-a53", "cortex-a55", "cortex-a510", "cortex-a520"):
        assert load_core(name).out_of_order is False


# ------------------------------------------------------------------------------ devices on cores
@pytest.mark.parametrize("name", DOCUMENTED)
def test_catalog_clusters_name_a_core_file(name):
    spec = load_device(name)
    for c in spec.cpu.clusters:
        assert c.uarch is not None and c.uarch.name == c.core
        assert Path(c.uarch.path) == CORES_DIR / f"{c.core}.yaml"


def test_device_overrides_and_provenance():
    spec = load_device("pixel8")
    prime, big = spec.cpu.clusters[0], spec.cpu.clusters[1]
    x3 = str(CORES_DIR / "cortex-x3.yaml")
    assert prime.l1d_bytes.origin == x3 and prime.load_ports.origin == x3
    # measured on the Pixel 8: the device file's, overriding the core file's estimate
    assert prime.fma_latency_cycles.source == "measured"
    assert prime.fma_latency_cycles.origin == spec.path
    assert load_core("cortex-x3").fma_latency_cycles.source == "estimated"
    assert big.flops_per_cycle["fp32"].origin == spec.path
    assert big.flops_per_cycle["int8"].origin == str(CORES_DIR / "cortex-a715.yaml")
    # a SoC's configured cache: the Pi 5's published L2 overrides the A76's assumed default
    pi = load_device("rpi5").cpu.clusters[0]
    assert pi.l2_bytes.value == 524288 and pi.l2_bytes.source == "published"
    assert load_core("cortex-a76").l2_bytes.value == 262144


def test_device_digest_covers_its_core_files(tmp_path):
    core = yaml.safe_load((CORES_DIR / "cortex-x3.yaml").read_text())
    base = yaml.safe_load((CONFIG_DIR / "devices" / "pixel8.yaml").read_text())
    base["cpu"]["clusters"][0]["core"] = "x3.yaml"
    write(tmp_path, "x3.yaml", core)
    device = write(tmp_path, "dev.yaml", base)
    before = load_device(str(device))
    core["load_ports"]["value"] = 2
    write(tmp_path, "x3.yaml", core)
    after = load_device(str(device))
    assert after.cpu.clusters[0].load_ports.value == 2 != before.cpu.clusters[0].load_ports.value
    assert after.sha256 != before.sha256


def test_show_marks_core_file_numbers_and_counts_estimates(capsys):
    spec = load_device("pixel8")
    text = format_device(spec)
    assert "(from core file configs/cores/cortex-x3.yaml)" in text
    assert "core file configs/cores/cortex-x3.yaml: Arm" in text and "out-of-order" in text
    counts = source_counts(spec)
    total = sum(counts.values())
    assert f"estimated: {counts['estimated']} of {total} numbers" in text
    assert 0 < counts["estimated"] < total
    assert main(["devices", "show", "pixel8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["estimated"] == estimated_summary(spec)
    assert out["estimated"]["numbers"] == total and out["estimated"]["from_core_files"] > 10
    assert out["cpu"]["clusters"][0]["l1d_bytes"]["origin"].endswith("cores/cortex-x3.yaml")
    assert main(["devices"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("pixel8"))
    assert f"{counts['estimated']}/{total}" in row.split()
    assert main(["devices", "--json"]) == 0
    brief = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert brief["pixel8"]["estimated"]["estimated"] == counts["estimated"]


# ------------------------------------------------------------------------------ a new device
def test_spec_sheet_device_prices_a_model(tmp_path, capsys):
    path = write(tmp_path, "myphone.yaml", SPEC_SHEET)
    assert len(SPEC_SHEET.splitlines()) <= 11
    spec = load_device(str(path))
    assert [c.core for c in spec.cpu.clusters] == ["cortex-x3", "cortex-a715", "cortex-a510"]
    assert spec.default_threads == 4 and spec.display_name == "myphone"
    prime = spec.cpu.clusters[0]
    assert prime.sustained_hz.value == pytest.approx(3.05e9 * 0.85)
    assert prime.sustained_hz.source == "estimated"
    assert prime.flops_per_cycle["fp32"].value == 32
    assert main(["predict", "--device", str(path), "--model", "tests.models:small_convnet",
                 "--input-shape", "1,3,32,32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "myphone" and out["latency_s"] > 0
    # the same SoC family's prime core priced like the Pixel 8's X3, scaled by the clock
    assert [c["core"] for c in out["assumptions"]["cores"]][0] == "cortex-x3"


# ------------------------------------------------------------------------------ errors
def test_unknown_core_is_one_line_naming_file_and_field(tmp_path, capsys):
    path = write(tmp_path, "mine.yaml",
                 SPEC_SHEET.replace("core: cortex-a715", "core: cortex-a999"))
    with pytest.raises(SpecError) as err:
        load_device(str(path))
    msg = str(err.value)
    assert str(path) in msg and "'cpu.clusters[1].core'" in msg and "cortex-a999" in msg
    assert "cortex-a715" in msg  # lists the valid ones
    assert main(["devices", "show", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cortex-a999" in lines[0]
    assert main(["predict", "--device", str(path), "--model", "tests.models:small_convnet",
                 "--input-shape", "1,3,32,32"]) == 2


@pytest.mark.parametrize("mutate, field, fragment", [
    (lambda c: c["flops_per_cycle"].pop("int8"), "'flops_per_cycle'", "int8"),
    (lambda c: c["l1d_bytes"].update(value=-1), "'l1d_bytes.value'", "positive"),
    (lambda c: c["fma_latency_cycles"].update(source="guessed"), "'fma_latency_cycles.source'",
     "guessed"),
    (lambda c: c.update(out_of_order="yes"), "'out_of_order'", "true or false"),
    (lambda c: c.pop("decode_width"), "'decode_width'", "missing"),
    (lambda c: c.update(isa="riscv"), "'isa'", "riscv"),
])
def test_malformed_core_file_names_the_core_file(tmp_path, capsys, mutate, field, fragment):
    core = yaml.safe_load((CORES_DIR / "cortex-x3.yaml").read_text())
    mutate(core)
    core_file = write(tmp_path, "my-core.yaml", core)
    device = write(tmp_path, "mine.yaml",
                   SPEC_SHEET.replace("core: cortex-x3", "core: my-core.yaml"))
    with pytest.raises(SpecError) as err:
        load_device(str(device))
    msg = str(err.value)
    assert msg.startswith(f"{core_file}: field {field}") and fragment in msg, msg
    assert main(["devices", "show", str(device)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_core_of_another_isa(tmp_path):
    device = write(tmp_path, "mine.yaml", SPEC_SHEET.replace("core: cortex-x3", "core: x86-64"))
    with pytest.raises(SpecError, match=r"'cpu.clusters\[0\].core'.*x86-64"):
        load_device(str(device))


def test_core_name_cannot_walk_out_of_the_catalog(tmp_path):
    device = write(tmp_path, "mine.yaml",
                   SPEC_SHEET.replace("core: cortex-x3", "core: ../devices/pixel8"))
    with pytest.raises(SpecError, match="unknown core"):
        load_device(str(device))


def test_readme_example_is_the_tested_spec_sheet():
    """README's 'Describe a new device' example is the file the tests above price."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Describe a new device", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == yaml.safe_load(SPEC_SHEET)
    assert len(block.strip().splitlines()) <= 11
