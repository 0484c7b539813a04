"""LLM phases of the public Llama 3.2 1B and 3B shapes on three phones (issue 18).

Each model is built from its published ``config.json`` values (below: no download, weights on
the ``meta`` device) and priced with ``codesign.llm_predict.price_lm_phase`` at 4-bit group-wise
weights (group 32) with int8 dynamic activations (XNNPACK, the default back-end of the phones):
prefill of 128 prompt tokens (time to first token) and decode of one token at 512 tokens of
context, plus the share of the device's DRAM peak each decode implies (bytes per token x
tokens/s / DRAM peak; bytes per token = the streamed weights + the K/V cache read).

    .venv/bin/python -m benchmarks.llm_phases [--json OUT]

The same numbers from the command line, e.g.::

    codesign predict --device pixel8 --model benchmarks.llm_phases:llama32_1b --phase decode \\
        --prompt-len 128 --context 512 --weight-bits 4 --group-size 32
"""
from __future__ import annotations

import argparse
import json

DEVICES = ("galaxy-s24-snapdragon", "pixel8", "iphone15pro")
PROMPT, CONTEXT, GROUP = 128, 512, 32

# meta-llama/Llama-3.2-{1B,3B} config.json (published values)
_LLAMA32_COMMON = dict(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                       rope_theta=500000.0, tie_word_embeddings=True, hidden_act="silu",
                       attention_bias=False, mlp_bias=False,
                       rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                     "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                     "original_max_position_embeddings": 8192})
LLAMA32 = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         **_LLAMA32_COMMON),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                         **_LLAMA32_COMMON),
}


def _llama(name: str):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):  # shapes only: 1-3 B parameters would not fit the budget
        return AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA32[name])).eval()


def llama32_1b():
    return _llama("llama-3.2-1b")


def llama32_3b():
    return _llama("llama-3.2-3b")


def run() -> list[dict]:
    from codesign.cost_models.devices import load_device
    from codesign.llm_predict import price_lm_phase

    rows = []
    for name, factory in (("llama-3.2-1b", llama32_1b), ("llama-3.2-3b", llama32_3b)):
        model = factory()
        for device_name in DEVICES:
            device = load_device(device_name)
            row = {"model": name, "device": device_name}
            for phase in ("prefill", "decode"):
                p = price_lm_phase(model, device, phase=phase, prompt_len=PROMPT,
                                   context=CONTEXT, weight_bits=4, group_size=GROUP)
                row[phase] = {"latency_s": p.latency_s, "tokens_per_s": p.tokens_per_s,
                              "bound": p.bound, "bound_shares": p.bound_shares(),
                              "streamed_bytes": p.streamed_bytes,
                              "dram_bandwidth_fraction": p.dram_fraction(),
                              "backend": p.backend,
                              "threads": p.prediction.assumptions["threads"]}
                row["weight_bytes"], row["kv_cache_bytes"] = p.weight_bytes, p.kv_cache_bytes
                row["dram_bytes_per_s"] = device.memory.dram_bytes_per_s.value
            rows.append(row)
            print(f"{name:<13} {device_name:<22} TTFT {row['prefill']['latency_s'] * 1e3:8.1f} ms "
                  f"({row['prefill']['tokens_per_s']:7.1f} tok/s, {row['prefill']['bound']})  "
                  f"decode {row['decode']['latency_s'] * 1e3:7.2f} ms/token "
                  f"({row['decode']['tokens_per_s']:6.2f} tok/s, {row['decode']['bound']}, "
                  f"{row['decode']['dram_bandwidth_fraction']:.0%} of DRAM peak)  weights "
                  f"{row['weight_bytes'] / 1e6:.1f} MB, KV {row['kv_cache_bytes'] / 1e6:.1f} MB",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = run()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
