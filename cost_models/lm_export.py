"""Export a causal LM at one generation phase: token ids in (int64), a static KV cache.

- ``prefill``: P prompt tokens at positions 0..P-1, into a cache of C positions;
- ``decode``: one token at position C-1, so its attention reads a full cache of C tokens.

Two kinds of module are accepted:

- a Hugging Face ``PreTrainedModel`` with a language-model head (not encoder-decoder): wrapped
  as ``transformers.integrations.executorch`` wraps it for ExecuTorch (a ``StaticCache`` of C
  positions, its tensors registered as buffers; sliding-window layers become full static
  layers, as that wrapper does), with the logits of the last position only
  (``logits_to_keep=1``: what generation reads);
- any other module taking token ids: ``forward(tokens)`` for prefill, and for decode
  ``forward(tokens, input_pos)`` (or ExecuTorch's Llama ``forward(tokens, {"input_pos": pos})``)
  with its own cache buffers.

Weights may live on the ``meta`` device (Llama 3.2 1B/3B shapes without their weights): the
export needs shapes, not values.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from codesign.cost_models.lm_unbacked import pinned_length
from codesign.cost_models.lowering import LoweringError

PIN = "_pinned_start"  # an export attempt's marker: pin the cache's filled length

PHASES = ("prefill", "decode")


class NotACausalLM(LoweringError):
    """The module is not a causal LM this lowering can drive."""


@dataclass(frozen=True)
class PhaseShape:
    """Where one exported step sits in a generation: ``tokens`` new tokens at ``start``,
    attending to ``start + tokens`` cached positions of a cache of ``context``."""

    phase: str
    tokens: int
    start: int
    context: int

    @property
    def attended(self) -> int:
        return self.start + self.tokens


def phase_shape(phase: str, prompt_len: int | None, context: int) -> PhaseShape:
    """The step of ``phase``; ValueError for a phase or lengths that do not fit."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; valid: {', '.join(PHASES)}")
    if not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be a positive integer, got {context!r}")
    if phase == "prefill":
        if prompt_len is None:
            raise ValueError("prefill needs the prompt length (--prompt-len)")
        if not 0 < prompt_len <= context:
            raise ValueError(f"prompt of {prompt_len} tokens does not fit a context of {context}")
        return PhaseShape(phase, prompt_len, 0, context)
    if prompt_len is not None and prompt_len > context:
        raise ValueError(f"prompt of {prompt_len} tokens does not fit a context of {context}")
    return PhaseShape(phase, 1, context - 1, context)


def is_hf_causal_lm(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def _check_hf(model) -> None:
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise NotACausalLM(f"{type(model).__name__} is an encoder-decoder model, not a causal LM")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise NotACausalLM(f"{type(model).__name__} has no language-model head: not a causal "
                           "LM (use its *ForCausalLM class)")


def _hf_step(model, shape: PhaseShape) -> torch.nn.Module:
    from codesign.cost_models.lm_cache import CachedStep

    _check_hf(model)
    text = model.config.get_text_config()
    if getattr(text, "use_cache", None) is False:
        text.use_cache = True
    if model.generation_config is None:
        from transformers import GenerationConfig
        model.generation_config = GenerationConfig()
    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    try:
        return CachedStep(model, shape.context, shape.start, shape.tokens)
    except Exception as exc:  # transformers raises many types for configs it cannot cache
        raise LoweringError(f"{type(model).__name__}: no static KV cache: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None


def _own_state_step(model, shape: PhaseShape, why: LoweringError | None) -> torch.nn.Module:
    """A recurrent model keeping a state object of its own (rwkv, xlstm), or ``why``."""
    from codesign.cost_models.lm_cache import OwnStateStep

    try:
        return OwnStateStep(model, shape.start, shape.tokens)
    except Exception:  # noqa: BLE001 - the static cache's reason is the one to report
        if why is None:
            raise
        raise why from None


def _own_state_class():
    from codesign.cost_models.lm_cache import OwnStateStep
    return OwnStateStep


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _param_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def export_step(model: torch.nn.Module, shape: PhaseShape) -> torch.export.ExportedProgram:
    """``torch.export`` of one ``shape`` step of ``model`` (eval mode, no grad).

    Raises:
        NotACausalLM: a Hugging Face model without an LM head, or an encoder-decoder.
        LoweringError: the export failed (its one-line reason).
    """
    model = model.eval()
    device = _param_device(model)
    ids = torch.zeros(1, shape.tokens, dtype=torch.long, device=device)
    positions = torch.arange(shape.start, shape.attended, dtype=torch.long, device=device)
    attempts: list[tuple[torch.nn.Module, tuple, dict]] = []
    if is_hf_causal_lm(model):
        try:
            step = _hf_step(model, shape)
        except NotACausalLM:
            raise
        except LoweringError as exc:  # no transformers cache: a state object of its own?
            step = _own_state_step(model, shape, exc)
        attempts.append((step, (), {"input_ids": ids, "cache_position": positions}))
        if "position_ids" in inspect.signature(model.forward).parameters:
            attempts.append((step, (), {"input_ids": ids, "cache_position": positions}))
        # the last try: the position read back with .item() pinned to the step's (lm_unbacked)
        attempts.append((step, (), {"input_ids": ids, "cache_position": positions,
                                    PIN: shape.start}))
    elif shape.phase == "prefill":
        attempts.append((model, (ids,), {}))
    else:
        start = positions[:1]
        attempts += [(model, (ids, start), {}), (model, (ids, {"input_pos": start}), {})]
    errors = []
    for i, (module, args, kwargs) in enumerate(attempts):
        if i and hasattr(module, "takes_positions"):
            module.takes_positions = True  # the retry: OPT and CTRL derive them with .item()
        pin = kwargs.get(PIN)
        kwargs = {k: v for k, v in kwargs.items() if k != PIN}
        try:
            with torch.no_grad(), (pinned_length(module, pin) if pin is not None
                                   else nullcontext()):
                return torch.export.export(module, args, kwargs)
        except Exception as exc:  # torch raises many types; the user needs the one-line reason
            errors.append(f"{type(exc).__name__}: {_first_line(exc)}")
    fallback = ""
    if is_hf_causal_lm(model) and not isinstance(attempts[0][0], _own_state_class()):
        try:  # a model that cannot run over a static cache: the cache object it builds itself
            with torch.no_grad():
                return torch.export.export(_own_state_step(model, shape, None), (),
                                           {"input_ids": ids, "cache_position": positions})
        except Exception as exc:  # noqa: BLE001 - reported after the static cache's reason
            fallback = f"; with its own cache: {type(exc).__name__}: {_first_line(exc)}"
    if not is_hf_causal_lm(model):
        need = ("forward(tokens, input_pos) with its own KV cache" if shape.phase == "decode"
                else "forward(tokens) on int64 token ids")
        raise NotACausalLM(f"{type(model).__name__} is not a causal LM this can run: it needs "
                           f"to be a Hugging Face causal LM or take {need}; torch.export "
                           f"failed: {errors[-1]}")
    raise LoweringError(f"torch.export of the {shape.phase} step ({shape.tokens} tokens, "
                        f"context {shape.context}) failed: {errors[-1]}{fallback}")
