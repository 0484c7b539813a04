"""Parallel trials on a real local Ray: a 2-worker search returns a valid front; a worker killed
mid-trial fails that trial only, and the search completes."""
import json

import pytest
from optuna.trial import TrialState

from codesign.search import SearchConfig, run_search
from tests.ray_helpers import HOLD_DIR_ENV, Background, kill_victim, start_local_ray
from tests.test_search import load_trials

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_ray_left")]


def test_two_worker_search_returns_a_valid_front(tmp_path):
    import ray

    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms", trials=12, seed=1,
                          evaluator="tests.search_helpers:proxy_accuracy", workers=2,
                          out=tmp_path / "run", progress=False)
    try:
        result = run_search(config)
    finally:
        assert not ray.is_initialized(), "the search shuts down the Ray it started"
    pareto = json.loads((result.run_dir / "pareto.json").read_text())
    assert pareto["trials"] == 12 and pareto["n_complete"] == 12
    assert pareto["members"]
    assert all(m["latency_s"] <= 0.01 for m in pareto["members"])
    # trials really ran in worker processes, two of them
    pids = {t.user_attrs["pid"] for t in load_trials(result.run_dir)}
    worker_pids = {t.user_attrs["worker_pid"] for t in load_trials(result.run_dir)}
    assert pids == worker_pids and len(pids) == 2


def test_worker_killed_mid_trial_fails_that_trial_and_the_search_completes(tmp_path,
                                                                           monkeypatch):
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv(HOLD_DIR_ENV, str(hold))
    start_local_ray(2, {HOLD_DIR_ENV: str(hold)})
    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms", trials=10, seed=2,
                          evaluator="tests.ray_helpers:hold_once_accuracy", workers=2,
                          out=tmp_path / "run", progress=False)
    search = Background(lambda: run_search(config))
    victim = kill_victim(hold)
    result = search.result(timeout_s=120)

    trials = load_trials(result.run_dir)
    assert len(trials) == 10 and result.n_trials == 10
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.state, t.user_attrs) for t in trials]
    assert failed[0].user_attrs["worker_pid"] == victim
    assert f"worker process {victim} died during the trial" in failed[0].user_attrs["fail_reason"]
    assert all(t.state == TrialState.COMPLETE for t in trials if t is not failed[0])
    # what the killed worker finished before it died is kept; a replacement took over
    assert sum(t.user_attrs["pid"] == victim for t in trials if t.state == TrialState.COMPLETE) >= 2
    assert len({t.user_attrs["worker_pid"] for t in trials} - {victim}) == 2
    pareto = json.loads((result.run_dir / "pareto.json").read_text())
    assert pareto["n_failed"] == 1 and pareto["n_complete"] == 9
