"""Sweeps: one search per (device, budget), each a Ray task (contract: ../shared/CLI.md).

The driver validates everything a user can get wrong before Ray starts, builds what every run
shares once — the device specs and the evaluator's trained weights (the supernet) — and puts it
in the object store, so no task re-trains or re-reads it. Each task runs an ordinary sequential
search (``run_search``) on whatever node Ray picks, with its threads pinned.

Every run is a normal run directory ``DIR/<device>-<budget>/`` on the *driver's* disk: a task on
another node reaches it only through ``RunStore``, one actor pinned to the driver's node that owns
the Optuna journals, the result files and the logs. So a task that Ray retries (its worker
process or node died) resumes its run's journal — the trials it finished are kept, the one it was
running is marked FAIL — instead of starting over. A run that fails for good (or whose every
trial failed) is recorded in ``sweep.json`` with status ``failed`` and the reason, a run whose
trials completed but none fits its budget with status ``no-feasible``; the others complete.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from optuna.storages.journal import BaseJournalBackend

from codesign.journal_ops import JournalOperation
from codesign.pareto_member import front_members
from codesign.run_dir import RunDir, atomic_write_json, atomic_write_text
from codesign.search import SearchConfig, make_sampler, run_search
# format_summary: the CLI prints it through this module
from codesign.sweep_rows import (SUMMARY_FILE, SWEEP_FILE, SweepResult, SweepRow,  # noqa: F401
                                 format_summary, summary_csv)
from codesign.userinput import BadInput, parse_budget

SWEEP_LOG = "sweep.log"
log = logging.getLogger("codesign.sweep")


@dataclass(frozen=True)
class SweepConfig:
    devices: tuple[str, ...]
    budgets: tuple[str, ...]  # as typed, with units: "5ms"
    out: Path
    backend: str | None = None
    space: str = "mbconv"
    trials: int = 50
    seed: int = 0
    sampler: str = "tpe"
    cost_model: str = "analytic"
    evaluator: str | None = None
    ray_address: str | None = None
    threads_per_run: int = 1
    max_retries: int = 2  # Ray re-runs a task whose worker process or node died this often


@dataclass(frozen=True)
class RunJob:
    """One (device, budget) search of a sweep; ``run_dir`` is a path on the driver's node."""

    name: str
    device: str
    budget_text: str
    search: SearchConfig


# ------------------------------------------------------------------ input
def parse_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in str(text).split(","))
    if not text or not all(items):
        raise BadInput(f"{what} {text!r} must be a comma-separated list with no empty items, "
                       f"e.g. {'pixel8,rpi5' if what == '--devices' else '5ms,10ms'}")
    return items


def run_name(device: str, budget_text: str) -> str:
    return f"{Path(device).stem.replace(' ', '')}-{budget_text.replace(' ', '')}"


def plan(config: SweepConfig) -> list[RunJob]:
    """The runs of a sweep, validated: BadInput for anything the user can fix."""
    if config.trials < 1:
        raise BadInput(f"--trials must be a positive integer, got {config.trials}")
    make_sampler(config.sampler, config.seed, config.trials)  # BadInput for an unknown sampler
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a directory")
    jobs: dict[str, RunJob] = {}
    for device in config.devices:
        for text in config.budgets:
            name = run_name(device, text)
            if name in jobs:
                raise BadInput(f"run {name!r} appears twice; give each device and budget once")
            search = SearchConfig(
                device=device, budget_s=parse_budget(text), budget_text=text,
                backend=config.backend, space=config.space, trials=config.trials,
                seed=config.seed, sampler=config.sampler, cost_model=config.cost_model,
                evaluator=config.evaluator, threads_per_worker=config.threads_per_run,
                out=(out / name).resolve(), progress=False)
            jobs[name] = RunJob(name, device, text, search)
    return list(jobs.values())


