"""The search driver with a fast user evaluator: storage, constraints, front, resume, CLI."""
import json

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from codesign.cli import main
from codesign.search import SearchConfig, run_search
from codesign.userinput import BadInput
from codesign.cost_models.backends import Precision, load_backend
from codesign.search_spaces.mbconv import MBConvSpace
from tests.cli_helpers import assert_bad_input_exits_2

PROXY = "tests.search_helpers:proxy_accuracy"


def config(tmp_path, **kw):
    base = dict(device="pixel8", budget_s=0.01, budget_text="10ms", trials=24, seed=3,
                evaluator=PROXY, out=tmp_path / "run", progress=False)
    base.update(kw)
    return SearchConfig(**base)


def load_trials(run_dir):
    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name="codesign", storage=storage).get_trials()


def test_search_writes_valid_front_and_keeps_every_trial(tmp_path):
    result = run_search(config(tmp_path))
    pareto = json.loads((result.run_dir / "pareto.json").read_text())
    for key in ("device", "backend", "budget_s", "space", "cost_model", "trials",
                "eval_input_shape", "deploy_input_shape", "accuracy_split", "n_eval",
                "provenance", "members"):
        assert key in pareto
    assert pareto["trials"] == 24 and len(load_trials(result.run_dir)) == 24
    assert pareto["status"] == "ok"
    assert pareto["backend"] == "xnnpack" and pareto["deploy_input_shape"] == [1, 3, 64, 64]
    assert set(pareto["provenance"]) >= {"spec_sha256", "versions", "seed"}
    assert pareto["members"], "a 10 ms budget on pixel8 has feasible candidates"
    for m in pareto["members"]:
        assert m["latency_s"] <= pareto["budget_s"]
        lo, hi = m["latency_band_s"]
        assert lo <= m["latency_s"] <= hi
        assert m["test_accuracy"] == pytest.approx(m["accuracy"] - 0.01)
        assert m["model_bytes"] > 0 and m["peak_activation_bytes"] > 0
        assert {layer["bound"] for layer in m["layers"]} <= {"compute", "memory", "overhead"}
        assert sum(layer["latency_s"] for layer in m["layers"]) == pytest.approx(m["latency_s"])
    # members are mutually non-dominated
    ms = pareto["members"]
    for a in ms:
        for b in ms:
            if a is not b:
                assert not (a["accuracy"] >= b["accuracy"] and a["latency_s"] <= b["latency_s"]
                            and a["model_bytes"] <= b["model_bytes"] and
                            (a["accuracy"], a["latency_s"], a["model_bytes"]) !=
                            (b["accuracy"], b["latency_s"], b["model_bytes"]))
    csv_lines = (result.run_dir / "pareto.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(ms)


def test_infeasible_trials_never_reach_the_front(tmp_path):
    result = run_search(config(tmp_path, budget_s=0.004, budget_text="4ms", trials=20))
    trials = [t for t in load_trials(result.run_dir) if t.state.name == "COMPLETE"]
    over = [t for t in trials if t.user_attrs["latency_s"] > 0.004]
    assert over, "some sampled candidates exceed a 4 ms budget"
    front = {m["trial"] for m in result.pareto["members"]}
    assert not front & {t.number for t in over}


def test_seeded_search_is_reproducible(tmp_path):
    a = run_search(config(tmp_path, out=tmp_path / "a", trials=12))
    b = run_search(config(tmp_path, out=tmp_path / "b", trials=12))
    pa = [t.params for t in load_trials(a.run_dir)]
    pb = [t.params for t in load_trials(b.run_dir)]
    assert pa == pb
    assert a.pareto["members"] == b.pareto["members"]


def test_xnnpack_members_use_only_xnnpack_choices(tmp_path):
    result = run_search(config(tmp_path, backend="xnnpack", trials=16))
    assert result.pareto["backend"] == "xnnpack"
    cap = load_backend("xnnpack")
    space = MBConvSpace(load_backend("xnnpack"), threads_choices=(1, 2, 4))
    for t in load_trials(result.run_dir):
        assert not any(name.endswith(".tile") for name in t.params)
        for unit, choice in space.decode(t.params).layers:
            p = Precision.parse(choice.precision)
            assert p.label in {"w32a32", "w8a8", "w4a8-dyn"} and choice.sparsity == "dense"
            if p.weight_bits == 4:
                assert unit in ("feature", "classifier"), "4-bit only on linears"
    for m in result.pareto["members"]:
        assert all(layer["sparsity"] == "dense" and layer["tile"] == "default"
                   for layer in m["layers"])
    assert cap.tiles_choosable is False


def test_resume_continues_to_the_total_and_refuses_mismatch(tmp_path):
    first = run_search(config(tmp_path, trials=6))
    resumed = run_search(config(tmp_path, out=None, resume=first.run_dir, trials=10))
    assert len(load_trials(first.run_dir)) == 10 and resumed.pareto["trials"] == 10
    with pytest.raises(BadInput, match="budget_s"):
        run_search(config(tmp_path, out=None, resume=first.run_dir, budget_s=0.005,
                          budget_text="5ms"))
    with pytest.raises(BadInput, match="backend"):
        run_search(config(tmp_path, out=None, resume=first.run_dir, backend="codesign"))
    with pytest.raises(BadInput, match="not a codesign run directory"):
        run_search(config(tmp_path, out=None, resume=tmp_path))


def test_resume_fails_a_trial_a_dead_process_left_running(tmp_path):
    first = run_search(config(tmp_path, trials=4))
    storage = JournalStorage(JournalFileBackend(str(first.run_dir / "study.journal")))
    optuna.load_study(study_name="codesign", storage=storage).ask()  # asked, never told: a crash
    resumed = run_search(config(tmp_path, out=None, resume=first.run_dir, trials=6))
    trials = load_trials(first.run_dir)
    stale = trials[4]
    assert stale.state.name == "FAIL" and stale.user_attrs["interrupted"] is True
    assert stale.user_attrs["fail_reason"] == ("left RUNNING by a process that died; failed on "
                                               "resume")
    # the interrupted trial does not count: six evaluated trials besides it
    assert len(trials) == 7 and sum(t.state.name == "COMPLETE" for t in trials) == 6
    assert resumed.pareto["n_interrupted"] == 1
    assert not [t for t in trials if t.state.name == "RUNNING"]


def test_failed_trials_are_recorded_and_search_goes_on(tmp_path):
    result = run_search(config(tmp_path, evaluator="tests.search_helpers:broken_evaluator",
                               trials=16, sampler="random"))
    trials = load_trials(result.run_dir)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and len(trials) == 16
    assert all(t.user_attrs["fail_reason"] for t in failed)
    assert result.pareto["n_failed"] == len(failed)


def test_baseline_is_enqueued_and_reported(tmp_path):
    from codesign.context import load_space
    from codesign.cost_models.devices import load_device
    import numpy as np

    backend = load_backend("xnnpack")  # the default back-end's space
    space = load_space("mbconv", backend, load_device("pixel8"))
    params = space.sample(np.random.default_rng(7))
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(params))
    result = run_search(config(tmp_path, baseline=path, trials=8))
    first = load_trials(result.run_dir)[0]
    assert first.params == params and first.user_attrs["baseline"] is True
    assert result.pareto["baseline"]["params"] == params


