"""``codesign search --task MODULE:FACTORY``: the user's own data, end to end and when it is bad.

The data is ``tests.task_helpers.synthetic`` (3 classes of one-channel 32x32 images with a tiny
training config of its own); the space is the narrow ``tests.export_helpers.small_space``, so a
search trains its supernet in seconds.
"""
from __future__ import annotations

import json

import pytest

from codesign.cli import main
from codesign.search_spaces.mbconv import load_mbconv_config
from codesign.search_spaces.mbconv_training import (TrainConfig, cache_key, config_for_task,
                                                    shipped_path, train_config_for)
from codesign.search_spaces.tasks import TaskError, load_task, user_task

TASK = "tests.task_helpers:synthetic"
SPACE = "tests.export_helpers:small_space"
SEARCH = ["search", "--device", "pixel8", "--budget", "10ms", "--space", SPACE]


@pytest.fixture(scope="module")
def task_run(module_cache_dir, one_torch_thread, tmp_path_factory):
    """A finished search on the synthetic task (few trials, tiny training, 2 fine-tune steps)."""
    run_dir = tmp_path_factory.mktemp("task") / "run"
    rc = main([*SEARCH, "--task", TASK, "--trials", "4", "--predictor-trials", "0",
               "--finetune-steps", "2", "--min-accuracy", "0.3", "--no-progress",
               "--out", str(run_dir)])
    assert rc == 0
    return run_dir


def test_search_trains_scores_and_prices_on_the_task(task_run):
    pareto = json.loads((task_run / "pareto.json").read_text())
    task = user_task(TASK)
    # the priced input is the task's images (one channel, 32x32), not the digits' 3x64x64
    assert pareto["deploy_input_shape"] == pareto["eval_input_shape"] == [1, 1, 32, 32]
    assert pareto["task"]["sha256"] == task.sha256 and pareto["task"]["num_classes"] == 3
    assert pareto["n_eval"] == len(task.splits["val"][1]) == 48  # scored on the task's val split
    assert "1x32x32" in pareto["reference"]["model"]
    identity = json.loads((task_run / "run.json").read_text())
    assert identity["options"]["task"] == TASK and identity["task_sha256"] == task.sha256
    # the supernet trained on first use into the user cache, keyed by the data's hash
    from codesign.kernels.cache_paths import cache_dir

    assert any(p.name.startswith("small-") for p in (cache_dir() / "supernets").iterdir())


def test_report_names_the_task(task_run, capsys):
    capsys.readouterr()
    assert main(["report", str(task_run)]) == 0
    out = capsys.readouterr().out
    assert f"task: quadrants ({TASK}): 3 classes, 1x32x32 images, 96/48/48 train/val/test" in out


def test_export_verifies_a_pte_on_the_task(task_run, capsys):
    pareto = json.loads((task_run / "pareto.json").read_text())
    member = max(pareto["members"], key=lambda m: m["test_accuracy"])
    assert main(["export", str(task_run), "--members", str(member["trial"])]) == 0
    manifest = json.loads((task_run / "export" / f"trial-{member['trial']}" /
                           "manifest.json").read_text())
    assert (task_run / "export" / f"trial-{member['trial']}" / "model.pte").is_file()
    assert manifest["status"] == "exported" and manifest["deploy_input_shape"] == [1, 1, 32, 32]
    assert manifest["output_check"]["within_tolerance"]  # the runtime matches the model
    assert "48 test images" in manifest["accuracy_exported_note"]  # the task's test split
    # the program's accuracy on the task's test split is the searched member's (48 images)
    assert manifest["accuracy_exported"] == pytest.approx(member["test_accuracy"], abs=1 / 48 + 1e-9)


