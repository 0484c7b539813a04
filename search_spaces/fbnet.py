"""HW-NAS-Bench's FBNet space for CIFAR-100 (input 1x3x32x32, 100 classes).

Source: github.com/GATECH-EIC/HW-NAS-Bench, ``hw_nas_bench_api/fbnet_models/model_infer.py``
(``FBNet_Infer``, ``ConvBlock``, ``ConvNorm``, ``Skip``, ``ChannelShuffle``), with
``config["dataset"]`` containing "cifar":
- stem: ``ConvNorm`` 3x3 conv 3->16, stride 1, padding 1, BatchNorm, ReLU;
- 22 searchable layers in 7 stages of [1, 4, 4, 4, 4, 4, 1] layers with output channels
  [16, 24, 32, 64, 112, 184, 352] and first-layer strides [1, 1, 2, 2, 1, 2, 1] (the
  "unofficial CIFAR setting"); the first layer of a stage takes the previous stage's width;
- header: ``ConvNorm`` 1x1 conv 352->1504, BatchNorm, ReLU; adaptive average pool; linear
  1504->100.
Layer choices (``PRIMITIVES`` order): ``k{3,5}_e{1,3,6}`` and ``k{3,5}_e1_g2`` are ``ConvBlock``:
1x1 conv C_in -> C_in*e (groups g) + BN + ReLU, a channel shuffle when g = 2 (view, permute,
contiguous, view), a kxk depthwise conv (stride of the layer, padding k // 2) + BN + ReLU, 1x1 conv
-> C_out (groups g) + BN, plus the input when C_in == C_out and stride 1. ``skip`` is the
identity, or a 1x1 conv + BN + ReLU when the stride is 2 or the width changes.

``lower_arch`` builds the op list directly; ``lower_module(build_module(arch))`` gives the same
list (tested). BatchNorm folds into its conv, ReLU fuses into its producer. Everything is fp32.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence


from torch import nn

from codesign.cost_models.backends import BackendSpec
from codesign.cost_models.ir import Op, OpKind
from codesign.search_spaces.base import FixedChoiceSpace

PRIMITIVES = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6",
              "skip")
LAYERS_PER_STAGE = (1, 4, 4, 4, 4, 4, 1)
STAGE_CHANNELS = (16, 24, 32, 64, 112, 184, 352)
STAGE_STRIDES = (1, 1, 2, 2, 1, 2, 1)  # CIFAR setting
STEM_CHANNELS = 16
HEADER_CHANNELS = 1504  # CIFAR setting
NUM_CLASSES = 100
INPUT_SHAPE = (1, 3, 32, 32)
N_LAYERS = sum(LAYERS_PER_STAGE)
PARAM_NAMES = tuple(f"layer{i}" for i in range(N_LAYERS))


@dataclass(frozen=True)
class FBNetArch:
    """One architecture: the block chosen for each of the 22 layers. Hashable."""

    blocks: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.blocks) != N_LAYERS:
            raise ValueError(f"an FBNet architecture has {N_LAYERS} layers, got {len(self.blocks)}")
        bad = [b for b in self.blocks if b not in PRIMITIVES]
        if bad:
            raise ValueError(f"unknown FBNet block {bad[0]!r}; valid: {', '.join(PRIMITIVES)}")

    @property
    def ops_str(self) -> str:
        """The measurement CSVs' ``ops`` notation: the 22 choices separated by spaces."""
        return " ".join(self.blocks)


def parse_ops(text: str) -> FBNetArch:
    """``"k5_e6 skip ... k3_e1"`` (22 space-separated choices) -> FBNetArch.

    Raises:
        ValueError: naming the count or the unknown choice.
    """
    if not isinstance(text, str):
        raise ValueError(f"FBNet ops {text!r} must be a string of {N_LAYERS} block names")
    blocks = tuple(text.split())
    if len(blocks) != N_LAYERS:
        raise ValueError(f"FBNet ops {text[:60]!r}: expected {N_LAYERS} space-separated blocks, "
                         f"got {len(blocks)}")
    return FBNetArch(blocks)


