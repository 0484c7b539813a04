"""``codesign export RUN --format numba``: a codesign member as a program the project's kernels run.

Per member, ``RUN/export/trial-<N>/numba/``:

* ``program.json`` + ``weights.safetensors``: the layer plan and packed weights
  (``numba_program``), built from the fake-quantized model the search scored;
* ``check.safetensors``: a few test images and the scored model's outputs on them, which
  ``codesign run`` compares the program against;
* ``manifest.json``: numerics against the scored model over the whole test split (max |diff| in
  steps of the output grid, top-1 agreement, the program's own accuracy), the measured latency
  (warm-ups, repeats, p50, at the member's thread count) beside the host's prediction of the
  same op list on the ``codesign`` kernels (``host_latency_s_predicted``), file hashes.

Numerics pass when the largest difference is at most ``MAX_DIFF_STEPS`` output steps and the
top-1 agreement at least ``MIN_AGREEMENT`` (issue 21's acceptance). The output step is the
int8 grid of the output where the output is dequantized from int8, else one step of an 8-bit
grid over the reference outputs' range (``verify.py``'s convention for float outputs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from codesign.export.host_check import host_prediction, target_prediction
from codesign.export.numba_program import build_program
from codesign.export.numba_runtime import (PROGRAM_FILE, WEIGHTS_FILE, bind_program,
                                           load_program, time_program)
from codesign.run_dir import atomic_write_json

CHECK_FILE = "check.safetensors"
CHECK_IMAGES = 4
MAX_DIFF_STEPS = 1.0
MIN_AGREEMENT = 0.995
BATCH = 64


def output_step(plan: dict[str, Any], reference: np.ndarray) -> float:
    """One quantization step of the program's output (see the module docstring)."""
    last = plan["layers"][-1]
    if last["op"] == "dequantize":
        return float(last["in_scale"])
    span = float(np.max(reference.max(axis=1) - reference.min(axis=1))) if reference.size else 0.0
    return max(span, 1e-12) / 255.0


