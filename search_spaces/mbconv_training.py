"""Training the MBConv supernet: sandwich rule, in-place distillation, quantization- and
sparsity-aware (``codesign.search_spaces.mbconv_qat``), checkpointed, with shipped weights.

``get_trained_supernet`` returns, in this order: the user cache's trained weights, the weights
shipped in ``configs/weights/`` for the same training key (so a first run does not train for
minutes), or a fresh training run (checkpointed every ``checkpoint_every_s`` seconds beside the
cache file, so an interrupted cold start resumes where it stopped).

The training key hashes what decides the weights: the network (stem, stages, head, classes,
input shape), the task, the format menu, the seed and every ``TrainConfig`` field — not the
parts of the space file that only the search reads (tiles, per-back-end offers beyond the menu).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codesign.cost_models.devices import CONFIG_DIR
from codesign.search_spaces.mbconv import MBConvConfig, units
from codesign.search_spaces.mbconv_qat import sample_unit_formats, train_format
from codesign.search_spaces.mbconv_supernet import (MBConvSupernet, TrainProgress, cache_dir,
                                                    load_first_readable, sample_arch,
                                                    save_atomic)
from codesign.search_spaces.tasks import TaskError, is_user_task, load_task, task_digest, user_task

CACHE_FORMAT = 3  # bump when the parameter layout or the training procedure changes
WEIGHTS_DIR = CONFIG_DIR / "weights"  # in a checkout, the repository's configs/weights


@dataclass(frozen=True)
class TrainConfig:
    """Supernet training hyperparameters (all of them key the weight cache).

    ``epochs`` may be fractional; ``max_steps`` caps the step count (tests train tiny
    supernets), 0 = no cap. ``qat``: sample a format per unit for every subnet but the teacher
    (the largest, fp32); ``shift_px``: random translation of each training image by up to this
    many pixels (the digits are 8x8 upsampled; a pixel of the original is ``H / 8``).
    """

    task: str = "digits"
    epochs: float = 20.0
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup_steps: int = 20
    n_random: int = 2
    distill_weight: float = 0.5  # share of the KD loss (vs. labels) for the non-largest subnets
    label_smoothing: float = 0.1
    dropout: float = 0.0
    max_steps: int = 0
    qat: bool = True
    max_formats: int = 3
    shift_px: int = 6
    checkpoint_every_s: float = 60.0
    # the formats units train in (labels as in the space file: precision[+sparsity]); a format
    # the search offers outside this menu is scored one-shot, on numerics it never trained with
    conv_formats: tuple[str, ...] = ("w32a32", "w8a8", "w4a8", "w32a32+2:4",
                                     "w32a32+block4x4", "w32a32+unstructured50",
                                     "w32a32+unstructured75")
    linear_formats: tuple[str, ...] = conv_formats + ("w4a8-dyn",)


def training_digest(config: MBConvConfig) -> str:
    """A digest of what decides a supernet's weights (see the module docstring)."""
    network = {"name": config.name, "classes": config.num_classes,
               "input": list(config.eval_input_shape), "stem": [list(config.stem_widths),
                                                                config.stem_stride,
                                                                config.stem_kernel],
               "stages": [dataclasses.asdict(s) for s in config.stages],
               "head": [list(config.head_widths), config.feature_width]}
    return hashlib.sha256(json.dumps(network, sort_keys=True, default=list).encode()).hexdigest()


def format_menu(train: TrainConfig) -> dict[str, tuple]:
    """The ``TrainFormat`` menu of conv and linear units."""
    return {"conv": tuple(train_format(label) for label in train.conv_formats),
            "linear": tuple(train_format(label) for label in train.linear_formats)}


def config_for_task(config: MBConvConfig, task: str) -> MBConvConfig:
    """``config`` shaped to the user task ``task`` (MODULE:FACTORY): its images' channels and
    resolution are the input that is trained, scored and priced (deploy = eval shape: the data
    has one resolution), its class count the classifier's. TaskError when the network cannot
    take the images: below the total stride the last stage would see padding only."""
    c, h, w = user_task(task).image_shape
    if min(h, w) < config.total_stride:
        raise TaskError(f"{h}x{w} images are smaller than space {config.name}'s total stride "
                        f"{config.total_stride}: it needs H and W >= {config.total_stride}")
    shape = (1, c, h, w)
    return dataclasses.replace(config, num_classes=user_task(task).num_classes, task=task,
                               deploy_input_shape=shape, eval_input_shape=shape)


