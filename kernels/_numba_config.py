"""Every numba setting the kernels depend on, in one place.

Import this module before any kernel is compiled (``kernels/__init__`` does). It decides:

* **Vectorisers.** numba 0.68 compiles with LLVM's SLP vectoriser off and the loop vectoriser
  on. Register-blocked micro-kernels written as unrolled *scalar* accumulators
  (``c0_0 += a0 * b0`` ...; the ``"slp"`` variant of ``codesign.kernels.gemm_f32``) only become
  packed ``vfmadd231ps`` code when the SLP vectoriser packs them, and the loop vectoriser, if left
  on, vectorises their k loop instead (interleaving iterations) and spills the accumulators. So
  the GEMM drivers are compiled inside :func:`compile_context` with ``slp=True,
  loop_vectorize=False``, while streaming kernels (depthwise conv, im2col, STREAM) keep the loop
  vectoriser and get SLP too. (The default micro-kernels are explicit vector IR,
  ``codesign.kernels._simd_ir``, and do not depend on either vectoriser.) The switch is scoped:
  numba reads ``config.SLP_VECTORIZE`` / ``config.LOOP_VECTORIZE`` each time it builds a pass
  pipeline, and :func:`compile_context` holds numba's global compiler lock while the values are
  changed, so no other thread's compilation sees them and nothing outside ``kernels/`` is
  affected.
* **fastmath.** :data:`FASTMATH` allows FMA contraction (and the flags that let LLVM reorder
  independent adds) but not ``nnan``/``ninf``: a GEMM must still propagate NaN and Inf.
* **Threading layer.** ``workqueue`` unless the user set ``NUMBA_THREADING_LAYER``: it is always
  available, needs no OpenMP runtime (torch and OpenBLAS bring their own, and two OpenMP
  runtimes in one process oversubscribe the cores). Kernels are called from one Python thread
  at a time; workqueue does not support concurrent parallel regions from several threads.
* **Cache policy.** No ``cache=True`` anywhere. numba's on-disk cache is not safe when several
  processes compile the same function at once (a benchmark farm, pytest-xdist), and the
  generated micro-kernels are compiled lazily and memoised in-process instead, so each process
  pays only for the tiles it uses. Benchmarks that want a cache across processes must give
  each process its own ``NUMBA_CACHE_DIR`` (see ``codesign.kernels.bench_harness``).
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator

from numba.core import config as _config
from numba.core.compiler_lock import global_compiler_lock

#: fastmath flags of every kernel: FMA contraction, no signed-zero / reciprocal strictness, and
#: reassociation so independent accumulators may be reordered; NaN/Inf semantics are kept.
FASTMATH = frozenset({"contract", "nsz", "arcp", "reassoc"})

#: Threading layer used by parallel kernels (see module docstring).
THREADING_LAYER = os.environ.get("NUMBA_THREADING_LAYER", "workqueue")

#: Never use numba's on-disk cache (see module docstring).
CACHE = False

if "NUMBA_THREADING_LAYER" not in os.environ:
    _config.THREADING_LAYER = THREADING_LAYER

_memo_lock = threading.Lock()
_memo: dict[tuple, object] = {}


@contextlib.contextmanager
def compile_context(*, slp: bool = True, loop_vectorize: bool = True) -> Iterator[None]:
    """Compile inside this block with the given LLVM vectoriser switches.

    Holds numba's global compiler lock, so the temporarily changed global config is seen only by
    compilations started in this block. Compilation must be eager (explicit signature or
    ``dispatcher.compile``) to happen inside the block; callees are linked into and re-optimised
    with their caller, so the caller's settings are the ones that count.
    """
    with global_compiler_lock:
        old = (_config.SLP_VECTORIZE, _config.LOOP_VECTORIZE)
        _config.SLP_VECTORIZE = int(slp)
        _config.LOOP_VECTORIZE = int(loop_vectorize)
        try:
            yield
        finally:
            _config.SLP_VECTORIZE, _config.LOOP_VECTORIZE = old


def jit_options(parallel: bool = False, fastmath: bool = True) -> dict:
    """Keyword arguments of ``numba.njit`` shared by every kernel.

    ``error_model="numpy"`` drops the Python-style ZeroDivisionError checks from integer ``//``
    and ``%`` in inner loops; the wrappers validate shapes, so kernels also skip bounds checks.
    ``fastmath=False``: strict IEEE float arithmetic (no FMA contraction, no reciprocals), for
    kernels whose results must equal a reference's bit for bit (``codesign.kernels.epilogue``).
    """
    return dict(fastmath=set(FASTMATH) if fastmath else False, cache=CACHE, boundscheck=False,
                nogil=True, error_model="numpy", parallel=parallel)


class LazyKernel:
    """A numba kernel compiled eagerly, on first use, under :func:`compile_context`.

    Construct with :func:`kernel`. Calling the object calls the compiled dispatcher; ``.get()``
    returns the dispatcher itself (to call from another kernel's build).
    """

    def __init__(self, pyfunc: Callable, signatures: tuple, slp: bool, loop_vectorize: bool,
                 parallel: bool, fastmath: bool = True) -> None:
        self.fastmath = fastmath
        self.pyfunc = pyfunc
        self.signatures = signatures
        self.slp = slp
        self.loop_vectorize = loop_vectorize
        self.parallel = parallel
        self._dispatcher = None
        self.__doc__ = pyfunc.__doc__
        self.__name__ = pyfunc.__name__

    def get(self):
        if self._dispatcher is None:
            import numba

            with compile_context(slp=self.slp, loop_vectorize=self.loop_vectorize):
                if self._dispatcher is None:
                    self._dispatcher = numba.njit(list(self.signatures),
                                                  **jit_options(self.parallel, self.fastmath)
                                                  )(self.pyfunc)
        return self._dispatcher

    def __call__(self, *args):
        return self.get()(*args)


def kernel(*signatures: str, slp: bool = True, loop_vectorize: bool = True,
           parallel: bool = False, fastmath: bool = True) -> Callable[[Callable], LazyKernel]:
    """Decorator: a private kernel with explicit numba signatures, compiled on first use."""
    if not signatures:
        raise ValueError("a kernel needs at least one explicit signature")

    def wrap(fn: Callable) -> LazyKernel:
        return LazyKernel(fn, signatures, slp, loop_vectorize, parallel, fastmath)

    return wrap


def memoised_build(key: tuple, build: Callable[[], object]) -> object:
    """Return ``build()`` computed once per process for ``key`` (thread-safe).

    Generated kernels (one per micro-tile shape) are compiled on first use and kept here.
    """
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    value = build()
    with _memo_lock:
        return _memo.setdefault(key, value)


def exec_source(source: str, name: str, namespace: dict) -> Callable:
    """Execute generated Python ``source`` in ``namespace`` and return the function ``name``.

    The source is registered with :mod:`linecache` so tracebacks and numba error messages show
    the generated lines.
    """
    import linecache

    filename = f"<kernels-generated:{name}:{abs(hash(source)):x}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace[name]
