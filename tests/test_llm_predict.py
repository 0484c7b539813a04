"""``codesign predict --phase prefill|decode`` for causal LMs (issue 18, items 3-4)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from codesign.cli import main
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import backend_for
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpBatch, OpKind, model_bytes
from codesign.llm_predict import price_lm_phase
from codesign.search_spaces.transformer import (Candidate, LayerChoice, TransformerArch,
                                                 TransformerSpace, load_transformer_config)
from tests import lm_models
from tests.cli_helpers import assert_bad_input_exits_2

T = lm_models.TINY
PRECISION = {"xnnpack": "w4a8-dyn", "codesign": "w4a8"}


@pytest.fixture(scope="module")
def tiny():
    return lm_models.llama()


def predict_json(capsys, *args):
    assert main(["predict", "--device", "pixel8", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_phases_json_contract_and_figures(capsys):
    model = "tests.lm_models:llama"
    pre = predict_json(capsys, "--model", model, "--phase", "prefill", "--prompt-len", "16",
                       "--context", "64")
    dec = predict_json(capsys, "--model", model, "--phase", "decode", "--context", "64")
    head_dim = T["d_model"] // T["heads"]
    kv = T["layers"] * 2 * T["kv_heads"] * 64 * head_dim * 4  # fp32 cache (XNNPACK)
    for out, phase in ((pre, "prefill"), (dec, "decode")):
        assert out["phase"] == phase and out["device"] == "pixel8" and out["backend"] == "xnnpack"
        assert out["kv_cache_bytes"] == kv
        lin = [r for r in out["layers"] if r["kind"] == "linear"]
        assert len(lin) == 7 * T["layers"] + 1 and all(r["weight_bits"] == 4 for r in lin)
        assert out["bound"] in ("compute", "memory", "overhead")
        assert sum(out["bound_shares"].values()) == pytest.approx(1.0)
    # tied head: one stored 4-bit matrix; g32: fp16 scale + int8 zero point per 32 weights;
    # and the IR's fp32 bias per output channel of every linear
    d, f, v, kvd = T["d_model"], T["ffn"], T["vocab"], T["kv_heads"] * head_dim
    elems = T["layers"] * (2 * d * d + 2 * d * kvd + 3 * d * f) + v * d
    channels = T["layers"] * (3 * d + 2 * kvd + 2 * f) + v
    assert pre["weight_bytes"] == dec["weight_bytes"]
    assert pre["weight_bytes"] == elems * (0.5 + 3 / 32) + 4 * channels
    assert pre["tokens_per_s"] == pytest.approx(16 / pre["latency_s"]) and pre["ttft_s"] > 0
    assert dec["tokens_per_s"] == pytest.approx(1 / dec["latency_s"])
    assert dec["attended"] == 64 and pre["attended"] == 16


def test_decode_latency_grows_with_context_and_prefill_with_prompt(tiny):
    device = load_device("pixel8")
    short, long = (price_lm_phase(tiny, device, phase="decode", context=c) for c in (64, 1024))
    assert long.latency_s > short.latency_s and long.kv_cache_bytes == 16 * short.kv_cache_bytes
    p16, p64 = (price_lm_phase(tiny, device, phase="prefill", prompt_len=p, context=128)
                for p in (16, 64))
    assert p64.latency_s > p16.latency_s


def test_untied_table_is_stored_not_streamed():
    device = load_device("pixel8")
    tied = price_lm_phase(lm_models.llama(), device, phase="decode", context=64)
    untied = price_lm_phase(lm_models.llama_untied(), device, phase="decode", context=64)
    table = T["vocab"] * T["d_model"] * (0.5 + 3 / 32)
    assert untied.weight_bytes == pytest.approx(tied.weight_bytes + table, abs=2)
    assert untied.streamed_bytes == tied.streamed_bytes  # a gather, not a stream
    emb = [op for op in untied.ops if op.kind is OpKind.EMBEDDING]
    assert len(emb) == 1 and emb[0].weight_elems == 0 and emb[0].in_shapes == ((1, T["d_model"]),)


def test_float_linears(tiny):
    device = load_device("pixel8")
    f32 = price_lm_phase(tiny, device, phase="decode", context=64, weight_bits=32)
    w4 = price_lm_phase(tiny, device, phase="decode", context=64)
    assert {(op.quant.weight_bits, op.quant.act_bits) for op in f32.ops
            if op.kind is OpKind.LINEAR} == {(32, 32)}
    assert not any(op.kind is OpKind.QUANTIZE for op in f32.ops)
    assert f32.weight_bytes > 5 * w4.weight_bytes  # fp32 vs 4 bits + scales (+ the same biases)


def test_eight_bit_and_fp16_stream(tiny):
    device = load_device("pixel8")
    w8 = price_lm_phase(tiny, device, phase="decode", context=64, weight_bits=8, dtype="fp16")
    w4 = price_lm_phase(tiny, device, phase="decode", context=64)
    assert w8.weight_bytes > 1.6 * w4.weight_bytes
    assert w8.kv_cache_bytes * 2 == w4.kv_cache_bytes  # fp16 cache
    assert {op.quant.weight_bits for op in w8.ops if op.kind is OpKind.LINEAR} == {8}


@pytest.mark.parametrize("backend", ["xnnpack", "codesign"])
def test_project_decoder_and_hf_llama_price_within_5_percent(backend):
    """The decoder space's own op list and an HF Llama of the same shape and precision."""
    layers, d, heads, kvh, mult, vocab, context, prompt = 4, 256, 4, 2, 3, 256, 512, 128
    device = load_device("pixel8")
    spec = backend_for(device, backend)
    config = dataclasses.replace(load_transformer_config(), vocab=vocab, stream_bits=32,
                                 prompt_tokens=prompt)
    space = TransformerSpace(spec, config=config)
    choice = LayerChoice(PRECISION[backend], 32)
    cand = Candidate(TransformerArch(layers, d, heads, kvh, mult, context), (choice,) * layers,
                     choice)
    hf = lm_models.llama(layers, d, heads, kvh, mult * d, vocab, meta=True)
    cost = AnalyticCostModel(device, spec)
    for phase in ("prefill", "decode"):
        ours = space.to_ops(cand, phase)
        theirs = price_lm_phase(hf, device, phase=phase, prompt_len=prompt, context=context,
                                backend=backend)
        mine = float(cost.predict(OpBatch.from_oplists([ours])).latency_s[0])
        assert theirs.latency_s == pytest.approx(mine, rel=0.05), (phase, theirs.latency_s, mine)
        assert model_bytes(theirs.ops) == model_bytes(ours)
        assert theirs.kv_cache_bytes == space.kv_cache_bytes(cand)
        count = lambda ops, kind: sum(op.kind is kind for op in ops)  # noqa: E731
        for kind in (OpKind.LINEAR, OpKind.NORM, OpKind.ROPE, OpKind.ATTENTION, OpKind.MATMUL):
            assert count(theirs.ops, kind) == count(ours, kind), (phase, kind)


