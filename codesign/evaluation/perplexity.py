"""Held-out perplexity of ``transformer`` candidates, quantized and sparsified as priced.

Per candidate (deterministic):
1. its weights from the trained byte-level supernet (``codesign.search_spaces.transformer_lm``):
   sliced, with magnitude 2:4 masks baked into the FFN weights of every "2:4" layer;
2. weights fake-quantized to each layer's precision, as torchao quantizes them for export:
   4-bit *symmetric* per group of ``group_size`` along the reduction dimension, 8-bit symmetric
   per output channel, 16-bit through fp16. The LM head is quantized at its precision from the
   table it shares with the embedding, while the embedding gather reads the float table: the
   head untied as ``codesign export`` untie it (``export/transformer_plan.head_tie``);
3. the candidate built as ExecuTorch's Llama ``Transformer`` (``build_decoder``, the module
   export lowers) with activation fake quantization on the inputs of its linear layers: int8
   dynamic per-token (asymmetric, range taken at run time) where the precision has 8-bit
   activations (``a8`` and ``a8-dyn`` alike: the static int8 activations of the ``codesign``
   back-end are simulated with per-token ranges, which is no worse than a calibrated per-tensor
   scale), fp16 where it has 16; K and V are held at the layer's KV-cache bits
   (``space.kv_bits``);
4. the split (``val`` drives the search, ``test`` for front members) cut into non-overlapping
   windows of the candidate's context length; every byte after a window's first is predicted
   once. All candidates are scored on the same bytes (the split truncated to a multiple of the
   largest context), so their numbers are comparable.

Result: ``exp(mean next-byte NLL)`` (nats), lower is better, with a seeded 95% percentile
bootstrap over blocks of ``unit`` consecutive predicted bytes (the gcd of the space's contexts:
a whole number of blocks per window), reported as ``exp`` of the interval of the mean NLL.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from codesign.evaluation.base import (BOOTSTRAP_RESAMPLES, AccuracyResult, Evaluator,
                                      check_split)
from codesign.evaluation.fake_quant import fake_quant_per_token, quantize_weight
from codesign.cost_models.backends import Precision
from codesign.search_spaces.mbconv_supernet import TrainProgress
from codesign.search_spaces.transformer import Candidate, TransformerSpace, quant_spec
from codesign.search_spaces.transformer_model import BLOCK_LINEARS

LINEARS = tuple(BLOCK_LINEARS.values())  # a block's linears, module paths in layers.{i}
EVAL_TOKENS_PER_BATCH = 8192


def quantized_state_dict(space: TransformerSpace, candidate: Candidate,
                         state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with every block linear's weight fake-quantized to its layer's precision,
    and ``output.weight``: the LM head's, quantized to the head's precision from the (float)
    embedding table."""
    out = dict(state_dict)
    for i, choice in enumerate(candidate.layers):
        quant = quant_spec(choice.precision, choice.group_size)
        for name in LINEARS:
            key = f"layers.{i}.{name}.weight"
            out[key] = quantize_weight(out[key], quant, symmetric_groups=True)
    head = quant_spec(candidate.head.precision, candidate.head.group_size)
    out["output.weight"] = quantize_weight(out["tok_embeddings.weight"], head,
                                           symmetric_groups=True)
    return out


