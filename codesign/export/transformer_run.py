"""``codesign export RUN_DIR`` for a run over the ``transformer`` space.

Per member, in ``RUN_DIR/export/trial-<N>/``: ``model.pte`` (ExecuTorch, XNNPACK-delegated,
static KV cache, ``transformer.py``), ``model.pt2`` (the ``torch.export`` program it was lowered
from) and ``manifest.json``: per-linear precision and realisation (``transformer_plan.py``), how
the tied LM head was exported and the bytes of each copy, the KV cache (buffer bytes in the
program vs the space's priced bytes), which attention path was used (ExecuTorch's custom SDPA op
or the plain static cache), the runtime check (decode from position 0 vs the eager quantized
module), host decode latency at position ``context - 1`` (p50, p90, first run), sizes and sha256.

Weights: the member's fine-tuned weights where the search kept them (``RUN/finetuned``,
``codesign.evaluation.lm_finetune``), else the trained LM supernet's
(``codesign.search_spaces.transformer_lm.candidate_state_dict``) where that module is present,
else seeded random weights, said in the manifest (latency, sizes and the runtime check do not
depend on the values; quality does).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from codesign.export.host_check import host_prediction, target_prediction
from codesign.export.plan import PT2E_INT8, TORCHAO_DYN, refusal_reason, unexpressible
from codesign.export.run import (MemberResult, RunSpecs, _save_pt2, _write_bytes,
                                 check_space_hash, finish_member, open_run_specs)
from codesign.export.transformer_plan import head_tie, plan_linears
from codesign.evaluation.base import metric_keys
from codesign.pareto_member import ParetoMember
from codesign.run_dir import atomic_write_json

WARMUP, REPEATS = 5, 30
STREAM_NOTE = ("the space prices the residual stream, norms, RoPE, softmax and the KV cache at "
               "{bits} bits; the exported program runs them in fp32 (XNNPACK on this host)")


def member_weights(space, candidate, seed: int, finetuned_dir: Path | None = None
                   ) -> tuple[Mapping[str, torch.Tensor] | None, str]:
    """(state dict or None for seeded random weights, where the weights come from): the
    member's fine-tuned weights where the search kept them in ``finetuned_dir``
    (``codesign.evaluation.lm_finetune``), else its slice of the trained supernet."""
    if finetuned_dir is not None:
        from codesign.evaluation.lm_finetune import finetuned_file, load_member

        path = finetuned_file(finetuned_dir, candidate)
        if path.is_file():
            return load_member(path), (f"fine-tuned in its own formats by the search "
                                       f"({path.name}; trained LM supernet, seed {seed})")
    try:
        from codesign.search_spaces.transformer_lm import candidate_state_dict
    except ImportError:
        return None, (f"random (torch seed {seed}): this checkout has no trained LM supernet "
                      "(codesign.search_spaces.transformer_lm); latency, sizes and the runtime "
                      "check do not depend on weight values, quality does")
    return (candidate_state_dict(space, candidate, seed=seed),
            f"trained LM supernet (codesign.search_spaces.transformer_lm, seed {seed}), "
            "candidate's slice")


@dataclass
class TransformerRun(RunSpecs):
    """A transformer run: the specs, and the seed of the LM supernet its members come from."""

    seed: int = 0
    finetuned_dir: Path | None = None  # RUN/finetuned: members fine-tuned by the search

    @classmethod
    def open(cls, run_dir: Path) -> "TransformerRun":
        from codesign.context import load_space
        from codesign.cost_models.backends import load_backend

        identity, pareto, device, backend = open_run_specs(run_dir)
        space = load_space(identity["space"], backend, device)
        check_space_hash(run_dir, identity, space)
        tuned = Path(run_dir) / "finetuned"
        return cls(identity, pareto, device, backend, load_backend("xnnpack"), space,
                   os.cpu_count() or 1, int(identity.get("seed", 0)),
                   tuned if tuned.is_dir() else None)


def _kv_json(run: TransformerRun, candidate, program) -> dict[str, Any]:
    priced = run.space.kv_cache_bytes(candidate)
    return {"context": candidate.arch.context, "program_bytes": program.kv_cache_bytes,
            "priced_bytes": priced, "program_over_priced": program.kv_cache_bytes / priced,
            "buffers": len(program.kv_buffers),
            "note": "K and V of every layer, [1, context, kv_heads, head_dim] fp32, allocated "
                    "in the program's planned memory (zero at load)"}


def kernel_phases(run: TransformerRun, candidate, member: ParetoMember) -> dict[str, Any]:
    """``kernels.json`` of a codesign-back-end member: per phase, every kernel's contract
    (shape, precision, sparse format, tile, predicted latency; ``plan.kernel_spec``)."""
    from codesign.export.plan import kernel_spec
    from codesign.cost_models.tile_resolution import resolve_tile

    phases = {}
    for phase, key in (("decode", "layers"), ("prefill", "prefill_layers")):
        ops = run.space.to_ops(candidate, phase)
        latency = {layer["name"]: layer["latency_s"] for layer in getattr(member, key) or []}
        tiles = {op.name: resolve_tile(run.device, op, run.backend) for op in ops}
        phases[phase] = kernel_spec(ops, tiles, latency)
    return {"trial": int(member.trial), "device": run.device.name,
            "context": candidate.arch.context,
            "prompt_tokens": run.space.config.prompt_tokens, "phases": phases}


def quality_search(member: ParetoMember) -> dict[str, Any]:
    """The member's search-time quality (val and test, each with its interval) under the keys
    pareto.json gives them (``perplexity``, ``perplexity_interval``, ``test_perplexity``...)."""
    keys = metric_keys(member.metric)
    record = member.to_json()
    return {k: record[k] for k in (keys["value"], keys["interval"], keys["test"],
                                   keys["test_interval"]) if k in record}


def on_grid_program(space, candidate, state_dict, seed: int) -> torch.export.ExportedProgram:
    """The candidate's float decoder with every linear's weights on its quantization grid
    (the perplexity evaluator's ``quantized_state_dict``), exported as the .pte would be."""
    from codesign.evaluation.perplexity import quantized_state_dict
    from codesign.export.transformer import decode_inputs
    from codesign.search_spaces.transformer_model import build_decoder

    vocab = space.config.vocab
    if state_dict is None:  # seeded random weights, as member_weights says, masks baked in
        from codesign.search_spaces.transformer_lm import subnet_state_dict

        torch.manual_seed(seed)
        state_dict = subnet_state_dict(dict(build_decoder(candidate, vocab, kv_cache=True)
                                            .named_parameters()), candidate)
    model = build_decoder(candidate, vocab, quantized_state_dict(space, candidate,
                                                                 dict(state_dict)),
                          kv_cache=True)
    tokens, pos = decode_inputs(0, 0)
    with torch.no_grad():
        return torch.export.export(model, (tokens, {"input_pos": pos}), strict=False)


def export_transformer_member(run: TransformerRun, member: ParetoMember, out: Path,
                              formats: Sequence[str], log: Callable[[str], None]
                              ) -> MemberResult:
    from codesign.export.transformer import check_decode, export_decoder, time_decode
    from codesign.measure.pte import delegate_backends, planned_memory, undelegated_operators
    from codesign.cost_models.ir import model_bytes

    trial = int(member.trial)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    space = run.space
    candidate = space.decode(member.params)
    arch = candidate.arch
    vocab = space.config.vocab
    ops = space.to_ops(candidate, "decode")
    plans = plan_linears(ops, run.xnnpack)
    bad = unexpressible(plans)
    threads = max(1, min(int(candidate.threads or 1), run.threads_cap))
    manifest: dict[str, Any] = {
        "trial": trial, "params": member.params, "space": run.identity["space"],
        "device": run.identity["device"], "backend": run.identity["backend"],
        "budget_s": run.pareto.get("budget_s"),
        "arch": {"layers": arch.layers, "d_model": arch.d_model, "heads": arch.heads,
                 "kv_heads": arch.kv_heads, "head_dim": arch.head_dim, "d_ff": arch.d_ff,
                 "context": arch.context,
                 "vocab": vocab},
        "latency_s_predicted": member.latency_s,
        "latency_s_predicted_means": "one decoded token at position context-1 on "
                                     f"{run.identity['device']}",
        "target_prediction": target_prediction(run.identity, run.device, run.backend, candidate),
        "ttft_s_predicted": member.ttft_s,
        "quality_search": quality_search(member),
        "memory": {"model_bytes_predicted": model_bytes(ops),
                   "kv_cache_bytes_predicted": space.kv_cache_bytes(candidate),
                   "memory_bytes_predicted": member.memory_bytes},
        "precision_per_layer": [p.as_json() for p in plans],
        "lm_head": head_tie(plans, vocab, arch.d_model),
        "stream": STREAM_NOTE.format(bits=space.config.stream_bits),
        "threads": threads,
    }
    files: dict[str, Path] = {}
    status, reason = "exported", ""
    if bad:
        status = "refused"
        reason = refusal_reason(bad, "linear")
        manifest["pte"] = None
        if run.backend.project_kernels:
            files["kernels.json"] = out / "kernels.json"
            atomic_write_json(files["kernels.json"], kernel_phases(run, candidate, member))
        if "pt2" in formats:
            state_dict, manifest["weights"] = member_weights(space, candidate, run.seed,
                                                             run.finetuned_dir)
            t0 = time.perf_counter()
            _save_pt2(out / "model.pt2", on_grid_program(space, candidate, state_dict, run.seed))
            manifest["seconds"] = {"pt2": time.perf_counter() - t0}
            files["model.pt2"] = out / "model.pt2"
            manifest["pt2_semantics"] = (
                "float decoder with a static KV cache (forward(tokens[1, 1], input_pos[1])); "
                "weights 2:4-pruned where chosen and on each linear's quantization grid, the LM "
                "head untied at its own precision; activation precisions and kernels are "
                "specified in kernels.json" if run.backend.project_kernels else
                "float decoder with a static KV cache; weights on each linear's quantization "
                "grid")
    else:
        state_dict, source = member_weights(space, candidate, run.seed, run.finetuned_dir)
        manifest["weights"] = source
        calibration = None
        if state_dict is not None and any(p.realisation == PT2E_INT8 for p in plans):
            from codesign.export.transformer import CALIBRATION_TOKENS
            from codesign.search_spaces.transformer_lm import split_tokens

            n = min(CALIBRATION_TOKENS, arch.context)
            calibration = [int(t) for t in split_tokens("train").reshape(-1)[:n]]
        if any(p.realisation == PT2E_INT8 for p in plans):
            manifest["static_int8_calibration"] = (
                f"{len(calibration)} tokens of the LM's training text" if calibration else
                "seeded random byte tokens (no trained LM)") + ", decoded from position 0"
        program = export_decoder(candidate, plans, vocab, state_dict, seed=run.seed,
                                 calibration=calibration)
        timings = dict(program.seconds)
        manifest["sdpa"] = {"custom_op": program.custom_sdpa, "path": program.sdpa_note}
        if "pt2" in formats:
            t0 = time.perf_counter()
            _save_pt2(out / "model.pt2", program.exported)
            timings["pt2"] = time.perf_counter() - t0
            files["model.pt2"] = out / "model.pt2"
            manifest["pt2_semantics"] = "the torch.export program model.pte was lowered from"
        quantized = any(p.realisation in (TORCHAO_DYN, PT2E_INT8) for p in plans)
        t0 = time.perf_counter()
        check = check_decode(program.pte, program.reference, quantized=quantized, vocab=vocab,
                             seed=run.seed, threads=threads, output_scale=program.output_scale)
        timings["verify"] = time.perf_counter() - t0
        if "pte" in formats:
            _write_bytes(out / "model.pte", program.pte)
            files["model.pte"] = out / "model.pte"
        t0 = time.perf_counter()
        timing = time_decode(program.pte, arch.context, threads=threads, warmup=WARMUP,
                             repeats=REPEATS)
        timings["time"] = time.perf_counter() - t0
        mem = planned_memory(program.pte)
        manifest.update(host_prediction(ops, threads))
        manifest.update({
            "host_latency_s_measured": timing.p50_s, "host_latency_p90_s": timing.p90_s,
            "host_first_run_s": timing.first_run_s, "host_load_s": timing.load_s,
            "host_decode": timing.as_json(),
            "max_abs_diff": check.max_abs_diff, "output_check": check.as_json(),
            "delegates": list(delegate_backends(program.pte)),
            "undelegated_operators": list(undelegated_operators(program.pte)),
            "kv_cache": _kv_json(run, candidate, program),
        })
        manifest["memory"].update({"pte_bytes": len(program.pte),
                                   "planned_constant_bytes": mem.constant_bytes,
                                   "planned_non_constant_bytes": mem.non_constant_bytes,
                                   "kv_cache_bytes_program": program.kv_cache_bytes})
        manifest["seconds"] = timings
        if not check.ok:
            status = "failed"
            reason = (f"runtime decode differs from the eager module: max |diff| "
                      f"{check.max_abs_diff:.3g} ({check.rule})")
    return finish_member(trial, out, manifest, files, status, reason, start, log)
