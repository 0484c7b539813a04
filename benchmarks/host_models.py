"""A zoo of small, deterministic PyTorch models for host latency measurements.

The zoo is the training/validation set for latency cost models, so it aims
for *diversity of operator mix and shape* rather than realism: plain conv
stacks (width, depth, kernel size, stride), depthwise-separable and
inverted-residual (MobileNet-style) blocks, residual blocks with adds,
squeeze-excitation, MLPs of varied width and batch, pooling / flatten /
dropout heads, with and without batchnorm, at input resolutions 32..160.
Single-threaded XNNPACK fp32 latencies on a 2-core x86 host span roughly
0.01 ms to 50 ms.

Every entry of :data:`MODELS` is a zero-argument factory returning
``(module, input_shape)`` with ``module`` in eval mode. Weights are drawn
from a seed derived from the model name (CRC32), inside a forked RNG so that
building a model neither depends on nor disturbs the caller's global RNG
state; batchnorm running statistics are randomised too, so batchnorm is never
a numerical no-op. Nothing is downloaded.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MODELS", "ModelFactory", "example_input", "build"]

#: A zoo entry: builds ``(module, input_shape)``.
ModelFactory = Callable[[], tuple[nn.Module, tuple[int, ...]]]

MODELS: dict[str, ModelFactory] = {}


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Deterministic standard-normal input of ``shape`` (float32)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """Build zoo model ``name``; raises KeyError listing valid names if unknown."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    return factory()


def _randomize_batchnorm(module: nn.Module, gen: torch.Generator) -> None:
    """Give every batchnorm non-trivial affine params and running stats."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(1.0 + 0.2 * torch.rand(n, generator=gen))


def _register(name: str, shape: tuple[int, ...], make: Callable[[], nn.Module]) -> None:
    """Add a seeded factory for ``make`` under ``name``."""
    if name in MODELS:
        raise ValueError(f"duplicate zoo model {name!r}")
    seed = zlib.crc32(name.encode())

    def factory() -> tuple[nn.Module, tuple[int, ...]]:
        # fork_rng: parameter init uses the global RNG; isolate it so results
        # do not depend on what ran before and the caller's stream is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = make()
            _randomize_batchnorm(module, torch.Generator().manual_seed(seed))
        return module.eval(), shape

    factory.__name__ = name
    factory.__qualname__ = name
    factory.__doc__ = f"Zoo model {name!r}: returns (module, input_shape={shape})."
    MODELS[name] = factory


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def _conv_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bn: bool = False,
              act: type[nn.Module] | None = nn.ReLU) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act())
    return layers


class _Head(nn.Sequential):
    """Global average pool -> flatten -> (dropout) -> linear classifier."""

    def __init__(self, cin: int, classes: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(cin, classes))
        super().__init__(*layers)


def conv_stack(width: int, depth: int, k: int, strides: tuple[int, ...] = (), bn: bool = False,
               head: bool = False, cin: int = 3) -> nn.Module:
    """``depth`` conv+ReLU layers of ``width`` channels; ``strides[i]`` for layer i (default 1)."""
    layers: list[nn.Module] = []
    c = cin
    for i in range(depth):
        s = strides[i] if i < len(strides) else 1
        layers += _conv_act(c, width, k, s, bn=bn)
        c = width
    if head:
        layers.append(_Head(c, 10))
    return nn.Sequential(*layers)


def dwsep_net(width: int, blocks: int, k: int = 3, stem_stride: int = 1, strides: tuple[int, ...] = (),
              bn: bool = False, head: bool = True, widen: int = 1) -> nn.Module:
    """MobileNetV1-style: stem conv, then depthwise kxk + pointwise 1x1 blocks.

    ``widen`` multiplies the channel count at every strided block.
    """
    layers: list[nn.Module] = _conv_act(3, width, 3, stem_stride, bn=bn)
    c = width
    for i in range(blocks):
        s = strides[i] if i < len(strides) else 1
        cout = c * widen if s > 1 else c
        layers += _conv_act(c, c, k, s, groups=c, bn=bn)
        layers += _conv_act(c, cout, 1, bn=bn)
        c = cout
    if head:
        layers.append(_Head(c, 10))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise kxk, 1x1 project, skip if shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1, k: int = 3, bn: bool = True,
                 act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_act(cin, hidden, 1, bn=bn, act=act)
        layers += _conv_act(hidden, hidden, k, stride, groups=hidden, bn=bn, act=act)
        layers += _conv_act(hidden, cout, 1, bn=bn, act=None)
        self.body = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_skip else y


def invres_net(stem: int, stages: tuple[tuple[int, int, int, int], ...], bn: bool = True, head: bool = True,
               stem_stride: int = 1, k: int = 3) -> nn.Module:
    """Stem conv then stages of ``(expand, cout, repeats, first_stride)`` inverted residuals."""
    layers: list[nn.Module] = _conv_act(3, stem, 3, stem_stride, bn=bn, act=nn.ReLU6)
    c = stem
    for expand, cout, repeats, stride in stages:
        for r in range(repeats):
            layers.append(InvertedResidual(c, cout, expand, stride if r == 0 else 1, k=k, bn=bn))
            c = cout
    if head:
        layers += _conv_act(c, 4 * c, 1, bn=bn, act=nn.ReLU6)
        layers.append(_Head(4 * c, 10, dropout=0.2))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """ReLU(body(x) + skip(x)); the skip is the identity, or a strided 1x1 projection where the
    body changes the resolution or the channel count."""

    def __init__(self, body: list[nn.Module], cin: int, cout: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(*_conv_act(cin, cout, 1, stride, bn=bn, act=None))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class BasicBlock(_Residual):
    """ResNet basic block: two 3x3 convs, identity or 1x1-projection skip, add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bn: bool = True) -> None:
        super().__init__([*_conv_act(cin, cout, 3, stride, bn=bn),
                          *_conv_act(cout, cout, 3, bn=bn, act=None)], cin, cout, stride, bn)


