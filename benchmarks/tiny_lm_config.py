"""Tiny configs of Hugging Face causal LMs, built offline from each model type's defaults.

``tiny_config`` shrinks the default config's dict and rebuilds it through the config's own
constructor (so the fields it derives follow), by rules over classes of fields, not models:
sizes by name (``_SIZES``); per-layer lists, per-layer overrides and layer-index fields follow
the tiny layer count, keeping the first layer of each kind (two for a periodic pattern, a
consumer of each kind for a KV-sharing tail); sizes the default derives keep their relation
(latent attention's head dims, heads x head dim = an SSM's inner width, widths equal to an
enclosing hidden size, lists splitting a size, multiples of a layer count); sizes the default
leaves unset that its model needs get tiny ones. ``config_for`` fits it to one model class.
Used by ``benchmarks.zoo_causal_lm``.
"""
from __future__ import annotations

import math

# sizes every tiny config gets, under each of the names configs use for them
WIDTH, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, POSITIONS = 64, 2, 4, 2, 128, 256, 256
_SIZES = {
    ("hidden_size", "n_embd", "d_model", "dim", "model_dim", "embed_dim", "hidden_dim",
     "word_embed_proj_dim"): WIDTH,
    ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads",
     "encoder_attention_heads", "num_decoder_attention_heads",
     "num_encoder_attention_heads"): HEADS,
    ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"): KV_HEADS,
    ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "decoder_ffn_dim",
     "encoder_ffn_dim",
     "moe_intermediate_size", "shared_expert_intermediate_size"): FFN,
    ("vocab_size",): VOCAB,
    ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
     "n_ctx"): POSITIONS,
    ("head_dim", "kv_channels", "attention_head_dim", "rotary_dim"): WIDTH // HEADS,
    ("num_experts", "n_routed_experts", "num_local_experts"): 4,
    ("num_experts_per_tok", "moe_topk", "top_k", "num_experts_per_token"): 2,
    ("num_codebooks",): 1,  # an audio decoder's token streams (musicgen): one
    ("linear_num_heads", "linear_num_value_heads"): HEADS,
    ("linear_num_key_heads",): KV_HEADS,
    ("linear_head_dim", "linear_key_head_dim", "linear_value_head_dim",
     "swa_head_dim"): WIDTH // HEADS,
    # the recurrent state's size per channel / head (SSMs)
    ("ssm_state_size", "mamba_d_state", "state_size"): 16,
    ("moe_shared_expert_intermediate_size",): FFN,
    # multi-head latent attention (deepseek v2/v3): its own head dims and ranks
    ("qk_rope_head_dim", "qk_nope_head_dim"): WIDTH // HEADS // 2,
    ("v_head_dim",): WIDTH // HEADS,
    ("kv_lora_rank", "q_lora_rank"): 32,
}


def tiny_config(model_type: str):
    """The model type's default config with every size set small (text config of multimodal
    ones too, every per-layer field following the tiny layer count, dependent head dims kept
    consistent), rebuilt through the config's constructor so that the fields it derives
    (layer types, head dims) follow; ``use_cache`` on."""
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    if getattr(default, "is_heterogeneous", False):
        default.allow_global_per_layer_attribute_access = True
    fields = _shrink(default.to_dict())
    for name in ("model_type", "transformers_version", "allow_global_per_layer_attribute_access"):
        fields.pop(name, None)
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except Exception:  # a constructor that refuses its own to_dict(): shrink in place
        config = _shrink_in_place(AutoConfig.for_model(model_type))
    targets = [config]
    try:
        text = config.get_text_config() if hasattr(config, "get_text_config") else None
    except ValueError:  # several text configs (musicgen): the decoder is the LM
        text = getattr(config, "decoder", None)
    if text is not None and text is not config:
        targets.append(text)
    for target in targets:
        if getattr(target, "multi_query", False) and hasattr(target, "num_kv_heads"):
            target.num_kv_heads = 1  # falcon's multi-query attention: one K/V head
        if hasattr(target, "use_cache"):
            target.use_cache = True
        if hasattr(target, "is_decoder"):  # encoders' *LMHeadModel run causally only so
            target.is_decoder = True
    return config


def _shrink_in_place(config):
    for target in (config, getattr(config, "text_config", None)):
        if target is None:
            continue
        for names, value in _SIZES.items():
            for name in names:
                if _int(getattr(target, name, None)):
                    try:
                        setattr(target, name, value)
                    except (AttributeError, NotImplementedError, ValueError):
                        pass  # a derived property (falcon's head_dim)
        for name in _LAYER_NAMES:
            if _int(getattr(target, name, None)):
                try:
                    setattr(target, name, LAYERS)
                except (AttributeError, NotImplementedError, ValueError):
                    pass  # a count derived from others (a property): it follows them
    return config


