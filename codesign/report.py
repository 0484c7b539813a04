"""``codesign report RUN_DIR``: a finished (or interrupted) run, readable at a glance.

Reads only the run directory — ``pareto.json`` for the front and its per-layer breakdowns, the
Optuna journal for every other trial — so it needs neither the device file nor the evaluator.
Writes ``pareto.png`` (``codesign.report_plot``) and, with ``html=True``, ``pareto.html``
(``optuna.visualization.plot_pareto_front``, plotly). ``--member K`` answers "why is this model
slow on this device": each layer's share of the predicted latency, what bounds it, its bits,
sparsity and tile.
"""
from __future__ import annotations

import importlib.util
import json
import math
import shlex
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from codesign.evaluation.base import metric_keys
from codesign.pareto_member import ParetoMember, baseline_member, front_members
from codesign.report_tables import _si, _table, format_pareto, metric_label
from codesign.run_dir import JOURNAL_FILE, RUN_FILE, STUDY_NAME
from codesign.userinput import BadInput

PNG_FILE = "pareto.png"
HTML_FILE = "pareto.html"


@dataclass(frozen=True)
class TrialPoint:
    """One completed trial as the plot draws it (latencies in seconds)."""

    number: int
    accuracy: float
    accuracy_interval: tuple[float, float]
    latency_s: float
    latency_band_s: tuple[float, float]
    model_bytes: float
    feasible: bool
    on_front: bool
    baseline: bool


@dataclass(frozen=True)
class RunReport:
    """What a run directory holds, read once."""

    path: Path
    pareto: dict[str, Any]
    points: tuple[TrialPoint, ...]  # every COMPLETE trial (the front's members if no journal)
    study: optuna.Study | None


