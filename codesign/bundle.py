"""``codesign bundle`` / ``codesign ingest``: measure candidates on a phone (``executor_runner``).

``bundle`` writes a self-contained directory to take to a machine with ``adb`` and a phone::

    DIR/manifest.json       what the bundle holds (format ``codesign.bundle``, version 1)
    DIR/programs/<id>.pte   one XNNPACK program per candidate (every layer at its priced precision)
    DIR/programs.txt        the ids, one per line, in run order
    DIR/run_on_phone.sh     pushes ExecuTorch's ``executor_runner`` and the programs, runs each
                            program ``rounds`` times and saves every log under DIR/results/
    DIR/README.md           the steps, and the results format

``ingest RESULTS`` reads what came back and appends one row per candidate to a measurement CSV
(``codesign.measure.table``; the latency column is named after the device), ready for
``codesign calibrate``. RESULTS is either

* the ``results/`` directory the script fills: per candidate and round ``<id>.r<k>.warmup.log``
  (``--num_executions WARMUP``) and ``<id>.r<k>.log`` (``--num_executions WARMUP+REPEATS``), the
  runner's own log output, and ``<id>.r<k>.etdump`` when the script ran with ``ETDUMP=1`` (a
  runner built with the event tracer). Per round, in order of preference: the ETDump's
  ``Method::execute`` event, one duration per execution; the log's per-iteration lines
  (``Iteration i of N: t ms``) — either way the warm-up executions are dropped and the median/p90
  of the rest taken; else the log's total (``Model executed successfully N time(s) in T ms``):
  the mean of the timed iterations, ``(T_full - T_warmup) / REPEATS`` (each process pays its own
  first-run cost, so the difference cancels it). The latency is the lowest round's;
* or a CSV with columns ``id,latency_ms`` (optionally ``p90_ms``), one row per measurement (an id
  may repeat: its rows are rounds), for measurements taken with another harness.

The manifest (``RESULTS/manifest.json``, the bundle's own next to a CSV, or ``--manifest``) maps
ids to params; an id the manifest does not hold, a latency that is not a positive number, or a log
from another ``--num_executions`` is bad input naming the file and line.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import re
import sys
from importlib import metadata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from codesign.userinput import BadInput

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "write_bundle", "ingest", "parse_runner_log",
           "RunnerLog", "RunFailed", "etdump_execution_ms"]

BUNDLE_FORMAT, BUNDLE_VERSION = "codesign.bundle", 1
_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"
_ITERATION = re.compile(r"Iteration (\d+) of (\d+): " + _NUM + " ms")
_TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in " + _NUM + " ms")
_LOADED = re.compile(r"Model loaded in " + _NUM + " ms")
_DEVICE_COLUMN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------------------------------ bundle
def _script(manifest: dict[str, Any]) -> str:
    return f"""#!/bin/sh
# Run every program of this bundle on an Android phone with ExecuTorch's executor_runner.
# usage: ./run_on_phone.sh [path/to/executor_runner]      (default: ./executor_runner)
# env:   ADB_SERIAL (pick a phone), DEVICE_DIR (default /data/local/tmp/codesign_bundle)
# Logs land in ./results/; bring them back with `codesign ingest results --out CSV --device NAME`.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
RUNNER=${{1:-$HERE/executor_runner}}
DEVICE_DIR=${{DEVICE_DIR:-/data/local/tmp/codesign_bundle}}
THREADS={manifest['threads']}
WARMUP={manifest['warmup']}
REPEATS={manifest['repeats']}
ROUNDS={manifest['rounds']}
adb_() {{ if [ -n "${{ADB_SERIAL:-}}" ]; then adb -s "$ADB_SERIAL" "$@"; else adb "$@"; fi; }}
# ETDUMP=1: the runner was built with the event tracer; keep each timed run's ETDump as well
ETDUMP=${{ETDUMP:-0}}
if [ ! -f "$RUNNER" ]; then
  echo "no executor_runner at $RUNNER: build ExecuTorch's executor_runner for Android arm64 with" >&2
  echo "XNNPACK (see README.md) and pass its path" >&2
  exit 2
