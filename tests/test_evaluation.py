"""Evaluation: pruning patterns, fake quantization, the evaluator protocol and the supernet
evaluator (on a small config of the MBConv family trained within the test session)."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codesign.evaluation.base import (AccuracyResult, FunctionEvaluator, bootstrap_interval,
                                      result_from_correct)
from codesign.evaluation.fake_quant import (OpListExecutor, fake_quant_dynamic,
                                            fake_quant_tensor, quantize_weight)
from codesign.evaluation.pruning import prune_to_ops, sparsity_mask
from codesign.evaluation.supernet_evaluator import SupernetEvaluator
from codesign.cost_models.backends import load_backend
from codesign.cost_models.ir import Op, OpKind
from codesign.cost_models.lowering import insert_precision_boundaries, lower_module
from codesign.kernels.specs import QuantSpec, block, two_four, unstructured
from codesign.search_spaces.mbconv import (Candidate, LayerChoice, MBConvSpace, load_mbconv_config,
                                           units)
from codesign.search_spaces.mbconv_training import TrainConfig



pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ pruning
def test_two_four_keeps_two_largest_of_every_four():
    w = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3],
                      [0.0, 0.0, 0.0, 1.0, -9.0, 8.0, 7.0, 6.0]])
    mask = sparsity_mask(w, two_four())
    assert mask.tolist() == [[False, True, True, False, True, False, False, True],
                             [True, False, False, True, True, True, False, False]]
    # a 1x1 conv weight prunes along its input channels, the same way
    conv_mask = sparsity_mask(w.reshape(2, 8, 1, 1), two_four())
    assert torch.equal(conv_mask.reshape(2, 8), mask)
    with pytest.raises(ValueError, match="divisible by 4"):
        sparsity_mask(torch.ones(2, 6), two_four())


def test_block_sparsity_keeps_blocks_of_largest_norm():
    w = torch.zeros(4, 4)
    w[0:2, 2:4] = 3.0  # top-right block: largest norm
    w[2:4, 0:2] = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # bottom-left: second
    w[0:2, 0:2] = 0.5
    w[2:4, 2:4] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # norm sqrt(2) > 1 (top-left)
    mask = sparsity_mask(w, block(2, 2, 0.5))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 2:4] = True
    expected[2:4, 0:2] = True
    assert torch.equal(mask, expected)
    assert sparsity_mask(torch.randn(8, 16), block(4, 4, 0.75)).float().mean() == 0.25
    with pytest.raises(ValueError, match="4x4 blocks"):
        sparsity_mask(torch.ones(6, 8), block(4, 4, 0.75))


def test_unstructured_keeps_largest_magnitudes_of_the_layer():
    w = torch.tensor([[0.1, -5.0, 0.2, 0.3], [4.0, 0.0, -0.4, 0.05]])
    mask = sparsity_mask(w, unstructured(0.75))
    assert mask.tolist() == [[False, True, False, False], [True, False, False, False]]
    assert sparsity_mask(torch.randn(16, 32), unstructured(0.5)).sum() == 256


def test_prune_to_ops_matches_layers_by_name_and_refuses_depthwise():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(8, 4))
    op = Op("fc", OpKind.LINEAR, (1, 4), ((1, 8),), m=1, n=4, k=8, sparsity=unstructured(0.75))
    masks = prune_to_ops(model, [op])
    assert masks["fc"].sum() == 8 and (model.fc.weight == 0).sum() == 24
    dw = Op("fc", OpKind.DEPTHWISE_CONV2D, (1, 4, 2, 2), groups=4, sparsity=two_four())
    with pytest.raises(ValueError, match="cannot be 2:4-sparse"):
        prune_to_ops(model, [dw])
    with pytest.raises(ValueError, match="op head has no module"):
        prune_to_ops(model, [dataclasses.replace(op, name="head")])


# ------------------------------------------------------------------------------ fake quant
def _distinct_per_row(t: torch.Tensor) -> int:
    return max(len(torch.unique(row)) for row in t)


def test_weight_fake_quant_levels():
    torch.manual_seed(0)
    w = torch.randn(6, 64, 1, 1)
    assert torch.equal(quantize_weight(w, QuantSpec(32, 32)), w)
    assert torch.equal(quantize_weight(w, QuantSpec(16, 16)), w.half().float())
    w8 = quantize_weight(w, QuantSpec(8, 8))
    assert not torch.equal(w8, w) and _distinct_per_row(w8.reshape(6, -1)) <= 256
    scale = w.reshape(6, -1).abs().amax(1, keepdim=True) / 127.5
    assert ((w8 - w).reshape(6, -1).abs() <= scale + 1e-7).all()  # half a step, or clipped by one
    w2 = quantize_weight(w, QuantSpec(2, 8))  # per channel, symmetric: {-2, -1, 0, 1} x scale
    assert _distinct_per_row(w2.reshape(6, -1)) <= 4
    w2g = quantize_weight(w, QuantSpec(2, 8, group_size=16))
    groups = w2g.reshape(6 * 4, 16)
    assert _distinct_per_row(groups) <= 4 and _distinct_per_row(w2g.reshape(6, -1)) > 4
    w4g = quantize_weight(w, QuantSpec(4, 16, group_size=32))
    assert _distinct_per_row(w4g.reshape(12, 32)) <= 16
    assert (w4g - w).abs().mean() < (w2g - w).abs().mean()
    with pytest.raises(ValueError, match="group size 48 does not divide"):
        quantize_weight(w, QuantSpec(4, 8, group_size=48))


def test_activation_fake_quant():
    x = torch.linspace(-1.0, 3.0, 10_000)
    q = fake_quant_tensor(x, -1.0, 3.0)
    assert len(torch.unique(q)) <= 256 and (q - x).abs().max() <= 4.0 / 255 / 2 + 1e-6
    assert fake_quant_tensor(torch.zeros(3), -1.0, 3.0).abs().max() == 0  # zero is exact
    assert fake_quant_tensor(torch.tensor([9.0]), -1.0, 3.0).item() == pytest.approx(3.0, abs=0.01)
    batch = torch.stack([x, 100 * x])  # per-example ranges at run time
    d = fake_quant_dynamic(batch)
    assert (d[0] - x).abs().max() < 0.01 and (d[1] - 100 * x).abs().max() < 1.0


def test_executor_quantizes_where_the_op_list_says():
    torch.manual_seed(0)
    model = nn.Module()
    model.fc, model.out = nn.Linear(4, 8), nn.Linear(8, 3)
    ops = insert_precision_boundaries([
        Op("fc", OpKind.LINEAR, (1, 8), ((1, 4),), m=1, n=8, k=4, fused=("relu",), inputs=("",)),
        Op("out", OpKind.LINEAR, (1, 3), ((1, 8),), m=1, n=3, k=8, quant=QuantSpec(8, 8),
           inputs=("fc",))])
    assert [op.name for op in ops] == ["fc", "fc:quantize8", "out", "out:dequantize32"]
    ex = OpListExecutor(model, ops)
    assert (ex.acts["fc"].bits, ex.acts["fc:quantize8"].bits, ex.acts["out"].bits) == (32, 8, 8)
    x = torch.randn(64, 4)
    ex.calibrate([x])
    ex.freeze()
    with torch.no_grad():
        h = torch.relu(model.fc(x))
        out_float = model.out(h)  # observers see the float model
        hq = fake_quant_tensor(h, float(h.min()), float(h.max()))
        ref = F.linear(hq, quantize_weight(model.out.weight, QuantSpec(8, 8)), model.out.bias)
        ref = fake_quant_tensor(ref, float(out_float.min()), float(out_float.max()))
        torch.testing.assert_close(ex(x), ref)
    with pytest.raises(ValueError, match="no rule for softmax"):
        OpListExecutor(model, [Op("fc", OpKind.SOFTMAX, (1, 8), inputs=("",))])
    with pytest.raises(ValueError, match="no rule for fused 'mish'"):
        OpListExecutor(model, [dataclasses.replace(ops[0], fused=("mish",))])


# ------------------------------------------------------------------------------ protocol
def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    correct = np.array([1] * 80 + [0] * 20)
    lo, hi = bootstrap_interval(correct, seed=0)
    assert (lo, hi) == bootstrap_interval(correct, seed=0)
    assert 0.7 < lo < 0.8 < hi < 0.9
    assert bootstrap_interval(np.ones(10), seed=0) == (1.0, 1.0)
    r = result_from_correct(correct, "val")
    assert (r.accuracy, r.n, r.split) == (0.8, 100, "val")


def test_function_evaluator():
    seen = []

    def func(candidate, split):
        seen.append((candidate, split))
        return 0.75 if candidate == "float" else AccuracyResult(0.5, (0.4, 0.6), 50, split)

    ev = FunctionEvaluator(func, name="mod:func")
    assert ev.evaluate("float") == AccuracyResult(0.75, (0.75, 0.75), 0, "val")
    assert ev.evaluate("full", split="test") == AccuracyResult(0.5, (0.4, 0.6), 50, "test")
    assert seen == [("float", "val"), ("full", "test")]
    with pytest.raises(ValueError, match="unknown split 'train'; valid: val, test"):
        ev.evaluate("float", split="train")
    with pytest.raises(ValueError, match="outside"):
        FunctionEvaluator(lambda c, s: 1.5).evaluate("x")
    with pytest.raises(ValueError, match="returned str"):
        FunctionEvaluator(lambda c, s: "0.5").evaluate("x")


# ------------------------------------------------------------------------------ supernet evaluator
SMALL_TRAIN = TrainConfig(batch_size=16, max_steps=60, warmup_steps=5)


def _small_config():
    cfg = load_mbconv_config()
    stages = tuple(dataclasses.replace(s, widths=(16, 24), depths=(1, 2), kernels=(3, 5),
                                       expands=(2, 3)) for s in cfg.stages)
    return dataclasses.replace(cfg, name="small", stem_widths=(8, 16), stages=stages,
                               head_widths=(32, 64), feature_width=64, sha256="")


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CODESIGN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    space = MBConvSpace(load_backend("codesign"), config=_small_config())
    ev = SupernetEvaluator(space, seed=0, train=SMALL_TRAIN)
    ev.prepare()  # trains the small supernet (a few seconds) into the temporary cache
    yield ev
    mp.undo()


def _uniform(space, arch, precision, sparsity="dense"):
    sparse_units = {u for u in units(arch) if u not in ("stem", "classifier")}
    layers = tuple(sorted((u, LayerChoice(precision, sparsity if u in sparse_units else "dense"))
                          for u in units(arch)))
    return Candidate(arch, layers, 1)


def test_fp32_executor_is_the_subnet(evaluator):
    space = evaluator.space
    candidate = _uniform(space, space.config.max_arch(), "w32a32")
    model = evaluator.build_deployable(candidate)
    _, executor = evaluator._prepare_candidate(candidate)
    x = evaluator.data().x_val[:16]
    with torch.no_grad():
        torch.testing.assert_close(executor(x), model(x), rtol=1e-4, atol=1e-4)


def test_deployable_is_pruned_and_exports(evaluator):
    space = evaluator.space
    candidate = _uniform(space, space.config.min_arch(), "w32a32", "2:4")
    model = evaluator.build_deployable(candidate)
    w = model.get_submodule("s0.b0.expand").weight.reshape(-1, 4)
    assert ((w != 0).sum(dim=1) <= 2).all()
    assert (model.get_submodule("feature").weight != 0).float().mean() <= 0.5
    assert model.get_submodule("stem").weight.ne(0).all()  # the stem is never sparse
    assert not model.training
    ops = lower_module(model, space.eval_input_shape)
    assert {op.name for op in ops} >= {"stem", "s0.b0.dw", "head", "feature", "classifier"}


def test_low_precision_sparse_loses_accuracy_beyond_the_intervals(evaluator):
    space = evaluator.space
    arch = space.config.max_arch()
    dense = evaluator.evaluate(_uniform(space, arch, "w32a32"))
    harsh = evaluator.evaluate(_uniform(space, arch, "w2a8", "unstructured75"))
    assert dense.accuracy > 0.4, dense  # the small supernet learned the task (chance: 0.1)
    assert harsh.interval[1] < dense.interval[0], (harsh, dense)


def test_symmetric_int8_activations_have_no_zero_point():
    """The codesign back-end's integer kernels take int8 activations with zero point 0: a
    non-negative tensor then uses only the upper half of the levels."""
    from codesign.evaluation.fake_quant import ActQuant
    from codesign.cost_models.backends import load_backend

    assert load_backend("codesign").int8_activations == "symmetric"
    assert load_backend("xnnpack").int8_activations == "asymmetric"
    x = torch.linspace(0.0, 3.0, 10_000)
    sym, asym = ActQuant("a", 8, symmetric=True), ActQuant("b", 8)
    for q in (sym, asym):
        q(x, calibrating=True)
    levels = len(torch.unique(sym(x, calibrating=False)))
    assert 120 <= levels <= 129 and len(torch.unique(asym(x, calibrating=False))) == 256
    assert torch.allclose(sym(x, calibrating=False), x, atol=3.0 / 127.5 / 2 + 1e-6)
