"""Exact hypervolume of a set of points under minimisation, for the small fronts a search keeps.

The volume of the region dominated by the points and bounded by the reference point, computed by
slicing: sort by the last objective, and each slab between consecutive values of it is the
(d-1)-dimensional hypervolume of the points below the slab times its thickness. In two objectives
that is the usual staircase sum; the cost grows as n^(d-1) log n, nothing for tens of members in
three objectives (the benchmarks' case)."""
from __future__ import annotations

import numpy as np


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of ``points`` (n x d, every objective minimised) up to ``reference`` (d).

    Every point must be <= the reference in every objective (as Optuna's own calculator asks: a
    point beyond it means the reference was chosen wrongly). Dominated and repeated points add
    nothing, so any set may be given, not only a front."""
    points = np.asarray(points, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if points.size == 0:
        return 0.0
    if points.ndim != 2 or points.shape[1] != reference.shape[0]:
        raise ValueError(f"points of shape {points.shape} against a reference of "
                         f"{reference.shape[0]} objectives")
    if not np.all(points <= reference):
        raise ValueError("every point must be <= the reference point in every objective")
    return _sliced(points[np.argsort(points[:, -1], kind="stable")], reference)


def _sliced(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of ``points`` already sorted by their last objective (ascending)."""
    if points.shape[1] == 1:
        return float(reference[0] - points[0, 0])
    if points.shape[1] == 2:  # the staircase: each point adds the strip its y newly covers
        volume, lowest_y = 0.0, reference[1]
        for x, y in points[np.lexsort((points[:, 1], points[:, 0]))]:
            if y < lowest_y:
                volume += (reference[0] - x) * (lowest_y - y)
                lowest_y = y
        return float(volume)
    volume = 0.0
    tops = np.append(points[1:, -1], reference[-1])
    for i in range(len(points)):
        thickness = tops[i] - points[i, -1]
        if thickness > 0:  # the slab above point i holds points 0..i, projected
            below = points[:i + 1, :-1]
            volume += thickness * _sliced(below[np.argsort(below[:, -1], kind="stable")],
                                          reference[:-1])
    return float(volume)