def _block_params(choice: str) -> tuple[int, int, int]:
    """(kernel, expansion, groups) of a ConvBlock choice."""
    parts = choice.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), int(parts[2][1:]) if len(parts) > 2 else 1


def layer_layout() -> list[tuple[int, int, int]]:
    """(C_in, C_out, stride) of the 22 searchable layers."""
    out, cin = [], STEM_CHANNELS
    for n, cout, stride in zip(LAYERS_PER_STAGE, STAGE_CHANNELS, STAGE_STRIDES):
        for i in range(n):
            out.append((cin, cout, stride if i == 0 else 1))
            cin = cout
    return out


class FBNetSpace(FixedChoiceSpace):
    """The 9^22 FBNet architectures of HW-NAS-Bench (CIFAR-100), fp32 throughout."""

    param_names = PARAM_NAMES
    choices = PRIMITIVES

    def __init__(self, backend: BackendSpec | None = None, *,
                 input_shape: Sequence[int] = INPUT_SHAPE) -> None:
        super().__init__("fbnet", backend, input_shape)

    def _build(self, values: tuple[str, ...]) -> FBNetArch:
        return FBNetArch(values)

    def _values(self, candidate: FBNetArch) -> tuple[str, ...]:
        return candidate.blocks

    def to_ops(self, candidate: FBNetArch, input_shape: Sequence[int] | None = None) -> list[Op]:
        return list(lower_arch(candidate, tuple(input_shape or self.deploy_input_shape)))

    def parse(self, text: str) -> FBNetArch:
        """The candidate of a measurement row's ``ops`` column."""
        return parse_ops(text)


