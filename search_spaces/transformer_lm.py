"""A byte-level language model for the ``transformer`` space, trained once as a weight-sharing
supernet (HAT-style), and the weights of any candidate sliced out of it.

Data: the English text that ships with every CPython, ``pydoc_data.topics`` (the help topics,
joined in sorted key order, UTF-8 bytes: vocabulary 256, one token per byte). Fixed contiguous
splits: the first 90% trains, the next 5% is ``val`` (drives the search), the last 5% ``test``
(reported for front members). Nothing is downloaded.

Supernet: one set of weights of the space's largest decoder, in the state-dict names of
``codesign.search_spaces.transformer_model`` (ExecuTorch's Llama ``Transformer``). A subnet takes
- the first ``layers`` blocks;
- the leading ``d_model`` columns of every matrix that reads the residual stream (and the
  leading ``d_model`` entries of the norms and the embedding rows);
- the first ``heads`` heads of Q (its leading ``heads * head_dim`` rows, O's leading columns)
  and the first ``kv_heads`` heads of K and V: ``head_dim`` is the space's, the same in every
  subnet (HAT's choice), so a head is the same slice of weights, with the same RoPE
  frequencies, in every subnet that has it;
- the leading ``d_ff`` rows of the FFN gate / up and columns of the down projection.
Every step runs the candidate's own ExecuTorch module (``torch.func.functional_call`` with the
slices as its parameters), so the function trained is the function scored and exported.

Training: the sandwich rule (the largest, the smallest and ``n_random`` uniformly random
subnets every step; the non-largest ones learn from the labels and, by in-place distillation,
from the largest's detached predictions), AdamW with warm-up and cosine decay, on random windows
of ``seq_len`` bytes of the train split. Deterministic given the seed; cached on disk keyed by
(space config sha256, corpus sha256, seed, training hyperparameters). The thread count is a
runtime setting (``threads`` / ``$CODESIGN_LM_THREADS``), not part of the key.

Checkpoints: every ``CHECKPOINT_EVERY`` steps the training state (weights, AdamW state, the
step, every random generator) is written atomically beside the cache file
(``<cache file stem>.ckpt.pt``); an interrupted training resumes there and ends with the same
weights as an uninterrupted one. The checkpoint is removed once the weights are cached.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from codesign.cost_models.devices import CONFIG_DIR
from codesign.kernels.cache_paths import cache_dir
from codesign.search_spaces.mbconv_supernet import (TrainProgress, config_digest,
                                                    load_first_readable, save_atomic)
from codesign.search_spaces.transformer import (Candidate, TransformerArch, TransformerConfig,
                                                TransformerSpace)

CACHE_FORMAT = 2  # bump when the parameter layout, the data or the training procedure changes
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)  # train / val / test, contiguous, in this order
THREADS_ENV = "CODESIGN_LM_THREADS"
CHECKPOINT_EVERY = 64  # training steps between checkpoints (~1 min of the default training)
log = logging.getLogger("codesign.transformer_lm")
FFN_WEIGHTS = ("w1", "w3", "w2")  # gate, up, down: where 2:4 sparsity lands


# ------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=1)
def corpus() -> bytes:
    """``pydoc_data.topics`` as UTF-8 bytes, topics joined in sorted key order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics)).encode("utf-8")


def corpus_sha256() -> str:
    return hashlib.sha256(corpus()).hexdigest()


def split_tokens(split: str) -> torch.Tensor:
    """The byte tokens (int64) of ``split`` in {"train", "val", "test"}."""
    data = corpus()
    n = len(data)
    a = int(n * SPLIT_FRACTIONS[0])
    b = a + int(n * SPLIT_FRACTIONS[1])
    bounds = {"train": (0, a), "val": (a, b), "test": (b, n)}
    if split not in bounds:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(bounds)}")
    lo, hi = bounds[split]
    return torch.frombuffer(bytearray(data[lo:hi]), dtype=torch.uint8).long()


# ------------------------------------------------------------------------------ slicing
def max_arch(config: TransformerConfig) -> TransformerArch:
    """The architecture whose weights hold every subnet: widest, deepest, no K/V sharing."""
    heads = max(config.heads) if config.head_dim else min(config.heads)
    return TransformerArch(max(config.layers), max(config.d_model), heads,
                           heads // min(config.gqa_ratios), max(config.ffn_mults),
                           max(config.context), config.head_dim)


