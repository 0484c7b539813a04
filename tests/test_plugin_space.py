"""A search space from outside the repository, registered through an entry point only.

The toy plug-in is written into ``tmp_path`` as a module plus the ``.dist-info`` directory an
installer would write (``tests/plugin_helpers.py``). No module of the project is touched. The plug-in registers a space (``codesign.spaces``) whose default evaluator is its own
(``codesign.evaluators``); the test shows it registered, conforming, priced and searchable.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from codesign.cli import main
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.ir import OpBatch
from codesign.context import load_space
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.registry import EVALUATORS, SPACES, entry_of

from tests.plugin_helpers import forget_plugin, install_plugin
from tests.test_space_conformance import CHECKS

PLUGIN = '''
"""A toy MLP space: three linear layers, each one of three widths, fp32."""
from dataclasses import dataclass

from codesign.cost_models.ir import Op, OpKind
from codesign.evaluation.base import FunctionEvaluator
from codesign.registry import SpaceEntry
from codesign.search_spaces.base import FixedChoiceSpace

WIDTHS = ("w64", "w128", "w256")


@dataclass(frozen=True)
class Mlp:
    widths: tuple

    def key(self):
        return "-".join(self.widths)


class MlpSpace(FixedChoiceSpace):
    param_names = ("fc0", "fc1", "fc2")
    choices = WIDTHS

    def __init__(self, backend=None):
        super().__init__("toy-mlp", backend, (1, 256))

    def _build(self, values):
        return Mlp(tuple(values))

    def _values(self, candidate):
        return candidate.widths

    def to_ops(self, candidate):
        ops, k = [], 256
        for i, w in enumerate(candidate.widths):
            n = int(w[1:])
            ops.append(Op(f"fc{i}", OpKind.LINEAR, (1, n), ((1, k),), m=1, n=n, k=k,
                          flops=2.0 * n * k, weight_elems=n * k, out_channels=n))
            k = n
        return ops


def accuracy(candidate, split):
    return 0.5 + sum(int(w[1:]) for w in candidate.widths) / 2000.0


def evaluator(space, *, seed, progress):
    return FunctionEvaluator(accuracy, name="toy-mlp")


ENTRY = SpaceEntry("toy-mlp", lambda backend, device, threads, max_formats: MlpSpace(backend),
                   MlpSpace, evaluator="toy-mlp")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "toy_mlp_plugin", PLUGIN, {
        "codesign.spaces": [("toy-mlp", "toy_mlp_plugin:ENTRY")],
        "codesign.evaluators": [("toy-mlp", "toy_mlp_plugin:evaluator")]})
    yield "toy-mlp"
    forget_plugin("toy_mlp_plugin", "toy-mlp", (SPACES, EVALUATORS))


def test_not_registered_without_the_plugin() -> None:
    assert "toy-mlp" not in SPACES.names()


def test_the_plugin_is_registered_and_conforms(plugin) -> None:
    assert plugin in SPACES.names() and plugin in EVALUATORS.names()
    space = load_space(plugin, load_backend("xnnpack"), load_device("pixel8"))
    assert type(space).__module__ == "toy_mlp_plugin" and space.name == plugin
    assert entry_of(space).evaluator == plugin
    for check in CHECKS:
        check(space, np.random.default_rng(0))


def test_the_plugin_space_is_searched_and_priced(plugin, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "6",
                 "--space", plugin, "--out", str(out), "--json"]) == 0
    pareto = json.loads(capsys.readouterr().out)
    assert pareto["space"] == plugin and pareto["members"]
    device = load_device("pixel8")
    space = load_space(plugin, load_backend("xnnpack"), device)
    for member in pareto["members"]:
        candidate = space.decode(member["params"])
        assert 0 < member["latency_s"] < 0.010
        # priced by the analytic model on pixel8 at its default threads (the toy has no knob)
        model = AnalyticCostModel(device, space.backend, threads=device.default_threads)
        expected = model.predict(OpBatch.from_oplists([space.to_ops(candidate)])).latency_s[0]
        assert member["latency_s"] == pytest.approx(expected)
        assert member["accuracy"] == pytest.approx(
            0.5 + sum(int(w[1:]) for w in candidate.widths) / 2000.0)
