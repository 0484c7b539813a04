"""Train (or load) the transformer space's LM supernet, with its loss curve.

    python -m benchmarks.transformer_supernet [--threads 1] [--snapshots DIR] [--log FILE]

Trains the default ``LMTrainConfig`` for the default space (resuming from the cache's checkpoint
if interrupted) and logs the sandwich's mean training loss every 25 steps. ``--snapshots DIR``
keeps the weights every ``--every`` steps (``step{N}.pt``), so the val perplexity of the largest
and smallest subnets along the training can be measured afterwards (``--curve DIR``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from codesign.search_spaces import transformer_lm as lm
from codesign.search_spaces.transformer import load_transformer_config


def train(args) -> None:
    config = load_transformer_config()
    path = lm.cache_path(config)
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
    lm.get_trained_lm(config, threads=args.threads, progress=progress,
                      checkpoint_every=args.every if snaps else lm.CHECKPOINT_EVERY)
    print(f"done in {time.perf_counter() - start:.0f} s: {path}", file=sys.stderr)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--snapshots", default=None)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)
    train(args)


if __name__ == "__main__":
    main()
