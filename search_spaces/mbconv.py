"""The MBConv joint space: architecture x per-layer precision x sparsity x tile (x threads).

Architecture follows OFA's MobileNetV3 family: a stride-2 stem, five stages of inverted-residual
blocks (elastic depth per stage, elastic kernel size and expansion per block, a width per stage),
a 1x1 head conv, global pooling, a feature linear layer and the classifier. Every block, the stem,
the head conv and the two linear layers each choose their own precision ("layer" here is the unit
that shares a precision: an MBConv block's expand, depthwise and project convs share one), sparsity
(applied to the block's 1x1 convs, the head and the feature linear; depthwise convs have no sparse
kernel) and tile (for the block's GEMMs). The config is ``configs/spaces/mbconv.yaml``, read by
``mbconv_config``; a candidate's types are in ``mbconv_candidate``, its lowering to ops in
``mbconv_lowering``.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from optuna.distributions import CategoricalDistribution

from codesign.cost_models.backends import BackendSpec, Precision
from codesign.cost_models.devices import SpecError
from codesign.cost_models.ir import Op, OpBatch, OpKind
from codesign.kernels.specs import DENSE, QuantSpec
from codesign.search_spaces.base import SearchSpace
# The candidate types, the config and its loader, lower_arch, _quant and SPARSITY_CHOICES lived
# here; importers of this module still find them.
from codesign.search_spaces.mbconv_candidate import (Arch, Candidate, Format,  # noqa: F401
                                                     LayerChoice, StageChoice, astuple_format,
                                                     units)
from codesign.search_spaces.mbconv_config import (MBConvConfig, StageConfig,  # noqa: F401
                                                  load_mbconv_config)
from codesign.search_spaces.mbconv_lowering import (SPARSITY_CHOICES, MBConvLowering,  # noqa: F401
                                                    _quant, lower_arch)
from codesign.search_spaces.mbconv_params import ParamLayout

_MAX_SHARED = 1 << 16  # stage records decode keeps to share between members


class MBConvSpace(SearchSpace):
    """The MBConv family bounded by ``backend``'s capability table.

    Precision and sparsity are chosen as a *palette* (OFA/APQ members deploy with a handful of
    kernels, not one per layer): ``fmt.0`` .. ``fmt.{N-1}`` are the member's formats
    (``N = max_formats``), ``fmt.0`` one every unit can run (dense, conv and linear), and each
    unit's ``{unit}.fmt`` names a palette slot. A unit that cannot run its slot's format (a
    linear-only precision on a conv unit, a sparse format on the stem or the classifier, which
    have no sparse layer) runs ``fmt.0``. So a member has at most ``max_formats`` formats by
    construction, and every format is one the back-end runs with a sparse kernel where sparse.
    """

    supports_predictor_stage = True  # stages, per-unit formats and ``formats``: see the base

    def __init__(self, backend: BackendSpec, *, threads_choices: Sequence[int] = (1,),
                 config: MBConvConfig | None = None, max_formats: int = 3) -> None:
        self.config = config or load_mbconv_config()
        self.backend = backend
        self.name = self.config.name
        self.deploy_input_shape = self.config.deploy_input_shape
        self.eval_input_shape = self.config.eval_input_shape
        self.threads_choices = tuple(sorted(set(threads_choices)))
        if isinstance(max_formats, bool) or not isinstance(max_formats, int) or max_formats < 1:
            raise ValueError(f"max_formats must be an integer >= 1, got {max_formats!r}")
        self.max_formats = max_formats
        offered = self.config.precisions.get(backend.name)
        if offered is None:
            raise SpecError(f"space {self.name} offers no precisions for back-end "
                            f"{backend.name!r}; valid: {', '.join(self.config.precisions)}")
        conv_kinds = (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D)
        self.conv_precisions = tuple(p for p in offered["conv"] if all(
            self._runs(kind, p) for kind in conv_kinds))
        self.linear_precisions = tuple(p for p in offered["linear"] if self._runs(OpKind.LINEAR, p))
        self.tile_choices = ("default",) + (tuple(self.config.tiles)
                                            if backend.tiles_choosable else ())
        if not self.conv_precisions or not self.linear_precisions:
            raise SpecError(f"back-end {backend.name} runs none of the precisions space "
                            f"{self.name} offers")
        self._unit_formats = {kind: self._formats_for(kind) for kind in
                              ("conv", "conv_dense", "linear", "linear_dense")}
        common = [f for f in self._unit_formats["conv_dense"]
                  if f in self._unit_formats["linear_dense"]]
        if not common:
            raise SpecError(f"back-end {backend.name}: no precision of space {self.name} runs "
                            "on both convolutions and linear layers")
        self.common_formats = tuple(f.label for f in common)
        every = dict.fromkeys(f.label for kind in ("conv", "linear")
                              for f in self._unit_formats[kind])
        self.formats = tuple(every)
        self.sparsity_choices = tuple(dict.fromkeys(Format.parse(f).sparsity
                                                    for f in self.formats))
        self._lowerings: dict[tuple[int, ...], MBConvLowering] = {}  # by input shape
        self._layout: ParamLayout | None = None  # read at the first decode
        self._palette_names = [f"fmt.{slot}" for slot in range(self.max_formats)]
        self._unit_layers: dict[tuple[str, str, str], tuple[str, LayerChoice]] = {}
        self._stage_choices: dict[tuple, StageChoice] = {}

    def _runs(self, kind: OpKind, precision: str) -> bool:
        p = Precision.parse(precision)
        group = 0
        cap = self.backend.capability(kind)
        if p.weight_bits < 8 and cap is not None and cap.group_sizes:
            group = min(cap.group_sizes)
        return self.backend.why_not(kind, QuantSpec(p.weight_bits, p.act_bits, group,
                                                    p.dynamic_act), DENSE) is None

    def _formats_for(self, kind: str) -> list[Format]:
        """Formats a unit of ``kind`` runs: ``conv``/``linear`` (with the sparse formats the
        back-end accelerates at that precision), ``*_dense`` (units with no sparse layer)."""
        linear = kind.startswith("linear")
        precisions = self.linear_precisions if linear else self.conv_precisions
        cap = self.backend.capability(OpKind.LINEAR if linear else OpKind.CONV2D)
        out = []
        for precision in precisions:
            out.append(Format(precision))
            if kind.endswith("_dense") or cap is None:
                continue
            for name in self.config.sparsity:
                if name != "dense" and cap.runs_sparse(Precision.parse(precision),
                                                       SPARSITY_CHOICES[name].pattern.value):
                    out.append(Format(precision, name))
        return out

    def unit_formats(self, unit: str) -> tuple[str, ...]:
        """Labels of the formats ``unit`` can run."""
        kind = "linear" if unit in ("feature", "classifier") else "conv"
        dense = unit in ("stem", "classifier")  # no sparse layer in them
        return tuple(f.label for f in self._unit_formats[kind + ("_dense" if dense else "")])

    # ------------------------------------------------------------------ distributions
    def _unit_distributions(self, unit: str, *, tiled: bool):
        if self.max_formats > 1:
            yield f"{unit}.fmt", CategoricalDistribution(tuple(range(self.max_formats)))
        if tiled and len(self.tile_choices) > 1:
            yield f"{unit}.tile", CategoricalDistribution(self.tile_choices)

    def iter_distributions(self, params: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        cfg = self.config
        if len(self.threads_choices) > 1:
            yield "threads", CategoricalDistribution(self.threads_choices)
        yield "fmt.0", CategoricalDistribution(self.common_formats)
        for slot in range(1, self.max_formats):
            yield f"fmt.{slot}", CategoricalDistribution(self.formats)
        yield "stem.width", CategoricalDistribution(cfg.stem_widths)
        yield from self._unit_distributions("stem", tiled=True)
        for i, stage in enumerate(cfg.stages):
            yield f"s{i}.width", CategoricalDistribution(stage.widths)
            yield f"s{i}.depth", CategoricalDistribution(stage.depths)
            for j in range(params[f"s{i}.depth"]):
                yield f"s{i}.b{j}.kernel", CategoricalDistribution(stage.kernels)
                yield f"s{i}.b{j}.expand", CategoricalDistribution(stage.expands)
                yield from self._unit_distributions(f"s{i}.b{j}", tiled=True)
        yield "head.width", CategoricalDistribution(cfg.head_widths)
        yield from self._unit_distributions("head", tiled=True)
        yield from self._unit_distributions("feature", tiled=True)
        yield from self._unit_distributions("classifier", tiled=False)

    # ------------------------------------------------------------------ mapping
    def decode(self, params: Mapping[str, Any]) -> Candidate:
        if "fmt.0" not in params and "stem.prec" in params:
            return self._decode_per_unit(params)
        layout = self._layout or self._read_layout()
        # Plain values may share records with equal ones: members share them, and fewer live
        # objects keep the garbage collector's passes short when thousands are decoded.
        plain = layout.valid(params)
        if not plain:
            self.check_params(params)  # the error naming the param, or (odd types) a pass
        stages, depths = [], []
        get = params.__getitem__
        for width, depth_name, kernels, expands in layout.stages:
            depth = params[depth_name]
            depths.append(depth)
            key = (params[width], tuple(map(get, kernels[:depth])),
                   tuple(map(get, expands[:depth])))
            stage = self._stage_choices.get(key) if plain else None
            if stage is None:
                stage = StageChoice(*key)
                if plain:
                    if len(self._stage_choices) >= _MAX_SHARED:  # stages have ~10^5 values
                        self._stage_choices.clear()
                    self._stage_choices[key] = stage
            stages.append(stage)
        arch = Arch(params["stem.width"], tuple(stages), params["head.width"])
        palette = [params[name] for name in self._palette_names]
        layers = []
        shared = self._unit_layers
        for unit, fmt, tile_name, runnable in layout.units(tuple(depths)):  # sorted, as layers are
            label = palette[params.get(fmt, 0)]
            if label not in runnable:
                label = palette[0]  # runnable by every unit (see the class docstring)
            tile = params.get(tile_name, "default")  # not a param of every unit: may be odd
            if plain and type(tile) is str:
                pair = shared.get((unit, label, tile))
                if pair is None:
                    pair = shared[unit, label, tile] = (
                        unit, LayerChoice(*astuple_format(label), tile))
            else:  # equal but not identical values (1.0 and 1) must stay as given
                pair = (unit, LayerChoice(*astuple_format(label), tile))
            layers.append(pair)
        return Candidate(arch, tuple(layers), params.get("threads", self.threads_choices[-1]))

    def _read_layout(self) -> ParamLayout:
        deepest = {f"s{i}.depth": max(stage.depths) for i, stage in enumerate(self.config.stages)}
        self._layout = ParamLayout(self.iter_distributions(deepest), len(self.config.stages),
                                   units(self.config.max_arch()), self.unit_formats)
        return self._layout

    def _decode_per_unit(self, params: Mapping[str, Any]) -> Candidate:
        """Params written before palettes (a ``{unit}.prec`` / ``.sparsity`` per unit, as in
        older runs, bundles and measurement files): still readable, each unit as it says."""
        try:
            stages = []
            for i in range(len(self.config.stages)):
                depth = params[f"s{i}.depth"]
                stages.append(StageChoice(
                    params[f"s{i}.width"],
                    tuple(params[f"s{i}.b{j}.kernel"] for j in range(depth)),
                    tuple(params[f"s{i}.b{j}.expand"] for j in range(depth))))
            arch = Arch(params["stem.width"], tuple(stages), params["head.width"])
            layers = tuple(sorted((u, LayerChoice(params[f"{u}.prec"],
                                                  params.get(f"{u}.sparsity", "dense"),
                                                  params.get(f"{u}.tile", "default")))
                                  for u in units(arch)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"space {self.name}: missing params [{exc}]") from None
        for _, choice in layers:
            Precision.parse(choice.precision)
            if choice.sparsity not in SPARSITY_CHOICES:
                raise ValueError(f"space {self.name}: sparsity {choice.sparsity!r} not one of "
                                 f"{list(SPARSITY_CHOICES)}")
        return Candidate(arch, layers, params.get("threads", self.threads_choices[-1]))

    def encode(self, candidate: Candidate) -> dict[str, Any]:
        """The params of ``candidate``: its distinct formats as the palette (one every unit can
        run first). ValueError if it has more than ``max_formats`` formats or none that every
        unit runs."""
        used = candidate.formats()
        first = next((f for f in used if f in self.common_formats), None)
        if first is None or len(used) > self.max_formats:
            raise ValueError(f"space {self.name}: formats {used} do not form a palette of at "
                             f"most {self.max_formats} with one of {list(self.common_formats)}")
        palette = [first] + [f for f in used if f != first]
        palette += [first] * (self.max_formats - len(palette))
        params: dict[str, Any] = {}
        if len(self.threads_choices) > 1:
            params["threads"] = candidate.threads
        params.update({f"fmt.{slot}": label for slot, label in enumerate(palette)})
        params["stem.width"] = candidate.arch.stem_width
        for i, stage in enumerate(candidate.arch.stages):
            params[f"s{i}.width"] = stage.width
            params[f"s{i}.depth"] = stage.depth
            for j in range(stage.depth):
                params[f"s{i}.b{j}.kernel"] = stage.kernels[j]
                params[f"s{i}.b{j}.expand"] = stage.expands[j]
        params["head.width"] = candidate.arch.head_width
        for unit, choice in candidate.layers:
            params[f"{unit}.fmt"] = palette.index(Format(choice.precision, choice.sparsity).label)
            params[f"{unit}.tile"] = choice.tile
        active = self.active_names(params)
        return {k: v for k, v in params.items() if k in active}

    def seed_params(self) -> list[dict[str, Any]]:
        """Params a search evaluates first: the largest, middle and smallest architectures,
        each uniformly in fp32 and in int8 (the back-end's stock formats), where offered."""
        cfg = self.config
        seeds = []
        for label in ("w8a8", "w32a32"):
            if label not in self.common_formats:
                continue
            for arch in (cfg.mid_arch(), cfg.max_arch(), cfg.min_arch()):
                seeds.append(self.encode(self.uniform(arch, label)))
        return seeds

    def uniform(self, arch: Arch, label: str, threads: int | None = None, *,
                fallback: str | None = None) -> Candidate:
        """``arch`` with every unit in format ``label`` where it can run it, else in
        ``fallback`` (default: ``label`` if every unit runs it, else the first common format):
        the seeds a search starts from."""
        if fallback is None:
            fallback = label if label in self.common_formats else self.common_formats[0]
        layers = tuple(sorted((u, LayerChoice(*astuple_format(
            label if label in self.unit_formats(u) else fallback))) for u in units(arch)))
        return Candidate(arch, layers, threads or self.threads_choices[-1])

    # ------------------------------------------------------------------ lowering
    def to_ops(self, candidate: Candidate, input_shape: Sequence[int] | None = None) -> list[Op]:
        return self._lowering(input_shape).ops(candidate)

    def op_batch(self, candidates: Sequence[Candidate],
                 input_shape: Sequence[int] | None = None) -> OpBatch:
        """``OpBatch.from_oplists([to_ops(c, input_shape) for c in candidates])``, fast: from
        rows memoised across calls (see ``codesign.search_spaces.mbconv_lowering``), the op records
        built only if read."""
        return self._lowering(input_shape).op_batch(candidates)

    def _lowering(self, input_shape: Sequence[int] | None) -> MBConvLowering:
        shape = tuple(input_shape or self.deploy_input_shape)
        lowering = self._lowerings.get(shape)
        if lowering is None:
            lowering = self._lowerings[shape] = MBConvLowering(self.config, self.backend, shape)
        return lowering

