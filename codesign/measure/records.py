"""Immutable records of on-host latency measurements.

A :class:`Measurement` is the unit that every host benchmark produces and that
cost models are fitted against, so it carries everything needed to judge
whether two numbers are comparable: the latency distribution summary, the
exact runtime configuration (backend, precision, threads, repeat counts) and
the host it was taken on (CPU model, core count, library versions). The
layout follows pyperf's idea of keeping the raw samples next to the summary
and the environment next to the samples.

Records are frozen dataclasses with a strict JSON round-trip
(:meth:`Measurement.to_dict` / :meth:`Measurement.from_dict`); the dict carries
a ``schema_version`` so stored results can be migrated rather than silently
misread.

This module deliberately imports neither ``executorch`` nor ``torchao`` (each
costs seconds to import); versions are read from package metadata instead.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from typing import Any

from codesign.kernels.bench_harness import cpu_model

__all__ = [
    "SCHEMA_VERSION",
    "RuntimeHost",
    "Measurement",
    "summarize_samples",
]

#: Version of the dict layout written by :meth:`Measurement.to_dict`.
SCHEMA_VERSION = 1


def _package_version(name: str) -> str:
    """Installed version of distribution ``name``, or ``"absent"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _usable_cores() -> int:
    """Cores this process may run on (respects affinity masks / cgroups cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RuntimeHost:
    """Where a measurement was taken.

    Attributes:
        cpu_model: CPU model name as reported by ``/proc/cpuinfo``.
        logical_cores: Logical CPUs in the machine (``os.cpu_count()``).
        usable_cores: Logical CPUs this process was allowed to use.
        machine: ISA name from ``platform.machine()`` (e.g. ``x86_64``).
        system: OS name and release (e.g. ``Linux-6.1.0``).
        python_version: Interpreter version.
        torch_version: Installed ``torch`` version.
        executorch_version: Installed ``executorch`` version.
        torchao_version: Installed ``torchao`` version.
    """

    cpu_model: str
    logical_cores: int
    usable_cores: int
    machine: str
    system: str
    python_version: str
    torch_version: str
    executorch_version: str
    torchao_version: str

    @classmethod
    def current(cls) -> RuntimeHost:
        """Describe the machine and environment running this process."""
        return cls(
            cpu_model=cpu_model(),
            logical_cores=os.cpu_count() or 1,
            usable_cores=_usable_cores(),
            machine=platform.machine(),
            system=f"{platform.system()}-{platform.release()}",
            python_version=platform.python_version(),
            torch_version=_package_version("torch"),
            executorch_version=_package_version("executorch"),
            torchao_version=_package_version("torchao"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeHost:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: if keys are missing or unknown.
        """
        return cls(**_checked_kwargs(cls, data))