def train_config_for(task: str, base: TrainConfig | None = None) -> TrainConfig:
    """The training config on ``task``: ``base`` with its task set, or (no ``base``) the
    defaults with a user task's own ``training`` overrides (``TaskSplits.training``)."""
    if base is not None:
        return base if base.task == task else dataclasses.replace(base, task=task)
    overrides = dict(user_task(task).training) if is_user_task(task) else {}
    return TrainConfig(**{**overrides, "task": task})


def cache_key(config: MBConvConfig, seed: int, train: TrainConfig) -> str:
    fields = dataclasses.asdict(train)
    if is_user_task(train.task):  # keyed by the data itself, not by where its factory lives
        fields["task"] = "sha256:" + task_digest(train.task)
    payload = {"format": CACHE_FORMAT, "network": training_digest(config), "seed": int(seed),
               "train": fields}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cache_path(config: MBConvConfig, seed: int = 0, train: TrainConfig | None = None) -> Path:
    train = train or TrainConfig()
    return cache_dir() / "supernets" / f"{config.name}-{cache_key(config, seed, train)}.pt"


def shipped_path(config: MBConvConfig, seed: int = 0, train: TrainConfig | None = None) -> Path:
    """Where the repository ships trained weights for this key (``configs/weights``)."""
    train = train or TrainConfig()
    return WEIGHTS_DIR / f"{config.name}-{cache_key(config, seed, train)}.safetensors"


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by its own random (dy, dx) in [-shift, shift], edges replicated
    (the digits' border is background)."""
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


def _lr_at(train: TrainConfig, step: int, steps: int) -> float:
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    t = (step - train.warmup_steps) / max(1, steps - train.warmup_steps)
    return 0.5 * train.lr * (1 + math.cos(math.pi * t))


def _optimizer(net: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or "transforms" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=train.lr)


def train_supernet(config: MBConvConfig, seed: int = 0, train: TrainConfig | None = None, *,
                   progress: Callable[[TrainProgress], None] | None = None,
                   checkpoint: Path | None = None) -> MBConvSupernet:
    """Train a supernet on the task's train split (deterministic given ``seed``).

    Sandwich rule, every step: the largest subnet in fp32 (cross-entropy, label-smoothed: the
    teacher), then the largest again (every other step), the smallest and ``n_random`` random
    subnets, each (85% of the time) in a sampled per-unit format palette when ``train.qat``
    (a mix of cross-entropy and KL
    distillation from the teacher's detached soft predictions: in-place distillation); one AdamW
    step (linear warm-up, cosine decay). ``progress`` is called after every step. With
    ``checkpoint``, the state is saved there every ``checkpoint_every_s`` seconds and a
    checkpoint of the same key is resumed from (the batches and the sampled subnets of a step
    depend only on the seed and the step, so a resumed run takes the same steps). The caller's
    global RNG state is left untouched.
    """
    train = train or TrainConfig()
    if train.task != config.task:
        raise ValueError(f"training on task {train.task!r}, but space {config.name} is shaped "
                         f"for {config.task!r}")
    data = load_task(train.task, tuple(config.eval_input_shape[2:]), seed)
    if data.num_classes != config.num_classes:
        raise ValueError(f"task {train.task} has {data.num_classes} classes, space "
                         f"{config.name} expects {config.num_classes}")
    start = time.perf_counter()
    menu = format_menu(train)
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):  # callers may hold no_grad
        torch.manual_seed(seed)
        net = MBConvSupernet(config, dropout=train.dropout)
        n = len(data.y_train)
        per_epoch = max(1, n // train.batch_size)  # drop the ragged last batch (BN stats)
        steps = max(1, int(round(per_epoch * train.epochs)))
        if train.max_steps:
            steps = min(steps, train.max_steps)
        opt = _optimizer(net, train)
        step = _resume(checkpoint, net, opt, progress)
        last_save = time.monotonic()
        net.train()
        big, small = config.max_arch(), config.min_arch()
        order, order_epoch = None, -1
        while step < steps:
            epoch, b = divmod(step, per_epoch)
            if epoch != order_epoch:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(
                    seed * 100_003 + epoch))
                order_epoch = epoch
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
            rng = np.random.default_rng([seed, step])
            idx = order[b * train.batch_size:(b + 1) * train.batch_size]
            # channels-last: CPU depthwise convolutions train several times faster
            x = random_shift(data.x_train[idx], train.shift_px, gen).contiguous(
                memory_format=torch.channels_last)
            y = data.y_train[idx]
            for group in opt.param_groups:
                group["lr"] = _lr_at(train, step, steps)
            opt.zero_grad(set_to_none=True)
            logits = net(x, big)
            loss_big = F.cross_entropy(logits, y, label_smoothing=train.label_smoothing)
            loss_big.backward()
            soft = F.softmax(logits.detach(), dim=1)
            total = loss_big.item()
            # the largest again in a low-precision palette every other step (its one-shot quality
            # in every format matters: the front's best members are large)
            students = [big, small] if train.qat and step % 2 else [small]
            students += [sample_arch(config, rng) for _ in range(train.n_random)]
            for arch in students:
                formats = (sample_unit_formats(units(arch), menu, rng,
                                               max_formats=train.max_formats)
                           if train.qat and rng.random() < 0.85 else None)
                out = net(x, arch, formats)
                kd = F.kl_div(F.log_softmax(out, dim=1), soft, reduction="batchmean")
                ce = F.cross_entropy(out, y)
                loss = train.distill_weight * kd + (1 - train.distill_weight) * ce
                loss.backward()
                total += loss.item()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            step += 1
            if checkpoint is not None and step < steps and \
                    time.monotonic() - last_save >= train.checkpoint_every_s:
                save_atomic({"step": step, "state_dict": net.state_dict(),
                             "optimizer": opt.state_dict()}, checkpoint)
                last_save = time.monotonic()
            if progress is not None:
                progress(TrainProgress(step, steps, step // per_epoch,
                                       total / (1 + len(students)),
                                       time.perf_counter() - start))
    return net.eval()