@pytest.mark.parametrize("argv, message", [
    (["--budget", "10"], "has no unit"),
    (["--budget", "0ms"], "positive"),
    (["--budget", "-1ms"], "negative"),
    (["--budget", "10parsecs"], "unknown unit"),
    (["--trials", "0"], "--trials must be an integer >= 1"),
    (["--space", "nope"], "unknown --space 'nope'; valid: mbconv, nasbench201, fbnet"),
    (["--space", "tests.search_helpers:not_a_space"],
     "not a codesign.search_spaces.base.SearchSpace"),
    (["--backend", "coreml"], "has no back-end 'coreml'; valid: xnnpack, codesign"),
    (["--evaluator", "tests.search_helpers:missing"], "has no attribute 'missing'"),
    (["--sampler", "cmaes"], "unknown --sampler 'cmaes'; valid: tpe, nsga2, random"),
])
def test_search_bad_input_exits_2(tmp_path, argv, message, capsys):
    assert_bad_input_exits_2("search", {"--device": "pixel8", "--budget": "10ms", "--trials": "2",
                                        "--evaluator": PROXY, "--out": str(tmp_path / "r")},
                             argv, message, capsys)


def test_bad_baseline_and_resume_dirs_exit_2(tmp_path, capsys):
    bad = tmp_path / "b.json"
    bad.write_text('{"stem.width": 99}')
    base = ["search", "--device", "pixel8", "--budget", "10ms", "--trials", "2",
            "--evaluator", PROXY]
    assert main(base + ["--baseline", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "not a point of space mbconv" in capsys.readouterr().err
    assert main(base + ["--resume", str(tmp_path)]) == 2
    assert "not a codesign run directory" in capsys.readouterr().err


def test_baseline_with_a_number_written_as_text_exits_2_naming_it(tmp_path, capsys):
    # was a TypeError traceback from range("3") while the space walked its params
    from codesign.context import load_space
    from codesign.cost_models.devices import load_device
    import numpy as np

    space = load_space("mbconv", load_backend("xnnpack"), load_device("pixel8"))
    params = space.sample(np.random.default_rng(3))
    params["s0.depth"] = str(params["s0.depth"])
    path = tmp_path / "b.json"
    path.write_text(json.dumps(params))
    assert main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "2",
                 "--evaluator", PROXY, "--baseline", str(path),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not a point of space mbconv" in err and "s0.depth=" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_search_end_to_end_with_user_space(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["search", "--device", "rpi5", "--budget", "20ms", "--trials", "6",
                 "--space", "tests.search_helpers:small_space", "--evaluator", PROXY,
                 "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "pareto.json").read_text())
    assert printed["space"] == "tests.search_helpers:small_space"
    assert (out / "search.log").read_text().count("search") >= 1


def test_front_depends_on_the_budget(tmp_path):
    tight = run_search(config(tmp_path, out=tmp_path / "5", budget_s=0.005, budget_text="5ms",
                              trials=30, sampler="random"))
    loose = run_search(config(tmp_path, out=tmp_path / "20", budget_s=0.020, budget_text="20ms",
                              trials=30, sampler="random"))
    fronts = [{json.dumps(m["params"], sort_keys=True) for m in r.pareto["members"]}
              for r in (tight, loose)]
    assert fronts[0] != fronts[1]
    assert max(m["latency_s"] for m in loose.pareto["members"]) > 0.005
    assert all(m["latency_s"] <= 0.005 for m in tight.pareto["members"])


def test_a_candidate_proposed_twice_is_one_member():
    import optuna
    from optuna.distributions import CategoricalDistribution

    from codesign.results import unique_candidates

    dist = {"w": CategoricalDistribution([8, 16])}
    trials = [optuna.trial.create_trial(params={"w": w}, distributions=dist, values=[0.9, 1.0])
              for w in (8, 16, 8)]
    for number, trial in enumerate(trials):
        trial.number = number
    assert [t.number for t in unique_candidates(trials)] == [0, 1]


def test_search_exits_0_with_a_front(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "4",
                 "--seed", "3", "--evaluator", PROXY, "--out", str(out), "--json"]) == 0
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["status"] == "ok" and pareto["members"]
    # stdout is the JSON alone; stderr: plain progress lines (no terminal), then the cache
    captured = capsys.readouterr()
    json.loads(captured.out)
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("cache directory: ")
    assert err[:-1] == [line for line in err[:-1] if line.startswith("search: ")]
    assert err[-2].startswith("search: 4/4 trials (100%)")


def test_search_exits_3_when_no_completed_trial_fits_the_budget(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--device", "pixel8", "--budget", "1us", "--trials", "3",
                 "--evaluator", PROXY, "--out", str(out), "--no-progress"])
    assert code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none of the 3 completed trials fits" in err, err
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["status"] == "no-feasible" and pareto["members"] == []
    assert pareto["n_complete"] == 3 and pareto["n_feasible"] == 0


