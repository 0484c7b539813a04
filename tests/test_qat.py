"""Quantization- and sparsity-aware supernet training: the fake-quant numerics it trains with are
the evaluator's, gradients pass straight through, checkpoints resume, shipped weights load."""
import dataclasses

import numpy as np
import pytest
import torch

from codesign.cost_models.backends import load_backend
from codesign.kernels.specs import QuantSpec, block, two_four, unstructured
from codesign.search_spaces import mbconv_training
from codesign.search_spaces.mbconv import MBConvSpace, units
from codesign.search_spaces.mbconv_qat import (FP32, fake_activation, fake_weight,
                                               sample_unit_formats, train_format, training_mask)
from codesign.search_spaces.mbconv_supernet import MBConvSupernet, TrainProgress
from codesign.search_spaces.mbconv_training import (TrainConfig, cache_path, format_menu,
                                                    get_trained_supernet, save_shipped_weights,
                                                    shipped_path, train_supernet)
from codesign.search_spaces.quant_numerics import quantize_weight, sparsity_mask

TINY = TrainConfig(batch_size=8, max_steps=4, warmup_steps=1, checkpoint_every_s=0.0)


@pytest.fixture(scope="module")
def tiny_config():
    cfg = MBConvSpace(load_backend("codesign")).config
    stages = tuple(dataclasses.replace(s, widths=(8, 16), depths=(1, 2), kernels=(3, 5),
                                       expands=(2, 3)) for s in cfg.stages)
    return dataclasses.replace(cfg, name="tiny", stem_widths=(8,), stages=stages,
                               head_widths=(16, 32), feature_width=32,
                               deploy_input_shape=(1, 3, 32, 32),
                               eval_input_shape=(1, 3, 32, 32), sha256="")


def test_train_format_parses_space_labels():
    assert train_format("w32a32") == FP32
    assert train_format("w8a8").quant == QuantSpec(8, 8, 0, False)
    assert train_format("w4a8").quant == QuantSpec(4, 8, 0, False)  # per channel (our int4 GEMM)
    assert train_format("w4a8-dyn").quant == QuantSpec(4, 8, 128, True)  # torchao's group-wise
    assert train_format("w32a32+2:4").sparsity == two_four()
    with pytest.raises(ValueError, match="unknown sparsity 'bogus'"):
        train_format("w32a32+bogus")


@pytest.mark.parametrize("spec", [two_four(), block(4, 4, 0.75), unstructured(0.5),
                                  unstructured(0.75)])
def test_training_mask_is_the_evaluators_mask(spec):
    w = torch.randn(48, 96)
    assert torch.equal(training_mask(w, spec), sparsity_mask(w, spec))


def test_fake_weight_quantizes_like_the_evaluator_and_passes_gradients():
    w = torch.randn(16, 32, requires_grad=True)
    fmt = train_format("w4a8")
    out = fake_weight(w, fmt)
    assert torch.equal(out.detach(), quantize_weight(w.detach(), fmt.quant))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through
    w.grad = None
    sparse = fake_weight(w, train_format("w32a32+2:4"))
    sparse.sum().backward()
    mask = sparsity_mask(w.detach(), two_four())
    assert torch.equal(w.grad, mask.float())  # a pruned weight gets no gradient
    assert fake_weight(w, train_format("w32a32+2:4"), prunable=False) is w


def test_fake_activation_holds_int8_levels():
    x = torch.linspace(-1.0, 3.0, 1000, requires_grad=True)
    y = fake_activation(x, train_format("w8a8"))
    assert len(torch.unique(y.detach())) <= 256
    assert (y.detach() - x.detach()).abs().max() <= 4.0 / 255 / 2 + 1e-6
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert fake_activation(x, FP32) is x


def test_sampled_palettes_respect_max_formats_and_unit_kinds(tiny_config):
    menu = format_menu(TrainConfig())
    rng = np.random.default_rng(0)
    arch = tiny_config.max_arch()
    sizes = set()
    for _ in range(100):
        formats = sample_unit_formats(units(arch), menu, rng, max_formats=3)
        sizes.add(len(set(formats.values())))
        assert len(set(formats.values())) <= 3
        for unit, fmt in formats.items():
            kind = "linear" if unit in ("feature", "classifier") else "conv"
            assert fmt in menu[kind] or fmt == FP32
    assert sizes == {1, 2, 3}


def test_fp32_formats_are_the_plain_forward(tiny_config):
    torch.manual_seed(0)
    net = MBConvSupernet(tiny_config).eval()
    x = torch.randn(2, 3, 32, 32)
    arch = tiny_config.max_arch()
    with torch.no_grad():
        plain = net(x, arch)
        fp32 = net(x, arch, {u: FP32 for u in units(arch)})
        int8 = net(x, arch, {u: train_format("w8a8") for u in units(arch)})
    assert torch.equal(plain, fp32)
    assert not torch.equal(plain, int8)


def test_interrupted_training_resumes_from_its_checkpoint(tiny_config, tmp_path):
    full = train_supernet(tiny_config, 0, TINY)

    def stop_at_two(p: TrainProgress) -> None:
        if p.step == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_supernet(tiny_config, 0, TINY, progress=stop_at_two, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    events = []
    resumed = train_supernet(tiny_config, 0, TINY, progress=events.append, checkpoint=ckpt)
    assert events[0].message.startswith(f"resuming from {ckpt} at step 2")
    assert [e.step for e in events if not e.message] == [3, 4]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_training_under_no_grad_still_trains(tiny_config):
    with torch.no_grad():
        net = train_supernet(tiny_config, 0, dataclasses.replace(TINY, max_steps=1))
    assert any(p.abs().sum() > 0 for p in net.parameters())


def test_shipped_weights_load_without_training(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mbconv_training, "WEIGHTS_DIR", tmp_path / "weights")
    trained = train_supernet(tiny_config, 0, TINY)
    path = shipped_path(tiny_config, 0, TINY)
    digest = save_shipped_weights(trained, path)
    assert len(digest) == 64 and path.suffix == ".safetensors"
    events = []
    loaded = get_trained_supernet(tiny_config, 0, train=TINY, progress=events.append)
    assert [e.message for e in events] == [f"loaded {path}"]
    assert not cache_path(tiny_config, 0, TINY).exists()  # nothing was trained
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        if a.is_floating_point():  # stored as float16
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=name)
        else:
            assert torch.equal(a, b), name