def _resume(checkpoint: Path | None, net: nn.Module, opt: torch.optim.Optimizer,
            progress) -> int:
    """Load ``checkpoint`` into ``net`` and ``opt`` if it exists; the step to go on from."""
    if checkpoint is None or not checkpoint.is_file():
        return 0
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_state_dict(blob["state_dict"])
        opt.load_state_dict(blob["optimizer"])
    except Exception as exc:  # a stale or torn checkpoint: start over rather than fail
        if progress is not None:
            progress(TrainProgress(0, 0, 0, float("nan"), 0.0,
                                   f"ignoring unreadable checkpoint {checkpoint}: {exc}"))
        return 0
    if progress is not None:
        progress(TrainProgress(0, 0, 0, float("nan"), 0.0,
                               f"resuming from {checkpoint} at step {blob['step']}"))
    return int(blob["step"])


def _load_weights(config: MBConvConfig, train: TrainConfig, path: Path) -> MBConvSupernet:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    with torch.random.fork_rng(devices=[]):  # the init is overwritten: spare the RNG
        net = MBConvSupernet(config, dropout=train.dropout)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in state.items()})
    return net.eval()


def get_trained_supernet(config: MBConvConfig, seed: int = 0, *,
                         train: TrainConfig | None = None,
                         progress: Callable[[TrainProgress], None] | None = None
                         ) -> MBConvSupernet:
    """The trained supernet for (config, seed, train): from the user cache, from the weights
    the repository ships (the built-in task only), or trained now (and cached).

    The cache file is written to a private temporary file and moved into place with
    ``os.replace``, so a crash never leaves a half-written entry and two processes training at
    once each write their own file (the last rename wins; both are identical). A cache file that
    cannot be read is retrained over.
    """
    train = train or TrainConfig()
    path = cache_path(config, seed, train)
    # the shipped weights are the built-in task's; a user's data trains on first use
    sources = (path,) if is_user_task(train.task) else (path, shipped_path(config, seed, train))
    net = load_first_readable(sources, lambda source: _load_weights(config, train, source),
                              progress)
    if net is not None:
        return net
    checkpoint = path.with_suffix(".ckpt")
    net = train_supernet(config, seed, train, progress=progress, checkpoint=checkpoint)
    save_atomic({"state_dict": net.state_dict(), "key": path.stem,
                 "train": dataclasses.asdict(train), "seed": seed,
                 "network_sha256": training_digest(config)}, path)
    checkpoint.unlink(missing_ok=True)
    if progress is not None:
        progress(TrainProgress(0, 0, 0, float("nan"), 0.0, f"cached {path}"))
    return net


def save_shipped_weights(net: MBConvSupernet, path: Path) -> str:
    """Write ``net``'s weights as safetensors (float16: half the bytes; the evaluator computes
    in float32 and the loss of precision is below the weights' own quantization) and return the
    file's sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()
