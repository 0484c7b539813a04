"""A short quantization-aware fine-tune of one ``transformer`` member, in its own formats.

The LM counterpart of ``codesign.evaluation.finetune`` (the CNN members'). The member's weights
are a private copy of its slice of the trained LM supernet (``transformer_lm.subnet_state_dict``:
sliced, fp32, its 2:4 masks baked in); they train as the perplexity evaluator scores them
(``codesign.evaluation.perplexity``): every block linear's weight fake-quantized to its layer's
precision (4-bit symmetric per group, 8-bit per channel, 16-bit through fp16) and the LM head
quantized from the embedding table at the head's precision, each with a straight-through
gradient; the inputs of the linears at the layer's activation bits (int8 per token, or fp16) and
K / V at the KV-cache bits, also straight-through; a 2:4 layer's pruned weights stay zero (its
mask is fixed: the fine-tuned weights are scored and exported with the same one).

The loss is the supernet's: half cross-entropy on random windows of the train split (the
member's context length, ``tokens_per_step`` predicted bytes a step), half distillation from the
largest subnet of the supernet in float (in-place distillation's teacher, as in training);
AdamW at a small constant rate (3e-4) after a linear warm-up over a tenth of the steps.
Deterministic given the seed (at a fixed thread count). The supernet is not modified.

On the 1,200-step supernet it lowered val perplexity by 0.7-2.4% in 20 steps and 2.2-6.5% in
100, beyond the paired bootstrap intervals, on every 4-bit member measured; 3e-4 was chosen over
1e-4 (smaller gains) and 1e-3 (20 steps made a member worse). A w16a16 member moves as much, so
the gain is mostly more training of an undertrained slice, not 4-bit recovery; on the 4,000-step
supernet's front, 20 steps moved val by -0.9% to +0.5% (BENCHMARKS.md, "LM quality axis (issue
20)"; ``benchmarks/lm_finetune.py``).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call

from codesign.cost_models.backends import Precision
from codesign.search_spaces.mbconv_supernet import TrainProgress
from codesign.search_spaces.transformer import Candidate, TransformerSpace

TOKENS_PER_STEP = 512  # predicted bytes a step: one window of the supernet's training


def worth_finetuning(candidate: Candidate) -> bool:
    """Whether the search fine-tunes this member: it has a unit with sub-8-bit weights or 2:4
    FFN sparsity. Measured on the 4,000-step supernet, 20 steps lowered val perplexity where
    those formats cost it (smallest, w4a8 g128 + 2:4: -18%) and raised the w16a16 largest's
    by 0.7% (BENCHMARKS.md, "LM quality axis (issue 20)")."""
    units = tuple(candidate.layers) + (candidate.head,)
    return any(Precision.parse(c.precision).weight_bits < 8 or c.ffn_sparsity != "dense"
               for c in units)


def _ste(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn(x)`` forward, identity backward (straight-through)."""
    return x + (fn(x) - x).detach()


def quantized_params(candidate: Candidate, state: Mapping[str, torch.Tensor],
                     masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as the evaluator scores it (``perplexity.quantized_state_dict``), differentiably:
    masked, fake-quantized with straight-through gradients, ``output.weight`` untied."""
    from codesign.evaluation.fake_quant import quantize_weight
    from codesign.evaluation.perplexity import LINEARS
    from codesign.search_spaces.transformer import quant_spec

    out = {k: v * masks[k] if k in masks else v for k, v in state.items()}
    for i, choice in enumerate(candidate.layers):
        quant = quant_spec(choice.precision, choice.group_size)
        for name in LINEARS:
            key = f"layers.{i}.{name}.weight"
            out[key] = _ste(out[key], lambda w: quantize_weight(w, quant, symmetric_groups=True))
    head = quant_spec(candidate.head.precision, candidate.head.group_size)
    out["output.weight"] = _ste(out["tok_embeddings.weight"],
                                lambda w: quantize_weight(w, head, symmetric_groups=True))
    return out


def member_module(space: TransformerSpace, candidate: Candidate) -> torch.nn.Module:
    """The member's ExecuTorch decoder (full logits, no KV cache; parameters supplied by
    ``functional_call``) with straight-through activation fake quantization, as scored."""
    from codesign.evaluation.perplexity import LINEARS, _act_hook
    from codesign.search_spaces.transformer_model import build_decoder

    with torch.random.fork_rng(devices=[]):  # the random init is discarded
        model = build_decoder(candidate.arch, space.config.vocab, kv_cache=False,
                              full_logits=True)

    def pre(bits):
        fn = _act_hook(bits)
        return lambda _m, args: (_ste(args[0], fn),) + tuple(args[1:])

    def post(bits):
        fn = _act_hook(bits)
        return lambda _m, _args, out: _ste(out, fn)

    for i, choice in enumerate(candidate.layers):
        act = Precision.parse(choice.precision).act_bits
        for name in LINEARS:
            model.get_submodule(f"layers.{i}.{name}").register_forward_pre_hook(pre(act))
        for name in ("attention.wk", "attention.wv"):
            model.get_submodule(f"layers.{i}.{name}").register_forward_hook(
                post(space.kv_bits(choice)))
    model.output.register_forward_pre_hook(pre(Precision.parse(candidate.head.precision)
                                                .act_bits))
    return model


def sparsity_masks(state: Mapping[str, torch.Tensor], candidate: Candidate
                   ) -> dict[str, torch.Tensor]:
    """The fixed masks of the member's 2:4 FFN weights (the zeros its slice has baked in)."""
    from codesign.search_spaces.transformer_lm import FFN_WEIGHTS

    return {key: (state[key] != 0).float()
            for i, choice in enumerate(candidate.layers) if choice.ffn_sparsity != "dense"
            for key in (f"layers.{i}.feed_forward.{w}.weight" for w in FFN_WEIGHTS)}


