"""64-byte-aligned scratch buffers for the kernels (callable from numba code).

numpy (and numba's ``np.empty``) only guarantee 16-byte alignment. A packed panel whose rows
start 16 bytes into a cache line makes every other 32-byte AVX load straddle two lines, which
costs a second load slot: the sparse micro-kernels, which issue one vector load per FMA, ran
25-30 % slower on such buffers (measured in-L1, 4x3 and 3x4 N:M tiles).
"""
from __future__ import annotations

import numba
import numpy as np

from . import _numba_config as cfg

_ALIGN = 64


def _make(dtype):
    itemsize = np.dtype(dtype).itemsize

    def aligned_empty(n):
        buf = np.empty(n + _ALIGN // itemsize, dtype)
        off = ((_ALIGN - (buf.ctypes.data & (_ALIGN - 1))) & (_ALIGN - 1)) // itemsize
        return buf[off:off + n]

    return numba.njit(**cfg.jit_options())(aligned_empty)


#: ``aligned_*(n)`` -> 1-D C-contiguous array of n elements starting on a 64-byte boundary.
aligned_f32 = _make(np.float32)
aligned_i16 = _make(np.int16)
aligned_i32 = _make(np.int32)
