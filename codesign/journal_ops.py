"""The operation codes of Optuna's journal records, for code that reads the journal's entries.

Each record a ``JournalStorage`` appends to its backend is a dict whose ``op_code`` says what it
does. Optuna defines the codes in a private module (``optuna/storages/journal/_storage.py``,
``class JournalOperation``, Optuna 4.0 to 5.1); they are part of the journal *file format* (a
journal written by one Optuna version is read by the next), so they are copied here rather than
imported from a private path. tests/test_journal_ops.py checks the copy against Optuna's enum.
"""
from __future__ import annotations

import enum


class JournalOperation(enum.IntEnum):
    CREATE_STUDY = 0
    DELETE_STUDY = 1
    SET_STUDY_USER_ATTR = 2
    SET_STUDY_SYSTEM_ATTR = 3
    CREATE_TRIAL = 4
    SET_TRIAL_PARAM = 5
    SET_TRIAL_STATE_VALUES = 6
    SET_TRIAL_INTERMEDIATE_VALUE = 7
    SET_TRIAL_USER_ATTR = 8
    SET_TRIAL_SYSTEM_ATTR = 9
    DISCARD_TRIALS = 10
