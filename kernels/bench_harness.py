"""pyperf-style micro-benchmark harness for the kernels.

Method (per case): one untimed call first (it triggers numba compilation, which is never
timed), ``warmups`` untimed calls, then a calibration of ``loops`` (calls per sample) so a
sample lasts at least ``min_sample_s``, then ``repeats`` samples; each sample is the mean time
of one call over its loops. Reported: median and inter-quartile range (plus min/max) of the
samples. The thread count is pinned for the measurement (``numba.set_num_threads`` and
``threadpoolctl`` for BLAS/OpenMP pools) and restored afterwards; the garbage collector is off
while timing. :func:`measure_interleaved` runs several cases round-robin, sample by sample, so
slow drifts of a shared machine (other processes, frequency) hit every case alike: use it for
ratios.

Results are immutable :class:`BenchRecord` values carrying :class:`HostInfo` (CPU model,
features, library versions, threads). :class:`ResultCache` stores them as JSON under a
directory, one file per host fingerprint, with an ``fcntl`` lock and atomic replace, so several
processes may read and write it at once.

Compilation and processes: the kernels never use numba's on-disk cache (``cache=True``), which
is not safe when several processes compile the same function concurrently; each process
compiles what it uses (a few seconds per kernel) and memoises it in memory. A caller that wants
an on-disk cache anyway must give every process its own directory before numba is imported,
e.g. ``os.environ["NUMBA_CACHE_DIR"] = per_process_numba_cache_dir()``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from . import _numba_config as cfg

#: CPU features that decide which kernels run well (kept in the record; the full list is hashed).
RELEVANT_FEATURES = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512vnni", "avxvnni", "avx512bf16", "amx-tile", "neon", "sve", "dotprod")


@dataclass(frozen=True)
class HostInfo:
    """Where a measurement was taken.

    Attributes:
        cpu_model: marketing name (``/proc/cpuinfo``) or ``platform.processor()``.
        llvm_cpu: the CPU name LLVM (numba's JIT) targets, e.g. ``znver3``.
        features: :data:`RELEVANT_FEATURES` present, as LLVM reports them.
        features_digest: hash of the complete LLVM feature string.
        logical_cpus: ``os.cpu_count()``.
        machine, system, python, numpy, numba, llvm: platform and versions.
        blas: the BLAS numpy uses (threadpoolctl ``internal_api``/``version``/architecture).
        env: performance-relevant environment variables that were set.
    """

    cpu_model: str
    llvm_cpu: str
    features: tuple[str, ...]
    features_digest: str
    logical_cpus: int
    machine: str
    system: str
    python: str
    numpy: str
    numba: str
    llvm: str
    blas: str
    env: tuple[tuple[str, str], ...] = ()

    def fingerprint(self) -> str:
        """16 hex digits identifying the hardware + software stack (keys result caches).

        The BLAS description is left out: threadpoolctl lists libraries in load order, which
        changes once scipy is imported, and numpy's version already pins its BLAS.
        """
        key = json.dumps([self.cpu_model, self.llvm_cpu, self.features_digest, self.logical_cpus,
                          self.machine, self.system, self.python, self.numpy, self.numba,
                          self.llvm, "", list(self.env)])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def hardware_fingerprint(self) -> str:
        """:meth:`fingerprint` without the environment: keys measurements of the machine itself
        (clock, peaks, bandwidths), which ``OMP_WAIT_POLICY`` and the like do not change."""
        return dataclasses.replace(self, env=()).fingerprint()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        d["env"] = [list(kv) for kv in self.env]
        d["fingerprint"] = self.fingerprint()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "HostInfo":
        d = {k: v for k, v in d.items() if k != "fingerprint"}
        d["features"] = tuple(d["features"])
        d["env"] = tuple(tuple(kv) for kv in d.get("env", ()))
        return cls(**d)


_SYSFS_CACHE_INDEX = {"1Data": "l1d", "2Unified": "l2", "3Unified": "l3"}


def cache_sizes() -> dict[str, int]:
    """cpu0's L1 data, L2 and L3 capacities in bytes from sysfs ({"l1d", "l2", "l3"}; a level
    sysfs does not list is absent)."""
    sizes: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = _SYSFS_CACHE_INDEX.get(level + kind)
        if name and size.endswith("K"):
            sizes[name] = int(size[:-1]) * 1024
        elif name and size.endswith("M"):
            sizes[name] = int(size[:-1]) * 1024 * 1024
    return sizes


def cpu_model() -> str:
    """CPU model string from ``/proc/cpuinfo``, falling back to ``platform``.

    x86 kernels expose ``model name``; arm64 kernels often only expose ``Hardware`` /
    ``Processor``, hence the ordered list of keys."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        text = ""
    for key in ("model name", "hardware", "processor", "cpu model"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() == key and value.strip() and not value.strip().isdigit():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                return (f"{pool.get('internal_api')} {pool.get('version')} "
                        f"{pool.get('architecture', '')}").strip()
    except Exception:  # noqa: BLE001 - metadata only; a missing BLAS is not an error here
        pass
    return "unknown"


_HOST: HostInfo | None = None


def host_info() -> HostInfo:
    """This host's :class:`HostInfo` (computed once per process)."""
    global _HOST
    if _HOST is None:
        import llvmlite
        import llvmlite.binding as llvm
        import numba

        feats = llvm.get_host_cpu_features()
        flat = feats.flatten()
        present = tuple(f for f in RELEVANT_FEATURES if feats.get(f, False))
        env = tuple((k, os.environ[k]) for k in sorted(os.environ)
                    if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_")))
        _HOST = HostInfo(
            cpu_model=cpu_model(), llvm_cpu=llvm.get_host_cpu_name(), features=present,
            features_digest=hashlib.sha256(flat.encode()).hexdigest()[:16],
            logical_cpus=os.cpu_count() or 1, machine=platform.machine(),
            system=platform.system(), python=platform.python_version(), numpy=np.__version__,
            numba=numba.__version__, llvm=f"llvmlite {llvmlite.__version__}",
            blas=_blas_description(), env=env)
    return _HOST


@dataclass(frozen=True)
class BenchRecord:
    """One benchmark case's timing result (immutable).

    Attributes:
        name: case name, e.g. ``"gemm_f32"``.
        params: sorted (key, value) pairs describing the case (shape, tile, dtype, ...).
        work: units of work per call (FLOPs, integer ops or bytes; see ``unit``).
        unit: ``"FLOP"``, ``"OP"`` or ``"B"``.
        threads: threads the kernel and BLAS were pinned to.
        times_s: per-call seconds of every sample.
        loops: calls per sample; warmups: untimed calls before sampling.
        host: where it ran.
        created: UNIX time of the measurement.
    """

    name: str
    params: tuple[tuple[str, object], ...]
    work: float
    unit: str
    threads: int
    times_s: tuple[float, ...]
    loops: int
    warmups: int
    host: HostInfo
    created: float = field(default_factory=time.time)

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))

    @property
    def q1_s(self) -> float:
        return float(np.percentile(self.times_s, 25))

    @property
    def q3_s(self) -> float:
        return float(np.percentile(self.times_s, 75))

    @property
    def min_s(self) -> float:
        return float(min(self.times_s))

    @property
    def max_s(self) -> float:
        return float(max(self.times_s))

    @property
    def rate(self) -> float:
        """Work per second at the median time (FLOP/s, op/s or B/s)."""
        return self.work / self.median_s

    @property
    def rate_iqr(self) -> tuple[float, float]:
        """Rates at the third and first quartile of time (a spread of ``rate``)."""
        return self.work / self.q3_s, self.work / self.q1_s

    @property
    def key(self) -> str:
        """Cache key: name, params and threads (host excluded: caches are per host)."""
        return record_key(self.name, self.params, self.threads)

    def summary(self) -> str:
        lo, hi = self.rate_iqr
        g = 1e9
        return (f"{self.name} {dict(self.params)} threads={self.threads}: "
                f"{self.rate / g:.2f} G{self.unit}/s (IQR {lo / g:.2f}-{hi / g:.2f}, "
                f"median {self.median_s * 1e3:.3f} ms, n={len(self.times_s)}x{self.loops})")

    def to_dict(self) -> dict:
        return {"name": self.name, "params": [list(p) for p in self.params], "work": self.work,
                "unit": self.unit, "threads": self.threads, "times_s": list(self.times_s),
                "loops": self.loops, "warmups": self.warmups, "host": self.host.to_dict(),
                "created": self.created, "median_s": self.median_s, "rate": self.rate}

    @classmethod
    def from_dict(cls, d: Mapping) -> "BenchRecord":
        return cls(name=d["name"], params=tuple(tuple(p) for p in d["params"]),
                   work=float(d["work"]), unit=d["unit"], threads=int(d["threads"]),
                   times_s=tuple(float(t) for t in d["times_s"]), loops=int(d["loops"]),
                   warmups=int(d["warmups"]), host=HostInfo.from_dict(d["host"]),
                   created=float(d["created"]))


