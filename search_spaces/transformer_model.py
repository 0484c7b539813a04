"""The concrete PyTorch module of a ``transformer`` candidate: ExecuTorch's own Llama definition.

A candidate of the ``transformer`` space (``search_spaces/transformer.py``) is built as
``executorch.examples.models.llama.llama_transformer.Transformer`` — the decoder ExecuTorch's
LLM export flow (``export_llama``) is written for — so what the quality evaluator scores, what
``codesign export`` lowers and what the runtime times are one module, and ExecuTorch's source
transformations (its SDPA-with-KV-cache custom op, its static KV cache) apply unchanged.

The architecture matches the priced op list one to one: pre-norm RMSNorm blocks, Q/K/V/O
projections without bias, RoPE, grouped-query attention (``n_kv_heads``), a SwiGLU FFN
(``w1`` the gate, ``w3`` the up projection, ``w2`` the down projection), a final RMSNorm and an
LM head whose matrix is the embedding table (tied, as the space prices it: one stored matrix).

State-dict names (what a supernet hands over for a candidate; buffers — masks, RoPE tables and
KV caches — are built by the module and never part of it)::

    tok_embeddings.weight                      (vocab, d_model); output.weight is the same tensor
    layers.{i}.attention_norm.weight           (d_model,)
    layers.{i}.attention.wq.weight             (heads * head_dim, d_model)
    layers.{i}.attention.wk.weight             (kv_heads * head_dim, d_model)
    layers.{i}.attention.wv.weight             (kv_heads * head_dim, d_model)
    layers.{i}.attention.wo.weight             (d_model, heads * head_dim)
    layers.{i}.ffn_norm.weight                 (d_model,)
    layers.{i}.feed_forward.w1.weight          (d_ff, d_model)   gate (SiLU)
    layers.{i}.feed_forward.w3.weight          (d_ff, d_model)   up
    layers.{i}.feed_forward.w2.weight          (d_model, d_ff)   down
    norm.weight                                (d_model,)
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch

from codesign.search_spaces.transformer import Candidate, TransformerArch

# a block's linears: op-list unit (``to_ops``: ``l{i}.q``) -> module inside ``layers.{i}``
BLOCK_LINEARS = {"q": "attention.wq", "k": "attention.wk", "v": "attention.wv",
                 "o": "attention.wo", "gate": "feed_forward.w1", "up": "feed_forward.w3",
                 "down": "feed_forward.w2"}
NORM_EPS = 1e-5
ROPE_THETA = 10000.0


def _llama():
    # torchao (imported by ExecuTorch's llama package) logs CUDA-library warnings on import
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from executorch.examples.models.llama import llama_transformer, model_args
    return llama_transformer, model_args


def model_args(arch: TransformerArch, vocab: int, *, kv_cache: bool,
               full_logits: bool = False, sdpa_custom_op: bool = False):
    """ExecuTorch ``ModelArgs`` for ``arch``.

    kv_cache: the static-cache decoder (``forward(tokens, {"input_pos": pos})``, caches of
        ``arch.context`` tokens allocated as buffers); without it, a full-sequence causal model
        for training and perplexity (``forward(tokens)``, sequences up to ``arch.context``).
    full_logits: logits for every position (perplexity) instead of the last one (generation).
    sdpa_custom_op: attention through ExecuTorch's ``llama::sdpa_with_kv_cache`` kernel.
    """
    _, ma = _llama()
    return ma.ModelArgs(
        dim=arch.d_model, n_layers=arch.layers, n_heads=arch.heads, n_kv_heads=arch.kv_heads,
        head_dim=arch.head_dim,
        vocab_size=vocab, hidden_dim=arch.d_ff, max_seq_len=arch.context,
        max_context_len=arch.context, norm_eps=NORM_EPS, rope_freq_base=ROPE_THETA,
        use_kv_cache=kv_cache, use_sdpa_with_kv_cache_op=sdpa_custom_op and kv_cache,
        generate_full_logits=full_logits, enable_dynamic_shape=False)


def build_decoder(candidate: Candidate | TransformerArch, vocab: int = 256,
                  state_dict: Mapping[str, torch.Tensor] | None = None, *, kv_cache: bool = True,
                  full_logits: bool = False, sdpa_custom_op: bool = False) -> torch.nn.Module:
    """The candidate's decoder in eval mode, with ``state_dict`` loaded (names in the module
    docstring; every parameter must be given) and the LM head tied to the embedding table —
    unless the state dict has an ``output.weight`` of its own (a head quantized to another
    precision than the table, as export realises it): then the head is untied, that tensor.
    Without a state dict the weights are the module's random initialisation (for timing)."""
    arch = candidate.arch if isinstance(candidate, Candidate) else candidate
    lt, _ = _llama()
    model = lt.construct_transformer(model_args(arch, vocab, kv_cache=kv_cache,
                                                full_logits=full_logits,
                                                sdpa_custom_op=sdpa_custom_op))
    model.output.weight = model.tok_embeddings.weight  # tied, as priced
    if state_dict is not None:
        expected = {n for n, _ in model.named_parameters()}  # output.weight is the tied alias
        given = set(state_dict) - {"output.weight"}
        missing, unknown = sorted(expected - given), sorted(given - expected)
        if missing or unknown:
            raise ValueError(f"state dict does not fit the candidate's decoder: missing "
                             f"{missing[:4]}, unexpected {unknown[:4]}")
        with torch.no_grad():
            for name, param in model.named_parameters():
                value = state_dict[name]
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(f"{name}: shape {tuple(value.shape)} does not fit "
                                     f"{tuple(param.shape)}")
                param.copy_(value)
        head = state_dict.get("output.weight")
        if head is not None:
            if tuple(head.shape) != tuple(model.output.weight.shape):
                raise ValueError(f"output.weight: shape {tuple(head.shape)} does not fit "
                                 f"{tuple(model.output.weight.shape)}")
            model.output.weight = torch.nn.Parameter(head.detach().clone(), requires_grad=False)
    return model.eval()
