"""A run directory: identity (run.json), Optuna journal storage, results, log.

Every result file is written to a temporary file in the same directory and renamed over the
target, so a crash leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalFileSymlinkLock

from codesign.userinput import BadInput

RUN_FILE = "run.json"
JOURNAL_FILE = "study.journal"
LOG_FILE = "search.log"
STUDY_NAME = "codesign"
# What must match for --resume to continue a study: anything else would mix incomparable trials.
IDENTITY_KEYS = ("device", "device_sha256", "backend", "budget_s", "space", "space_sha256",
                 "cost_model")


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def default_run_dir(device: str, budget_text: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe_device = Path(device).stem.replace(" ", "")
    return Path("runs") / f"{stamp}-{safe_device}-{budget_text.replace(' ', '')}"


@dataclass(frozen=True)
class RunDir:
    """A run directory on this machine's disk.

    The search driver touches a run only through ``exists``, ``create``, ``check_resume``,
    ``journal_backend``, ``write_text``/``write_json`` and ``log_handler``, so a run that lives on
    another machine's disk (a sweep's runs, written on the driver's node: ``codesign.sweep``)
    implements the same methods.
    """

    path: Path

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    def exists(self) -> bool:
        return (self.path / RUN_FILE).is_file()

    def journal_backend(self) -> BaseJournalBackend:
        # Only one driver writes, and each write holds the lock for milliseconds: a lock older
        # than a few seconds was left by a killed process, so break it instead of waiting 30 s.
        lock = JournalFileSymlinkLock(str(self.journal), grace_period=5)
        return JournalFileBackend(str(self.journal), lock_obj=lock)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def write_json(self, name: str, payload: Any) -> None:
        atomic_write_json(self.path / name, payload)

    def log_handler(self) -> logging.Handler:
        return logging.FileHandler(self.log)

    def identity(self) -> dict[str, Any]:
        file = self.path / RUN_FILE
        if not file.is_file():
            raise BadInput(f"--resume {self.path}: not a codesign run directory (no {RUN_FILE})")
        try:
            return json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(f"--resume {self.path}: {RUN_FILE} is unreadable: {exc}") from None

    def create(self, identity: dict[str, Any]) -> None:
        if self.path.exists() and any(self.path.iterdir()):
            if (self.path / RUN_FILE).exists():
                raise BadInput(f"--out {self.path} already holds a run; continue it with "
                               f"--resume {self.path}, or choose another --out")
            raise BadInput(f"--out {self.path} exists and is not empty")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / RUN_FILE, identity)

    def check_resume(self, identity: dict[str, Any]) -> dict[str, Any]:
        stored = self.identity()
        for key in IDENTITY_KEYS:
            if stored.get(key) != identity.get(key):
                raise BadInput(f"--resume {self.path}: the run's {key} is {stored.get(key)!r}, "
                               f"this search's is {identity.get(key)!r}; they must match")
        if not self.journal.exists():
            raise BadInput(f"--resume {self.path}: no Optuna storage ({JOURNAL_FILE}) in it")
        return stored
