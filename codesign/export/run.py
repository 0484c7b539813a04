"""``codesign export RUN_DIR``: every selected Pareto member to deployable, verified artifacts.

Per member, in ``RUN_DIR/export/trial-<N>/``:

* ``model.pte``: the subnet with its trained supernet weights, pruning masks baked in and BatchNorm
  folded, each layer at its searched precision (``plan.py``), lowered to XNNPACK; written only when
  XNNPACK expresses every layer. Verified on the runtime (``verify.py``).
* ``model.pt2``: the ``torch.export`` program the ``.pte`` was lowered from (quantized layers as
  quantize/dequantize ops). For a ``codesign`` member XNNPACK cannot express, the float graph with
  every weight on its layer's quantization grid and pruned; activation precisions are then only in
  ``kernels.json``, and the manifest says so.
* ``kernels.json`` (``codesign`` back-end): per layer the kernel contract (``plan.kernel_spec``).
* ``manifest.json``: what was built, how it was checked, what it measured, file hashes. The
  host's measurement of the ``.pte`` sits beside the host's own prediction of it
  (``host_latency_s_predicted``, ``host_check.py``); ``latency_s_predicted`` is the target's.

The accuracy of the exported program is measured on a twin lowered by the same pipeline at the
task's evaluation shape (the shipped program's input is the deploy shape; the task's images are
the evaluation shape). One member failing is reported with its reason; the others go on.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from codesign.export.host_check import host_prediction, target_prediction
from codesign.export.plan import kernel_spec, plan_layers, refusal_reason, unexpressible
from codesign.pareto_member import ParetoMember, front_members
from codesign.run_dir import RUN_FILE, atomic_write_json
from codesign.userinput import BadInput

if TYPE_CHECKING:  # annotations only
    from codesign.cost_models.backends import BackendSpec
    from codesign.cost_models.devices import DeviceSpec
    from codesign.search_spaces.base import SearchSpace

FORMATS = ("pte", "pt2")
NUMBA = "numba"  # the project's own kernels run the member (codesign back-end; numba_export.py)
CALIBRATION_IMAGES = 32
CHECK_IMAGES = 4


@dataclass
class MemberResult:
    trial: int
    directory: Path
    status: str  # "exported", "pt2-only" (XNNPACK cannot express a layer) or "failed"
    reason: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


# ------------------------------------------------------------------------------ arguments
def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip() for f in str(text).split(",") if f.strip()))
    if formats == (NUMBA,):
        return formats
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise BadInput(f"--format {text!r}: expected a comma list of {', '.join(FORMATS)}, "
                       f"or {NUMBA} alone")
    return formats


def select_members(members: list[ParetoMember], spec: str) -> list[ParetoMember]:
    """``all`` or a comma list of trial numbers (the ``trial`` column of the Pareto table)."""
    if str(spec).strip() == "all":
        return list(members)
    by_trial = {int(m.trial): m for m in members}
    chosen = []
    for part in str(spec).split(","):
        try:
            trial = int(part)
        except ValueError:
            raise BadInput(f"--members {spec!r}: expected 'all' or trial numbers like 3,17") from None
        if trial not in by_trial:
            raise BadInput(f"--members: trial {trial} is not on the Pareto front; members: "
                           f"{', '.join(str(t) for t in sorted(by_trial)) or 'none'}")
        chosen.append(by_trial[trial])
    return chosen


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    run_dir = Path(run_dir)
    files = {}
    for name in (RUN_FILE, "pareto.json"):
        path = run_dir / name
        if not path.is_file():
            raise BadInput(f"{run_dir}: not a finished codesign run (no {name})")
        try:
            files[name] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}: not valid JSON: {exc}") from None
    return files[RUN_FILE], files["pareto.json"]


def open_run_specs(run_dir: Path, *, evaluator_given: bool = False
                   ) -> tuple[dict[str, Any], dict[str, Any], DeviceSpec, BackendSpec]:
    """(identity, pareto, device, back-end) of a finished run, for export.

    Raises:
        BadInput: not a finished run, or one scored by a user ``--evaluator`` (export builds
            members with the built-in supernet's trained weights, which that evaluator did not
            score) unless the caller brings the evaluator that did.
    """
    from codesign.cost_models.backends import backend_for
    from codesign.cost_models.devices import load_device

    identity, pareto = load_run(run_dir)
    if identity.get("evaluator") and not evaluator_given:
        raise BadInput(f"{run_dir}: the run scored its candidates with --evaluator "
                       f"{identity['evaluator']}; export builds them with the supernet's "
                       "trained weights, which that evaluator did not score")
    device = load_device(identity["device"])
    return identity, pareto, device, backend_for(device, identity["backend"])


def check_space_hash(run_dir: Path, identity: dict[str, Any], space: SearchSpace) -> None:
    """BadInput when the space loaded now is not the config the run searched (its hash)."""
    sha = getattr(getattr(space, "config", None), "sha256", "")  # "" for a user's space
    if sha and identity.get("space_sha256") not in (None, sha):
        raise BadInput(f"{run_dir}: the run's space_sha256 {identity['space_sha256']} "
                       f"differs from the space now loaded ({sha}); export would build "
                       "other models than the ones searched")


# ------------------------------------------------------------------------------ helpers
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_pt2(path: Path, exported: torch.export.ExportedProgram) -> None:
    tmp = path.with_name(f".tmp-{path.name}")  # torch.export.save wants the .pt2 suffix
    torch.export.save(exported, str(tmp))
    os.replace(tmp, path)


def _on_grid(model: torch.nn.Module, ops) -> torch.nn.Module:
    """Float copy of ``model`` with every weighted layer's weight on its quantization grid."""
    import copy

    from codesign.evaluation.fake_quant import quantize_weight

    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    for op in ops:
        module = modules.get(op.name)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and op.quant.weight_bits < 32:
            with torch.no_grad():
                weight.copy_(quantize_weight(weight, op.quant))
    return model