# ------------------------------------------------------------------ the driver-side store
class RunStore:
    """The sweep's run directories, owned by one actor on the driver's node.

    A search in a task reads and appends its Optuna journal, writes its result files and log
    lines through these methods (``RemoteRunDir``), so it runs on any node while its run stays
    on the driver's disk. The actor runs one call at a time, so the journal has one writer.
    """

    def __init__(self) -> None:
        self._backends: dict[str, Any] = {}
        self._attempts: dict[str, int] = {}

    def begin(self, path: str) -> int:
        """Count a task's start on run ``path``; returns the attempt number (1 = first)."""
        self._attempts[path] = self._attempts.get(path, 0) + 1
        return self._attempts[path]

    def exists(self, path: str) -> bool:
        return RunDir(Path(path)).exists()

    def create(self, path: str, identity: dict[str, Any]) -> None:
        RunDir(Path(path)).create(identity)

    def check_resume(self, path: str, identity: dict[str, Any]) -> None:
        RunDir(Path(path)).check_resume(identity)

    def _backend(self, path: str):
        if path not in self._backends:
            self._backends[path] = RunDir(Path(path)).journal_backend()
        return self._backends[path]

    def read_logs(self, path: str, log_number_from: int) -> list[dict[str, Any]]:
        return list(self._backend(path).read_logs(log_number_from))

    def append_logs(self, path: str, logs: list[dict[str, Any]]) -> None:
        self._backend(path).append_logs(logs)

    def write_text(self, path: str, name: str, text: str) -> None:
        RunDir(Path(path)).write_text(name, text)

    def append_log(self, path: str, lines: list[str]) -> None:
        with open(RunDir(Path(path)).log, "a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)

    def barrier(self) -> None:
        """Returns once every call this caller made before it has run (calls stay in order)."""


class RemoteRunDir:
    """A ``RunDir`` that lives on the driver's node, reached through the ``RunStore`` actor."""

    def __init__(self, store, path: Path) -> None:
        self.store = store
        self.path = Path(path)
        self._key = str(self.path)
        self._journals: list[_StoreJournalBackend] = []

    def _call(self, method: str, *args):
        import ray

        return ray.get(getattr(self.store, method).remote(self._key, *args))

    def exists(self) -> bool:
        return self._call("exists")

    def create(self, identity: dict[str, Any]) -> None:
        self._call("create", identity)

    def check_resume(self, identity: dict[str, Any]) -> None:
        self._call("check_resume", identity)

    def journal_backend(self):
        journal = _StoreJournalBackend(self)
        self._journals.append(journal)
        return journal

    def flush(self) -> None:
        for journal in self._journals:
            journal.flush()

    def write_text(self, name: str, text: str) -> None:
        self.flush()  # results are written after the trials they describe
        self._call("write_text", name, text)

    def write_json(self, name: str, payload: Any) -> None:
        import json

        self.write_text(name, json.dumps(payload, indent=2) + "\n")

    def log_handler(self) -> logging.Handler:
        return _StoreLogHandler(self)


# Per-trial attribute writes that matter once the trial has a state: sent in one batch with the
# write that sets it, instead of one round trip to the store each (~100 params per trial).
_BATCHED_OPS = frozenset({JournalOperation.SET_TRIAL_PARAM, JournalOperation.SET_TRIAL_USER_ATTR,
                          JournalOperation.SET_TRIAL_SYSTEM_ATTR,
                          JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE})


def _must_send_now(log_entry: dict[str, Any]) -> bool:
    if log_entry.get("op_code") not in _BATCHED_OPS:
        return True  # study and trial creation, a trial's state and values
    return "worker_pid" in log_entry.get("user_attr", {})  # who runs a trial, before it runs


class _StoreJournalBackend(BaseJournalBackend):
    """Optuna's journal backend protocol over the run's file on the driver's node.

    A task is its run's only writer (Ray starts a retry only after the attempt died), so it keeps
    the journal in memory: reads are local, and appends reach the store in order — synchronously
    for any write that creates something, sets a trial's state or says which process runs it,
    batched for the attribute writes in between. A trial is on the driver's disk when it starts
    and when it finishes; what a dead attempt had not sent belonged to a trial it was running,
    which the retry marks FAIL.
    """

    def __init__(self, run: RemoteRunDir) -> None:
        self.run = run
        self._logs: list[dict[str, Any]] | None = None
        self._unsent: list[dict[str, Any]] = []

    def _loaded(self) -> list[dict[str, Any]]:
        if self._logs is None:
            self._logs = list(self.run._call("read_logs", 0))
        return self._logs

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self._loaded()[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._loaded().extend(logs)
        self._unsent.extend(logs)
        if any(_must_send_now(entry) for entry in logs):
            self.flush()

    def flush(self) -> None:
        if self._unsent:
            self.run._call("append_logs", self._unsent)
            self._unsent = []


class _StoreLogHandler(logging.Handler):
    """Log lines to the run's search.log on the driver's node (sent without waiting; ``close``
    waits until they are written)."""

    def __init__(self, run: RemoteRunDir) -> None:
        super().__init__()
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run.store.append_log.remote(self.run._key, [self.format(record)])
        except Exception:  # logging must never fail the search
            self.handleError(record)

    def close(self) -> None:
        import ray

        try:
            self.run.flush()
            ray.get(self.run.store.barrier.remote())
        finally:
            super().close()


# ------------------------------------------------------------------ one run, in a task
def run_job(job: RunJob, devices: dict[str, Any], shared: tuple[str, Any] | None, store
            ) -> dict[str, Any]:
    """Body of a sweep task: the search of one (device, budget), resumed if its run exists."""
    import optuna
    import ray

    from codesign.context import build_context
    from codesign.parallel import set_thread_counts
    from codesign.results import run_status

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_thread_counts(job.search.threads_per_worker)
    run = RemoteRunDir(store, job.search.out)
    attempt = ray.get(store.begin.remote(str(run.path)))
    config = job.search
    if run.exists():  # a retried task, or a sweep run again over the same DIR
        config = replace(config, out=None, resume=run.path)
    context = build_context(config, device=devices[job.device])
    if shared is not None:
        context.evaluator.use_shared_state(*shared)
    result = run_search(config, context=context, run=run)
    members = front_members(result.pareto)
    metric = result.pareto.get("metric", "accuracy")
    pick = max if result.pareto.get("higher_is_better", True) else min
    best = pick(members, key=lambda m: m.quality, default=None)
    status, why = run_status(result.pareto)  # a run with no trial completed counts as failed
    return {"status": status, "reason": why, "n_pareto": len(members),
            "trials": result.n_trials, "metric": metric,
            "n_complete": result.pareto["n_complete"], "n_failed": result.n_failed,
            "n_feasible": result.pareto["n_feasible"],
            "best_quality": None if best is None else best.quality,
            "best_latency_s": None if best is None else best.latency_s,
            "elapsed_s": result.elapsed_s, "attempts": attempt,
            "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


# ------------------------------------------------------------------ the driver
def _shared_states(jobs: list[RunJob], echo: Callable[[str], None]
                   ) -> tuple[dict[str, Any], dict[str, tuple[str, Any] | None]]:
    """Device specs by --devices entry, and each run's evaluator state as (key, state), each
    distinct key built once."""
    from codesign.context import build_context

    devices: dict[str, Any] = {}
    states: dict[str, tuple[str, Any]] = {}
    per_run: dict[str, tuple[str, Any] | None] = {}
    contexts: dict[str, Any] = {}
    # Every input checked before any shared state is built (training a supernet takes minutes):
    # BadInput/SpecError here, before Ray starts, for a bad device, back-end, space or --out.
    for job in jobs:
        if job.device not in contexts:
            contexts[job.device] = build_context(job.search)
            devices[job.device] = contexts[job.device].device
        context = contexts[job.device]
        identity = {**context.identity(job.search), "budget_s": job.search.budget_s}
        existing = RunDir(job.search.out)
        if existing.exists():
            try:
                existing.check_resume(identity)
            except BadInput as exc:
                raise BadInput(f"--out: {job.name} holds another search; give another --out "
                               f"({str(exc).split(': ', 1)[-1]})") from None
    for job in jobs:
        context = contexts[job.device]
        key = context.evaluator.shared_state_key()
        if key is not None and key not in states:
            echo(f"{context.evaluator.name} evaluator: building its shared state once ({key})")
            states[key] = (key, context.evaluator.shared_state())
        per_run[job.name] = states[key] if key is not None else None
    return devices, per_run


def _failure_reason(exc: BaseException) -> str:
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".strip()


def run_sweep(config: SweepConfig, *, echo: Callable[[str], None] = print) -> SweepResult:
    """Run every (device, budget) search of ``config`` on Ray; write sweep.json and summary.csv.

    Raises BadInput before Ray starts for anything the user can fix. A run that fails is
    recorded (status "failed", reason; traceback in DIR/sweep.log); the others complete.
    """
    from codesign.parallel import ray_session

    start = time.monotonic()
    jobs = plan(config)
    out = Path(config.out)
    devices, shared = _shared_states(jobs, echo)
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult(out)
    rows = {job.name: SweepRow(device=job.device, budget_s=job.search.budget_s,
                               run_dir=str(out / job.name), budget=job.budget_text)
            for job in jobs}
    with ray_session(config.ray_address) as ray:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        store = ray.remote(num_cpus=0)(RunStore).options(scheduling_strategy=here).remote()
        devices_ref = ray.put(devices)
        state_refs = {}
        for state in shared.values():  # one object per distinct state, shared by its runs
            if state is not None and state[0] not in state_refs:
                state_refs[state[0]] = ray.put(state)
        task = ray.remote(run_job).options(num_cpus=config.threads_per_run,
                                           max_retries=config.max_retries,
                                           retry_exceptions=False)
        pending = {task.remote(job, devices_ref,
                               state_refs[shared[job.name][0]] if shared[job.name] else None,
                               store): job for job in jobs}
        echo(f"sweep: {len(jobs)} runs x {config.trials} trials on Ray "
             f"({ray.cluster_resources().get('CPU', 0):g} CPUs, "
             f"{len(ray.nodes())} node(s)) -> {out}")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ready[0])
                row = rows[job.name]
                try:
                    for key, value in ray.get(ready[0]).items():
                        if hasattr(row, key):
                            setattr(row, key, value)
                    echo(f"[{len(jobs) - len(pending)}/{len(jobs)}] {job.name}: {row.status}, "
                         f"{row.trials} trials, {row.n_pareto} on the front "
                         f"({row.elapsed_s:.0f} s, attempt {row.attempts})")
                except Exception as exc:  # a RayError or the task's own exception
                    row.status, row.reason = "failed", _failure_reason(exc)
                    with open(out / SWEEP_LOG, "a", encoding="utf-8") as handle:
                        handle.write(f"--- {job.name} failed:\n"
                                     f"{''.join(traceback.format_exception(exc))}\n")
                    echo(f"[{len(jobs) - len(pending)}/{len(jobs)}] {job.name}: FAILED: "
                         f"{row.reason}")
                result.rows = [rows[j.name] for j in jobs]
                _write_sweep(out, config, result, time.monotonic() - start)
            ray.get(store.barrier.remote())
        finally:
            ray.kill(store)
    result.elapsed_s = time.monotonic() - start
    _write_sweep(out, config, result, result.elapsed_s)
    atomic_write_text(out / SUMMARY_FILE, summary_csv(result.rows))
    return result


def _write_sweep(out: Path, config: SweepConfig, result: SweepResult, elapsed_s: float) -> None:
    atomic_write_json(out / SWEEP_FILE, {
        "devices": list(config.devices), "budgets": list(config.budgets),
        "trials": config.trials, "backend": config.backend or "default (each device's first)",
        "space": config.space, "seed": config.seed, "ray_address": config.ray_address,
        "elapsed_s": elapsed_s, "runs": [asdict(r) for r in result.rows]})
