"""Issue 20's acceptance figures for the transformer space's LM quality axis.

    CODESIGN_LM_THREADS=1 python -m benchmarks.lm_quality subnets [--json OUT]
    python -m benchmarks.lm_quality budget [--device pixel8] [--over 0.3]
    python -m benchmarks.lm_quality front RUN_DIR
    python -m benchmarks.lm_quality kn

``subnets``: the classical references (unigram, add-one bigram, interpolated Kneser-Ney 3/5/7)
and every architecture of the default space at its largest context and w16a16, dense, scored
by the search's own evaluator on val (and on test for the largest and smallest), from the
trained supernet (the cache, else the shipped weights, else trained now).
``budget``: the decode-latency budget at which a fraction ``--over`` of uniformly random
candidates of the space are over it (priced as the search prices them).
``front``: the distinct (layers, d_model, heads) shapes on a finished run's front.
``kn``: Kneser-Ney perplexity by order 1..7 on the same bytes (val and test).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np


def subnets(args) -> None:
    from codesign.cost_models.backends import load_backend
    from codesign.evaluation.perplexity import PerplexityEvaluator
    from codesign.search_spaces.transformer import TransformerSpace
    from codesign.search_spaces.transformer_lm import max_arch, min_arch

    space = TransformerSpace(load_backend("codesign"))
    cfg = space.config
    ev = PerplexityEvaluator(space, seed=0)
    start = time.perf_counter()
    ev.prepare()
    print(f"supernet ready in {time.perf_counter() - start:.1f} s", flush=True)
    refs = ev.references()
    for r in refs:
        print(f"reference {r['label']}: val {r['val']:.3f} test {r['test']:.3f}", flush=True)
    bigram = next(r for r in refs if r["model"] == "bigram")
    ctx = max(cfg.context)
    rows = []
    ends = {max_arch(cfg): "largest", min_arch(cfg): "smallest"}
    for layers, d, heads, ratio, mult in itertools.product(
            cfg.layers, cfg.d_model, cfg.heads, cfg.gqa_ratios, cfg.ffn_mults):
        if heads % ratio:
            continue
        p = {"layers": layers, "d_model": d, "heads": heads, "gqa_ratio": ratio,
             "ffn_mult": mult, "context": ctx, "prefill_tile": "default",
             "decode_tile": "default"}
        for unit in [f"l{i}" for i in range(layers)] + ["head"]:
            p.update({f"{unit}.prec": "w16a16", f"{unit}.group": 32,
                  f"{unit}.ffn_sparsity": "dense"})
        c = space.decode({k: v for k, v in p.items() if k in space.active_names(p)})
        t0 = time.perf_counter()
        val = ev.evaluate(c)
        row = {"layers": layers, "d_model": d, "heads": heads, "gqa_ratio": ratio,
               "ffn_mult": mult, "context": ctx, "val": val.accuracy,
               "val_interval": list(val.interval), "role": ends.get(c.arch, "")}
        if c.arch in ends:
            test = ev.evaluate(c, split="test")
            row.update(test=test.accuracy, test_interval=list(test.interval))
        row["eval_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    # the least the space offers: the smallest subnet at the shortest context, 4-bit weights
    # with int8 activations at the largest group, 2:4 FFN sparsity in every layer
    arch = min_arch(cfg)
    p = {"layers": arch.layers, "d_model": arch.d_model, "heads": arch.heads,
         "gqa_ratio": arch.heads // arch.kv_heads, "ffn_mult": arch.ffn_mult,
         "context": min(cfg.context), "prefill_tile": "default", "decode_tile": "default"}
    for unit in [f"l{i}" for i in range(arch.layers)] + ["head"]:
        p.update({f"{unit}.prec": "w4a8", f"{unit}.group": max(cfg.group_sizes),
                  f"{unit}.ffn_sparsity": "2:4"})
    worst = ev.evaluate(space.decode({k: v for k, v in p.items() if k in space.active_names(p)}))
    rows.append({**{k: p[k] for k in ("layers", "d_model", "heads", "gqa_ratio", "ffn_mult",
                                      "context")}, "val": worst.accuracy,
                 "val_interval": list(worst.interval), "role": "smallest, ctx min, w4a8 2:4"})
    print(json.dumps(rows[-1]), flush=True)
    big = next(r for r in rows if r["role"] == "largest")
    small = next(r for r in rows if r["role"] == "smallest")
    summary = {
        "largest_test": big["test"], "smallest_test": small["test"],
        "largest_val": big["val"], "smallest_val": small["val"],
        "largest_val_below_smallest": 1 - big["val"] / small["val"],
        "worst_val": max(r["val"] for r in rows), "bigram_val": bigram["val"],
        "all_better_than_bigram": all(r["val"] < bigram["val"] for r in rows),
        "largest_vs_kn": {r["model"]: big["test"] / r["test"] for r in refs},
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"references": refs, "subnets": rows, "summary": summary}, fh, indent=1)


def kn_curve(args) -> None:
    """Kneser-Ney perplexity on val and test by order (1..7), on the evaluator's bytes."""
    from codesign.evaluation.ngram import reference_perplexities
    from codesign.search_spaces.transformer import load_transformer_config
    from codesign.search_spaces.transformer_lm import split_tokens

    ctx = max(load_transformer_config().context)
    splits = {}
    for name in ("val", "test"):
        tokens = split_tokens(name).numpy()
        splits[name] = (tokens, (len(tokens) - 1) // ctx * ctx)
    rows = reference_perplexities(split_tokens("train").numpy(), splits, ctx,
                                  kn_orders=tuple(range(1, 8)))
    for r in rows:
        print(json.dumps(r))


def budget(args) -> None:
    from codesign.context import build_context
    from codesign.search import SearchConfig

    config = SearchConfig(device=args.device, budget_s=1.0, budget_text="1s",
                          space="transformer", progress=False)
    ctx = build_context(config)
    rng = np.random.default_rng(args.seed)
    lat = np.array([ctx.price(ctx.space.decode(ctx.space.sample(rng))).latency_s
                    for _ in range(args.samples)])
    b = float(np.quantile(lat, 1 - args.over))
    print(json.dumps({"device": args.device, "samples": args.samples,
                      "budget_ms": b * 1e3, "over_fraction": float(np.mean(lat > b)),
                      "latency_ms_min_median_max": [float(lat.min() * 1e3),
                                                    float(np.median(lat) * 1e3),
                                                    float(lat.max() * 1e3)]}))


def front(args) -> None:
    from pathlib import Path

    pareto = json.loads((Path(args.run) / "pareto.json").read_text())
    shapes = sorted({(m["params"]["layers"], m["params"]["d_model"], m["params"]["heads"])
                     for m in pareto["members"]})
    print(json.dumps({"members": len(pareto["members"]), "distinct_shapes": len(shapes),
                      "shapes": shapes,
                      "val_ppl": sorted(m["perplexity"] for m in pareto["members"])}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subnets")
    s.add_argument("--json", default=None)
    b = sub.add_parser("budget")
    b.add_argument("--device", default="pixel8")
    b.add_argument("--over", type=float, default=0.3)
    b.add_argument("--samples", type=int, default=1000)
    b.add_argument("--seed", type=int, default=0)
    sub.add_parser("kn")
    f = sub.add_parser("front")
    f.add_argument("run")
    args = ap.parse_args(argv)
    {"subnets": subnets, "budget": budget, "front": front, "kn": kn_curve}[args.cmd](args)


if __name__ == "__main__":
    main()
