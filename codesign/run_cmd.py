"""``codesign run PROGRAM_DIR``: load an exported numba program, check it, time it.

The check compares the program's outputs on the images stored with it (``check.safetensors``)
with the outputs of the fake-quantized model the search scored, in steps of the output's grid;
the timing runs one image (the deploy shape) end to end: the first run (kernel compilation),
``--warmup`` more, then ``--repeats`` timed runs, p50 / p90 / min. The export's host
prediction of the same program is printed beside the measurement when the manifest has it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def run_program(directory: Path, *, threads: int = 1, warmup: int = 5,
                repeats: int = 30) -> dict[str, Any]:
    from codesign.export.numba_export import check_program, read_manifest
    from codesign.export.numba_runtime import load_program, time_program

    program = load_program(directory, threads=threads)
    check = check_program(program, directory)
    shape = program.input_shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    timing = time_program(program, x, warmup=warmup, repeats=repeats)
    manifest = read_manifest(directory)
    predicted = manifest.get("host_latency_s_predicted")
    if manifest.get("threads") not in (None, threads):
        predicted = None  # the export predicted another thread count
    return {"program": str(directory), "trial": program.plan.get("trial"),
            "layers": len(program.plan["layers"]), "input_shape": list(shape),
            "host_latency_s_measured": timing.p50_s, "host_latency_s_predicted": predicted,
            "timing": timing.as_json(), "check": check}


def format_run(result: dict[str, Any]) -> str:
    t = result["timing"]
    lines = [f"program {result['program']} (trial {result['trial']}, {result['layers']} layers, "
             f"input {'x'.join(map(str, result['input_shape']))})",
             f"latency p50 {t['p50_s'] * 1e3:.3f} ms, p90 {t['p90_s'] * 1e3:.3f} ms, min "
             f"{t['min_s'] * 1e3:.3f} ms ({t['repeats']} repeats after {t['warmup']} warm-ups, "
             f"{t['threads']} thread(s), {t['clock']} clock, first run {t['first_run_s']:.2f} s, load "
             f"{t['loadavg_1m']:.2f})"]
    pred = result.get("host_latency_s_predicted")
    if isinstance(pred, float):
        lines.append(f"host prediction {pred * 1e3:.3f} ms (measured / predicted "
                     f"{t['p50_s'] / pred:.2f})")
    check = result.get("check")
    if check:
        lines.append(f"check: {check['n_images']} images, max |diff| {check['max_abs_diff']:.3g} "
                     f"= {check['max_diff_steps']:.2f} output steps, top-1 agreement "
                     f"{check['top1_agreement']:.3f}")
    return "\n".join(lines)


def cmd_run(args) -> int:
    result = run_program(Path(args.program_dir), threads=args.threads, warmup=args.warmup,
                         repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else format_run(result))
    return 0
