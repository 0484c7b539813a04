"""Device specs: typed, frozen, every number with its source.

A device YAML (``configs/devices/NAME.yaml`` or a user's own file) is parsed here into a
``DeviceSpec``. Numbers are written either as ``{value: X, source: KIND, ref: "..."}`` or, for
the few that need no citation (counts that follow from a name), as plain values. ``KIND`` is one
of ``SOURCE_KINDS``: ``published`` (vendor; ``ref`` says where), ``reported`` (reviews, leaks,
third-party databases; ``ref`` says which), ``estimated`` (``ref`` gives the formula),
``detected`` (read off this machine at run time) or ``measured`` (a benchmark on the device).

Malformed files raise ``SpecError`` naming the file and the field.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

import yaml

SOURCE_KINDS = ("published", "reported", "estimated", "detected", "measured")
DTYPES = ("fp32", "fp16", "int8")
ISAS = ("aarch64", "x86-64")
# configs/ is the package data of codesign.configs (pyproject.toml): in a checkout or an editable
# install the repository's configs/ folder, else the installed copy.
CONFIG_DIR = Path(str(files("codesign.configs")))


class SpecError(ValueError):
    """A device or back-end file that cannot be used; the message names file and field."""


@dataclass(frozen=True)
class Sourced:
    """A number and where it comes from."""

    value: float
    source: str
    ref: str = ""
    # The file the number was written in: the device file, or the core file a cluster took it
    # from (cost_models/cores.py). Provenance only: two equal numbers from different files are
    # the same number.
    origin: str = field(default="", compare=False, repr=False)

    def __float__(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class CoreCluster:
    """Identical cores sharing a clock domain (one tier of a big.LITTLE CPU).

    ``flops_per_cycle`` is per core: FMA lanes x 2 for float dtypes; for int8 the multiply-add
    operations per cycle the core's best int8 instruction reaches (SDOT/UDOT, i8mm, VNNI or
    AVX2 ``vpmaddwd``).
    """

    name: str
    core: str
    count: int
    sustained_hz: Sourced
    burst_hz: Sourced
    flops_per_cycle: Mapping[str, Sourced]
    int8_dot_product: bool
    l1d_bytes: Sourced
    l2_bytes: Sourced
    simd_bits: Sourced
    vector_registers: Sourced
    fma_latency_cycles: Sourced
    load_ports: Sourced
    l2_shared: bool = False
    # The core file's record (issue width, pipes, i8mm, ...); None for a cluster that states
    # every per-core field itself and names no core file. Not part of the spec's value.
    uarch: Any = field(default=None, compare=False)

    @property
    def fp32_lanes(self) -> int:
        return int(self.simd_bits.value) // 32

    @property
    def fma_pipes(self) -> float:
        """FMA instructions issued per cycle, derived from the fp32 peak and the vector width."""
        return self.flops_per_cycle["fp32"].value / (2 * self.fp32_lanes)

    def peak_flops_per_s(self, dtype: str, *, burst: bool = False) -> float:
        hz = (self.burst_hz if burst else self.sustained_hz).value
        return self.flops_per_cycle[dtype].value * hz


@dataclass(frozen=True)
class CpuSpec:
    clusters: tuple[CoreCluster, ...]
    l3_bytes: Sourced
    thread_order: tuple[str, ...]  # clusters filled by threads, in order (fastest first)
    isa: str = "aarch64"  # decides the kernels a back-end picks and how operands are loaded

    @property
    def n_cores(self) -> int:
        return sum(c.count for c in self.clusters)

    def cores_for_threads(self, threads: int) -> tuple[CoreCluster, ...]:
        """The cluster of each thread, filling clusters in ``thread_order``.

        Runtimes pin nothing, but Android's and Linux's schedulers place the busy threads of a
        foreground app on the fastest free cores, which is what this order models.
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if threads > self.n_cores:
            raise ValueError(f"threads={threads} exceeds the {self.n_cores} cores of this CPU")
        by_name = {c.name: c for c in self.clusters}
        placed: list[CoreCluster] = []
        for name in self.thread_order:
            cluster = by_name[name]
            placed.extend([cluster] * min(cluster.count, threads - len(placed)))
            if len(placed) == threads:
                break
        return tuple(placed)