def _act_hook(bits: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if bits == 8:
        return fake_quant_per_token
    if bits == 16:
        return lambda x: x.half().float()
    return lambda x: x


def add_activation_quant(model: torch.nn.Module, space: TransformerSpace,
                         candidate: Candidate) -> None:
    """Forward hooks on ``model`` (a ``build_decoder`` module): the input of every linear at its
    layer's activation bits, the K and V projections' outputs at the KV-cache bits."""
    def pre(fn):
        return lambda _m, args: (fn(args[0]),) + tuple(args[1:])

    def post(fn):
        return lambda _m, _args, out: fn(out)

    for i, choice in enumerate(candidate.layers):
        act = _act_hook(Precision.parse(choice.precision).act_bits)
        for name in LINEARS:
            model.get_submodule(f"layers.{i}.{name}").register_forward_pre_hook(pre(act))
        kv = _act_hook(space.kv_bits(choice))
        for name in ("attention.wk", "attention.wv"):
            model.get_submodule(f"layers.{i}.{name}").register_forward_hook(post(kv))
    head = _act_hook(Precision.parse(candidate.head.precision).act_bits)
    model.output.register_forward_pre_hook(pre(head))


def quality_key(candidate: Candidate) -> str:
    """What decides a candidate's perplexity (tiles and threads do not)."""
    return repr((candidate.arch, candidate.layers, candidate.head))


def _exp_bootstrap_mean(values: np.ndarray, seed: int,
                        resamples: int) -> tuple[float, tuple[float, float]]:
    """``exp`` of the mean of ``values`` and of its seeded 95% percentile-bootstrap interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(math.exp(values.mean())), (float(math.exp(lo)), float(math.exp(hi)))


def bootstrap_perplexity(unit_nll: np.ndarray, seed: int = 0,
                         resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, tuple[float, float]]:
    """``exp`` of the mean of ``unit_nll`` (the mean NLL of equal-sized blocks of predicted
    tokens) and of its seeded 95% percentile-bootstrap interval over the blocks."""
    unit_nll = np.asarray(unit_nll, dtype=np.float64).ravel()
    if unit_nll.size == 0:
        return float("nan"), (float("nan"), float("nan"))
    return _exp_bootstrap_mean(unit_nll, seed, resamples)


def paired_ratio(unit_a: np.ndarray, unit_b: np.ndarray, seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, tuple[float, float]]:
    """Perplexity ratio b / a of two candidates scored on the same blocks, with a seeded 95%
    paired bootstrap interval (the blocks resampled together): the comparison of two candidates
    on one split, tighter than their separate intervals."""
    diff = np.asarray(unit_b, dtype=np.float64) - np.asarray(unit_a, dtype=np.float64)
    return _exp_bootstrap_mean(diff, seed, resamples)


class PerplexityEvaluator(Evaluator):
    """``Evaluator`` for ``TransformerSpace`` candidates (see the module docstring).

    Args:
        space: the space (its config decides the supernet and the bootstrap block size).
        seed: seeds the supernet training and the bootstrap.
        train: supernet training hyperparameters (None: ``LMTrainConfig()``, the cached default).
        threads: torch threads while training / scoring (None: ``$CODESIGN_LM_THREADS`` or
            torch's setting); never part of a cache key.
        progress: called with ``TrainProgress`` while the supernet trains or loads (not pickled).
        max_tokens: score at most this many predicted bytes of a split (0: the whole split,
            truncated to a multiple of the largest context); tests use small numbers.
        finetuned_dir: where fine-tuned members' weights live (``RUN/finetuned``,
            ``codesign.evaluation.lm_finetune``): a candidate with a file there is scored (and
            exported) with those weights instead of the supernet's slice.
    """

    name = "perplexity"
    metric = "perplexity"
    higher_is_better = False

    def __init__(self, space: TransformerSpace, *, seed: int = 0, train: Any = None,
                 threads: int | None = None,
                 progress: Callable[[TrainProgress], None] | None = None,
                 max_tokens: int = 0, finetuned_dir: Path | None = None) -> None:
        from codesign.search_spaces.transformer_lm import LMTrainConfig

        self.space = space
        self.seed = int(seed)
        self.train = train or LMTrainConfig()
        self.threads = threads
        self.progress = progress
        self.max_tokens = int(max_tokens)
        self.finetuned_dir = Path(finetuned_dir) if finetuned_dir is not None else None
        contexts = space.config.context
        self.unit = math.gcd(*contexts)
        self._params: dict[str, torch.Tensor] | None = None
        self._units: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._references: list[dict[str, Any]] | None = None

    def __reduce__(self):
        return (_rebuild, (self.space.config, self.space.backend.name, self.seed,
                           self.space.threads_choices,
                           {"train": self.train, "threads": self.threads,
                            "max_tokens": self.max_tokens,
                            "finetuned_dir": self.finetuned_dir}))

    # -------------------------------------------------------------- shared state
    def prepare(self) -> None:
        self.supernet()

    def shared_state_key(self) -> str:
        from codesign.search_spaces.transformer_lm import cache_key

        return cache_key(self.space.config, self.seed, self.train)

    def shared_state(self) -> dict[str, torch.Tensor]:
        return self.supernet()

    def use_shared_state(self, key: str, state: dict[str, torch.Tensor]) -> None:
        if key != self.shared_state_key():
            raise ValueError(f"shared supernet {key!r} is not this evaluator's "
                             f"({self.shared_state_key()!r}): another space, seed or training")
        self._params = state

    def supernet(self) -> dict[str, torch.Tensor]:
        from codesign.search_spaces.transformer_lm import get_trained_lm

        if self._params is None:
            self._params = get_trained_lm(self.space.config, self.seed, train=self.train,
                                          threads=self.threads, progress=self.progress)
        return self._params

    # -------------------------------------------------------------- per candidate
    def _check(self, candidate: Candidate) -> None:
        from codesign.search_spaces.transformer_lm import check_arch

        if not isinstance(candidate, Candidate):
            raise ValueError(f"expected a transformer Candidate, got "
                             f"{type(candidate).__module__}.{type(candidate).__name__}")
        check_arch(self.space.config, candidate.arch)

    def build_quantized(self, candidate: Candidate) -> torch.nn.Module:
        """The candidate as scored: ExecuTorch's decoder (full-sequence, every position's
        logits) with fake-quantized weights, its 2:4 masks and activation fake quantization."""
        from codesign.search_spaces.transformer_model import build_decoder

        self._check(candidate)
        sd = quantized_state_dict(self.space, candidate, self.member_state_dict(candidate))
        # sd's own output.weight: build_decoder unties the head, as export realises it
        model = build_decoder(candidate, self.space.config.vocab, sd, kv_cache=False,
                              full_logits=True)
        add_activation_quant(model, self.space, candidate)
        return model

    def member_state_dict(self, candidate: Candidate) -> dict[str, torch.Tensor]:
        """The candidate's float weights: fine-tuned (``finetuned_dir``) if it was, else its
        slice of the supernet (``transformer_lm.subnet_state_dict``)."""
        from codesign.evaluation.lm_finetune import load_member
        from codesign.search_spaces.transformer_lm import subnet_state_dict

        path = self.finetuned_path(candidate)
        if path is not None and path.is_file():
            return load_member(path)
        return subnet_state_dict(self.supernet(), candidate)

    # -------------------------------------------------------------- fine-tuning
    def finetuned_path(self, candidate: Candidate) -> Path | None:
        from codesign.evaluation.lm_finetune import finetuned_file

        return None if self.finetuned_dir is None else finetuned_file(self.finetuned_dir,
                                                                      candidate)

    def finetune(self, candidate: Candidate, steps: int, *,
                 progress: Callable[[TrainProgress], None] | None = None) -> bool:
        """Fine-tune ``candidate`` in its own formats for ``steps`` steps
        (``codesign.evaluation.lm_finetune``) and keep its weights in ``finetuned_dir``; later
        scores and export use them. False (nothing done) when they are already there, or when
        the member has no 4-bit or 2:4 unit (``lm_finetune.worth_finetuning``). Raises
        ValueError without a ``finetuned_dir``."""
        from codesign.evaluation.lm_finetune import (finetune_member, save_member,
                                                     worth_finetuning)

        self._check(candidate)
        path = self.finetuned_path(candidate)
        if path is None:
            raise ValueError("fine-tuning needs a finetuned_dir to keep the weights in")
        for split in ("val", "test"):  # scored before from the supernet's slice
            self._units.pop((quality_key(candidate), split), None)
        if path.is_file() or not worth_finetuning(candidate):
            return False
        save_member(finetune_member(self.space, self.supernet(), candidate, steps,
                                    seed=self.seed, threads=self.threads, progress=progress),
                    path)
        return True

    def windows(self, split: str, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (windows, context): the split's bytes in non-overlapping
        windows, the same predicted bytes for every context of the space."""
        from codesign.search_spaces.transformer_lm import split_tokens

        tokens = split_tokens(split)
        largest = max(self.space.config.context)
        n = (len(tokens) - 1) // largest * largest
        if self.max_tokens:
            n = min(n, max(largest, self.max_tokens // largest * largest))
        if n < context:
            raise ValueError(f"split {split} ({len(tokens)} bytes) is shorter than a window")
        return tokens[:n].view(-1, context), tokens[1:n + 1].view(-1, context)

    @torch.no_grad()
    def token_nll(self, candidate: Candidate, split: str) -> torch.Tensor:
        """The NLL (nats) of every predicted byte of ``split``, shaped (windows, context)."""
        from codesign.search_spaces.transformer_lm import lm_threads

        model = self.build_quantized(candidate)
        x, y = self.windows(split, candidate.arch.context)
        per_batch = max(1, EVAL_TOKENS_PER_BATCH // candidate.arch.context)
        out = []
        with lm_threads(self.threads):
            for start in range(0, len(x), per_batch):
                logits = model(x[start:start + per_batch]).float()
                out.append(torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), y[start:start + per_batch], reduction="none"))
        return torch.cat(out)

    def references(self) -> list[dict[str, Any]]:
        """What classical byte models reach on the bytes this evaluator predicts (val and
        test, windows of the largest context; ``codesign.evaluation.ngram``): the unigram, the
        add-one bigram and interpolated Kneser-Ney 3-, 5- and 7-grams fitted on the train
        split. One record per model: ``{"model", "label", "val", "test"}`` (perplexities)."""
        from codesign.evaluation.ngram import reference_perplexities
        from codesign.search_spaces.transformer_lm import split_tokens

        if self._references is None:
            largest = max(self.space.config.context)
            splits = {s: (split_tokens(s).numpy(), self.windows(s, largest)[1].numel())
                      for s in ("val", "test")}
            self._references = reference_perplexities(split_tokens("train").numpy(), splits,
                                                      largest)
        return self._references

    def unit_nll(self, candidate: Candidate, split: str) -> np.ndarray:
        """The mean NLL of every block of ``unit`` consecutive predicted bytes of ``split``
        (the bootstrap's resampling unit; the same blocks for every candidate)."""
        key = (quality_key(candidate), split)
        if key not in self._units:
            nll = self.token_nll(candidate, split)
            self._units[key] = nll.reshape(-1, self.unit).mean(dim=1).double().numpy()
            while len(self._units) > 4096:
                self._units.popitem(last=False)
        return self._units[key]

    def evaluate(self, candidate: Candidate, *, split: str = "val") -> AccuracyResult:
        """Perplexity of ``candidate`` as priced (quantized, sparsified) on ``split``."""
        check_split(split)
        self._check(candidate)  # before its cache key, which reads a transformer's fields
        units = self.unit_nll(candidate, split)
        ppl, interval = bootstrap_perplexity(units, self.seed)
        return AccuracyResult(ppl, interval, int(units.size * self.unit), split,
                              metric=self.metric, higher_is_better=self.higher_is_better)


def _rebuild(config, backend_name: str, seed: int, threads_choices: tuple[int, ...],
             kwargs: dict[str, Any]) -> PerplexityEvaluator:
    from codesign.cost_models.backends import load_backend

    space = TransformerSpace(load_backend(backend_name), threads_choices=threads_choices,
                             config=config)
    return PerplexityEvaluator(space, seed=seed, **kwargs)
