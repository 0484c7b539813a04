"""The host's own prediction of an exported program, to set beside the host's measurement of it.

The target device's prediction (say pixel8 at 4 threads) and this machine's measurement (x86 at
2 threads) are different quantities; printed side by side they check nothing. The pair that
checks the cost model is the analytic model's prediction for *this* machine (device ``host``),
at the thread count the measurement used, for the back-end that ran the program: XNNPACK, which
every ``.pte`` is delegated to (the run's own back-end when it is ``xnnpack``), over the
member's op list as searched. The target's prediction stays in the manifest and the table, apart
and labelled with its device and threads.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

HOST = "host"
PROGRAM_BACKEND = "xnnpack"  # what every .pte runs on; the measurement is of its kernels
COST_MODEL = "analytic"


@functools.lru_cache(maxsize=None)
def _host_model(threads: int, backend: str = PROGRAM_BACKEND):
    # one model per thread count for the whole export: loading the host spec detects the CPU
    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.backends import load_backend
    from codesign.cost_models.devices import load_device

    return AnalyticCostModel(load_device(HOST), load_backend(backend), threads=threads)


def host_prediction(ops: Sequence, threads: int, backend: str = PROGRAM_BACKEND
                    ) -> dict[str, Any]:
    """Manifest entries for the program ``ops`` describe, measured here at ``threads`` on
    ``backend``'s kernels (a ``.pte``: XNNPACK; a numba program: ``codesign``).

    Returns ``{"host_latency_s_predicted": seconds or None, "host_prediction": {"device",
    "backend", "threads", "cost_model", "cpu"}}``; the latency is None, with ``why_not`` in
    ``host_prediction``, when this machine's spec cannot price the program (an op XNNPACK's
    table does not price, more threads than the spec's cores): the export still stands.
    """
    from codesign.cost_models.ir import OpBatch

    info: dict[str, Any] = {"device": HOST, "backend": backend, "threads": int(threads),
                            "cost_model": COST_MODEL}
    try:
        model = _host_model(int(threads), backend)
        latency = float(model.predict(OpBatch.from_oplists([list(ops)])).latency_s[0])
    except ValueError as exc:  # SpecError, UnpriceableOp, too many threads: all ValueErrors
        info["why_not"] = f"{type(exc).__name__}: {exc}"
        return {"host_latency_s_predicted": None, "host_prediction": info}
    info["cpu"] = f"{model.device.soc}, {model.device.cpu.n_cores} cores {model.device.cpu.isa}"
    return {"host_latency_s_predicted": latency, "host_prediction": info}


def target_prediction(identity: dict[str, Any], device, backend, candidate) -> dict[str, Any]:
    """What ``latency_s_predicted`` (the search's prediction) is a prediction of: the run's
    device and back-end at the candidate's searched thread count, by the run's cost model."""
    return {"device": device.name, "backend": backend.name,
            "threads": int(getattr(candidate, "threads", None) or device.default_threads),
            "cost_model": identity.get("cost_model", COST_MODEL)}
