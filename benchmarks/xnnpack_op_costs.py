"""Per-op costs of ExecuTorch's XNNPACK programs on this host, from single-op microbenchmarks.

The shape grid below was written down before any measurement and is disjoint from the 45-model
zoo's op shapes (``disjoint_from_zoo`` checks it against the zoo's lowered op lists). Three
families, each lowered with ``codesign.measure.lower_to_pte`` and timed on the ExecuTorch
runtime in interleaved rounds (every program loaded afresh each round, in a rotated order),
wall clock, median of ``--repeats`` per round, lowest median over rounds:

* ``chain``: N = 1 and 16 fp32 adds ``x = x + 1`` on S = 40, 5120 and 51840 elements, at 1
  and 2 threads. Per (S, threads) the slope over N is one XNNPACK operator; its intercept the
  program's fixed cost. Over S, per op = fixed + S x rate: the fixed part at 1 thread is the
  per-op dispatch cost, the rise of the fixed part from 1 to 2 threads the fork-join cost, and
  the ratio of the rates the 2-thread scaling of a streaming operator.
* ``op``: one GEMM-class or element-wise operator per program (fp32 and int8) on the
  ``GRID``; the time minus the ``chain`` program's fixed cost is the operator's time, which
  ``benchmarks.op_cost_terms`` turns into the back-end's measured efficiency on this ISA.
  With ``--op-threads 1 2`` each op program is also timed at 2 threads (wall clock, the only
  clock that sees both threads): its 1 -> 2 thread speed-up as a single operator.
* ``handoff``: N = 1 and 16 adds on (1, S) inputs, S in ``HANDOFF_SIZES``, at 1 and 2
  threads: per S, how much the program's intercept (what is not per operator: the input and
  output passing between the calling thread and the pool) rises at 2 threads, and the 2-thread
  scaling of one streaming operator at that size.
* ``portable``: ops XNNPACK's partitioner leaves to ExecuTorch's portable kernels, N = 1 and 8
  per program at two sizes: per op = fixed + elements x rate (least squares with the program's
  own fixed cost).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.xnnpack_op_costs \
        --out benchmarks/results/xnnpack_op_costs.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

# ---- the grid, fixed before measuring -----------------------------------------------------
CHAIN_SIZES = (40, 5120, 51840)  # elements: 1x40, 1x20x16x16, 1x40x36x36
CHAIN_SHAPES = {40: (1, 40), 5120: (1, 20, 16, 16), 51840: (1, 40, 36, 36)}
CHAIN_COUNTS = (1, 16)
CHAIN_THREADS = (1, 2)
# ``handoff``: the same chains on 2-D inputs (no layout conversion) over a wider size range,
# added after the first runs showed the 2-thread intercept rising steeply with size
HANDOFF_SIZES = (10240, 20480, 40960, 81920, 163840, 327680)
# kind, label, constructor args: conv (cin, cout, k, stride, hw), depthwise (c, k, stride, hw),
# linear (rows, in, out), add / pools (shape)
GRID = (
    ("conv2d", "conv3x3_40_40_r40", (40, 40, 3, 1, 40)),
    ("conv2d", "conv3x3_80_80_r20", (80, 80, 3, 1, 20)),
    ("conv2d", "conv3x3_160_160_r10", (160, 160, 3, 1, 10)),
    ("conv2d", "conv3x3_3_40_s2_r72", (3, 40, 3, 2, 72)),
    ("conv2d", "conv1x1_40_120_r28", (40, 120, 1, 1, 28)),
    ("conv2d", "conv1x1_120_40_r28", (120, 40, 1, 1, 28)),
    ("conv2d", "conv5x5_40_40_r20", (40, 40, 5, 1, 20)),
    ("depthwise_conv2d", "dw3x3_120_r28", (120, 3, 1, 28)),
    ("depthwise_conv2d", "dw3x3_240_r14", (240, 3, 1, 14)),
    ("depthwise_conv2d", "dw3x3_120_s2_r42", (120, 3, 2, 42)),
    ("depthwise_conv2d", "dw5x5_120_r28", (120, 5, 1, 28)),
    ("linear", "linear_1_384_1536", (1, 384, 1536)),
    ("linear", "linear_1_1536_384", (1, 1536, 384)),
    ("linear", "linear_16_640_640", (16, 640, 640)),
    ("add", "add_40x40x40", (1, 40, 40, 40)),
    ("add", "add_120x28x28", (1, 120, 28, 28)),
    ("max_pool", "maxpool2_40x40x40", (1, 40, 40, 40)),
    ("avg_pool", "avgpool2_40x40x40", (1, 40, 40, 40)),
    ("global_pool", "mean_120x14x14", (1, 120, 14, 14)),
)
PORTABLE = ("where", "masked_fill", "layer_norm", "mean_last", "expand_copy", "compare")
PORTABLE_SHAPES = ((1, 12, 400), (1, 12, 4000))  # elements 4800, 48000
PORTABLE_COUNTS = (1, 8)


class AddChain(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x):
        for _ in range(self.n):
            x = x + 1.0
        return x


def op_module(kind: str, args: tuple) -> tuple[nn.Module, tuple[int, ...]]:
    """The single-op module of a grid entry and its input shape."""
    if kind == "conv2d":
        cin, cout, k, s, hw = args
        return nn.Conv2d(cin, cout, k, s, k // 2), (1, cin, hw, hw)
    if kind == "depthwise_conv2d":
        c, k, s, hw = args
        return nn.Conv2d(c, c, k, s, k // 2, groups=c), (1, c, hw, hw)
    if kind == "linear":
        rows, cin, cout = args
        return nn.Linear(cin, cout), (rows, cin)
    if kind == "add":
        return _Lambda(lambda x: x + x), args  # one add of two activations
    if kind == "max_pool":
        return nn.MaxPool2d(2), args
    if kind == "avg_pool":
        return nn.AvgPool2d(2), args
    if kind == "global_pool":
        return nn.AdaptiveAvgPool2d(1), args
    raise ValueError(kind)


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class PortableChain(nn.Module):
    """``n`` calls of one op that XNNPACK does not take, shape-preserving so they chain."""

    def __init__(self, op: str, shape: tuple[int, ...], n: int) -> None:
        super().__init__()
        self.op, self.n = op, n
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("mask", torch.rand(shape, generator=gen) > 0.5)
        self.register_buffer("other", torch.randn(shape, generator=gen))
        self.norm = nn.LayerNorm(shape[-1])

    def forward(self, x):
        if self.op == "compare":
            # eq.Scalar on the float input, n independent calls, each a program output: a compare
            # gives a bool, which a chain could only feed back through a cast or a where
            return tuple(x.eq(float(i)) for i in range(self.n))
        for _ in range(self.n):
            if self.op == "where":
                x = torch.where(self.mask, x, self.other)
            elif self.op == "masked_fill":
                x = x.masked_fill(self.mask, -1.0)
            elif self.op == "layer_norm":
                x = self.norm(x)
            elif self.op == "mean_last":
                x = x - x.mean(dim=-1, keepdim=True)  # the subtract is XNNPACK's: one break
            elif self.op == "expand_copy":
                x = x[:, :1].expand(x.shape).contiguous()  # expand_copy over the whole shape
        return x


def _lower(module: nn.Module, shape: tuple[int, ...], precision: str) -> bytes:
    from codesign.measure import lower_to_pte

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    cal = [(torch.randn(shape, generator=torch.Generator().manual_seed(s)),) for s in (2, 3)]
    return lower_to_pte(module.eval(), (x,), precision=precision,
                        calibration_inputs=cal if precision == "int8" else None)


def _time(programs: dict, shapes: dict, threads_of, rounds: int, repeats: int,
          warmup: int) -> tuple[dict, list[float]]:
    """Lowest over rounds of the median wall time per program, interleaved and rotated."""
    from codesign.export.transformer import quiet_stderr
    from codesign.measure.host_runner import configure_threads, timed_runs

    names = list(programs)
    best: dict = {}
    best_cpu: dict = {}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for name in names[r % len(names):] + names[:r % len(names)]:
            configure_threads(threads_of(name))
            x = (torch.randn(shapes[name], generator=torch.Generator().manual_seed(1)),)
            with quiet_stderr():
                runs = timed_runs(programs[name], x, "forward", warmup, repeats)
            med = statistics.median(runs.wall_s)
            best[name] = min(best.get(name, med), med)
            # the executing thread's CPU clock: at 1 thread every kernel runs on it, and it
            # leaves out the time the thread waited for a core on this shared machine
            med = statistics.median(runs.cpu_s)
            best_cpu[name] = min(best_cpu.get(name, med), med)
    configure_threads(1)
    return best, best_cpu, loads


def disjoint_from_zoo() -> list[str]:
    """Grid ops whose (kind, input shape, output shape) also occurs in the zoo's op lists."""
    from benchmarks.host_models import MODELS, example_input
    from codesign.cost_models.lowering import lower_module

    zoo = set()
    for name in MODELS:
        module, shape = MODELS[name]()
        for op in lower_module(module, shape):
            zoo.add((op.kind.value, tuple(op.in_shapes[:1]), op.out_shape))
    clash = []
    cases = [(label, *op_module(kind, args)) for kind, label, args in GRID]
    cases += [(f"handoff_{s}", AddChain(1), (1, s)) for s in HANDOFF_SIZES]
    for label, module, shape in cases:
        for op in lower_module(module, shape):
            if (op.kind.value, tuple(op.in_shapes[:1]), op.out_shape) in zoo:
                clash.append(label)
    return clash


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--skip", nargs="*", default=[], choices=["chain", "op", "portable", "handoff"])
    p.add_argument("--portable-ops", nargs="*", default=list(PORTABLE), choices=PORTABLE,
                   help="which portable ops to time (all)")
    p.add_argument("--op-threads", nargs="*", type=int, default=[1],
                   help="thread counts for the op family (1; '1 2' adds each op at 2 threads)")
    p.add_argument("--programs", default=None,
                   help="pickle of the lowered programs: written if absent, else timed as is")
    p.add_argument("--derive-only", action="store_true",
                   help="recompute 'derived' from the timings already in --out (no measuring)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.derive_only:
        from benchmarks.op_cost_terms import derive

        with open(args.out) as fh:
            out = json.load(fh)
        out["derived"] = derive(out)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(json.dumps(out["derived"], indent=1))
        return 0
    torch.manual_seed(0)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out: dict = {"command": "python -m benchmarks.xnnpack_op_costs " + " ".join(argv or sys.argv[1:]),
                 "date": started, "host": _host(), "loadavg_start": list(os.getloadavg())}
    if args.programs and os.path.exists(args.programs):
        import pickle

        with open(args.programs, "rb") as fh:  # this script's own file, written below
            programs, shapes, threads = pickle.load(fh)
    else:
        programs, shapes, threads = _lower_all(args.skip, args.portable_ops, args.op_threads)
        if args.programs:
            import pickle

            with open(args.programs, "wb") as fh:
                pickle.dump((programs, shapes, threads), fh)
    print(f"{len(programs)} programs lowered; timing", file=sys.stderr)
    best, best_cpu, loads = _time(programs, shapes, threads.get, args.rounds, args.repeats,
                                  args.warmup)
    out.update({"loadavg_per_round": loads, "loadavg_end": list(os.getloadavg()),
                "rounds": args.rounds, "repeats": args.repeats,
                "median_s": {k: best[k] for k in programs},
                "median_cpu_s": {k: best_cpu[k] for k in programs}})
    from benchmarks.op_cost_terms import derive

    out["derived"] = derive(out)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps(out["derived"], indent=1))
    return 0


