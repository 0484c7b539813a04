"""Every registered evaluator honours the ``Evaluator`` contract (codesign/evaluation/base.py).

Written once, run over ``codesign.registry.EVALUATORS`` (optuna's ``pytest_samplers.py``
pattern). The checks are plain functions (``CHECKS``) taking ``(space, evaluator, foreign)``, so
a plug-in's own test can run them on its evaluator.

An evaluator that trains a supernet is checked on a tiny instance (``TINY``: a small space
config, a few dozen training steps into a temporary cache, a few seconds). Its registered factory
is checked apart: on the registered space that names it, it makes an evaluator of the same class
without training anything (``check_factory_is_lazy``). A plug-in evaluator with no ``TINY``
entry is checked as its factory makes it, on the registered space that names it.
"""
from __future__ import annotations

import math
import pickle
from typing import Any, Callable

import numpy as np
import pytest

from codesign.context import load_evaluator, load_space
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.evaluation.base import AccuracyResult, Evaluator
from codesign.registry import EVALUATORS, SPACES

DEVICE = "pixel8"
# Where each metric lives: top-1 accuracy is a fraction, perplexity is at least 1 (a model that
# predicts every token with certainty). A metric not listed only has to be finite.
METRIC_RANGE = {"accuracy": (0.0, 1.0), "perplexity": (1.0, math.inf)}
PICKLE_BYTES = 20_000  # the space and a few numbers: never weights or data


def _tiny_supernet():
    from codesign.evaluation.supernet_evaluator import SupernetEvaluator
    from tests.export_helpers import TINY_TRAIN, small_space

    space = small_space(load_backend("xnnpack"))
    return space, SupernetEvaluator(space, seed=0, train=TINY_TRAIN)


def _tiny_perplexity():
    from codesign.evaluation.perplexity import PerplexityEvaluator
    from codesign.search_spaces.transformer import TransformerSpace
    from tests.transformer_helpers import tiny_config, tiny_train

    space = TransformerSpace(load_backend("codesign"), config=tiny_config())
    return space, PerplexityEvaluator(space, seed=0, train=tiny_train(), threads=1,
                                      max_tokens=4096)


TINY: dict[str, Callable[[], tuple[Any, Evaluator]]] = {
    "supernet": _tiny_supernet, "perplexity": _tiny_perplexity}


def _space_naming(name: str):
    """The registered space whose default evaluator is ``name`` (None: no space names it)."""
    for space_name, entry in SPACES.items():
        if entry.evaluator == name:
            return load_space(space_name, load_backend(load_device(DEVICE).backends[0]),
                              load_device(DEVICE))
    return None


def _foreign_candidates(space) -> list[Any]:
    """A candidate of every registered space of another type than ``space``."""
    device = load_device(DEVICE)
    out = []
    for name in SPACES.names():
        other = load_space(name, load_backend(device.backends[0]), device)
        if not isinstance(space, type(other)) and not isinstance(other, type(space)):
            out.append(other.decode(other.sample(np.random.default_rng(0))))
    return out


def _candidate(space, seed: int = 0):
    return space.decode(space.sample(np.random.default_rng(seed)))


# ------------------------------------------------------------------------------ checks
def check_declares_its_metric(space, evaluator, foreign) -> None:
    """An ``Evaluator`` whose results carry the metric and direction it declares."""
    assert isinstance(evaluator, Evaluator)
    assert isinstance(evaluator.metric, str) and evaluator.metric
    assert isinstance(evaluator.higher_is_better, bool)
    result = evaluator.evaluate(_candidate(space))
    assert isinstance(result, AccuracyResult)
    assert (result.metric, result.higher_is_better) == (evaluator.metric,
                                                       evaluator.higher_is_better)


def check_val_result_in_range_with_its_interval(space, evaluator, foreign) -> None:
    """A val result: its metric in range, its 95% interval around it, counted examples."""
    result = evaluator.evaluate(_candidate(space))
    low, high = METRIC_RANGE.get(evaluator.metric, (-math.inf, math.inf))
    assert result.split == "val" and result.n > 0
    assert math.isfinite(result.accuracy) and low <= result.accuracy <= high, result
    lo, hi = result.interval
    assert low <= lo <= result.accuracy <= hi <= high, result