def test_search_exits_1_when_no_trial_completes(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "3",
                 "--evaluator", "tests.search_helpers:failing_evaluator", "--out", str(out),
                 "--no-progress", "--export"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trial completed: all 3 trials failed" in err, err
    assert "RuntimeError: the validation data is not there" in err
    assert f"log: {out / 'search.log'}" in err
    assert "the validation data is not there" in (out / "search.log").read_text()
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["status"] == "no-feasible" and pareto["n_complete"] == 0
    assert not (out / "export").exists(), "nothing to export"


@pytest.mark.parametrize("change, named", [
    ({"seed": 4}, ["--seed 4 (the run's: 3)"]),
    ({"sampler": "random"}, ["--sampler 'random' (the run's: 'tpe')"]),
    ({"seed": 5, "sampler": "random"}, ["--seed 5 (the run's: 3), --sampler 'random'"]),
    ({"evaluator": "tests.search_helpers:broken_evaluator"}, ["--evaluator"]),
])
def test_resume_refuses_other_study_options_naming_them(tmp_path, change, named):
    first = run_search(config(tmp_path, trials=2))
    with pytest.raises(BadInput) as info:
        run_search(config(tmp_path, out=None, resume=first.run_dir, trials=3, **change))
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in named), message
    assert len(load_trials(first.run_dir)) == 2, "nothing ran"


