"""What a front is worth: the accuracy floor and its reference, few formats per member, and
fine-tuned members whose weights are what is scored and exported."""
import json

import pytest

from codesign.cli import main
from codesign.context import build_context
from codesign.evaluation.supernet_evaluator import SupernetEvaluator
from codesign.search import run_search
from tests.export_helpers import TINY_TRAIN
from tests.test_search import PROXY, config


def _config(tmp_path, **kw):
    """test_search's config (the proxy evaluator) with this file's trials and seed."""
    return config(tmp_path, **{"trials": 16, "seed": 0, **kw})


def test_members_clear_the_accuracy_floor_and_list_few_formats(tmp_path):
    result = run_search(_config(tmp_path, min_accuracy=0.9, max_formats=2))
    pareto = result.pareto
    assert pareto["min_accuracy"] == 0.9 and pareto["max_formats"] == 2
    assert pareto["reference"] is None  # a user evaluator brings no reference model
    assert pareto["members"]
    for m in pareto["members"]:
        assert m["accuracy"] >= 0.9
        assert 1 <= len(m["formats"]) <= 2
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["min_accuracy"] == 0.9


def test_search_starts_from_uniform_seed_points(tmp_path):
    result = run_search(_config(tmp_path, trials=8))
    from codesign.context import load_space
    from codesign.cost_models.backends import load_backend
    from codesign.cost_models.devices import load_device
    space = load_space("mbconv", load_backend("xnnpack"), load_device("pixel8"))
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    study = optuna.load_study(study_name="codesign", storage=JournalStorage(
        JournalFileBackend(str(result.run_dir / "study.journal"))))
    first = [space.decode(t.params) for t in study.get_trials()[:6]]
    assert [c.formats() for c in first] == [["w8a8"]] * 3 + [["w32a32"]] * 3


def test_builtin_evaluator_reports_its_reference_model():
    from codesign.cost_models.backends import load_backend
    from codesign.search_spaces.mbconv import MBConvSpace
    ref = SupernetEvaluator(MBConvSpace(load_backend("xnnpack"))).reference()
    assert ref["model"].startswith("logistic regression on the raw 8x8 pixels")
    assert 0.9 < ref["accuracy"] < 1.0 and 0.9 < ref["test_accuracy"] < 1.0


@pytest.mark.parametrize("argv, message", [
    (["--min-accuracy", "1.5"], "--min-accuracy must be in [0, 1]"),
    (["--min-accuracy", "high"], "--min-accuracy must be a number in [0, 1]"),
    (["--max-formats", "0"], "--max-formats"),
    (["--finetune-steps", "-1"], "--finetune-steps must be an integer >= 0"),
])
def test_quality_flags_are_validated(argv, message, capsys, tmp_path):
    code = main(["search", "--device", "pixel8", "--budget", "10ms", "--out",
                 str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_front_members_are_finetuned_and_scored_with_their_new_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "cache"))
    config = _config(tmp_path, evaluator=None, space="tests.export_helpers:small_space",
                     trials=8, finetune_steps=3, min_accuracy=0.0, budget_s=0.02,
                     budget_text="20ms")
    context = build_context(config)
    context.evaluator = SupernetEvaluator(context.space, train=TINY_TRAIN)
    result = run_search(config, context=context)
    members = result.pareto["members"]
    assert result.pareto["finetune_steps"] == 3 and members
    files = sorted((result.run_dir / "finetuned").glob("*.safetensors"))
    assert len(files) == len(members)
    for m in members:
        assert "accuracy_before_finetune" in m and len(m["accuracy_before_finetune_interval"]) == 2
        candidate = context.space.decode(m["params"])
        assert (result.run_dir / "finetuned" / f"{candidate.key()}.safetensors").is_file()
    # the scores are those of the fine-tuned weights: a fresh evaluator reading the files agrees
    fresh = SupernetEvaluator(context.space, train=TINY_TRAIN,
                              finetuned_dir=result.run_dir / "finetuned")
    for m in members:
        candidate = context.space.decode(m["params"])
        assert fresh.evaluate(candidate).accuracy == pytest.approx(m["accuracy"])
        assert fresh.evaluate(candidate, split="test").accuracy == pytest.approx(
            m["test_accuracy"])
    # the plot draws front members with the fine-tuned accuracy the table prints
    from codesign.report import load_run
    drawn = {p.number: p.accuracy for p in load_run(result.run_dir).points if p.on_front}
    assert drawn == {m["trial"]: m["accuracy"] for m in members}
    # a resumed run reuses the weights instead of fine-tuning again
    stamps = [f.stat().st_mtime_ns for f in files]
    resumed = run_search(_config(tmp_path, evaluator=None, space="tests.export_helpers:small_space",
                                 trials=8, finetune_steps=3, min_accuracy=0.0, budget_s=0.02,
                                 budget_text="20ms", out=None, resume=result.run_dir),
                         context=context)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert resumed.pareto["members"] == members


