"""Causal-LM coverage of ``codesign predict --phase``: every class of transformers'
``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, built from a tiny config (random weights, no download),
priced in both phases on pixel8 through both back-ends with fp32 linears and with 4-bit
group-wise ones (group 32, int8 activations). Each row says whether the model lowers and its
latency, or the op / reason blocking it.

    .venv/bin/python -m benchmarks.zoo_causal_lm [--only llama,gpt2] [--json OUT]

``causal_lm_entries()`` lists the entries (for ``benchmarks/zoo_coverage.py``'s ``price_zoo``);
``price_causal_lm(entry)`` prices one.

``tiny_config`` (``benchmarks.tiny_lm_config``) builds each model type's tiny config.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from benchmarks.tiny_lm_config import config_for, tiny_config  # noqa: F401 (re-exported)

PROMPT, CONTEXT = 16, 64
MAX_CPU_PARAMS = 20_000_000  # larger tiny-config models stay on the meta device
SETTINGS = [(backend, bits) for backend in ("xnnpack", "codesign") for bits in (32, 4)]


@dataclass(frozen=True)
class Entry:
    model_type: str
    class_name: str
    factory: Callable[[], Any]


def _ready(model):
    """What a user does before generating: a multilingual adapter model (xmod) needs its
    language chosen (the config's first)."""
    languages = getattr(model.config, "languages", None)
    if hasattr(model, "set_default_language") and languages:
        model.set_default_language(languages[0])
    return model


def causal_lm_entries() -> list[Entry]:
    """One entry per model type of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    def factory_for(model_type: str, class_name: str):
        def build():
            import torch
            import transformers
            cls = getattr(transformers, class_name)
            # sized on the meta device first: a config whose sizes the tiny overrides miss stays
            # there (pricing needs shapes only); the others build on CPU, where the exporter
            # can read the cache's position counters (data-dependent .item() calls, biogpt)
            try:
                with torch.device("meta"):
                    sized = cls(config_for(cls, tiny_config(model_type))).eval()
                if sum(p.numel() for p in sized.parameters()) > MAX_CPU_PARAMS:
                    return _ready(sized)
            except TimeoutError:
                raise
            except Exception:
                pass
            return _ready(cls(config_for(cls, tiny_config(model_type))).eval())
        return build

    return [Entry(t, c, factory_for(t, c))
            for t, c in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items())]


def _reason(exc: Exception) -> tuple[str, str]:
    """(blocking op or error kind, one-line message)."""
    text = " ".join(str(exc).split())
    match = re.search(r"no lowering rule for (\S+)", text)
    if match:
        return match[1], text
    if "torch.export" in text or "export" in type(exc).__name__.lower():
        return "torch.export", text
    return type(exc).__name__, text


def price_causal_lm(entry: Entry, device_name: str = "pixel8") -> list[dict[str, Any]]:
    """Rows (one per phase x back-end x weight bits) for ``entry``; a model that cannot be
    built gives one row per setting with that reason."""
    from codesign.cost_models.devices import load_device
    from codesign.llm_predict import price_lm_phase

    device = load_device(device_name)
    base = {"model_type": entry.model_type, "class": entry.class_name}
    try:
        model = entry.factory()
    except TimeoutError:
        raise
    except Exception as exc:  # any construction failure is a row, not a crash
        return [{**base, "phase": "-", "backend": "-", "weight_bits": 0, "lowers": False,
                 "blocker": "build", "reason": _reason(exc)[1][:300]}]
    rows = []
    for phase in ("prefill", "decode"):
        for backend, bits in SETTINGS:
            row = {**base, "phase": phase, "backend": backend, "weight_bits": bits}
            start = time.perf_counter()
            try:
                priced = price_lm_phase(model, device, phase=phase, prompt_len=PROMPT,
                                        context=CONTEXT, weight_bits=bits, backend=backend,
                                        group_size=32 if bits == 4 else None)
                if not math.isfinite(priced.latency_s) or priced.latency_s <= 0:
                    raise ValueError(f"latency {priced.latency_s} is not a positive number")
                row["float_linears"] = len(priced.float_linears)
                row.update(lowers=True, latency_s=priced.latency_s,
                           kv_cache_bytes=priced.kv_cache_bytes,
                           weight_bytes=priced.weight_bytes, bound=priced.bound)
            except TimeoutError:
                raise
            except Exception as exc:  # the blocker is the result
                blocker, message = _reason(exc)
                row.update(lowers=False, blocker=blocker, reason=message[:300])
            row["seconds"] = round(time.perf_counter() - start, 2)
            rows.append(row)
            if not row["lowers"] and row["blocker"] in ("torch.export", "LoweringError"):
                # the same export fails in every setting of the phase: do not repeat it
                rows += [{**row, "backend": b, "weight_bits": w} for b, w in SETTINGS
                         if (b, w) != (backend, bits)]
                break
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    models = sorted({r["model_type"] for r in rows})
    full = [m for m in models if all(r["lowers"] for r in rows if r["model_type"] == m)]
    blockers: dict[str, int] = {}
    for m in models:
        failed = [r for r in rows if r["model_type"] == m and not r["lowers"]]
        for b in sorted({r["blocker"] for r in failed}):
            blockers[b] = blockers.get(b, 0) + 1
    return {"models": len(models), "fully_priced": len(full),
            "fraction": len(full) / max(len(models), 1),
            "rows": len(rows), "rows_priced": sum(r["lowers"] for r in rows),
            "blockers": dict(sorted(blockers.items(), key=lambda kv: -kv[1]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="model types, comma separated")
    parser.add_argument("--json", default=None, help="write rows + summary here")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per model (120)")
    args = parser.parse_args(argv)
    import logging
    import warnings
    for name in ("torch", "transformers", "torchao"):  # failures are rows, not log noise
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")
    entries = causal_lm_entries()
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e.model_type in wanted]
    import signal

    def alarm(signum, frame):
        raise TimeoutError(f"over {args.timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    rows = []
    for i, entry in enumerate(entries):
        signal.alarm(args.timeout)
        try:
            new = price_causal_lm(entry)
        except TimeoutError as exc:
            new = [{"model_type": entry.model_type, "class": entry.class_name, "phase": "-",
                    "backend": "-", "weight_bits": 0, "lowers": False, "blocker": "timeout",
                    "reason": str(exc)}]
        finally:
            signal.alarm(0)
        rows += new
        ok = sum(r["lowers"] for r in new)
        why = sorted({r.get("blocker") for r in new if not r["lowers"]})
        print(f"[{i + 1}/{len(entries)}] {entry.model_type:<24} {ok}/{len(new)} priced"
              + (f"  blocked by {', '.join(why)}" if why else ""), flush=True)
    summary = summarize(rows)
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