def check_arch(config: TransformerConfig, arch: TransformerArch) -> None:
    """ValueError unless every choice of ``arch`` is offered by ``config``."""
    ratio = arch.heads // arch.kv_heads if arch.kv_heads else 0
    bad = [f"{name}={value}" for name, value, choices in (
        ("layers", arch.layers, config.layers), ("d_model", arch.d_model, config.d_model),
        ("heads", arch.heads, config.heads), ("gqa_ratio", ratio, config.gqa_ratios),
        ("ffn_mult", arch.ffn_mult, config.ffn_mults), ("context", arch.context, config.context))
        if value not in choices]
    if config.head_dim and arch.head_dim != config.head_dim:
        bad.append(f"head_dim={arch.head_dim} (the space's is {config.head_dim})")
    if bad or arch.kv_heads * ratio != arch.heads:
        raise ValueError(f"architecture not in space {config.name}: {', '.join(bad) or arch}")


def _linear_shapes(arch: TransformerArch) -> tuple[tuple[str, int, int], ...]:
    """(name, rows, columns) of every linear of one of ``arch``'s blocks."""
    d, q, kv, ff = arch.d_model, arch.q_dim, arch.kv_heads * arch.head_dim, arch.d_ff
    return (("attention.wq", q, d), ("attention.wk", kv, d), ("attention.wv", kv, d),
            ("attention.wo", d, q), ("feed_forward.w1", ff, d), ("feed_forward.w3", ff, d),
            ("feed_forward.w2", d, ff))


def slice_params(params: Mapping[str, torch.Tensor], arch: TransformerArch
                 ) -> dict[str, torch.Tensor]:
    """The leading slices of the max-size ``params`` that make ``arch`` (views, in the state-dict
    names of ``transformer_model``; ``output.weight`` is left out: it is the embedding)."""
    d = arch.d_model
    out = {"tok_embeddings.weight": params["tok_embeddings.weight"][:, :d],
           "norm.weight": params["norm.weight"][:d]}
    for i in range(arch.layers):
        p = f"layers.{i}."
        out[p + "attention_norm.weight"] = params[p + "attention_norm.weight"][:d]
        out[p + "ffn_norm.weight"] = params[p + "ffn_norm.weight"][:d]
        for name, rows, cols in _linear_shapes(arch):
            out[p + name + ".weight"] = params[p + name + ".weight"][:rows, :cols]
    return out