def test_plain_progress_lines_without_a_terminal(tmp_path, capsys):
    run_search(_config(tmp_path, trials=20, progress_lines=True))
    lines = capsys.readouterr().err.strip().splitlines()
    done = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("search: ")]
    assert done == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


def test_predictor_stage_proposes_trials_that_are_evaluated(tmp_path, monkeypatch):
    from codesign import predictor_stage

    monkeypatch.setattr(predictor_stage, "POPULATION", 40)
    monkeypatch.setattr(predictor_stage, "GENERATIONS", 5)
    result = run_search(_config(tmp_path, trials=30, predictor_trials=6, min_accuracy=0.0))
    report = result.pareto["predictor"]
    assert report["n_train"] == 24 and report["candidates_scored"] == 200
    assert 0 < report["enqueued"] <= 6 and -1.0 <= report["spearman_cv"] <= 1.0
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    trials = optuna.load_study(study_name="codesign", storage=JournalStorage(
        JournalFileBackend(str(result.run_dir / "study.journal")))).get_trials()
    staged = [t for t in trials if t.user_attrs.get("stage") == "predictor"]
    assert len(staged) == report["enqueued"] and len(trials) == 30
    assert all(t.state.name == "COMPLETE" and "predicted" in t.user_attrs for t in staged)
    assert all(t.number >= 24 for t in staged)  # after the TPE trials
    # the proxy accuracy is a smooth function of the architecture: the predictor ranks it
    assert report["spearman_cv"] > 0.5


def test_predictor_stage_prices_exactly_as_the_search(tmp_path):
    """The stage prices through the space's memoised op_batch: the same latency and bytes as
    the search's own per-candidate pricing."""
    import numpy as np

    from codesign.predictor_stage import _price
    from codesign.cost_models.ir import model_bytes

    context = build_context(_config(tmp_path))
    rng = np.random.default_rng(0)
    cands = [context.space.decode(context.space.sample(rng)) for _ in range(100)]
    latency, size = _price(context, cands)
    assert latency.tolist() == [context.price(c).latency_s for c in cands]
    assert size.tolist() == [model_bytes(context.space.to_ops(c)) for c in cands]


def test_progress_lines_count_the_whole_search_across_the_predictor_stage(tmp_path, capsys,
                                                                          monkeypatch):
    """The TPE phase and the predictor stage's trials are one search to the user: every line
    counts against --trials (it used to show 32/32 (100%), then 40/40)."""
    from codesign import predictor_stage

    monkeypatch.setattr(predictor_stage, "POPULATION", 20)
    monkeypatch.setattr(predictor_stage, "GENERATIONS", 2)
    run_search(_config(tmp_path, trials=40, progress_lines=True, min_accuracy=0.0))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("search: ")]
    assert all(line.split()[1].endswith("/40") for line in lines), lines
    assert [int(line.split()[1].split("/")[0]) for line in lines] == list(range(4, 41, 4))


def test_a_search_no_member_of_which_clears_the_floor_says_so(tmp_path, capsys):
    code = main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "4",
                 "--evaluator", PROXY, "--min-accuracy", "1.0", "--out", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1
    assert "fits the 10 ms budget with val accuracy >= 1.000" in err[0], err
