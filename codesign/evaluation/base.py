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
    """The quality of a candidate on ``split`` of ``n`` examples, with its 95% ``interval``.

    ``metric`` names what ``accuracy`` holds (default ``"accuracy"``: top-1 accuracy in [0, 1];
    the transformer space's evaluator reports ``"perplexity"``, lower is better, and ``n``
    counts predicted tokens); ``higher_is_better`` is its direction.
    ``n == 0`` means the number of examples is unknown (a user function returned a bare float);
    the interval is then the point (accuracy, accuracy) and says nothing about uncertainty.
    """

    accuracy: float
    interval: tuple[float, float]
    n: int
    split: str
    metric: str = "accuracy"
    higher_is_better: bool = True


MetricResult = AccuracyResult  # the name for evaluators whose metric is not accuracy


def metric_keys(metric: str = "accuracy") -> dict[str, str]:
    """The record keys a metric is written under (pareto.json, pareto.csv, trial attributes):
    ``accuracy`` keeps its historical names (``accuracy``, ``accuracy_interval``,
    ``test_accuracy``...), any other metric the same pattern with its own name."""
    return {"value": metric, "interval": f"{metric}_interval", "test": f"test_{metric}",
            "test_interval": f"test_{metric}_interval", "split": f"{metric}_split"}


def metric_of(evaluator: Any) -> tuple[str, bool]:
    """(metric name, higher is better) an evaluator declares; accuracy, higher, by default."""
    return (getattr(evaluator, "metric", "accuracy"),
            bool(getattr(evaluator, "higher_is_better", True)))


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


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """(accuracy of a - accuracy of b, 95% lower, upper): a paired percentile bootstrap that
    resamples the same examples for both, the comparison a 360-image test split supports."""
    a = np.asarray(correct_a, dtype=np.float64).ravel()
    b = np.asarray(correct_b, dtype=np.float64).ravel()
    if a.size != b.size or a.size == 0:
        raise ValueError(f"paired examples needed, got {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(resamples, a.size))
    diffs = (a[idx] - b[idx]).mean(axis=1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def result_from_correct(correct: np.ndarray, split: str, seed: int = 0) -> AccuracyResult:
    """An ``AccuracyResult`` from per-example correctness (bootstrap interval, seeded)."""
    correct = np.asarray(correct, dtype=np.float64).ravel()
    return AccuracyResult(float(correct.mean()) if correct.size else float("nan"),
                          bootstrap_interval(correct, seed), int(correct.size), split)


class Evaluator(abc.ABC):
    """Scores candidates by accuracy (see the module docstring for the contract), or by another
    metric it declares in ``metric`` with its direction in ``higher_is_better`` (the search then
    optimises that direction and labels results with that name)."""

    name: str = "evaluator"
    metric: str = "accuracy"
    higher_is_better: bool = True

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
        # a function may declare another metric: func.metric = "perplexity",
        # func.higher_is_better = False (then no [0, 1] range check)
        self.metric, self.higher_is_better = metric_of(func)

    def evaluate(self, candidate: Any, *, split: str = "val") -> AccuracyResult:
        check_split(split)
        out = self.func(candidate, split)
        if isinstance(out, AccuracyResult):
            if out.split != split:
                raise ValueError(f"evaluator {self.name} returned a result for split "
                                 f"{out.split!r} when asked for {split!r}")
            if out.metric != self.metric:
                raise ValueError(f"evaluator {self.name} returned {out.metric!r}, but declares "
                                 f"{self.metric!r}")
            result = out
        elif isinstance(out, (int, float, np.floating, np.integer)) and not isinstance(out, bool):
            acc = float(out)
            result = AccuracyResult(acc, (acc, acc), 0, split, self.metric, self.higher_is_better)
        else:
            raise ValueError(f"evaluator {self.name} returned {type(out).__name__}; expected a "
                             f"float {self.metric} or an AccuracyResult")
        if self.metric == "accuracy" and not 0.0 <= result.accuracy <= 1.0:
            raise ValueError(f"evaluator {self.name} returned accuracy {result.accuracy}, "
                             "outside [0, 1]")
        return result