# ------------------------------------------------------------------------------ direct lowering
@functools.lru_cache(maxsize=1024)
def lower_arch(arch: FBNetArch, input_shape: tuple[int, ...] = INPUT_SHAPE) -> tuple[Op, ...]:
    """The op list of ``arch`` at ``input_shape``, built without torch.

    Names, kinds, shapes, FLOPs, fusion and inputs are those ``lower_module`` gives for
    ``build_module(arch, input_shape)`` (tests check the two agree). All ops are fp32, so no
    precision boundary is needed.
    """
    n, c, h, w = input_shape
    ops: list[Op] = []

    def conv(name, prev, cin, cout, kernel, stride, groups, fused):
        nonlocal h, w
        ho, wo = -(-h // stride), -(-w // stride)
        m, k = n * ho * wo, (cin // groups) * kernel * kernel
        kind = OpKind.DEPTHWISE_CONV2D if groups > 1 and cin == groups else OpKind.CONV2D
        ops.append(Op(name, kind, (n, cout, ho, wo), ((n, cin, h, w),), m=m, n=cout // groups,
                      k=k, groups=groups, flops=2.0 * m * (cout // groups) * k * groups,
                      weight_elems=cout * k, out_channels=cout, fused=fused, inputs=(prev,),
                      source="aten.conv2d.default"))
        h, w = ho, wo
        return name

    def free(name, prev, shape, in_shape, source, kind=OpKind.FREE):
        ops.append(Op(name, kind, shape, (in_shape,), inputs=(prev,), source=source))
        return name

    relu_bn = ("batchnorm", "relu")
    prev = conv("stem.conv", "", c, STEM_CHANNELS, 3, 1, 1, relu_bn)
    for i, ((cin, cout, stride), choice) in enumerate(zip(layer_layout(), arch.blocks)):
        unit = f"cells.{i}"
        if choice == "skip":
            if stride != 1 or cin != cout:
                prev = conv(f"{unit}.conv", prev, cin, cout, 1, stride, 1, relu_bn)
            continue
        kernel, expand, groups = _block_params(choice)
        hidden = cin * expand
        block_in, in_shape = prev, (n, cin, h, w)
        x = conv(f"{unit}.conv1", prev, cin, hidden, 1, 1, groups, relu_bn)
        if groups > 1:
            g5 = (n, groups, hidden // groups, h, w)
            t5 = (n, hidden // groups, groups, h, w)
            x = free(f"{unit}.shuffle", x, g5, (n, hidden, h, w), "aten.view.default")
            x = free(f"{unit}.shuffle#1", x, t5, g5, "aten.permute.default", OpKind.LAYOUT)
            x = free(f"{unit}.shuffle#2", x, t5, t5, "aten.contiguous.default")
            x = free(f"{unit}.shuffle#3", x, (n, hidden, h, w), t5, "aten.view.default")
        x = conv(f"{unit}.conv2", x, hidden, hidden, kernel, stride, hidden, relu_bn)
        x = conv(f"{unit}.conv3", x, hidden, cout, 1, 1, groups, ("batchnorm",))
        if cin == cout and stride == 1:
            shape = (n, cout, h, w)
            ops.append(Op(unit, OpKind.ADD, shape, (shape, in_shape),
                          flops=float(math.prod(shape)), inputs=(x, block_in),
                          source="aten.add_.Tensor"))
            x = unit
        prev = x
    prev = conv("header.conv", prev, STAGE_CHANNELS[-1], HEADER_CHANNELS, 1, 1, 1, relu_bn)
    ops.append(Op("avgpool", OpKind.GLOBAL_POOL, (n, HEADER_CHANNELS, 1, 1),
                  ((n, HEADER_CHANNELS, h, w),), flops=float(n * HEADER_CHANNELS * h * w),
                  inputs=(prev,), source="aten.adaptive_avg_pool2d.default"))
    # torch.fx names the top-level view after the views before it (two per channel shuffle)
    views = 2 * sum(choice.endswith("_g2") for choice in arch.blocks)
    flat = free("view" if not views else f"view_{views}", "avgpool", (n, HEADER_CHANNELS),
                (n, HEADER_CHANNELS, 1, 1), "aten.view.default")
    ops.append(Op("fc", OpKind.LINEAR, (n, NUM_CLASSES), ((n, HEADER_CHANNELS),), m=n,
                  n=NUM_CLASSES, k=HEADER_CHANNELS, flops=2.0 * n * NUM_CLASSES * HEADER_CHANNELS,
                  weight_elems=NUM_CLASSES * HEADER_CHANNELS, out_channels=NUM_CLASSES,
                  inputs=(flat,), source="aten.linear.default"))
    return tuple(ops)


# ------------------------------------------------------------------------------ torch module
class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)


class ConvNorm(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int,
                 groups: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = cin == cout and stride == 1
        if groups > 1:
            self.shuffle = ChannelShuffle(groups)
        self.conv1 = nn.Conv2d(cin, hidden, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.nl = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        x = self.nl(self.bn1(self.conv1(x)))
        if hasattr(self, "shuffle"):
            x = self.shuffle(x)
        x = self.nl(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.residual:
            x += identity
        return x


class Skip(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if stride != 1 or cin != cout:
            self.conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        if hasattr(self, "conv"):
            return self.relu(self.bn(self.conv(x)))
        return x


class FBNetInfer(nn.Module):
    """HW-NAS-Bench's ``FBNet_Infer`` (CIFAR setting) for one architecture."""

    def __init__(self, arch: FBNetArch) -> None:
        super().__init__()
        self.stem = ConvNorm(3, STEM_CHANNELS, 3, 1)
        cells = []
        for (cin, cout, stride), choice in zip(layer_layout(), arch.blocks):
            if choice == "skip":
                cells.append(Skip(cin, cout, stride))
            else:
                kernel, expand, groups = _block_params(choice)
                cells.append(ConvBlock(cin, cout, expand, kernel, stride, groups))
        self.cells = nn.ModuleList(cells)
        self.header = ConvNorm(STAGE_CHANNELS[-1], HEADER_CHANNELS, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(HEADER_CHANNELS, NUM_CLASSES)

    def forward(self, x):
        out = self.stem(x)
        for cell in self.cells:
            out = cell(out)
        return self.fc(self.avgpool(self.header(out)).view(out.size(0), -1))


def build_module(arch: FBNetArch) -> FBNetInfer:
    """A torch network of ``arch`` (randomly initialised, eval mode)."""
    return FBNetInfer(arch).eval()


__all__ = ["PRIMITIVES", "FBNetArch", "parse_ops", "layer_layout", "FBNetSpace", "lower_arch",
           "build_module", "FBNetInfer"]
