"""A sweep's results: one ``SweepRow`` per run (a line of sweep.json), and the summary of them
(``summary.csv`` and the table ``codesign sweep`` prints). ``codesign.sweep`` runs the sweep.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.csv"


@dataclass
class SweepRow:
    """One line of sweep.json."""

    device: str
    budget_s: float
    run_dir: str
    n_pareto: int = 0
    status: str = "failed"  # "ok", "no-feasible" (no trial fits the budget) or "failed"
    reason: str | None = None
    budget: str = ""
    trials: int = 0
    n_complete: int = 0
    n_failed: int = 0
    n_feasible: int = 0
    metric: str = "accuracy"  # the evaluator's quality metric (perplexity for transformers)
    best_quality: float | None = None  # the best front member's, by the metric's direction
    best_latency_s: float | None = None
    elapsed_s: float = 0.0
    attempts: int = 0
    node: str | None = None


@dataclass
class SweepResult:
    out: Path
    rows: list[SweepRow] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(r.status == "failed" for r in self.rows)

    @property
    def n_no_feasible(self) -> int:
        return sum(r.status == "no-feasible" for r in self.rows)


# ------------------------------------------------------------------ the summary
SUMMARY_COLUMNS = ["device", "budget", "budget_ms", "status", "trials", "failed_trials",
                   "feasible", "n_pareto", "metric", "best_quality", "best_latency_ms", "attempts",
                   "run_dir", "reason"]


def _summary_cells(row: SweepRow) -> list[str]:
    def num(value, fmt):
        return "" if value is None else format(value, fmt)

    return [row.device, row.budget, f"{row.budget_s * 1e3:g}", row.status, str(row.trials),
            str(row.n_failed), str(row.n_feasible), str(row.n_pareto),
            row.metric, num(row.best_quality, ".4g"),
            num(None if row.best_latency_s is None else row.best_latency_s * 1e3, ".2f"),
            str(row.attempts), row.run_dir, row.reason or ""]


def summary_csv(rows: list[SweepRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(_summary_cells(r) for r in rows)
    return buf.getvalue()


def format_summary(result: SweepResult) -> str:
    from codesign.report_tables import _table, metric_label

    metric = result.rows[0].metric if result.rows else "accuracy"
    headers = ["run", "status", "trials", "failed", "feasible", "front",
               f"best val {metric_label({'metric': metric})[0]}", "its ms", "attempts"]
    rows = []
    for r in result.rows:
        cells = dict(zip(SUMMARY_COLUMNS, _summary_cells(r)))  # by name: the table's order
        rows.append([Path(r.run_dir).name, *(cells[c] for c in (  # is not the CSV's
            "status", "trials", "failed_trials", "feasible", "n_pareto", "best_quality",
            "best_latency_ms", "attempts"))])
    lines = [_table(headers, rows, right={2, 3, 4, 5, 6, 7, 8})]
    for r in result.rows:
        if r.status != "ok":
            lines.append(f"{Path(r.run_dir).name} {r.status}: {r.reason}")
    n_ok = sum(r.status == "ok" for r in result.rows)
    lines.append(f"{n_ok} of {len(result.rows)} runs ok in "
                 f"{result.elapsed_s:.0f} s; {result.out / SWEEP_FILE}, "
                 f"{result.out / SUMMARY_FILE}")
    return "\n".join(lines)
