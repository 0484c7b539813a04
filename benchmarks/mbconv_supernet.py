"""Train (or load) the MBConv supernet and measure what it is worth, one-shot.

    python -m benchmarks.mbconv_supernet [--threads 2] [--ship] [--json OUT.json]

Trains the default ``TrainConfig`` (quantization- and sparsity-aware sandwich training; resumes
from the cache's checkpoint if interrupted), then scores on val and test, through the search's
own evaluator (BN recalibrated per subnet, activation ranges calibrated on training images):
the largest and smallest subnets in fp32, and the largest in every uniform format each back-end
offers, each low-precision / sparse row with its paired-bootstrap 95% interval of the test
difference to the same architecture in fp32. ``--ship`` writes the weights to
``configs/weights/`` (safetensors) and prints their sha256, for ``configs/weights/README.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from codesign.evaluation.base import paired_difference
from codesign.evaluation.supernet_evaluator import SupernetEvaluator
from codesign.cost_models.backends import load_backend
from codesign.search_spaces.mbconv import MBConvSpace, load_mbconv_config
from codesign.search_spaces.mbconv_training import (TrainConfig, get_trained_supernet,
                                                    save_shipped_weights, shipped_path)


def _progress(p) -> None:
    if p.message:
        print(p.message, file=sys.stderr, flush=True)
    elif p.step == 1 or p.step % 25 == 0 or p.step == p.steps:
        print(f"step {p.step}/{p.steps} epoch {p.epoch} loss {p.loss:.3f} "
              f"{p.elapsed_s:.0f} s", file=sys.stderr, flush=True)


def rows(train: TrainConfig) -> list[dict]:
    config = load_mbconv_config()
    out = []
    for backend in ("xnnpack", "codesign"):
        space = MBConvSpace(load_backend(backend), config=config)
        ev = SupernetEvaluator(space, train=train, cache_size=1)
        big, small = config.max_arch(), config.min_arch()
        fp32_test = ev.correctness(space.uniform(big, "w32a32"), "test")
        for arch_name, arch in (("largest", big), ("smallest", small)):
            labels = space.formats if arch_name == "largest" else ("w32a32",)
            for label in labels:
                # a linear-only format: the convs in the back-end's int8 (XNNPACK's 4-bit recipe);
                # a sparse one: the stem and classifier (no sparse layer) in fp32
                linear_only = label not in space.unit_formats("stem") and "+" not in label
                cand = space.uniform(arch, label, fallback="w8a8" if linear_only else None)
                val = ev.evaluate(cand, split="val")
                test_correct = ev.correctness(cand, "test")
                row = {"backend": backend, "arch": arch_name, "format": label,
                       "formats": cand.formats(), "val": val.accuracy,
                       "test": float(test_correct.mean())}
                if arch_name == "largest" and label != "w32a32":
                    d, lo, hi = paired_difference(test_correct, fp32_test, seed=0)
                    row["test_vs_fp32"] = [d, lo, hi]
                out.append(row)
                print(json.dumps(row), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0, help="cap (a quick check)")
    parser.add_argument("--ship", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = TrainConfig(max_steps=args.max_steps) if args.max_steps else TrainConfig()
    config = load_mbconv_config()
    start = time.perf_counter()
    net = get_trained_supernet(config, config.seed, train=train, progress=_progress)
    print(f"supernet ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.ship:
        path = shipped_path(config, config.seed, train)
        digest = save_shipped_weights(net, path)
        print(f"shipped {path} sha256 {digest} ({path.stat().st_size} bytes)")
    table = rows(train)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"train": train.__dict__, "rows": table}, fh, indent=1, default=list)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
