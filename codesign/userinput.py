"""Parsing and validation of what users type: budgets, shapes, ``MODULE:FACTORY`` references.

Every function raises ``BadInput`` (a ValueError) with a one-line message naming the problem and,
where there is a closed set, the valid choices. The CLI turns it into exit code 2.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from codesign.search_spaces.references import UnresolvedReference, import_callable

_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµμ]+)\s*$")
BUDGET_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_UNIT_ALIASES = {"μs": "µs"}  # Greek small mu (U+03BC), what most keyboards type, for micro


class BadInput(ValueError):
    """Input a user can fix; the message is shown as is, without a traceback."""


def parse_budget(text: str) -> float:
    """``10ms``, ``10 ms``, ``2.5ms``, ``500us``, ``0.01s`` -> seconds.

    A number without a unit, zero, a negative value or an unknown unit is bad input.
    """
    if not isinstance(text, str):
        raise BadInput(f"budget must be text like 10ms, got {text!r}")
    match = _BUDGET.match(text)
    if not match:
        if re.match(r"^\s*-", text):
            raise BadInput(f"budget {text!r} is negative; give a positive latency like 10ms")
        if re.match(r"^\s*[0-9.eE+-]+\s*$", text):
            raise BadInput(f"budget {text!r} has no unit; valid units: "
                           f"{', '.join(BUDGET_UNITS)} (e.g. 10ms)")
        raise BadInput(f"budget {text!r} is not a latency like 10ms, 2.5ms, 500us or 0.01s")
    value, unit = float(match[1]), _UNIT_ALIASES.get(match[2], match[2])
    if unit not in BUDGET_UNITS:
        raise BadInput(f"budget {text!r} has unknown unit {unit!r}; valid units: "
                       f"{', '.join(BUDGET_UNITS)}")
    seconds = value * BUDGET_UNITS[unit]
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadInput(f"budget {text!r} must be a positive latency")
    return seconds


def parse_shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224`` -> (1, 3, 224, 224); every dimension a positive integer."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise BadInput(f"input shape {text!r} must be comma-separated positive integers, "
                       "e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise BadInput(f"input shape {text!r} must be comma-separated positive integers, "
                       "e.g. 1,3,224,224")
    if math.prod(dims) > 2**31:
        raise BadInput(f"input shape {text!r} is too large ({math.prod(dims)} elements)")
    return dims


def parse_positive_int(text: Any, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise BadInput(f"{what} must be a positive integer, got {text!r}") from None
    if value <= 0 or str(value) != str(text).strip().lstrip("+"):
        raise BadInput(f"{what} must be a positive integer, got {text!r}")
    return value


def load_reference(ref: str, what: str) -> Callable:
    """Import ``MODULE:NAME`` (the current directory is importable) and return the attribute."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise BadInput(f"{what} {ref!r} must be MODULE:NAME, e.g. mypkg.models:build")
    try:
        return import_callable(*ref.split(":"))
    except UnresolvedReference as exc:
        raise BadInput(f"{what} {ref!r}: {exc}") from None


def build_user_model(ref: str):
    """Call a ``MODULE:FACTORY`` and check it returned a ``torch.nn.Module``."""
    import torch

    factory = load_reference(ref, "--model")
    try:
        model = factory()
    except Exception as exc:
        raise BadInput(f"--model {ref!r}: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise BadInput(f"--model {ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
