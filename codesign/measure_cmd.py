"""``codesign measure``: time real candidates of a space on this machine (ExecuTorch runtime).

For each of N distinct candidates drawn at random (seeded) from the space — or, with
``from_pareto``, the members of a search's front (to check what a search predicted):

1. lower it to an XNNPACK ``.pte`` with every layer at the precision its op list states
   (``codesign.measure.candidate_program``), checking the program against the float module;
2. time it in ``rounds`` rounds, each a fresh program load, the first run timed apart, ``warmup``
   untimed runs and ``repeats`` timed runs with the threadpool set before loading, every timed
   run on two clocks (``codesign.measure.dual_clock``): wall time, and the executing thread's CPU
   time;
3. append one row to the measurement CSV (``codesign.measure.table``): the lowest round median on
   the row's ``clock`` as the latency (other processes only ever add time, so the quietest round
   is the closest to the program's own cost), that round's p90 and spread, every round's median,
   both clocks' lowest medians, the 1-minute load average before and after, and the analytic
   model's prediction.

``clock``: ``cpu`` (the default with one thread) reports the thread's CPU time, which a shared
machine's other processes do not inflate by preempting it (see ``dual_clock``); ``wall`` (the
only choice with more threads, whose work the calling thread's clock does not see) reports what a
stopwatch would.

Noise floor, two views: ``round_spread`` per row (run-to-run, minutes apart at most) and, at the
end, ``noise_candidates`` candidates lowered and timed again (the whole pipeline, tens of minutes
apart), written to ``<out>.noise.csv``. A rerun over the same ``--out`` continues: candidates
already in the file are skipped, the same seed draws the same sequence.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from codesign.pareto_member import ParetoMember
from codesign.userinput import BadInput, parse_int, parse_seed

__all__ = ["MeasureConfig", "run_measure", "load_measure_space", "distinct_candidates",
           "noise_path", "noise_summary"]

NOISE_COLUMNS = ("id", "first_p50_ms", "again_p50_ms", "rel_diff", "loadavg_1m", "measured_at")
BACKENDS = ("xnnpack",)


@dataclass(frozen=True)
class MeasureConfig:
    device: str
    space: str
    n: int
    out: Path
    backend: str = "xnnpack"
    seed: int = 0
    threads: int = 1
    warmup: int = 5
    repeats: int = 30
    rounds: int = 2
    noise_candidates: int = 3
    clock: str = "auto"  # "cpu" with 1 thread, "wall" otherwise; or either explicitly
    from_pareto: Path | None = None  # measure these members' params instead of random ones

    @property
    def resolved_clock(self) -> str:
        return ("cpu" if self.threads == 1 else "wall") if self.clock == "auto" else self.clock


def load_measure_space(ref: str, backend_name: str, threads: int, device: Any = None):
    """The space ``ref`` (a registered name or ``MODULE:FACTORY``) for ``backend_name``, its
    thread choice fixed to ``threads`` (what is timed is what the params say).

    Raises:
        BadInput: unknown back-end or space, or a space whose candidates cannot be built as
            torch modules (a registered ``SpaceEntry.timed``: the MBConv family).
    """
    from codesign.context import load_space
    from codesign.cost_models.backends import backend_for, load_backend
    from codesign.registry import SPACES, entry_of

    if backend_name not in BACKENDS:
        raise BadInput(f"--backend {backend_name!r}: measured programs run on ExecuTorch, whose "
                       f"back-end here is {', '.join(BACKENDS)} (the codesign back-end's kernels "
                       "are not ExecuTorch programs)")
    backend = backend_for(device, backend_name) if device is not None else \
        load_backend(backend_name)
    timed = [name for name, entry in SPACES.items() if entry.timed is not None]
    if ":" not in ref and ref not in SPACES:
        raise BadInput(f"unknown --space {ref!r}; valid: {', '.join(timed)} or MODULE:FACTORY")
    space = load_space(ref, backend, device, (threads,))
    # the space's registered program builder (codesign.registry), found by its entry
    entry = entry_of(space)
    if entry is None or entry.timed is None:
        raise BadInput(f"--space {ref}: its candidates have no torch module builder here; "
                       f"measure supports {', '.join(timed)} or MODULE:FACTORY returning "
                       "one of their spaces")
    return entry.timed(space, threads)


def distinct_candidates(space, seed: int, *, max_draws: int = 100_000
                        ) -> Iterator[tuple[str, dict, Any]]:
    """(id, params, candidate) of distinct random candidates, the same sequence for a seed."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    for _ in range(max_draws):
        params = space.sample(rng)
        candidate = space.decode(params)
        cid = "c-" + candidate.key()
        if cid not in seen:
            seen.add(cid)
            yield cid, space.encode(candidate), candidate