class Bottleneck(_Residual):
    """ResNet bottleneck: 1x1 reduce, 3x3, 1x1 expand (x4), skip add."""

    def __init__(self, cin: int, mid: int, stride: int = 1, bn: bool = True) -> None:
        cout = 4 * mid
        super().__init__([*_conv_act(cin, mid, 1, bn=bn), *_conv_act(mid, mid, 3, stride, bn=bn),
                          *_conv_act(mid, cout, 1, bn=bn, act=None)], cin, cout, stride, bn)


def resnet(stem: int, stages: tuple[tuple[int, int, int], ...], bn: bool = True, bottleneck: bool = False,
           stem_stride: int = 1, stem_pool: bool = False, head: bool = True) -> nn.Module:
    """Stem conv (+ optional maxpool), stages of ``(width, blocks, first_stride)``."""
    layers: list[nn.Module] = _conv_act(3, stem, 3, stem_stride, bn=bn)
    if stem_pool:
        layers.append(nn.MaxPool2d(3, 2, 1))
    c = stem
    for width, blocks, stride in stages:
        for b in range(blocks):
            s = stride if b == 0 else 1
            if bottleneck:
                layers.append(Bottleneck(c, width, s, bn=bn))
                c = 4 * width
            else:
                layers.append(BasicBlock(c, width, s, bn=bn))
                c = width
    if head:
        layers.append(_Head(c, 10))
    return nn.Sequential(*layers)


class HardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``: numerically ``nn.Hardsigmoid``, but fully delegable.

    ExecuTorch 1.5.1's decomposition of ``aten.hardsigmoid`` lifts two scalar
    constants whose dtype copies (``_to_dim_order_copy``) stay outside the
    XNNPACK delegate; this form lowers to one delegated subgraph.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3.0) * (1.0 / 6.0)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: GAP -> 1x1 reduce -> ReLU -> 1x1 expand -> hard sigmoid -> scale."""

    def __init__(self, c: int, reduce: int = 4) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // reduce, 1), nn.ReLU(),
                                  nn.Conv2d(c // reduce, c, 1), HardSigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class MBv3Block(nn.Module):
    """MobileNetV3-style block: expand, depthwise, SE, project, hardswish, skip."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(*_conv_act(cin, hidden, 1, bn=True, act=nn.Hardswish),
                                  *_conv_act(hidden, hidden, k, stride, groups=hidden, bn=True, act=nn.Hardswish),
                                  SqueezeExcite(hidden),
                                  *_conv_act(hidden, cout, 1, bn=True, act=None))
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_skip else y


