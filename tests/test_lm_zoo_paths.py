"""The causal-LM zoo's paths (issue 18, item 4), one tiny representative each: recurrent state
(mamba, rwkv), multi-query and latent K/V shaped by what the model writes (falcon,
deepseek_v3), an encoder-decoder's decoder as ``*ForCausalLM`` (bart), a position read back
with ``.item()`` (trocr), the cache object a model builds itself (minimax), the 1-D causal
convolution rule and the tiny-config rules of the zoo harness."""
from __future__ import annotations

import pytest
import torch

from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpKind
from codesign.llm_predict import price_lm_phase

CONTEXT, PROMPT = 64, 16


def _model(model_type: str):
    from benchmarks.zoo_causal_lm import causal_lm_entries

    entry = next(e for e in causal_lm_entries() if e.model_type == model_type)
    return entry.factory()


def _price(model, phase, **kw):
    return price_lm_phase(model, load_device("pixel8"), phase=phase, context=CONTEXT,
                          prompt_len=PROMPT if phase == "prefill" else None, **kw)


@pytest.fixture(scope="module")
def mamba():
    return _model("mamba")


def test_mamba_state_is_priced_as_state_not_kv(mamba):
    cfg = mamba.config
    inner = cfg.intermediate_size
    # per layer: a conv window of conv_kernel inputs and an SSM state of state_size per channel
    elems = cfg.num_hidden_layers * inner * (cfg.conv_kernel + cfg.state_size)
    dec = _price(mamba, "decode", backend="codesign", weight_bits=4)
    pre = _price(mamba, "prefill", backend="codesign", weight_bits=4)
    for p in (dec, pre):
        # fp32 state (it accumulates) even where the K/V cache would be int8; no K/V at all
        assert p.state_bytes == p.kv_cache_bytes == elems * 4
        assert not any(op.kind is OpKind.ATTENTION for op in p.ops)
        assert any(op.kind is OpKind.DEPTHWISE_CONV2D for op in p.ops)  # the causal conv
    writes = [op for op in dec.ops if op.source == "state_write"]
    # every state rewritten (the reference scan writes the SSM state twice: its in-place
    # update, then the cache's copy)
    assert elems <= sum(op.act_out_elems for op in writes) <= 2 * elems
    assert all(op.quant.act_bits == 32 for op in writes)
    # the whole state is read each step, whatever the context
    short = price_lm_phase(mamba, load_device("pixel8"), phase="decode", context=32,
                           backend="codesign", weight_bits=4)
    assert short.state_bytes == dec.state_bytes
    assert short.latency_s == pytest.approx(dec.latency_s, rel=1e-9)
    assert dec.streamed_bytes - short.streamed_bytes == 0
    # prefill runs the scan over 16 tokens: more work than one decode step
    assert pre.latency_s > dec.latency_s


def test_rwkv_own_state_object():
    model = _model("rwkv")
    dec = _price(model, "decode", weight_bits=32)
    h, layers = model.config.hidden_size, model.config.num_hidden_layers
    assert dec.state_bytes == dec.kv_cache_bytes == 5 * h * layers * 4  # rwkv's 5 state rows