def pareto_candidates(path: Path, space, threads: int) -> list[tuple[str, dict, Any]]:
    """(id, params, candidate) of every member of a search's ``pareto.json``.

    Raises:
        BadInput: unreadable file, a member of another space, or one searched at another
            thread count than the one measured.
    """
    try:
        pareto = json.loads(Path(path).read_text())
        members = [ParetoMember.from_json(m).params for m in pareto["members"]]
    except OSError as exc:
        raise BadInput(f"--from-pareto {path}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadInput(f"--from-pareto {path}: not a pareto.json: {exc}") from None
    out = []
    for params in members:
        if params.get("threads", threads) != threads:
            raise BadInput(f"--from-pareto {path}: a member runs {params['threads']} threads, "
                           f"this measurement {threads}")
        try:
            candidate = space.decode(params)
        except ValueError as exc:
            raise BadInput(f"--from-pareto {path}: a member is not a point of space "
                           f"{space.name}: {exc}") from None
        out.append(("c-" + candidate.key(), space.encode(candidate), candidate))
    return out


def noise_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".noise.csv")


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_timing_counts(*, n: int, seed: int, threads: int, warmup: int, repeats: int,
                        rounds: int) -> None:
    """The counts ``measure`` and ``bundle`` share, by the CLI's rules (``cli_options.SHARED``:
    ``--warmup`` may be 0, the others at least 1), for callers that skip the command line."""
    for flag, value, low in (("--n", n, 1), ("--threads", threads, 1), ("--warmup", warmup, 0),
                             ("--repeats", repeats, 1), ("--rounds", rounds, 1)):
        parse_int(value, flag, low=low, text=False)
    parse_seed(seed, text=False)


def _check(config: MeasureConfig) -> None:
    check_timing_counts(n=config.n, seed=config.seed, threads=config.threads,
                        warmup=config.warmup, repeats=config.repeats, rounds=config.rounds)
    parse_int(config.noise_candidates, "--noise-candidates", low=0, text=False)
    if config.clock not in ("auto", "cpu", "wall"):
        raise BadInput(f"unknown --clock {config.clock!r}; valid: auto, cpu, wall")
    if config.clock == "cpu" and config.threads != 1:
        raise BadInput("--clock cpu needs --threads 1: with more threads the work runs on pool "
                       "threads the calling thread's CPU clock does not see; use --clock wall")
    cores = os.cpu_count() or 1
    if config.threads > cores:
        raise BadInput(f"--threads {config.threads}: this machine has {cores} logical cores")


