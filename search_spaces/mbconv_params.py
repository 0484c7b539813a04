"""The MBConv space's parameter structure, read once from its distributions, for a fast decode.

``SearchSpace.check_params`` walks the define-by-run distributions, building every
``CategoricalDistribution`` again for each candidate; that walk was most of the cost of decoding.
The MBConv space's structure is fixed: which parameters exist depends only on the stage depths,
and every parameter's choices never change. ``ParamLayout`` holds that structure as tables, so a
decode checks a params mapping with dictionary lookups and reads each unit's values by
precomputed names.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple

_BLOCK = re.compile(r"s(\d+)\.b(\d+)\.")
_DEPTH = re.compile(r"s(\d+)\.depth$")
_PLAIN = frozenset({int, str})


class UnitNames(NamedTuple):
    """A unit's parameter names and the format labels it runs; ``stage``/``block`` None for
    the units outside the stages."""

    unit: str
    stage: int | None
    block: int | None
    fmt: str
    tile: str
    runnable: frozenset[str]


class ParamLayout:
    """Which parameters a member of a fixed-structure space has, by stage depth.

    Built from ``distributions``: every (name, distribution) the space yields when each stage
    is at its deepest. ``valid(params)`` is True when every parameter active for ``params`` is
    present, a plain ``int`` or ``str``, and one of its choices: then ``check_params`` passes,
    and values equal to each other are interchangeable (as 24 and 24.0 are not: they print
    differently in a candidate's key). Where it is False the caller runs ``check_params``.
    """

    def __init__(self, distributions: Iterable[tuple[str, Any]], n_stages: int,
                 unit_names: Iterable[str], unit_formats: Callable[[str], Iterable[str]]) -> None:
        self.always: list[tuple[str, tuple]] = []
        self.depth: list[tuple[str, tuple]] = [("", ())] * n_stages
        self.blocks: list[list[list[tuple[str, tuple]]]] = [[] for _ in range(n_stages)]
        for name, dist in distributions:
            choices = tuple(dist.choices)
            block, depth = _BLOCK.match(name), _DEPTH.match(name)
            if block:
                stage, j = int(block[1]), int(block[2])
                while len(self.blocks[stage]) <= j:
                    self.blocks[stage].append([])
                self.blocks[stage][j].append((name, choices))
            elif depth:
                self.depth[int(depth[1])] = (name, choices)
            else:
                self.always.append((name, choices))
        # sorted names with every stage deepest: a member's units, sorted, are a subsequence
        self.units: list[UnitNames] = []
        for unit in sorted(unit_names):
            block = re.match(r"s(\d+)\.b(\d+)$", unit)
            stage, j = (int(block[1]), int(block[2])) if block else (None, None)
            self.units.append(UnitNames(unit, stage, j, f"{unit}.fmt", f"{unit}.tile",
                                        frozenset(unit_formats(unit))))
        # per stage: its width and depth names, and each block's kernel and expand names
        self.stages = [(f"s{i}.width", f"s{i}.depth",
                        [(f"s{i}.b{j}.kernel", f"s{i}.b{j}.expand")
                         for j in range(len(self.blocks[i]))]) for i in range(n_stages)]

    def valid(self, params: Mapping[str, Any]) -> bool:
        try:
            for name, choices in self.always:
                value = params[name]
                if type(value) not in _PLAIN or value not in choices:
                    return False
            for (name, choices), blocks in zip(self.depth, self.blocks):
                depth = params[name]
                if type(depth) is not int or depth not in choices:
                    return False
                for block in blocks[:depth]:
                    for name, choices in block:
                        value = params[name]
                        if type(value) not in _PLAIN or value not in choices:
                            return False
        except KeyError:
            return False
        return True