def _init_params(arch: TransformerArch, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """GPT-2-style initialisation of the max-size weights (N(0, 0.02); the projections back
    into the residual stream scaled by 1/sqrt(2 * layers); norms at 1)."""
    from codesign.search_spaces.transformer_model import build_decoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_decoder(arch, vocab, kv_cache=False, full_logits=True)
        params = {}
        for name, p in model.named_parameters():
            t = p.detach().clone()
            if name.endswith("norm.weight"):
                t.fill_(1.0)
            else:
                std = 0.02 / math.sqrt(2 * arch.layers) if name.endswith(
                    ("wo.weight", "w2.weight")) else 0.02
                t.normal_(0.0, std)
            params[name] = t
    return params


class ModuleCache:
    """ExecuTorch decoders per architecture, their own parameters dropped (``functional_call``
    supplies them): only the buffers (RoPE tables, causal mask) are kept."""

    def __init__(self, vocab: int, size: int = 64) -> None:
        self.vocab, self.size = vocab, size
        self._modules: OrderedDict[TransformerArch, torch.nn.Module] = OrderedDict()

    def get(self, arch: TransformerArch) -> torch.nn.Module:
        from codesign.search_spaces.transformer_model import build_decoder

        if arch not in self._modules:
            with torch.random.fork_rng(devices=[]):  # the random init is discarded
                model = build_decoder(arch, self.vocab, kv_cache=False, full_logits=True)
            for p in model.parameters():
                p.data = torch.empty(0)
            self._modules[arch] = model
            while len(self._modules) > self.size:
                self._modules.popitem(last=False)
        self._modules.move_to_end(arch)
        return self._modules[arch]


def run_subnet(modules: ModuleCache, params: Mapping[str, torch.Tensor], arch: TransformerArch,
               tokens: torch.Tensor) -> torch.Tensor:
    """Logits (batch, seq, vocab) of subnet ``arch`` of the supernet ``params``."""
    return functional_call(modules.get(arch), slice_params(params, arch), (tokens,))


# ------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class LMTrainConfig:
    """Supernet training hyperparameters (all of them key the weight cache).

    Many small steps (one window of 512 bytes) rather than few large ones, since a byte-level
    model leaves its unigram plateau by the step count, not the token count (BENCHMARKS.md,
    "Issue 9: perplexity (measured)": 640 steps of 2 windows left the largest subnet at val
    perplexity 9.2, above a Kneser-Ney 3-gram's 5.8). The default, 4,000 steps, was chosen from
    the measured step time (0.45-0.9 s at one thread on this shared 2-core CPU) to finish in a
    session: 32 min at one thread, niced, load average 2-4.6; 1,200 steps had left the curve
    still falling. Its weights ship in ``configs/weights`` (the measured loss curve and what it
    reaches: BENCHMARKS.md, "LM quality axis (issue 20)").
    ``seq_len`` 0 = the largest context, so every position a candidate's KV cache can hold is
    trained.
    """

    steps: int = 4000
    batch_size: int = 1
    seq_len: int = 0
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 60
    n_random: int = 1
    distill_weight: float = 0.5


def threads_setting(threads: int | None = None) -> int:
    """The training / evaluation thread count: ``threads``, else ``$CODESIGN_LM_THREADS``,
    else torch's current setting (a runtime choice; it is not part of any cache key)."""
    if threads is None and os.environ.get(THREADS_ENV):
        threads = int(os.environ[THREADS_ENV])
    return int(threads) if threads else torch.get_num_threads()


@contextlib.contextmanager
def lm_threads(threads: int | None = None) -> Iterator[None]:
    """torch's thread count at ``threads_setting(threads)`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads_setting(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_arch(config: TransformerConfig, rng: np.random.Generator) -> TransformerArch:
    """A uniformly random architecture of ``config`` at the largest context (every knob drawn
    independently)."""
    def pick(choices):
        return choices[int(rng.integers(len(choices)))]

    heads = pick(config.heads)
    return TransformerArch(pick(config.layers), pick(config.d_model), heads,
                           heads // pick(config.gqa_ratios), pick(config.ffn_mults),
                           max(config.context), config.head_dim)


def min_arch(config: TransformerConfig) -> TransformerArch:
    heads = min(config.heads) if config.head_dim else max(config.heads)
    return TransformerArch(min(config.layers), min(config.d_model), heads,
                           heads // max(config.gqa_ratios), min(config.ffn_mults),
                           max(config.context), config.head_dim)


def checkpoint_path(path: Path) -> Path:
    """The training checkpoint of the cache file ``path`` (beside it)."""
    return path.with_name(path.stem + ".ckpt.pt")


def _load_checkpoint(path: Path | None, key: str, steps: int) -> dict | None:
    """The checkpoint at ``path`` if it is one of this training (same cache key, a step before
    the last); None otherwise (missing, unreadable, another training's)."""
    if path is None or not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged checkpoint costs the steps it held, not the search
        log.warning("ignoring unreadable LM training checkpoint %s: %s", path, exc)
        return None
    if blob.get("key") != key or not 0 < int(blob.get("step", 0)) < steps:
        return None
    return blob


def train_lm_supernet(config: TransformerConfig, seed: int = 0,
                      train: LMTrainConfig | None = None, *, threads: int | None = None,
                      progress: Callable[[TrainProgress], None] | None = None,
                      checkpoint: Path | None = None, checkpoint_every: int = CHECKPOINT_EVERY
                      ) -> dict[str, torch.Tensor]:
    """Train the supernet on the train split (see the module docstring); returns the max-size
    weights. The caller's global RNG state and thread count are left untouched.

    Args:
        progress: called after every step with ``TrainProgress`` (and with messages).
        checkpoint: where the training state is saved every ``checkpoint_every`` steps, and
            resumed from when it holds this training's state (None: no checkpoints).
    """
    train = train or LMTrainConfig()
    key = cache_key(config, seed, train)
    seq = train.seq_len or max(config.context)
    data = split_tokens("train")
    if len(data) <= seq + 1:
        raise ValueError(f"the train split ({len(data)} bytes) is shorter than seq_len {seq}")
    big, small = max_arch(config), min_arch(config)
    params = {k: v.requires_grad_(True) for k, v in _init_params(big, config.vocab, seed).items()}
    modules = ModuleCache(config.vocab)
    decay = [p for n, p in params.items() if p.ndim > 1]
    no_decay = [p for n, p in params.items() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=train.lr)

    def lr_at(step: int) -> float:
        if step < train.warmup_steps:
            return train.lr * (step + 1) / train.warmup_steps
        t = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        return 0.5 * train.lr * (1 + math.cos(math.pi * t))

    start = time.perf_counter()
    # enable_grad: the evaluator's scoring runs under no_grad, and a cache miss trains from there
    with lm_threads(threads), torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        first = 0
        state = _load_checkpoint(checkpoint, key, train.steps)
        if state is not None:
            with torch.no_grad():
                for name, value in state["params"].items():
                    params[name].copy_(value)
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            rng.bit_generator.state = json.loads(state["numpy_rng"])
            first = int(state["step"])
            if progress is not None:
                progress(TrainProgress(0, 0, 0, float("nan"), 0.0,
                                       f"resumed at step {first}/{train.steps} from {checkpoint}"))
        for step in range(first, train.steps):
            starts = torch.randint(0, len(data) - seq - 1, (train.batch_size,), generator=gen)
            batch = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
            x, y = batch[:, :-1], batch[:, 1:].reshape(-1)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            logits = run_subnet(modules, params, big, x).reshape(-1, config.vocab)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            soft = F.softmax(logits.detach(), dim=-1)
            total = loss.item()
            archs = [small] + [sample_arch(config, rng) for _ in range(train.n_random)]
            for arch in archs:
                out = run_subnet(modules, params, arch, x).reshape(-1, config.vocab)
                kd = F.kl_div(F.log_softmax(out, dim=-1), soft, reduction="batchmean")
                loss = train.distill_weight * kd + \
                    (1 - train.distill_weight) * F.cross_entropy(out, y)
                loss.backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            opt.step()
            if checkpoint is not None and checkpoint_every > 0 and \
                    (step + 1) % checkpoint_every == 0 and step + 1 < train.steps:
                save_atomic({"key": key, "step": step + 1,
                             "params": {k: v.detach() for k, v in params.items()},
                             "optimizer": opt.state_dict(), "generator": gen.get_state(),
                             "torch_rng": torch.get_rng_state(),
                             "numpy_rng": json.dumps(rng.bit_generator.state)}, checkpoint)
            if progress is not None:
                progress(TrainProgress(step + 1, train.steps, 0, total / (1 + len(archs)),
                                       time.perf_counter() - start))
    return {k: v.detach() for k, v in params.items()}


def cache_key(config: TransformerConfig, seed: int, train: LMTrainConfig) -> str:
    payload = {"format": CACHE_FORMAT, "config": config_digest(config), "seed": int(seed),
               "corpus": corpus_sha256(), "splits": SPLIT_FRACTIONS,
               "train": dataclasses.asdict(train)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cache_path(config: TransformerConfig, seed: int = 0,
               train: LMTrainConfig | None = None) -> Path:
    """The trained weights' file in the user cache (``codesign.kernels.cache_paths``)."""
    train = train or LMTrainConfig()
    return cache_dir("supernets") / f"{config.name}-lm-{cache_key(config, seed, train)}.pt"


_LOADED: dict[str, dict[str, torch.Tensor]] = {}  # cache key -> weights, per process


def shipped_path(config: TransformerConfig, seed: int = 0,
                 train: LMTrainConfig | None = None) -> Path:
    """Where the repository ships trained weights for this key (``configs/weights``)."""
    key = cache_key(config, seed, train or LMTrainConfig())
    return CONFIG_DIR / "weights" / f"{config.name}-lm-{key}.safetensors"


def save_shipped_weights(params: Mapping[str, torch.Tensor], path: Path) -> str:
    """Write the supernet's weights as safetensors in float16 (half the bytes; scoring computes
    in float32) and return the file's sha256."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in params.items()}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_weights(config: TransformerConfig, path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        params = {k: v.float() for k, v in load_file(str(path)).items()}
    else:
        params = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    if {k: tuple(v.shape) for k, v in params.items()} != _init_shapes(config):
        raise ValueError("parameter shapes do not match the space")
    return params


def get_trained_lm(config: TransformerConfig, seed: int = 0, *,
                   train: LMTrainConfig | None = None, threads: int | None = None,
                   progress: Callable[[TrainProgress], None] | None = None,
                   checkpoint_every: int = CHECKPOINT_EVERY) -> dict[str, torch.Tensor]:
    """The trained supernet's max-size weights for (config, seed, train): from this process's
    memory, the on-disk cache, the weights the repository ships (``shipped_path``), or trained
    now (and cached; written atomically). A file that cannot be read is skipped (and the cache
    retrained over). Training checkpoints beside the cache file every ``checkpoint_every``
    steps and resumes from a checkpoint an interrupted training left."""
    train = train or LMTrainConfig()
    key = cache_key(config, seed, train)
    if key in _LOADED:
        return _LOADED[key]
    path = cache_path(config, seed, train)
    params = load_first_readable((path, shipped_path(config, seed, train)),
                                 lambda source: _read_weights(config, source), progress)
    if params is None:
        log.info("training the %s LM supernet (%d steps; cached as %s)", config.name,
                 train.steps, path)
        if progress is not None:
            progress(TrainProgress(0, 0, 0, float("nan"), 0.0,
                                   f"training the {config.name} LM supernet ({train.steps} steps, "
                                   f"once; cached as {path})"))
        start = time.perf_counter()
        ckpt = checkpoint_path(path)
        params = train_lm_supernet(config, seed, train, threads=threads, progress=progress,
                                   checkpoint=ckpt, checkpoint_every=checkpoint_every)
        log.info("LM supernet trained in %.0f s", time.perf_counter() - start)
        save_atomic({"state_dict": params, "key": path.stem, "train": dataclasses.asdict(train),
                     "seed": seed, "config_sha256": config_digest(config),
                     "corpus_sha256": corpus_sha256()}, path)
        ckpt.unlink(missing_ok=True)
        if progress is not None:
            progress(TrainProgress(0, 0, 0, float("nan"), 0.0, f"cached {path}"))
    _LOADED[key] = params
    return params


def _init_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The max-size weights' shapes (what a cache file must hold)."""
    arch = max_arch(config)
    d = arch.d_model
    shapes = {"tok_embeddings.weight": (config.vocab, d), "norm.weight": (d,)}
    for i in range(arch.layers):
        p = f"layers.{i}."
        shapes.update({p + "attention_norm.weight": (d,), p + "ffn_norm.weight": (d,)})
        shapes.update({p + name + ".weight": (rows, cols)
                       for name, rows, cols in _linear_shapes(arch)})
    return shapes


# ------------------------------------------------------------------------------ candidates
def subnet_state_dict(params: Mapping[str, torch.Tensor], candidate: Candidate
                      ) -> dict[str, torch.Tensor]:
    """``candidate``'s weights from the supernet ``params``: sliced, fp32, contiguous copies,
    with magnitude 2:4 masks baked into the FFN weights of every layer whose ``ffn_sparsity``
    is "2:4" (in every 4 consecutive input weights of an output row, the 2 largest kept)."""
    from codesign.search_spaces.quant_numerics import sparsity_mask
    from codesign.search_spaces.transformer import SPARSITY_CHOICES

    out = {k: v.detach().float().contiguous().clone()
           for k, v in slice_params(params, candidate.arch).items()}
    for i, choice in enumerate(candidate.layers):
        spec = SPARSITY_CHOICES[choice.ffn_sparsity]
        if choice.ffn_sparsity == "dense":
            continue
        for w in FFN_WEIGHTS:
            name = f"layers.{i}.feed_forward.{w}.weight"
            out[name].mul_(sparsity_mask(out[name], spec).float())
    return out


def candidate_state_dict(space: TransformerSpace, candidate: Candidate, *, seed: int = 0,
                         train: LMTrainConfig | None = None) -> dict[str, torch.Tensor]:
    """The trained supernet's weights for ``candidate`` (trained and cached on first use):
    sliced, 2:4 masks baked in where a layer's ``ffn_sparsity`` is "2:4", fp32, in
    ``codesign.search_spaces.transformer_model``'s names (``build_decoder(candidate, vocab, sd)``
    loads it). Quantization is not applied (export quantizes with torchao; the perplexity evaluator
    fake-quantizes)."""
    check_arch(space.config, candidate.arch)
    return subnet_state_dict(get_trained_lm(space.config, seed, train=train), candidate)
