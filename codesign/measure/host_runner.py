"""Run and time ExecuTorch programs on this host through the Python runtime.

Timing protocol of :func:`time_pte`:

1. Configure threads (ExecuTorch's threadpool and torch's intra-op pool)
   *before* loading: the XNNPACK delegate binds the threadpool when the
   method is initialised, so a later resize would not apply to it.
2. Load program + method (timed as ``load_s``; includes XNNPACK init and
   weight packing).
3. One first execution, timed separately as ``first_run_s`` (cold caches,
   lazy allocations).
4. ``warmup`` untimed executions.
5. ``repeats`` timed executions with the garbage collector paused, each timed
   individually with ``time.perf_counter``; p50/p90 are taken over these only.

Each timed execution includes the Python-binding overhead of
``Method.execute`` (input marshalling and copying outputs into fresh
tensors), on the order of 10 microseconds; for sub-0.1 ms models this is a
visible part of the number, and it is the same cost any Python caller pays.

The thread settings are process-global and are left in place after the call
(resetting ExecuTorch's threadpool is only safe while no program executes,
so doing it once per configuration is the cheapest safe choice).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from codesign.measure.pte import delegate_backends, quiet_imports
from codesign.measure.records import RuntimeHost, Measurement

__all__ = [
    "configure_threads",
    "run_pte",
    "run_pte_batches",
    "time_pte",
]


def _pybindings() -> Any:
    """The ExecuTorch pybindings module (imported lazily: it loads native libs)."""
    with quiet_imports():
        from executorch.extension.pybindings import portable_lib
    return portable_lib


def configure_threads(threads: int) -> None:
    """Set ExecuTorch's threadpool size and torch's intra-op thread count.

    Must be called while no ExecuTorch program is executing; programs loaded
    afterwards use the new pool.

    Args:
        threads: Worker threads, >= 1.

    Raises:
        ValueError: if ``threads`` < 1 or not an int.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    lib = _pybindings()
    # Resetting tears down and re-creates the worker threads; skip it when the
    # pool already has the requested size.
    if lib._threadpool_get_thread_count() != threads:
        lib._unsafe_reset_threadpool(threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _check_inputs(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if not isinstance(inputs, (tuple, list)) or len(inputs) == 0:
        raise TypeError(f"inputs must be a non-empty tuple of tensors, got {type(inputs).__name__}")
    for i, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"inputs[{i}] must be a torch.Tensor, got {type(x).__name__}")
    # The runtime reads raw memory: non-contiguous views would be misread.
    return tuple(x.contiguous() for x in inputs)


def _load_method(pte: bytes, inputs: tuple[torch.Tensor, ...], method_name: str) -> tuple[Any, Any]:
    """Load ``method_name`` from ``pte``, checking ``inputs``; returns (program, method)."""
    if not isinstance(pte, (bytes, bytearray)) or len(pte) == 0:
        raise ValueError("pte must be non-empty bytes")
    with quiet_imports():
        from executorch.runtime import Runtime
    program = Runtime.get().load_program(bytes(pte))
    if method_name not in program.method_names:
        raise ValueError(f"no method {method_name!r} in program; methods: {sorted(program.method_names)}")
    meta = program.metadata(method_name)
    if meta.num_inputs() != len(inputs):
        raise ValueError(f"method {method_name!r} takes {meta.num_inputs()} inputs, got {len(inputs)}")
    for i, x in enumerate(inputs):
        expected = tuple(meta.input_tensor_meta(i).sizes())
        if tuple(x.shape) != expected:
            raise ValueError(f"inputs[{i}] has shape {tuple(x.shape)}, program expects {expected}")
    method = program.load_method(method_name)
    # The Method does not own its Program; keep the Program (and its bytes)
    # alive for as long as the method is used.
    return program, method


def run_pte(
    pte: bytes,
    inputs: Sequence[torch.Tensor],
    *,
    threads: int = 1,
    method: str = "forward",
) -> list[torch.Tensor]:
    """Execute a program once and return its outputs.

    Args:
        pte: ``.pte`` file contents.
        inputs: Input tensors, shapes exactly as the program was exported with.
        threads: Worker threads (see :func:`configure_threads`).
        method: Method name.

    Returns:
        The method's outputs as tensors owned by the caller.

    Raises:
        ValueError: on bad ``threads``, empty ``pte``, unknown method, or
            input count/shape mismatch.
        TypeError: if ``inputs`` is not a non-empty sequence of tensors.
    """
    tensors = _check_inputs(inputs)
    configure_threads(threads)
    _program, loaded = _load_method(pte, tensors, method)
    return list(loaded.execute(tensors))


def run_pte_batches(
    pte: bytes,
    batches: Sequence[Sequence[torch.Tensor]],
    *,
    threads: int = 1,
    method: str = "forward",
) -> list[list[torch.Tensor]]:
    """Load a program once and execute it on each batch of inputs (e.g. a whole test split,
    image by image); returns the outputs of each execution. Raises as :func:`run_pte`."""
    if not batches:
        raise ValueError("batches must hold at least one set of inputs")
    checked = [_check_inputs(b) for b in batches]
    configure_threads(threads)
    _program, loaded = _load_method(pte, checked[0], method)
    return [list(loaded.execute(tensors)) for tensors in checked]


def _backend_label(pte: bytes) -> str:
    """``"xnnpack"`` for ``("XnnpackBackend",)``; ``"portable"`` if nothing is delegated."""
    ids = delegate_backends(pte)
    if not ids:
        return "portable"
    return "+".join(i.removesuffix("Backend").lower() for i in ids)


def _load_average() -> float:
    """1-minute system load average, or NaN where the OS does not provide it."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def check_counts(warmup: int, repeats: int) -> None:
    """ValueError unless ``warmup`` >= 0 and ``repeats`` >= 1 are ints (not bools)."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")