@dataclass(frozen=True)
class AcceleratorSpec:
    """A GPU or NPU: enough to state what it is; the CPU back-ends do not price it."""

    name: str
    peak_ops_per_s: Mapping[str, Sourced]
    description: str = ""


@dataclass(frozen=True)
class MemorySpec:
    dram_bytes_per_s: Sourced
    ram_bytes: Sourced
    app_ram_fraction: Sourced

    @property
    def app_ram_bytes(self) -> float:
        return self.ram_bytes.value * self.app_ram_fraction.value


@dataclass(frozen=True)
class DeviceSpec:
    """A device as its YAML file states it.

    ``is_this_machine``: the spec describes the machine the code runs on (its file says
    ``detect: host``, so the fields are read off /proc and /sys). Only there can a program be
    timed, a kernel tile tuned by measurement or a cache read curve measured, so every such step
    asks this field, never the device's name: a user's YAML with ``detect: host`` is this machine
    too.
    """

    name: str
    display_name: str
    soc: str
    cpu: CpuSpec
    memory: MemorySpec
    backends: tuple[str, ...]
    default_threads: int
    gpu: AcceleratorSpec | None = None
    npu: AcceleratorSpec | None = None
    notes: str = ""
    path: str = ""
    sha256: str = field(default="", compare=False)
    is_this_machine: bool = False

    @property
    def tunes_tiles(self) -> bool:
        """Free GEMM tiles are resolved by the tile tuner's measurements (this machine only)."""
        return self.is_this_machine


# --------------------------------------------------------------------------- parsing helpers
def _field(where: str, key: Any) -> str:
    """The dotted path of ``key`` under ``where`` (a YAML key need not be text)."""
    return ".".join(str(p) for p in (where, key) if p not in (None, ""))


class ConfigReader:
    """Reads fields of one YAML mapping, raising SpecError with file and dotted field path."""

    def __init__(self, path: str, data: Any, where: str = "") -> None:
        self.path, self.where = path, where
        if not isinstance(data, Mapping):
            raise self.error(f"expected a mapping, got {type(data).__name__}")
        self.data = data

    def error(self, message: str, key: str | None = None) -> SpecError:
        at = _field(self.where, key) or "<top>"
        return SpecError(f"{self.path}: field '{at}': {message}")

    def _required(self, key: str) -> Any:
        if key not in self.data:
            raise self.error("missing", key)
        return self.data[key]

    def sub(self, key: str, *, optional: bool = False) -> "ConfigReader | None":
        if key not in self.data or self.data[key] is None:
            if optional:
                return None
            raise self.error("missing", key)
        return ConfigReader(self.path, self.data[key], _field(self.where, key))

    def str(self, key: str, default: str | None = None) -> str:
        if default is not None and key not in self.data:
            return default
        value = self._required(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"expected a non-empty string, got {value!r}", key)
        return value

    def int(self, key: str, *, minimum: int = 1) -> int:
        value = self._required(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"expected an integer >= {minimum}, got {value!r}", key)
        return value

    def bool(self, key: str, default: bool | None = None) -> bool:
        if default is not None and key not in self.data:
            return default
        value = self._required(key)
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {value!r}", key)
        return value

    def list(self, key: str) -> list:
        value = self.data.get(key)
        if not isinstance(value, list) or not value:
            raise self.error("expected a non-empty list", key)
        return value

    def sourced(self, key: str, *, positive: bool = True, maximum: float | None = None) -> Sourced:
        raw = self._required(key)
        if not isinstance(raw, Mapping):
            raise self.error("expected {value: NUMBER, source: KIND, ref: TEXT}", key)
        sub = ConfigReader(self.path, raw, _field(self.where, key))
        value = raw.get("value")
        if isinstance(value, str):
            # YAML 1.1 reads "6.8e10" (no sign in the exponent) as text; accept it as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise sub.error(f"expected a number, got {value!r}", "value")
        if positive and value <= 0:
            raise sub.error(f"must be positive, got {value!r}", "value")
        if maximum is not None and value > maximum:
            raise sub.error(f"must be <= {maximum}, got {value!r}", "value")
        source = raw.get("source")
        if source not in SOURCE_KINDS:
            raise sub.error(f"must be one of {', '.join(SOURCE_KINDS)}, got {source!r}", "source")
        ref = raw.get("ref", "")
        if not isinstance(ref, str):
            raise sub.error(f"expected text, got {ref!r}", "ref")
        if source in ("published", "reported", "estimated") and not ref.strip():
            raise sub.error(f"a {source} number must say where or how in 'ref'", "ref")
        return Sourced(float(value), source, ref, origin=self.path)