def run_batched(program, x: np.ndarray) -> np.ndarray:
    return np.concatenate([program(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])


def compare(program, executor, x: torch.Tensor, y: torch.Tensor, plan: dict[str, Any]
            ) -> dict[str, Any]:
    """The program against the scored model on the images ``x`` with labels ``y``."""
    with torch.no_grad():
        ref = torch.cat([executor(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
    out = run_batched(program, x.numpy())
    step = output_step(plan, ref)
    diff = np.abs(out - ref)
    labels = y.numpy()
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    return {"n_images": int(len(labels)), "output_step": step,
            "max_abs_diff": float(diff.max()), "max_diff_steps": float(diff.max() / step),
            "images_over_one_step": int(np.sum(diff.max(axis=1) > MAX_DIFF_STEPS * step)),
            "top1_agreement": agree,
            "accuracy_program": float(np.mean(out.argmax(1) == labels)),
            "accuracy_reference": float(np.mean(ref.argmax(1) == labels)),
            "ok": bool(diff.max() <= MAX_DIFF_STEPS * step and agree >= MIN_AGREEMENT)}


def _layer_formats(plan: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in plan["layers"]:
        if "format" in layer:
            counts[layer["format"]] = counts.get(layer["format"], 0) + 1
    return counts


def export_numba(run, member, out: Path, log: Callable[[str], None], *, warmup: int = 5,
                 repeats: int = 30) -> tuple[dict[str, Any], dict[str, Path], str, str]:
    """Write member ``member`` of ``run`` (a ``codesign.export.run._Run``) as a numba program
    into ``out``; returns (manifest, files, status, reason)."""
    from safetensors.numpy import save_file

    from codesign.cost_models.tile_resolution import apply_tuned_tiles

    space, evaluator = run.space, run.evaluator
    candidate = space.decode(member.params)
    deploy_shape = tuple(space.deploy_input_shape)
    eval_shape = tuple(space.eval_input_shape)
    ops = apply_tuned_tiles(space.to_ops(candidate), run.device, run.backend)
    executor = evaluator.executor(candidate)
    threads = max(1, min(int(member.threads or 1), run.threads_cap))
    meta = {"trial": int(member.trial), "device_searched": run.identity["device"],
            "backend": run.identity["backend"]}
    plan, tensors = build_program(executor, ops, deploy_shape, meta)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PROGRAM_FILE, plan)
    save_file(tensors, str(out / WEIGHTS_FILE))
    program = load_program(out, threads=threads)  # what codesign run loads

    data = evaluator.data()
    if eval_shape == deploy_shape:
        checked, check_plan = program, plan
    else:  # the task's images are the evaluation shape: a twin program built at that shape
        eval_ops = apply_tuned_tiles(space.to_ops(candidate, eval_shape), run.device, run.backend)
        check_plan, twin = build_program(executor, eval_ops, eval_shape, meta)
        checked = bind_program(check_plan, twin, threads=threads)
    numerics = compare(checked, executor, data.x_test, data.y_test, check_plan)
    sample = data.x_test[:CHECK_IMAGES]
    if eval_shape == deploy_shape:
        with torch.no_grad():
            reference = executor(sample).numpy()
        save_file({"input": np.ascontiguousarray(sample.numpy()),
                   "reference": np.ascontiguousarray(reference)}, str(out / CHECK_FILE))
    timing = time_program(program, np.ascontiguousarray(data.x_test[:1].numpy()), warmup=warmup,
                          repeats=repeats)
    manifest: dict[str, Any] = {
        "format": "numba", "trial": int(member.trial), "params": member.params,
        "device": run.identity["device"], "backend": run.identity["backend"],
        "budget_s": run.pareto.get("budget_s"), "deploy_input_shape": list(deploy_shape),
        "eval_input_shape": list(eval_shape), "latency_s_predicted": member.latency_s,
        "target_prediction": target_prediction(run.identity, run.device, run.backend, candidate),
        "accuracy_search_val": member.quality if member.metric == "accuracy" else None,
        "accuracy_search_test": member.test_quality if member.metric == "accuracy" else None,
        "layer_formats": _layer_formats(plan), "threads": threads,
        **host_prediction(ops, threads, backend="codesign"),
        "host_latency_s_measured": timing.p50_s, "host_latency_p90_s": timing.p90_s,
        "host_latency_min_s": timing.min_s, "host_first_run_s": timing.first_run_s,
        "host_latency_repeats": timing.repeats, "host_latency_warmup": timing.warmup,
        "host_loadavg_1m": timing.loadavg_1m, "host_latency_clock": timing.clock,
        "numerics": numerics, "max_abs_diff": numerics["max_abs_diff"],
        "max_diff_steps": numerics["max_diff_steps"],
        "top1_agreement": numerics["top1_agreement"],
        "accuracy_exported": numerics["accuracy_program"],
        "accuracy_exported_note": (f"the numba program on the {numerics['n_images']} test "
                                   f"images at {list(eval_shape)}"),
    }
    files = {name: out / name for name in (PROGRAM_FILE, WEIGHTS_FILE, CHECK_FILE)
             if (out / name).is_file()}
    status, reason = "exported", ""
    if not numerics["ok"]:
        status = "failed"
        reason = (f"program vs scored model: max |diff| {numerics['max_diff_steps']:.2f} output "
                  f"steps (limit {MAX_DIFF_STEPS:g}), top-1 agreement "
                  f"{numerics['top1_agreement']:.4f} (limit {MIN_AGREEMENT})")
    return manifest, files, status, reason


def check_program(program, directory: Path) -> dict[str, Any] | None:
    """The program against the outputs stored in ``check.safetensors`` (None: no such file)."""
    path = Path(directory) / CHECK_FILE
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    out = program(arrays["input"])
    ref = arrays["reference"]
    step = output_step(program.plan, ref)
    diff = float(np.abs(out - ref).max())
    return {"n_images": int(len(ref)), "max_abs_diff": diff, "output_step": step,
            "max_diff_steps": diff / step,
            "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1)))}


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
