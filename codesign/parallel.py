"""Parallel trial evaluation on Ray with Optuna's ask/tell.

The driver asks Optuna for params, decodes them, and hands candidates to Ray actors that each
hold a rebuilt ``SearchContext`` (device, space, cost models, evaluator). The device spec and the
evaluator's shared state (the trained supernet) travel through the object store, put there once:
an actor on another node has neither the user's device YAML nor the supernet cache on its disk.
Results come back to the driver, which alone writes the run directory: a worker on another node
has another disk. A worker process that dies mid-trial turns that trial into FAIL (with the
reason) and is replaced; the search goes on. TPE's constant liar copes with pending trials.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger("codesign.parallel")


def set_thread_counts(threads: int) -> None:
    """Pin torch and numba to ``threads`` inside a task.

    Ray sets OMP_NUM_THREADS per task and a reused worker keeps whatever the last task set, so
    every task sets its own counts rather than trusting the environment.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    import numba

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[Any]:
    """Join the cluster at ``address``, or start a local Ray (no dashboard) and stop it after."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        # workers must import the user's MODULE:FUNC references from the current directory
        path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": path, "RAY_AUTH_MODE": "disabled"}}
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     runtime_env=runtime_env, log_to_driver=False)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _worker_class():
    import ray

    @ray.remote(num_cpus=1, max_restarts=0)
    class TrialWorker:
        """Holds one SearchContext; evaluates candidates sent by the driver."""

        def __init__(self, config, threads: int, device, shared) -> None:
            from codesign.context import build_context

            self.threads = threads
            set_thread_counts(threads)
            self.context = build_context(config, device=device)
            if shared is not None:
                self.context.evaluator.use_shared_state(*shared)
            self.context.evaluator.prepare()  # the rest of its state (data) before any trial

        def pid(self) -> int:
            return os.getpid()

        def evaluate(self, candidate):
            set_thread_counts(self.threads)
            return self.context.evaluate(candidate)

    return TrialWorker


def optimize_parallel(study, context, config, remaining: int, start: float, bar, on_trial) -> int:
    """Run ``remaining`` trials with ``config.workers`` trials in flight; returns trials told."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    from codesign.context import TrialOutcome
    from codesign.search import record_outcome

    threads = max(1, config.threads_per_worker)
    # Train or load shared state once, before Ray starts; workers get it from the object store.
    key = context.evaluator.shared_state_key()
    state = None if key is None else context.evaluator.shared_state()
    if key is None:
        context.evaluator.prepare()
    with ray_session(config.ray_address, num_cpus=None) as ray:
        shared = None if key is None else ray.put((key, state))
        worker_cls = _worker_class()
        worker_args = (config, threads, context.device, shared)
        workers = [worker_cls.remote(*worker_args) for _ in range(config.workers)]
        pids = {w: ray.get(w.pid.remote()) for w in workers}
        idle = list(workers)
        inflight: dict[Any, tuple[Any, Any]] = {}
        asked = told = 0
        while told < remaining:
            timed_out = (config.timeout_s is not None
                         and time.monotonic() - start > config.timeout_s)
            while idle and asked < remaining and not timed_out:
                trial = study.ask()
                asked += 1
                try:
                    candidate = context.space.suggest(trial)
                except Exception as exc:
                    record_outcome(study, trial, TrialOutcome(
                        error=f"cannot build candidate: {type(exc).__name__}: {exc}"),
                        context.budget_s)
                    told += 1
                    continue
                worker = idle.pop()
                trial.set_user_attr("worker_pid", pids[worker])
                inflight[worker.evaluate.remote(candidate)] = (trial, worker)
            if not inflight:
                break
            ready, _ = ray.wait(list(inflight), num_returns=1)
            trial, worker = inflight.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
                idle.append(worker)
            except (RayActorError, WorkerCrashedError) as exc:
                outcome = TrialOutcome(error=f"worker process {pids[worker]} died during the "
                                             f"trial: {type(exc).__name__}")
                log.warning("trial %d: worker %d died; replacing it", trial.number, pids[worker])
                replacement = worker_cls.remote(*worker_args)
                pids[replacement] = ray.get(replacement.pid.remote())
                idle.append(replacement)
            record_outcome(study, trial, outcome, context.budget_s)
            told += 1
            if bar is not None:
                bar.update(1)
            if on_trial is not None:
                on_trial(trial.number)
        for w in list(pids):
            ray.kill(w)
    return told
