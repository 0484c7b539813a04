"""``pareto.png``: accuracy (or the run's metric, e.g. perplexity) vs predicted latency for every
completed trial of a run.

Each trial is a point with its accuracy interval (vertical error bar) and latency band
(horizontal error bar); the budget is a vertical line with the over-budget side shaded; feasible
trials, trials over the budget, the Pareto front (non-dominated in accuracy, latency and model
size, so its 2-D projection need not be monotone) and the baseline are drawn differently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
import numpy as np  # noqa: E402

from codesign.report_tables import input_shapes, metric_label, shapes_note  # noqa: E402

FIG_SIZE_IN = (10.0, 6.5)
DPI = 150
PNG_SIZE_PX = (int(FIG_SIZE_IN[0] * DPI), int(FIG_SIZE_IN[1] * DPI))  # (width, height)

_STYLE = {  # what: (marker, colour, size, error-bar alpha, label)
    "over": ("x", "#9a9a9a", 28, 0.15, "over budget"),
    "feasible": ("o", "#4c78a8", 26, 0.15, "within budget"),
    "front": ("D", "#e45756", 70, 0.90, "Pareto front (accuracy, latency, size)"),
}


def _errorbars(ax, points, color: str, alpha: float) -> None:
    x = np.array([p.latency_s for p in points]) * 1e3
    y = np.array([p.accuracy for p in points])
    xerr = np.abs(np.array([[p.latency_s - p.latency_band_s[0], p.latency_band_s[1] - p.latency_s]
                            for p in points]).T) * 1e3
    yerr = np.abs(np.array([[p.accuracy - p.accuracy_interval[0],
                             p.accuracy_interval[1] - p.accuracy] for p in points]).T)
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor=color, alpha=alpha,
                elinewidth=1.0, capsize=2, zorder=2)


def plot_pareto(pareto: dict[str, Any], points: Sequence, path: Path) -> Path:
    """Draw ``points`` (``codesign.report.TrialPoint``) with ``pareto``'s budget and labels.

    The right-hand panel holds the legend and the front as a table, so nothing covers the data.
    Returns ``path``; the image is ``PNG_SIZE_PX`` pixels.
    """
    budget_ms = pareto["budget_s"] * 1e3
    short, metric, note = metric_label(pareto)
    groups = {"over": [p for p in points if not p.feasible],
              "feasible": [p for p in points if p.feasible and not p.on_front],
              "front": sorted((p for p in points if p.on_front), key=lambda p: p.latency_s)}
    fig, (ax, side) = plt.subplots(1, 2, figsize=FIG_SIZE_IN, dpi=DPI,
                                   gridspec_kw={"width_ratios": [3.2, 1]})
    try:
        for key, group in groups.items():
            if not group:
                continue
            marker, color, size, alpha, label = _STYLE[key]
            label = label.replace("accuracy", metric)
            _errorbars(ax, group, color, alpha)
            edge = {"edgecolors": "black", "linewidths": 0.6} if key == "front" else {}
            ax.scatter([p.latency_s * 1e3 for p in group], [p.accuracy for p in group],
                       marker=marker, s=size, color=color, label=f"{label} ({len(group)})",
                       zorder=4 if key == "front" else 3, **edge)
        base = [p for p in points if p.baseline]
        if base:
            ax.scatter([p.latency_s * 1e3 for p in base], [p.accuracy for p in base], marker="*",
                       s=220, facecolors="none", edgecolors="#f58518", linewidths=1.5, zorder=6,
                       label="baseline")
        right = max([budget_ms * 1.15] + [p.latency_band_s[1] * 1e3 * 1.03 for p in points])
        ax.set_xlim(0, right)
        ax.axvline(budget_ms, color="firebrick", linestyle="--", linewidth=1.5, zorder=1,
                   label=f"budget {budget_ms:g} ms")
        ax.axvspan(budget_ms, right, color="firebrick", alpha=0.06, zorder=0)
        shapes = input_shapes(pareto)  # (deploy, eval) where latency and metric inputs differ
        deploy_at, eval_at = (f" at {shapes[0]}", f" at {shapes[1]}") if shapes else ("", "")
        ax.set_xlabel(f"predicted latency on {pareto['device']}{deploy_at} (ms); "
                      "bars: latency band")
        n_eval = pareto.get("n_eval")
        ax.set_ylabel(f"validation {metric}{eval_at}{note}{f' (n={n_eval})' if n_eval else ''}; "
                      "bars: 95% interval")
        ax.grid(True, alpha=0.3)
        note_line = shapes_note(pareto)
        fig.suptitle(f"{pareto['device']} / back-end {pareto['backend']}, budget {budget_ms:g} ms"
                     f" — {_counts(pareto, points)}" + (f"\n{note_line}" if note_line else ""),
                     fontsize=11)
        side.axis("off")
        handles, labels = ax.get_legend_handles_labels()
        side.legend(handles, labels, loc="upper left", fontsize=8.5, frameon=False,
                    borderaxespad=0)
        side.text(0, 0.76, _front_table(groups["front"], short), transform=side.transAxes,
                  fontsize=8, family="monospace", va="top", ha="left")
        fig.tight_layout()
        _label_front(ax, groups["front"])  # after the layout: placement needs final positions
        path = Path(path)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


# Where a label may go (points from its marker), in order of preference; a leader line ties it
# to its marker.
_LABEL_OFFSETS_PT = ((10, 9), (10, -16), (-10, 9), (-10, -16), (0, 16), (0, -22), (22, 0),
                     (-22, 0), (24, 20), (-24, 20), (24, -26), (-24, -26))


def _label_front(ax, front: Sequence, fontsize: float = 8) -> None:
    """Write ``#N`` next to front members, each clear of the other labels and markers; skip a
    label that fits nowhere (the side table lists every member)."""
    px_per_pt = ax.figure.dpi / 72
    pad = 2 * px_per_pt
    half = 0.5 * _STYLE["front"][2] ** 0.5 * px_per_pt + pad  # a marker's half width
    at = {p.number: ax.transData.transform((p.latency_s * 1e3, p.accuracy)) for p in front}
    placed = [(x - half, y - half, x + half, y + half) for x, y in at.values()]
    for p in sorted(front, key=lambda p: -p.accuracy):
        x, y = at[p.number]
        text = f"#{p.number}"
        w, h = 0.62 * fontsize * len(text) * px_per_pt, fontsize * px_per_pt
        for dx, dy in _LABEL_OFFSETS_PT:
            cx, cy = x + dx * px_per_pt, y + dy * px_per_pt
            left = cx - w if dx < 0 else cx - w / 2 if dx == 0 else cx
            box = (left - pad, cy - pad, left + w + pad, cy + h + pad)
            mid = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
            own = np.hypot(*(mid - at[p.number]))
            nearest_is_own = all(own < np.hypot(*(mid - xy)) for n, xy in at.items()
                                 if n != p.number)  # else it reads as another's label
            if nearest_is_own and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3]
                                          and b[1] < box[3] for b in placed):
                placed.append(box)
                ax.annotate(text, (p.latency_s * 1e3, p.accuracy), textcoords="offset points",
                            xytext=(dx, dy), ha="right" if dx < 0 else "center" if dx == 0
                            else "left", va="bottom", fontsize=fontsize, fontweight="bold",
                            color="#b2182b", zorder=7,
                            arrowprops={"arrowstyle": "-", "color": "#b2182b", "lw": 0.7,
                                        "shrinkA": 1, "shrinkB": 5},
                            path_effects=[patheffects.withStroke(linewidth=2.5,
                                                                 foreground="white")])
                break


def _front_table(front: Sequence, short: str = "acc", limit: int = 24) -> str:
    lines = ["Pareto front", f"{'trial':>5} {'ms':>6} {short:>5} {'MB':>5}"]
    lines += [f"{'#' + str(p.number):>5} {p.latency_s * 1e3:6.2f} {p.accuracy:5.3f} "
              f"{p.model_bytes / 1e6:5.1f}" for p in front[:limit]]
    if len(front) > limit:
        lines.append(f"... {len(front) - limit} more (pareto.csv)")
    return "\n".join(lines)


def _counts(pareto: dict[str, Any], points: Sequence) -> str:
    feasible = sum(p.feasible for p in points)
    failed = pareto.get("n_failed", 0)
    return (f"{pareto.get('trials', len(points))} trials: {len(points)} complete "
            f"({feasible} within budget), {failed} failed; "
            f"{sum(p.on_front for p in points)} on the front")
