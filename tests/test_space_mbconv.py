"""The MBConv joint space: round trip, back-end bounded choices, precision constraints, budget."""
import numpy as np
import pytest

from codesign.context import threads_choices
from cost_models.analytic import AnalyticCostModel
from cost_models.backends import load_backend
from cost_models.devices import load_device
from cost_models.ir import OpBatch, OpKind
from search_spaces.mbconv import MBConvSpace


@pytest.fixture(scope="module", params=["codesign", "xnnpack"])
def space(request):
    backend = load_backend(request.param)
    return MBConvSpace(backend, threads_choices=threads_choices(load_device("pixel8"), backend))


def test_encode_decode_round_trip(space):
    rng = np.random.default_rng(0)
    for _ in range(50):
        params = space.sample(rng)
        candidate = space.decode(params)
        assert space.encode(candidate) == params
        assert space.decode(space.encode(candidate)) == candidate
        assert hash(candidate) == hash(space.decode(params))


def test_decode_rejects_bad_params(space):
    params = space.sample(np.random.default_rng(1))
    with pytest.raises(ValueError, match="not one of"):
        space.decode({**params, "s0.width": 7})
    with pytest.raises(ValueError, match="missing params"):
        space.decode({k: v for k, v in params.items() if k != "head.width"})


def test_backend_decides_which_choices_exist(space):
    names = [n for n, _ in space.iter_distributions(space.sample(np.random.default_rng(2)))]
    if space.backend.name == "xnnpack":
        assert not any(n.endswith((".sparsity", ".tile")) for n in names)
        assert set(space.conv_precisions) == {"w32a32", "w8a8"}
        assert set(space.linear_precisions) == {"w32a32", "w8a8", "w4a8-dyn"}
    else:
        assert any(n.endswith(".sparsity") for n in names) and any(n.endswith(".tile") for n in names)
        assert len(space.conv_precisions) == 15


def test_every_sampled_candidate_is_runnable_and_group_sizes_divide_k(space):
    rng = np.random.default_rng(3)
    model = AnalyticCostModel(load_device("pixel8"), space.backend, threads=1)
    oplists = [space.to_ops(space.decode(space.sample(rng))) for _ in range(40)]
    model.predict(OpBatch.from_oplists(oplists))  # raises UnpriceableOp if anything is not runnable
    for ops in oplists:
        for op in ops:
            if op.quant.group_size:
                assert op.k % op.quant.group_size == 0, op
            if op.kind is OpKind.DEPTHWISE_CONV2D:
                assert op.sparsity.pattern.value == "dense"


def test_default_budget_splits_the_space():
    """At pixel8 + 10 ms a visible share of random candidates is over budget (issue 3)."""
    device = load_device("pixel8")
    backend = load_backend("codesign")
    space = MBConvSpace(backend, threads_choices=threads_choices(device, backend))
    rng = np.random.default_rng(0)
    cands = [space.decode(space.sample(rng)) for _ in range(300)]
    batch = OpBatch.from_oplists([space.to_ops(c) for c in cands])
    latency = np.zeros(len(cands))
    for t in set(c.threads for c in cands):
        pred = AnalyticCostModel(device, backend, threads=t).predict(batch).latency_s
        sel = np.array([c.threads == t for c in cands])
        latency[sel] = pred[sel]
    over = np.mean(latency > 0.010)
    assert 0.2 <= over <= 0.8, over
    assert np.mean(latency > 0.005) > np.mean(latency > 0.020)
