"""On-host measurement: lower models to ExecuTorch programs and time them.

Submodules:

* :mod:`codesign.measure.pte` -- ``lower_to_pte`` (fp32 / int8 XNNPACK) and
  program introspection (planned memory, delegates, undelegated ops).
* :mod:`codesign.measure.host_runner` -- ``time_pte`` / ``run_pte`` through
  ExecuTorch's Python runtime with explicit thread control.
* :mod:`codesign.measure.records` -- the immutable ``Measurement`` record.

Names are resolved lazily (PEP 562) so that ``import codesign.measure`` stays
cheap; executorch/torchao are only imported when lowering or running.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RuntimeHost": "records",
    "Measurement": "records",
    "summarize_samples": "records",
    "PRECISIONS": "pte",
    "PlannedMemory": "pte",
    "lower_to_pte": "pte",
    "lower_exported": "pte",
    "planned_memory": "pte",
    "delegate_backends": "pte",
    "undelegated_operators": "pte",
    "configure_threads": "host_runner",
    "run_pte": "host_runner",
    "run_pte_batches": "host_runner",
    "time_pte": "host_runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
