"""codesign.journal_ops copies Optuna's journal operation codes (a file format); the copy must
match the installed Optuna's private enum, name for name and code for code."""
import json

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from codesign.journal_ops import JournalOperation


def test_codes_match_optunas_enum():
    from optuna.storages.journal._storage import JournalOperation as Optunas  # tests only

    assert {op.name: int(op) for op in JournalOperation} == {op.name: int(op) for op in Optunas}


def test_codes_are_what_the_journal_file_holds(tmp_path):
    path = tmp_path / "study.journal"
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("k", 1)
    study.tell(trial, 0.5)
    codes = [json.loads(line)["op_code"] for line in path.read_text().splitlines()]
    assert codes == [JournalOperation.CREATE_STUDY, JournalOperation.CREATE_TRIAL,
                     JournalOperation.SET_TRIAL_PARAM, JournalOperation.SET_TRIAL_USER_ATTR,
                     JournalOperation.SET_TRIAL_STATE_VALUES]
