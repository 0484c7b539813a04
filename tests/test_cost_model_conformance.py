"""Every registered cost model honours the ``CostModel`` contract (cost_models/base.py).

Written once, run over ``codesign.registry.COST_MODELS`` (optuna's ``pytest_samplers.py``
pattern). Each is made through its registered factory on this machine's device (``host``,
XNNPACK, one thread): the fitted kinds from a model ``codesign calibrate`` fits on
``tests/data/host_mbconv_measured_40.csv``, which is what a search loads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codesign.calibrate import calibrate
from codesign.cost_models.backends import load_backend
from codesign.cost_models.base import CostModel, Prediction, UnpriceableOp
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import Op, OpBatch, OpKind, QuantSpec
from codesign.registry import COST_MODELS
from codesign.search_spaces.mbconv import MBConvSpace

HOST_CSV = Path(__file__).parent / "data" / "host_mbconv_measured_40.csv"
FITTED = ("learned", "hybrid")  # the kinds ``calibrate`` fits; any other takes path=None


@pytest.fixture(scope="module")
def backend():
    return load_backend("xnnpack")


@pytest.fixture(scope="module")
def op_lists(backend):
    space = MBConvSpace(backend, threads_choices=(1,))
    rng = np.random.default_rng(0)
    return [space.to_ops(space.decode(space.sample(rng))) for _ in range(6)]


@pytest.fixture(scope="module")
def model_of(tmp_path_factory, backend):
    made: dict[str, CostModel] = {}
    root = tmp_path_factory.mktemp("cost_models")

    def get(name: str) -> CostModel:
        if name not in made:
            path = None
            if name in FITTED:
                path = root / f"{name}.json"
                calibrate("mbconv", HOST_CSV, "host", None, 30, 0, path, kind=name,
                          device="host")
            made[name] = COST_MODELS.get(name)(load_device("host"), backend, threads=1,
                                               path=path)
        return made[name]
    return get


def test_the_built_in_cost_models_are_registered() -> None:
    assert {"analytic", "learned", "hybrid"} <= set(COST_MODELS.names())


def check_batch_is_one_at_a_time(model: CostModel, op_lists, tmp_path: Path) -> None:
    """A batch prices each candidate as it prices it alone; a candidate is the sum of its
    ops; every latency is above 0 s."""
    assert isinstance(model, CostModel)
    batched = model.predict(OpBatch.from_oplists(op_lists))
    assert isinstance(batched, Prediction)
    single = [model.predict(OpBatch.from_oplists([ops])).latency_s[0] for ops in op_lists]
    np.testing.assert_allclose(batched.latency_s, single, rtol=1e-12)
    assert np.all(batched.latency_s > 0)
    batch = OpBatch.from_oplists(op_lists)
    np.testing.assert_allclose(np.bincount(batch.candidate, batched.op_latency_s),
                               batched.latency_s, rtol=1e-12)


def check_save_load_predicts_identically(model: CostModel, op_lists, tmp_path: Path) -> None:
    """``save`` then ``load`` gives the same predictions, bit for bit, and the same band."""
    model.save(tmp_path / "model.json")
    again = type(model).load(tmp_path / "model.json")
    batch = OpBatch.from_oplists(op_lists)
    a, b = model.predict(batch), again.predict(batch)
    np.testing.assert_array_equal(a.latency_s, b.latency_s)
    np.testing.assert_array_equal(a.op_latency_s, b.op_latency_s)
    assert a.band == b.band


def _w4a8_conv() -> Op:
    # XNNPACK runs 4-bit weights on linear layers only: a 4-bit convolution has no kernel
    return Op("conv", OpKind.CONV2D, (1, 64, 14, 14), ((1, 64, 14, 14),), m=196, n=64, k=576,
              flops=2.0 * 196 * 64 * 576, weight_elems=64 * 576, out_channels=64,
              quant=QuantSpec(4, 8))


def check_an_unpriceable_op_raises(model: CostModel, op_lists, tmp_path: Path) -> None:
    """An op XNNPACK has no kernel for is ``UnpriceableOp``, never 0 s."""
    with pytest.raises(UnpriceableOp):
        model.predict(OpBatch.from_oplists([[_w4a8_conv()]]))


# The contract, as plain functions of (a model on host / XNNPACK / 1 thread, op lists of the
# MBConv space, a scratch folder): a plug-in's own test runs them on its model.
CHECKS = (check_batch_is_one_at_a_time, check_save_load_predicts_identically,
          check_an_unpriceable_op_raises)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", COST_MODELS.names())
def test_cost_model_conformance(model_of, op_lists, name, check, tmp_path) -> None:
    check(model_of(name), op_lists, tmp_path)
