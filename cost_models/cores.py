"""Core files: one CPU microarchitecture each (``configs/cores/NAME.yaml`` or a user's file).

A core file states what every chip carrying that core shares: issue width, in-order or not,
SIMD width and FP/ASIMD pipes, multiply-add throughput per dtype, FMA latency, load ports, and
the L1D/L2 sizes (the value assumed where Arm leaves the size to the SoC, with the range in the
``ref``). A device file's cluster names its core and states only what the device decides or
what was measured on it (clocks, a configured cache size, a benchmark); every per-core field it
leaves out comes from the core file. Each number keeps the file it came from
(``Sourced.origin``), so ``codesign devices show`` can say which numbers a device file took
from a core file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from codesign.cost_models.devices import (CONFIG_DIR, DTYPES, ISAS, ConfigReader, Sourced,
                                          SpecError, load_yaml)

# The per-core numbers of a device cluster that a core file supplies by default; a cluster
# that writes one itself overrides the core file's value.
CLUSTER_NUMBERS = ("l1d_bytes", "l2_bytes", "simd_bits", "vector_registers",
                   "fma_latency_cycles", "load_ports")

CORES_DIR = CONFIG_DIR / "cores"


@dataclass(frozen=True)
class CoreSpec:
    """One microarchitecture as its core file states it.

    ``fp_pipes``: FP/ASIMD pipes that issue a vector FMA each cycle (for a core sharing its
    vector unit, the share of one core). ``flops_per_cycle`` counts a multiply-add as 2; int8 is
    the best int8 instruction counted (SDOT/UDOT, else widening SMLAL). ``i8mm``: the core has
    SMMLA/UMMLA (FEAT_I8MM); not counted in int8 unless the file says so in its ref.
    """

    name: str
    vendor: str
    isa: str
    arch: str
    out_of_order: bool
    decode_width: Sourced
    dispatch_width: Sourced
    fp_pipes: Sourced
    flops_per_cycle: Mapping[str, Sourced]
    int8_dot_product: bool
    i8mm: bool
    l1d_bytes: Sourced
    l2_bytes: Sourced
    simd_bits: Sourced
    vector_registers: Sourced
    fma_latency_cycles: Sourced
    load_ports: Sourced
    l2_shared: bool = False
    notes: str = ""
    path: str = ""
    sha256: str = field(default="", compare=False)


def core_names() -> list[str]:
    return sorted(p.stem for p in CORES_DIR.glob("*.yaml"))


def parse_core(data: Any, path: str) -> CoreSpec:
    """A CoreSpec from parsed YAML; malformed data raises SpecError naming ``path`` and field."""
    r = ConfigReader(path, data)
    isa = r.str("isa")
    if isa not in ISAS:
        raise r.error(f"unknown ISA {isa!r}; valid: {', '.join(ISAS)}", "isa")
    fpc = r.sub("flops_per_cycle")
    missing = [d for d in DTYPES if d not in fpc.data]
    if missing:
        raise fpc.error(f"needs every dtype of {DTYPES}; missing {missing}")
    unknown = sorted(set(fpc.data) - set(DTYPES), key=repr)
    if unknown:
        raise fpc.error(f"unknown dtype(s) {unknown}; valid: {', '.join(DTYPES)}")
    dot = r.bool("int8_dot_product")
    return CoreSpec(
        name=r.str("name"), vendor=r.str("vendor"), isa=isa, arch=r.str("arch"),
        out_of_order=r.bool("out_of_order"),
        decode_width=r.sourced("decode_width"), dispatch_width=r.sourced("dispatch_width"),
        fp_pipes=r.sourced("fp_pipes"),
        flops_per_cycle={d: fpc.sourced(d) for d in DTYPES},
        int8_dot_product=dot, i8mm=r.bool("i8mm"),
        **{k: r.sourced(k) for k in CLUSTER_NUMBERS},
        l2_shared=r.bool("l2_shared", default=False),
        notes=str(r.data.get("notes", "") or ""), path=path,
    )


# Parsed core files by (path, sha256 of the bytes): every device load reads its core files
# again (cheap) but parses each version once; keyed on content, not mtime, so a file rewritten
# within the clock's resolution is never served stale.
_PARSED: dict[tuple[str, str], CoreSpec] = {}


def _load_core_file(path: Path) -> CoreSpec:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    key = (str(path), hashlib.sha256(raw).hexdigest())
    if key not in _PARSED:
        data, digest = load_yaml(path)
        spec = parse_core(data, str(path))
        object.__setattr__(spec, "sha256", digest)
        if len(_PARSED) > 256:
            _PARSED.clear()
        _PARSED[key] = spec
    return _PARSED[key]


def core_path(name: str, *, relative_to: Path | None = None) -> Path | None:
    """The file a cluster's ``core:`` names: a catalog core, or a YAML path (relative to the
    device file's folder). None when there is no such file."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
    else:
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        path = CORES_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def load_core(name: str, *, relative_to: Path | None = None) -> CoreSpec:
    """A catalog core by name or a user's core file by path; SpecError if there is none."""
    path = core_path(name, relative_to=relative_to)
    if path is None:
        raise SpecError(f"unknown core {name!r}; valid: {', '.join(core_names())} "
                        "(or a path to a core YAML file)")
    return _load_core_file(path)


def core_digest(cores: list[CoreSpec]) -> str:
    """The sha256 a device's digest folds in for the core files it used (sorted by path)."""
    return hashlib.sha256("".join(sorted(f"{c.path}:{c.sha256}\n" for c in cores)).encode()
                          ).hexdigest()


def cluster_core(r: ConfigReader, *, device_dir: Path | None) -> CoreSpec | None:
    """The core file a device cluster draws on, or None for a cluster that states every
    per-core field itself (the host's detected cluster, a full file of an unlisted core).

    A cluster that leaves a per-core field out must name a core file: else the message lists
    the catalog's cores and what the cluster left out.
    """
    name = r.str("core")
    fpc = r.data.get("flops_per_cycle")
    complete = (all(k in r.data for k in (*CLUSTER_NUMBERS, "int8_dot_product"))
                and isinstance(fpc, Mapping) and all(d in fpc for d in DTYPES))
    if core_path(name, relative_to=device_dir) is None:
        if complete:
            return None
        left = [k for k in (*CLUSTER_NUMBERS, "int8_dot_product") if k not in r.data]
        if not (isinstance(fpc, Mapping) and all(d in fpc for d in DTYPES)):
            left.insert(0, "flops_per_cycle")
        raise r.error(f"unknown core {name!r} and the cluster does not give {', '.join(left)}; "
                      f"valid cores: {', '.join(core_names())} (or a path to a core YAML "
                      "file)", "core")
    return load_core(name, relative_to=device_dir)