def test_a_module_taking_token_ids_prices_its_prefill():
    device = load_device("pixel8")
    p = price_lm_phase(lm_models.token_lm(), device, phase="prefill", prompt_len=8, context=8,
                       weight_bits=8)
    kinds = {op.kind for op in p.ops}
    assert {OpKind.EMBEDDING, OpKind.LINEAR, OpKind.ATTENTION, OpKind.NORM} <= kinds
    assert p.kv_cache_bytes == 0  # no cache of its own


LM = {"--device": "pixel8", "--model": "tests.lm_models:llama", "--phase": "prefill",
      "--prompt-len": "16", "--context": "64"}


@pytest.mark.parametrize("overrides, message", [
    (["--phase", "generate"], "unknown --phase 'generate'; valid: prefill, decode"),
    (["--context", "8"], "--context 8 is smaller than --prompt-len 16"),
    (["--weight-bits", "3"], "--weight-bits 3: valid: 4, 8, 32"),
    (["--weight-bits", "8", "--group-size", "32"], "--group-size applies to 4-bit weights"),
    (["--dtype", "int8"], "--dtype 'int8' with --phase: valid: fp32, fp16"),
    (["--group-size", "48"], "does not accept group size 48"),
    (["--input-shape", "1,16"], "--input-shape and --phase exclude each other"),
    (["--model", "tests.lm_models:bert"], "BertModel has no language-model head"),
    (["--model", "tests.models:small_convnet"], "is not a causal LM this can run"),
    (["--prompt-len", "0"], "--prompt-len must be an integer >= 1"),
])
def test_bad_input_exits_2_with_one_line(overrides, message, capsys):
    assert_bad_input_exits_2("predict", LM, overrides, message, capsys)


