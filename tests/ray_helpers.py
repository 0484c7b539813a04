"""Helpers for the Ray tests: an evaluator that holds one trial so a test can kill the process
running it, and a local Ray with the environment that evaluator reads."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.search_helpers import proxy_accuracy

HOLD_DIR_ENV = "CODESIGN_TEST_HOLD_DIR"
VICTIM_FILE = "victim.pid"
_val_calls = 0  # per process


def hold_once_accuracy(candidate, split: str) -> float:
    """``proxy_accuracy``, except once per ``$CODESIGN_TEST_HOLD_DIR``: the third validation
    call in some process claims the directory, writes its PID to ``victim.pid`` and waits there
    (at most 120 s, so a test that never kills it fails instead of hanging)."""
    global _val_calls
    hold = os.environ.get(HOLD_DIR_ENV)
    if split == "val":
        _val_calls += 1
    if hold and split == "val" and _val_calls >= 3:
        try:
            fd = os.open(Path(hold) / "claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            tmp = Path(hold) / f".{VICTIM_FILE}.{os.getpid()}"
            tmp.write_text(str(os.getpid()))
            os.replace(tmp, Path(hold) / VICTIM_FILE)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.05)
    return proxy_accuracy(candidate, split)


def kill_victim(hold_dir: Path, timeout_s: float = 90.0) -> int:
    """Wait until a process holds its trial, SIGKILL it, and return its PID."""
    path = Path(hold_dir) / VICTIM_FILE
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no trial was held within {timeout_s} s")
        time.sleep(0.05)
    pid = int(path.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


def start_local_ray(num_cpus: int = 2, env: dict[str, str] | None = None) -> None:
    """A local Ray for a test (no dashboard); workers import ``tests.*`` and see ``env``."""
    import ray

    env_vars = {"PYTHONPATH": os.getcwd(), "RAY_AUTH_MODE": "disabled", **(env or {})}
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env_vars})


class Background:
    """Run ``fn`` in a thread (the test thread stays free to kill a worker); ``result`` joins."""

    def __init__(self, fn) -> None:
        import threading

        self._box: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._box["result"] = fn()
        except BaseException as exc:  # re-raised in the test thread
            self._box["error"] = exc

    def result(self, timeout_s: float):
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"still running after {timeout_s} s: hung")
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]
