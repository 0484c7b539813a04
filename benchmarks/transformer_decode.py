"""Decode latency of an exported transformer member on this host, measured vs predicted.

One architecture (default: the largest decoder of the built-in space's new dims: 6 layers,
d_model 256, 4 heads / 2 KV heads, SwiGLU x3, context 512, byte vocabulary) is exported through
``codesign.export.transformer`` (ExecuTorch's LLM recipe, XNNPACK, static KV cache, the custom
SDPA op where the runtime has it) with every linear (LM head included) at one precision:

* ``w4a8-dyn``  4-bit group-wise weights (group ``--group``), int8 dynamic activations;
* ``w8a8-dyn``  per-channel int8 weights, int8 dynamic activations;
* ``fp32``      the space's ``w16a16``, which XNNPACK runs in fp32 here.

Each program decodes one token at position ``context - 1`` (the priced worst case) on the
ExecuTorch runtime: threadpool set to ``--threads`` before loading; ``--rounds`` rounds, each a
fresh load of every program in a rotated order (interleaved, so drifting load hits all alike),
``--warmup`` untimed and ``--repeats`` timed runs per load, on the executing thread's CPU clock
(1 thread) or the wall clock. Latency = median of all timed runs; ratio = median over rounds of
the per-round ratio of medians. Weights are seeded random: dense kernels take the same time for
any values.

Predicted: the analytic model for ``--device host`` (``AnalyticCostModel``, the xnnpack back-end,
the same thread count) prices the same candidates twice: as the space prices them (16-bit
stream, KV cache and ``w16a16`` linears) and as exported (every 16-bit tensor as fp32: the
space's config with ``stream_bits: 32`` and ``w32a32`` linears) - the second is the like-for-like
comparison. The model is checked against the measurements, not against itself.

KV cache vs context: the same architecture at w4a8-dyn exported at ``--contexts``; K/V buffer
bytes of each program, its planned (non-constant) memory, and its decode latency at
``context - 1``, measured and predicted.

    .venv/bin/python -m benchmarks.transformer_decode [--json OUT.json] [--quick]

``--repredict RESULT.json``: no export, no timing - price the candidates of an earlier run with
the current cost model and print them beside that run's measured figures (how a model change
moves the predictions against measurements already taken).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from dataclasses import replace

import numpy as np

PRECISIONS = {"w4a8-dyn": "w4a8-dyn", "w8a8-dyn": "w8a8-dyn", "fp32": "w16a16"}


def _candidate(arch, precision: str, group: int, threads: int):
    from codesign.search_spaces.transformer import Candidate, LayerChoice

    choice = LayerChoice(precision, group if precision.startswith("w4") else 0)
    return Candidate(arch, (choice,) * arch.layers, choice, threads=threads)


def _predict(space, candidate, threads: int) -> dict:
    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.base import BOUNDS
    from codesign.cost_models.devices import load_device
    from codesign.cost_models.ir import OpBatch, model_bytes

    device = load_device("host")
    ops = space.to_ops(candidate, "decode")
    pred = AnalyticCostModel(device, space.backend, threads=threads).predict(
        OpBatch.from_oplists([ops]))
    total = float(pred.latency_s[0])
    shares = np.bincount(pred.op_bound, weights=pred.op_latency_s, minlength=len(BOUNDS)) / total
    return {"latency_s": total, "ops": len(ops), "weight_bytes": model_bytes(ops),
            "kv_bytes": space.kv_cache_bytes(candidate),
            **{f"{b}_share": float(s) for b, s in zip(BOUNDS, shares)}}


def _as_exported(space, candidate):
    """(space, candidate) as the host program runs them: 16-bit tensors as fp32."""
    from codesign.search_spaces.transformer import Candidate, LayerChoice, TransformerSpace

    fp32_space = TransformerSpace(space.backend, threads_choices=space.threads_choices,
                                  config=replace(space.config, stream_bits=32))

    def up(c: LayerChoice) -> LayerChoice:
        return LayerChoice("w32a32") if c.precision == "w16a16" else c

    return fp32_space, Candidate(candidate.arch, tuple(up(c) for c in candidate.layers),
                                 up(candidate.head), threads=candidate.threads)


def _export(candidate, vocab: int, sdpa: str = "auto"):
    from codesign.cost_models.backends import load_backend
    from codesign.export.transformer import export_decoder
    from codesign.export.transformer_plan import plan_linears
    from codesign.search_spaces.transformer import TransformerSpace

    xnn = load_backend("xnnpack")
    plans = plan_linears(TransformerSpace(xnn).to_ops(candidate, "decode"), xnn)
    return export_decoder(candidate, plans, vocab, None, sdpa=sdpa, seed=0)


def _interleaved(programs: dict, context_of: dict, *, threads: int, rounds: int, warmup: int,
                 repeats: int) -> dict:
    """Per program: all timed samples (s) on the chosen clock and each round's median."""
    from benchmarks.interleaved import interleaved_runs
    from codesign.export.transformer import decode_inputs

    per, loads = interleaved_runs(programs, lambda n: decode_inputs(1, context_of[n] - 1),
                                  rounds=rounds, warmup=warmup, repeats=repeats, threads=threads)
    samples = {n: [t for chosen in v for t in chosen] for n, v in per.items()}
    round_medians = {n: [statistics.median(chosen) for chosen in v] for n, v in per.items()}
    return {"samples": samples, "round_medians": round_medians, "loadavg": loads,
            "clock": "cpu" if threads == 1 else "wall"}


