"""The MBConv joint space: architecture x per-layer precision x sparsity x tile (x threads).

Architecture follows OFA's MobileNetV3 family: a stride-2 stem, five stages of inverted-residual
blocks (elastic depth per stage, elastic kernel size and expansion per block, a width per stage),
a 1x1 head conv, global pooling, a feature linear layer and the classifier. Every block, the stem,
the head conv and the two linear layers each choose their own precision ("layer" here is the unit
that shares a precision: an MBConv block's expand, depthwise and project convs share one), sparsity
(applied to the block's 1x1 convs, the head and the feature linear; depthwise convs have no sparse
kernel) and tile (for the block's GEMMs). The config is ``configs/spaces/mbconv.yaml``.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from optuna.distributions import CategoricalDistribution

from cost_models.backends import BackendSpec, Precision
from cost_models.devices import CONFIG_DIR, SpecError, _Reader, load_yaml
from cost_models.ir import Op, OpKind
from cost_models.lowering import insert_precision_boundaries
from kernels.specs import (DENSE, QuantSpec, TileSpec, block, two_four,
                           unstructured)
from search_spaces.base import SearchSpace

SPARSITY_CHOICES = {
    "dense": DENSE, "2:4": two_four(), "block4x4": block(4, 4, 0.75),
    "unstructured50": unstructured(0.5), "unstructured75": unstructured(0.75),
}
ACTIVATIONS = ("relu", "hardswish")


@dataclass(frozen=True)
class StageConfig:
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    stride: int
    act: str


@dataclass(frozen=True)
class MBConvConfig:
    name: str
    num_classes: int
    deploy_input_shape: tuple[int, ...]
    eval_input_shape: tuple[int, ...]
    stem_widths: tuple[int, ...]
    stem_stride: int
    stem_kernel: int
    stages: tuple[StageConfig, ...]
    head_widths: tuple[int, ...]
    feature_width: int
    precisions: Mapping[str, Mapping[str, tuple[str, ...]]]
    sparsity: tuple[str, ...]
    tiles: Mapping[str, TileSpec]
    seed: int
    sha256: str = ""

    @property
    def total_stride(self) -> int:
        stride = self.stem_stride
        for stage in self.stages:
            stride *= stage.stride
        return stride

    def max_arch(self) -> "Arch":
        return Arch(max(self.stem_widths), tuple(
            StageChoice(max(s.widths), (max(s.kernels),) * max(s.depths),
                        (max(s.expands),) * max(s.depths)) for s in self.stages),
            max(self.head_widths))

    def min_arch(self) -> "Arch":
        return Arch(min(self.stem_widths), tuple(
            StageChoice(min(s.widths), (min(s.kernels),) * min(s.depths),
                        (min(s.expands),) * min(s.depths)) for s in self.stages),
            min(self.head_widths))


def _ints(r: _Reader, key: str, *, minimum: int = 1, multiple_of: int = 1) -> tuple[int, ...]:
    """A non-empty list of integers >= ``minimum`` (multiples of ``multiple_of``)."""
    values = r.list(key)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or v % multiple_of:
            rule = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise r.error(f"expected integers >= {minimum}{rule}, got {v!r}", key)
    return tuple(values)


def _choices(r: _Reader, key: str, valid) -> tuple[str, ...]:
    values = r.list(key)
    unknown = [v for v in values if not isinstance(v, str) or v not in valid]
    if unknown:
        raise r.error(f"unknown {unknown}; valid: {', '.join(valid)}", key)
    return tuple(values)


def _precisions(r: _Reader, key: str) -> tuple[str, ...]:
    values = r.list(key)
    for v in values:
        try:
            Precision.parse(v)
        except ValueError as exc:
            raise r.error(str(exc), key) from None
    return tuple(values)


def load_mbconv_config(path: Path | None = None) -> MBConvConfig:
    """Read and check a space file; every problem is a ``SpecError`` naming file and field."""
    path = Path(path or CONFIG_DIR / "spaces" / "mbconv.yaml")
    data, digest = load_yaml(path)
    r = _Reader(str(path), data)
    stages = []
    for i, raw in enumerate(r.list("stages")):
        st = _Reader(str(path), raw, f"stages[{i}]")
        act = st.str("act")
        if act not in ACTIVATIONS:
            raise st.error(f"unknown {act!r}; valid: {', '.join(ACTIVATIONS)}", "act")
        # multiples of 8: 2:4 and 4x4-block sparsity must tile every reduction dimension
        stages.append(StageConfig(_ints(st, "widths", multiple_of=8), _ints(st, "depths"),
                                  _ints(st, "kernels"), _ints(st, "expands"), st.int("stride"),
                                  act))
    stem, head = r.sub("stem"), r.sub("head")
    precisions: dict[str, dict[str, tuple[str, ...]]] = {}
    offered = r.sub("precisions")
    for backend in offered.data:
        kinds = offered.sub(str(backend)) if isinstance(backend, str) else None
        if kinds is None:
            raise offered.error(f"expected a back-end name, got {backend!r}")
        precisions[backend] = {kind: _precisions(kinds, kind) for kind in ("conv", "linear")}
    tiles_r = r.sub("tiles")
    tiles = {}
    for name, value in tiles_r.data.items():
        if not isinstance(name, str) or not isinstance(value, list) or len(value) != 5 or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise tiles_r.error(f"expected NAME: [mc, nc, kc, mr, nr] integers, got {value!r}",
                                str(name))
        try:
            tiles[name] = TileSpec(*value)
        except ValueError as exc:
            raise tiles_r.error(str(exc), name) from None
    shapes = {key: _ints(r, key) for key in ("deploy_input_shape", "eval_input_shape")}
    config = MBConvConfig(
        name=r.str("name"), num_classes=r.int("num_classes", minimum=2),
        deploy_input_shape=shapes["deploy_input_shape"],
        eval_input_shape=shapes["eval_input_shape"],
        stem_widths=_ints(stem, "widths", multiple_of=8), stem_stride=stem.int("stride"),
        stem_kernel=stem.int("kernel"), stages=tuple(stages),
        head_widths=_ints(head, "widths", multiple_of=8),
        feature_width=head.int("feature_width"), precisions=precisions,
        sparsity=_choices(r, "sparsity", tuple(SPARSITY_CHOICES)), tiles=tiles,
        seed=r.int("seed", minimum=0), sha256=digest)
    for key, shape in shapes.items():
        if len(shape) != 4 or (key == "eval_input_shape"
                               and min(shape[2:]) // config.total_stride < 2):
            raise r.error(f"needs N,C,H,W with H and W at least 2 x the total stride "
                          f"{config.total_stride}", key)
    return config


# ------------------------------------------------------------------------------ candidate
@dataclass(frozen=True)
class StageChoice:
    width: int
    kernels: tuple[int, ...]  # one per block: the depth is len(kernels)
    expands: tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.kernels)


@dataclass(frozen=True)
class Arch:
    stem_width: int
    stages: tuple[StageChoice, ...]
    head_width: int


@dataclass(frozen=True)
class LayerChoice:
    """What one precision unit (stem, block, head, linear) runs at."""

    precision: str  # e.g. "w8a8", "w4a8-dyn"
    sparsity: str = "dense"
    tile: str = "default"


@dataclass(frozen=True)
class Candidate:
    """One point of the joint space; hashable, so it keys caches.

    ``layers`` maps unit names (``stem``, ``s{i}.b{j}``, ``head``, ``feature``, ``classifier``)
    to their choices, as a sorted tuple of pairs.
    """

    arch: Arch
    layers: tuple[tuple[str, LayerChoice], ...]
    threads: int

    def layer(self, unit: str) -> LayerChoice:
        return dict(self.layers)[unit]

    def key(self) -> str:
        text = json.dumps([repr(self.arch), repr(self.layers), self.threads])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def units(arch: Arch) -> list[str]:
    names = ["stem"]
    for i, stage in enumerate(arch.stages):
        names += [f"s{i}.b{j}" for j in range(stage.depth)]
    return names + ["head", "feature", "classifier"]


@functools.lru_cache(maxsize=4096)
def _quant(precision: str, k: int, group_sizes: tuple[int, ...]) -> QuantSpec:
    p = Precision.parse(precision)
    group = 0
    if p.weight_bits < 8:
        divisors = [g for g in sorted(group_sizes, reverse=True) if k % g == 0]
        group = divisors[0] if divisors else 0
    return QuantSpec(p.weight_bits, p.act_bits, group, p.dynamic_act)


class MBConvSpace(SearchSpace):
    """The MBConv family bounded by ``backend``'s capability table."""

    def __init__(self, backend: BackendSpec, *, threads_choices: Sequence[int] = (1,),
                 config: MBConvConfig | None = None) -> None:
        self.config = config or load_mbconv_config()
        self.backend = backend
        self.name = self.config.name
        self.deploy_input_shape = self.config.deploy_input_shape
        self.eval_input_shape = self.config.eval_input_shape
        self.threads_choices = tuple(sorted(set(threads_choices)))
        offered = self.config.precisions.get(backend.name)
        if offered is None:
            raise SpecError(f"space {self.name} offers no precisions for back-end "
                            f"{backend.name!r}; valid: {', '.join(self.config.precisions)}")
        conv_kinds = (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D)
        self.conv_precisions = tuple(p for p in offered["conv"] if all(
            self._runs(kind, p) for kind in conv_kinds))
        self.linear_precisions = tuple(p for p in offered["linear"] if self._runs(OpKind.LINEAR, p))
        cap = backend.capability(OpKind.CONV2D)
        self.sparsity_choices = tuple(s for s in self.config.sparsity if s == "dense" or (
            cap is not None and SPARSITY_CHOICES[s].pattern.value in cap.sparsity))
        self.tile_choices = ("default",) + (tuple(self.config.tiles)
                                            if backend.tiles_choosable else ())
        if not self.conv_precisions or not self.linear_precisions:
            raise SpecError(f"back-end {backend.name} runs none of the precisions space "
                            f"{self.name} offers")

    def _runs(self, kind: OpKind, precision: str) -> bool:
        p = Precision.parse(precision)
        group = 0
        cap = self.backend.capability(kind)
        if p.weight_bits < 8 and cap is not None and cap.group_sizes:
            group = min(cap.group_sizes)
        return self.backend.why_not(kind, QuantSpec(p.weight_bits, p.act_bits, group,
                                                    p.dynamic_act), DENSE) is None

    # ------------------------------------------------------------------ distributions
    def _unit_distributions(self, unit: str, *, linear: bool, sparse: bool, tiled: bool):
        yield f"{unit}.prec", CategoricalDistribution(
            self.linear_precisions if linear else self.conv_precisions)
        if sparse and len(self.sparsity_choices) > 1:
            yield f"{unit}.sparsity", CategoricalDistribution(self.sparsity_choices)
        if tiled and len(self.tile_choices) > 1:
            yield f"{unit}.tile", CategoricalDistribution(self.tile_choices)

    def iter_distributions(self, params: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        cfg = self.config
        if len(self.threads_choices) > 1:
            yield "threads", CategoricalDistribution(self.threads_choices)
        yield "stem.width", CategoricalDistribution(cfg.stem_widths)
        yield from self._unit_distributions("stem", linear=False, sparse=False, tiled=True)
        for i, stage in enumerate(cfg.stages):
            yield f"s{i}.width", CategoricalDistribution(stage.widths)
            yield f"s{i}.depth", CategoricalDistribution(stage.depths)
            for j in range(params[f"s{i}.depth"]):
                yield f"s{i}.b{j}.kernel", CategoricalDistribution(stage.kernels)
                yield f"s{i}.b{j}.expand", CategoricalDistribution(stage.expands)
                yield from self._unit_distributions(f"s{i}.b{j}", linear=False, sparse=True,
                                                    tiled=True)
        yield "head.width", CategoricalDistribution(cfg.head_widths)
        yield from self._unit_distributions("head", linear=False, sparse=True, tiled=True)
        yield from self._unit_distributions("feature", linear=True, sparse=True, tiled=True)
        yield from self._unit_distributions("classifier", linear=True, sparse=False, tiled=False)

    # ------------------------------------------------------------------ mapping
    def decode(self, params: Mapping[str, Any]) -> Candidate:
        self.check_params(params)
        stages = []
        for i in range(len(self.config.stages)):
            depth = params[f"s{i}.depth"]
            stages.append(StageChoice(params[f"s{i}.width"],
                                      tuple(params[f"s{i}.b{j}.kernel"] for j in range(depth)),
                                      tuple(params[f"s{i}.b{j}.expand"] for j in range(depth))))
        arch = Arch(params["stem.width"], tuple(stages), params["head.width"])
        layers = tuple(sorted(
            (u, LayerChoice(params[f"{u}.prec"], params.get(f"{u}.sparsity", "dense"),
                            params.get(f"{u}.tile", "default"))) for u in units(arch)))
        return Candidate(arch, layers, params.get("threads", self.threads_choices[-1]))

    def encode(self, candidate: Candidate) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if len(self.threads_choices) > 1:
            params["threads"] = candidate.threads
        params["stem.width"] = candidate.arch.stem_width
        for i, stage in enumerate(candidate.arch.stages):
            params[f"s{i}.width"] = stage.width
            params[f"s{i}.depth"] = stage.depth
            for j in range(stage.depth):
                params[f"s{i}.b{j}.kernel"] = stage.kernels[j]
                params[f"s{i}.b{j}.expand"] = stage.expands[j]
        params["head.width"] = candidate.arch.head_width
        for unit, choice in candidate.layers:
            params[f"{unit}.prec"] = choice.precision
            params[f"{unit}.sparsity"] = choice.sparsity
            params[f"{unit}.tile"] = choice.tile
        active = self.active_names(params)
        return {k: v for k, v in params.items() if k in active}

    # ------------------------------------------------------------------ lowering
    def to_ops(self, candidate: Candidate, input_shape: Sequence[int] | None = None) -> list[Op]:
        return insert_precision_boundaries(
            lower_arch(candidate, self.config, input_shape or self.deploy_input_shape,
                       self.backend, self.config.tiles))


def lower_arch(candidate: Candidate, cfg: MBConvConfig, input_shape: Sequence[int],
               backend: BackendSpec, tiles: Mapping[str, TileSpec]) -> list[Op]:
    """The op list of ``candidate`` at ``input_shape``: what lowering its torch subnet gives,
    built directly (tests check the two agree)."""
    n, c, h, w = input_shape
    ops: list[Op] = []
    choice = dict(candidate.layers)

    def gsizes(kind):
        cap = backend.capability(kind)
        return tuple(cap.group_sizes) if cap else ()

    def conv(name, unit, cin, cout, k, stride, groups, act, prev, *, sparse=True):
        nonlocal h, w
        ho, wo = -(-h // stride), -(-w // stride)
        m, kk = n * ho * wo, (cin // groups) * k * k
        kind = OpKind.DEPTHWISE_CONV2D if groups > 1 else OpKind.CONV2D
        lc = choice[unit]
        quant = _quant(lc.precision, kk, gsizes(kind))
        spars = SPARSITY_CHOICES[lc.sparsity] if (sparse and groups == 1) else DENSE
        tile = tiles.get(lc.tile) if groups == 1 else None
        op = Op(name, kind, (n, cout, ho, wo), ((n, cin, h, w),), m=m, n=cout // groups, k=kk,
                groups=groups, flops=2.0 * m * (cout // groups) * kk * groups,
                weight_elems=cout * kk, out_channels=cout, quant=quant, sparsity=spars,
                tile=tile, fused=("batchnorm",) + ((act,) if act else ()), inputs=(prev,))
        ops.append(op)
        h, w = ho, wo
        return op.name

    def linear(name, unit, fin, fout, act, prev, *, sparse):
        lc = choice[unit]
        quant = _quant(lc.precision, fin, gsizes(OpKind.LINEAR))
        op = Op(name, OpKind.LINEAR, (n, fout), ((n, fin),), m=n, n=fout, k=fin,
                flops=2.0 * n * fout * fin, weight_elems=fin * fout, out_channels=fout,
                quant=quant, sparsity=SPARSITY_CHOICES[lc.sparsity] if sparse else DENSE,
                tile=tiles.get(lc.tile), fused=(act,) if act else (), inputs=(prev,))
        ops.append(op)
        return op.name

    arch = candidate.arch
    prev = conv("stem", "stem", c, arch.stem_width, cfg.stem_kernel, cfg.stem_stride, 1,
                "hardswish", "", sparse=False)
    cin = arch.stem_width
    for i, (stage, scfg) in enumerate(zip(arch.stages, cfg.stages)):
        for j in range(stage.depth):
            unit = f"s{i}.b{j}"
            stride = scfg.stride if j == 0 else 1
            hidden = cin * stage.expands[j]
            block_in, block_in_shape = prev, (h, w)
            x = conv(f"{unit}.expand", unit, cin, hidden, 1, 1, 1, scfg.act, prev)
            x = conv(f"{unit}.dw", unit, hidden, hidden, stage.kernels[j], stride, hidden,
                     scfg.act, x)
            x = conv(f"{unit}.project", unit, hidden, stage.width, 1, 1, 1, None, x)
            if stride == 1 and cin == stage.width and (h, w) == block_in_shape:
                shape = (n, stage.width, h, w)
                ops.append(Op(f"{unit}.add", OpKind.ADD, shape, (shape, shape),
                              flops=float(n * stage.width * h * w),
                              quant=ops[-1].quant_for_activation(), inputs=(block_in, x)))
                x = ops[-1].name
            prev, cin = x, stage.width
    prev = conv("head", "head", cin, arch.head_width, 1, 1, 1, "hardswish", prev)
    shape = (n, arch.head_width, 1, 1)  # kept dims (XNNPACK delegates that form), then flatten
    ops.append(Op("pool", OpKind.GLOBAL_POOL, shape, ((n, arch.head_width, h, w),),
                  flops=float(n * arch.head_width * h * w),
                  quant=ops[-1].quant_for_activation(), inputs=(prev,)))
    prev = linear("feature", "feature", arch.head_width, cfg.feature_width, "hardswish", "pool",
                  sparse=True)
    linear("classifier", "classifier", cfg.feature_width, cfg.num_classes, None, prev,
           sparse=False)
    return ops