def load_pareto(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(f"{run_dir}: no such run directory")
    file = run_dir / "pareto.json"
    if not file.is_file():
        hint = (f"; it has a {RUN_FILE}: finish it with codesign search ... --resume {run_dir}"
                if (run_dir / RUN_FILE).is_file() else "")
        raise BadInput(f"{run_dir}: not a finished codesign run (no pareto.json){hint}")
    try:
        pareto = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{file}: unreadable: {exc}") from None
    missing = [k for k in ("device", "backend", "budget_s", "members") if k not in
               (pareto if isinstance(pareto, dict) else {})]
    if missing:
        raise BadInput(f"{file}: not a codesign pareto.json (missing {', '.join(missing)})")
    return pareto


def load_study(run_dir: Path) -> optuna.Study | None:
    """The run's study, read-only; None if the run has no journal."""
    journal = Path(run_dir) / JOURNAL_FILE
    if not journal.is_file():
        return None
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        return optuna.load_study(study_name=STUDY_NAME, storage=storage)
    except Exception as exc:  # damaged beyond a torn last record (which optuna skips)
        raise BadInput(f"{journal}: cannot be read by Optuna: {type(exc).__name__}: {exc}") \
            from None


def _point(trial: FrozenTrial, front: set[int], metric: str = "accuracy") -> TrialPoint:
    attrs = trial.user_attrs
    latency = float(attrs.get("latency_s", trial.values[1]))
    return TrialPoint(
        number=trial.number, accuracy=float(trial.values[0]),
        accuracy_interval=tuple(attrs.get(metric_keys(metric)["interval"],
                                          (trial.values[0],) * 2)),
        latency_s=latency, latency_band_s=tuple(attrs.get("latency_band_s", (latency,) * 2)),
        model_bytes=float(attrs.get("model_bytes", trial.values[2])),
        feasible=all(v <= 0 for v in trial.constraints.values()),
        on_front=trial.number in front, baseline=bool(attrs.get("baseline", False)))


def _member_point(m: ParetoMember) -> TrialPoint:
    return TrialPoint(m.trial, m.quality, tuple(m.quality_interval), m.latency_s,
                      tuple(m.latency_band_s), float(m.model_bytes), True, True,
                      bool(m.baseline))


def load_run(run_dir: Path) -> RunReport:
    pareto = load_pareto(run_dir)
    study = load_study(run_dir)
    members = {m.trial: m for m in front_members(pareto)}
    metric = pareto.get("metric", "accuracy")
    if study is not None:
        # a front member is drawn with its pareto.json quality (fine-tuned members were scored
        # again after the search), the others with their trial's
        points = tuple(_member_point(members[t.number]) if t.number in members
                       else _point(t, set(members), metric)
                       for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    else:
        points = tuple(_member_point(m) for m in members.values())
    return RunReport(Path(run_dir), pareto, points, study)


def member_layers(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A member's ``layers`` (or ``prefill_layers``) with ``share`` (fraction of the summed
    layer latency) added."""
    total = sum(layer["latency_s"] for layer in layers)
    return [{**layer, "share": layer["latency_s"] / total if total > 0 else math.nan}
            for layer in layers]


def _shares(layers: list[dict[str, Any]], key: str) -> str:
    by: dict[str, float] = defaultdict(float)
    for layer in layers:
        by[str(layer[key])] += layer["share"]
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))


def find_member(pareto: dict[str, Any], number: int) -> ParetoMember:
    candidates = front_members(pareto)
    base = baseline_member(pareto)
    if base is not None:
        candidates.append(base)
    for m in candidates:
        if m.trial == number:
            return m
    valid = ", ".join(str(m.trial) for m in candidates) or "none"
    raise BadInput(f"--member {number}: trial {number} is not on the front (nor the baseline); "
                   f"its per-layer breakdown is not in pareto.json; valid: {valid}")


def format_member(pareto: dict[str, Any], number: int, *, top: int = 5) -> str:
    """Per-layer breakdown of one member: where its predicted latency goes, and why."""
    m = find_member(pareto, number)
    layers = member_layers(m.layers)
    rows = [[layer["name"], layer["kind"], f"{layer['latency_s'] * 1e3:.4f}",
             f"{layer['share'] * 100:.1f}", layer["bound"],
             f"w{layer['weight_bits']}a{layer['act_bits']}", str(layer["sparsity"]),
             str(layer["tile"]), _si(layer["flops"], "FLOP"), _si(layer["bytes"], "B")]
            for layer in layers]
    total = sum(layer["latency_s"] for layer in layers)
    lo, hi = m.latency_band_s
    short, _, _ = metric_label(pareto)
    alo, ahi = m.quality_interval
    head = (f"trial {m.trial}{' (baseline)' if m.baseline else ''} on "
            f"{pareto['device']} / {pareto['backend']}: {m.latency_s * 1e3:.3f} ms predicted "
            f"[{lo * 1e3:.3f}, {hi * 1e3:.3f}] (budget {pareto['budget_s'] * 1e3:g} ms), "
            f"val {short} {m.quality:.3f} [{alo:.3f}, {ahi:.3f}], "
            f"{m.model_bytes / 1e6:.2f} MB, "
            f"{m.threads if m.threads is not None else '?'} thread(s)")
    if m.ttft_s is not None:
        head += (f"\n{m.latency_s * 1e3:.3f} ms per decoded token (the decode breakdown "
                 f"below); time to first token {m.ttft_s * 1e3:.3f} ms (prefill breakdown "
                 "after it)")
    if m.memory_bytes is not None:
        head += (f"\nresident {m.memory_bytes / 1e6:.2f} MB (weights + whole KV cache) of "
                 f"a {m.memory_share_bytes / 1e9:.2f} GB RAM share")
    table = _table(["layer", "kind", "ms", "share %", "bound", "bits", "sparsity", "tile",
                    "flops", "bytes"], rows, right={2, 3, 8, 9})
    slowest = sorted(layers, key=lambda layer: -layer["latency_s"])[:top]
    foot = [f"total: {total * 1e3:.3f} ms over {len(layers)} kernels = "
            f"{sum(layer['share'] for layer in layers) * 100:.1f}%",
            f"time by bound: {_shares(layers, 'bound')}",
            f"time by kind: {_shares(layers, 'kind')}",
            "slowest: " + ", ".join(f"{layer['name']} {layer['share']:.1%} ({layer['bound']})"
                                    for layer in slowest)]
    if m.prefill_layers:
        foot += ["", _phase_table("prefill (time to first token)", m.prefill_layers, top)]
    return "\n".join([head, table, *foot])


def _phase_table(title: str, layer_rows: list[dict[str, Any]], top: int) -> str:
    """A second phase's per-layer breakdown (the transformer's prefill)."""
    layers = member_layers(layer_rows)
    rows = [[layer["name"], layer["kind"], f"{layer['latency_s'] * 1e3:.4f}",
             f"{layer['share'] * 100:.1f}", layer["bound"],
             f"w{layer['weight_bits']}a{layer['act_bits']}", str(layer["sparsity"])]
            for layer in layers]
    total = sum(layer["latency_s"] for layer in layers)
    slowest = sorted(layers, key=lambda layer: -layer["latency_s"])[:top]
    return "\n".join([f"{title}: {total * 1e3:.3f} ms over {len(layers)} kernels",
                      _table(["layer", "kind", "ms", "share %", "bound", "bits", "sparsity"],
                             rows, right={2, 3}),
                      f"time by bound: {_shares(layers, 'bound')}",
                      "slowest: " + ", ".join(f"{layer['name']} {layer['share']:.1%} "
                                              f"({layer['bound']})" for layer in slowest)])


def dashboard_command(run_dir: Path) -> str:
    """The command that opens the run's journal in optuna-dashboard."""
    return f"optuna-dashboard {shlex.quote(str(Path(run_dir) / JOURNAL_FILE))}"


def write_html(run: RunReport) -> Path:
    """``pareto.html``: Optuna's interactive Pareto-front plot (plotly, self-contained)."""
    if importlib.util.find_spec("plotly") is None:  # optuna.visualization draws with it
        raise BadInput("--html needs plotly: pip install plotly")
    if run.study is None:
        raise BadInput(f"--html needs the run's Optuna storage ({JOURNAL_FILE}); "
                       f"{run.path} has none")
    from optuna.visualization import plot_pareto_front

    pareto = run.pareto
    _, metric, note = metric_label(pareto)
    fig = plot_pareto_front(run.study, targets=lambda t: (t.values[1] * 1e3, t.values[0]),
                            target_names=[f"predicted latency on {pareto['device']} (ms)",
                                          f"validation {metric}{note}"])
    budget_ms = pareto["budget_s"] * 1e3
    fig.add_vline(x=budget_ms, line_dash="dash", line_color="firebrick",
                  annotation_text=f"budget {budget_ms:g} ms")
    fig.update_layout(title=f"{pareto['device']} / {pareto['backend']}: {metric} vs latency "
                            f"(front over {metric}, latency and model size; grey: over budget)")
    path = run.path / HTML_FILE
    fig.write_html(str(path), include_plotlyjs=True)
    return path


def report(run_dir: Path, *, member: int | None = None, html: bool = False) -> str:
    """Everything ``codesign report`` prints; writes pareto.png (and pareto.html)."""
    from codesign.report_plot import plot_pareto

    run = load_run(Path(run_dir))
    if member is not None:
        find_member(run.pareto, member)  # bad input before any file is written
    png = plot_pareto(run.pareto, run.points, run.path / PNG_FILE)
    lines = [format_pareto(run.pareto, run_dir=run.path)]
    if member is not None:
        lines += ["", format_member(run.pareto, member)]
    lines += ["", f"plot: {png}"]
    if html:
        lines.append(f"interactive plot: {write_html(run)}")
    if run.study is not None:
        lines.append(f"every trial, interactively: {dashboard_command(run.path)}  "
                     "(pip install optuna-dashboard)")
    return "\n".join(lines)
