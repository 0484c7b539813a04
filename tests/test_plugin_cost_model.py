"""A cost model from outside the repository, registered through an entry point only.

The toy plug-in (``codesign.cost_models`` group) prices an op at its FLOPs over a fixed
throughput plus a fixed per-op cost, and refuses what the back-end has no kernel for. It is
written into ``tmp_path`` as an installed distribution (``tests/plugin_helpers.py``); no module of
the project is touched. The test shows it registered, conforming (the suite of
``tests/test_cost_model_conformance.py``), and chosen by ``--cost-model`` in predict and search.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from codesign.cli import main
from codesign.context import load_space
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpBatch
from codesign.registry import COST_MODELS
from codesign.search_spaces.mbconv import MBConvSpace
from tests.plugin_helpers import forget_plugin, install_plugin
from tests.test_cost_model_conformance import CHECKS

NAME = "toy-flops"
PLUGIN = '''
"""A FLOPs-only cost model: latency = FLOPs / (GFLOPS x threads) + a fixed cost per op."""
import json

import numpy as np

from codesign.cost_models.backends import load_backend
from codesign.cost_models.base import CostModel, Prediction, UnpriceableOp

PER_OP_S = 2e-6


class FlopsModel(CostModel):
    name = "toy-flops"

    def __init__(self, backend, gflops):
        self.backend, self.gflops = backend, float(gflops)

    def predict(self, batch):
        for op in batch.ops:
            reason = self.backend.why_not(op.kind, op.quant, op.sparsity)
            if reason:
                raise UnpriceableOp(f"cannot price op {op.name!r}: {reason}")
        op_s = batch.flops / (self.gflops * 1e9) + PER_OP_S
        latency = np.bincount(batch.candidate, op_s)
        return Prediction(latency, op_s, np.zeros(len(op_s), dtype=np.int64), batch.candidate)

    def save(self, path):
        path.write_text(json.dumps({"format": "toy-flops/1", "backend": self.backend.name,
                                    "gflops": self.gflops}))

    @classmethod
    def load(cls, path):
        data = json.loads(path.read_text())
        return cls(load_backend(data["backend"]), data["gflops"])


def factory(device, backend, *, threads, path=None):
    return FlopsModel(backend, 5.0 * threads)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "toy_flops_plugin", PLUGIN,
                   {"codesign.cost_models": [(NAME, "toy_flops_plugin:factory")]})
    yield NAME
    forget_plugin("toy_flops_plugin", NAME, (COST_MODELS,))


def test_not_registered_without_the_plugin() -> None:
    assert NAME not in COST_MODELS.names()


def test_the_plugin_is_registered_and_conforms(plugin, tmp_path) -> None:
    assert plugin in COST_MODELS.names()
    model = COST_MODELS.get(plugin)(load_device("host"), load_backend("xnnpack"), threads=1)
    assert type(model).__module__ == "toy_flops_plugin"
    space = MBConvSpace(load_backend("xnnpack"), threads_choices=(1,))
    rng = np.random.default_rng(0)
    op_lists = [space.to_ops(space.decode(space.sample(rng))) for _ in range(4)]
    for check in CHECKS:
        check(model, op_lists, tmp_path)


def test_predict_prices_with_the_plugin(plugin, capsys) -> None:
    assert main(["predict", "--device", "pixel8", "--model", "tests.models:small_convnet",
                 "--input-shape", "1,3,32,32", "--threads", "2", "--cost-model", plugin,
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # each layer: its FLOPs at 5 GFLOPS per thread, 2 threads, plus the fixed 2 us
    for layer in out["layers"]:
        assert layer["latency_s"] == pytest.approx(layer["flops"] / 10e9 + 2e-6)
    assert out["latency_s"] == pytest.approx(sum(layer["latency_s"] for layer in out["layers"]))


def test_search_prices_with_the_plugin(plugin, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "6",
                 "--cost-model", plugin, "--evaluator",
                 "tests.search_helpers:proxy_accuracy", "--out", str(out), "--json"]) == 0
    pareto = json.loads(capsys.readouterr().out)
    assert pareto["members"]
    device = load_device("pixel8")
    space = load_space("mbconv", load_backend("xnnpack"), device)
    for member in pareto["members"]:
        ops = space.to_ops(space.decode(member["params"]))
        threads = member.get("threads", device.default_threads)
        batch = OpBatch.from_oplists([ops])
        assert member["latency_s"] == pytest.approx(
            float(np.sum(batch.flops)) / (5e9 * threads) + 2e-6 * len(ops))


def test_an_unknown_cost_model_names_the_registered_ones(capsys) -> None:
    assert main(["predict", "--device", "pixel8", "--model", "tests.models:small_convnet",
                 "--input-shape", "1,3,32,32", "--cost-model", NAME]) == 2
    assert f"unknown --cost-model '{NAME}'; valid: analytic, learned, hybrid" in \
        capsys.readouterr().err
