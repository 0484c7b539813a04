"""Back-ends: what a runtime can execute, and the terms that price how well it does it.

A back-end file (``configs/backends/NAME.yaml``) holds a capability table — per op kind the
(weight bits, activation bits) pairs it runs, the weight group sizes it accepts, the sparsity
patterns that accelerate it — plus whether tiles and threads are choosable and the efficiency /
overhead terms the analytic model needs. Only what the table declares may be priced.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from codesign.cost_models.devices import (CONFIG_DIR, DTYPES, ISAS, SpecError, Sourced, ConfigReader,
                                          load_yaml)
from codesign.cost_models.ir import OpKind, PRICED_FREE_KINDS, WEIGHTED_KINDS
from codesign.kernels.specs import QuantSpec, SparsityPattern, SparsitySpec, TileSpec

_PRECISION = re.compile(r"^w(2|4|8|16|32)a(8|16|32)(-dyn)?$")


@dataclass(frozen=True)
class Precision:
    weight_bits: int
    act_bits: int
    dynamic_act: bool = False

    @classmethod
    def parse(cls, token: str) -> "Precision":
        match = _PRECISION.match(token) if isinstance(token, str) else None
        if not match:
            raise ValueError(f"precision {token!r} is not of the form w<bits>a<bits>[-dyn]")
        return cls(int(match[1]), int(match[2]), bool(match[3]))

    @property
    def label(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}{'-dyn' if self.dynamic_act else ''}"


@dataclass(frozen=True)
class OpCapability:
    """What a back-end runs for one op kind."""

    precisions: frozenset[Precision]
    group_sizes: tuple[int, ...]  # accepted weight group sizes for sub-8-bit weights; () = none
    sparsity: Mapping[str, float]  # accelerated pattern -> efficiency vs dense per useful FLOP
    # the precisions the sparse kernels take (the project's sparse GEMMs are fp32 only);
    # None: every precision of the op
    sparse_precisions: frozenset[Precision] | None = None

    def runs_sparse(self, precision: Precision, pattern: str) -> bool:
        """True if ``pattern`` is accelerated for weights/activations at ``precision``."""
        return pattern in self.sparsity and (self.sparse_precisions is None
                                             or precision in self.sparse_precisions)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    display_name: str
    tiles_choosable: bool
    threads_choosable: bool
    ops: Mapping[OpKind, OpCapability]
    default_tiles: Mapping[str, TileSpec]  # ISA -> the tile the back-end's kernels use there
    efficiency: Mapping[OpKind, Mapping[str, Sourced]]  # op kind -> dtype -> fraction of peak
    dispatch_overhead_s: Sourced
    thread_sync_overhead_s: Sourced
    requant_bytes_per_elem: float  # extra traffic of a quantize/dequantize at a boundary
    analytic_error: Sourced | None = None  # the analytic model's known relative error here
    analytic_error_devices: tuple[str, ...] = ()  # the devices whose measurements it comes from
    # static int8 activations: "asymmetric" (a zero point: PT2E / XNNPACK QS8) or "symmetric"
    # (zero point 0: the project's integer GEMMs and convolutions)
    int8_activations: str = "asymmetric"
    # Depthwise kernels with more taps (kh x kw) than the back-end's dedicated micro-kernels
    # cover run on a generic path at their own efficiency (per dtype); None: no such limit.
    depthwise_max_taps: int | None = None
    depthwise_large_kernel_efficiency: Mapping[str, Sourced] | None = None
    # Linears with group-wise sub-byte weights (block-wise scales) run their own kernels at their
    # own efficiency, measured per ISA: ISA -> group size -> compute dtype -> fraction of peak;
    # an ISA not listed (None: none listed) prices them as the dense kernel of their dtype.
    blockwise_weight_efficiency: Mapping[str, Mapping[int, Mapping[str, Sourced]]] | None = None
    # One-row linears (M = 1, the decode GEMV) measured per ISA: ISA -> compute dtype -> fraction
    # of peak, the micro-kernel term included; unlisted: the derived GEMM terms.
    gemv_efficiency: Mapping[str, Mapping[str, Sourced]] | None = None
    # Decode attention as one fused kernel (op kind ``attention``) inside the program the
    # back-end's exporter writes: per layer, the layout copies that program runs around it
    # (``query_transposes``, ``kv_transposes``, ``cache_updates``, ``cache_transposes``).
    fused_attention: Mapping[str, int] | None = None
    # The back-end runs the project's own kernels (codesign.kernels): a member exported for it
    # gets their per-layer contract (kernels.json: shape, precision, sparse format, tile).
    project_kernels: bool = False
    # What one inference costs beyond its ops (the runtime's method call, delegate entry)
    program_overhead_s: Sourced | None = None
    # The core the fixed costs (program, dispatch, fork-join, portable kernels) were measured
    # on; None: they are estimates in seconds on any device (see ``fixed_cost_scale``)
    fixed_costs_measured_on: "MeasuredOn | None" = None
    # ATen ops the back-end leaves to the runtime's portable kernels -> their rate class, and
    # per class the measured (fixed seconds, seconds per output element) of one call
    portable_ops: Mapping[str, str] | None = None
    portable_rates: Mapping[str, tuple[Sourced, Sourced]] | None = None
    # Per ISA, op kind and compute dtype: a fraction of peak measured by single-op
    # microbenchmarks, replacing the estimated efficiency x the derived micro-kernel term
    measured_efficiency: Mapping[str, Mapping[OpKind, Mapping[str, Sourced]]] | None = None
    # Per ISA, how the back-end's programs behaved at 2 threads in microbenchmarks there
    # (None: ideal scaling of every term)
    measured_threading: Mapping[str, "ThreadingTerms"] | None = None
    path: str = ""

    def fixed_cost_scale(self, cluster) -> float:
        """The factor carrying the measured fixed costs to a core of ``cluster``: by clock
        (cycles are kept), and for an in-order core by the ratio of decode widths (the
        dispatch code is scalar and branchy: an out-of-order core of any width runs it in
        about the cycles the reference core did, an in-order one issues it at most at its
        width). 1 when the costs were not measured."""
        ref = self.fixed_costs_measured_on
        if ref is None:
            return 1.0
        scale = ref.clock_hz / cluster.sustained_hz.value
        uarch = getattr(cluster, "uarch", None)
        if uarch is not None and not uarch.out_of_order:
            scale *= ref.decode_width / uarch.decode_width.value
        return scale

    def default_tile(self, isa: str) -> TileSpec:
        if isa not in self.default_tiles:
            raise SpecError(f"{self.path}: field 'default_tile': no tile for ISA {isa!r}; "
                            f"has {', '.join(self.default_tiles)}")
        return self.default_tiles[isa]

    def capability(self, kind: OpKind) -> OpCapability | None:
        return self.ops.get(kind)

    def why_not(self, kind: OpKind, quant: QuantSpec, sparsity: SparsitySpec) -> str | None:
        """None if the back-end runs this op as given, else the reason it cannot.

        Sparsity the back-end does not accelerate is not a reason: the pruned weights are then
        stored and run densely, which every back-end can do.
        """
        if kind in PRICED_FREE_KINDS:
            return None
        cap = self.ops.get(kind)
        if cap is None:
            return f"back-end {self.name} has no kernel for op kind {kind.value}"
        want = Precision(quant.weight_bits, quant.act_bits, quant.dynamic_act)
        if kind not in WEIGHTED_KINDS:
            # a weightless op only has activations: any declared activation precision will do
            if quant.act_bits not in {p.act_bits for p in cap.precisions}:
                ok = sorted({p.act_bits for p in cap.precisions})
                return (f"back-end {self.name} does not run {kind.value} on {quant.act_bits}-bit "
                        f"activations; it runs {ok}")
            return None
        if want not in cap.precisions:
            ok = ", ".join(sorted(p.label for p in cap.precisions))
            return (f"back-end {self.name} does not run {kind.value} at {want.label}; "
                    f"it runs {ok}")
        if quant.weight_bits < 8 and quant.group_size and quant.group_size not in cap.group_sizes:
            return (f"back-end {self.name} does not accept group size {quant.group_size} for "
                    f"{kind.value}; valid: {list(cap.group_sizes)}")
        return None

    def accelerates(self, kind: OpKind, sparsity: SparsitySpec,
                    quant: QuantSpec | None = None) -> bool:
        """True if the back-end has a sparse kernel for ``kind`` in this pattern (at ``quant``'s
        precision, when given)."""
        cap = self.ops.get(kind)
        if sparsity.pattern is SparsityPattern.DENSE or cap is None:
            return False
        if quant is None:
            return sparsity.pattern.value in cap.sparsity
        return cap.runs_sparse(Precision(quant.weight_bits, quant.act_bits, quant.dynamic_act),
                               sparsity.pattern.value)


@dataclass(frozen=True)
class MeasuredOn:
    """The reference core of measured fixed costs, with how they were measured."""

    clock_hz: float
    decode_width: float
    core: str
    provenance: Mapping[str, str]


def _measured_on(r: ConfigReader) -> MeasuredOn | None:
    if "fixed_costs_measured_on" not in r.data:
        return None
    b = r.sub("fixed_costs_measured_on")
    prov = b.sub("provenance")
    for key in ("command", "date", "host", "load"):
        if not isinstance(prov.data.get(key), str) or not prov.data[key].strip():
            raise prov.error("expected a non-empty string", key)
    return MeasuredOn(b.sourced("clock_hz").value, b.sourced("decode_width").value,
                      b.str("core"), dict(prov.data))


def _portable(r: ConfigReader) -> dict:
    """``portable_kernels: {ops: {ATEN_OP: CLASS}, rates: {CLASS: {fixed_s, per_elem_s}}}``."""
    if "portable_kernels" not in r.data:
        return {}
    b = r.sub("portable_kernels")
    rates_r = b.sub("rates")
    rates = {c: (rates_r.sub(c).sourced("fixed_s", positive=False),
                 rates_r.sub(c).sourced("per_elem_s")) for c in rates_r.data}
    ops = b.sub("ops").data
    for op, cls in ops.items():
        if cls not in rates:
            raise b.sub("ops").error(f"unknown rate class {cls!r}; valid: {', '.join(rates)}", op)
    return {"portable_ops": dict(ops), "portable_rates": rates}


@dataclass(frozen=True)
class ThreadingTerms:
    """A back-end's measured 2-thread behaviour on one ISA (single-op microbenchmarks).

    Attributes:
        stream_scaling: one streaming operator's time at 1 thread / at 2 threads, for working
            sets within one core's L2 (ideal: 2).
        handoff: ((program input + output bytes, seconds), ...) sorted: what an inference's
            fixed part grows by at 2 threads (its input and output passing between the
            calling thread and the pool); interpolated in bytes, clamped at the ends.
    """

    stream_scaling: Sourced
    handoff: tuple[tuple[float, float], ...]
    handoff_ref: str


def _measured_threading(r: ConfigReader) -> dict | None:
    """``measured_threading: {ISA: {stream_scaling: sourced, handoff: {ref, points: [[B, s]]}}}``."""
    if "measured_threading" not in r.data:
        return None
    block = r.sub("measured_threading")
    out = {}
    for isa in block.data:
        if isa not in ISAS:
            raise block.error(f"unknown ISA; valid: {', '.join(ISAS)}", isa)
        per = block.sub(isa)
        handoff = per.sub("handoff")
        points = handoff.data.get("points")
        if (not isinstance(points, list) or not points
                or not all(isinstance(p, list) and len(p) == 2 for p in points)):
            raise handoff.error("expected a list of [bytes, seconds] pairs", "points")
        try:
            pairs = tuple(sorted((float(b), float(t)) for b, t in points))
        except (TypeError, ValueError):
            raise handoff.error("expected numbers", "points") from None
        out[isa] = ThreadingTerms(per.sourced("stream_scaling"), pairs, handoff.str("ref"))
    return out


def _measured_efficiency(r: ConfigReader) -> dict | None:
    """``measured_efficiency: {ISA: {KIND: {DTYPE: sourced}}}``."""
    if "measured_efficiency" not in r.data:
        return None
    block = r.sub("measured_efficiency")
    kinds = {k.value: k for k in OpKind}
    out: dict = {}
    for isa in block.data:
        if isa not in ISAS:
            raise block.error(f"unknown ISA; valid: {', '.join(ISAS)}", isa)
        per = block.sub(isa)
        for kind in per.data:
            if kind not in kinds:
                raise per.error(f"unknown op kind; valid: {', '.join(kinds)}", kind)
        out[isa] = {kinds[k]: _dtype_efficiency(per.sub(k)) for k in per.data}
    return out


def _parse_tile(r: ConfigReader) -> TileSpec:
    try:
        return TileSpec(**{k: r.int(k) for k in ("mc", "nc", "kc", "mr", "nr")})
    except ValueError as exc:
        if isinstance(exc, SpecError):
            raise
        raise r.error(str(exc)) from None


def parse_backend(data, path: str) -> BackendSpec:
    r = ConfigReader(path, data)
    kinds = {k.value: k for k in OpKind}
    ops: dict[OpKind, OpCapability] = {}
    ops_r = r.sub("ops")
    for kind_name in ops_r.data:
        if kind_name not in kinds:
            raise ops_r.error(f"unknown op kind; valid: {', '.join(kinds)}", kind_name)
        entry = ops_r.sub(kind_name)
        try:
            precisions = frozenset(Precision.parse(t) for t in entry.list("precisions"))
        except ValueError as exc:
            raise entry.error(str(exc), "precisions") from None
        groups = entry.data.get("group_sizes", []) or []
        if not isinstance(groups, list) or not all(
                isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in groups):
            raise entry.error(f"expected positive integers, got {groups!r}", "group_sizes")
        sparse = entry.data.get("sparsity", {}) or {}
        if not isinstance(sparse, Mapping):
            raise entry.error(f"expected PATTERN: EFFICIENCY pairs, got {sparse!r}", "sparsity")
        patterns = [p.value for p in SparsityPattern if p is not SparsityPattern.DENSE]
        for pattern, eff in sparse.items():
            if pattern not in patterns:
                raise entry.error(f"unknown pattern {pattern!r}; valid: {', '.join(patterns)}",
                                  "sparsity")
            if isinstance(eff, bool) or not isinstance(eff, (int, float)) or not 0 < eff <= 1:
                raise entry.error(f"efficiency of {pattern} must be in (0, 1]", "sparsity")
        sparse_precisions = None
        if "sparse_precisions" in entry.data:
            try:
                sparse_precisions = frozenset(Precision.parse(t)
                                              for t in entry.list("sparse_precisions"))
            except ValueError as exc:
                raise entry.error(str(exc), "sparse_precisions") from None
        ops[kinds[kind_name]] = OpCapability(precisions, tuple(groups),
                                             {k: float(v) for k, v in sparse.items()},
                                             sparse_precisions)
    eff_r = r.sub("efficiency")
    efficiency: dict[OpKind, dict[str, Sourced]] = {}
    for kind_name in eff_r.data:
        if kind_name not in kinds:
            raise eff_r.error(f"unknown op kind; valid: {', '.join(kinds)}", kind_name)
        efficiency[kinds[kind_name]] = _dtype_efficiency(eff_r.sub(kind_name))
    tiles = r.sub("default_tile")
    unknown_isa = sorted(set(tiles.data) - set(ISAS), key=repr)
    if unknown_isa:
        raise tiles.error(f"unknown ISA(s) {unknown_isa}; valid: {', '.join(ISAS)}")
    for kind in ops:
        if kind not in efficiency:
            raise eff_r.error(f"op kind {kind.value} is runnable but has no efficiency")
    return BackendSpec(
        name=r.str("name"), display_name=r.str("display_name"),
        tiles_choosable=r.bool("tiles_choosable"), threads_choosable=r.bool("threads_choosable"),
        ops=ops, efficiency=efficiency,
        default_tiles={isa: _parse_tile(tiles.sub(isa)) for isa in tiles.data},
        dispatch_overhead_s=r.sourced("dispatch_overhead_s"),
        thread_sync_overhead_s=r.sourced("thread_sync_overhead_s"),
        requant_bytes_per_elem=float(r.sourced("requant_bytes_per_elem").value),
        analytic_error=(r.sourced("analytic_error", maximum=1.0)
                        if "analytic_error" in r.data else None),
        analytic_error_devices=_error_devices(r),
        int8_activations=_int8_activations(r),
        **_depthwise_limit(r),
        blockwise_weight_efficiency=_blockwise(r),
        fused_attention=_fused_attention(r),
        gemv_efficiency=_gemv(r),
        project_kernels=r.bool("project_kernels", False),
        program_overhead_s=(r.sourced("program_overhead_s")
                            if "program_overhead_s" in r.data else None),
        fixed_costs_measured_on=_measured_on(r),
        **_portable(r),
        measured_efficiency=_measured_efficiency(r),
        measured_threading=_measured_threading(r),
        path=path,
    )


def _error_devices(r: ConfigReader) -> tuple[str, ...]:
    """``analytic_error.devices``: the devices whose measurements the error comes from."""
    sub = r.sub("analytic_error", optional=True)
    if sub is None or "devices" not in sub.data:
        return ()
    names = sub.list("devices")
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise sub.error(f"expected a list of device names, got {names!r}", "devices")
    return tuple(names)


def _int8_activations(r: ConfigReader) -> str:
    value = r.data.get("int8_activations", "asymmetric")
    if value not in ("asymmetric", "symmetric"):
        raise r.error(f"expected asymmetric or symmetric, got {value!r}", "int8_activations")
    return value


def _depthwise_limit(r: ConfigReader) -> dict:
    """The optional ``depthwise_large_kernel`` block: ``max_taps`` (sourced) and a per-dtype
    ``efficiency`` for depthwise layers with more taps than that."""
    if "depthwise_large_kernel" not in r.data:
        return {}
    block = r.sub("depthwise_large_kernel")
    taps = block.sourced("max_taps")
    if taps.value != int(taps.value) or taps.value < 1:
        raise block.error(f"expected a positive integer, got {taps.value!r}", "max_taps")
    return {"depthwise_max_taps": int(taps.value),
            "depthwise_large_kernel_efficiency": _dtype_efficiency(block.sub("efficiency"))}


def _dtype_efficiency(r: ConfigReader) -> dict[str, Sourced]:
    """A ``{DTYPE: sourced fraction of peak}`` block."""
    for d in r.data:
        if d not in DTYPES:
            raise r.error(f"unknown dtype; valid: {', '.join(DTYPES)}", d)
    return {d: r.sourced(d, maximum=1.0) for d in r.data}


def _isa_efficiency(block: ConfigReader, isa: str) -> ConfigReader:
    """``isa``'s ``efficiency`` block in a per-ISA ``{ISA: {efficiency: ...}}`` block."""
    if isa not in ISAS:
        raise block.error(f"unknown ISA; valid: {', '.join(ISAS)}", isa)
    return block.sub(isa).sub("efficiency")


