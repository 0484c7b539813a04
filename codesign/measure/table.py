"""The measurement CSV ``codesign measure``/``ingest`` write and ``codesign calibrate`` reads.

Layout (one row per candidate, a header line first)::

    params,<device>,id,space,backend,threads,precision,precision_mix,p90_ms,...

* ``params``: the candidate's space params as a JSON object (the architecture column ``calibrate
  --space mbconv`` parses);
* ``<device>``: the measured latency in ms (median of the timed runs on the row's ``clock``; the
  lowest of the rounds' medians, see ``codesign.measure_cmd``), the column named after the device
  (``host``, ``pixel8``);
* every other column is metadata, listed in ``META_COLUMNS``; ``calibrate`` skips them, so the
  file is a valid ``--measurements`` table with a single latency column.

Rows are appended one at a time, flushed and fsynced, so a crash loses at most the row being
written; ``MeasurementCSV.open`` drops such a half-written last line and reports it. An existing
file is checked before appending: same columns, same latency column, same space/back-end/threads.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from codesign.userinput import BadInput

__all__ = ["META_COLUMNS", "MeasurementCSV", "columns_for", "PRECISION_PER_LAYER"]

#: How a candidate's precisions were realised in the measured program.
PRECISION_PER_LAYER = "per-layer"

#: Metadata columns (everything but ``params`` and the latency column), in file order.
META_COLUMNS: tuple[str, ...] = (
    "id",                 # candidate id: "c-" + the candidate's key
    "space",              # the space the params belong to
    "backend",            # the runtime back-end (xnnpack)
    "threads",            # runtime threads
    "clock",              # "cpu" (the executing thread's CPU time, 1 thread) or "wall"
    "precision",          # how precisions were realised: "per-layer" (each layer as priced)
    "precision_mix",      # layers per precision, e.g. "w32a32:35 w8a8:32"
    "p90_ms",             # 90th percentile of the reported round's timed runs
    "spread",             # (p90 - p50) / p50 of that round
    "round_p50s_ms",      # each round's median, ';'-separated (fresh load per round)
    "round_spread",       # (max - min) / min of the rounds' medians: run-to-run noise
    "wall_p50_ms",        # lowest round median on the wall clock
    "cpu_p50_ms",         # lowest round median on the thread-CPU clock (host, 1 thread)
    "first_run_ms",       # first execution after loading (wall)
    "load_ms",            # program + method load (XNNPACK init, weight packing)
    "n_warmup",
    "n_repeats",
    "loadavg_1m_before",  # 1-minute system load average before timing (shared machines!)
    "loadavg_1m_after",
    "analytic_ms",        # the analytic model's prediction for this device and thread count
    "max_rel_err",        # program output vs the float module (quantization error)
    "undelegated",        # operators outside XNNPACK, ';'-separated (ideally empty)
    "pte_bytes",
    "source",             # "host-runtime" (measure) or "executor_runner" / "results-csv" (ingest)
    "cpu_model",
    "executorch_version",
    "measured_at",        # UTC, ISO 8601
)


def columns_for(device_column: str) -> list[str]:
    """The header of a measurement CSV whose latency column is ``device_column``."""
    if not device_column or device_column in META_COLUMNS or device_column in ("params", "index"):
        raise BadInput(f"{device_column!r} cannot name a latency column")
    return ["params", device_column, *META_COLUMNS]


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


@dataclass
class MeasurementCSV:
    """An append-only measurement CSV (see the module docstring).

    Attributes:
        path: the file.
        device_column: the latency column's name.
        rows: the rows already in the file (dicts keyed by column), oldest first.
        dropped_partial_line: whether a half-written last line was removed on open.
    """

    path: Path
    device_column: str
    rows: list[dict[str, str]] = field(default_factory=list)
    dropped_partial_line: bool = False

    @classmethod
    def open(cls, path: Path, device_column: str, *, expect: Mapping[str, str] | None = None,
             flag: str = "--out") -> "MeasurementCSV":
        """Open ``path`` for appending (creating it with a header if absent or empty).

        Args:
            expect: metadata every existing row must match (e.g. space, backend, threads): a
                file measured in another configuration is not silently extended.
        Raises:
            BadInput: unreadable file, another header, a mismatching row, or a missing directory.
        """
        path = Path(path)
        header = columns_for(device_column)
        if not path.parent.is_dir():
            raise BadInput(f"{flag} {path}: directory {path.parent} does not exist")
        table = cls(path, device_column)
        if not path.exists() or path.stat().st_size == 0:
            table._append_line(header)
            return table
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{flag} {path}: cannot read: {exc}") from None
        if not text.endswith("\n"):  # a crash mid-row: drop the half-written line
            keep = text[:text.rfind("\n") + 1]
            with path.open("r+") as fh:
                fh.truncate(len(keep.encode()))
            text, table.dropped_partial_line = keep, True
        lines = list(csv.reader(io.StringIO(text)))
        if not lines or [h.strip() for h in lines[0]] != header:
            found = ",".join(lines[0]) if lines else "(nothing)"
            raise BadInput(f"{flag} {path}: not a measurement CSV for column {device_column!r} "
                           f"(header {found[:120]!r}); use a new file")
        for number, values in enumerate(lines[1:], start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise BadInput(f"{flag} {path}: line {number}: expected {len(header)} fields, "
                               f"got {len(values)}")
            row = dict(zip(header, values))
            for key, want in (expect or {}).items():
                if row[key] != str(want):
                    raise BadInput(f"{flag} {path}: line {number} was measured with {key}="
                                   f"{row[key]!r}, this run uses {want!r}; use a new file")
            table.rows.append(row)
        return table

    @property
    def ids(self) -> set[str]:
        return {row["id"] for row in self.rows}

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one row (flushed and fsynced before returning).

        Raises:
            ValueError: a key that is not a column, or a latency that is not a positive number.
        """
        header = columns_for(self.device_column)
        unknown = set(record) - set(header)
        if unknown:
            raise ValueError(f"not measurement CSV columns: {sorted(unknown)}")
        latency = record.get(self.device_column)
        if not isinstance(latency, (int, float)) or not math.isfinite(latency) or latency <= 0:
            raise ValueError(f"latency must be a positive number of ms, got {latency!r}")
        values = [_format(record.get(col)) for col in header]
        self._append_line(values)
        self.rows.append(dict(zip(header, values)))

    def _append_line(self, values: list[str]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        with self.path.open("a", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