def _lower_all(skip, portable_ops=PORTABLE, op_threads=(1,)) -> tuple[dict, dict, dict]:
    programs, shapes, threads = {}, {}, {}
    if "chain" not in skip:
        for s in CHAIN_SIZES:
            for n in CHAIN_COUNTS:
                pte = _lower(AddChain(n), CHAIN_SHAPES[s], "fp32")
                for t in CHAIN_THREADS:
                    key = f"chain/{s}/{n}/t{t}"
                    programs[key], shapes[key], threads[key] = pte, CHAIN_SHAPES[s], t
    if "handoff" not in skip:
        for s in HANDOFF_SIZES:
            for n in CHAIN_COUNTS:
                pte = _lower(AddChain(n), (1, s), "fp32")
                for t in CHAIN_THREADS:
                    key = f"handoff/{s}/{n}/t{t}"
                    programs[key], shapes[key], threads[key] = pte, (1, s), t
    if "op" not in skip:
        for kind, label, a in GRID:
            for prec in ("fp32", "int8"):
                module, shape = op_module(kind, a)
                key = f"op/{label}/{prec}"
                pte = _lower(module, shape, prec)
                for t in op_threads:
                    at = key if t == 1 else f"{key}/t{t}"
                    programs[at], shapes[at], threads[at] = pte, shape, t
    if "portable" not in skip:
        for op in portable_ops:
            for shape in PORTABLE_SHAPES:
                for n in PORTABLE_COUNTS:
                    key = f"portable/{op}/{int(np.prod(shape))}/{n}"
                    programs[key] = _lower(PortableChain(op, shape, n), shape, "fp32")
                    shapes[key], threads[key] = shape, 1
    return programs, shapes, threads


def _host() -> dict:
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                info.setdefault(k, v)
    except OSError:
        pass
    from importlib.metadata import version

    return {"cpu_model": info.get("model name"), "cpu_family": info.get("cpu family"),
            "cpu_mhz": info.get("cpu MHz"), "avx512f": "avx512f" in info.get("flags", ""),
            "cores": os.cpu_count(), "machine": platform.machine(),
            "executorch": version("executorch"), "torch": torch.__version__}


if __name__ == "__main__":
    sys.exit(main())
