"""Progress of supernet training on stderr, one renderer for every trainer.

The MBConv supernet (``codesign.search_spaces.mbconv_supernet``) and the LM supernet
(``codesign.search_spaces.transformer_lm``) report ``TrainProgress`` records to a ``progress``
callback; :class:`TrainingProgress` is that callback. On a terminal it draws a tqdm bar (steps,
rate, ETA, current loss); otherwise (a log file, a pipe, a CI job) it writes plain lines, one every
``every_fraction`` of the steps or every ``every_s`` seconds, whichever comes first. A record
with ``steps == 0`` is a message ("loaded PATH", "cached PATH", "resumed ...") and is written as
one line. Nothing goes to stdout: ``search --json`` prints its JSON there.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, TextIO

__all__ = ["TrainingProgress"]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class TrainingProgress:
    """A ``progress`` callback for supernet training (see the module docstring).

    Args:
        label: what is training, the bar's and the lines' prefix.
        bar: draw a tqdm bar when the stream is a terminal (False: plain lines always, e.g.
            ``--no-progress``).
        stream: where to write (default: ``sys.stderr`` at the time of each report).
        every_fraction: plain mode: a line each time this share of the steps is done.
        every_s: plain mode: a line at least this often (seconds).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, label: str = "supernet training", *, bar: bool = True,
                 stream: TextIO | None = None, every_fraction: float = 0.1,
                 every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.bar, self._stream = label, bar, stream
        self.every_fraction, self.every_s, self.clock = every_fraction, every_s, clock
        self._tqdm: Any = None
        self._first_step = 0  # the first step reported by this training (a resumed one > 1)
        self._last_step = 0
        self._last_line_at = 0.0
        self._last_bucket = -1

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _is_tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def __call__(self, report) -> None:
        if report.steps <= 0:
            self._message(report.message)
            return
        if report.step <= self._last_step or self._last_step == 0:  # a (re)started training
            self._start(report)
        if self._tqdm is not None:
            self._tqdm.update(report.step - self._tqdm.n)
            self._tqdm.set_postfix_str(f"loss {report.loss:.3f}")
        else:
            self._plain(report)
        self._last_step = report.step
        if report.step >= report.steps:
            self.close()

    def _start(self, report) -> None:
        self.close()
        self._first_step, self._last_step = report.step, 0
        self._last_bucket = -1
        self._last_line_at = self.clock()
        if self.bar and self._is_tty():
            from tqdm import tqdm

            self._tqdm = tqdm(total=report.steps, initial=report.step - 1, desc=self.label,
                              unit="step", file=self.stream, leave=False, dynamic_ncols=True)

    def _plain(self, report) -> None:
        now = self.clock()
        parts = max(1, round(1 / self.every_fraction)) if self.every_fraction > 0 else 1
        bucket = report.step * parts // report.steps  # integers: 3/10 is in the 3rd tenth
        due = (report.step == self._first_step or report.step >= report.steps
               or bucket > self._last_bucket or now - self._last_line_at >= self.every_s)
        self._last_bucket = max(self._last_bucket, bucket)
        if not due:
            return
        self._last_line_at = now
        done = report.step - self._first_step + 1
        rate = done / report.elapsed_s if report.elapsed_s > 0 else math.nan
        eta = (report.steps - report.step) / rate if rate > 0 else math.nan
        self._write(f"{self.label}: step {report.step}/{report.steps} "
                    f"({report.step / report.steps:.0%}), loss {report.loss:.3f}, "
                    f"{rate:.2f} step/s, {_duration(report.elapsed_s)} elapsed, "
                    f"ETA {_duration(eta)}")

    def _message(self, message: str) -> None:
        if not message:
            return
        line = f"{self.label}: {message}"
        if self._tqdm is not None:
            self._tqdm.write(line, file=self.stream)
        else:
            self._write(line)

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Remove the bar (a finished or interrupted training leaves no half bar behind)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
