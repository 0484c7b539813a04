"""The static cache one exported step of a Hugging Face causal LM runs with.

As transformers' ExecuTorch wrapper (``TorchExportableModuleWithStaticCache``) builds it: a
``StaticCache`` of ``context`` positions whose tensors are registered as buffers (so the export
sees them as state the step mutates), sliding-window layers as full static layers. Two things
the wrapper does not do, that the causal-LM zoo needs:

- **shapes from what the model writes**: each layer's K/V tensors are allocated by one eager
  warm-up call of the step itself (transformers' lazy initialization), not from the config's
  head counts. A multi-query model (falcon, gpt_bigcode) writes one K/V head, a multi-head latent
  attention model (deepseek v2/v3, minicpm3) writes its compressed latent; the config's
  ``num_key_value_heads`` / ``head_dim`` say neither. Where the warm-up cannot run (weights on
  the ``meta`` device) the wrapper's config-derived shapes are the fallback;
- **recurrent state layers**: linear-attention, SSM and short-convolution layers (mamba, qwen3
  next's gated delta net, lfm2's conv) keep a conv state and a recurrent state per layer instead
  of K/V rows; those tensors are registered too. A prefill step starts from no previous state
  (the layer runs its chunked scan / full convolution over the prompt), a decode step from a
  filled one (the per-token state update), as generation runs them.
"""
from __future__ import annotations

import torch

from codesign.cost_models.lm_unbacked import pinned_length

STATE_PREFIXES = ("conv_state_", "recurrent_state_")  # buffer names of recurrent state
KV_PREFIXES = ("key_cache_", "value_cache_")  # buffer names of K/V caches


def _static_layers(cache, context: int) -> None:
    """Sliding-window layers as full static ones (their rolling update has control flow the
    export cannot keep, as the ExecuTorch wrapper does)."""
    from transformers.cache_utils import (LinearAttentionAndStaticFullAttentionLayer,
                                          LinearAttentionAndStaticSlidingWindowAttentionLayer,
                                          StaticLayer, StaticSlidingWindowLayer)

    for i, layer in enumerate(cache.layers):
        if isinstance(layer, LinearAttentionAndStaticSlidingWindowAttentionLayer):
            cache.layers[i] = LinearAttentionAndStaticFullAttentionLayer(
                context, number_of_states=layer.number_of_states)
        elif isinstance(layer, StaticSlidingWindowLayer):
            cache.layers[i] = StaticLayer(context)
    # layers without a cache (MoE / MLP blocks, KV-sharing consumers) stay ``DummyLayer``s: the
    # cache's mask sizes skip them


def _is_state_layer(layer) -> bool:
    from transformers.cache_utils import LinearAttentionCacheLayerMixin
    return isinstance(layer, LinearAttentionCacheLayerMixin)


class CachedStep(torch.nn.Module):
    """``forward(input_ids, cache_position)`` -> the last position's logits, over a static
    cache of ``context`` positions (K/V and recurrent state registered as buffers)."""

    def __init__(self, model, context: int, start: int, tokens: int) -> None:
        from transformers import StaticCache

        super().__init__()
        self.model = model
        self.takes_positions = False
        self.has_past = start > 0  # generation's state at this step: none before the prompt
        config = model.config.get_text_config(decoder=True)
        self.static_cache = StaticCache(config=config, max_cache_len=context)
        _static_layers(self.static_cache, context)
        device = next(iter(model.parameters())).device
        warmed = False
        if device.type != "meta":
            try:  # the step itself, eagerly: each layer allocates what the model writes
                with torch.no_grad(), pinned_length(self, start):
                    self.forward(torch.zeros(1, tokens, dtype=torch.long, device=device),
                                 torch.arange(start, start + tokens, device=device))
                warmed = True
            except Exception:  # noqa: BLE001 - the config-derived shapes are the fallback
                self.static_cache = StaticCache(config=config, max_cache_len=context)
                _static_layers(self.static_cache, context)
        if not warmed or any(not _is_state_layer(layer) and not layer.is_initialized
                             for layer in self.static_cache.layers):
            from transformers.integrations.executorch import get_head_shapes
            heads, head_dim = get_head_shapes(config)
            self.static_cache.early_initialization(1, heads, head_dim, model.dtype, device)
        for i, layer in enumerate(self.static_cache.layers):
            if getattr(layer, "keys", None) is not None:
                self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
                self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)
            if _is_state_layer(layer):
                for s in range(layer.number_of_states):
                    if layer.is_conv_states_initialized[s]:
                        self.register_buffer(f"conv_state_{i}_{s}", layer.conv_states[s],
                                             persistent=False)
                    if layer.is_recurrent_states_initialized[s]:
                        self.register_buffer(f"recurrent_state_{i}_{s}",
                                             layer.recurrent_states[s], persistent=False)

    def forward(self, input_ids, cache_position):  # noqa: D401 - torch API
        for layer in self.static_cache.layers:
            if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                layer.cumulative_length.copy_(cache_position[0])
            if _is_state_layer(layer):
                layer.cumulative_length_linear.copy_(cache_position[0])
                for s in range(layer.number_of_states):
                    layer.has_previous_state[s] = self.has_past
        extra = {}
        if self.takes_positions:  # absolute positions, passed on export's retry
            extra["position_ids"] = cache_position.unsqueeze(0)
        out = self.model(input_ids=input_ids, attention_mask=None, cache=self.static_cache,
                         use_cache=True, logits_to_keep=1, **extra)
        return out.logits


