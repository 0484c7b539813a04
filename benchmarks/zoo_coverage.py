"""Model-zoo coverage: does every public model class of a family lower and price?

Each entry (``benchmarks.zoo_entries``) is built from a small config with random weights, lowered
once through ``torch.export`` (``lower_module``) and priced with the analytic model on every
(device, back-end, dtype) asked for; a failure keeps its reason, which names the op that blocks
it (no lowering rule, or an op the back-end cannot run) or the step that failed (the build,
``torch.export``).

    python -m benchmarks.zoo_coverage --family vision \\
        --out-json benchmarks/results/zoo_coverage_vision.json \\
        --out-md benchmarks/results/zoo_coverage_vision.md

``--measure-host N`` compares host predictions with ``.pte`` timings instead
(``benchmarks.zoo_host_check``).

A family is a function returning ``ZooEntry`` records (``FAMILIES``); another family registers
its own ``*_entries`` there and reuses ``price_zoo``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from benchmarks.zoo_entries import ZooEntry, vision_entries

FAMILIES: dict[str, Callable[[], list[ZooEntry]]] = {"vision": vision_entries}
DEVICES, BACKENDS, DTYPES = ("pixel8",), ("xnnpack", "codesign"), ("fp32", "int8")


@dataclass(frozen=True)
class ZooRow:
    """One entry priced (or not) on one device / back-end / dtype."""

    model: str
    key: str
    family: str
    device: str
    backend: str
    dtype: str
    input_shape: tuple[int, ...]
    ok: bool
    latency_s: float | None = None
    n_ops: int = 0
    gflops: float = 0.0
    stage: str = ""  # where a failure happened: build, lower, price
    blocker: str = ""  # the op (or step) that blocks it
    reason: str = ""  # the full one-line reason


_NO_RULE = re.compile(r"no lowering rule for (\S+)")


def blocker_of(stage: str, message: str) -> str:
    """The op a failure names (an ATen or custom op, or the back-end op kind), else the step."""
    if stage == "price":
        kind = re.search(r"op kind (\w+)", message) or re.search(r"for (\w+) at", message)
        op = re.search(r"op '([^']+)'", message)
        return " ".join(x for x in (kind and kind[1], op and f"({op[1]})") if x) or "price"
    library = re.search(r"requires the (\w+) library", message)
    if stage == "build" and library:
        return f"{library[1]} (library not installed)"
    found = _NO_RULE.search(message)
    if stage == "lower" and found:
        return found[1]
    return "torch.export" if "torch.export failed" in message else stage


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:400]


def price_zoo(entries: Iterable[ZooEntry], devices: Sequence[str] = DEVICES,
              backends: Sequence[str] = BACKENDS, dtypes: Sequence[str] = DTYPES,
              progress: Callable[[str], None] | None = None) -> list[ZooRow]:
    """Lower each entry once and price it on every (device, back-end, dtype): one row each.

    The price is ``codesign predict``'s (``price_module`` with the analytic model at the device's
    default threads), from the one lowering."""
    import torch

    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.backends import backend_for
    from codesign.cost_models.base import UnpriceableOp
    from codesign.cost_models.devices import load_device
    from codesign.cost_models.ir import OpBatch, total_flops
    from codesign.cost_models.lowering import LoweringError, apply_precision, lower_module

    models = {}
    for d in devices:
        device = load_device(d)
        for b in backends:
            spec = backend_for(device, b)
            models[d, b] = (spec, AnalyticCostModel(device, spec))
    rows: list[ZooRow] = []
    for entry in entries:
        start = time.perf_counter()
        shape: tuple[int, ...] = ()
        ops, stage, reason = None, "", ""
        try:
            module, shape = entry.build()
        except Exception as exc:  # a class that cannot be built here (a missing library)
            stage, reason = "build", _one_line(exc)
        if not stage:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ops = lower_module(module, shape)
            except LoweringError as exc:
                stage, reason = "lower", str(exc)
            finally:
                del module
        for (d, b), (spec, model) in models.items():
            for dtype in dtypes:
                common = dict(model=entry.name, key=entry.key, family=entry.family, device=d,
                              backend=b, dtype=dtype, input_shape=tuple(shape))
                if ops is None:
                    rows.append(ZooRow(**common, ok=False, stage=stage,
                                       blocker=blocker_of(stage, reason), reason=reason))
                    continue
                try:
                    priced = apply_precision(ops, spec, dtype)
                    latency = float(model.predict(OpBatch.from_oplists([priced])).latency_s[0])
                    rows.append(ZooRow(**common, ok=True, latency_s=latency, n_ops=len(priced),
                                       gflops=total_flops(ops) / 1e9))
                except (UnpriceableOp, ValueError) as exc:
                    rows.append(ZooRow(**common, ok=False, stage="price",
                                       blocker=blocker_of("price", str(exc)), reason=str(exc)))
        if progress:
            ok = "ok" if ops is not None else f"FAILED ({blocker_of(stage, reason)})"
            progress(f"{entry.name}: {ok} in {time.perf_counter() - start:.1f} s")
        torch.compiler.reset()  # export caches per model: keep the sweep's memory flat
    return rows


def coverage(rows: Sequence[ZooRow], device: str, backend: str, dtype: str) -> tuple[int, int]:
    """(priced, total) entries on ``device`` / ``backend`` / ``dtype``."""
    chosen = [r for r in rows if (r.device, r.backend, r.dtype) == (device, backend, dtype)]
    return sum(r.ok for r in chosen), len(chosen)


def markdown(rows: Sequence[ZooRow], device: str = "pixel8") -> str:
    """The coverage table: a row per model, a latency (or blocker) column per back-end/dtype."""
    combos = sorted({(r.backend, r.dtype) for r in rows if r.device == device},
                    key=lambda c: (BACKENDS.index(c[0]) if c[0] in BACKENDS else 9, c[1]))
    by_model: dict[str, dict] = {}
    for r in rows:
        if r.device == device:
            by_model.setdefault(r.model, {})[r.backend, r.dtype] = r
    head = ["model", "type", "input", "GFLOPs", "lowers?"] + [
        f"{device} {b} {d} (ms)" for b, d in combos]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in by_model.items():
        first = next(iter(cells.values()))
        lowered = first.stage not in ("build", "lower")
        values = []
        for combo in combos:
            r = cells.get(combo)
            values.append("" if r is None else f"{r.latency_s * 1e3:.3f}" if r.ok
                          else f"blocked: `{r.blocker}`")
        shape = "x".join(map(str, first.input_shape[1:])) if first.input_shape else "-"
        lines.append("| " + " | ".join([
            name, first.key, shape, f"{first.gflops:.3f}" if lowered else "-",
            "yes" if lowered else f"no: `{first.blocker}`"] + values) + " |")
    totals = []
    for b, d in combos:
        ok, n = coverage(rows, device, b, d)
        totals.append(f"{b} {d}: {ok}/{n} ({100 * ok / max(n, 1):.1f}%)")
    failures = sorted({(r.model, r.backend, r.dtype, r.reason) for r in rows
                       if not r.ok and r.device == device})
    out = lines + ["", "Priced: " + "; ".join(totals) + "."]
    if failures:
        out += ["", "Failures (every one names its op or the step that failed):", ""]
        out += [f"- {m} ({b} {d}): {reason}" for m, b, d, reason in failures]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="vision")
    parser.add_argument("--devices", default=",".join(DEVICES))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--only", default="", help="comma-separated class names or types")
    parser.add_argument("--measure-host", type=int, default=0, metavar="N",
                        help="instead: export N models to XNNPACK .pte, time them on this host "
                             "(1 thread) and compare with --device host predictions")
    parser.add_argument("--profile-host", metavar="CLASS",
                        help="instead: ExecuTorch ETDump breakdown of one model on this host")
    parser.add_argument("--out-json", type=Path)
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args(argv)
    entries = FAMILIES[args.family]()
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e.name in wanted or e.key in wanted]
    if args.measure_host:
        return _measure_host(entries, args)
    if args.profile_host:
        return _profile_host(entries, args.profile_host)
    start = time.perf_counter()
    rows = price_zoo(entries, args.devices.split(","), args.backends.split(","),
                     args.dtypes.split(","), progress=lambda s: print(s, file=sys.stderr))
    seconds = time.perf_counter() - start
    table = markdown(rows, args.devices.split(",")[0])
    print(table)
    if args.out_md:
        args.out_md.write_text(table)
    if args.out_json:
        args.out_json.write_text(json.dumps({
            "family": args.family, "n_entries": len(entries), "seconds": round(seconds, 1),
            "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return 0


def _measure_host(entries: Sequence[ZooEntry], args) -> int:
    import torch

    from benchmarks import zoo_host_check

    torch.set_num_threads(1)  # the runtime is timed on one thread: keep torch off the other core
    result = zoo_host_check.measure_host(entries, args.measure_host,
                                         log=lambda s: print(s, file=sys.stderr))
    table = zoo_host_check.markdown(result)
    print(table)
    if args.out_md:
        args.out_md.write_text(table)
    if args.out_json:
        args.out_json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["models"] else 1


def _profile_host(entries: Sequence[ZooEntry], name: str) -> int:
    import torch

    from benchmarks import zoo_host_check

    torch.set_num_threads(1)
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        print(f"unknown class {name!r}", file=sys.stderr)
        return 2
    print(f"| {name}: ETDump event | median ms (summed) | calls |\n|---|---|---|")
    for event, ms, calls in zoo_host_check.profile(entry):
        print(f"| {event} | {ms:.3f} | {calls} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
