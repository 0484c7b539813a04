"""Several ExecuTorch programs timed interleaved in one process: the benchmarks' shared protocol."""
from __future__ import annotations

import os
from typing import Callable, Hashable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)


def interleaved_runs(programs: Mapping[K, bytes], inputs: Callable[[K], tuple], *, rounds: int,
                     warmup: int, repeats: int, threads: int = 1
                     ) -> tuple[dict[K, list[tuple[float, ...]]], list[float]]:
    """Per program, each round's timed samples (s), and the 1-minute load average at each
    round's start. ExecuTorch's threadpool (and torch's) set to ``threads`` first; ``rounds``
    rounds, each a fresh load of every program in a rotated order (interleaved, so drifting
    load hits all alike) run on ``inputs(name)``, ``warmup`` untimed and ``repeats`` timed
    runs per load, on the executing thread's CPU clock at 1 thread, else the wall clock."""
    from codesign.export.transformer import quiet_stderr
    from codesign.measure.host_runner import configure_threads, timed_runs

    configure_threads(threads)
    names = list(programs)
    per: dict[K, list[tuple[float, ...]]] = {n: [] for n in names}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for name in names[r % len(names):] + names[:r % len(names)]:
            with quiet_stderr():
                runs = timed_runs(programs[name], inputs(name), "forward", warmup, repeats)
            per[name].append(runs.cpu_s if threads == 1 else runs.wall_s)
    return per, loads