@dataclass
class RunSpecs:
    """What every member of one run shares, whatever its space: the run's record, the specs,
    XNNPACK's capability table (what a .pte can express), the space, and the thread cap."""

    identity: dict[str, Any]  # run.json
    pareto: dict[str, Any]  # pareto.json (its members: codesign.pareto_member.front_members)
    device: DeviceSpec
    backend: BackendSpec  # the back-end the run searched
    xnnpack: BackendSpec  # what ExecuTorch's XNNPACK back-end can express (a .pte's limits)
    space: SearchSpace
    threads_cap: int


@dataclass
class _Run(RunSpecs):
    """A CNN run: the specs, and the evaluator whose supernet builds its members."""

    evaluator: Any = None

    @classmethod
    def open(cls, run_dir: Path, evaluator=None) -> "_Run":
        from codesign.cost_models.backends import load_backend
        from codesign.context import load_space
        from codesign.evaluation.supernet_evaluator import SupernetEvaluator
        from codesign.search_spaces.mbconv import MBConvSpace

        identity, pareto, device, backend = open_run_specs(
            run_dir, evaluator_given=evaluator is not None)
        if evaluator is not None:
            space = evaluator.space
        else:
            options = identity.get("options", {})
            pinned = options.get("threads")  # search --threads: the members' only thread count
            space = load_space(identity["space"], backend, device,
                               (int(pinned),) if pinned else None,
                               max_formats=int(options.get("max_formats", 3)))
            # the members are slices of an MBConv supernet: another space has none to build from
            if not isinstance(space, MBConvSpace):
                raise BadInput(f"{run_dir}: space {identity['space']!r} has no trained weights "
                               "to export (export supports the built-in mbconv space)")
            from codesign.task_option import bind_run_task

            space = bind_run_task(run_dir, identity, space)  # --task: the same data again
            evaluator = SupernetEvaluator(space)  # the space file's seed, as the search used
        # this pipeline reads the supernet evaluator's weights, task, seed and fine-tuned weights
        if not isinstance(evaluator, SupernetEvaluator):
            raise BadInput(f"{run_dir}: the evaluator cannot build deployable modules (the "
                           f"supernet exporter takes a SupernetEvaluator, got "
                           f"{type(evaluator).__name__})")
        if (run_dir / "finetuned").is_dir():
            evaluator.finetuned_dir = run_dir / "finetuned"  # members ship fine-tuned
        check_space_hash(run_dir, identity, space)
        return cls(identity, pareto, device, backend, load_backend("xnnpack"), space,
                   os.cpu_count() or 1, evaluator)

    def task_images(self, hw: Sequence[int]):
        from codesign.search_spaces.tasks import load_task

        return load_task(self.evaluator.train.task, tuple(hw), self.evaluator.seed)


