"""The search-space protocol: the one mapping point between Optuna and the domain.

A space exposes, for a back-end, the ordered Optuna distributions that are *active* given the
choices made so far (define-by-run: a block's knobs exist only if the stage is that deep), and
``decode(params) -> Candidate`` / ``encode(candidate) -> params`` which round-trip. It lowers a
candidate to the op-list IR for pricing. Every space passes ``tests/test_space_conformance.py``.

The back-end's capability table decides which choices exist: a configuration the back-end cannot
run is never offered, so it is never priced.
"""
from __future__ import annotations

import abc
import numbers
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import optuna

from codesign.cost_models.backends import BackendSpec
from codesign.cost_models.ir import Op, OpBatch


def admits(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one ``dist`` can give, type included: a depth written as the text
    ``"3"`` (JSON from ``--baseline``) is not the integer 3."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        # equal numbers of another type (1.0 for 1) are admitted, as Optuna admits them
        try:
            return any(isinstance(c, str) == isinstance(value, str) and bool(value == c)
                       for c in dist.choices)
        except (TypeError, ValueError):  # an array or an incomparable value
            return False
    if isinstance(dist, optuna.distributions.IntDistribution):
        return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and dist.low <= value <= dist.high)
    return False


def _menu(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return f"one of {list(dist.choices)}"
    return f"in [{dist.low}, {dist.high}]"


class SearchSpace(abc.ABC):
    """A family of candidates for one back-end.

    Attributes:
        name: the space's name (``mbconv``, or ``MODULE:FACTORY`` for a user's space).
        backend: the back-end whose capabilities bound the choices.
        deploy_input_shape: the input the priced (deployed) network sees.
        eval_input_shape: the input the accuracy evaluation uses (same layers and strides).
        supports_predictor_stage: the search's predictor-guided stage
            (``codesign.predictor_stage``) can encode this space's candidates: each has an
            ``arch`` of stages and per-unit ``layers`` (precision, sparsity), and the space lists
            the unit ``formats`` (labels) it offers. False (the default): the stage never runs.
    """

    name: str
    backend: BackendSpec
    deploy_input_shape: tuple[int, ...]
    eval_input_shape: tuple[int, ...]
    supports_predictor_stage: ClassVar[bool] = False

    @abc.abstractmethod
    def iter_distributions(self, params: Mapping[str, Any]
                           ) -> Iterator[tuple[str, optuna.distributions.BaseDistribution]]:
        """Yield (name, distribution) of every active parameter, in order.

        ``params`` holds the values chosen so far; the generator may read it to decide which
        later parameters are active. Callers fill ``params`` as they go.
        """

    @abc.abstractmethod
    def decode(self, params: Mapping[str, Any]) -> Any:
        """The candidate the params describe. Raises ValueError naming a bad or missing param."""

    @abc.abstractmethod
    def encode(self, candidate: Any) -> dict[str, Any]:
        """The params of a candidate; ``decode(encode(c)) == c``."""

    @abc.abstractmethod
    def to_ops(self, candidate: Any) -> Sequence[Op]:
        """Lower a candidate at ``deploy_input_shape`` to the op list (precisions applied)."""

    def op_batch(self, candidates: Sequence[Any]) -> OpBatch:
        """The op lists of ``candidates`` as one batch for a cost model: by definition
        ``OpBatch.from_oplists([to_ops(c) for c in candidates])``, which this default returns; a
        space may return the same batch faster (MBConv memoises rows across calls)."""
        return OpBatch.from_oplists([self.to_ops(c) for c in candidates])

    def prefill_ops(self, candidate: Any) -> Sequence[Op] | None:
        """A second phase priced next to ``to_ops`` (a decoder's prompt prefill: its latency is
        the time to first token, ``ttft_s``), or None where the space has only one phase."""
        return None

    def memory_bytes(self, candidate: Any) -> int | None:
        """Bytes the deployed model holds from load on, checked against the device's RAM share
        (a decoder's weights plus its whole KV cache), or None where weights are all of it."""
        return None

    def active_distributions(self, params: Mapping[str, Any]
                             ) -> Iterator[tuple[str, optuna.distributions.BaseDistribution]]:
        """The (name, distribution) pairs ``params`` makes active, in order: every one it
        sets, then the first one it lacks (a later parameter may depend on that one)."""
        partial: dict[str, Any] = {}
        for name, dist in self.iter_distributions(partial):
            yield name, dist
            # a value off its distribution ends the walk like a missing one: later params may
            # depend on it (``range(depth)``), and check_params names it with a ValueError
            if name not in params or not admits(dist, params[name]):
                return
            partial[name] = params[name]

    def active_names(self, params: Mapping[str, Any]) -> set[str]:
        """Names of the parameters ``params`` makes active (for filtering an encoding)."""
        return {name for name, _ in self.active_distributions(params)}

    def check_params(self, params: Mapping[str, Any], *, allow_unknown: bool = True) -> None:
        """ValueError naming the first missing parameter, one off its distribution's choices
        (categorical), or (``allow_unknown`` False) parameters the space does not have."""
        expected = dict(self.active_distributions(params))
        missing = [k for k in expected if k not in params]
        if missing:
            raise ValueError(f"space {self.name}: missing params {missing[:5]}")
        for name, dist in expected.items():
            if not admits(dist, params[name]):
                raise ValueError(f"space {self.name}: param {name}={params[name]!r} not "
                                 f"{_menu(dist)}")
        unknown = sorted(set(params) - set(expected))
        if unknown and not allow_unknown:
            raise ValueError(f"space {self.name}: unexpected params {unknown[:5]}")

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Ask ``trial`` for every active parameter and decode the result."""
        params: dict[str, Any] = {}
        for name, dist in self.iter_distributions(params):
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step)
            else:
                params[name] = trial.suggest_float(name, dist.low, dist.high)
        return self.decode(params)

    def sample(self, rng) -> dict[str, Any]:
        """Uniformly random params (for checks and calibration sets, not for the search)."""
        params: dict[str, Any] = {}
        for name, dist in self.iter_distributions(params):
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                params[name] = dist.choices[int(rng.integers(len(dist.choices)))]
            elif isinstance(dist, optuna.distributions.IntDistribution):
                params[name] = int(rng.integers(dist.low, dist.high + 1))
            else:
                params[name] = float(rng.uniform(dist.low, dist.high))
        return params

    def describe(self) -> dict[str, Any]:
        """What identifies the space in provenance and resume checks."""
        return {"name": self.name, "backend": self.backend.name,
                "deploy_input_shape": list(self.deploy_input_shape),
                "eval_input_shape": list(self.eval_input_shape)}


class FixedChoiceSpace(SearchSpace):
    """A space of ``len(param_names)`` independent categorical choices from one menu, fp32
    throughout, at one input shape (the public benchmark spaces: NAS-Bench-201, FBNet).

    Subclasses set ``param_names``, ``choices``, and ``_build(values) -> candidate`` /
    ``_values(candidate) -> tuple`` plus ``to_ops``.
    """

    param_names: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()

    def __init__(self, name: str, backend: BackendSpec | None,
                 input_shape: Sequence[int]) -> None:
        from codesign.cost_models.backends import load_backend

        self.name = name
        self.backend = backend or load_backend("xnnpack")
        self.deploy_input_shape = tuple(input_shape)
        self.eval_input_shape = tuple(input_shape)

    def iter_distributions(self, params: Mapping[str, Any]
                           ) -> Iterator[tuple[str, optuna.distributions.BaseDistribution]]:
        for name in self.param_names:
            yield name, optuna.distributions.CategoricalDistribution(self.choices)

    def decode(self, params: Mapping[str, Any]) -> Any:
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ValueError(f"space {self.name}: missing params {missing[:5]}")
        for name in self.param_names:
            if params[name] not in self.choices:
                raise ValueError(f"space {self.name}: param {name}={params[name]!r} not one of "
                                 f"{list(self.choices)}")
        return self._build(tuple(params[n] for n in self.param_names))

    def encode(self, candidate: Any) -> dict[str, Any]:
        return dict(zip(self.param_names, self._values(candidate)))

    @abc.abstractmethod
    def _build(self, values: tuple[str, ...]) -> Any:
        """The candidate of one value per param, in ``param_names`` order."""

    @abc.abstractmethod
    def _values(self, candidate: Any) -> tuple[str, ...]:
        """The inverse of ``_build``."""