def _parse_cluster(r: ConfigReader, isa: str, device_dir: Path | None) -> CoreCluster:
    """One cluster: what the device file writes, the rest from the core file it names."""
    from codesign.cost_models.cores import CLUSTER_NUMBERS, cluster_core

    core = cluster_core(r, device_dir=device_dir)
    if core is not None and core.isa != isa:
        raise r.error(f"core {core.name!r} ({core.path}) is {core.isa}, the CPU is {isa}", "core")
    fpc = r.sub("flops_per_cycle", optional=core is not None)
    given = fpc.data if fpc is not None else {}
    unknown = sorted(set(given) - set(DTYPES), key=repr)
    if unknown:
        raise fpc.error(f"unknown dtype(s) {unknown}; valid: {', '.join(DTYPES)}")
    flops = {d: fpc.sourced(d) if d in given else core.flops_per_cycle[d] for d in DTYPES}
    numbers = {k: r.sourced(k) if k in r.data else getattr(core, k) for k in CLUSTER_NUMBERS}
    flags = {"int8_dot_product": r.bool("int8_dot_product",
                                        default=core.int8_dot_product if core else None),
             "l2_shared": r.bool("l2_shared", default=core.l2_shared if core else False)}
    burst = r.sourced("burst_hz")
    sustained = (r.sourced("sustained_hz") if "sustained_hz" in r.data else
                 _default(burst.value * SUSTAINED_SHARE, f"burst {burst.value / 1e9:g} GHz x "
                          f"{SUSTAINED_SHARE}, the share the catalog assumes a phone holds under "
                          "multi-second load", r.path))
    if burst.value < sustained.value:
        raise r.error("burst_hz must be >= sustained_hz", "burst_hz")
    return CoreCluster(
        name=r.str("name"), core=r.str("core"), count=r.int("count"),
        sustained_hz=sustained, burst_hz=burst, flops_per_cycle=flops,
        **numbers, **flags, uarch=core,
    )


def _parse_cpu(r: ConfigReader, device_dir: Path | None) -> CpuSpec:
    isa = r.str("isa", default="aarch64")
    if isa not in ISAS:
        raise r.error(f"unknown ISA {isa!r}; valid: {', '.join(ISAS)}", "isa")
    clusters = []
    for i, raw in enumerate(r.list("clusters")):
        clusters.append(_parse_cluster(ConfigReader(r.path, raw, f"{r.where}.clusters[{i}]"),
                                       isa, device_dir))
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise r.error(f"cluster names must be unique, got {names}", "clusters")
    # Default: the clusters as listed, which a spec sheet writes fastest first.
    order = r.list("thread_order") if "thread_order" in r.data else list(names)
    if not all(isinstance(o, str) for o in order) or sorted(order) != sorted(names):
        raise r.error(f"must list every cluster once ({', '.join(names)}), got {order}",
                      "thread_order")
    l3 = (r.sourced("l3_bytes", positive=False) if "l3_bytes" in r.data else
          _default(0, "no L3 size in the device file: none assumed (the conservative choice)",
                   r.path))
    return CpuSpec(tuple(clusters), l3, tuple(order), isa)


# What a device file may leave out (a spec sheet does not say): the catalog's own rules.
SUSTAINED_SHARE = 0.85
APP_RAM_SHARE = 0.25


def _default(value: float, why: str, path: str) -> Sourced:
    return Sourced(float(value), "estimated", why, origin=path)


def _default_threads(cpu: CpuSpec) -> int:
    """Every core but the slowest cluster's (they stay free for the UI and the OS), as the
    catalog's phones choose; all cores when there is one cluster."""
    if len(cpu.clusters) == 1:
        return cpu.n_cores
    slowest = cpu.thread_order[-1]
    return sum(c.count for c in cpu.clusters if c.name != slowest)