class _Timer:
    """Lowers and times candidates; one per run (holds the analytic model and host facts)."""

    def __init__(self, space, config: MeasureConfig, device) -> None:
        from codesign.cost_models.analytic import AnalyticCostModel
        from codesign.measure.records import RuntimeHost

        self.space, self.config, self.device = space, config, device
        self.analytic = AnalyticCostModel(device, space.backend, threads=config.threads)
        self.host = RuntimeHost.current()

    def analytic_ms(self, candidate) -> float:
        from codesign.cost_models.ir import OpBatch
        from codesign.cost_models.tile_resolution import apply_tuned_tiles

        # priced exactly as `codesign search --cost-model analytic` prices it on this device
        ops = apply_tuned_tiles(self.space.to_ops(candidate), self.device, self.space.backend)
        return float(self.analytic.predict(OpBatch.from_oplists([ops])).latency_s[0]) * 1e3

    def time(self, lowered) -> list:
        from codesign.measure.dual_clock import time_pte_dual

        return [time_pte_dual(lowered.pte, lowered.inputs, threads=self.config.threads,
                              warmup=self.config.warmup, repeats=self.config.repeats)
                for _ in range(self.config.rounds)]

    def measure(self, cid: str, params: dict, candidate) -> dict[str, Any]:
        from codesign.measure.candidate_program import lower_candidate
        from codesign.measure.table import PRECISION_PER_LAYER

        lowered = lower_candidate(self.space, candidate, seed=self.config.seed,
                                  threads=self.config.threads)
        before = _loadavg()
        rounds = self.time(lowered)
        after = _loadavg()
        clock = self.config.resolved_clock
        p50s = [float(np.median(r.samples(clock))) * 1e3 for r in rounds]
        best = rounds[int(np.argmin(p50s))]
        p50, p90 = min(p50s), float(np.quantile(best.samples(clock), 0.9)) * 1e3
        return {
            "params": json.dumps(params, sort_keys=True), "host": p50, "id": cid,
            "space": self.space.name, "backend": self.space.backend.name,
            "threads": self.config.threads, "clock": clock, "precision": PRECISION_PER_LAYER,
            "precision_mix": lowered.precision_mix, "p90_ms": p90, "spread": (p90 - p50) / p50,
            "round_p50s_ms": ";".join(f"{v:.6g}" for v in p50s),
            "round_spread": (max(p50s) - min(p50s)) / min(p50s),
            "wall_p50_ms": min(float(np.median(r.wall_s)) for r in rounds) * 1e3,
            "cpu_p50_ms": min(float(np.median(r.cpu_s)) for r in rounds) * 1e3,
            "first_run_ms": best.first_run_wall_s * 1e3, "load_ms": best.load_s * 1e3,
            "n_warmup": self.config.warmup, "n_repeats": self.config.repeats,
            "loadavg_1m_before": before, "loadavg_1m_after": after,
            "analytic_ms": self.analytic_ms(candidate), "max_rel_err": lowered.max_rel_err,
            "undelegated": ";".join(lowered.undelegated), "pte_bytes": len(lowered.pte),
            "source": "host-runtime", "cpu_model": self.host.cpu_model,
            "executorch_version": self.host.executorch_version, "measured_at": _now(),
        }


def _read_noise(path: Path) -> list[dict[str, str]]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh)]
    return [r for r in rows if r.get("rel_diff") not in (None, "")]