def train_batch(candidate: Candidate, gen: torch.Generator,
                tokens_per_step: int = TOKENS_PER_STEP) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (windows, context): random windows of the train split at the
    member's context, ``tokens_per_step // context`` of them (at least one)."""
    from codesign.search_spaces.transformer_lm import split_tokens

    data = split_tokens("train")
    seq = candidate.arch.context
    n = max(1, tokens_per_step // seq)
    starts = torch.randint(0, len(data) - seq - 1, (n,), generator=gen)
    batch = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
    return batch[:, :-1], batch[:, 1:]


class MemberLoss:
    """The fine-tune's loss of a member's weights on a batch (see the module docstring)."""

    def __init__(self, space: TransformerSpace, supernet: Mapping[str, torch.Tensor],
                 candidate: Candidate, masks: Mapping[str, torch.Tensor],
                 distill_weight: float = 0.5) -> None:
        from codesign.search_spaces.transformer_lm import ModuleCache, max_arch

        self.space, self.supernet, self.candidate = space, supernet, candidate
        self.masks, self.distill_weight = masks, distill_weight
        self.model = member_module(space, candidate)
        self.teachers = ModuleCache(space.config.vocab, size=1)
        self.teacher_arch = max_arch(space.config)

    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        from codesign.search_spaces.transformer_lm import run_subnet

        with torch.no_grad():
            return F.softmax(run_subnet(self.teachers, self.supernet, self.teacher_arch, x)
                             .reshape(-1, self.space.config.vocab), dim=-1)

    def __call__(self, state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 soft: torch.Tensor | None = None) -> torch.Tensor:
        soft = self.teacher(x) if soft is None else soft
        params = quantized_params(self.candidate, state, self.masks)
        out = functional_call(self.model, params, (x,), tie_weights=False)
        out = out.reshape(-1, self.space.config.vocab)
        kd = F.kl_div(F.log_softmax(out, dim=-1), soft, reduction="batchmean")
        return self.distill_weight * kd + (1 - self.distill_weight) * F.cross_entropy(
            out, y.reshape(-1))


def finetune_member(space: TransformerSpace, supernet: Mapping[str, torch.Tensor],
                    candidate: Candidate, steps: int, *, seed: int = 0, lr: float = 3e-4,
                    warmup: int | None = None, distill_weight: float = 0.5,
                    tokens_per_step: int = TOKENS_PER_STEP, threads: int | None = None,
                    progress: Callable[[TrainProgress], None] | None = None
                    ) -> dict[str, torch.Tensor]:
    """``candidate``'s weights fine-tuned for ``steps`` steps (see the module docstring), float
    (not quantized; masks applied), in ``subnet_state_dict``'s names: what the evaluator
    quantizes and scores, and export lowers. ``warmup`` None: a tenth of the steps."""
    from codesign.search_spaces.transformer_lm import lm_threads, subnet_state_dict

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    start_state = subnet_state_dict(supernet, candidate)
    masks = sparsity_masks(start_state, candidate)
    warmup = max(1, steps // 10 if warmup is None else warmup)
    with lm_threads(threads), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = {k: v.clone().requires_grad_(True) for k, v in start_state.items()}
        loss_fn = MemberLoss(space, supernet, candidate, masks, distill_weight)
        opt = torch.optim.AdamW(list(state.values()), lr=lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(seed + 11)
        start = time.perf_counter()
        for step in range(steps):
            x, y = train_batch(candidate, gen, tokens_per_step)
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(state, x, y)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(TrainProgress(step + 1, steps, 0, loss.item(),
                                       time.perf_counter() - start))
    return {k: (v.detach() * masks[k] if k in masks else v.detach()).contiguous()
            for k, v in state.items()}


# ------------------------------------------------------------------------------ files
def finetuned_file(directory: Path, candidate: Candidate) -> Path:
    """Where a member's fine-tuned weights live in ``directory`` (``RUN/finetuned``), named by
    what decides its perplexity (architecture and formats; tiles and threads do not)."""
    from codesign.evaluation.perplexity import quality_key

    digest = hashlib.sha256(quality_key(candidate).encode()).hexdigest()[:16]
    return Path(directory) / f"lm-{digest}.safetensors"


def save_member(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``state`` (float32) to ``path`` atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().float().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def load_member(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(str(path)))
