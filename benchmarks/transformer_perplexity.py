"""Held-out perplexity of subnets of the default transformer space's trained LM supernet, at each
weight / activation precision and with 2:4 FFN sparsity: does 4-bit group-wise quantization
change the weights and raise perplexity beyond the intervals, on the same subnet?

    CODESIGN_LM_THREADS=1 .venv/bin/python -m benchmarks.transformer_perplexity [--seed 0]

Uses the cached or shipped supernet weights (configs/weights), else trains them first
(search_spaces/transformer_lm.py; 33 min on this shared 2-core machine at one thread). Prints a markdown table: val and test perplexity with their
95% bootstrap intervals, and the val perplexity ratio to the same subnet at w16a16 with its
paired bootstrap interval (the same 128-byte blocks resampled for both).
"""
from __future__ import annotations

import argparse
import time

import torch

from codesign.evaluation.perplexity import (LINEARS, PerplexityEvaluator, paired_ratio,
                                            quantized_state_dict)
from codesign.cost_models.backends import load_backend
from codesign.search_spaces.transformer import TransformerSpace
from codesign.search_spaces.transformer_lm import subnet_state_dict

SUBNETS = {  # name: (layers, d_model, heads, gqa_ratio, ffn_mult, context)
    # the sandwich's two ends (trained every step) and a subnet trained only when sampled
    "largest": (6, 256, 4, 1, 3, 512),
    "smallest": (2, 128, 2, 2, 2, 512),
    "middle": (4, 256, 2, 2, 2, 256),
}
VARIANTS = [  # (label, precision, group, ffn_sparsity)
    ("w16a16", "w16a16", 0, "dense"),
    ("w8a16", "w8a16", 0, "dense"),
    ("w8a8", "w8a8", 0, "dense"),
    ("w4a16 g32", "w4a16", 32, "dense"),
    ("w4a16 g128", "w4a16", 128, "dense"),
    ("w4a8 g128", "w4a8", 128, "dense"),
    ("w16a16 2:4", "w16a16", 0, "2:4"),
    ("w4a8 g128 2:4", "w4a8", 128, "2:4"),
]


def candidate(space, arch, prec, group, sparsity):
    layers, d, heads, ratio, mult, ctx = arch
    p = {"layers": layers, "d_model": d, "heads": heads, "gqa_ratio": ratio, "ffn_mult": mult,
         "context": ctx, "prefill_tile": "default", "decode_tile": "default"}
    for unit in [f"l{i}" for i in range(layers)] + ["head"]:
        p.update({f"{unit}.prec": prec, f"{unit}.group": group,
                  f"{unit}.ffn_sparsity": sparsity})
    active = space.active_names(p)
    return space.decode({k: v for k, v in p.items() if k in active})


def quantization_delta(params, space, cand) -> float:
    """Relative L2 change of the block linears' weights by the candidate's fake quantization."""
    sd = subnet_state_dict(params, cand)
    q = quantized_state_dict(space, cand, sd)
    names = [f"layers.{i}.{n}.weight" for i in range(cand.arch.layers) for n in LINEARS]
    num = sum(float((q[n] - sd[n]).pow(2).sum()) for n in names)
    den = sum(float(sd[n].pow(2).sum()) for n in names)
    return (num / den) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    space = TransformerSpace(load_backend("codesign"))
    ev = PerplexityEvaluator(space, seed=args.seed)
    start = time.perf_counter()
    ev.prepare()
    print(f"supernet ready in {time.perf_counter() - start:.0f} s; torch threads "
          f"{torch.get_num_threads()}\n")
    print("| subnet | variant | weights changed (rel. L2) | val ppl [95% CI] | test ppl [95% CI] "
          "| val ratio to w16a16 [paired 95% CI] | eval s |")
    print("|---|---|---|---|---|---|---|")
    for name, arch in SUBNETS.items():
        ref_units = None
        for label, prec, group, sparsity in VARIANTS:
            c = candidate(space, arch, prec, group, sparsity)
            t0 = time.perf_counter()
            val, test = ev.evaluate(c), ev.evaluate(c, split="test")
            units = ev.unit_nll(c, "val")
            secs = time.perf_counter() - t0
            if ref_units is None:
                ref_units = units
            ratio, (lo, hi) = paired_ratio(ref_units, units, seed=args.seed)
            delta = quantization_delta(ev.supernet(), space, c)
            print(f"| {name} {arch[:5]} ctx {arch[5]} | {label} | {delta:.4f} | "
                  f"{val.accuracy:.3f} [{val.interval[0]:.3f}, {val.interval[1]:.3f}] | "
                  f"{test.accuracy:.3f} [{test.interval[0]:.3f}, {test.interval[1]:.3f}] | "
                  f"{ratio:.4f} [{lo:.4f}, {hi:.4f}] | {secs:.1f} |", flush=True)


if __name__ == "__main__":
    main()
