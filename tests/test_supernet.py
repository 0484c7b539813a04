"""The digits task, the MBConv supernet, its static subnets and the supernet weight cache."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from codesign.cost_models.backends import load_backend
from codesign.cost_models.ir import OpKind
from codesign.cost_models.lowering import lower_module
from codesign.search_spaces.mbconv import MBConvSpace, StageChoice
from codesign.search_spaces.mbconv_supernet import MBConvSupernet, extract_subnet, sample_arch
from codesign.search_spaces.mbconv_training import TrainConfig, cache_path, get_trained_supernet
from codesign.search_spaces.tasks import load_task, stratified_split



pytestmark = pytest.mark.usefixtures("one_torch_thread")
LAYER_KINDS = (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D, OpKind.LINEAR, OpKind.ADD,
               OpKind.GLOBAL_POOL)


@pytest.fixture(scope="module")
def space():
    return MBConvSpace(load_backend("codesign"), threads_choices=(1, 2, 4))


def _randomise_bn(net):
    """Non-trivial BN statistics and kernel transforms, so equality checks mean something."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        for name, p in net.named_parameters():
            if "transforms" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


# ------------------------------------------------------------------------------ task
def test_split_is_stratified_disjoint_and_complete():
    labels = np.repeat(np.arange(10), 50)
    train, val, test = stratified_split(labels, seed=0)
    assert len(set(train) | set(val) | set(test)) == 500
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    for part, share in ((train, 30), (val, 10), (test, 10)):
        assert np.bincount(labels[part], minlength=10).tolist() == [share] * 10
    again = stratified_split(labels, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(stratified_split(labels, seed=1)[1], val)


def test_digits_task_shapes_normalisation_and_balance():
    task = load_task("digits", (64, 64), seed=0)
    sizes = [len(task.y_train), len(task.y_val), len(task.y_test)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] and 0.59 < sizes[0] / 1797 < 0.61
    assert task.x_val.shape[1:] == (3, 64, 64)
    assert torch.equal(task.x_train[:, 0], task.x_train[:, 2])  # grey replicated to RGB
    assert abs(float(task.x_train.mean())) < 1e-4 and abs(float(task.x_train.std()) - 1) < 1e-3
    for y in (task.y_train, task.y_val, task.y_test):  # every class in proportion
        counts = np.bincount(y.numpy(), minlength=10) / len(y)
        assert counts.min() > 0.08 and counts.max() < 0.12
    with pytest.raises(ValueError, match="unknown split 'dev'; valid: train, val, test"):
        task.split("dev")


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'mnist'; valid: digits"):
        load_task("mnist")


# ------------------------------------------------------------------------------ supernet
def test_subnet_equals_supernet_slice(space):
    torch.manual_seed(0)
    net = _randomise_bn(MBConvSupernet(space.config))
    x = torch.randn(3, 3, 64, 64)
    rng = np.random.default_rng(1)
    for arch in (space.config.max_arch(), space.config.min_arch(), sample_arch(space.config, rng)):
        sub = extract_subnet(net, arch)
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, arch), rtol=1e-4, atol=1e-5)
        assert all(type(m).__module__.startswith("torch.nn") or m is sub
                   or type(m).__name__ in ("SubnetBlock", "Add", "GlobalAvgPool")
                   for m in sub.modules())


def _layers(ops):
    """Every op that runs a kernel, with what it reads: FREE ops (flatten, dropout) and
    precision boundaries (quantize / dequantize) are looked through to their source."""
    alias = {}
    for op in ops:
        if op.kind in (OpKind.FREE, OpKind.QUANTIZE, OpKind.DEQUANTIZE):
            alias[op.name] = alias.get(op.inputs[0], op.inputs[0]) if op.inputs else ""
    return [(op.name, op.kind, op.m, op.n, op.k, op.groups, op.flops, tuple(op.out_shape),
             op.fused, tuple(alias.get(i, i) for i in op.inputs))
            for op in ops if op.name not in alias]


def _candidate_with_residual_first_block(space):
    """A random candidate whose stride-1 stage s3 starts at its input's width (s3.b0 adds)."""
    params = space.sample(np.random.default_rng(7))
    params["s2.width"] = params["s3.width"] = 128
    return space.decode(params)


