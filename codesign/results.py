"""Turn a finished study into pareto.json / pareto.csv (contract: ../shared/CLI.md)."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from importlib import metadata
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from codesign.evaluation.base import metric_keys
from codesign.pareto_member import ParetoMember, front_members
from codesign.run_dir import RunDir

_VERSIONED = ("codesign", "torch", "numpy", "optuna", "numba", "executorch", "torchao", "ray")


def versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def member_record(trial: FrozenTrial, context, *, with_test: bool = True) -> ParetoMember:
    """Everything pareto.json says about one trial: metrics, test accuracy (or the evaluator's
    metric, under its own name: ``perplexity``, ``test_perplexity``...), per-layer breakdown."""
    keys = metric_keys(context.metric)
    candidate = context.space.decode(trial.params)
    priced = context.price(candidate)
    formats = candidate.formats() if callable(getattr(candidate, "formats", None)) else None
    member = ParetoMember(
        trial=trial.number, params=dict(trial.params), metric=context.metric,
        latency_s=priced.latency_s, latency_band_s=tuple(priced.latency_band_s),
        quality=trial.values[0], quality_interval=tuple(trial.user_attrs[keys["interval"]]),
        model_bytes=priced.model_bytes, peak_activation_bytes=priced.peak_activation_bytes,
        threads=getattr(candidate, "threads", context.device.default_threads),
        baseline=bool(trial.user_attrs.get("baseline", False)), formats=formats,
        layers=_layer_rows(priced.prediction, priced.batch),
        # a space with a prefill phase: latency_s is per decoded token
        ttft_s=priced.ttft_s, ttft_band_s=priced.ttft_band_s,
        prefill_layers=(None if priced.prefill_prediction is None else
                        _layer_rows(priced.prefill_prediction, priced.prefill_batch)),
        memory_bytes=priced.memory_bytes, memory_share_bytes=priced.memory_share_bytes)
    finetuned = getattr(context.evaluator, "finetuned_path", None)
    finetuned = finetuned(candidate) if callable(finetuned) else None
    if finetuned is not None and finetuned.is_file():  # scored again with its fine-tuned weights
        after = context.evaluator.evaluate(candidate, split="val")
        member.quality_before_finetune = member.quality
        member.quality_before_finetune_interval = member.quality_interval
        member.quality, member.quality_interval = float(after.accuracy), tuple(after.interval)
    if with_test:
        test = context.evaluator.evaluate(candidate, split="test")
        member.test_quality, member.test_quality_interval = float(test.accuracy), \
            tuple(test.interval)
    return member


def _layer_rows(prediction, batch) -> list[dict[str, Any]]:
    return [{"name": r["name"], "kind": r["kind"], "latency_s": r["latency_s"],
             "bound": r["bound"], "flops": r["flops"], "bytes": r["bytes"],
             "weight_bits": r["weight_bits"], "act_bits": r["act_bits"],
             "sparsity": r["sparsity"], "tile": r["tile"]}
            for r in prediction.layers(batch, 0) if r["kind"] != "free"]


def unique_candidates(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` less repeats of the same params, keeping the first: a sampler may propose one
    candidate twice, and both trials then tie on the front as the same model."""
    seen: set[str] = set()
    unique = []
    for trial in trials:
        key = json.dumps(trial.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            unique.append(trial)
    return unique


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's feasible non-dominated trials, fastest first, repeats of a candidate once."""
    return unique_candidates(sorted(study.best_trials, key=lambda t: (t.values[1], t.number)))


def build_pareto(study: optuna.Study, context, config) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = front_trials(study)
    members = [member_record(t, context) for t in front]
    for m in members:  # the constraint guarantees it; a violated invariant must not ship
        if m.latency_s > context.budget_s:
            raise RuntimeError(f"trial {m.trial} on the front exceeds the budget")
        ttft_budget = getattr(context, "ttft_budget_s", None)
        if ttft_budget is not None and m.ttft_s > ttft_budget:
            raise RuntimeError(f"trial {m.trial} on the front exceeds the TTFT budget")
    baseline = next((t for t in complete if t.user_attrs.get("baseline")), None)
    n_eval = max((t.user_attrs.get("n_eval", 0) for t in complete), default=0)
    identity = context.identity(config)
    metric, higher = context.metric, context.higher_is_better
    failed = [t for t in trials if t.state == TrialState.FAIL
              and not t.user_attrs.get("interrupted")]
    return {
        "status": "ok" if members else "no-feasible",
        "device": context.device.name, "backend": context.backend.name,
        "budget_s": context.budget_s, "space": context.space.name,
        **({"ttft_budget_s": context.ttft_budget_s}
           if getattr(context, "ttft_budget_s", None) is not None else {}),
        "cost_model": context.cost_model_name, "trials": len(trials),
        "eval_input_shape": list(context.space.eval_input_shape),
        "deploy_input_shape": list(context.space.deploy_input_shape),
        "metric": metric, "higher_is_better": higher,
        metric_keys(metric)["split"]: "val", "n_eval": int(n_eval),
        "n_complete": len(complete),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "first_fail_reason": failed[0].user_attrs.get("fail_reason") if failed else None,
        "n_interrupted": sum(bool(t.user_attrs.get("interrupted")) for t in trials),
        "n_feasible": sum(_feasible(t) for t in complete),
        "provenance": {
            "spec_sha256": context.device.sha256, "space_sha256": identity["space_sha256"],
            "backend": context.backend.name, "cost_model": context.cost_model_name,
            # learned/hybrid: which model file priced the front, and its held-out error
            **{k: v for k, v in identity.items() if k.startswith("cost_model_")},
            "cache_dir": identity.get("cache_dir"),
            "versions": versions(), "seed": config.seed, "sampler": config.sampler,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        **({"task": identity["task"]} if "task" in identity else {}),  # --task: the user's data
        "reference": getattr(context, "reference", None),
        "references": getattr(context, "references", None),
        "min_accuracy": getattr(context, "min_accuracy", None),
        "max_formats": getattr(context.space, "max_formats", None),
        "latency_band": context.latency_band(),  # what latency_band_s is, and its provenance
        "predictor": study.user_attrs.get("predictor"),  # the predictor-guided stage, if run
        "baseline": member_record(baseline, context).to_json() if baseline is not None else None,
        "members": [m.to_json() for m in members],
    }


def run_status(pareto: dict[str, Any]) -> tuple[str, str | None]:
    """(status, one line saying why) of a finished search: ``ok`` (a front; no line),
    ``no-feasible`` (trials completed, none fits the budget and constraints) or ``failed``
    (no trial completed)."""
    n_complete, n_trials = pareto["n_complete"], pareto["trials"]
    if n_complete == 0:
        first = " ".join(str(pareto.get("first_fail_reason") or "").split())
        return "failed", (f"no trial completed: all {n_trials} trials failed"
                          + (f" (first: {first})" if first else ""))
    if pareto["members"]:
        return "ok", None
    limits = f"the {pareto['budget_s'] * 1e3:g} ms budget"
    if pareto.get("ttft_budget_s") is not None:
        limits += f" and the {pareto['ttft_budget_s'] * 1e3:g} ms TTFT budget"
    if pareto.get("min_accuracy") is not None:
        limits += f" with val accuracy >= {pareto['min_accuracy']:.3f}"
    return "no-feasible", (f"no feasible candidate: none of the {n_complete} completed trials "
                           f"fits {limits} and every other constraint; try a looser budget or more "
                           "trials")


CSV_COLUMNS = ["trial", "accuracy", "accuracy_lo", "accuracy_hi", "test_accuracy", "latency_ms",
               "latency_lo_ms", "latency_hi_ms", "model_bytes", "peak_activation_bytes",
               "threads", "baseline", "params"]


def csv_columns(metric: str = "accuracy") -> list[str]:
    """``CSV_COLUMNS`` with the quality columns named after ``metric``."""
    return [c.replace("accuracy", metric) for c in CSV_COLUMNS]


def pareto_csv(pareto: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(csv_columns(pareto.get("metric", "accuracy")))
    for m in front_members(pareto):
        writer.writerow([m.trial, m.quality, *m.quality_interval, m.test_quality,
                         m.latency_s * 1e3, *(x * 1e3 for x in m.latency_band_s),
                         m.model_bytes, m.peak_activation_bytes, m.threads,
                         int(m.baseline), json.dumps(m.params, sort_keys=True)])
    return buf.getvalue()


def finetune_front(run: RunDir, study: optuna.Study, context, config, progress=None) -> int:
    """Fine-tune every front member for ``config.finetune_steps`` steps (evaluators that can;
    weights kept in ``RUN/finetuned``, reused on resume). Returns the steps used (0: none)."""
    steps = int(getattr(config, "finetune_steps", 0) or 0)
    finetune = getattr(context.evaluator, "finetune", None)
    if steps <= 0 or not callable(finetune):
        return 0
    context.evaluator.finetuned_dir = run.path / "finetuned"
    front = front_trials(study)
    for i, trial in enumerate(front):
        candidate = context.space.decode(trial.params)
        finetune(candidate, steps, progress=progress(i, len(front)) if progress else None)
    return steps


def write_results(run: RunDir, study: optuna.Study, context, config,
                  progress=None) -> dict[str, Any]:
    steps = finetune_front(run, study, context, config, progress)
    pareto = build_pareto(study, context, config)
    pareto["finetune_steps"] = steps
    run.write_json("pareto.json", pareto)
    run.write_text("pareto.csv", pareto_csv(pareto))
    return pareto
