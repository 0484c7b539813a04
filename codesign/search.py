"""The search driver: Optuna over a joint space, priced by a cost model, scored by an evaluator.

Objectives: maximise accuracy (validation split; or minimise / maximise the metric the
evaluator declares, e.g. the transformer space's perplexity), minimise predicted latency, minimise
model bytes (scales, zero points and sparse indices included). The latency budget is a constraint set
with ``trial.set_constraint`` (feasible when <= 0), so infeasible trials never reach the front.
Trials run through ask/tell, so the same loop serves sequential and parallel evaluation.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState

from codesign.context import SearchContext, TrialOutcome, build_context
from codesign.results import write_results
from codesign.run_dir import STUDY_NAME, RunDir, default_run_dir
from codesign.userinput import BadInput

SAMPLERS = ("tpe", "nsga2", "random")
DIRECTIONS = ("maximize", "minimize", "minimize")  # accuracy, latency_s, model_bytes
log = logging.getLogger("codesign.search")


def directions(higher_is_better: bool = True) -> tuple[str, str, str]:
    """The study's directions when the quality metric is higher- (accuracy) or lower-better
    (perplexity); latency and model bytes are always minimised."""
    return DIRECTIONS if higher_is_better else ("minimize",) + DIRECTIONS[1:]


@dataclass(frozen=True)
class SearchConfig:
    device: str
    budget_s: float
    budget_text: str
    backend: str | None = None
    space: str = "mbconv"
    trials: int = 50
    timeout_s: float | None = None
    seed: int = 0
    sampler: str = "tpe"
    cost_model: str = "analytic"
    cost_model_file: Path | None = None  # learned/hybrid: the model (None: the default path)
    workers: int = 1
    threads_per_worker: int = 1
    ray_address: str | None = None
    evaluator: str | None = None
    baseline: Path | None = None
    out: Path | None = None
    resume: Path | None = None
    progress: bool = True
    progress_lines: bool = False  # no bar (stderr not a terminal): a plain line every 10%
    ttft_budget_s: float | None = None  # --space transformer: time-to-first-token budget
    min_accuracy: float | None = None  # None: the built-in task's reference model's val accuracy
    max_formats: int = 3  # distinct (weight bits, activation bits, sparsity) formats per member
    finetune_steps: int = 0  # a QAT fine-tune of each front member (evaluators that can)
    predictor_trials: int | None = None  # None: a fifth of the trials (see predictor_trials)
    task: str | None = None  # MODULE:FACTORY of the user's data (None: the built-in digits)
    # --threads: every member is searched (priced) at this thread count only, so a member's
    # prediction and a runtime measurement at the same count compare (None: the device's choices)
    threads: int | None = None


@dataclass
class SearchResult:
    run_dir: Path
    pareto: dict[str, Any]
    n_trials: int
    n_failed: int
    elapsed_s: float
    trials_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def make_sampler(name: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant liar (on by default in Optuna 5) keeps parallel workers from piling onto the
        # region of a trial still running
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        population = int(min(50, max(4, trials // 4)))
        if trials < 2 * population:
            warnings.warn(f"nsga2 with {trials} trials evolves fewer than two generations of "
                          f"{population}; use more trials or --sampler tpe", stacklevel=2)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    raise BadInput(f"unknown --sampler {name!r}; valid: {', '.join(SAMPLERS)}")


def open_study(storage: BaseStorage, sampler: optuna.samplers.BaseSampler, *, create: bool,
               higher_is_better: bool = True) -> optuna.Study:
    # A resumed run whose first process died between writing run.json and creating the study
    # has an empty journal: creating the study then is what that process would have done.
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler,
                               directions=list(directions(higher_is_better)),
                               load_if_exists=not create)


def fail_stale_running(storage: BaseStorage, study_name: str = STUDY_NAME) -> int:
    """Mark trials a dead process left RUNNING as FAIL (the journal has no heartbeat).

    They are tagged ``interrupted``: never evaluated, they do not count towards ``--trials``.
    Done through the storage's public interface: a study sets attributes only on its own trials.
    """
    study_id = storage.get_study_id_from_name(study_name)
    stale = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "fail_reason",
                                    "left RUNNING by a process that died; failed on resume")
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return len(stale)


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: finished, and not interrupted by a crash."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state.is_finished() and not t.user_attrs.get("interrupted"))


def record_outcome(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome,
                   budget_s: float) -> None:
    """Attach an evaluated outcome to its trial and tell the study."""
    if outcome.error is not None:
        log.warning("trial %d failed: %s", trial.number, outcome.error)
        trial.set_user_attr("fail_reason", outcome.error)
        study.tell(trial, state=TrialState.FAIL)
        return
    for key, value in outcome.attrs().items():
        trial.set_user_attr(key, value)
    trial.set_constraint("latency_over_budget_s", outcome.latency_s - budget_s)
    for name, value in outcome.constraints.items():  # TTFT budget, RAM share (transformer)
        trial.set_constraint(name, value)
    study.tell(trial, [outcome.accuracy, outcome.latency_s, float(outcome.model_bytes)])


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="trial", desc="search", leave=False,
                dynamic_ncols=True)


def run_search(config: SearchConfig, *, on_trial: Callable[[int], None] | None = None,
               context: SearchContext | None = None, run: RunDir | None = None) -> SearchResult:
    """Run (or resume) a search and write the run directory. See ../shared/CLI.md.

    Args:
        config: what to search; ``config.resume`` set means continue the run there.
        on_trial: called with each finished trial's number.
        context: a prebuilt context for ``config`` (a sweep builds it from shared state).
        run: where the run lives (default: a ``RunDir`` at ``config.resume``, ``config.out`` or
            a fresh ``runs/`` directory); anything with ``RunDir``'s methods.
    """
    if config.trials < 1:
        raise BadInput(f"--trials must be >= 1, got {config.trials}")
    if config.timeout_s is not None and not config.timeout_s > 0:
        raise BadInput(f"--timeout must be positive seconds, got {config.timeout_s}")
    if config.workers < 1:
        raise BadInput(f"--workers must be >= 1, got {config.workers}")
    if config.min_accuracy is not None and not 0.0 <= config.min_accuracy <= 1.0:
        raise BadInput(f"--min-accuracy must be in [0, 1], got {config.min_accuracy}")
    if config.predictor_trials is not None and config.predictor_trials < 0:
        raise BadInput(f"--predictor-trials must be >= 0, got {config.predictor_trials}")
    if config.finetune_steps < 0:
        raise BadInput(f"--finetune-steps must be >= 0, got {config.finetune_steps}")
    if config.max_formats < 1:
        raise BadInput(f"--max-formats must be >= 1, got {config.max_formats}")
    sampler = make_sampler(config.sampler, config.seed, config.trials)
    context = context if context is not None else build_context(config)
    identity = context.identity(config)
    if run is None and config.resume is not None:
        run = RunDir(Path(config.resume))
    elif run is None:
        run = RunDir(Path(config.out) if config.out else default_run_dir(config.device,
                                                                          config.budget_text))
    if config.resume is not None:
        run.check_resume(identity)
        storage = JournalStorage(run.journal_backend())
        study = open_study(storage, sampler, create=False,
                           higher_is_better=context.higher_is_better)
        n_stale = fail_stale_running(storage)
    else:
        run.create(identity)
        study = open_study(JournalStorage(run.journal_backend()), sampler, create=True,
                           higher_is_better=context.higher_is_better)
        n_stale = 0
        if config.baseline is not None:
            study.enqueue_trial(context.baseline_params, user_attrs={"baseline": True})
        # sensible starting points (uniform fp32 / int8 at three sizes): TPE's random start
        # then begins from known-good models instead of 2-bit, 7x7, all-sparse draws
        seeds = context.seed_params()[:max(0, config.trials - (config.baseline is not None))]
        for params in seeds:
            study.enqueue_trial(params, user_attrs={"seed_point": True})
    handler = run.log_handler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("codesign").addHandler(handler)
    logging.getLogger("codesign").setLevel(logging.INFO)
    try:
        log.info("search %s", identity)
        if n_stale:
            log.warning("%d trial(s) left RUNNING by a dead process marked FAIL", n_stale)
        # Train or load the evaluator's shared state (a supernet) before the first trial, on
        # every path: trained lazily it would be built inside the evaluator's no_grad scoring.
        context.evaluator.prepare()
        start = time.monotonic()
        evaluated = _search_with_predictor(study, context, config, start, on_trial)
        elapsed = time.monotonic() - start
        pareto = write_results(run, study, context, config, progress=_finetune_progress(config))
        trials = study.get_trials(deepcopy=False)
        n_failed = sum(t.state == TrialState.FAIL for t in trials)
        log.info("done: %d trials (%d failed), %d on the front, %.1f s", len(trials), n_failed,
                 len(pareto["members"]), elapsed)
        return SearchResult(run.path, pareto, len(trials), n_failed, elapsed,
                            evaluated / elapsed if elapsed > 0 else math.nan)
    finally:
        logging.getLogger("codesign").removeHandler(handler)
        handler.close()


def predictor_trials(config: SearchConfig, context: SearchContext) -> int:
    """Trials the predictor-guided stage proposes: ``--predictor-trials``, else a fifth of
    ``--trials`` from 40 trials on, in spaces it can encode (MBConv)."""
    if not context.space.supports_predictor_stage:
        return 0
    if config.predictor_trials is not None:
        return min(config.predictor_trials, config.trials)
    return config.trials // 5 if config.trials >= 40 else 0


def _search_with_predictor(study: optuna.Study, context: SearchContext, config: SearchConfig,
                           start: float, on_trial) -> int:
    """TPE up to ``trials - k``, then the predictor stage enqueues ``k`` trials and the loop
    evaluates them (``codesign.predictor_stage``); a resumed run skips what is done."""
    from codesign.predictor_stage import STAGE, run_stage

    k = predictor_trials(config, context)
    done_at_start = counted_trials(study)
    evaluated = _optimize(study, context, config, done_at_start, start, on_trial,
                          stop_at=config.trials - k, done_at_start=done_at_start)
    staged = any(t.user_attrs.get("stage") == STAGE for t in study.get_trials(deepcopy=False))
    timed_out = config.timeout_s is not None and time.monotonic() - start > config.timeout_s
    if k and not staged and not timed_out:
        report = run_stage(study, context, k=k, seed=config.seed)
        if report is not None:
            study.set_user_attr("predictor", report.to_json())
    return evaluated + _optimize(study, context, config, counted_trials(study), start, on_trial,
                                 done_at_start=done_at_start)


def _optimize(study: optuna.Study, context: SearchContext, config: SearchConfig,
              done_before: int, start: float, on_trial, *, stop_at: int | None = None,
              done_at_start: int | None = None) -> int:
    """Evaluate trials until ``stop_at`` (default ``config.trials``) count; progress is shown
    against the whole search (``config.trials``, ETA from the trials done since
    ``done_at_start``)."""
    remaining = (config.trials if stop_at is None else stop_at) - done_before
    done_at_start = done_before if done_at_start is None else done_at_start
    if remaining <= 0:
        return 0
    bar = _progress(config.trials, done_before, config.progress)
    evaluated = 0
    try:
        if config.workers > 1 or config.ray_address:
            from codesign.parallel import optimize_parallel

            return optimize_parallel(study, context, config, remaining, start, bar, on_trial)
        for _ in range(remaining):
            if config.timeout_s is not None and time.monotonic() - start > config.timeout_s:
                log.info("timeout after %.1f s", time.monotonic() - start)
                break
            trial = study.ask()
            trial.set_user_attr("worker_pid", os.getpid())  # stored before the trial runs
            outcome = context.evaluate_params(trial)
            record_outcome(study, trial, outcome, context.budget_s)
            evaluated += 1
            if bar is not None:
                bar.update(1)
            elif config.progress_lines:
                _progress_line(done_before + evaluated, config.trials,
                               done_before + evaluated - done_at_start, time.monotonic() - start)
            if on_trial is not None:
                on_trial(trial.number)
    finally:
        if bar is not None:
            bar.close()
    return evaluated


def _progress_line(done: int, total: int, evaluated: int, elapsed_s: float) -> None:
    """A plain progress line on stderr at every tenth of the trials (and the last)."""
    step = max(1, total // 10)
    if done % step and done != total:
        return
    eta = elapsed_s / evaluated * (total - done) if evaluated else float("nan")
    print(f"search: {done}/{total} trials ({100 * done // total}%), {elapsed_s:.0f} s elapsed, "
          f"ETA {eta:.0f} s", file=sys.stderr, flush=True)


def _finetune_progress(config: SearchConfig):
    """A progress renderer per fine-tuned member (a bar on a terminal, plain lines elsewhere)."""
    from codesign.progress import TrainingProgress

    def make(i: int, n: int):
        # plain lines at the half and the end: a member's fine-tune takes seconds
        return TrainingProgress(f"fine-tune member {i + 1}/{n}", bar=bool(config.progress),
                                every_fraction=0.5)

    return make


def feasible_share(latencies: np.ndarray, budget_s: float) -> float:
    return float(np.mean(latencies <= budget_s)) if len(latencies) else math.nan