# ------------------------------------------------------------------------------ one member
def _calibration(data, n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randperm(len(data.x_train), generator=gen)[:n]
    return [data.x_train[i:i + 1] for i in idx]


def _lower_and_check(run: _Run, model, plans, ops, shape, timer) -> tuple[Any, bytes]:
    from codesign.export.program import build_program
    from codesign.measure.pte import lower_exported

    data = run.task_images(shape[2:])
    built = build_program(model, plans, data.x_test[:1], _calibration(data, CALIBRATION_IMAGES,
                                                                       run.evaluator.seed),
                          [op.name for op in ops])
    with timer("lower"):
        pte = lower_exported(built.exported)
    return built, pte


def export_member(run: _Run, member: ParetoMember, out: Path, formats: Sequence[str],
                  log: Callable[[str], None]) -> MemberResult:
    from codesign.export.verify import check_outputs, program_accuracy
    from codesign.measure.host_runner import time_pte
    from codesign.measure.pte import delegate_backends, planned_memory, undelegated_operators
    from codesign.cost_models.tile_resolution import apply_tuned_tiles, resolve_tile

    trial = int(member.trial)
    if tuple(formats) == (NUMBA,):
        from codesign.export.numba_export import export_numba

        start = time.perf_counter()
        manifest, files, status, reason = export_numba(run, member, out / NUMBA, log)
        return finish_member(trial, out / NUMBA, manifest, files, status, reason, start, log)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timer(step: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings[step] = timings.get(step, 0.0) + time.perf_counter() - t0

    start = time.perf_counter()
    space = run.space
    candidate = space.decode(member.params)
    deploy_shape = tuple(space.deploy_input_shape)
    eval_shape = tuple(space.eval_input_shape)
    ops = apply_tuned_tiles(space.to_ops(candidate), run.device, run.backend)
    plans = plan_layers(ops, run.xnnpack)
    bad = unexpressible(plans)
    model = run.evaluator.build_deployable(candidate)
    threads = max(1, min(int(member.threads or 1), run.threads_cap))
    files: dict[str, Path] = {}
    manifest: dict[str, Any] = {
        "trial": trial, "params": member.params, "device": run.identity["device"],
        "backend": run.identity["backend"], "budget_s": run.pareto.get("budget_s"),
        "deploy_input_shape": list(deploy_shape), "eval_input_shape": list(eval_shape),
        "latency_s_predicted": member.latency_s,
        "latency_band_s_predicted": (None if member.latency_band_s is None
                                     else list(member.latency_band_s)),
        "target_prediction": target_prediction(run.identity, run.device, run.backend, candidate),
        # the accuracy keys hold accuracy only (another metric's value is not one)
        "accuracy_search_val": member.quality if member.metric == "accuracy" else None,
        "accuracy_search_test": member.test_quality if member.metric == "accuracy" else None,
        "memory": {"model_bytes_predicted": member.model_bytes,
                   "peak_activation_bytes_predicted": member.peak_activation_bytes},
        "precision_per_layer": [p.as_json() for p in plans],
        "threads": threads,
    }
    if run.backend.project_kernels:
        layer_lat = {layer["name"]: layer["latency_s"] for layer in member.layers or []}
        tiles = {op.name: resolve_tile(run.device, op, run.backend) for op in ops}
        files["kernels.json"] = out / "kernels.json"
        atomic_write_json(files["kernels.json"], {"trial": trial, "device": run.device.name,
                                                  "layers": kernel_spec(ops, tiles, layer_lat)})
    status, reason = "exported", ""
    if bad:
        status = "pt2-only"
        reason = refusal_reason(bad)
        manifest["pte"] = None
        if "pt2" in formats:
            eval_ops = space.to_ops(candidate, eval_shape)
            grid = _on_grid(model, eval_ops)
            with timer("pt2"):
                _save_pt2(out / "model.pt2", torch.export.export(grid, (torch.zeros(deploy_shape),)))
            files["model.pt2"] = out / "model.pt2"
            manifest["pt2_semantics"] = ("float graph; weights pruned and on each layer's "
                                         "quantization grid; activation precisions and kernels "
                                         "are specified in kernels.json")
    else:
        built, pte = _lower_and_check(run, model, plans, ops, deploy_shape, timer)
        if "pt2" in formats:
            with timer("pt2"):
                _save_pt2(out / "model.pt2", built.exported)
            files["model.pt2"] = out / "model.pt2"
            manifest["pt2_semantics"] = "the torch.export program model.pte was lowered from"
        if "pte" in formats:
            _write_bytes(out / "model.pte", pte)
            files["model.pte"] = out / "model.pte"
            data = run.task_images(deploy_shape[2:])
            reference = built.reference if built.quantized else model
            with timer("verify"):
                check = check_outputs(pte, reference, [data.x_test[i:i + 1]
                                                       for i in range(CHECK_IMAGES)],
                                      quantized=built.quantized, output_scale=built.output_scale)
            with timer("time"):
                meas = time_pte(pte, (data.x_test[:1],), threads=threads, warmup=5, repeats=30,
                                name=f"trial-{trial}", precision="mixed")
            if eval_shape == deploy_shape:
                twin = pte
            else:
                _, twin = _lower_and_check(run, model, plans, space.to_ops(candidate, eval_shape),
                                           eval_shape, timer)
            test = run.task_images(eval_shape[2:])
            with timer("accuracy"):
                acc = program_accuracy(twin, test.x_test, test.y_test)
            mem = planned_memory(pte)
            manifest.update(host_prediction(ops, threads))
            manifest.update({
                "host_latency_s_measured": meas.p50_s, "host_latency_p90_s": meas.p90_s,
                "host_first_run_s": meas.first_run_s, "host_load_s": meas.load_s,
                "host_latency_repeats": meas.n_repeats,
                "host_loadavg_1m": float(dict(meas.extra).get("loadavg_1m", "nan")),
                "max_abs_diff": check.max_abs_diff, "output_check": check.as_json(),
                "accuracy_exported": acc,
                "accuracy_exported_note": (f"program lowered the same way at the evaluation "
                                           f"shape {list(eval_shape)}, {len(test.y_test)} test "
                                           "images, one at a time"),
                "delegates": list(delegate_backends(pte)),
                "undelegated_operators": list(undelegated_operators(pte)),
            })
            manifest["memory"].update({"pte_bytes": len(pte),
                                       "planned_constant_bytes": mem.constant_bytes,
                                       "planned_non_constant_bytes": mem.non_constant_bytes})
            if not check.ok:
                status = "failed"
                reason = (f"runtime outputs differ from the reference: max |diff| "
                          f"{check.max_abs_diff:.3g} > atol {check.atol:.3g} (+rtol {check.rtol})")
    manifest["seconds"] = timings
    return finish_member(trial, out, manifest, files, status, reason, start, log)


def finish_member(trial: int, out: Path, manifest: dict[str, Any], files: dict[str, Path],
                  status: str, reason: str, started: float, log: Callable[[str], None]
                  ) -> MemberResult:
    """Seal a member's export: status, wall time and every file's sha256 into its manifest,
    written atomically, one log line."""
    manifest["status"], manifest["reason"] = status, reason
    manifest["export_seconds"] = time.perf_counter() - started
    manifest["sha256"] = {name: _sha256(path) for name, path in files.items()}
    atomic_write_json(out / "manifest.json", manifest)
    log(f"trial {trial}: {status}{' - ' + reason if reason else ''}")
    return MemberResult(trial, out, status, reason, manifest)


# ------------------------------------------------------------------------------ a run
def export_run(run_dir: Path, *, formats: Sequence[str] = FORMATS, members: str = "all",
               evaluator=None, log: Callable[[str], None] = lambda _: None
               ) -> list[MemberResult]:
    """Export the selected members of ``run_dir``; a failing member does not stop the others."""
    from codesign.registry import EXPORTERS, space_entry

    run_dir = Path(run_dir)
    # the space's registered exporter; a MODULE:FACTORY space goes through the supernet
    # pipeline, which refuses a space without trained weights
    entry = space_entry(load_run(run_dir)[0].get("space", ""))
    if entry is not None and entry.exporter is None:
        raise BadInput(f"{run_dir}: space {entry.name!r} has no trained weights to export "
                       "(no exporter registered for it)")
    exporter = EXPORTERS.get(entry.exporter if entry is not None else "supernet")
    run, export_one = exporter.open(run_dir, evaluator), exporter.export_member
    if NUMBA in formats and not isinstance(run, _Run):
        raise BadInput(f"--format {NUMBA}: only MBConv members (the supernet exporter) have a "
                       "numba program builder")
    if NUMBA in formats and not getattr(run.backend, "project_kernels", False):
        raise BadInput(f"--format {NUMBA}: the run searched back-end {run.backend.name!r}; "
                       "numba programs run members of the codesign back-end (its kernels)")
    chosen = select_members(front_members(run.pareto), members)
    torch.set_num_threads(1)
    results = []
    for member in chosen:
        out = run_dir / "export" / f"trial-{int(member.trial)}"
        try:
            results.append(export_one(run, member, out, formats, log))
        except Exception as exc:  # reported with its reason; the other members go on
            out.mkdir(parents=True, exist_ok=True)
            reason = f"{type(exc).__name__}: {exc}"
            (out / "error.log").write_text(traceback.format_exc())
            atomic_write_json(out / "manifest.json", {"trial": int(member.trial),
                                                      "params": member.params,
                                                      "status": "failed", "reason": reason})
            log(f"trial {member.trial}: failed - {reason}")
            results.append(MemberResult(int(member.trial), out, "failed", reason))
    (run_dir / "export").mkdir(exist_ok=True)
    atomic_write_json(run_dir / "export" / "summary.json", {"members": [
        {"trial": r.trial, "status": r.status, "reason": r.reason, "dir": str(r.directory),
         **{k: r.manifest.get(k) for k in ("latency_s_predicted", "host_latency_s_predicted",
                                           "host_latency_s_measured",
                                           "max_abs_diff", "max_diff_steps", "top1_agreement",
                                           "accuracy_search_test", "accuracy_exported",
                                           "export_seconds")}}
        for r in results]})
    return results


def format_results(results: Sequence[MemberResult]) -> str:
    """The export table. The host's prediction and measurement of the same program, at the
    same thread count, side by side (their ratio checks the cost model); the target device's
    prediction apart, under the device's name, at its own thread count."""
    def ms(v):
        return f"{v * 1e3:.2f}" if isinstance(v, (int, float)) else "-"

    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    target = next((r.manifest["device"] for r in results if r.manifest.get("device")), "target")
    numba = any(r.manifest.get("format") == NUMBA for r in results)
    groups = [("host: this machine, " + ("numba kernels" if numba else "XNNPACK"), (("thr", 3), ("pred ms", 8), ("meas ms", 8),
                                                ("meas/pred", 9))),
              (f"target: {target}, as searched", (("thr", 3), ("pred ms", 8)))]
    widths = [max(len(label), sum(w for _, w in cols) + len(cols) - 1) for label, cols in groups]

    def section(cells, cols, width):
        return " ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)).rjust(width)

    lead = f"{'trial':>5}  {'status':<9}"
    tail = f"{'max|d|':>9} {'acc test':>8} {'acc pte':>8} {'pte KiB':>8}  reason"
    lines = [" " * len(lead) + " | " + " | ".join(label.ljust(w) for (label, _), w
                                                  in zip(groups, widths)) + " |",
             lead + " | " + " | ".join(section([name for name, _ in cols], cols, w)
                                       for (_, cols), w in zip(groups, widths)) + " | " + tail]
    for r in results:
        m = r.manifest
        kib = m.get("memory", {}).get("pte_bytes")
        pred, meas = m.get("host_latency_s_predicted"), m.get("host_latency_s_measured")
        ratio = meas / pred if isinstance(pred, float) and isinstance(meas, float) else None
        host = [num(m.get("threads") if meas is not None else None, "d"), ms(pred), ms(meas),
                num(ratio, ".2f")]
        on_target = [num((m.get("target_prediction") or {}).get("threads"), "d"),
                     ms(m.get("latency_s_predicted"))]
        cells = " | ".join(section(c, cols, w) for c, (_, cols), w
                           in zip((host, on_target), groups, widths))
        lines.append(f"{r.trial:>5}  {r.status:<9} | {cells} | "
                     f"{num(m.get('max_abs_diff'), '.2e'):>9} "
                     f"{num(m.get('accuracy_search_test'), '.3f'):>8} "
                     f"{num(m.get('accuracy_exported'), '.3f'):>8} "
                     f"{num(kib / 1024 if kib else None, '.0f'):>8}  {r.reason[:100]}")
    return "\n".join(line.rstrip() for line in lines)
