"""A run directory: identity (run.json), Optuna journal storage, results, log.

Every result file is written to a temporary file in the same directory and renamed over the
target, so a crash leaves either the old file or the new one, never half of one. ``--resume``
(``check_resume``) repairs what a killed process leaves: a torn last journal record and
temporary files; its stale journal lock is broken after ``LOCK_GRACE_S``.

Crash-test hook (``tests/test_crash_resume.py``): with ``CODESIGN_TEST_KILL_AT`` set the process
SIGKILLs itself at a chosen point — ``journal_write:K`` halfway through writing its K-th journal
record (holding the journal lock), ``rename:NAME`` after writing NAME's temporary file, before
renaming it. Unset, nothing changes.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import signal
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
# So must every option in the identity's "options" (context.study_options).
IDENTITY_KEYS = ("device", "device_sha256", "backend", "budget_s", "space", "space_sha256",
                 "cost_model", "cost_model_sha256", "task_sha256")
# The options a run made before run.json had "options" recorded at its top level.
_LEGACY_OPTIONS = ("seed", "sampler", "evaluator")
# Only one driver writes a journal, and each write holds the lock for milliseconds: a lock older
# than a few seconds was left by a killed process, so break it instead of waiting Optuna's 30 s.
LOCK_GRACE_S = 5
KILL_AT_ENV = "CODESIGN_TEST_KILL_AT"
_UMASK = os.umask(0o022)  # read once (setting it is process-wide), then put back
os.umask(_UMASK)


def _kill_point(kind: str) -> str | None:
    """The argument of the crash-test hook if it names ``kind`` (see the module docstring)."""
    spec = os.environ.get(KILL_AT_ENV, "")
    name, _, arg = spec.partition(":")
    return arg if name == kind else None


class _TornWriteJournal(JournalFileBackend):
    """The journal, but the K-th append writes half its bytes and SIGKILLs the process."""

    def __init__(self, path: str, lock: JournalFileSymlinkLock, kill_at: int) -> None:
        super().__init__(path, lock_obj=lock)
        self._path, self._lock_obj, self._kill_at, self._appends = path, lock, kill_at, 0

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._appends += 1
        if self._appends < self._kill_at:
            return super().append_logs(logs)
        self._lock_obj.acquire()
        data = ("\n".join(json.dumps(x, separators=(",", ":")) for x in logs) + "\n").encode()
        with open(self._path, "ab") as handle:
            handle.write(data[:max(1, len(data) // 2)])
            handle.flush()
            os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def repair_journal(path: Path) -> int:
    """Cut a torn last record (the write a killed process died in) off a journal file.

    Optuna's reader skips a last line without its newline, but the next append would be glued
    onto it and the merged line would poison every later read. Returns the bytes cut.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        keep, chunk = size, 1 << 16
        while keep > 0:
            start = max(0, keep - chunk)
            handle.seek(start)
            block = handle.read(keep - start)
            if keep == size and block.endswith(b"\n"):
                return 0
            at = block.rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            keep = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return size - keep


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if _kill_point("rename") == path.name:
            os.kill(os.getpid(), signal.SIGKILL)
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
        lock = JournalFileSymlinkLock(str(self.journal), grace_period=LOCK_GRACE_S)
        kill_at = _kill_point("journal_write")
        if kill_at is not None:
            return _TornWriteJournal(str(self.journal), lock, int(kill_at))
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
        if self.path.exists() and not self.path.is_dir():
            raise BadInput(f"--out {self.path} exists and is not a directory")
        if self.path.exists() and any(self.path.iterdir()):
            if (self.path / RUN_FILE).exists():
                raise BadInput(f"--out {self.path} already holds a run; continue it with "
                               f"--resume {self.path}, or choose another --out")
            raise BadInput(f"--out {self.path} exists and is not empty")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.journal.touch()  # before run.json: a directory with a run.json is resumable
        except OSError as exc:
            raise BadInput(f"--out {self.path}: cannot create the run directory: "
                           f"{exc.strerror or exc}") from None
        atomic_write_json(self.path / RUN_FILE, identity)

    def check_resume(self, identity: dict[str, Any]) -> dict[str, Any]:
        stored = self.identity()
        for key in IDENTITY_KEYS:
            if stored.get(key) != identity.get(key):
                raise BadInput(f"--resume {self.path}: the run's {key} is {stored.get(key)!r}, "
                               f"this search's is {identity.get(key)!r}; they must match")
        differ = differing_options(stored, identity)
        if differ:
            raise BadInput(f"--resume {self.path}: the study's options differ: "
                           f"{', '.join(differ)}; resume with the run's, or start a new --out")
        if not self.journal.exists():
            raise BadInput(f"--resume {self.path}: no Optuna storage ({JOURNAL_FILE}) in it")
        self.clean_after_crash()
        return stored

    def clean_after_crash(self) -> None:
        """Undo what a killed process leaves behind: a torn journal record, temporary files."""
        cut = repair_journal(self.journal)
        if cut:
            logging.getLogger("codesign.run_dir").warning(
                "%s: cut a torn last record (%d bytes) left by a killed process", self.journal, cut)
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        check_journal(self.journal)


def option_flag(name: str) -> str:
    """The command-line flag of a SearchConfig field: ``ttft_budget_s`` -> ``--ttft-budget``."""
    return "--" + name.removesuffix("_s").replace("_", "-")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def differing_options(stored: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """``--flag now (the run's: then)`` for every study option of ``identity`` that differs
    from the run's. An option the run did not record (added to SearchConfig since) is not
    compared: nothing says what it was."""
    then = stored.get("options", {k: stored[k] for k in _LEGACY_OPTIONS if k in stored})
    now = identity.get("options", {})
    return [f"{option_flag(name)} {_short(now[name])} (the run's: {_short(then[name])})"
            for name in now if name in then and then[name] != now[name]]


def check_journal(path: Path) -> None:
    """Raise ``BadInput`` naming the first line of a journal that is not a JSON record.

    Only a torn *last* record is a crash's doing (``repair_journal``); damage elsewhere means the
    file was edited or the disk failed, and replaying past it would build a wrong study.
    """
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BadInput(f"--resume: {path} is damaged at line {number} ({exc}); it cannot "
                               "be replayed") from None
            if not isinstance(record, dict) or "op_code" not in record:
                raise BadInput(f"--resume: {path} line {number} is not an Optuna journal record")
