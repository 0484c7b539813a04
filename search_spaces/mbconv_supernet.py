"""An OFA / BigNAS-style weight-sharing supernet for the MBConv space, and its static subnets.

The supernet holds the weights of the largest architecture (``MBConvConfig.max_arch()``); any
``Arch`` of the space is a slice of it:
- elastic depth: a stage runs its first ``d`` blocks;
- elastic width (stem, stages, head): the first ``w`` output channels of a layer;
- elastic expansion: the first ``cin * e`` hidden channels of a block;
- elastic kernel: the centre of the 7x7 depthwise kernel, passed through OFA's learned kernel
  transformation matrices (7->5, 5->3; initialised to the identity, so they start as a crop).
BatchNorm follows every convolution (shared, sliced); activations follow the config (the stem and
head use hardswish); a block adds its input when stride is 1 and its in and out widths agree.

``extract_subnet`` copies one architecture's slices into a static network of plain
``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` modules whose module names are the op names of
``codesign.search_spaces.mbconv.lower_arch`` (``stem``, ``s{i}.b{j}.expand|dw|project|add``,
``head``, ``pool``, ``feature``, ``classifier``; the BatchNorm of conv ``X`` is ``X_bn``), so the
network that is evaluated is the network that is priced.

Training (sandwich rule, quantization-aware, cached and shipped weights) is
``codesign.search_spaces.mbconv_training``; every forward here takes an optional per-unit format map
(``codesign.search_spaces.mbconv_qat``) so a subnet can be run as it will be deployed.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codesign.search_spaces.mbconv import Arch, MBConvConfig, StageChoice
from codesign.search_spaces.mbconv_qat import TrainFormat, fake_activation, fake_weight

_ACTS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "hardswish": nn.Hardswish}


# ------------------------------------------------------------------------------ elastic layers
class DynamicConv2d(nn.Module):
    """A convolution whose output channels (first-k), input channels and kernel size shrink.

    Depthwise when ``depthwise``: then the input channel count equals the output's.
    """

    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int, *,
                 depthwise: bool = False, kernel_choices: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.stride, self.depthwise, self.max_kernel = stride, depthwise, kernel
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # OFA's kernel transformation: sizes below the max are derived from the next larger one
        # by a learned (k*k x k*k) map shared by all channels; identity = plain centre crop.
        self.kernel_sizes = tuple(sorted({k for k in kernel_choices if k < kernel}, reverse=True))
        self.transforms = nn.ParameterDict({
            f"to{k}": nn.Parameter(torch.eye(k * k)) for k in self.kernel_sizes})

    def active_weight(self, cin: int, cout: int, kernel: int | None = None) -> torch.Tensor:
        kernel = kernel or self.max_kernel
        w = self.weight[:cout] if self.depthwise else self.weight[:cout, :cin]
        if kernel == self.max_kernel:
            return w
        if kernel not in self.kernel_sizes:
            raise ValueError(f"kernel {kernel} not offered; choices: "
                             f"{(self.max_kernel,) + self.kernel_sizes}")
        for k in self.kernel_sizes:  # 7 -> 5 -> 3, each step from the previous one
            start = (w.shape[-1] - k) // 2
            crop = w[:, :, start:start + k, start:start + k]
            w = (crop.reshape(-1, k * k) @ self.transforms[f"to{k}"]).reshape(crop.shape)
            if k == kernel:
                break
        return w

    def forward(self, x: torch.Tensor, cout: int, kernel: int | None = None,
                fmt: TrainFormat | None = None, *, prunable: bool = True) -> torch.Tensor:
        cin = x.shape[1]
        w = fake_weight(self.active_weight(cin, cout, kernel), fmt,
                        prunable=prunable and not self.depthwise)
        w = trim_kernel(w, self.stride, x.shape[-2:])
        return F.conv2d(x, w, None, self.stride, w.shape[-1] // 2, 1, cin if self.depthwise else 1)


def trim_kernel(weight: torch.Tensor, stride: int, hw) -> torch.Tensor:
    """The centre of a 'same'-padded stride-1 kernel that can touch the input at all.

    On an H x W map a tap more than max(H, W) - 1 from the centre only ever multiplies zero
    padding, so dropping it (and padding less) gives the identical output; a 7x7 depthwise kernel
    on the last 2x2 maps does a ninth of the work.
    """
    k = weight.shape[-1]
    eff = min(k, 2 * max(int(hw[0]), int(hw[1])) - 1)
    if stride != 1 or eff >= k:
        return weight
    start = (k - eff) // 2
    return weight[..., start:start + eff, start:start + eff]


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels of the shared statistics and affine parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        # the shared running statistics only seed evaluation (subnets are recalibrated)
        momentum = 0.1 if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c],
                            self.bias[:c], self.training, momentum, self.eps)


class DynamicLinear(nn.Linear):
    """A linear layer whose input features (first-k) shrink; outputs stay full."""

    def forward(self, x: torch.Tensor, fmt: TrainFormat | None = None, *,
                prunable: bool = True) -> torch.Tensor:
        return F.linear(x, fake_weight(self.weight[:, :x.shape[1]], fmt, prunable=prunable),
                        self.bias)


class MBBlock(nn.Module):
    """An elastic inverted-residual block: 1x1 expand, kxk depthwise, 1x1 project."""

    def __init__(self, max_in: int, max_out: int, max_expand: int, max_kernel: int,
                 kernels: tuple[int, ...], stride: int, act: str) -> None:
        super().__init__()
        hidden = max_in * max_expand
        self.stride = stride
        self.expand = DynamicConv2d(max_in, hidden, 1, 1)
        self.expand_bn = DynamicBatchNorm2d(hidden)
        self.dw = DynamicConv2d(hidden, hidden, max_kernel, stride, depthwise=True,
                                kernel_choices=kernels)
        self.dw_bn = DynamicBatchNorm2d(hidden)
        self.project = DynamicConv2d(hidden, max_out, 1, 1)
        self.project_bn = DynamicBatchNorm2d(max_out)
        self.act = _ACTS[act]()

    def forward(self, x: torch.Tensor, width: int, kernel: int, expand: int,
                fmt: TrainFormat | None = None) -> torch.Tensor:
        cin = x.shape[1]
        hidden = cin * expand
        x = fake_activation(x, fmt)  # the block reads its input at its own precision
        y = fake_activation(self.act(self.expand_bn(self.expand(x, hidden, fmt=fmt))), fmt)
        y = fake_activation(self.act(self.dw_bn(self.dw(y, hidden, kernel, fmt=fmt))), fmt)
        y = fake_activation(self.project_bn(self.project(y, width, fmt=fmt)), fmt)
        return fake_activation(x + y, fmt) if self.stride == 1 and cin == width else y


class MBConvSupernet(nn.Module):
    """The weight-sharing supernet of an ``MBConvConfig``; ``forward(x, arch)`` runs a subnet
    (the largest when ``arch`` is None). Attribute names follow the op names of ``lower_arch``:
    ``stem``, ``s{i}`` (a ModuleDict of ``b{j}`` blocks), ``head``, ``feature``, ``classifier``.
    """

    def __init__(self, config: MBConvConfig, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        cin = config.eval_input_shape[1]
        stem_w = max(config.stem_widths)
        self.stem = DynamicConv2d(cin, stem_w, config.stem_kernel, config.stem_stride)
        self.stem_bn = DynamicBatchNorm2d(stem_w)
        self.stem_act = nn.Hardswish()
        prev = stem_w
        self.stage_names: list[str] = []
        for i, s in enumerate(config.stages):
            blocks = nn.ModuleDict()
            for j in range(max(s.depths)):
                block = MBBlock(prev, max(s.widths), max(s.expands), max(s.kernels), s.kernels,
                                s.stride if j == 0 else 1, s.act)
                if j > 0:
                    # blocks after the first always add their input: a zero last-BN scale makes
                    # them start as the identity (BigNAS), so every depth starts out equal
                    nn.init.zeros_(block.project_bn.weight)
                blocks[f"b{j}"] = block
                prev = max(s.widths)
            self.add_module(f"s{i}", blocks)
            self.stage_names.append(f"s{i}")
        head_w = max(config.head_widths)
        self.head = DynamicConv2d(prev, head_w, 1, 1)
        self.head_bn = DynamicBatchNorm2d(head_w)
        self.head_act = nn.Hardswish()
        self.feature = DynamicLinear(head_w, config.feature_width)
        self.feature_act = nn.Hardswish()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.feature_width, config.num_classes)

    def forward(self, x: torch.Tensor, arch: Arch | None = None,
                formats: Mapping[str, TrainFormat] | None = None) -> torch.Tensor:
        """Run subnet ``arch`` (the largest when None); ``formats`` maps precision units
        (``stem``, ``s{i}.b{j}``, ``head``, ``feature``, ``classifier``) to the format each runs
        in (quantization-aware training; None or a missing unit: fp32)."""
        arch = arch or self.config.max_arch()
        check_arch(self.config, arch)
        fmt = (formats or {}).get
        x = fake_activation(x, fmt("stem"))
        x = self.stem_act(self.stem_bn(self.stem(x, arch.stem_width, fmt=fmt("stem"),
                                                 prunable=False)))
        x = fake_activation(x, fmt("stem"))
        for name, stage in zip(self.stage_names, arch.stages):
            blocks = getattr(self, name)
            for j in range(stage.depth):
                x = blocks[f"b{j}"](x, stage.width, stage.kernels[j], stage.expands[j],
                                    fmt(f"{name}.b{j}"))
        x = fake_activation(x, fmt("head"))
        x = self.head_act(self.head_bn(self.head(x, arch.head_width, fmt=fmt("head"))))
        x = fake_activation(fake_activation(x, fmt("head")).mean((2, 3)), fmt("head"))
        x = fake_activation(x, fmt("feature"), per_token=True)
        x = self.dropout(fake_activation(self.feature_act(self.feature(x, fmt("feature"))),
                                         fmt("feature")))
        x = fake_activation(x, fmt("classifier"), per_token=True)
        return F.linear(x, fake_weight(self.classifier.weight, fmt("classifier"), prunable=False),
                        self.classifier.bias)


def check_arch(config: MBConvConfig, arch: Arch) -> None:
    """ValueError unless every choice of ``arch`` is offered by ``config``."""
    bad = []
    if arch.stem_width not in config.stem_widths:
        bad.append(f"stem width {arch.stem_width}")
    if arch.head_width not in config.head_widths:
        bad.append(f"head width {arch.head_width}")
    if len(arch.stages) != len(config.stages):
        bad.append(f"{len(arch.stages)} stages (config has {len(config.stages)})")
    for i, (st, sc) in enumerate(zip(arch.stages, config.stages)):
        if st.width not in sc.widths or st.depth not in sc.depths \
                or len(st.expands) != st.depth or not set(st.kernels) <= set(sc.kernels) \
                or not set(st.expands) <= set(sc.expands):
            bad.append(f"stage {i} {st}")
    if bad:
        raise ValueError(f"architecture not in space {config.name}: {'; '.join(bad)}")


def sample_arch(config: MBConvConfig, rng: np.random.Generator) -> Arch:
    """A uniformly random architecture of ``config`` (every knob drawn independently)."""
    def pick(choices):
        return choices[int(rng.integers(len(choices)))]

    stages = []
    for s in config.stages:
        d = pick(s.depths)
        stages.append(StageChoice(pick(s.widths), tuple(pick(s.kernels) for _ in range(d)),
                                  tuple(pick(s.expands) for _ in range(d))))
    return Arch(pick(config.stem_widths), tuple(stages), pick(config.head_widths))


# ------------------------------------------------------------------------------ static subnets
class Add(nn.Module):
    """The residual add, a module so the lowered op is named ``s{i}.b{j}.add``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class GlobalAvgPool(nn.Module):
    """Mean over the spatial dimensions to (N, C): one ``global_pool`` op, as priced.

    ``keepdim`` then ``flatten``: XNNPACK delegates a 4-D mean over (H, W) only when it keeps
    the dimensions; without it ExecuTorch falls back to the portable ``mean.out``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True).flatten(1)


class SubnetBlock(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int,
                 act: str) -> None:
        super().__init__()
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(hidden)
        self.expand_act = _ACTS[act]()
        self.dw = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_act = _ACTS[act]()
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)
        self.add = Add() if stride == 1 and cin == cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand_act(self.expand_bn(self.expand(x)))
        y = self.dw_act(self.dw_bn(self.dw(y)))
        y = self.project_bn(self.project(y))
        return self.add(x, y) if self.add is not None else y


class MBConvSubnet(nn.Module):
    """One static architecture: plain modules named after the op names (see module docstring);
    the BatchNorm of conv ``X`` is ``X_bn``, its activation ``X_act``."""

    def __init__(self, config: MBConvConfig, arch: Arch, *, dropout: float = 0.0) -> None:
        super().__init__()
        check_arch(config, arch)
        self.arch = arch
        cin = config.eval_input_shape[1]
        k = config.stem_kernel
        self.stem = nn.Conv2d(cin, arch.stem_width, k, config.stem_stride, k // 2, bias=False)
        self.stem_bn = nn.BatchNorm2d(arch.stem_width)
        self.stem_act = nn.Hardswish()
        prev = arch.stem_width
        self.stage_names: list[str] = []
        for i, (st, sc) in enumerate(zip(arch.stages, config.stages)):
            blocks = nn.ModuleDict()
            for j in range(st.depth):
                blocks[f"b{j}"] = SubnetBlock(prev, prev * st.expands[j], st.width, st.kernels[j],
                                              sc.stride if j == 0 else 1, sc.act)
                prev = st.width
            self.add_module(f"s{i}", blocks)
            self.stage_names.append(f"s{i}")
        self.head = nn.Conv2d(prev, arch.head_width, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(arch.head_width)
        self.head_act = nn.Hardswish()
        self.pool = GlobalAvgPool()
        self.feature = nn.Linear(arch.head_width, config.feature_width)
        self.feature_act = nn.Hardswish()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.feature_width, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        for name in self.stage_names:
            for block in getattr(self, name).values():
                x = block(x)
        x = self.head_act(self.head_bn(self.head(x)))
        x = self.pool(x)
        x = self.dropout(self.feature_act(self.feature(x)))
        return self.classifier(x)


@torch.no_grad()
def extract_subnet(supernet: MBConvSupernet, arch_or_candidate) -> MBConvSubnet:
    """A standalone static copy of one subnet (an ``Arch`` or a ``Candidate``'s arch).

    Weights, BatchNorm affine parameters and running statistics are copied from the supernet's
    slices (kernel transforms applied); the result is in eval mode and ``torch.export``-able, and
    ``subnet(x) == supernet(x, arch)`` in eval mode.
    """
    arch = getattr(arch_or_candidate, "arch", arch_or_candidate)
    cfg = supernet.config
    sub = MBConvSubnet(cfg, arch, dropout=supernet.dropout.p)

    def copy_conv(name: str, cin: int, cout: int, kernel: int | None = None) -> None:
        src: DynamicConv2d = supernet.get_submodule(name)
        sub.get_submodule(name).weight.copy_(src.active_weight(cin, cout, kernel))
        copy_bn(f"{name}_bn", cout)

    def copy_bn(name: str, c: int) -> None:
        src, dst = supernet.get_submodule(name), sub.get_submodule(name)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst, attr).copy_(getattr(src, attr)[:c])
        dst.num_batches_tracked.copy_(src.num_batches_tracked)

    copy_conv("stem", cfg.eval_input_shape[1], arch.stem_width)
    prev = arch.stem_width
    for i, st in enumerate(arch.stages):
        for j in range(st.depth):
            unit, hidden = f"s{i}.b{j}", prev * st.expands[j]
            copy_conv(f"{unit}.expand", prev, hidden)
            copy_conv(f"{unit}.dw", hidden, hidden, st.kernels[j])
            copy_conv(f"{unit}.project", hidden, st.width)
            prev = st.width
    copy_conv("head", prev, arch.head_width)
    sub.feature.weight.copy_(supernet.feature.weight[:, :arch.head_width])
    sub.feature.bias.copy_(supernet.feature.bias)
    sub.classifier.load_state_dict(supernet.classifier.state_dict())
    return sub.eval()


# ------------------------------------------------------------------------------ training helpers
@dataclass(frozen=True)
class TrainProgress:
    """One progress report of supernet training (passed to the ``progress`` callback)."""

    step: int
    steps: int
    epoch: int
    loss: float
    elapsed_s: float
    message: str = ""


def cache_dir() -> Path:
    """The user cache directory (``codesign.kernels.cache_paths.cache_dir``), whatever the current
    one."""
    from codesign.kernels.cache_paths import cache_dir as user_cache_dir

    return user_cache_dir()


def config_digest(config: MBConvConfig) -> str:
    """The config file's sha256, or a digest of the parsed config when built in memory."""
    return config.sha256 or hashlib.sha256(repr(config).encode()).hexdigest()


def save_atomic(blob: dict, path: Path) -> None:
    """``torch.save(blob)`` to ``path`` through a private temporary file and ``os.replace``:
    a crash never leaves a half-written cache entry, and two writers each write their own file
    (the last rename wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(blob, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_first_readable(sources, read: Callable[[Path], object],
                        progress: Callable[[TrainProgress], None] | None = None):
    """``read(source)`` of the first existing source that reads, reporting what it loaded or
    skipped through ``progress``; None when none does. A corrupt or stale file is skipped, not
    fatal: the caller retrains rather than failing the search."""
    for source in sources:
        if not source.is_file():
            continue
        try:
            loaded = read(source)
        except Exception as exc:
            if progress is not None:
                progress(TrainProgress(0, 0, 0, float("nan"), 0.0,
                                       f"ignoring unreadable weights {source}: {exc}"))
            continue
        if progress is not None:
            progress(TrainProgress(0, 0, 0, float("nan"), 0.0, f"loaded {source}"))
        return loaded
    return None
