"""The MBConv space's config (``configs/spaces/mbconv.yaml``): the choices per stage, the
precisions each back-end offers, the sparsity patterns and named tiles, read and checked by
``load_mbconv_config`` (every problem a ``SpecError`` naming the file and field).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from codesign.cost_models.backends import Precision
from codesign.cost_models.devices import CONFIG_DIR, ConfigReader, load_yaml
from codesign.kernels.specs import TileSpec
from codesign.search_spaces.mbconv_candidate import Arch, StageChoice
from codesign.search_spaces.mbconv_lowering import SPARSITY_CHOICES

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
    # the data the supernet trains and is scored on: a built-in task or a user's MODULE:FACTORY
    # (mbconv_training.config_for_task shapes the input and classifier to it)
    task: str = "digits"

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

    def mid_arch(self) -> "Arch":
        """Every choice at its middle option (the lower middle of an even count)."""
        def mid(choices):
            return sorted(choices)[(len(choices) - 1) // 2]

        return Arch(mid(self.stem_widths), tuple(
            StageChoice(mid(s.widths), (mid(s.kernels),) * mid(s.depths),
                        (mid(s.expands),) * mid(s.depths)) for s in self.stages),
            mid(self.head_widths))

    def min_arch(self) -> "Arch":
        return Arch(min(self.stem_widths), tuple(
            StageChoice(min(s.widths), (min(s.kernels),) * min(s.depths),
                        (min(s.expands),) * min(s.depths)) for s in self.stages),
            min(self.head_widths))


def _ints(r: ConfigReader, key: str, *, minimum: int = 1, multiple_of: int = 1) -> tuple[int, ...]:
    """A non-empty list of integers >= ``minimum`` (multiples of ``multiple_of``)."""
    values = r.list(key)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or v % multiple_of:
            rule = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise r.error(f"expected integers >= {minimum}{rule}, got {v!r}", key)
    return tuple(values)


def _choices(r: ConfigReader, key: str, valid) -> tuple[str, ...]:
    values = r.list(key)
    unknown = [v for v in values if not isinstance(v, str) or v not in valid]
    if unknown:
        raise r.error(f"unknown {unknown}; valid: {', '.join(valid)}", key)
    return tuple(values)


def _precisions(r: ConfigReader, key: str) -> tuple[str, ...]:
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
    r = ConfigReader(str(path), data)
    stages = []
    for i, raw in enumerate(r.list("stages")):
        st = ConfigReader(str(path), raw, f"stages[{i}]")
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