def _checked_kwargs(cls: type, data: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Exactly the dataclass fields of ``cls`` from ``data``, else ValueError.

    Strictness is the point: a misspelt or dropped key in a stored result
    should fail loudly instead of producing a record with a default value.
    """
    names = {f.name for f in fields(cls)} - set(skip)
    given = set(data) - set(skip)
    missing = names - given
    unknown = given - names
    if missing or unknown:
        raise ValueError(
            f"{cls.__name__}.from_dict: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
        )
    return {name: data[name] for name in names}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted data."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def summarize_samples(samples_s: Sequence[float]) -> dict[str, float]:
    """Summary statistics of latency samples.

    Args:
        samples_s: Per-iteration latencies in seconds; must be non-empty and
            every value finite and > 0.

    Returns:
        Dict with ``p50_s``, ``p90_s``, ``mean_s``, ``min_s``, ``max_s`` and
        ``stdev_s`` (sample standard deviation, 0 for a single sample), all in
        seconds.

    Raises:
        ValueError: on an empty sample or a non-finite / non-positive value.
    """
    values = [float(v) for v in samples_s]
    if not values:
        raise ValueError("need at least one latency sample")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError("latency samples must be finite and > 0 seconds")
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered)
    var = sum((v - mean) ** 2 for v in ordered) / (len(ordered) - 1) if len(ordered) > 1 else 0.0
    return {
        "p50_s": _percentile(ordered, 50.0),
        "p90_s": _percentile(ordered, 90.0),
        "mean_s": mean,
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "stdev_s": math.sqrt(var),
    }


@dataclass(frozen=True)
class Measurement:
    """One latency measurement of one program on one host configuration.

    All times are in seconds. ``samples_s`` holds the timed iterations only
    (warm-ups and the first run are excluded), in the order they were taken,
    so drift over the run can be inspected later.

    Attributes:
        name: What was measured (model name, kernel id, ...).
        backend: Execution backend(s), e.g. ``"xnnpack"``; ``"portable"`` when
            nothing was delegated.
        precision: Numeric precision of the program, e.g. ``"fp32"``/``"int8"``.
        threads: Worker threads the runtime was configured with.
        p50_s: Median latency of the timed iterations.
        p90_s: 90th-percentile latency of the timed iterations.
        mean_s: Mean latency of the timed iterations.
        min_s: Fastest timed iteration.
        stdev_s: Sample standard deviation of the timed iterations.
        first_run_s: Latency of the very first execution after loading (cold
            caches, lazy delegate work); never part of ``samples_s``.
        load_s: Time to load the program and its method (includes delegate
            init, e.g. XNNPACK weight packing).
        n_warmup: Untimed iterations run after the first run.
        n_repeats: Timed iterations (``len(samples_s)``).
        samples_s: Raw timed latencies.
        host: Machine and software versions.
        extra: Free-form string metadata (input shapes, pte size, ...), kept
            as sorted key/value pairs so the record stays hashable.
    """

    name: str
    backend: str
    precision: str
    threads: int
    p50_s: float
    p90_s: float
    mean_s: float
    min_s: float
    stdev_s: float
    first_run_s: float
    load_s: float
    n_warmup: int
    n_repeats: int
    samples_s: tuple[float, ...]
    host: RuntimeHost
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Normalise containers so equality after a JSON round-trip holds
        # (JSON turns tuples into lists).
        object.__setattr__(self, "samples_s", tuple(float(v) for v in self.samples_s))
        object.__setattr__(self, "extra", tuple(sorted((str(k), str(v)) for k, v in self.extra)))
        if not self.name:
            raise ValueError("Measurement.name must be non-empty")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.n_warmup < 0:
            raise ValueError(f"n_warmup must be >= 0, got {self.n_warmup}")
        if self.n_repeats < 1 or self.n_repeats != len(self.samples_s):
            raise ValueError(
                f"n_repeats ({self.n_repeats}) must be >= 1 and equal len(samples_s) ({len(self.samples_s)})"
            )
        for label in ("p50_s", "p90_s", "mean_s", "min_s", "first_run_s"):
            value = getattr(self, label)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{label} must be finite and > 0, got {value}")
        if self.load_s < 0 or self.stdev_s < 0:
            raise ValueError("load_s and stdev_s must be >= 0")
        # Percentile ordering; a tiny relative slack absorbs float noise from
        # JSON round-trips of interpolated values.
        slack = 1e-12 * max(self.p90_s, 1.0)
        if not (self.min_s <= self.p50_s + slack and self.p50_s <= self.p90_s + slack):
            raise ValueError(
                f"expected min_s <= p50_s <= p90_s, got {self.min_s}, {self.p50_s}, {self.p90_s}"
            )

    @classmethod
    def from_samples(
        cls,
        *,
        name: str,
        backend: str,
        precision: str,
        threads: int,
        samples_s: Sequence[float],
        first_run_s: float,
        load_s: float,
        n_warmup: int,
        host: RuntimeHost | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Measurement:
        """Build a record from raw timed samples.

        Args:
            name: What was measured.
            backend: Execution backend label.
            precision: Program precision label.
            threads: Runtime thread count used.
            samples_s: Timed latencies in seconds (warm-ups excluded).
            first_run_s: First-execution latency in seconds.
            load_s: Program + method load time in seconds.
            n_warmup: Number of untimed warm-up iterations that were run.
            host: Host description; defaults to :meth:`RuntimeHost.current`.
            extra: Additional string metadata.

        Returns:
            A validated :class:`Measurement`.
        """
        stats = summarize_samples(samples_s)
        return cls(
            name=name,
            backend=backend,
            precision=precision,
            threads=threads,
            p50_s=stats["p50_s"],
            p90_s=stats["p90_s"],
            mean_s=stats["mean_s"],
            min_s=stats["min_s"],
            stdev_s=stats["stdev_s"],
            first_run_s=first_run_s,
            load_s=load_s,
            n_warmup=n_warmup,
            n_repeats=len(samples_s),
            samples_s=tuple(samples_s),
            host=host if host is not None else RuntimeHost.current(),
            extra=tuple((extra or {}).items()),
        )

    @property
    def extra_dict(self) -> dict[str, str]:
        """``extra`` as a plain dict."""
        return dict(self.extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists, ``host`` a nested dict).

        Returns:
            Dict with every field plus ``schema_version``.
        """
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        out["samples_s"] = list(self.samples_s)
        out["host"] = self.host.to_dict()
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Inverse of :meth:`to_dict`.

        Args:
            data: A dict produced by :meth:`to_dict` (possibly via JSON).

        Raises:
            ValueError: on a different ``schema_version`` or missing/unknown keys.
        """
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported Measurement schema_version {version!r}; expected {SCHEMA_VERSION}")
        kwargs = _checked_kwargs(cls, data, skip=("schema_version",))
        kwargs["host"] = RuntimeHost.from_dict(kwargs["host"])
        kwargs["samples_s"] = tuple(kwargs["samples_s"])
        kwargs["extra"] = tuple(dict(kwargs["extra"]).items())
        return cls(**kwargs)