def _blockwise(r: ConfigReader) -> dict[str, dict[int, dict[str, Sourced]]] | None:
    """The optional ``blockwise_weights: {ISA: {efficiency: {GROUP: {DTYPE: sourced}}}}``."""
    if "blockwise_weights" not in r.data:
        return None
    block = r.sub("blockwise_weights")
    out: dict[str, dict[int, dict[str, Sourced]]] = {}
    for isa in block.data:
        eff = _isa_efficiency(block, isa)
        out[isa] = {}
        for group in eff.data:
            if isinstance(group, bool) or not isinstance(group, int) or group < 1:
                raise eff.error(f"expected a positive integer group size, got {group!r}", group)
            out[isa][group] = _dtype_efficiency(eff.sub(group))
    return out


def _gemv(r: ConfigReader) -> dict[str, dict[str, Sourced]] | None:
    """The optional ``gemv: {ISA: {efficiency: {DTYPE: sourced}}}`` block."""
    if "gemv" not in r.data:
        return None
    block = r.sub("gemv")
    return {isa: _dtype_efficiency(_isa_efficiency(block, isa)) for isa in block.data}


FUSED_ATTENTION_FIELDS = ("query_transposes", "kv_transposes", "cache_updates",
                          "cache_transposes")


def _fused_attention(r: ConfigReader) -> dict[str, int] | None:
    """The optional ``fused_attention`` block: per-layer counts of the layout ops the exported
    attention runs (each sourced); needs the ``attention`` op kind in the table."""
    if "fused_attention" not in r.data:
        return None
    block = r.sub("fused_attention")
    out = {}
    for key in FUSED_ATTENTION_FIELDS:
        value = block.sourced(key, positive=False).value
        if value != int(value) or value < 0 or (key != "query_transposes" and value % 2):
            raise block.error(f"expected a non-negative (K and V: even) integer, got {value!r}",
                              key)
        out[key] = int(value)
    if OpKind.ATTENTION.value not in (r.data.get("ops") or {}):
        raise block.error("a fused attention needs op kind 'attention' in 'ops'")
    return out


def backend_names() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "backends").glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def load_backend(name: str) -> BackendSpec:
    path = CONFIG_DIR / "backends" / f"{name}.yaml"
    if not path.is_file():
        raise SpecError(f"unknown back-end {name!r}; valid: {', '.join(backend_names())}")
    data, _ = load_yaml(path)
    return parse_backend(data, str(path))


def backend_for(device, name: str | None) -> BackendSpec:
    """The device's back-end called ``name`` (the device's first back-end when None)."""
    chosen = name or device.backends[0]
    if chosen not in device.backends:
        raise SpecError(f"device {device.name} has no back-end {chosen!r}; "
                        f"valid: {', '.join(device.backends)}")
    return load_backend(chosen)


def config_path(kind: str, name: str) -> Path:
    return CONFIG_DIR / kind / f"{name}.yaml"
