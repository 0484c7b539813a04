"""`codesign sweep` on a real Ray: runs, sweep.json, a failed run, a worker killed mid-trial,
a simulated 2-node cluster, and the supernet shipped as shared state instead of re-trained."""
import csv
import dataclasses
import json

import numpy as np
import pytest
from optuna.trial import TrialState

from codesign.cli import main
from codesign.sweep import SweepConfig, run_sweep
from tests.ray_helpers import HOLD_DIR_ENV, Background, kill_victim, start_local_ray
from tests.test_search import load_trials

PROXY = "tests.search_helpers:proxy_accuracy"
RUN_FILES = {"run.json", "study.journal", "pareto.json", "pareto.csv", "search.log"}

pytestmark = pytest.mark.usefixtures("no_ray_left")


@pytest.fixture
def local_ray():
    start_local_ray(2)


def _sweep_json(out):
    return json.loads((out / "sweep.json").read_text())


def test_bad_input_is_exit_2_before_ray_starts(tmp_path, capsys):
    import ray

    for argv, message in [
        (["--devices", "pixel8,", "--budgets", "5ms"], "--devices 'pixel8,' must be a comma"),
        (["--devices", "pixel9", "--budgets", "5ms"], "unknown device 'pixel9'"),
        (["--devices", "pixel8", "--budgets", "5"], "budget '5' has no unit"),
        (["--devices", "pixel8,pixel8", "--budgets", "5ms"], "appears twice"),
        (["--devices", "pixel8", "--budgets", "5ms", "--trials", "0"], "--trials must be"),
    ]:
        rc = main(["sweep", *argv, "--out", str(tmp_path / "s")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and "\n" not in err, err
    assert not ray.is_initialized()


@pytest.mark.slow
def test_sweep_of_2_devices_x_2_budgets_writes_4_runs(tmp_path, capsys, local_ray):
    out = tmp_path / "sweep"
    # budgets every run meets in 6 trials (a run with no front makes the sweep exit 3)
    rc = main(["sweep", "--devices", "pixel8,rpi5", "--budgets", "10ms,20ms", "--trials", "6",
               "--evaluator", PROXY, "--seed", "3", "--out", str(out)])
    assert rc == 0
    runs = _sweep_json(out)["runs"]
    assert [(r["device"], r["budget_s"]) for r in runs] == [
        ("pixel8", 0.01), ("pixel8", 0.02), ("rpi5", 0.01), ("rpi5", 0.02)]
    for r in runs:
        assert {"device", "budget_s", "run_dir", "n_pareto", "status"} <= set(r)
        assert r["status"] == "ok" and r["attempts"] == 1
        run_dir = out / f"{r['device']}-{r['budget_s'] * 1e3:g}ms"
        assert r["run_dir"] == str(run_dir) and RUN_FILES <= {p.name for p in run_dir.iterdir()}
        pareto = json.loads((run_dir / "pareto.json").read_text())
        assert pareto["device"] == r["device"] and pareto["budget_s"] == r["budget_s"]
        assert pareto["trials"] == 6 and r["n_pareto"] == len(pareto["members"])
        assert all(m["latency_s"] <= r["budget_s"] for m in pareto["members"])
        assert len(load_trials(run_dir)) == 6
    # a looser budget never has a worse best accuracy
    assert {r["metric"] for r in runs} == {"accuracy"}
    best = {(r["device"], r["budget_s"]): r["best_quality"] or 0.0 for r in runs}
    assert best["pixel8", 0.02] >= best["pixel8", 0.01]
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["status"] for row in summary] == ["ok"] * 4
    printed = capsys.readouterr().out
    assert "rpi5-10ms" in printed and "4 of 4 runs ok" in printed
    # an ordinary run directory: `search --resume` continues it
    rc = main(["search", "--device", "pixel8", "--budget", "10ms", "--seed", "3", "--trials", "8",
               "--evaluator", PROXY, "--resume", str(out / "pixel8-10ms"), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["trials"] == 8


@pytest.mark.slow
def test_sweep_summary_follows_a_lower_is_better_metric(tmp_path, local_ray):
    out = tmp_path / "sweep"
    assert main(["sweep", "--devices", "pixel8", "--budgets", "10ms", "--trials", "6",
                 "--seed", "3", "--evaluator", "tests.search_helpers:proxy_perplexity",
                 "--out", str(out)]) == 0
    (row,) = _sweep_json(out)["runs"]
    members = json.loads((out / "pixel8-10ms" / "pareto.json").read_text())["members"]
    assert row["metric"] == "perplexity" and members
    assert row["best_quality"] == min(m["perplexity"] for m in members)
    (line,) = csv.DictReader((out / "summary.csv").open())
    assert line["metric"] == "perplexity" and float(line["best_quality"]) == pytest.approx(
        row["best_quality"], rel=1e-3)


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_others_complete(tmp_path, capsys, local_ray):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "pixel8-10ms").write_text("a file where the run directory should go")
    rc = main(["sweep", "--devices", "pixel8", "--budgets", "20ms,10ms", "--trials", "4",
               "--evaluator", PROXY, "--out", str(out)])
    assert rc == 1
    runs = {r["run_dir"]: r for r in _sweep_json(out)["runs"]}
    failed, ok = runs[str(out / "pixel8-10ms")], runs[str(out / "pixel8-20ms")]
    assert failed["status"] == "failed" and "exists and is not a directory" in failed["reason"]
    assert ok["status"] == "ok" and len(load_trials(out / "pixel8-20ms")) == 4
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "pixel8-10ms failed" in (out / "sweep.log").read_text()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_retried_and_resumes_its_journal(tmp_path, monkeypatch):
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv(HOLD_DIR_ENV, str(hold))
    start_local_ray(2, {HOLD_DIR_ENV: str(hold)})
    out = tmp_path / "sweep"
    config = SweepConfig(devices=("pixel8",), budgets=("10ms", "20ms"), out=out, trials=6,
                         seed=4, evaluator="tests.ray_helpers:hold_once_accuracy")
    sweep = Background(lambda: run_sweep(config, echo=lambda line: None))
    victim = kill_victim(hold)
    result = sweep.result(timeout_s=150)

    assert result.n_failed == 0
    rows = _sweep_json(out)["runs"]
    assert all(r["status"] == "ok" for r in rows)
    trials = {r["run_dir"]: load_trials(out / r["run_dir"].split("/")[-1]) for r in rows}
    hit = [d for d, ts in trials.items() if any(t.user_attrs.get("worker_pid") == victim
                                                for t in ts)]
    assert len(hit) >= 1
    killed_run = next(d for d in hit
                      if any(t.state == TrialState.FAIL for t in trials[d]))
    row = next(r for r in rows if r["run_dir"] == killed_run)
    assert row["attempts"] == 2, "Ray retried the task, which resumed the run"
    ts = trials[killed_run]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["worker_pid"] == victim
    assert "left RUNNING by a process that died" in failed[0].user_attrs["fail_reason"]
    assert all(t.state == TrialState.COMPLETE for t in ts if t is not failed[0])
    # the retry continued the journal up to --trials (the interrupted trial does not count)
    # instead of starting over
    assert failed[0].user_attrs["interrupted"] and len(ts) == 7
    assert [t.number for t in ts] == list(range(7))
    # trials the killed process completed (in this run or another) are all still there
    done_by_victim = [t for d in trials for t in trials[d]
                      if t.state == TrialState.COMPLETE and t.user_attrs["pid"] == victim]
    assert len(done_by_victim) >= 2


@pytest.mark.slow
def test_a_simulated_2_node_cluster_runs_a_sweep_via_ray_address(tmp_path, capsys):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "sweep"
        rc = main(["sweep", "--devices", "pixel8,rpi5", "--budgets", "10ms", "--trials", "4",
                   "--evaluator", PROXY, "--ray-address", cluster.address, "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        assert not ray.is_initialized(), "the sweep disconnects from the cluster it joined"
        runs = _sweep_json(out)["runs"]
        assert [r["status"] for r in runs] == ["ok", "ok"]
        assert all(len(load_trials(out / f"{r['device']}-10ms")) == 4 for r in runs)
        # 1 CPU per node and two runs at once: one ran on each node, and the worker node's run
        # directory was written through the store on the driver's node
        assert {r["node"] for r in runs} == {cluster.head_node.node_id, worker_node.node_id}
        assert "2 node(s)" in capsys.readouterr().err
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_the_supernet_is_shipped_as_shared_state_not_retrained(tmp_path, monkeypatch,
                                                              one_torch_thread):
    """What a sweep puts in the object store: an evaluator given the state scores exactly like
    the one that built it, and never trains or reads the disk cache."""
    from codesign.evaluation.supernet_evaluator import SupernetEvaluator
    from codesign.cost_models.backends import load_backend
    from codesign.search_spaces.mbconv import MBConvSpace
    from tests.test_evaluation import SMALL_TRAIN, _small_config

    config = _small_config()
    tiny = dataclasses.replace(SMALL_TRAIN, max_steps=2, warmup_steps=1)
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "driver-cache"))
    built = SupernetEvaluator(MBConvSpace(load_backend("codesign"), config=config), seed=0,
                              train=tiny)
    key, state = built.shared_state_key(), built.shared_state()
    task_cache = tmp_path / "task-cache"
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(task_cache))
    shipped = SupernetEvaluator(MBConvSpace(load_backend("codesign"), config=config), seed=0,
                                train=tiny)
    assert shipped.shared_state_key() == key
    shipped.use_shared_state(key, state)
    space = built.space
    candidate = space.decode(space.sample(np.random.default_rng(0)))
    assert shipped.evaluate(candidate).accuracy == built.evaluate(candidate).accuracy
    assert not task_cache.exists(), "the shipped evaluator trained or cached a supernet"
    other = SupernetEvaluator(MBConvSpace(load_backend("codesign"), config=config), seed=1,
                              train=tiny)
    with pytest.raises(ValueError, match="not this evaluator's"):
        other.use_shared_state(key, state)


def _printed_rows(text, n):
    """The printed summary table's ``n`` data rows (below the header and its rule), split into
    cells (no cell holds a space)."""
    return [line.split() for line in text.splitlines()[2:2 + n]]


def test_printed_summary_cells_sit_under_their_headers(tmp_path):
    from codesign.sweep import SweepResult, SweepRow, format_summary

    rows = [SweepRow(device="pixel8", budget_s=0.01, run_dir=str(tmp_path / "pixel8-10ms"),
                     n_pareto=3, status="ok", budget="10ms", trials=20, n_complete=19,
                     n_failed=1, n_feasible=7, best_quality=0.8125, best_latency_s=0.00912,
                     attempts=2),
            SweepRow(device="rpi5", budget_s=0.001, run_dir=str(tmp_path / "rpi5-1ms"),
                     n_pareto=0, status="no-feasible", reason="no feasible candidate",
                     budget="1ms", trials=20, n_complete=20, n_failed=0, n_feasible=0,
                     attempts=1)]
    text = format_summary(SweepResult(tmp_path, rows, 12.0))
    header = text.splitlines()[0]
    assert header.split("  ")[0] == "run" and "best val acc" in header
    names = ["run", "status", "trials", "failed", "feasible", "front", "best", "ms", "attempts"]
    ok, none = _printed_rows(text, 2)
    assert dict(zip(names, ok)) == {"run": "pixel8-10ms", "status": "ok", "trials": "20",
                                    "failed": "1", "feasible": "7", "front": "3",
                                    "best": "0.8125", "ms": "9.12", "attempts": "2"}, text
    assert none == ["rpi5-1ms", "no-feasible", "20", "0", "0", "0", "1"], text  # no best, ms
    assert "rpi5-1ms no-feasible: no feasible candidate" in text
    assert "1 of 2 runs ok" in text


def test_printed_summary_names_a_lower_is_better_metric(tmp_path):
    from codesign.sweep import SweepResult, SweepRow, format_summary

    row = SweepRow(device="pixel8", budget_s=0.01, run_dir=str(tmp_path / "pixel8-10ms"),
                   n_pareto=1, status="ok", budget="10ms", trials=4, metric="perplexity",
                   best_quality=3.25, best_latency_s=0.005, attempts=1)
    header = format_summary(SweepResult(tmp_path, [row], 1.0)).splitlines()[0]
    assert "best val ppl" in header and "acc" not in header


@pytest.mark.slow
def test_sweep_exits_3_when_a_run_has_no_feasible_candidate(tmp_path, capsys, local_ray):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--devices", "pixel8", "--budgets", "10ms,1us", "--trials", "3",
               "--seed", "3", "--evaluator", PROXY, "--out", str(out)])
    assert rc == 3
    runs = {r["budget"]: r for r in _sweep_json(out)["runs"]}
    assert runs["10ms"]["status"] == "ok" and runs["10ms"]["n_pareto"] > 0
    assert runs["1us"]["status"] == "no-feasible" and runs["1us"]["n_pareto"] == 0
    assert "none of the 3 completed trials fits" in runs["1us"]["reason"]
    pareto = json.loads((out / "pixel8-1us" / "pareto.json").read_text())
    assert pareto["status"] == "no-feasible"
    captured = capsys.readouterr()
    assert "1 of 2 runs have no feasible candidate" in captured.err.splitlines()[-1]
    assert "pixel8-1us no-feasible: no feasible candidate" in captured.out


