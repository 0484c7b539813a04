"""Zoo models on this host: `codesign predict --device host --backend xnnpack --threads 1` vs the
latency of the same model exported to an XNNPACK ``.pte`` (fp32) and timed with the ExecuTorch
runtime on one thread.

    python -m benchmarks.zoo_coverage --measure-host 10 \\
        --out-json benchmarks/results/zoo_host_check.json

Models are taken in ``CANDIDATES`` order (classes that did not lower before issue 18's rules,
chosen across conv, attention and hybrid designs) until ``n`` have been exported, timed and
priced; one that does not export to ``.pte`` is listed with its reason and skipped. Each model is
timed in ``rounds`` rounds over the whole set, keeping its lowest median (competing load only
adds time).
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings
from typing import Sequence

import torch

from benchmarks.zoo_entries import ZooEntry

# EfficientNet is left out: transformers' pooler is AvgPool2d(kernel_size=hidden_dim (1280),
# ceil_mode=True), which ExecuTorch runs in its portable kernel for seconds per call.
CANDIDATES = (
    "MobileNetV2ForImageClassification", "ViTForImageClassification",
    "MobileViTForImageClassification",
    "LevitForImageClassification", "SwinForImageClassification",
    "ConvNextV2ForImageClassification", "PoolFormerForImageClassification",
    "SegformerForImageClassification", "DeiTForImageClassification",
    "PvtForImageClassification", "MobileNetV1ForImageClassification",
    "FocalNetForImageClassification", "CLIPForImageClassification",
    "SwiftFormerForImageClassification", "BeitForImageClassification",
)


def measure_host(entries: Sequence[ZooEntry], n: int = 10, *, rounds: int = 3,
                 repeats: int = 30, warmup: int = 5, log=print) -> dict:
    """Export, time and price up to ``n`` of ``entries`` (in ``CANDIDATES`` order)."""
    from codesign.cost_models.devices import load_device
    from codesign.measure import lower_to_pte, time_pte, undelegated_operators
    from codesign.pricing import price_module

    by_name = {e.name: e for e in entries}
    device = load_device("host")
    chosen, skipped = [], {}
    for name in CANDIDATES:
        if len(chosen) == n or name not in by_name:
            continue
        start = time.perf_counter()
        try:
            module, shape = by_name[name].build()
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pte = lower_to_pte(module, (x,), precision="fp32")
                module, shape = by_name[name].build()  # a fresh copy: export may rewrite it
                priced = price_module(module, shape, device, backend="xnnpack", dtype="fp32",
                                      threads=1)
        except Exception as exc:  # report and go on: one model must not sink the check
            skipped[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            log(f"{name}: skipped ({skipped[name]})")
            continue
        chosen.append({"model": name, "input_shape": list(shape), "pte": pte, "x": x,
                       "predicted_ms": priced.latency_s * 1e3,
                       "undelegated": list(undelegated_operators(pte)), "best": None})
        log(f"{name}: exported in {time.perf_counter() - start:.1f} s, predicted "
            f"{priced.latency_s * 1e3:.3f} ms, undelegated: {chosen[-1]['undelegated'] or 'none'}")
    for rnd in range(rounds):
        for item in chosen:
            m = time_pte(item["pte"], (item["x"],), threads=1, warmup=warmup, repeats=repeats,
                         name=item["model"], precision="fp32")
            if item["best"] is None or m.p50_s < item["best"]:
                item["best"] = m.p50_s
            log(f"[round {rnd + 1}/{rounds}] {item['model']}: p50 {m.p50_s * 1e3:.3f} ms")
    models = []
    for item in chosen:
        measured = item["best"] * 1e3
        models.append({"model": item["model"], "input_shape": item["input_shape"],
                       "measured_ms": measured, "predicted_ms": item["predicted_ms"],
                       "predicted_over_measured": item["predicted_ms"] / measured,
                       "undelegated": item["undelegated"]})
    ratios = [m["predicted_over_measured"] for m in models]
    return {"device": "host", "backend": "xnnpack", "dtype": "fp32", "threads": 1,
            "rounds": rounds, "repeats": repeats, "warmup": warmup, "models": models,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "mape": statistics.mean(abs(r - 1) for r in ratios) if ratios else None,
            "skipped": skipped}


def profile(entry: ZooEntry, runs: int = 20, top: int = 12) -> list[tuple[str, float, int]]:
    """Where one inference's time goes on this host (ExecuTorch ETDump over ``runs`` runs of the
    fp32 XNNPACK program, 1 thread): (event, median ms summed over its calls, calls), largest
    first. ``OPERATOR_CALL`` is the time in kernels outside the delegate, ``DELEGATE_CALL`` in
    XNNPACK."""
    import os
    import tempfile
    from collections import defaultdict

    from codesign.measure import lower_to_pte
    from codesign.measure.host_runner import configure_threads
    from codesign.measure.pte import quiet_imports

    with quiet_imports():
        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib
    configure_threads(1)
    module, shape = entry.build()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pte = lower_to_pte(module, (x,))  # kept alive: the loaded program reads from it
    program = portable_lib._load_for_executorch_from_buffer(pte, enable_etdump=True)
    for _ in range(runs):
        program.run_method("forward", (x,))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "profile.etdp")
        program.write_etdump_result_to_file(path)
        inspector = Inspector(etdump_path=path)
    total, calls = defaultdict(float), defaultdict(int)
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is not None and not event.name.startswith(("Program::",
                                                                          "Method::init")):
                total[event.name] += statistics.median(event.perf_data.raw)  # ms
                calls[event.name] += 1
    ranked = sorted(total, key=total.get, reverse=True)[:top]
    return [(name, total[name], calls[name]) for name in ranked]


def markdown(result: dict) -> str:
    lines = ["| model | input | measured p50 (ms) | predicted (ms) | predicted / measured | "
             "ops outside XNNPACK |", "|---|---|---|---|---|---|"]
    for m in result["models"]:
        lines.append(f"| {m['model']} | {'x'.join(map(str, m['input_shape'][1:]))} | "
                     f"{m['measured_ms']:.3f} | {m['predicted_ms']:.3f} | "
                     f"{m['predicted_over_measured']:.2f} | "
                     f"{', '.join(m['undelegated']) or 'none'} |")
    if result["median_ratio"] is not None:
        lines += ["", f"Median predicted / measured: {result['median_ratio']:.2f}; mean "
                      f"|ratio - 1|: {result['mape']:.2f} over {len(result['models'])} models."]
    for name, reason in result["skipped"].items():
        lines.append(f"- skipped {name}: {reason}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from benchmarks.zoo_coverage import main
    sys.exit(main(["--measure-host", "10"] + sys.argv[1:]))