def test_resume_refuses_another_seed_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["search", "--device", "pixel8", "--budget", "10ms", "--evaluator", PROXY,
            "--no-progress", "--seed", "3"]
    assert main(base + ["--trials", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(base[:-1] + ["4", "--trials", "3", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seed 4 (the run's: 3)" in err, err
    # how long and how wide it runs may change, and the same budget written another way
    assert main(["search", "--device", "pixel8", "--budget", "10 ms", "--evaluator", PROXY,
                 "--no-progress", "--seed", "3", "--trials", "3", "--timeout", "600",
                 "--resume", str(out)]) == 0
    assert len(load_trials(out)) == 3


def test_a_field_added_to_search_config_is_part_of_the_fingerprint(tmp_path):
    """Room for the options later issues add: a new SearchConfig field is checked on resume
    without further code (as --min-accuracy, --max-formats and --finetune-steps are)."""
    import dataclasses

    Extended = dataclasses.make_dataclass("Extended", [("calib_images", int, 0)],
                                          bases=(SearchConfig,), frozen=True)
    first = run_search(Extended(**vars(config(tmp_path, trials=2)), calib_images=5))
    run_json = json.loads((first.run_dir / "run.json").read_text())
    assert run_json["options"]["calib_images"] == 5
    assert run_json["options"]["max_formats"] == 3
    assert not {"trials", "out", "resume", "progress"} & set(run_json["options"])
    with pytest.raises(BadInput, match=r"--calib-images 6 \(the run's: 5\)"):
        run_search(Extended(**vars(config(tmp_path, out=None, resume=first.run_dir, trials=3)),
                            calib_images=6))
    with pytest.raises(BadInput, match=r"--max-formats 2 \(the run's: 3\)"):
        run_search(Extended(**vars(config(tmp_path, out=None, resume=first.run_dir, trials=3,
                                          max_formats=2)), calib_images=5))
