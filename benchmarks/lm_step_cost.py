"""What one sandwich step of the LM supernet costs on this CPU, per way of running it.

    python -m benchmarks.lm_step_cost [--repeats 6]

Variants, interleaved (every repeat runs each once; medians and minimums over repeats after a
first untimed one): eager at 1 and at 2 torch threads, and ``torch.compile`` (inductor, one
compiled forward + backward per architecture) at 1 thread, whose compile time is reported
apart. A step = forward + backward of the largest, the smallest and one random subnet on one
window of 512 bytes, as ``train_lm_supernet`` runs it. The load average is printed beside.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from codesign.search_spaces import transformer_lm as lm
from codesign.search_spaces.transformer import load_transformer_config


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args(argv)
    cfg = load_transformer_config()
    big, small = lm.max_arch(cfg), lm.min_arch(cfg)
    mid = lm.sample_arch(cfg, np.random.default_rng(3))
    archs = (big, small, mid)
    params = {k: v.requires_grad_(True) for k, v in lm._init_params(big, 256, 0).items()}
    modules = lm.ModuleCache(256)
    data = lm.split_tokens("train")
    x, y = data[:512].view(1, -1), data[1:513]

    def eager(arch):
        return lm.run_subnet(modules, params, arch, x)

    compiled = {a: torch.compile(lambda p, t, a=a: lm.run_subnet(modules, p, a, t))
                for a in archs}

    def step(run, threads):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        for a in archs:
            F.cross_entropy(run(a).reshape(-1, 256), y).backward()
        return time.perf_counter() - t0

    variants = {"eager 1 thread": (eager, 1), "eager 2 threads": (eager, 2),
                "compile 1 thread": (lambda a: compiled[a](params, x), 1)}
    t0 = time.perf_counter()
    step(variants["compile 1 thread"][0], 1)  # compiles the three architectures
    compile_s = time.perf_counter() - t0
    times = {k: [] for k in variants}
    for r in range(args.repeats + 1):
        for name, (run, threads) in variants.items():
            dt = step(run, threads)
            if r:
                times[name].append(dt)
    print(json.dumps({"compile_s_first_step": compile_s, "loadavg": os.getloadavg(),
                      **{k: {"median_s": float(np.median(v)), "min_s": float(min(v))}
                         for k, v in times.items()}}, indent=1))


if __name__ == "__main__":
    main()