def test_missing_prompt_len_and_context(capsys):
    flags = ["predict", "--device", "pixel8", "--model", "tests.lm_models:llama"]
    for extra, message in ((["--phase", "prefill", "--context", "64"], "needs --prompt-len"),
                           (["--phase", "decode"], "--phase decode needs --context"),
                           (["--context", "64"], "--context need --phase"),
                           ([], "give --input-shape (or --phase")):
        assert main(flags + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_llama32_1b_published_shape_on_meta(capsys):
    """The 1B shape (benchmarks/llm_phases.py) lowers on the meta device: its stored bytes are
    the published parameter count (1.236 B, tied table) at 4 bits plus group scales, the
    norms' scales aside."""
    out = predict_json(capsys, "--model", "benchmarks.llm_phases:llama32_1b", "--phase",
                       "decode", "--prompt-len", "128", "--context", "512")
    params = 1_235_814_400  # published; 67,584 of them are the norms' scales (not priced)
    linear = params - (2 * 16 + 1) * 2048
    channels = 16 * (3 * 2048 + 2 * 512 + 2 * 8192) + 128256  # the IR's fp32 bias per channel
    assert out["weight_bytes"] == linear * (0.5 + 3 / 32) + 4 * channels
    assert out["kv_cache_bytes"] == 16 * 2 * 8 * 512 * 64 * 4
    assert 0.2 < out["dram_bandwidth_fraction"] <= 1.0  # decode streams its weights


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "phi", "gpt2",
            "gpt_neox", "olmo", "stablelm", "starcoder2", "bloom", "opt", "gptj", "codegen",
            "mixtral", "qwen2_moe"]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES)
def test_causal_lm_families_price_in_both_phases(model_type):
    from benchmarks.zoo_causal_lm import causal_lm_entries

    entry = next(e for e in causal_lm_entries() if e.model_type == model_type)
    model = entry.factory()
    device = load_device("pixel8")
    pre = price_lm_phase(model, device, phase="prefill", prompt_len=16, context=64)
    dec = price_lm_phase(model, device, phase="decode", context=64)
    for p in (pre, dec):
        kinds = {op.kind for op in p.ops}
        assert {OpKind.EMBEDDING, OpKind.LINEAR} <= kinds, kinds
        # SDPA is the fused kernel; eager attention (gemma2's soft-capping, bloom's ALiBi)
        # stays matmuls
        assert kinds & {OpKind.ATTENTION, OpKind.MATMUL}, kinds
        assert p.kv_cache_bytes > 0 and p.weight_bytes > 0 and p.latency_s > 0
    assert pre.kv_cache_bytes == dec.kv_cache_bytes
    assert pre.tokens_per_s > dec.tokens_per_s  # 16 tokens at once beat one at a time


@pytest.mark.slow
def test_moe_decode_streams_only_the_routed_experts():
    from benchmarks.zoo_causal_lm import causal_lm_entries

    entry = next(e for e in causal_lm_entries() if e.model_type == "mixtral")
    model = entry.factory()  # 4 experts, top-2 (benchmarks/zoo_causal_lm.py)
    device = load_device("pixel8")
    dec = price_lm_phase(model, device, phase="decode", context=64, weight_bits=32)
    pre = price_lm_phase(model, device, phase="prefill", prompt_len=16, context=64,
                         weight_bits=32)
    experts = [op for op in dec.ops if op.kind is OpKind.LINEAR and op.n and op.m == 2]
    assert experts  # one token x top-2 rows reach two of the four experts
    assert dec.weight_bytes == pre.weight_bytes  # stored: every expert, whichever phase
    assert dec.streamed_bytes < pre.streamed_bytes  # decode reads 2 of 4, prefill all 4


def test_a_user_sees_no_torch_pytree_deprecation_warnings():
    # torchao's enum registration made torch log two 'register_constant() ... deprecated'
    # warnings at the top of every causal-LM predict
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("from codesign.cli import main; raise SystemExit(main(['predict', '--device', "
            "'pixel8', '--model', 'tests.lm_models:llama', '--phase', 'decode', '--context', "
            "'64']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "per-token latency" in proc.stdout
    assert "register_constant" not in proc.stderr and "_pytree" not in proc.stderr
