"""Time a program on two clocks at once: wall time, and the CPU time of the executing thread.

On a shared machine other processes preempt the benchmark: its wall time then includes time it
spent waiting for a core, which has nothing to do with the program (BENCHMARKS.md, issue 5: on
this project's 2-core development machine under a load average of ~4, the wall-clock medians of
two rounds of the same program differed by 12 % in the median candidate and 68 % at the p90).
With one runtime
thread, ExecuTorch's threadpool runs every kernel inline on the calling thread, so the thread's
CPU time (``time.thread_time``) is the program's own compute time: it equals the wall time on an
idle machine and ignores preemption (not cache or memory-bandwidth interference, which remains
noise). With more threads the work runs on pool threads the calling thread's clock does not see,
so only the wall clock means anything there.

The protocol is ``host_runner.time_pte``'s (threads set before loading, a first run timed apart,
warm-ups, timed repeats with the garbage collector paused); each timed execution reads both
clocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from codesign.measure.host_runner import (_check_inputs, check_counts, configure_threads,
                                          timed_runs)

__all__ = ["CLOCKS", "DualTiming", "time_pte_dual"]

CLOCKS = ("cpu", "wall")


@dataclass(frozen=True)
class DualTiming:
    """One round: per timed execution, wall and thread-CPU seconds (same executions)."""

    wall_s: tuple[float, ...]
    cpu_s: tuple[float, ...]
    first_run_wall_s: float
    load_s: float

    def samples(self, clock: str) -> tuple[float, ...]:
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
        return self.cpu_s if clock == "cpu" else self.wall_s


def time_pte_dual(pte: bytes, inputs: tuple[torch.Tensor, ...], *, threads: int, warmup: int,
                  repeats: int) -> DualTiming:
    """Load ``pte`` and time ``repeats`` executions of ``forward`` on both clocks.

    Raises:
        ValueError: bad threads/warmup/repeats, or inputs the program does not take.
    """
    check_counts(warmup, repeats)
    tensors = _check_inputs(inputs)
    configure_threads(threads)
    runs = timed_runs(pte, tensors, "forward", warmup, repeats)
    return DualTiming(runs.wall_s, runs.cpu_s, runs.first_run_s, runs.load_s)