@pytest.mark.parametrize("model_type", ["falcon", "deepseek_v3"])
def test_kv_cache_shaped_by_what_the_model_writes(model_type):
    model = _model(model_type)
    cfg = model.config
    layers = cfg.num_hidden_layers
    if model_type == "falcon":  # multi-query: one K/V head, not the config's KV-head count
        assert cfg.multi_query and cfg.num_attention_heads > 1
        per_token = 2 * 1 * (cfg.hidden_size // cfg.num_attention_heads)
    else:  # latent attention caches the compressed latent and the shared RoPE key
        per_token = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    p = _price(model, "decode", weight_bits=32, backend="xnnpack")
    assert p.state_bytes == 0
    assert p.kv_cache_bytes == layers * CONTEXT * per_token * 4


def test_encoder_decoder_decoder_as_causal_lm():
    model = _model("bart")  # BartForCausalLM: the decoder stack alone
    cfg = model.config
    p = _price(model, "decode", weight_bits=32, backend="xnnpack")
    assert cfg.decoder_layers == 2
    assert p.kv_cache_bytes == 2 * cfg.decoder_layers * CONTEXT * cfg.d_model * 4
    assert sum(op.kind is OpKind.ATTENTION for op in p.ops) == cfg.decoder_layers


def test_position_read_back_with_item_is_pinned():
    from codesign.cost_models.lm_unbacked import pinned_length

    model = _model("trocr")
    pre = _price(model, "prefill", weight_bits=32)
    dec = _price(model, "decode", weight_bits=32)
    assert pre.kv_cache_bytes == dec.kv_cache_bytes > 0
    assert pre.latency_s > dec.latency_s

    class Layer:
        def get_seq_length(self):
            return "tensor"

    class Step:
        static_cache = type("C", (), {"layers": [Layer()]})()

    step = Step()
    with pinned_length(step, 7):
        assert step.static_cache.layers[0].get_seq_length() == 7
    assert step.static_cache.layers[0].get_seq_length() == "tensor"


def test_own_cache_object_when_a_static_one_cannot_run():
    model = _model("minimax")  # MiniMaxCache: lightning-attention state + a dynamic K/V cache
    cfg = model.config
    dec = _price(model, "decode", weight_bits=32, backend="xnnpack")
    full = cfg.layer_types.count("full_attention")
    linear = cfg.layer_types.count("linear_attention")
    hd = cfg.head_dim
    # the decode continues the cache the model filled itself over CONTEXT-1 positions
    kv = full * 2 * (CONTEXT - 1) * cfg.num_key_value_heads * hd * 4
    assert dec.state_bytes == linear * cfg.num_attention_heads * hd * hd * 4
    assert dec.kv_cache_bytes - dec.state_bytes == kv
    assert any(op.kind is OpKind.CONCAT for op in dec.ops)  # its append: a real copy
    pre = _price(model, "prefill", weight_bits=32, backend="xnnpack")
    assert pre.latency_s > dec.latency_s


def test_conv1d_rule_is_a_depthwise_conv_over_time():
    from codesign.cost_models.lm_export import phase_shape
    from codesign.cost_models.lm_lowering import lower_step

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(32, 8)
            self.conv = torch.nn.Conv1d(8, 8, 4, groups=8, padding=3)

        def forward(self, tokens):
            x = self.emb(tokens).transpose(1, 2)
            return self.conv(x)[..., : tokens.shape[1]]

    ep = torch.export.export(Conv(), (torch.zeros(1, 16, dtype=torch.long),))
    ops = lower_step(ep, phase_shape("prefill", 16, 16)).ops
    (conv,) = [op for op in ops if op.kind is OpKind.DEPTHWISE_CONV2D]
    assert conv.groups == 8 and conv.k == 4 and conv.weight_elems == 8 * 4
    assert conv.flops == 2.0 * 19 * 8 * 4  # 16 + 2*3 - 4 + 1 outputs per channel, 4 taps


def test_tiny_config_rules():
    from benchmarks.zoo_causal_lm import tiny_config

    q = tiny_config("qwen3_next")  # a hybrid keeps one layer of each kind
    assert set(q.layer_types) == {"linear_attention", "full_attention"}
    assert q.num_hidden_layers == len(q.layer_types)
    d = tiny_config("deepseek_v3")  # latent attention's head dims stay consistent
    assert d.qk_head_dim == d.qk_nope_head_dim + d.qk_rope_head_dim
    assert d.head_dim == d.qk_rope_head_dim
    m = tiny_config("mamba2")  # SSM heads x head dim = expand x hidden
    assert m.num_heads * m.head_dim == m.expand * m.hidden_size
    b = tiny_config("bart")  # an encoder-decoder's own layer counts
    assert b.decoder_layers == b.encoder_layers == 2
    z = tiny_config("zamba")  # a periodic pattern keeps two layers of each kind
    assert z.layers_block_type.count("hybrid") == 2


def test_recurrent_scan_matmuls_stay_at_stream_precision(mamba):
    pre = _price(mamba, "prefill", backend="codesign", weight_bits=4)
    scan = [op for op in pre.ops if op.kind is OpKind.MATMUL]
    assert scan and all(op.source == "recurrent" and op.quant.act_bits == 32 for op in scan)


def test_data_dependent_rows_per_expert_are_balanced():
    from codesign.cost_models.lm_export import export_step, phase_shape
    from codesign.cost_models.lm_unbacked import balance_routed_rows

    model = _model("jetmoe")  # splits its rows by router counts read with .tolist()
    cfg = model.config
    ep = export_step(model, phase_shape("decode", None, CONTEXT))
    values = balance_routed_rows(ep)
    assert values and set(values.values()) == {0, 1}
    # one token x top-k: k experts get one row, the others none, in every split of 4 experts
    assert sum(values.values()) % cfg.num_experts_per_tok == 0
    dec = _price(model, "decode", weight_bits=32)
    pre = _price(model, "prefill", weight_bits=32)
    assert 0 < dec.latency_s < pre.latency_s
    assert dec.weight_bytes == pre.weight_bytes  # unrouted experts are stored, not streamed
    assert dec.streamed_bytes < pre.streamed_bytes


def test_a_model_failing_both_caches_reports_both_reasons():
    """xlm fails over the static cache and over its own: the error names both, not only the
    first (the own-cache attempt's reason used to be dropped)."""
    from codesign.cost_models.lowering import LoweringError

    with pytest.raises(LoweringError, match=r"failed: .+; with its own cache: .+"):
        _price(_model("xlm"), "prefill")
