"""Every registered search space honours the ``SearchSpace`` contract (search_spaces/base.py).

Written once, run over the registry (optuna's ``pytest_samplers.py`` pattern): a space added to
``codesign.registry.SPACES`` — built in or a plug-in's entry point — is checked with no new test.
The checks are plain functions (``CHECKS``) so a plug-in's own test can run them on its space.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest

from codesign.context import load_space
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpBatch
from codesign.registry import SPACES

DEVICE = "pixel8"  # lists both back-ends
SAMPLES = 12


def check_params_round_trip(space, rng) -> None:
    """decode(encode(c)) == c on the canonical params of sampled candidates, same hash."""
    for _ in range(SAMPLES):
        candidate = space.decode(space.sample(rng))
        canonical = space.encode(candidate)
        assert space.decode(canonical) == candidate
        assert hash(space.decode(canonical)) == hash(candidate)
        assert space.encode(space.decode(canonical)) == canonical
        space.check_params(canonical, allow_unknown=False)


def check_suggest_is_decode(space, rng) -> None:
    """On a real Optuna trial, ``suggest`` returns what ``decode`` makes of the trial's params,
    and asks for exactly the active parameters."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(
        seed=int(rng.integers(1 << 30))))
    for _ in range(SAMPLES):
        trial = study.ask()
        candidate = space.suggest(trial)
        assert candidate == space.decode(trial.params)
        assert set(trial.params) == space.active_names(trial.params)
        study.tell(trial, 0.0)


def check_decode_refuses_bad_params(space, rng) -> None:
    """decode raises ValueError, naming the problem, on no params, on a sample lacking one of
    its active params, and on one with a text choice off its menu."""
    with pytest.raises(ValueError):
        space.decode({})
    params = space.sample(rng)
    active = dict(space.active_distributions(params))
    for name in active:
        with pytest.raises(ValueError, match="missing params"):
            space.decode({k: v for k, v in params.items() if k != name})
    for name, dist in active.items():
        # text choices only: a number's value may decide which params come next
        if (isinstance(dist, optuna.distributions.CategoricalDistribution)
                and all(isinstance(c, str) for c in dist.choices)):
            with pytest.raises(ValueError):
                space.decode({**params, name: "not-a-choice"})
    # a value of the wrong type (as JSON from --baseline can give): a number written as text,
    # a text choice written as a number: ValueError naming the param, never a TypeError
    for name, dist in active.items():
        wrong = str(params[name]) if not isinstance(params[name], str) else 3
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            space.decode({**params, name: wrong})


def check_every_sample_prices(space, rng, device=None) -> None:
    """Each sampled candidate lowers to ops the analytic model prices above 0 s, in every
    phase the space has; the space never offers what its back-end cannot run."""
    device = device or load_device(DEVICE)
    models: dict[int, AnalyticCostModel] = {}
    for _ in range(SAMPLES // 2):
        candidate = space.decode(space.sample(rng))
        threads = getattr(candidate, "threads", device.default_threads)
        model = models.setdefault(threads, AnalyticCostModel(device, space.backend,
                                                             threads=threads))
        phases = [space.to_ops(candidate)]
        prefill = space.prefill_ops(candidate)
        if prefill is not None:
            phases.append(prefill)
        latency = model.predict(OpBatch.from_oplists(phases)).latency_s
        assert np.all(np.isfinite(latency)) and np.all(latency > 0)


def check_op_batch_is_to_ops(space, rng) -> None:
    """``op_batch`` (what the predictor stage prices with) is the batch of ``to_ops``."""
    candidates = [space.decode(space.sample(rng)) for _ in range(SAMPLES // 2)]
    fast = space.op_batch(candidates)
    slow = OpBatch.from_oplists([space.to_ops(c) for c in candidates])
    assert fast.n_candidates == slow.n_candidates
    for column in dataclasses.fields(OpBatch):
        if column.name not in ("n_candidates", "ops"):
            np.testing.assert_array_equal(getattr(fast, column.name), getattr(slow, column.name),
                                          err_msg=column.name)


CHECKS = (check_params_round_trip, check_op_batch_is_to_ops, check_suggest_is_decode,
          check_decode_refuses_bad_params,
          check_every_sample_prices)


def _cases():
    device = load_device(DEVICE)
    return [(name, backend) for name in SPACES.names() for backend in device.backends]


@pytest.fixture(scope="module")
def spaces():
    built: dict[tuple[str, str], object] = {}

    def get(name: str, backend: str):
        if (name, backend) not in built:
            built[name, backend] = load_space(name, load_backend(backend), load_device(DEVICE))
        return built[name, backend]
    return get


def test_the_built_in_spaces_are_registered() -> None:
    assert {"mbconv", "nasbench201", "fbnet", "transformer"} <= set(SPACES.names())


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name, backend", _cases())
def test_space_conformance(spaces, name, backend, check) -> None:
    check(spaces(name, backend), np.random.default_rng(0))
