"""numba-JIT kernels for on-device-style layers (placeholder, completed below)."""
from . import _numba_config  # noqa: F401  (must precede every kernel compilation)
