"""Predicted decode speed of three 4-bit decoders (small / medium / large) on three devices.

Prices each config with the analytic model through both back-ends (xnnpack: w4a8-dyn, the 4-bit
group-wise weights with int8 dynamic activations that ExecuTorch ships; codesign: w4a8 with a
GEMV decode tile) at the device's default thread count: per-token decode latency at the full
context (the KV cache's worst case), tokens/s = 1 / that, the weight-streaming floor
(weight bytes / DRAM bandwidth), time to first token (128-token prompt), and the share of decode
time per bound. Predictions only: no device here runs them.

With ``--run RUN_DIR`` (a ``--space transformer`` search) it prices that run's front members
instead, each exactly as searched (its precisions, group sizes, sparsity, tiles and thread
count, on the run's back-end), on every device.

    .venv/bin/python -m benchmarks.transformer_pricing [--run RUN_DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import load_backend
from codesign.cost_models.base import BOUNDS
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpBatch, model_bytes
from codesign.search_spaces.transformer import (TransformerConfig, TransformerSpace,
                                                 load_transformer_config, parameter_count)

DEVICES = ("pixel8", "galaxy-s24-snapdragon", "quest3")
CONFIGS = {  # layers, d_model, heads, gqa_ratio, ffn_mult, context
    "small": (8, 512, 8, 2, 3, 1024),
    "medium": (16, 1024, 16, 4, 3, 2048),
    "large": (24, 2048, 16, 4, 3, 2048),
}
PRECISION = {"xnnpack": "w4a8-dyn", "codesign": "w4a8"}
GROUP = 128
PROMPT_TOKENS = 128


def config_with(arch: tuple) -> TransformerConfig:
    """The default space config with ``arch``'s dimensions offered (and group size GROUP)."""
    layers, d, heads, ratio, mult, ctx = arch
    cfg = load_transformer_config()
    return replace(cfg, layers=(layers,), d_model=(d,), heads=(heads,), gqa_ratios=(ratio,),
                   ffn_mults=(mult,), context=(ctx,),
                   prompt_tokens=PROMPT_TOKENS,
                   group_sizes=tuple(sorted(set(cfg.group_sizes) | {GROUP})))


def candidate(space: TransformerSpace, arch: tuple, threads: int):
    layers, d, heads, ratio, mult, ctx = arch
    params = {"threads": threads, "layers": layers, "d_model": d, "heads": heads,
              "gqa_ratio": ratio, "ffn_mult": mult, "context": ctx,
              "prefill_tile": "t6x16", "decode_tile": "t1x16"}
    for unit in [f"l{i}" for i in range(layers)] + ["head"]:
        params.update({f"{unit}.prec": PRECISION[space.backend.name], f"{unit}.group": GROUP,
                       f"{unit}.ffn_sparsity": "dense"})
    active = space.active_names(params)
    return space.decode({k: v for k, v in params.items() if k in active})


def price(device_name: str, backend_name: str, name: str, params: dict | None = None) -> dict:
    """Price config ``name`` (or, given ``params``, that searched candidate) on the device."""
    device = load_device(device_name)
    backend = load_backend(backend_name)
    threads = device.default_threads
    if params is None:  # the fixed configs are real-LLM sizes, past the default space's dims
        space = TransformerSpace(backend, threads_choices=(threads,),
                                 config=config_with(CONFIGS[name]))
        c = candidate(space, CONFIGS[name], threads)
        precision = PRECISION[backend_name]
    else:  # the member's searched thread count, where the device has that many cores
        threads = min(int(params.get("threads", threads)), device.cpu.n_cores)
        space = TransformerSpace(backend, threads_choices=(threads,))
        c = space.decode({k: v for k, v in params.items() if k != "threads"})
        precision = "/".join(sorted({x.precision for x in (*c.layers, c.head)}))
    cm = AnalyticCostModel(device, backend, threads=threads)
    decode_ops = space.to_ops(c, "decode")
    batch = OpBatch.from_oplists([decode_ops])
    pred = cm.predict(batch)
    prefill = cm.predict(OpBatch.from_oplists([space.to_ops(c, "prefill")]))
    decode_s = float(pred.latency_s[0])
    weights = model_bytes(decode_ops)
    shares = np.bincount(pred.op_bound, weights=pred.op_latency_s, minlength=3) / decode_s
    return {"device": device_name, "backend": backend_name, "config": name,
            "precision": precision, "threads": threads,
            "params_m": parameter_count(c) / 1e6, "weight_mb": weights / 1e6,
            "kv_cache_mb": space.kv_cache_bytes(c) / 1e6, "context": c.arch.context,
            "decode_ms": decode_s * 1e3, "tokens_per_s": 1 / decode_s,
            "weight_stream_floor_ms": weights / cm.assumptions["dram_bytes_per_s"] * 1e3,
            "ttft_ms": float(prefill.latency_s[0]) * 1e3,
            "fits_ram_share": space.memory_bytes(c) <= device.memory.app_ram_bytes,
            **{f"{b}_share": float(s) for b, s in zip(BOUNDS, shares)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None,
                        help="price this transformer run's front members instead")
    parser.add_argument("--members", default=None,
                        help="with --run: comma-separated trial numbers (default: the whole front)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.run is None:
        rows = [price(d, b, n) for n in CONFIGS for d in DEVICES for b in ("xnnpack", "codesign")]
    else:
        front = json.loads((args.run / "pareto.json").read_text())
        if front.get("space") != "transformer":
            parser.error(f"{args.run} is a {front.get('space')!r} run, not a transformer one")
        wanted = None if args.members is None else {int(t) for t in args.members.split(",")}
        members = [m for m in front["members"] if wanted is None or m["trial"] in wanted]
        if wanted is not None and len(members) != len(wanted):
            parser.error(f"--members: trials {sorted(wanted - {m['trial'] for m in members})} "
                         f"are not on {args.run}'s front")
        rows = [price(d, front["backend"], f"trial {m['trial']}", m["params"])
                for m in members for d in DEVICES]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| config | params | weights MB | KV MB (ctx) | device | back-end | decode ms | tokens/s "
          "| weight-stream floor ms | TTFT ms (128 tok) | compute / memory / overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        small = r["params_m"] < 10  # the default space's decoders: show their digits
        print(f"| {r['config']} | {r['params_m']:.{2 if small else 0}f}M | "
              f"{r['weight_mb']:.{2 if small else 1}f} | "
              f"{r['kv_cache_mb']:.{2 if small else 1}f} ({r['context']}) | {r['device']} | "
              f"{r['backend']} {r['precision']} | {r['decode_ms']:.{3 if small else 2}f} | "
              f"{r['tokens_per_s']:.0f} | {r['weight_stream_floor_ms']:.{3 if small else 2}f} | "
              f"{r['ttft_ms']:.{2 if small else 0}f} | "
              f"{r['compute_share']:.2f} / {r['memory_share']:.2f} / {r['overhead_share']:.2f} |")


if __name__ == "__main__":
    main()