def _profile(pte: bytes, context: int, runs: int = 30) -> dict:
    """Where one decode step's time goes: ExecuTorch's ETDump of ``runs`` executions (median
    per event, summed over a step's events of one name)."""
    import tempfile
    from collections import defaultdict

    from codesign.export.transformer import decode_inputs, quiet_stderr
    from codesign.measure.pte import quiet_imports

    with quiet_imports():
        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib

    module = portable_lib._load_for_executorch_from_buffer(pte, enable_etdump=True)
    with quiet_stderr():
        for _ in range(runs):
            module.run_method("forward", decode_inputs(1, context - 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "decode.etdp")
        module.write_etdump_result_to_file(path)
        inspector = Inspector(etdump_path=path)
    total, count = defaultdict(float), defaultdict(int)
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is not None:
                total[event.name] += statistics.median(event.perf_data.raw) / 1e3  # ms -> s
                count[event.name] += 1
    return {name: {"s": total[name], "n": count[name]} for name in total}


PROFILE_ROWS = (("Method::execute", "one decode step (ETDump)"),
                ("DELEGATE_CALL", "XNNPACK delegate calls"),
                ("OPERATOR_CALL", "ExecuTorch kernel calls outside XNNPACK"),
                ("linear", "XNNPACK fully-connected (GEMV)"),
                ("llama::custom_sdpa.out", "attention (custom SDPA)"),
                ("transpose", "XNNPACK transposes"))
PREFIXES = {"linear": "Fully Connected", "transpose": "Transpose"}


def _profile_row(prof: dict, key: str) -> tuple[float, int]:
    if key in PREFIXES:
        hits = [v for k, v in prof.items() if k.startswith(PREFIXES[key])]
    else:
        hits = [prof[key]] if key in prof else []
    return sum(h["s"] for h in hits), sum(h["n"] for h in hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--ffn-mult", type=int, default=3)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--contexts", default="128,256,512,1024")
    parser.add_argument("--no-plain", action="store_true",
                        help="skip the fp32 program with the plain static cache (no custom SDPA)")
    parser.add_argument("--profile", action="store_true",
                        help="also break one decode step down by event (ExecuTorch ETDump)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 20 repeats, 2 contexts")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--repredict", help="an earlier --json result: re-price, don't measure")
    args = parser.parse_args()
    if args.repredict:
        return _repredict(args.repredict)
    if args.quick:
        args.rounds, args.repeats, args.contexts = 2, 20, "128,256"
    warnings.filterwarnings("ignore")
    import torch

    from codesign.cost_models.backends import load_backend
    from codesign.measure.pte import planned_memory
    from codesign.search_spaces.transformer import TransformerArch, TransformerSpace

    torch.set_num_threads(args.threads)
    arch = TransformerArch(args.layers, args.d_model, args.heads, args.kv_heads, args.ffn_mult,
                           args.context)
    space = TransformerSpace(load_backend("xnnpack"), threads_choices=(args.threads,))
    vocab = space.config.vocab
    t_start = time.time()
    load0 = os.getloadavg()[0]

    programs, context_of, info = {}, {}, {}
    for label, precision in PRECISIONS.items():
        cand = _candidate(arch, precision, args.group, args.threads)
        prog = _export(cand, vocab)
        programs[label], context_of[label] = prog.pte, arch.context
        info[label] = {"precision": precision, "pte_bytes": len(prog.pte),
                       "custom_sdpa": prog.custom_sdpa, "kv_bytes": prog.kv_cache_bytes,
                       "seconds": prog.seconds,
                       "predicted_space": _predict(space, cand, args.threads),
                       "predicted_exported": _predict(*_as_exported(space, cand), args.threads)}
    if not args.no_plain:
        cand = _candidate(arch, "w16a16", args.group, args.threads)
        prog = _export(cand, vocab, sdpa="plain")
        programs["fp32-plain"], context_of["fp32-plain"] = prog.pte, arch.context
        info["fp32-plain"] = {**info["fp32"], "pte_bytes": len(prog.pte), "custom_sdpa": False,
                              "kv_bytes": prog.kv_cache_bytes, "seconds": prog.seconds}
    timed = _interleaved(programs, context_of, threads=args.threads, rounds=args.rounds,
                         warmup=args.warmup, repeats=args.repeats)

    contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    kv_programs, kv_context, kv_rows = {}, {}, []
    for ctx in contexts:
        a = replace(arch, context=ctx)
        cand = _candidate(a, "w4a8-dyn", args.group, args.threads)
        prog = _export(cand, vocab)
        mem = planned_memory(prog.pte)
        kv_programs[f"ctx{ctx}"], kv_context[f"ctx{ctx}"] = prog.pte, ctx
        kv_rows.append({"context": ctx, "kv_bytes_program": prog.kv_cache_bytes,
                        "kv_bytes_priced": space.kv_cache_bytes(cand),
                        "planned_non_constant_bytes": mem.non_constant_bytes,
                        "pte_bytes": len(prog.pte),
                        "predicted_exported_s": _predict(*_as_exported(space, cand),
                                                         args.threads)["latency_s"]})
    kv_timed = _interleaved(kv_programs, kv_context, threads=args.threads, rounds=args.rounds,
                            warmup=args.warmup, repeats=args.repeats)
    for row in kv_rows:
        row["measured_s"] = statistics.median(kv_timed["samples"][f"ctx{row['context']}"])
    load1 = os.getloadavg()[0]

    # ------------------------------------------------------------------ report
    med = {n: statistics.median(s) for n, s in timed["samples"].items()}
    rounds_ratio = {n: statistics.median(a / b for a, b in zip(timed["round_medians"][n],
                                                                timed["round_medians"]["fp32"]))
                    for n in PRECISIONS}
    print(f"arch: {arch}, vocab {vocab}, threads {args.threads}, clock {timed['clock']}, "
          f"{args.rounds} rounds x {args.repeats} repeats; load average "
          f"{load0:.2f} before, {load1:.2f} after, per round {timed['loadavg']}")
    print("\n| weights | .pte KB | measured ms (p50) | measured / fp32 "
          "| predicted ms (as exported) | predicted / fp32 "
          "| predicted ms (as priced, 16-bit) | predicted / w16a16 | "
          "measured / predicted (as exported) | compute / memory / overhead (as exported) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    pe = {n: info[n]["predicted_exported"]["latency_s"] for n in PRECISIONS}
    ps = {n: info[n]["predicted_space"]["latency_s"] for n in PRECISIONS}
    for n in PRECISIONS:
        e = info[n]["predicted_exported"]
        print(f"| {n} | {info[n]['pte_bytes'] / 1e3:.0f} | {med[n] * 1e3:.3f} | "
              f"{rounds_ratio[n]:.2f} | {pe[n] * 1e3:.3f} | {pe[n] / pe['fp32']:.2f} | "
              f"{ps[n] * 1e3:.3f} | {ps[n] / ps['fp32']:.2f} | {med[n] / pe[n]:.2f} | "
              f"{e['compute_share']:.2f} / {e['memory_share']:.2f} / {e['overhead_share']:.2f} |")
    if args.profile:
        profiles = {n: _profile(programs[n], context_of[n]) for n in PRECISIONS}
        print("\n| where one step's time goes (ETDump, ms; calls) | "
              + " | ".join(PRECISIONS) + " |")
        print("|---|" + "---|" * len(PRECISIONS))
        for key, label in PROFILE_ROWS:
            cells = []
            for n in PRECISIONS:
                sec, calls = _profile_row(profiles[n], key)
                cells.append(f"{sec * 1e3:.3f} ({calls})")
            print(f"| {label} | " + " | ".join(cells) + " |")
        info["profiles"] = profiles
    if "fp32-plain" in med:
        print(f"\nfp32, plain static cache (no custom SDPA): {med['fp32-plain'] * 1e3:.3f} ms "
              f"({med['fp32-plain'] / med['fp32']:.2f} x the custom-op program)")
    print("\n| context | KV bytes (program) | KV bytes (priced, fp16) | planned non-constant "
          "bytes | measured ms | predicted ms (as exported) |")
    print("|---|---|---|---|---|---|")
    for row in kv_rows:
        print(f"| {row['context']} | {row['kv_bytes_program']} | {row['kv_bytes_priced']} | "
              f"{row['planned_non_constant_bytes']} | {row['measured_s'] * 1e3:.3f} | "
              f"{row['predicted_exported_s'] * 1e3:.3f} |")
    if len(kv_rows) > 1:
        x = np.array([r["context"] for r in kv_rows], float)
        for key in ("kv_bytes_program", "planned_non_constant_bytes"):
            y = np.array([r[key] for r in kv_rows], float)
            slope, icpt = np.polyfit(x, y, 1)
            resid = float(np.max(np.abs(y - (slope * x + icpt))))
            print(f"{key}: {slope:.1f} bytes per token of context + {icpt:.0f}; "
                  f"max residual from the line {resid:.0f} bytes")
    print(f"\n{time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"arch": arch.__dict__, "threads": args.threads, "info": info,
                       "median_s": med, "ratio_vs_fp32": rounds_ratio,
                       "round_medians_s": timed["round_medians"], "loadavg": [load0, load1],
                       "round_loadavg": timed["loadavg"], "kv": kv_rows}, fh, indent=2)


def _repredict(path: str) -> None:
    from codesign.cost_models.backends import load_backend
    from codesign.search_spaces.transformer import TransformerArch, TransformerSpace

    run = json.load(open(path))
    threads = run["threads"]
    arch = TransformerArch(**run["arch"])
    space = TransformerSpace(load_backend("xnnpack"), threads_choices=(threads,))
    group = 128
    pe = {n: _predict(*_as_exported(space, _candidate(arch, p, group, threads)), threads)
          for n, p in PRECISIONS.items()}
    print("| weights | measured ms (p50) | measured / fp32 | predicted ms (as exported) "
          "| predicted / fp32 | measured / predicted | ops | compute / memory / overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for n in PRECISIONS:
        e, meas = pe[n], run["median_s"][n]
        print(f"| {n} | {meas * 1e3:.3f} | {run['ratio_vs_fp32'][n]:.2f} | "
              f"{e['latency_s'] * 1e3:.3f} | {e['latency_s'] / pe['fp32']['latency_s']:.2f} | "
              f"{meas / e['latency_s']:.2f} | {e['ops']} | {e['compute_share']:.2f} / "
              f"{e['memory_share']:.2f} / {e['overhead_share']:.2f} |")
    print("\n| context | measured ms | predicted ms (as exported) | measured / predicted |")
    print("|---|---|---|---|")
    for row in run["kv"]:
        a = replace(arch, context=row["context"])
        p = _predict(*_as_exported(space, _candidate(a, "w4a8-dyn", group, threads)),
                     threads)["latency_s"]
        print(f"| {row['context']} | {row['measured_s'] * 1e3:.3f} | {p * 1e3:.3f} | "
              f"{row['measured_s'] / p:.2f} |")


if __name__ == "__main__":
    main()
