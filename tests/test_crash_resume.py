"""A search killed with SIGKILL at seeded random points resumes to the requested total.

One run directory goes through four kills, each followed by ``--resume``: halfway through a
journal write (the lock held, the record torn: ``CODESIGN_TEST_KILL_AT=journal_write:K``), at a
random moment after a trial completed (a timed ``SIGKILL`` from here), in a journal write of the
resumed process, and between writing ``pareto.json``'s temporary file and renaming it
(``CODESIGN_TEST_KILL_AT=rename:pareto.json``). Before each resume the journal is read with
Optuna; every trial COMPLETE then must still be there afterwards, unchanged.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from codesign.run_dir import KILL_AT_ENV, repair_journal

pytestmark = pytest.mark.slow

TRIALS = 12
SEED = 20261125
ROOT = Path(__file__).resolve().parent.parent
SEARCH = [sys.executable, "-m", "codesign.cli", "search", "--device", "pixel8", "--budget", "10ms",
          "--evaluator", "tests.search_helpers:proxy_accuracy", "--trials", str(TRIALS),
          "--no-progress"]
STEP_TIMEOUT_S = 240  # a resume that hangs on the dead process's lock fails here


def read_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name="codesign", storage=storage).get_trials()


def complete(run_dir: Path) -> dict[int, tuple]:
    return {t.number: (t.params, t.values) for t in read_trials(run_dir)
            if t.state == TrialState.COMPLETE}


def env(kill_at: str | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}
    out["PYTHONPATH"] = str(ROOT)
    if kill_at:
        out[KILL_AT_ENV] = kill_at
    return out


def run(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(SEARCH + args, cwd=ROOT, env=env(kill_at), capture_output=True,
                          text=True, timeout=STEP_TIMEOUT_S)


def run_and_kill_later(args: list[str], run_dir: Path, delay_s: float) -> int:
    """Start a search, wait until one more trial completed, SIGKILL it ``delay_s`` later."""
    before = len(complete(run_dir)) if (run_dir / "study.journal").exists() else 0
    proc = subprocess.Popen(SEARCH + args, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if (run_dir / "study.journal").exists() and len(complete(run_dir)) > before:
                break
            time.sleep(0.2)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_kept(run_dir: Path, before: dict[int, tuple]) -> None:
    after = complete(run_dir)
    for number, (params, values) in before.items():
        assert number in after, f"trial {number} was COMPLETE before the kill and is gone"
        assert after[number] == (params, values), f"trial {number} changed across the resume"


def test_sigkill_at_random_points_then_resume_loses_nothing(tmp_path):
    rng = np.random.default_rng(SEED)
    run_dir = tmp_path / "run"
    journal = run_dir / "study.journal"
    lock = Path(str(journal) + ".lock")
    resume = ["--resume", str(run_dir)]

    # 1. the first process dies halfway through a journal record, holding the lock
    k1 = int(rng.integers(250, 600))  # ~100 records a trial: a few trials in
    first = run(["--out", str(run_dir)], kill_at=f"journal_write:{k1}")
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert os.path.lexists(lock), "the killed writer leaves its lock behind"
    assert not journal.read_bytes().endswith(b"\n"), "the last record is torn"
    snapshot = complete(run_dir)
    assert snapshot, f"{k1} journal writes complete at least one trial"

    # 2. resume, killed at a random moment after one more trial (the stale lock must not hang it)
    code = run_and_kill_later(resume, run_dir, delay_s=float(rng.uniform(0.0, 0.5)))
    assert code == -signal.SIGKILL
    assert_kept(run_dir, snapshot)
    snapshot = complete(run_dir)

    # 3. resume, killed in one of its own journal writes
    k2 = int(rng.integers(20, 150))
    third = run(resume, kill_at=f"journal_write:{k2}")
    assert third.returncode in (-signal.SIGKILL, 0), third.stderr
    assert_kept(run_dir, snapshot)
    snapshot = complete(run_dir)

    # 4. resume, killed between writing pareto.json's temporary file and renaming it: the
    #    file stays what it was (absent unless step 3 happened to finish the run)
    result = run_dir / "pareto.json"
    old = result.read_text() if result.exists() else None
    fourth = run(resume, kill_at="rename:pareto.json")
    assert fourth.returncode == -signal.SIGKILL, fourth.stderr
    assert list(run_dir.glob(".pareto.json.*.tmp")), "killed before the rename"
    assert (result.read_text() if result.exists() else None) == old
    assert len(complete(run_dir)) == TRIALS
    assert_kept(run_dir, snapshot)
    snapshot = complete(run_dir)

    # 5. the last resume only writes the results
    start = time.monotonic()
    last = run(resume)
    assert last.returncode == 0, last.stderr
    assert time.monotonic() - start < STEP_TIMEOUT_S
    assert_kept(run_dir, snapshot)

    trials = read_trials(run_dir)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == TRIALS
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert [t.number for t in trials] == list(range(len(trials))), "no trial twice"
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the kills left trials RUNNING, failed on resume"
    assert all(t.user_attrs.get("interrupted") for t in failed), "only crashes fail here"
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["n_complete"] == TRIALS and pareto["trials"] == len(trials)
    assert pareto["n_interrupted"] == len(failed)
    assert f"{len(failed)} interrupted by a crash" in last.stdout
    assert {m["trial"] for m in pareto["members"]} <= set(complete(run_dir))
    assert not list(run_dir.glob(".*.tmp")) and not os.path.lexists(lock)


def test_repair_journal_cuts_only_a_torn_last_record(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b'{"a":1}\n{"b":2}\n')
    assert repair_journal(path) == 0 and path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    path.write_bytes(b'{"a":1}\n{"b":')
    assert repair_journal(path) == 5 and path.read_bytes() == b'{"a":1}\n'
    path.write_bytes(b'{"a"')
    assert repair_journal(path) == 4 and path.read_bytes() == b""
    big = b"x" * 200_000
    path.write_bytes(b'{"a":1}\n' + big)
    assert repair_journal(path) == len(big) and path.read_bytes() == b'{"a":1}\n'


def test_damaged_journal_and_unusable_out_are_bad_input(tmp_path, capsys):
    from codesign.cli import main
    from codesign.search import SearchConfig, run_search

    run_dir = tmp_path / "run"
    run_search(SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms", trials=3,
                            evaluator="tests.search_helpers:proxy_accuracy", out=run_dir,
                            progress=False))
    journal = run_dir / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[len(lines) // 2] = b'{"op_code": 5, "worker_id": "x", "trial_id": \n'
    journal.write_bytes(b"".join(lines))
    base = ["search", "--device", "pixel8", "--budget", "10ms", "--trials", "4",
            "--evaluator", "tests.search_helpers:proxy_accuracy", "--no-progress"]
    assert main(base + ["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"is damaged at line {len(lines) // 2 + 1}" in err and err.count("\n") == 1
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, message in ((a_file, "exists and is not a directory"),
                         (a_file / "sub", "cannot create the run directory")):
        assert main(base + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