@pytest.mark.slow
def test_sweep_exits_1_when_every_trial_of_a_run_failed(tmp_path, capsys, local_ray):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--devices", "pixel8", "--budgets", "10ms", "--trials", "2",
               "--evaluator", "tests.search_helpers:failing_evaluator", "--out", str(out)])
    assert rc == 1
    (run,) = _sweep_json(out)["runs"]
    assert run["status"] == "failed" and run["n_complete"] == 0
    assert "no trial completed: all 2 trials failed" in run["reason"]
    assert "1 of 1 runs failed" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [("pixel9", "unknown device 'pixel9'"),
                                          ("missing.yaml", "missing.yaml: no such device file")])
def test_every_device_is_checked_before_any_supernet_is_built(tmp_path, monkeypatch, capsys,
                                                              bad, message):
    """A bad second device is exit 2 at once, not after the first device's supernet trained."""
    import ray

    from codesign.evaluation.supernet_evaluator import SupernetEvaluator

    built = []
    monkeypatch.setattr(SupernetEvaluator, "shared_state", lambda self: built.append(self) or {})
    rc = main(["sweep", "--devices", f"pixel8,{tmp_path / bad if '.' in bad else bad}",
               "--budgets", "5ms", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err, err
    assert built == [], "no shared state is built before every device is known good"
    assert not ray.is_initialized() and not (tmp_path / "s").exists()
