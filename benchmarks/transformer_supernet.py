"""Train (or load) the transformer space's LM supernet, with its loss curve.

    python -m benchmarks.transformer_supernet [--threads 1] [--snapshots DIR] [--log FILE]
                                              [--steps N] [--batch-size B]
    python -m benchmarks.transformer_supernet --ship [--steps N]  # configs/weights, sha256
    python -m benchmarks.transformer_supernet --curve DIR [--max-tokens N]

Trains the default ``LMTrainConfig`` for the default space (resuming from the cache's checkpoint
if interrupted) and logs the sandwich's mean training loss every 25 steps. ``--snapshots DIR``
keeps the weights every ``--every`` steps (``step{N}.pt``), so the val perplexity of the largest
and smallest subnets along the training can be measured afterwards (``--curve DIR``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from codesign.search_spaces import transformer_lm as lm
from codesign.search_spaces.transformer import load_transformer_config


def _train_config(args) -> lm.LMTrainConfig:
    """The default ``LMTrainConfig`` with ``--steps`` / ``--batch-size`` where given."""
    changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v}
    return dataclasses.replace(lm.LMTrainConfig(), **changes)


def train(args) -> None:
    config = load_transformer_config()
    cfg = _train_config(args)
    path = lm.cache_path(config, train=cfg)
    log = open(args.log, "a") if args.log else None
    snaps = Path(args.snapshots) if args.snapshots else None
    if snaps:
        snaps.mkdir(parents=True, exist_ok=True)

    def progress(p) -> None:
        if p.message:
            print(p.message, file=sys.stderr, flush=True)
            return
        if log and (p.step % 25 == 0 or p.step == p.steps):
            log.write(json.dumps({"step": p.step, "loss": p.loss, "elapsed_s": p.elapsed_s,
                                  "loadavg": open("/proc/loadavg").read().split()[0]}) + "\n")
            log.flush()
        if p.step % 100 == 0 or p.step == p.steps:
            print(f"step {p.step}/{p.steps} loss {p.loss:.3f} {p.elapsed_s:.0f} s",
                  file=sys.stderr, flush=True)
        ckpt = lm.checkpoint_path(path)
        if snaps and p.step % args.every == 0 and ckpt.is_file():
            shutil.copy(ckpt, snaps / f"step{p.step}.pt")

    start = time.perf_counter()
    lm.get_trained_lm(config, train=cfg, threads=args.threads, progress=progress,
                      checkpoint_every=args.every if snaps else lm.CHECKPOINT_EVERY)
    print(f"done in {time.perf_counter() - start:.0f} s: {path}", file=sys.stderr)


def ship(args) -> None:
    """Write the trained weights (cache, else trained now) to ``configs/weights``."""
    config = load_transformer_config()
    cfg = _train_config(args)
    params = lm.get_trained_lm(config, train=cfg, threads=args.threads)
    path = lm.shipped_path(config, train=cfg)
    digest = lm.save_shipped_weights(params, path)
    print(f"{path.name} sha256 {digest} {path.stat().st_size} B")


def curve(args) -> None:
    """Val perplexity of the largest and smallest subnets (w16a16, largest context) at every
    snapshot: the measured curve the step count was judged by."""
    from codesign.cost_models.backends import load_backend
    from codesign.evaluation.perplexity import PerplexityEvaluator
    from codesign.search_spaces.transformer import TransformerSpace

    space = TransformerSpace(load_backend("codesign"))
    cfg = space.config
    snaps = sorted(Path(args.curve).glob("step*.pt"), key=lambda p: int(p.stem[4:]))
    for snap in snaps:
        params = torch.load(snap, map_location="cpu", weights_only=True)["params"]
        ev = PerplexityEvaluator(space, threads=args.threads, max_tokens=args.max_tokens)
        ev.use_shared_state(ev.shared_state_key(), params)
        row = {"step": int(snap.stem[4:])}
        for name, arch in (("largest", lm.max_arch(cfg)), ("smallest", lm.min_arch(cfg))):
            row[name] = ev.evaluate(_dense16(space, arch)).accuracy
        print(json.dumps(row), flush=True)


def _dense16(space, arch):
    p = {"layers": arch.layers, "d_model": arch.d_model, "heads": arch.heads,
         "gqa_ratio": arch.heads // arch.kv_heads, "ffn_mult": arch.ffn_mult,
         "context": arch.context, "prefill_tile": "default", "decode_tile": "default"}
    for unit in [f"l{i}" for i in range(arch.layers)] + ["head"]:
        p.update({f"{unit}.prec": "w16a16", f"{unit}.group": 32,
                  f"{unit}.ffn_sparsity": "dense"})
    return space.decode({k: v for k, v in p.items() if k in space.active_names(p)})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--snapshots", default=None)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--log", default=None)
    ap.add_argument("--ship", action="store_true",
                    help="write the weights to configs/weights and print their sha256")
    ap.add_argument("--curve", default=None, metavar="DIR",
                    help="score the snapshots in DIR instead of training")
    ap.add_argument("--max-tokens", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0, help="training steps (0: the default's)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="windows per step (0: the default's)")
    args = ap.parse_args(argv)
    if args.curve:
        curve(args)
    elif args.ship:
        ship(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