def check_test_split_is_scored_apart(space, evaluator, foreign) -> None:
    candidate = _candidate(space)
    test = evaluator.evaluate(candidate, split="test")
    assert test.split == "test" and test.n > 0
    assert test.interval[0] <= test.accuracy <= test.interval[1]


def check_an_unknown_split_raises(space, evaluator, foreign) -> None:
    with pytest.raises(ValueError, match="unknown split 'train'; valid: val, test"):
        evaluator.evaluate(_candidate(space), split="train")


def check_deterministic_and_rebuilt_elsewhere(space, evaluator, foreign) -> None:
    """The same candidate, the same result: twice here, and from a pickled copy (what a worker
    process receives: cheap, no weights or data, its state rebuilt there)."""
    candidate = _candidate(space, seed=1)
    first = evaluator.evaluate(candidate)
    assert evaluator.evaluate(candidate) == first
    blob = pickle.dumps(evaluator)
    assert len(blob) < PICKLE_BYTES
    assert pickle.loads(blob).evaluate(candidate) == first


def check_shared_state_is_interchangeable(space, evaluator, foreign) -> None:
    """A copy that adopts the shared state scores as the original; another key is refused."""
    key = evaluator.shared_state_key()
    if key is None:
        with pytest.raises(ValueError):
            evaluator.shared_state()
        return
    state = evaluator.shared_state()
    copy = pickle.loads(pickle.dumps(evaluator))
    assert copy.shared_state_key() == key
    copy.use_shared_state(key, state)
    candidate = _candidate(space, seed=2)
    assert copy.evaluate(candidate) == evaluator.evaluate(candidate)
    with pytest.raises(ValueError, match="not this evaluator's"):
        copy.use_shared_state(key + "-other", state)


def check_a_candidate_of_another_space_raises(space, evaluator, foreign) -> None:
    """A candidate of another space is a ValueError that says what was expected, not an
    AttributeError from deep inside (nor a score)."""
    assert foreign, "no other space registered to take a candidate from"
    for candidate in foreign:
        with pytest.raises(ValueError, match="expected"):
            evaluator.evaluate(candidate)


CHECKS = (check_declares_its_metric, check_val_result_in_range_with_its_interval,
          check_test_split_is_scored_apart, check_an_unknown_split_raises,
          check_deterministic_and_rebuilt_elsewhere, check_shared_state_is_interchangeable,
          check_a_candidate_of_another_space_raises)


# ------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from tests.transformer_helpers import temporary_lm_cache

    with temporary_lm_cache(tmp_path_factory.mktemp("cache")):  # the supernet's cache too
        yield


@pytest.fixture(scope="module")
def instances(cache):
    made: dict[str, tuple[Any, Evaluator, list[Any]]] = {}

    def get(name: str):
        if name not in made:
            if name in TINY:
                space, evaluator = TINY[name]()
            else:
                space = _space_naming(name)
                if space is None:
                    pytest.skip(f"no registered space names evaluator {name!r}")
                evaluator = EVALUATORS.get(name)(space, seed=0, progress=lambda label: None)
            evaluator.prepare()  # a tiny supernet trains here, into the temporary cache
            made[name] = (space, evaluator, _foreign_candidates(space))
        return made[name]
    return get


def test_the_built_in_evaluators_are_registered_with_a_tiny_instance() -> None:
    assert {"supernet", "perplexity"} <= set(EVALUATORS.names())
    assert {"supernet", "perplexity"} <= set(TINY)


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_factory_is_lazy(name, tmp_path, monkeypatch) -> None:
    """The space that names the evaluator gets it from ``load_evaluator`` (the registry), made
    without training anything (that is ``prepare``'s work, done once): an empty cache stays
    empty."""
    space = _space_naming(name)
    if space is None:
        pytest.skip(f"no registered space names evaluator {name!r}")
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    evaluator = load_evaluator(None, space, 0)
    assert isinstance(evaluator, Evaluator)
    if name in TINY:
        _, tiny = TINY[name]()
        assert type(evaluator) is type(tiny)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", EVALUATORS.names())
def test_evaluator_conformance(instances, name, check) -> None:
    check(*instances(name))