def _append_noise(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=NOISE_COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def noise_summary(rows: list[dict[str, str]], noise_rows: list[dict[str, str]]) -> dict[str, Any]:
    """The noise floor of a measurement CSV's rows and its re-measurements (relative units)."""
    def stats(values: list[float]) -> dict[str, float | int | None]:
        arr = np.asarray([v for v in values if math.isfinite(v)])
        if not len(arr):
            return {"n": 0, "median": None, "p90": None, "max": None}
        return {"n": int(len(arr)), "median": float(np.median(arr)),
                "p90": float(np.quantile(arr, 0.9)), "max": float(arr.max())}

    def num(text: str) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.nan
    return {"round_spread": stats([num(r.get("round_spread")) for r in rows]),
            "within_round_spread": stats([num(r.get("spread")) for r in rows]),
            "remeasure_rel_diff": stats([abs(num(r["rel_diff"])) for r in noise_rows]),
            "loadavg_1m": stats([num(r.get("loadavg_1m_before")) for r in rows])}


def run_measure(config: MeasureConfig, *, echo: Callable[[str], None] | None = None
                ) -> dict[str, Any]:
    """Measure up to ``config.n`` candidates in total into ``config.out`` (see module docstring).

    Returns:
        {"out", "noise_out", "n_rows", "n_measured_now", "n_failed", "failures", "noise_floor",
         "elapsed_s"}; ``noise_floor`` as ``noise_summary``.
    Raises:
        BadInput: bad configuration or an ``--out`` file from another configuration.
    """
    from codesign.measure.table import MeasurementCSV
    from codesign.cost_models.devices import load_device

    echo = echo or (lambda line: print(line, file=sys.stderr))
    _check(config)
    start = time.monotonic()
    device = load_device(config.device)
    # a trait of the device file (``detect: host``), not its name: a program can only be timed
    # on the machine it runs on
    if not device.is_this_machine:
        raise BadInput(f"--device {config.device!r}: measure times programs on this machine, so "
                       "the device is 'host'; for a phone use `codesign bundle` and "
                       "`codesign ingest`")
    space = load_measure_space(config.space, config.backend, config.threads, device)
    if config.from_pareto is not None:  # read (and checked) before --out is touched
        sequence = iter(pareto_candidates(config.from_pareto, space, config.threads))
    else:
        sequence = distinct_candidates(space, config.seed)
    table = MeasurementCSV.open(config.out, "host", expect={
        "space": space.name, "backend": space.backend.name, "threads": str(config.threads),
        "clock": config.resolved_clock})
    if table.dropped_partial_line:
        echo(f"{config.out}: dropped a half-written last line (an interrupted run)")
    timer = _Timer(space, config, device)
    done, failures, measured_now = table.ids, [], 0
    todo = max(0, config.n - len(done))
    for cid, params, candidate in sequence:
        if todo == 0:
            break
        if cid in done:
            continue
        try:
            row = timer.measure(cid, params, candidate)
        except Exception as exc:  # one candidate failing must not lose the others
            failures.append(f"{cid}: {type(exc).__name__}: {exc}")
            echo(f"[{len(table.rows)}/{config.n}] {cid} FAILED: {type(exc).__name__}: {exc}")
            if len(failures) >= 3 and measured_now == 0:
                raise RuntimeError(f"the first {len(failures)} candidates failed; last: "
                                   f"{failures[-1]}") from exc
            continue
        table.append(row)
        done.add(cid)
        todo -= 1
        measured_now += 1
        echo(f"[{len(table.rows)}/{config.n}] {cid} {row['host']:.3f} ms {row['clock']} (p90 "
             f"{row['p90_ms']:.3f}, rounds {row['round_p50s_ms']}, wall "
             f"{row['wall_p50_ms']:.3f}, analytic {row['analytic_ms']:.3f}) load "
             f"{row['loadavg_1m_before']:.2f} [{row['precision_mix']}]")
    noise_file = noise_path(config.out)
    noise_rows = _read_noise(noise_file)
    by_id = {r["id"]: r for r in table.rows}
    wanted = [cid for cid in list(by_id)[:config.noise_candidates]
              if cid not in {r["id"] for r in noise_rows}]
    for cid in wanted:
        params = json.loads(by_id[cid]["params"])
        row = timer.measure(cid, params, space.decode(params))
        first = float(by_id[cid]["host"])
        again = {"id": cid, "first_p50_ms": f"{first:.6g}", "again_p50_ms": f"{row['host']:.6g}",
                 "rel_diff": f"{(row['host'] - first) / first:.6g}",
                 "loadavg_1m": f"{row['loadavg_1m_before']:.2f}", "measured_at": _now()}
        _append_noise(noise_file, again)
        noise_rows.append(again)
        echo(f"noise: {cid} {first:.3f} ms then {row['host']:.3f} ms "
             f"({float(again['rel_diff']):+.1%})")
    return {"out": str(config.out), "noise_out": str(noise_file), "n_rows": len(table.rows),
            "n_measured_now": measured_now, "n_failed": len(failures), "failures": failures,
            "noise_floor": noise_summary(table.rows, noise_rows),
            "elapsed_s": time.monotonic() - start}