def mbv3_net(stem: int, blocks: tuple[tuple[int, int, int, int], ...]) -> nn.Module:
    """Stem conv (stride 2, hardswish) then ``(cout, expand, k, stride)`` MBv3 blocks and a head."""
    layers: list[nn.Module] = _conv_act(3, stem, 3, 2, bn=True, act=nn.Hardswish)
    c = stem
    for cout, expand, k, stride in blocks:
        layers.append(MBv3Block(c, cout, expand, k, stride))
        c = cout
    layers.append(_Head(c, 10, dropout=0.2))
    return nn.Sequential(*layers)


def mlp(features: int, hidden: tuple[int, ...], classes: int = 10, dropout: float = 0.0,
        bn: bool = False) -> nn.Module:
    """Linear+ReLU stack (optional BatchNorm1d / dropout after each hidden layer)."""
    layers: list[nn.Module] = []
    c = features
    for h in hidden:
        layers.append(nn.Linear(c, h))
        if bn:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        c = h
    layers.append(nn.Linear(c, classes))
    return nn.Sequential(*layers)


def lenet(res: int, cin: int = 3, pool: type[nn.Module] = nn.MaxPool2d) -> nn.Module:
    """LeNet-5 shape: conv5-pool-conv5-pool-flatten-fc-fc-fc (valid padding)."""
    side = ((res - 4) // 2 - 4) // 2
    return nn.Sequential(nn.Conv2d(cin, 6, 5), nn.ReLU(), pool(2), nn.Conv2d(6, 16, 5), nn.ReLU(), pool(2),
                         nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


def vgg_mini(width: int, res: int, bn: bool = False, dropout: float = 0.5) -> nn.Module:
    """Three [conv3-conv3-maxpool] stages doubling width, flatten, FC-dropout-FC."""
    layers: list[nn.Module] = []
    c, w = 3, width
    for _ in range(3):
        layers += _conv_act(c, w, 3, bn=bn) + _conv_act(w, w, 3, bn=bn) + [nn.MaxPool2d(2)]
        c, w = w, 2 * w
    side = res // 8
    layers += [nn.Flatten(), nn.Linear(c * side * side, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def avgpool_cnn(width: int, res: int) -> nn.Module:
    """Conv stages separated by 2x2 average pooling, then GAP/flatten/dropout/linear."""
    layers: list[nn.Module] = []
    c = 3
    for i in range(3):
        layers += _conv_act(c, width * (i + 1), 3) + [nn.AvgPool2d(2)]
        c = width * (i + 1)
    layers.append(_Head(c, 10, dropout=0.3))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------
# Registry. Names encode the knobs: w=width, d=depth, k=kernel, s=strided,
# b=blocks, t=expansion, r=input resolution, bn=batchnorm.
# --------------------------------------------------------------------------

def _img(res: int, c: int = 3) -> tuple[int, ...]:
    return (1, c, res, res)


# Plain conv stacks: width x depth x kernel x stride x resolution.
_register("conv_w8_d1_k3_r32", _img(32), lambda: conv_stack(8, 1, 3))
_register("conv_w16_d2_k3_r32", _img(32), lambda: conv_stack(16, 2, 3))
_register("conv_w32_d3_k3_r32", _img(32), lambda: conv_stack(32, 3, 3))
_register("conv_w128_d3_k3_r32", _img(32), lambda: conv_stack(128, 3, 3))
_register("conv_w32_d4_k3_r64", _img(64), lambda: conv_stack(32, 4, 3))
_register("conv_w16_d3_k5_r64", _img(64), lambda: conv_stack(16, 3, 5))
_register("conv_w24_d2_k7_r96", _img(96), lambda: conv_stack(24, 2, 7))
_register("conv_w64_d3_k1_r56", _img(56), lambda: conv_stack(64, 3, 1))
_register("conv_w64_d4_k3_s2_r128", _img(128), lambda: conv_stack(64, 4, 3, strides=(2, 1, 2, 1)))
_register("conv_w48_d6_k3_s2_r160_head", _img(160),
          lambda: conv_stack(48, 6, 3, strides=(2, 1, 2, 1, 2, 1), head=True))
_register("conv_w256_d2_k3_r16", _img(16), lambda: conv_stack(256, 2, 3))
_register("conv_w96_d4_k3_r48_bn", _img(48), lambda: conv_stack(96, 4, 3, bn=True))
_register("conv_w32_d8_k3_r32_bn_head", _img(32), lambda: conv_stack(32, 8, 3, bn=True, head=True))
_register("conv_w64_d2_k3_s2_r160", _img(160), lambda: conv_stack(64, 2, 3, strides=(2, 2)))

# Depthwise-separable (MobileNetV1-style).
_register("dwsep_w32_b2_r32", _img(32), lambda: dwsep_net(32, 2))
_register("dwsep_w64_b4_r64", _img(64), lambda: dwsep_net(64, 4))
_register("dwsep_k5_w64_b3_r64", _img(64), lambda: dwsep_net(64, 3, k=5))
_register("dwsep_w32_b6_s2_r160_bn", _img(160),
          lambda: dwsep_net(32, 6, stem_stride=2, strides=(1, 2, 1, 2, 1, 2), widen=2, bn=True))
_register("dwsep_w128_b4_s2_r112", _img(112), lambda: dwsep_net(128, 4, stem_stride=2, strides=(1, 2, 1, 1)))

# Inverted residuals with expansion (MobileNetV2-style), batchnorm folded.
_register("invres_t2_w16_b2_r32", _img(32), lambda: invres_net(16, ((2, 16, 2, 1),), head=False))
_register("invres_t4_w24_b3_r64", _img(64), lambda: invres_net(24, ((4, 24, 3, 1),), bn=False))
_register("invres_t6_w32_b4_r96", _img(96), lambda: invres_net(32, ((6, 32, 4, 2),), stem_stride=2))
_register("invres_t6_k5_w64_b3_s2_r128", _img(128),
          lambda: invres_net(32, ((6, 64, 3, 2),), stem_stride=2, k=5))
_register("mbv2_mini_r96", _img(96),
          lambda: invres_net(16, ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1)),
                             stem_stride=2))
_register("mbv2_mini_r160", _img(160),
          lambda: invres_net(32, ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                                  (6, 160, 2, 2)), stem_stride=2))
_register("mbv3_mini_r128", _img(128),
          lambda: mbv3_net(16, ((16, 1, 3, 2), (24, 4, 3, 2), (24, 3, 3, 1), (40, 3, 5, 2), (40, 3, 5, 1),
                                (48, 3, 5, 1), (96, 6, 5, 2))))

# Residual blocks with adds.
_register("resblock_w16_b2_r32", _img(32), lambda: resnet(16, ((16, 2, 1),), bn=False, head=False))
_register("resblock_w32_b3_r64_bn", _img(64), lambda: resnet(32, ((32, 3, 1),)))
_register("resnet_mini_r64", _img(64), lambda: resnet(32, ((32, 1, 1), (64, 1, 2), (128, 1, 2))))
_register("resnet_mini_r128_pool", _img(128),
          lambda: resnet(32, ((32, 2, 1), (64, 2, 2), (128, 2, 2)), stem_stride=2, stem_pool=True))
_register("resnet10_w64_r96", _img(96),
          lambda: resnet(64, ((64, 1, 1), (128, 1, 2), (256, 1, 2), (512, 1, 2)), stem_stride=2, stem_pool=True))
_register("bottleneck_w32_b2_r56", _img(56), lambda: resnet(64, ((32, 2, 1),), bottleneck=True))
_register("resnet_w64_b2_s2_r112", _img(112),
          lambda: resnet(64, ((64, 2, 1), (128, 2, 2)), stem_stride=2))

# MLPs of varied width, depth and batch.
_register("mlp_64x2", (1, 64), lambda: mlp(64, (64, 64)))
_register("mlp_256x3", (1, 256), lambda: mlp(256, (256, 256, 256)))
_register("mlp_512x4_dropout", (1, 512), lambda: mlp(512, (512,) * 4, dropout=0.1))
_register("mlp_1024x3", (1, 1024), lambda: mlp(1024, (1024,) * 3))
_register("mlp_2048x2", (1, 784), lambda: mlp(784, (2048, 2048)))
_register("mlp_b32_512x3_bn", (32, 512), lambda: mlp(512, (512,) * 3, bn=True))
_register("mlp_b64_1024_4096", (64, 1024), lambda: mlp(1024, (4096, 1024)))

# Pooling / flatten / dropout heads.
_register("lenet_r32", _img(32), lambda: lenet(32))
_register("lenet_avgpool_r64_gray", _img(64, c=1), lambda: lenet(64, cin=1, pool=nn.AvgPool2d))
_register("vgg_mini_w16_r32", _img(32), lambda: vgg_mini(16, 32))
_register("vgg_mini_w32_r64_bn", _img(64), lambda: vgg_mini(32, 64, bn=True))
_register("avgpool_cnn_w32_r96", _img(96), lambda: avgpool_cnn(32, 96))