def _tensors(obj, depth: int = 0):
    """The tensors a model's own cache object holds (attributes, lists, dicts), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth > 4 or obj is None or isinstance(obj, (int, float, str, bool, torch.dtype)):
        return
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, depth + 1)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, depth + 1)
    elif hasattr(obj, "__dict__"):
        for item in vars(obj).values():
            yield from _tensors(item, depth + 1)


_OWN_CACHE_FIELDS = ("state", "cache", "cache_params", "past_key_values")


class OwnStateStep(torch.nn.Module):
    """A model with a cache object of its own instead of a static ``Cache`` it accepts: rwkv's
    five state tensors, xlstm's ``xLSTMCache``, minimax's ``MiniMaxCache``, or the dynamic cache
    of a model that cannot run over a static one (its position bias sized by the filled
    length: cpmant, xlm, prophetnet). The object is built by the model itself in an eager call:

    - decode: a prefill of ``start`` tokens, so the cache is the one generation carries; its
      K/V tensors (``key_cache_*`` / ``value_cache_*``: a dynamic cache appends the step's rows
      with a concatenation, a copy the model really runs) and its recurrent state tensors
      (``recurrent_state_*``) registered as buffers, and the step continues from it;
    - prefill: a recurrent state object is zeroed and passed in (the runtime's preallocated
      state); a K/V cache is not: the model starts its own, empty, as generation does.
    """

    def __init__(self, model, start: int, tokens: int) -> None:
        from transformers.cache_utils import Cache

        super().__init__()
        self.model = model
        device = next(iter(model.parameters())).device
        with torch.no_grad():
            out = model(input_ids=torch.zeros(1, max(start, 1), dtype=torch.long, device=device),
                        use_cache=True)
        found = [(f, getattr(out, f, None)) for f in _OWN_CACHE_FIELDS]
        found = [(f, v) for f, v in found if v is not None]
        if not found:
            raise ValueError(f"{type(model).__name__} returns no state to continue from")
        field, self.state = found[0]
        self.kwarg = "state" if field == "state" else "cache"
        kv = set()
        if isinstance(self.state, Cache):
            if start == 0:
                self.state = None  # the model starts its own cache
                return
            for i, layer in enumerate(self.state.layers):
                for name in ("keys", "values"):
                    tensor = getattr(layer, name, None)
                    if isinstance(tensor, torch.Tensor) and tensor.numel():
                        kv.add(id(tensor))
                        self.register_buffer(f"{name[:-1]}_cache_{i}_{name}", tensor,
                                             persistent=False)
        for i, tensor in enumerate(_tensors(self.state)):
            if id(tensor) in kv or not tensor.is_floating_point() or not tensor.numel():
                continue
            if start == 0:
                tensor.zero_()  # a prefill starts from an empty state
            self.register_buffer(f"recurrent_state_{i}", tensor, persistent=False)

    def forward(self, input_ids, cache_position):  # noqa: D401 - torch API
        extra = {} if self.state is None else {self.kwarg: self.state}
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **extra)
        return out.logits


def buffer_inputs(ep, prefixes=STATE_PREFIXES) -> set[str]:
    """Placeholders of the buffers ``lm_cache`` registers under ``prefixes`` (recurrent state by
    default); a non-strict export lifts the cache's own tensors as constants, the same objects
    as those buffers."""
    named = dict(getattr(ep, "constants", {}) or {})
    named.update(ep.state_dict)
    ids = {id(t) for k, t in named.items() if k.startswith(prefixes)}
    sig = ep.graph_signature
    out = {p for p, b in sig.inputs_to_buffers.items() if b.startswith(prefixes)}
    lifted = getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {}
    out |= {p for p, c in lifted.items() if id(named.get(c)) in ids}
    return out
