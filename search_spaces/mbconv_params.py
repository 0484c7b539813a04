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
from itertools import accumulate
from typing import Any, Callable, Iterable, Mapping

_BLOCK = re.compile(r"s(\d+)\.b(\d+)\.")
_DEPTH = re.compile(r"s(\d+)\.depth$")
_UNIT_BLOCK = re.compile(r"s(\d+)\.b(\d+)$")
_PLAIN = frozenset({int, str})


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
        blocks: list[list[list[tuple[str, tuple]]]] = [[] for _ in range(n_stages)]
        for name, dist in distributions:
            choices = tuple(dist.choices)
            block, depth = _BLOCK.match(name), _DEPTH.match(name)
            if block:
                stage, j = int(block[1]), int(block[2])
                while len(blocks[stage]) <= j:
                    blocks[stage].append([])
                blocks[stage][j].append((name, choices))
            elif depth:
                self.depth[int(depth[1])] = (name, choices)
            else:
                self.always.append((name, choices))
        # per stage: its block params in order, and [depth] -> how many of them a stage that
        # deep has (lists linear in the depth: a config may offer deep stages)
        self.block_params = [[p for block in stage for p in block] for stage in blocks]
        self.block_ends = [list(accumulate((len(b) for b in stage), initial=0))
                           for stage in blocks]
        # per stage: its width and depth names, and its blocks' kernel and expand names
        self.stages = [(f"s{i}.width", f"s{i}.depth", tuple(f"s{i}.b{j}.kernel" for j in range(n)),
                        tuple(f"s{i}.b{j}.expand" for j in range(n)))
                       for i, n in enumerate(len(stage) for stage in blocks)]
        self._units = []
        for unit in sorted(unit_names):  # every stage deepest; a member's units are a subsequence
            block = _UNIT_BLOCK.match(unit)
            self._units.append(((int(block[1]), int(block[2])) if block else None, (
                unit, f"{unit}.fmt", f"{unit}.tile", frozenset(unit_formats(unit)))))
        self._units_at: dict[tuple, list[tuple[str, str, str, frozenset[str]]]] = {}

    def units(self, depths: tuple[int, ...]) -> list[tuple[str, str, str, frozenset[str]]]:
        """(unit, its format param, its tile param, the labels it runs) of a member with stages
        ``depths`` deep, sorted by unit."""
        units = self._units_at.get(depths)
        if units is None:
            units = self._units_at[depths] = [names for where, names in self._units
                                              if where is None or where[1] < depths[where[0]]]
        return units

    def valid(self, params: Mapping[str, Any]) -> bool:
        try:
            for name, choices in self.always:
                value = params[name]
                if type(value) not in _PLAIN or value not in choices:
                    return False
            for (name, choices), block_params, ends in zip(self.depth, self.block_params,
                                                           self.block_ends):
                depth = params[name]
                if type(depth) is not int or depth not in choices:
                    return False
                for name, choices in block_params[:ends[depth]]:
                    value = params[name]
                    if type(value) not in _PLAIN or value not in choices:
                        return False
        except KeyError:
            return False
        return True