def test_resume_checks_the_task(task_run, capsys):
    capsys.readouterr()
    base = [*SEARCH, "--trials", "5", "--resume", str(task_run), "--min-accuracy", "0.3"]
    # same data through another factory: the study's --task option differs
    assert main([*base, "--task", "tests.task_helpers:synthetic_datasets"]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(base) == 2  # no task: not the run's data
    assert "task_sha256" in capsys.readouterr().err


def _edit_identity(run_dir, **changes):
    path = run_dir / "run.json"
    identity = json.loads(path.read_text())
    original = dict(identity)
    for key, value in changes.items():
        if key == "task_ref":
            identity["options"] = {**identity["options"], "task": value}
        else:
            identity[key] = value
    path.write_text(json.dumps(identity))
    return lambda: path.write_text(json.dumps(original))


@pytest.mark.parametrize("change, message", [
    ({"task_ref": "tests.no_such_module:synthetic"}, "cannot import module 'tests.no_such_module'"),
    ({"task_sha256": "0" * 64}, "changed since the search"),
])
def test_export_refuses_a_task_it_cannot_reload(task_run, capsys, change, message):
    restore = _edit_identity(task_run, **change)
    try:
        capsys.readouterr()
        assert main(["export", str(task_run), "--members", "all"]) == 2
        err = capsys.readouterr().err.strip()
    finally:
        restore()
    assert "\n" not in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("ref, message", [
    ("synthetic", "must be MODULE:FACTORY"),
    ("tests.no_such_module:make", "cannot import module 'tests.no_such_module'"),
    ("tests.task_helpers:nope", "has no attribute 'nope'"),
    ("tests.task_helpers:not_callable", "is not callable"),
    ("tests.task_helpers:raises", "the factory raised RuntimeError: the data server is down"),
    ("tests.task_helpers:wrong_type", "returned dict, not a codesign.search_spaces.tasks."
                                      "TaskSplits"),
    ("tests.task_helpers:mixed_shapes", "differ in C,H,W: train 1x32x32, val 1x32x40"),
    ("tests.task_helpers:labels_out_of_range", "labels must be in [0, 2)"),
    ("tests.task_helpers:bad_training", "unknown field 'epoch'"),
    ("tests.task_helpers:too_small", "it needs H and W >= 32"),
])
def test_bad_task_exits_2_with_one_line(ref, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SEARCH, "--task", ref, "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"codesign search: error: --task {ref!r}") and message in err
    assert "\n" not in err and not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--space", "nasbench201"], "applies to MBConv spaces"),
    (["--evaluator", "tests.search_helpers:proxy_accuracy"], "give one of them"),
])
def test_task_with_a_space_or_evaluator_that_cannot_use_it(extra, message, tmp_path, capsys):
    argv = ["search", "--device", "pixel8", "--budget", "10ms", "--task", TASK, "--trials", "2",
            "--out", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_splits_as_datasets_are_the_same_data_and_share_the_supernet():
    tensors, datasets = user_task(TASK), user_task("tests.task_helpers:synthetic_datasets")
    assert tensors.sha256 == datasets.sha256
    config = config_for_task(load_mbconv_config(), TASK)
    other = config_for_task(load_mbconv_config(), "tests.task_helpers:synthetic_datasets")
    # keyed by the data and the training config, not by where the factory lives
    assert cache_key(config, 0, train_config_for(TASK)) == cache_key(
        other, 0, train_config_for("tests.task_helpers:synthetic_datasets"))
    assert cache_key(config, 0, train_config_for(TASK)) != cache_key(
        config, 0, TrainConfig(task=TASK))  # the task's own training overrides count


def test_task_shapes_the_space_and_sets_the_default_floor():
    """Channels and resolution of the images (3x40x36 here: odd, not square) become the priced
    input; the floor is logistic regression fitted on the task's own train split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from codesign.context import build_context
    from codesign.search import SearchConfig

    ref = "tests.task_helpers:three_channel"
    context = build_context(SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms",
                                         space=SPACE, task=ref))
    assert context.space.deploy_input_shape == context.space.eval_input_shape == (1, 3, 40, 36)
    assert context.space.config.num_classes == 3
    assert context.evaluator.train.max_steps == 30 and context.evaluator.train.task == ref
    task = user_task(ref)
    flat = {k: (x.reshape(len(x), -1).numpy(), y.numpy()) for k, (x, y) in task.splits.items()}
    scaler = StandardScaler().fit(flat["train"][0])
    lr = LogisticRegression(max_iter=5000).fit(scaler.transform(flat["train"][0]),
                                               flat["train"][1])
    val = float((lr.predict(scaler.transform(flat["val"][0])) == flat["val"][1]).mean())
    assert context.min_accuracy == context.reference["accuracy"] == pytest.approx(val)
    candidate = context.space.decode(context.space.seed_params()[0])
    stem = next(op for op in context.space.to_ops(candidate) if op.name.startswith("stem"))
    assert stem.in_shapes[0] == (1, 3, 40, 36) and stem.k == 3 * 3 * 3  # the task's images
    # normalised with the train split's statistics, at the task's own resolution
    data = load_task(ref, (40, 36))
    assert abs(float(data.x_train.mean())) < 1e-5 and data.x_train.shape[1:] == (3, 40, 36)
    with pytest.raises(TaskError, match="not the 64x64"):
        load_task(ref, (64, 64))


def test_the_builtin_task_is_unchanged():
    """Without --task: digits, the space file's shapes, and the shipped weights' key."""
    from codesign.cost_models.backends import load_backend
    from codesign.evaluation.supernet_evaluator import SupernetEvaluator
    from codesign.search_spaces.mbconv import MBConvSpace

    config = load_mbconv_config()
    assert config.task == "digits" and config.eval_input_shape == (1, 3, 64, 64)
    evaluator = SupernetEvaluator(MBConvSpace(load_backend("xnnpack"), config=config))
    assert evaluator.train == TrainConfig()
    assert shipped_path(config, config.seed, evaluator.train).is_file()
    assert evaluator.reference()["model"].startswith("logistic regression on the raw 8x8 pixels")
