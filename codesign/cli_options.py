"""How the ``codesign`` command line reads its options: the parser, the option types and the
options several subcommands share, each declared once (the subcommands: ``cli_parser``).

Every typed option converts its text with one of ``codesign.userinput``'s parsers while the
command line is parsed, so ``--warmup -1`` is refused the same way by every subcommand that has
``--warmup``, with the one-line message ``codesign measure: error: --warmup must be an integer
>= 0, got '-1'`` (exit 2), before anything is imported or run.
"""
from __future__ import annotations

import argparse
import functools
from typing import Any, Callable

from codesign.userinput import BadInput, parse_duration, parse_int, parse_seed


class _Rejected(Exception):
    """An option's text failed its parser. Not a ValueError: argparse would replace the
    parser's message by its generic 'invalid value'."""


class OptionType:
    """argparse ``type=``: ``convert(text, flag)``; ``kind`` says what it reads (for tests)."""

    def __init__(self, kind: str, convert: Callable[[Any, str], Any], flag: str) -> None:
        self.kind, self.convert, self.flag = kind, convert, flag
        self.__name__ = kind  # argparse names the type in some of its own messages

    def __call__(self, text: str) -> Any:
        try:
            return self.convert(text, self.flag)
        except BadInput as exc:
            raise _Rejected(str(exc)) from None


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors and rejected option values are one line and exit 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        raise BadInput(f"{self.prog}: {message}")

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        try:
            return super().parse_known_args(args, namespace)
        except _Rejected as exc:  # the innermost (sub)parser names the command
            raise BadInput(f"{self.prog}: error: {exc}") from None


def integer(low: int, high: int | None = None, noun: str | None = None):
    """An integer option in [low, high] (``parse_int``); ``noun`` what its message says it is."""
    return "integer", functools.partial(parse_int, low=low, high=high, noun=noun)


def duration(bare_unit: str | None = None):
    """A duration option with a unit (``parse_duration``), or a bare number of ``bare_unit``."""
    return "duration", functools.partial(parse_duration, bare_unit=bare_unit)


def _parse_fraction(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"{flag} must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN too
        raise BadInput(f"{flag} must be in [0, 1], got {text!r}")
    return value


SEED = ("integer", parse_seed)
FRACTION = ("number", _parse_fraction)
COUNT = integer(1)  # how many of something: at least one
OPTIONAL_COUNT = integer(0)  # how many of something optional: zero allowed


def option(parser: argparse.ArgumentParser, flag: str, parse: tuple | None = None,
           **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(flag, ...)``; ``parse`` (``integer(...)``, ``duration()``, ``SEED``,
    ...) converts and checks the value, its message naming ``flag``."""
    if parse is not None:
        kwargs["type"] = OptionType(parse[0], parse[1], flag)
    return parser.add_argument(flag, **kwargs)


_DEVICE_HELP = "catalog name (codesign devices) or YAML path"
_BACKEND_HELP = "one of the device's back-ends (default: its first, xnnpack on phones)"
# Options that read the same wherever they appear; a subcommand may override default or help.
SHARED: dict[str, dict[str, Any]] = {
    "--device": dict(required=True, help=_DEVICE_HELP),
    "--backend": dict(default=None, help=_BACKEND_HELP),
    "--space": dict(default="mbconv", help="mbconv or MODULE:FACTORY"),
    "--seed": dict(parse=SEED, default=0, help="random seed (default 0)"),
    "--threads": dict(parse=COUNT, default=1, help="thread count (default 1)"),
    "--sampler": dict(default="tpe", help="tpe (default), nsga2 or random"),
    "--evaluator": dict(default=None, help="MODULE:FUNC(candidate, split) -> accuracy"),
    "--ray-address": dict(default=None, help="join this Ray cluster (default: a local Ray)"),
    "--trials": dict(parse=COUNT, default=50, help="total trials (default 50)"),
    "--cost-model": dict(default="analytic",
                         help="analytic (default), learned or hybrid (a model from calibrate "
                              "--save), or a plug-in's registered name"),
    "--cost-model-file": dict(default=None,
                              help="learned/hybrid model JSON (default: <cache>/models/"
                                   "<device>-<backend>-<kind>.json; <cache> is "
                                   "$CODESIGN_CACHE_DIR or the user cache directory)"),
    "--json": dict(action="store_true", help="print JSON instead of the table"),
    # measure and bundle: N candidates lowered and timed in rounds of warm-up + timed runs
    "--n": dict(parse=COUNT, required=True, help="candidates"),
    "--warmup": dict(parse=OPTIONAL_COUNT, default=5, help="untimed runs (default 5)"),
    "--repeats": dict(parse=COUNT, default=30, help="timed runs (default 30)"),
    "--rounds": dict(parse=COUNT, default=2, help="rounds per candidate (default 2)"),
}


def shared(parser: argparse.ArgumentParser, *flags: str, **overrides: Any) -> None:
    """Add the ``SHARED`` options ``flags`` (in that order), ``overrides`` applied to each."""
    for flag in flags:
        option(parser, flag, **{**SHARED[flag], **overrides})


def add_candidate_timing(parser: argparse.ArgumentParser, *, threads: str, warmup: str,
                         repeats: str, rounds: str) -> None:
    """``measure``'s and ``bundle``'s: which candidates (seeded) and how each is timed."""
    shared(parser, "--seed", help="sampling and weight seed (default 0)")
    shared(parser, "--threads", help=threads)
    shared(parser, "--warmup", help=warmup)
    shared(parser, "--repeats", help=repeats)
    shared(parser, "--rounds", help=rounds)