def _parse_accelerator(r: ConfigReader | None) -> AcceleratorSpec | None:
    if r is None:
        return None
    peaks = r.sub("peak_ops_per_s")
    return AcceleratorSpec(
        name=r.str("name"),
        peak_ops_per_s={k: peaks.sourced(k) for k in peaks.data},
        description=r.data.get("description", "") or "",
    )


def parse_device(data: Any, path: str, *, device_dir: Path | None = None) -> DeviceSpec:
    """Build a DeviceSpec from parsed YAML; ``path`` names the file in messages and provenance,
    ``device_dir`` is where a cluster's ``core: my-core.yaml`` path is looked up."""
    from codesign.cost_models.backends import backend_names  # local: backends import this module

    r = ConfigReader(path, data)
    mem = r.sub("memory")
    memory = MemorySpec(mem.sourced("dram_bytes_per_s"), mem.sourced("ram_bytes"),
                        mem.sourced("app_ram_fraction", maximum=1.0)
                        if "app_ram_fraction" in mem.data else
                        _default(APP_RAM_SHARE, "not in the device file: the Android phones' "
                                 "share (~2 of 8 GB for a foreground app)", path))
    backends = tuple(r.list("backends"))
    known = backend_names()
    for b in backends:
        if b not in known:
            raise r.error(f"unknown back-end {b!r}; valid: {', '.join(known)}", "backends")
    cpu = _parse_cpu(r.sub("cpu"), device_dir)
    threads = (r.int("default_threads") if "default_threads" in r.data
               else _default_threads(cpu))
    if threads > cpu.n_cores:
        raise r.error(f"{threads} exceeds the {cpu.n_cores} cores", "default_threads")
    return DeviceSpec(
        name=r.str("name"), display_name=r.str("display_name", default=r.str("name")),
        soc=r.str("soc"),
        cpu=cpu, memory=memory, backends=backends, default_threads=threads,
        gpu=_parse_accelerator(r.sub("gpu", optional=True)),
        npu=_parse_accelerator(r.sub("npu", optional=True)),
        notes=str(r.data.get("notes", "") or ""), path=path,
    )


def load_yaml(path: Path) -> tuple[Any, str]:
    """Read a YAML file; returns (data, sha256 of the bytes). Errors name the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return data, hashlib.sha256(raw).hexdigest()


def source_counts(spec: DeviceSpec) -> dict[str, int]:
    """How many of the spec's numbers are of each source kind (``estimated`` is the share a
    reader should distrust), over the numbers pricing reads, GPU/NPU peaks included."""
    counts = dict.fromkeys(SOURCE_KINDS, 0)

    def walk(obj: Any) -> None:
        if isinstance(obj, Sourced):
            counts[obj.source] += 1
        elif hasattr(obj, "__dataclass_fields__"):
            for f in obj.__dataclass_fields__.values():
                if f.compare:
                    walk(getattr(obj, f.name))
        elif isinstance(obj, Mapping):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(spec)
    return counts


def catalog_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "devices").glob("*.yaml"))


def load_device(name_or_path: str) -> DeviceSpec:
    """A catalog device by name, or a user's YAML file by path.

    ``host`` is this machine: its catalog file declares what to detect and the rest is read off
    /proc and /sys at run time (see ``codesign.cost_models.host``).
    """
    candidate = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise SpecError(f"{name_or_path}: no such device file")
        path = candidate
    else:
        path = CONFIG_DIR / "devices" / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SpecError(f"unknown device {name_or_path!r}; valid: "
                            f"{', '.join(catalog_names())} (or a path to a device YAML file)")
    data, digest = load_yaml(path)
    detected = isinstance(data, Mapping) and data.get("detect") == "host"
    if detected:
        from codesign.cost_models.host import detect_host_fields
        data = detect_host_fields(data, path=str(path))
    spec = parse_device(data, str(path), device_dir=path.parent)
    cores = {c.uarch.path: c.uarch for c in spec.cpu.clusters if c.uarch is not None}
    if cores:
        # The spec depends on the core files too: a change there changes the device's digest.
        from codesign.cost_models.cores import core_digest
        digest = hashlib.sha256(f"{digest}:{core_digest(list(cores.values()))}".encode()
                                ).hexdigest()
    object.__setattr__(spec, "sha256", digest)
    object.__setattr__(spec, "is_this_machine", detected)
    return spec