fi
adb_ shell mkdir -p "$DEVICE_DIR"
adb_ push "$RUNNER" "$DEVICE_DIR/executor_runner" >/dev/null
adb_ shell chmod 755 "$DEVICE_DIR/executor_runner"
mkdir -p "$HERE/results"
cp "$HERE/manifest.json" "$HERE/results/manifest.json"
adb_ shell getprop ro.product.model > "$HERE/results/device.txt" 2>&1 || true
for id in $(cat "$HERE/programs.txt"); do
  adb_ push "$HERE/programs/$id.pte" "$DEVICE_DIR/$id.pte" >/dev/null
  r=1
  while [ "$r" -le "$ROUNDS" ]; do
    adb_ shell "cd $DEVICE_DIR && ./executor_runner --model_path $id.pte --num_executions $WARMUP --cpu_threads $THREADS" > "$HERE/results/$id.r$r.warmup.log" 2>&1 || true
    extra=""
    if [ "$ETDUMP" = 1 ]; then extra="--etdump_path $id.r$r.etdump"; fi
    adb_ shell "cd $DEVICE_DIR && ./executor_runner --model_path $id.pte --num_executions $((WARMUP + REPEATS)) --cpu_threads $THREADS $extra" > "$HERE/results/$id.r$r.log" 2>&1 || true
    if [ "$ETDUMP" = 1 ]; then
      adb_ pull "$DEVICE_DIR/$id.r$r.etdump" "$HERE/results/" >/dev/null 2>&1 || true
      adb_ shell rm -f "$DEVICE_DIR/$id.r$r.etdump"
    fi
    r=$((r + 1))
  done
  adb_ shell rm -f "$DEVICE_DIR/$id.pte"
  echo "$id done"
done
echo "logs in $HERE/results"
"""


def _readme(manifest: dict[str, Any]) -> str:
    return f"""# codesign measurement bundle

{len(manifest['programs'])} candidates of space `{manifest['space']}` lowered for ExecuTorch
{manifest['versions']['executorch']} (XNNPACK), each layer at the precision codesign priced it at.

1. Build ExecuTorch's `executor_runner` for the phone (Android arm64, XNNPACK on, the same
   ExecuTorch version), e.g. from an ExecuTorch checkout:
   `cmake --preset android-arm64-v8a -DEXECUTORCH_BUILD_XNNPACK=ON && cmake --build ... --target executor_runner`
   (see ExecuTorch's "Building and Running ExecuTorch with XNNPACK Backend" guide).
2. Plug in the phone (USB debugging on; one phone, or set `ADB_SERIAL`), keep it cool and idle,
   screen on, then run `./run_on_phone.sh path/to/executor_runner`. Each program runs
   {manifest['rounds']} round(s) of `--num_executions {manifest['warmup']}` and
   `--num_executions {manifest['warmup'] + manifest['repeats']}` at `--cpu_threads {manifest['threads']}`.
3. Back on the machine with codesign:
   `codesign ingest results --out measured.csv --device YOUR_PHONE_NAME`, then
   `codesign calibrate --space {manifest['space']} --measurements measured.csv --target YOUR_PHONE_NAME ...`.

Measured with another harness? Write `results.csv` with columns `id,latency_ms` (and optionally
`p90_ms`), one row per measurement, ids from `programs.txt`, and ingest that file instead.
"""


def write_bundle(space_ref: str, n: int, out: Path, *, backend: str = "xnnpack", seed: int = 0,
                 threads: int = 1, warmup: int = 5, repeats: int = 30, rounds: int = 2,
                 device: str | None = None,
                 echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a bundle of ``n`` distinct candidates (seeded) to ``out`` (see module docstring).

    Args:
        device: a catalog device the phone is (optional): the manifest then holds each
            program's analytic prediction for it at ``threads``.
    Returns:
        The manifest.
    Raises:
        BadInput: ``out`` exists and is not empty, bad counts, unknown space/back-end/device.
    """
    from codesign.measure.candidate_program import lower_candidate
    from codesign.measure_cmd import check_timing_counts, distinct_candidates, load_measure_space

    echo = echo or (lambda line: print(line, file=sys.stderr))
    check_timing_counts(n=n, seed=seed, threads=threads, warmup=warmup, repeats=repeats,
                        rounds=rounds)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {out}: exists and is not an empty directory")
    if not out.parent.is_dir():
        raise BadInput(f"--out {out}: directory {out.parent} does not exist")
    spec = analytic = None
    if device is not None:
        from codesign.cost_models.analytic import AnalyticCostModel
        from codesign.cost_models.devices import load_device

        spec = load_device(device)
    space = load_measure_space(space_ref, backend, threads, spec)
    if spec is not None:
        analytic = AnalyticCostModel(spec, space.backend, threads=threads)
    programs = []
    (out / "programs").mkdir(parents=True, exist_ok=True)
    for cid, params, candidate in distinct_candidates(space, seed):
        if len(programs) == n:
            break
        lowered = lower_candidate(space, candidate, seed=seed)
        (out / "programs" / f"{cid}.pte").write_bytes(lowered.pte)
        entry = {"id": cid, "params": params, "file": f"programs/{cid}.pte",
                 "sha256": hashlib.sha256(lowered.pte).hexdigest(), "bytes": len(lowered.pte),
                 "input_shape": list(space.deploy_input_shape), "precision": "per-layer",
                 "precision_mix": lowered.precision_mix,
                 "undelegated": list(lowered.undelegated),
                 "host_check_max_rel_err": lowered.max_rel_err}
        if analytic is not None:
            from codesign.cost_models.ir import OpBatch

            batch = OpBatch.from_oplists([space.to_ops(candidate)])
            entry["analytic_ms"] = float(analytic.predict(batch).latency_s[0]) * 1e3
        programs.append(entry)
        echo(f"[{len(programs)}/{n}] {cid} [{lowered.precision_mix}] {len(lowered.pte)} bytes")
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "space": space_ref,
                "space_name": space.name, "backend": space.backend.name, "device": device,
                "threads": threads, "warmup": warmup, "repeats": repeats, "rounds": rounds,
                "seed": seed,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": {p: metadata.version(p) for p in ("executorch", "torch", "torchao")},
                "programs": programs}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "programs.txt").write_text("".join(p["id"] + "\n" for p in programs))
    script = out / "run_on_phone.sh"
    script.write_text(_script(manifest))
    script.chmod(0o755)
    (out / "README.md").write_text(_readme(manifest))
    return manifest


