"""Parallel trials on a real local Ray: a 2-worker search returns a valid front."""
import json

import pytest

from codesign.search import SearchConfig, run_search

pytestmark = pytest.mark.slow


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
    from tests.test_search import load_trials

    pids = {t.user_attrs["pid"] for t in load_trials(result.run_dir)}
    worker_pids = {t.user_attrs["worker_pid"] for t in load_trials(result.run_dir)}
    assert pids == worker_pids and len(pids) == 2
