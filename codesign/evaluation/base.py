"""The evaluator protocol: how accurate is a candidate, measured honestly.

Contract for every evaluator:
- ``evaluate(candidate, split="val")`` scores the candidate on ``split``: ``"val"`` drives the
  search (every trial); ``"test"`` is held out and reported for the final front members only, so
  the reported accuracy was not selected on. Any other split is a ValueError.
- Nothing is fitted on val or test: weights, BatchNorm statistics and quantization scales come
  from training data only.
- The result carries a 95% interval: a seeded percentile bootstrap over the per-example
  correctness (``bootstrap_interval``), so two candidates whose intervals overlap are not
  distinguishable on this split.
- The same candidate gives the same result (deterministic), so results can be cached and
  evaluations can run in any process that can rebuild the evaluator.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

SPLITS = ("val", "test")
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class AccuracyResult:
    """Top-1 accuracy on ``split`` of ``n`` examples, with its 95% ``interval`` (lo, hi).

    ``n == 0`` means the number of examples is unknown (a user function returned a bare float);
    the interval is then the point (accuracy, accuracy) and says nothing about uncertainty.
    """

    accuracy: float
    interval: tuple[float, float]
    n: int
    split: str


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)} (val drives the "
                         "search, test is reported for front members only)")
    return split


def bootstrap_interval(correct: np.ndarray, seed: int = 0,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``correct`` (0/1 per example).

    Seeded, so the same inputs give the same interval. An empty array gives (nan, nan).
    """
    correct = np.asarray(correct, dtype=np.float64).ravel()
    n = correct.size
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # resampling the count of correct examples is the same as resampling the examples
    means = rng.binomial(n, correct.mean(), size=resamples) / n
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def result_from_correct(correct: np.ndarray, split: str, seed: int = 0) -> AccuracyResult:
    """An ``AccuracyResult`` from per-example correctness (bootstrap interval, seeded)."""
    correct = np.asarray(correct, dtype=np.float64).ravel()
    return AccuracyResult(float(correct.mean()) if correct.size else float("nan"),
                          bootstrap_interval(correct, seed), int(correct.size), split)


class Evaluator(abc.ABC):
    """Scores candidates by accuracy (see the module docstring for the contract)."""

    name: str = "evaluator"

    @abc.abstractmethod
    def evaluate(self, candidate: Any, *, split: str = "val") -> AccuracyResult:
        """Accuracy of ``candidate`` on ``split`` in {"val", "test"}; ValueError otherwise."""

    def prepare(self) -> None:
        """Build shared state (e.g. train and cache weights) once, before parallel workers
        start, so they only load it. The default does nothing."""

    def shared_state_key(self) -> str | None:
        """Names the read-only state every copy of this evaluator needs (e.g. trained weights)
        and that can be built once and shipped to other processes and nodes instead of rebuilt
        there; equal keys mean interchangeable states. None (the default): no such state."""
        return None

    def shared_state(self) -> Any:
        """That state, built (or loaded) now; only when ``shared_state_key`` is not None."""
        raise ValueError(f"evaluator {self.name} has no shared state")

    def use_shared_state(self, key: str, state: Any) -> None:
        """Adopt the ``shared_state`` of an evaluator whose ``shared_state_key`` is ``key``."""
        raise ValueError(f"evaluator {self.name} takes no shared state (got {key!r})")


class FunctionEvaluator(Evaluator):
    """A user's ``MODULE:FUNC`` callable ``func(candidate, split) -> float | AccuracyResult``.

    A float is taken as the accuracy with ``interval=(acc, acc)`` and ``n=0`` (the function did
    not say how many examples it used, so no uncertainty can be stated); return an
    ``AccuracyResult`` to report the interval and ``n``. An accuracy outside [0, 1], a result of
    another type, or an ``AccuracyResult`` for another split is a ValueError.
    """

    def __init__(self, func: Callable[[Any, str], Any], *, name: str = "") -> None:
        self.func = func
        self.name = name or getattr(func, "__qualname__", repr(func))

    def evaluate(self, candidate: Any, *, split: str = "val") -> AccuracyResult:
        check_split(split)
        out = self.func(candidate, split)
        if isinstance(out, AccuracyResult):
            if out.split != split:
                raise ValueError(f"evaluator {self.name} returned a result for split "
                                 f"{out.split!r} when asked for {split!r}")
            result = out
        elif isinstance(out, (int, float, np.floating, np.integer)) and not isinstance(out, bool):
            acc = float(out)
            result = AccuracyResult(acc, (acc, acc), 0, split)
        else:
            raise ValueError(f"evaluator {self.name} returned {type(out).__name__}; expected a "
                             "float accuracy or an AccuracyResult")
        if not 0.0 <= result.accuracy <= 1.0:
            raise ValueError(f"evaluator {self.name} returned accuracy {result.accuracy}, "
                             "outside [0, 1]")
        return result