# ------------------------------------------------------------------------------------ ingest
class RunFailed(Exception):
    """The runner did not finish (no success line); the message quotes its error."""


@dataclass(frozen=True)
class RunnerLog:
    """What one ``executor_runner`` log says: per-iteration times (ms) and/or the total."""

    executions: int | None
    total_ms: float | None
    iterations_ms: tuple[float, ...] = ()
    load_ms: float | None = None


def parse_runner_log(path: Path) -> RunnerLog:
    """Parse ``executor_runner`` output (its ET_LOG lines, in any surrounding text).

    Raises:
        RunFailed: no "Model executed successfully" line (the run failed on the device; the
            runner's last error line is quoted).
        BadInput: an unreadable log, or iteration lines that do not count 1..N (not a log of
            one run).
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    total = _TOTAL.search(text)
    if total is None:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        # the runner's own error (an ET_LOG line at level E or F) says more than "Aborted"
        errors = [ln for ln in lines if ln[:2] in ("E ", "F ")]
        last = (errors or lines or ["(empty log)"])[-1].split("] ", 1)[-1]
        raise RunFailed(f"{path}: no 'Model executed successfully' line: the run failed "
                        f"({last[:200]!r})")
    iterations = [(int(m.group(1)), int(m.group(2)), float(m.group(3)))
                  for m in _ITERATION.finditer(text)]
    executions = int(total.group(1))
    if iterations and [i for i, _, _ in iterations] != list(range(1, executions + 1)):
        raise BadInput(f"{path}: iteration lines do not count 1..{executions}")
    loaded = _LOADED.search(text)
    return RunnerLog(executions, float(total.group(2)), tuple(t for _, _, t in iterations),
                     float(loaded.group(1)) if loaded else None)


def etdump_execution_ms(path: Path) -> tuple[float, ...]:
    """Per-execution latencies (ms) of the ``Method::execute`` events of an ETDump.

    Raises:
        BadInput: not a readable ETDump, or no ``Method::execute`` event in it.
    """
    from codesign.measure.pte import quiet_imports

    with quiet_imports():
        from executorch.devtools import Inspector
        from executorch.devtools.inspector import TimeScale
    try:
        with warnings.catch_warnings():  # "Output Buffer not found": no tensor data wanted
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=str(path), source_time_scale=TimeScale.NS,
                                  target_time_scale=TimeScale.MS)
    except Exception as exc:  # the devtools raise assorted types for a corrupt file
        raise BadInput(f"{path}: not a readable ETDump: {type(exc).__name__}: {exc}") from None
    for block in inspector.event_blocks:
        for event in block.events:
            if event.name == "Method::execute" and event.perf_data is not None:
                return tuple(float(v) for v in event.perf_data.raw)
    raise BadInput(f"{path}: no Method::execute event (was the runner built with profiling?)")


@dataclass
class _Rounds:
    p50_ms: list[float] = field(default_factory=list)
    p90_ms: list[float | None] = field(default_factory=list)
    first_ms: list[float | None] = field(default_factory=list)
    load_ms: list[float | None] = field(default_factory=list)
    method: str = ""


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"manifest {path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"manifest {path}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BadInput(f"manifest {path}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BadInput(f"manifest {path}: version {manifest.get('version')!r} is not supported; "
                       f"this codesign reads version {BUNDLE_VERSION}")
    return manifest


def _rounds_from_logs(results: Path, manifest: dict[str, Any], cid: str) -> _Rounds | str | None:
    """The rounds of one program, why none could be read (a string), or None: no log at all."""
    warmup, repeats = int(manifest["warmup"]), int(manifest["repeats"])
    out, problems = _Rounds(), []
    n_rounds = int(manifest["rounds"])
    if not any((results / f"{cid}.r{r}.{ext}").exists() for r in range(1, n_rounds + 1)
               for ext in ("log", "etdump")):
        return None
    for r in range(1, n_rounds + 1):
        full_path = results / f"{cid}.r{r}.log"
        etdump = results / f"{cid}.r{r}.etdump"
        if etdump.exists():
            executions = etdump_execution_ms(etdump)
            if len(executions) != warmup + repeats:
                raise BadInput(f"{etdump}: {len(executions)} executions, the bundle asked for "
                               f"{warmup + repeats} (warmup {warmup} + repeats {repeats})")
            timed = np.asarray(executions[warmup:])
            out.p50_ms.append(float(np.median(timed)))
            out.p90_ms.append(float(np.quantile(timed, 0.9)))
            out.first_ms.append(executions[0])
            out.load_ms.append(None)
            out.method = "etdump"
            continue
        if not full_path.exists():
            problems.append(f"round {r}: no log")
            continue
        try:
            full = parse_runner_log(full_path)
        except RunFailed as exc:
            problems.append(str(exc))
            continue
        if full.executions != warmup + repeats:
            raise BadInput(f"{full_path}: {full.executions} executions, the bundle asked for "
                           f"{warmup + repeats} (warmup {warmup} + repeats {repeats})")
        if full.iterations_ms:
            timed = np.asarray(full.iterations_ms[warmup:])
            out.p50_ms.append(float(np.median(timed)))
            out.p90_ms.append(float(np.quantile(timed, 0.9)))
            out.first_ms.append(full.iterations_ms[0])
            out.method = "executor_runner"
        else:
            warm_path = results / f"{cid}.r{r}.warmup.log"
            if not warm_path.exists():
                problems.append(f"round {r}: no warm-up log (needed: the runner logs no "
                                "per-iteration times)")
                continue
            try:
                warm = parse_runner_log(warm_path)
            except RunFailed as exc:
                problems.append(f"{exc} (needed: the runner logs no per-iteration times)")
                continue
            mean = (full.total_ms - warm.total_ms) / (full.executions - warm.executions)
            if not mean > 0:
                problems.append(f"{full_path}: total {full.total_ms} ms is not above the warm-up "
                                f"run's {warm.total_ms} ms")
                continue
            out.p50_ms.append(mean)
            out.p90_ms.append(None)
            out.first_ms.append(None)
            out.method = "executor_runner-mean-of-totals"
        out.load_ms.append(full.load_ms)
    return out if out.p50_ms else "; ".join(problems) or "no rounds"


def _rounds_from_csv(path: Path, ids: set[str]) -> dict[str, _Rounds]:
    try:
        with Path(path).open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    if "id" not in header or "latency_ms" not in header:
        raise BadInput(f"{path}: expected columns id,latency_ms[,p90_ms]; got {','.join(header)}")
    out: dict[str, _Rounds] = {}
    for line, row in enumerate(rows, start=2):
        cid = (row.get("id") or "").strip()
        if cid not in ids:
            raise BadInput(f"{path}: line {line}: id {cid!r} is not in the bundle's manifest")
        values = []
        for col in ("latency_ms", "p90_ms"):
            text = (row.get(col) or "").strip()
            if col == "p90_ms" and not text:
                values.append(None)
                continue
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            if not math.isfinite(v) or v <= 0:
                raise BadInput(f"{path}: line {line}, column {col}: {text!r} is not a positive "
                               "latency in ms")
            values.append(v)
        rounds = out.setdefault(cid, _Rounds(method="results-csv"))
        rounds.p50_ms.append(values[0])
        rounds.p90_ms.append(values[1])
        rounds.first_ms.append(None)
        rounds.load_ms.append(None)
    return out


def ingest(results: Path, out: Path, *, device: str | None = None,
           manifest_path: Path | None = None) -> dict[str, Any]:
    """Append the measurements in ``results`` to the measurement CSV ``out``.

    Returns:
        {"out", "device", "n_ingested", "ingested", "skipped_already_in_out", "failed",
         "missing"}: ids appended; ids already in ``out`` (not duplicated); ids whose runs all
         failed, with the reason; ids the results do not cover.
    Raises:
        BadInput: unreadable/invalid results or manifest, no device name, an ``out`` measured
            in another configuration, or nothing to ingest.
    """
    from codesign.measure.table import MeasurementCSV, PRECISION_PER_LAYER
    from codesign.measure_cmd import load_measure_space

    results = Path(results)
    if not results.exists():
        raise BadInput(f"RESULTS {results}: no such file or directory")
    if manifest_path is None:
        manifest_path = results / "manifest.json" if results.is_dir() else \
            results.parent / "manifest.json"
    manifest = _read_manifest(manifest_path)
    device = device or manifest.get("device")
    if not device:
        raise BadInput("--device: name the phone (the latency column), e.g. --device pixel8")
    if not _DEVICE_COLUMN.match(device):
        raise BadInput(f"--device {device!r}: use letters, digits, '_', '-' or '.' (it names a "
                       "CSV column)")
    space = load_measure_space(manifest["space"], manifest["backend"], int(manifest["threads"]))
    programs = {p["id"]: p for p in manifest["programs"]}
    for cid, program in programs.items():
        try:
            space.decode(program["params"])
        except ValueError as exc:
            raise BadInput(f"manifest {manifest_path}: {cid}: params are not a point of space "
                           f"{manifest['space']}: {exc}") from None
    if results.is_dir():
        rounds = {cid: _rounds_from_logs(results, manifest, cid) for cid in programs}
        rounds = {cid: r for cid, r in rounds.items() if r is not None}
    else:
        rounds = _rounds_from_csv(results, set(programs))
    failed = {cid: r for cid, r in rounds.items() if isinstance(r, str)}
    good = {cid: r for cid, r in rounds.items() if not isinstance(r, str)}
    if not good:
        raise BadInput(f"RESULTS {results}: no measurement of any bundle program"
                       + (f" ({len(failed)} failed; first: {next(iter(failed.values()))})"
                          if failed else ""))
    table = MeasurementCSV.open(out, device, expect={
        "space": space.name, "backend": space.backend.name, "threads": str(manifest["threads"])})
    ingested, skipped = [], []
    for cid in programs:  # the manifest's order, so the file is stable for a given bundle
        if cid not in good:
            continue
        if cid in table.ids:
            skipped.append(cid)
            continue
        r = good[cid]
        best = int(np.argmin(r.p50_ms))
        p50, p90 = r.p50_ms[best], r.p90_ms[best]
        program = programs[cid]
        table.append({
            "params": json.dumps(program["params"], sort_keys=True), device: p50, "id": cid,
            "space": space.name, "backend": space.backend.name, "threads": manifest["threads"],
            "clock": "wall", "precision": program.get("precision", PRECISION_PER_LAYER),
            "precision_mix": program.get("precision_mix"), "p90_ms": p90,
            "spread": (p90 - p50) / p50 if p90 is not None else None,
            "round_p50s_ms": ";".join(f"{v:.6g}" for v in r.p50_ms),
            "round_spread": (max(r.p50_ms) - min(r.p50_ms)) / min(r.p50_ms),
            "first_run_ms": r.first_ms[best], "load_ms": r.load_ms[best],
            "n_warmup": manifest["warmup"], "n_repeats": manifest["repeats"],
            "analytic_ms": program.get("analytic_ms"),
            "undelegated": ";".join(program.get("undelegated", [])),
            "pte_bytes": program.get("bytes"), "source": r.method,
            "executorch_version": manifest.get("versions", {}).get("executorch"),
        })
        ingested.append(cid)
    missing = [cid for cid in programs if cid not in rounds]
    return {"out": str(out), "device": device, "n_ingested": len(ingested),
            "ingested": ingested, "skipped_already_in_out": skipped, "failed": failed,
            "missing": missing}
