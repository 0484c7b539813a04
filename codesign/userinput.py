"""Parsing and validation of what users type: integers, durations, shapes, ``MODULE:FACTORY``
references. The CLI and the library entry points share these, so a rule is stated once.

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
_INTEGER = re.compile(r"[ \t]*[+-]?[0-9]+[ \t]*")  # ASCII: int() would also take other digits
SEED_MAX = 2**32 - 1  # numpy.random.RandomState (Optuna's samplers) takes no larger seed


class BadInput(ValueError):
    """Input a user can fix; the message is shown as is, without a traceback."""


def parse_duration(text: Any, what: str, *, bare_unit: str | None = None) -> float:
    """``10ms``, ``10 ms``, ``2.5ms``, ``500us``, ``0.01s`` -> seconds: the one duration rule.

    Zero, a negative value, an unknown unit or a number without a unit is bad input; with
    ``bare_unit`` a number without a unit means that unit instead (``--timeout 600``: seconds).
    """
    if not isinstance(text, str):
        raise BadInput(f"{what} must be text like 10ms, got {text!r}")
    bare_number = re.match(r"^\s*[0-9.eE+-]+\s*$", text)
    match = _BUDGET.match(f"{text.strip()}{bare_unit}" if bare_unit and bare_number else text)
    if not match:
        if re.match(r"^\s*-", text):
            raise BadInput(f"{what} {text!r} is negative; give a positive duration like 10ms")
        if bare_number and not bare_unit:
            raise BadInput(f"{what} {text!r} has no unit; valid units: "
                           f"{', '.join(BUDGET_UNITS)} (e.g. 10ms)")
        raise BadInput(f"{what} {text!r} is not a duration like 10ms, 2.5ms, 500us or 0.01s")
    value, unit = float(match[1]), _UNIT_ALIASES.get(match[2], match[2])
    if unit not in BUDGET_UNITS:
        raise BadInput(f"{what} {text!r} has unknown unit {unit!r}; valid units: "
                       f"{', '.join(BUDGET_UNITS)}")
    seconds = value * BUDGET_UNITS[unit]
    if not math.isfinite(seconds) or seconds <= 0:
        raise BadInput(f"{what} {text!r} must be a positive duration")
    return seconds


def parse_budget(text: str) -> float:
    """A latency budget (``10ms``) -> seconds; ``parse_duration``'s rules, a unit required."""
    return parse_duration(text, "budget")


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


def parse_int(value: Any, flag: str, *, low: int = 0, high: int | None = None,
              noun: str | None = None, text: bool = True) -> int:
    """``value`` (text as typed, or an int) -> an int in [low, high]: the one integer rule.

    Decimal digits with an optional sign only, so ``1.5``, ``1e3``, ``0x10``, ``1_000``, an
    empty string and a bool are bad input, named by ``flag`` (and ``noun``, what it must be).
    ``text=False``: an int is wanted (a library caller's, already parsed), text is bad input.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number: int | None = value
    elif text and isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    else:
        number = None
    if number is None or number < low or (high is not None and number > high):
        wanted = noun or (f"an integer >= {low}" if high is None
                          else f"an integer from {low} to {high}")
        raise BadInput(f"{flag} must be {wanted}, got {value!r}")
    return number


def parse_seed(value: Any, flag: str = "--seed", *, text: bool = True) -> int:
    """A random seed: what NumPy's and Optuna's generators take, 0 to 2**32 - 1."""
    return parse_int(value, flag, low=0, high=SEED_MAX, text=text)


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