@dataclass(frozen=True)
class TimedRuns:
    """One load of a method and its executions: per timed execution the wall time and the
    executing thread's CPU time (the same executions, both clocks read around each)."""

    wall_s: tuple[float, ...]
    cpu_s: tuple[float, ...]
    first_run_s: float
    load_s: float


def timed_runs(pte: bytes, tensors: tuple[torch.Tensor, ...], method: str, warmup: int,
               repeats: int) -> TimedRuns:
    """Steps 2-5 of the protocol in the module docstring (threads already configured)."""
    wall, cpu = time.perf_counter, time.thread_time
    t0 = wall()
    _program, loaded = _load_method(pte, tensors, method)
    load_s = wall() - t0
    walls: list[float] = []
    cpus: list[float] = []
    # A collection pause landing inside one iteration would show up as a
    # latency outlier that has nothing to do with the program.
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t0 = wall()
        loaded.execute(tensors)
        first_run_s = wall() - t0
        for _ in range(warmup):
            loaded.execute(tensors)
        for _ in range(repeats):
            c0, t0 = cpu(), wall()
            loaded.execute(tensors)
            walls.append(wall() - t0)
            cpus.append(cpu() - c0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return TimedRuns(tuple(walls), tuple(cpus), first_run_s, load_s)


def time_pte(
    pte: bytes,
    inputs: tuple[torch.Tensor, ...],
    *,
    threads: int,
    warmup: int = 5,
    repeats: int = 30,
    name: str = "pte",
    precision: str = "unspecified",
    method: str = "forward",
    extra: Mapping[str, str] | None = None,
    host: RuntimeHost | None = None,
) -> Measurement:
    """Measure the latency of one method of a program on this host.

    Args:
        pte: ``.pte`` file contents.
        inputs: Input tensors, shapes exactly as the program was exported with.
        threads: Worker threads for ExecuTorch's threadpool (and torch), >= 1.
        warmup: Untimed executions after the first run, >= 0.
        repeats: Timed executions, >= 1; p50/p90 are over these.
        name: Label stored in the record.
        precision: Precision label stored in the record (the program does not
            record it itself).
        method: Method name to execute.
        extra: Additional string metadata stored in the record; input shapes,
            program size, method and the 1-minute load average are added
            automatically.
        host: Host description; :meth:`RuntimeHost.current` when omitted.

    Returns:
        A :class:`Measurement` with latencies in seconds; ``backend`` is derived
        from the program's delegates.

    Raises:
        ValueError: on ``threads`` < 1, ``warmup`` < 0, ``repeats`` < 1, empty
            ``pte``, unknown method, or input count/shape mismatch.
        TypeError: if ``inputs`` is not a non-empty sequence of tensors.
    """
    check_counts(warmup, repeats)
    tensors = _check_inputs(inputs)
    configure_threads(threads)
    backend = _backend_label(pte)
    load_before = _load_average()
    runs = timed_runs(pte, tensors, method, warmup, repeats)
    first_run_s, load_s, samples = runs.first_run_s, runs.load_s, list(runs.wall_s)

    info = {
        "input_shapes": ";".join("x".join(str(d) for d in x.shape) for x in tensors),
        "pte_bytes": str(len(pte)),
        "method": method,
        # On a shared host, other processes competing for cores inflate
        # latencies; the load average lets such samples be flagged later.
        "loadavg_1m": f"{load_before:.2f}",
    }
    info.update(extra or {})
    return Measurement.from_samples(
        name=name,
        backend=backend,
        precision=precision,
        threads=threads,
        samples_s=samples,
        first_run_s=first_run_s,
        load_s=load_s,
        n_warmup=warmup,
        host=host,
        extra=info,
    )