def record_key(name: str, params: tuple[tuple[str, object], ...], threads: int) -> str:
    """The :class:`ResultCache` key of a case (``params`` as from :func:`freeze_params`)."""
    return json.dumps([name, [list(p) for p in params], threads], default=str)


def freeze_params(params: Mapping[str, object] | None) -> tuple[tuple[str, object], ...]:
    """Params as sorted (key, value) pairs of JSON scalars (other values become ``str``)."""
    out = []
    for k, v in sorted((params or {}).items()):
        if isinstance(v, (list, tuple)):
            v = "x".join(str(x) for x in v)
        elif not isinstance(v, (int, float, str, bool)) and v is not None:
            v = str(v)
        out.append((str(k), v))
    return tuple(out)


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with numba and BLAS/OpenMP pools limited to ``threads``."""
    import numba
    from threadpoolctl import threadpool_limits

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        numba.set_num_threads(old)


@dataclass(frozen=True)
class Case:
    """A callable to time and the work one call does."""

    name: str
    fn: Callable[[], object]
    work: float
    unit: str = "FLOP"
    params: Mapping[str, object] | None = None


def _calibrate(fn: Callable[[], object], min_sample_s: float) -> int:
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_sample_s or loops >= 1 << 20:
            return loops
        loops = max(loops * 2, int(loops * min_sample_s / max(dt, 1e-9) * 1.2))


def measure_interleaved(cases: Sequence[Case], *, threads: int = 1, warmups: int = 2,
                        repeats: int = 15, min_sample_s: float = 0.01,
                        clock: Callable[[], float] = time.perf_counter) -> list[BenchRecord]:
    """Time several cases round-robin (one sample of each per round); see module docstring.

    Args:
        cases: what to time; every ``fn`` takes no arguments.
        threads: numba + BLAS thread count during the measurement.
        warmups: untimed calls per case after the first (compiling) call.
        repeats: samples per case.
        min_sample_s: calibrate loops so one sample lasts at least this long.
        clock: the sample clock. ``time.thread_time`` (the calling thread's CPU time) leaves
            out the time the thread waits for a core, which on a machine shared with other
            processes disturbs even the best wall-clock sample; it counts only the calling
            thread, so it suits serial kernels (``threads=1``) only.

    Returns:
        One :class:`BenchRecord` per case, in order.
    """
    if repeats < 1 or warmups < 0:
        raise ValueError("need repeats >= 1 and warmups >= 0")
    host = host_info()
    with pinned_threads(threads):
        for c in cases:  # first call compiles; never timed
            c.fn()
        for c in cases:
            for _ in range(warmups):
                c.fn()
        loops = [_calibrate(c.fn, min_sample_s) for c in cases]
        samples: list[list[float]] = [[] for _ in cases]
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(repeats):
                for i, c in enumerate(cases):
                    fn, n = c.fn, loops[i]
                    t0 = clock()
                    for _ in range(n):
                        fn()
                    samples[i].append((clock() - t0) / n)
        finally:
            if gc_was_enabled:
                gc.enable()
    return [BenchRecord(name=c.name, params=freeze_params(c.params), work=float(c.work),
                        unit=c.unit, threads=threads, times_s=tuple(samples[i]), loops=loops[i],
                        warmups=warmups, host=host) for i, c in enumerate(cases)]


def measure(fn: Callable[[], object], *, name: str, work: float, unit: str = "FLOP",
            params: Mapping[str, object] | None = None, threads: int = 1, warmups: int = 2,
            repeats: int = 15, min_sample_s: float = 0.01) -> BenchRecord:
    """Time one callable (see :func:`measure_interleaved` for the arguments)."""
    return measure_interleaved([Case(name, fn, work, unit, params)], threads=threads,
                               warmups=warmups, repeats=repeats, min_sample_s=min_sample_s)[0]


def paired_speedup(reference: BenchRecord, candidate: BenchRecord) -> float:
    """Median over rounds of ``reference time / candidate time`` for two records measured in
    the same :func:`measure_interleaved` call (sample i of both comes from round i).

    Pairing by round cancels drifts slower than a round (another process taking the core for
    a while slows both), which a ratio of the two medians does not.
    """
    if len(reference.times_s) != len(candidate.times_s):
        raise ValueError("records were not measured interleaved (different sample counts)")
    return float(np.median(np.asarray(reference.times_s) / np.asarray(candidate.times_s)))


def best_speedup(reference: BenchRecord, candidate: BenchRecord) -> float:
    """``reference.min_s / candidate.min_s``: the speed-up between the best samples, the
    estimator least disturbed by other processes on a shared machine (see
    ``codesign.kernels.bench``)."""
    return reference.min_s / candidate.min_s


def default_cache_dir() -> Path:
    """``kernel_bench`` in the user cache directory
    (:func:`codesign.kernels.cache_paths.cache_dir`)."""
    from .cache_paths import cache_dir

    return cache_dir("kernel_bench")


def per_process_numba_cache_dir(root: str | os.PathLike | None = None) -> str:
    """A numba cache directory private to this process (set ``NUMBA_CACHE_DIR`` to it before
    importing numba if on-disk caching is wanted in a multi-process run)."""
    base = Path(root) if root else Path(tempfile.gettempdir()) / "codesign-numba-cache"
    path = base / f"pid{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class ResultCache:
    """JSON store of :class:`BenchRecord` per host fingerprint, safe across processes.

    ``<dir>/<fingerprint>.json`` maps record keys to records. Writers take an exclusive
    ``fcntl`` lock on ``<fingerprint>.lock``, re-read the file, merge and atomically replace
    it, so concurrent writers never lose each other's entries and readers never see a torn file.
    """

    def __init__(self, directory: str | os.PathLike | None = None,
                 host: HostInfo | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.host = host or host_info()
        self.path = self.directory / f"{self.host.fingerprint()}.json"
        self._lock_path = self.directory / f"{self.host.fingerprint()}.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data.get("records", {}) if isinstance(data, dict) else {}

    def get(self, key: str) -> BenchRecord | None:
        """The cached record for ``key`` (see :attr:`BenchRecord.key`), or None."""
        entry = self._read().get(key)
        return BenchRecord.from_dict(entry) if entry else None

    def put(self, record: BenchRecord) -> None:
        """Store ``record`` (replacing any with the same key)."""
        if record.host.fingerprint() != self.host.fingerprint():
            raise ValueError("record was measured on another host than this cache's")
        self._merge({record.key: record.to_dict()})

    def _merge(self, entries: dict[str, dict]) -> None:
        """Add ``entries`` (key -> record dict) to the file: under the lock, re-read, merge and
        atomically replace it."""
        with self._locked():
            records = self._read()
            records.update(entries)
            payload = {"host": self.host.to_dict(), "records": records}
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(payload, f, indent=1, default=str)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache is meant to be read
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def records(self) -> list[BenchRecord]:
        return [BenchRecord.from_dict(v) for v in self._read().values()]


def numba_settings() -> dict:
    """The numba policy of the kernels, for reports."""
    import numba

    return {"threading_layer": cfg.THREADING_LAYER, "cache": cfg.CACHE,
            "fastmath": sorted(cfg.FASTMATH), "max_threads": numba.config.NUMBA_NUM_THREADS}