def config_for(cls, config):
    """``config``, or its sub-config of the class ``cls`` takes (a multimodal model type whose
    causal-LM class is the text model's)."""
    wanted = getattr(cls, "config_class", None)
    if wanted is None or isinstance(config, wanted):
        return config
    for value in vars(config).values():
        if isinstance(value, wanted):
            return value
    return config


_LAYER_NAMES = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers",
                "decoder_layers", "encoder_layers", "num_encoder_layers", "num_blocks",
                "num_layers_per_stack")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_count(d: dict) -> int | None:
    for name in _LAYER_NAMES:
        if _int(d.get(name)):
            return d[name]
    return None


def _set_layers(d: dict, out: dict, n: int) -> None:
    """Every layer count of the config at ``n``; a count the default derives as a multiple of
    another (hrm's slots = layers per stack x cycles) keeps that multiple."""
    def stack(name):  # an encoder's and a decoder's counts are separate stacks, not multiples
        return "encoder" in name or "decoder" in name

    counts = [d[name] for name in _LAYER_NAMES
              if _int(d.get(name)) and d[name] > 0 and not stack(name)]
    base = min(counts, default=1)
    for name in _LAYER_NAMES:
        if _int(d.get(name)):
            out[name] = n if stack(name) or d[name] % base else n * (d[name] // base)


def _keep_layers(d: dict, layers: int) -> list[int]:
    """Which of the default's ``layers`` layers the tiny stack keeps: the first of each kind
    any per-layer list or per-layer override names (a hybrid keeps one layer of each kind),
    then the first ones, ``LAYERS`` at least."""
    keep = set()
    # a periodic pattern (every k-th layer from an offset) keeps two layers of each kind: a
    # block shared by the layers of one kind (zamba's) needs two of them
    per_kind = 2 if any(k.endswith("_period") and "layer" in k for k in d) else 1
    for value in d.values():
        if isinstance(value, (list, tuple)) and len(value) == layers:
            seen: dict[str, int] = {}
            for i, item in enumerate(value):
                key = repr(item)
                if seen.get(key, 0) < per_kind:
                    seen[key] = seen.get(key, 0) + 1
                    keep.add(i)
    overrides = d.get("per_layer_config")
    if isinstance(overrides, dict) and overrides:
        seen = set()
        for i in range(layers):
            key = repr(overrides.get(f"{i:02d}", overrides.get(str(i), overrides.get(i))))
            if key not in seen:
                seen.add(key)
                keep.add(i)
    i = 0
    while len(keep) < LAYERS and i < layers:
        keep.add(i)
        i += 1
    keep = sorted(keep)
    # the last layers reuse earlier layers' K/V (gemma3n / gemma4 KV sharing): the tiny stack
    # keeps its layers before the shared tail and, in the tail, one consumer of each kind
    shared = d.get("num_kv_shared_layers")
    if _int(shared) and 0 < shared < layers:
        types = d.get("layer_types") or [None] * layers
        keep = [i for i in keep if i < layers - shared] or [0]
        tail = []
        for i in keep:
            j = next((j for j in range(layers - shared, layers) if types[j] == types[i]), None)
            if j is not None and j not in tail:
                tail.append(j)
        keep = sorted(keep + tail)
    return keep


def _config_class(d: dict):
    from transformers import CONFIG_MAPPING
    try:
        return CONFIG_MAPPING[d.get("model_type", "")]
    except KeyError:
        return None


def _keep_products(d: dict, out: dict) -> None:
    """Sizes the default derives from others keep that relation at the tiny width: a wider
    hidden size (``attention_hidden_size`` = 2 x hidden), heads x head dim = the SSM's inner
    width (expand x hidden) or that wider size, groups dividing the heads."""
    hidden = d.get("hidden_size")
    if not _int(hidden) or not hidden:
        return
    wide = {}
    for key, value in d.items():
        if key != "hidden_size" and "hidden_size" in key and _int(value) and value > hidden \
                and value % hidden == 0 and value // hidden <= 4:
            out[key] = wide[value] = value // hidden * out["hidden_size"]
    for key, value in d.items():
        if key.endswith("expand") and _int(value):
            wide[value * hidden] = value * out["hidden_size"]
    if not wide:
        return
    heads = [k for k, v in d.items() if _int(v) and "head" in k and
             ("num" in k or "n_" in k) and "dim" not in k]
    dims = [k for k, v in d.items() if _int(v) and "head" in k and ("dim" in k or "d_head" in k)
            and not k.startswith(("qk_", "v_"))]  # latent attention's dims: set above
    for h in heads:
        for dim in dims:
            if d[h] * d[dim] in wide:
                out[h] = min(d[h], HEADS)
                out[dim] = max(wide[d[h] * d[dim]] // out[h], 1)
                for g in ("n_groups", "mamba_n_groups", "mamba_ngroups"):
                    if _int(d.get(g)) and out[h] % d[g]:
                        out[g] = 1


def _shrink(d: dict, widths: frozenset = frozenset()) -> dict:
    """A config dict with every size small and every per-layer field following the tiny
    layer count; nested sub-configs (text / vision / decoder) shrunk alike. ``widths``: hidden
    sizes of the enclosing config; a field equal to one (an adapter's input / output width) is
    that width, tiny too."""
    out = dict(d)
    widths = widths | {v.get("hidden_size") for v in [d, *d.values()]
                       if isinstance(v, dict) and _int(v.get("hidden_size"))}
    for key, value in d.items():
        if isinstance(value, dict) and "model_type" in value:
            out[key] = _shrink(value, widths)
        elif _int(value) and value in widths and ("dim" in key or "size" in key) \
                and "vocab" not in key and "position" not in key:
            out[key] = WIDTH
    for names, value in _SIZES.items():
        for name in names:
            if _int(out.get(name)):
                out[name] = value
    # int lists that split a size (reformer's axial position embeddings: dims summing to the
    # hidden size, a shape multiplying to the positions) split its tiny value alike
    for key, value in d.items():
        if not (isinstance(value, (list, tuple)) and len(value) > 1
                and all(_int(v) and v > 0 for v in value)):
            continue
        if sum(value) == d.get("hidden_size") and _int(out.get("hidden_size")):
            scaled = [max(v * out["hidden_size"] // sum(value), 1) for v in value]
            scaled[-1] += out["hidden_size"] - sum(scaled)
            out[key] = type(value)(scaled)
        elif math.prod(value) == d.get("max_position_embeddings") \
                and _int(out.get("max_position_embeddings")):
            side = round(out["max_position_embeddings"] ** (1 / len(value)))
            if side ** len(value) == out["max_position_embeddings"]:
                out[key] = type(value)([side] * len(value))
    # per-layer-type RoPE the default leaves empty (a model reading it per type): transformers'
    # default RoPE at the class's default theta for each type
    types = d.get("layer_types")
    if d.get("rope_parameters") == {} and isinstance(types, list) and types:
        theta = getattr(_config_class(d), "default_theta", 10000.0)
        out["rope_parameters"] = {t: {"rope_type": "default", "rope_theta": theta}
                                  for t in dict.fromkeys(types)}
    # latent attention has no K/V heads of its own: every head expands from the latent
    if "kv_lora_rank" in d and d.get("num_key_value_heads") == d.get("num_attention_heads"):
        out["num_key_value_heads"] = out.get("num_attention_heads")
    # a token indexer (sparse attention) the layer types use but the default leaves unsized
    types = d.get("layer_types")
    if isinstance(types, list) and "indexed_attention" in types:
        for name, value in (("indexer_n_heads", HEADS), ("indexer_kv_heads", 1),
                            ("indexer_head_dim", WIDTH // HEADS), ("indexer_budget", 16),
                            ("indexer_compress_ratio", 4)):
            if name in out and out[name] is None:
                out[name] = value
    # expert groups (group-limited routing) divide the tiny expert count
    for name in ("n_group", "num_expert_group", "num_group", "moe_n_group"):
        if _int(out.get(name)) and out[name] > 2:
            out[name] = 2
    for name in ("topk_group", "moe_topk_group"):
        if _int(out.get(name)) and out[name] > 1:
            out[name] = 1
    # sizes a default leaves unset that its model needs (derived from the others upstream)
    for name in ("head_dim", "num_key_value_heads", "n_routed_experts", "num_experts_per_tok"):
        if name in out and out[name] is None and "num_attention_heads" in out:
            out[name] = next(v for names, v in _SIZES.items() if name in names)
    if out.get("n_shared_experts", 0) is None and out.get("n_routed_experts"):
        out["n_shared_experts"] = 1
    # dependent head dims keep the default's relations (multi-head latent attention: the
    # RoPE part is ``head_dim``, the query/key head is the no-RoPE part plus the RoPE part)
    if _int(d.get("qk_rope_head_dim")) and _int(d.get("qk_nope_head_dim")):
        rope, nope = out["qk_rope_head_dim"], out["qk_nope_head_dim"]
        for name in ("head_dim", "qk_head_dim", "index_head_dim"):
            if d.get(name) == d["qk_rope_head_dim"]:
                out[name] = rope
            elif d.get(name) == d["qk_rope_head_dim"] + d["qk_nope_head_dim"]:
                out[name] = rope + nope
    # dims derived as hidden x factor that the config rounds to multiples of 64 (xlstm's q/k
    # and v dims) while the model does not: a width where both agree
    factors = [v for k, v in d.items() if k.endswith("_dim_factor") and isinstance(v, float)]
    if factors and _int(out.get("hidden_size")):
        width = next((w for w in range(out["hidden_size"], 8 * out["hidden_size"] + 1,
                                       out["hidden_size"])
                      if all((w * f) % 64 == 0 for f in factors)), out["hidden_size"])
        for name in ("hidden_size", "embedding_dim"):
            if _int(out.get(name)):
                out[name] = width
    _keep_products(d, out)
    layers = _layer_count(d)
    if layers:
        keep = _keep_layers(d, layers)
        # a repeating block pattern shorter than the stack: one period at least
        for key, value in d.items():
            if key.endswith("types") and isinstance(value, (list, tuple)) \
                    and 1 < len(value) < layers and len(keep) < len(value) <= 2 * LAYERS:
                keep = list(range(len(value)))
        n = len(keep)
        if _int(d.get("num_kv_shared_layers")) and d["num_kv_shared_layers"] > 0:
            out["num_kv_shared_layers"] = sum(i >= layers - d["num_kv_shared_layers"]
                                              for i in keep)
        _set_layers(d, out, n)
        for key, value in d.items():
            if isinstance(value, (list, tuple)) and len(value) == layers:
                out[key] = type(value)(value[i] for i in keep)
            elif key.endswith(("_period", "_offset")) and _int(value) and "layer" in key:
                out[key] = value  # fixed below, once the period is known
            elif isinstance(value, (list, tuple)) and value and all(_int(v) for v in value) \
                    and "layer" in key and ("indices" in key or "idx" in key or "ids" in key) \
                    and max(value) < layers:  # layer indices: the kept ones, renumbered
                out[key] = [keep.index(v) for v in value if v in keep] or [n - 1]
        # every k-th layer from an offset: within the stack, and twice (a block shared by the
        # layers of one kind, zamba's, needs two of them)
        span = n
        for key, value in d.items():
            if key.endswith("_period") and _int(value) and "layer" in key:
                period = out[key] = min(value, n)
                off = key[: -len("period")] + "offset"
                if _int(d.get(off)):
                    out[off] = min(d[off], period - 1)
                    span = max(span, out[off] + period + 1)
        if span > n and keep == list(range(n)):
            n = span
            _set_layers(d, out, n)
        # per-layer types a default leaves unset (its model indexes them): transformers' own
        # inference for an unset list, full attention (cache_utils.get_layer_types_and_kwargs)
        if "layer_types" in d and d["layer_types"] is None and "layer_types" in getattr(
                _config_class(d), "__dataclass_fields__", {}):
            out["layer_types"] = ["full_attention"] * n
        # a hybrid SSM/attention family whose default stack has no attention layer (bamba,
        # granite hybrid): its last tiny layer attends, as its released checkpoints mix both
        if "attn_layer_indices" in d and not d["attn_layer_indices"]:
            out["attn_layer_indices"] = [n - 1]
        types = d.get("layer_types")
        if isinstance(types, list) and types and set(types) <= {"linear_attention", "mamba"} \
                and "layers_block_type" in getattr(_config_class(d), "attribute_map", {}):
            out["layer_types"] = [types[0]] * (n - 1) + ["full_attention"]
        overrides = d.get("per_layer_config")
        if isinstance(overrides, dict) and overrides:
            tiny = {}
            for j, i in enumerate(keep):
                found = overrides.get(f"{i:02d}", overrides.get(str(i), overrides.get(i)))
                if found:
                    tiny[f"{j:02d}"] = _shrink({**found})
            out["per_layer_config"] = tiny
    for key, value in d.items():  # special tokens inside the tiny vocabulary
        if key.endswith("_token_id") and _int(value) and value >= VOCAB:
            out[key] = 0
    return out
