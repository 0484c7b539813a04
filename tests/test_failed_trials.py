"""Trials that fail — a candidate that cannot be built, an evaluator that raises or returns NaN —
are recorded FAIL with their reason, the search goes on, and the end-of-run table counts them."""
import re

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from codesign.cli import main


def test_failed_trials_are_recorded_with_reasons_and_counted(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "18",
                 "--sampler", "random", "--seed", "1", "--no-progress",
                 "--space", "tests.search_helpers:fragile_space",
                 "--evaluator", "tests.search_helpers:broken_evaluator", "--out", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    trials = optuna.load_study(study_name="codesign", storage=storage).get_trials()
    assert len(trials) == 18, "every failure was followed by the next trial"
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reasons = [t.user_attrs["fail_reason"] for t in failed]
    assert any(r.startswith("cannot build candidate: ValueError: stage 1") for r in reasons)
    assert any("RuntimeError: cannot build this one" in r for r in reasons)
    assert any("returned accuracy nan" in r for r in reasons)
    assert len(failed) < len(trials), "some trials complete"
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    match = re.search(r"18 trials: (\d+) complete \(\d+ within budget\), (\d+) failed", table)
    assert match, table
    assert (int(match[1]), int(match[2])) == (n_complete, len(failed))
