"""The points of the MBConv space (``codesign.search_spaces.mbconv``): an architecture
(``Arch``: stem width, per-stage width and per-block kernel and expansion, head width), what each
precision unit runs at (``LayerChoice``), the numeric formats units share (``Format``) and the
whole candidate (``Candidate``), with the unit names every layer of the space is keyed by.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


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
class Format:
    """One numeric format a member's layers can share: a precision and a sparsity pattern
    (the pattern applies to the unit's GEMM layers: its 1x1 convs and linears; depthwise convs
    have no sparse kernel and stay dense). Its ``label`` is ``w8a8`` or ``w32a32+2:4``."""

    precision: str
    sparsity: str = "dense"

    @property
    def label(self) -> str:
        return self.precision if self.sparsity == "dense" else f"{self.precision}+{self.sparsity}"

    @classmethod
    def parse(cls, label: str) -> "Format":
        precision, _, sparsity = label.partition("+")
        return cls(precision, sparsity or "dense")


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

    def formats(self) -> list[str]:
        """The distinct formats of the member's units (labels, in unit order)."""
        seen: dict[str, None] = {}
        for unit in units(self.arch):
            choice = self.layer(unit)
            seen[Format(choice.precision, choice.sparsity).label] = None
        return list(seen)


def astuple_format(label: str) -> tuple[str, str]:
    fmt = Format.parse(label)
    return fmt.precision, fmt.sparsity


def units(arch: Arch) -> list[str]:
    names = ["stem"]
    for i, stage in enumerate(arch.stages):
        names += [f"s{i}.b{j}" for j in range(stage.depth)]
    return names + ["head", "feature", "classifier"]