@pytest.mark.slow
def test_subnet_lowers_to_the_priced_layers(space):
    """The evaluated network has the same layers and strides as the priced one."""
    torch.manual_seed(0)
    net = MBConvSupernet(space.config).eval()
    candidate = _candidate_with_residual_first_block(space)
    smallest = space.decode(space.encode(
        dataclasses.replace(candidate, arch=space.config.min_arch())))
    cases = [(candidate, space.eval_input_shape), (candidate, space.deploy_input_shape),
             (smallest, space.deploy_input_shape)]
    for cand, shape in cases:
        lowered = _layers(lower_module(extract_subnet(net, cand), shape))
        priced = _layers(space.to_ops(cand, shape))
        assert lowered == priced, shape
    names = [layer[0] for layer in _layers(space.to_ops(candidate))]
    assert "s3.b0.add" in names and "s0.b1.add" in names and "pool" in names
    eval_ops = space.to_ops(candidate, space.eval_input_shape)
    assert min(min(op.out_shape[2:]) for op in eval_ops
               if op.kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D)) >= 2


def test_kernel_transform_starts_as_centre_crop(space):
    net = MBConvSupernet(space.config)
    dw = net.s0["b1"].dw
    w3 = dw.active_weight(8, 8, 3)
    torch.testing.assert_close(w3, dw.weight[:8, :, 2:5, 2:5])
    with pytest.raises(ValueError, match="kernel 4 not offered"):
        dw.active_weight(8, 8, 4)


def test_bad_arch_is_rejected(space):
    arch = space.config.max_arch()
    bad = dataclasses.replace(arch, stages=(StageChoice(33, (3, 3), (3, 3)),) + arch.stages[1:])
    with pytest.raises(ValueError, match="not in space mbconv"):
        MBConvSupernet(space.config)(torch.zeros(1, 3, 64, 64), bad)


# ------------------------------------------------------------------------------ training cache
TINY_TRAIN = TrainConfig(batch_size=8, max_steps=2, warmup_steps=1)


def _tiny_config(space):
    """A small config of the same family (training it takes a second)."""
    cfg = space.config
    stages = tuple(dataclasses.replace(s, widths=(8, 16), depths=(1, 2), kernels=(3, 5),
                                       expands=(2, 3)) for s in cfg.stages)
    return dataclasses.replace(cfg, name="tiny", stem_widths=(8,), stages=stages,
                               head_widths=(16, 32), feature_width=32, sha256="")


def test_training_is_deterministic_and_cached_atomically(space, tmp_path, monkeypatch):
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    cfg = _tiny_config(space)
    events = []
    first = get_trained_supernet(cfg, seed=3, train=TINY_TRAIN, progress=events.append)
    path = cache_path(cfg, 3, TINY_TRAIN)
    assert path.is_file() and path.parent.parent == tmp_path
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert [e.step for e in events if not e.message] == [1, 2]
    assert events[-1].message.startswith("cached")
    events.clear()
    loaded = get_trained_supernet(cfg, seed=3, train=TINY_TRAIN, progress=events.append)
    assert events[0].message.startswith("loaded")
    os.remove(path)
    again = get_trained_supernet(cfg, seed=3, train=TINY_TRAIN)
    for (name, a), b, c in zip(first.state_dict().items(), loaded.state_dict().values(),
                               again.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), name
    # the key covers seed and hyperparameters
    assert cache_path(cfg, 4, TINY_TRAIN) != path
    assert cache_path(cfg, 3, dataclasses.replace(TINY_TRAIN, lr=1e-3)) != path


def test_unreadable_cache_is_retrained(space, tmp_path, monkeypatch):
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    cfg = _tiny_config(space)
    path = cache_path(cfg, 0, TINY_TRAIN)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    events = []
    get_trained_supernet(cfg, seed=0, train=TINY_TRAIN, progress=events.append)
    assert events[0].message.startswith("ignoring unreadable weights")
    assert torch.load(path, weights_only=True)["seed"] == 0
