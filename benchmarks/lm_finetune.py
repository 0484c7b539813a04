"""Does the 4-bit fine-tune (``codesign.evaluation.lm_finetune``) move a transformer member's
perplexity? Val perplexity before and after, each with the evaluator's 95% bootstrap interval,
and the paired after / before ratio (blocks resampled together), per member and step count.

    CODESIGN_LM_THREADS=1 python -m benchmarks.lm_finetune [--steps 20 100] [--lr 3e-4]
                                                            [--members all] [--json OUT]

Members (the default space, weights from the trained supernet: the cache, else the shipped
file): see ``MEMBERS``; every unit of a member in the same format unless said.
"""
from __future__ import annotations

import argparse
import json
import os
import time

MEMBERS = {  # name: (layers, d_model, heads, gqa_ratio, ffn_mult, context, prec, group, sparsity)
    "largest-w4a8-g128": (6, 256, 4, 1, 3, 512, "w4a8", 128, "dense"),
    "smallest-w4a8-g128-2:4": (2, 128, 2, 2, 2, 512, "w4a8", 128, "2:4"),
    "mid-w4a16-g32-ctx256": (4, 256, 4, 1, 2, 256, "w4a16", 32, "dense"),
    "mid-w4a8-g64-ctx128": (4, 128, 4, 1, 3, 128, "w4a8", 64, "dense"),
    "largest-w16a16": (6, 256, 4, 1, 3, 512, "w16a16", 32, "dense"),
}


def member(space, spec):
    layers, d, heads, ratio, mult, ctx, prec, group, sparsity = spec
    p = {"layers": layers, "d_model": d, "heads": heads, "gqa_ratio": ratio, "ffn_mult": mult,
         "context": ctx, "prefill_tile": "default", "decode_tile": "default"}
    for unit in [f"l{i}" for i in range(layers)] + ["head"]:
        p.update({f"{unit}.prec": prec, f"{unit}.group": group,
                  f"{unit}.ffn_sparsity": sparsity if unit != "head" else "dense"})
    return space.decode({k: v for k, v in p.items() if k in space.active_names(p)})


def main(argv=None) -> None:
    from codesign.cost_models.backends import load_backend
    from codesign.evaluation.lm_finetune import finetune_member
    from codesign.evaluation.perplexity import (PerplexityEvaluator, bootstrap_perplexity,
                                                paired_ratio)
    from codesign.search_spaces.transformer import TransformerSpace

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--members", nargs="+", default=["all"], choices=["all", *MEMBERS])
    ap.add_argument("--max-tokens", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    space = TransformerSpace(load_backend("codesign"))
    ev = PerplexityEvaluator(space, seed=0, max_tokens=args.max_tokens)
    ev.prepare()
    names = list(MEMBERS) if "all" in args.members else args.members
    rows = []
    for name in names:
        c = member(space, MEMBERS[name])
        before = ev.unit_nll(c, "val")
        b_ppl, b_int = bootstrap_perplexity(before, ev.seed)
        for steps in args.steps:
            t0 = time.perf_counter()
            state = finetune_member(space, ev.supernet(), c, steps, seed=ev.seed, lr=args.lr,
                                    threads=ev.threads)
            tune_s = time.perf_counter() - t0
            ev.member_state_dict = lambda _c, state=state: state  # score the tuned weights
            ev._units.clear()
            after = ev.unit_nll(c, "val")
            del ev.member_state_dict
            ev._units.clear()
            a_ppl, a_int = bootstrap_perplexity(after, ev.seed)
            ratio, r_int = paired_ratio(before, after, ev.seed)
            row = {"member": name, "steps": steps, "lr": args.lr, "val_before": b_ppl,
                   "val_before_interval": b_int, "val_after": a_ppl,
                   "val_after_interval": a_int, "after_over_before": ratio,
                   "after_over_before_interval": r_int, "finetune_s": tune_s,
                   "loadavg": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
