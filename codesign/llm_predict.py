"""``codesign predict --phase prefill|decode``: price one generation phase of a causal LM.

The model (a Hugging Face causal LM, or a module taking token ids) is exported at the phase's
step with a static KV cache (``cost_models/lm_export.py``), lowered with the decoder space's
conventions (``cost_models/lm_lowering.py``) and quantized as ExecuTorch's Llama export
quantizes it (``-qmode 8da4w`` / ``8da8w``):

- every linear layer, the LM head included, at ``--weight-bits`` (4: group-wise with
  ``--group-size`` elements per scale; 8: per channel) with int8 dynamic activations where the
  back-end runs them (XNNPACK; the project's kernels take int8 static activations); a linear
  whose reduction length the group size does not divide stays float (torchao skips it);
- the token embedding is a gather of the step's rows, not streamed. Stored: a table tied to the
  LM head is the head's quantized matrix (one copy, as the decoder space stores it); an untied
  table is stored at the linears' bits and group size (export_llama's ``--embedding-quantize
  <bits>,<group>``), counted in ``weight_bytes`` only;
- norms, RoPE, softmax and the residual stream at ``--dtype`` (fp32 default, as export_llama's
  default dtype; fp16); the KV cache at the stream's precision, or int8 where the back-end runs
  attention's matmuls on the linears' int8 activations (the decoder space's rule).

Prefill prices P prompt tokens (time to first token: ``latency_s``; tokens/s = P / TTFT), decode
one token at a context of C cached tokens (per-token latency; tokens/s = 1 / latency).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codesign.learned_pricing import cost_model_names, open_cost_models
from codesign.userinput import BadInput
from codesign.cost_models.backends import backend_for
from codesign.cost_models.base import BOUNDS, Prediction
from codesign.cost_models.devices import DeviceSpec
from codesign.cost_models.ir import Op, OpBatch, OpKind, model_bytes
from codesign.kernels.specs import QuantSpec

WEIGHT_BITS = (4, 8, 32)  # 32: linears not quantized (float at --dtype)
STREAM_DTYPES = {"fp32": 32, "fp16": 16}


@dataclass(frozen=True)
class PricedPhase:
    device: DeviceSpec
    backend: str
    phase: str
    tokens: int  # new tokens of the step (P for prefill, 1 for decode)
    context: int
    attended: int
    ops: tuple[Op, ...]
    batch: OpBatch
    prediction: Prediction
    weight_bytes: int
    kv_cache_bytes: int
    kv_bits: int
    weight_bits: int
    group_size: int
    stream_bits: int
    float_linears: tuple[str, ...]  # linears left unquantized (group size does not divide K)
    state_bytes: int = 0  # recurrent state within kv_cache_bytes (read whole every step)

    @property
    def latency_s(self) -> float:
        """Prefill: time to first token; decode: per-token latency."""
        return float(self.prediction.latency_s[0])

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.latency_s

    @property
    def streamed_bytes(self) -> int:
        """What a step must read at least: every weight byte the linears stream and the
        attended part of the K/V cache, all of any recurrent state (the untied embedding table is
        gathered, not streamed)."""
        kv = self.kv_cache_bytes - self.state_bytes
        return int(model_bytes(self.ops) + kv * self.attended / self.context + self.state_bytes)

    def dram_fraction(self) -> float:
        """``streamed_bytes`` per step x steps per second over the device's DRAM peak."""
        return self.streamed_bytes / self.latency_s / self.device.memory.dram_bytes_per_s.value

    def bound_shares(self) -> dict[str, float]:
        shares = np.bincount(self.prediction.op_bound, weights=self.prediction.op_latency_s,
                             minlength=len(BOUNDS)) / max(self.latency_s, 1e-30)
        return {b: float(s) for b, s in zip(BOUNDS, shares)}

    @property
    def bound(self) -> str:
        shares = self.bound_shares()
        return max(shares, key=shares.get)

    def by_kind(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for row in self.prediction.layers(self.batch, 0):
            if row["kind"] == OpKind.FREE.value:
                continue
            agg = out.setdefault(row["kind"], {"ops": 0, "latency_s": 0.0,
                                               "bounds": dict.fromkeys(BOUNDS, 0.0)})
            agg["ops"] += 1
            agg["latency_s"] += row["latency_s"]
            agg["bounds"][row["bound"]] += row["latency_s"]
        for agg in out.values():
            agg["bound"] = max(agg["bounds"], key=agg["bounds"].get)
            del agg["bounds"]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["latency_s"]))

    def to_json(self) -> dict[str, Any]:
        layers = [{k: row[k] for k in ("name", "kind", "latency_s", "bound", "flops", "bytes",
                                        "weight_bits", "act_bits", "sparsity", "fused")}
                  for row in self.prediction.layers(self.batch, 0)]
        out = {"device": self.device.name, "backend": self.backend, "phase": self.phase,
               "latency_s": self.latency_s, "tokens_per_s": self.tokens_per_s,
               "kv_cache_bytes": self.kv_cache_bytes, "state_bytes": self.state_bytes,
               "weight_bytes": self.weight_bytes,
               "tokens": self.tokens, "context": self.context, "attended": self.attended,
               "bound": self.bound, "bound_shares": self.bound_shares(),
               "by_kind": self.by_kind(), "streamed_bytes": self.streamed_bytes,
               "dram_bandwidth_fraction": self.dram_fraction(),
               "precision": {"weight_bits": self.weight_bits,
                             "group_size": self.group_size if self.weight_bits < 8 else 0,
                             "stream_bits": self.stream_bits, "kv_bits": self.kv_bits,
                             "float_linears": list(self.float_linears)},
               "assumptions": self.prediction.assumptions, "layers": layers}
        if self.phase == "prefill":
            out["ttft_s"] = self.latency_s
        else:
            out["per_token_s"] = self.latency_s
        return out


def check_phase_args(phase: str, prompt_len: int | None, context: int | None,
                     weight_bits: int, group_size: int | None, dtype: str) -> tuple[int, int]:
    """BadInput for a phase request that cannot be priced; returns (context, group size)."""
    from codesign.cost_models.lm_export import PHASES

    if phase not in PHASES:
        raise BadInput(f"unknown --phase {phase!r}; valid: {', '.join(PHASES)}")
    if phase == "prefill" and prompt_len is None:
        raise BadInput("--phase prefill needs --prompt-len (the prompt's tokens)")
    if context is None:
        if phase == "decode":
            raise BadInput("--phase decode needs --context (the cached tokens it attends to)")
        context = prompt_len
    if prompt_len is not None and context < prompt_len:
        raise BadInput(f"--context {context} is smaller than --prompt-len {prompt_len}: the "
                       "prompt must fit the KV cache")
    if weight_bits not in WEIGHT_BITS:
        raise BadInput(f"--weight-bits {weight_bits}: valid: {', '.join(map(str, WEIGHT_BITS))}")
    if group_size is not None and weight_bits >= 8:
        raise BadInput("--group-size applies to 4-bit weights (8-bit weights are per channel)")
    if dtype not in STREAM_DTYPES:
        raise BadInput(f"--dtype {dtype!r} with --phase: valid: {', '.join(STREAM_DTYPES)} "
                       "(the residual stream; linears take --weight-bits)")
    return context, 32 if group_size is None else group_size


def price_lm_phase(model, device: DeviceSpec, *, phase: str, prompt_len: int | None = None,
                   context: int | None = None, weight_bits: int = 4,
                   group_size: int | None = None, dtype: str = "fp32",
                   backend: str | None = None, threads: int | None = None,
                   cost_model: str = "analytic", cost_model_file: Path | None = None
                   ) -> PricedPhase:
    """Lower ``model``'s ``phase`` step and price it on ``device``.

    Raises:
        BadInput, SpecError, LoweringError (NotACausalLM included), UnpriceableOp.
    """
    from codesign.cost_models.lm_export import export_step, phase_shape
    from codesign.cost_models.lm_lowering import lower_step
    from codesign.cost_models.lm_precision import kv_bits, linear_quant, lm_precision

    context, group = check_phase_args(phase, prompt_len, context, weight_bits, group_size, dtype)
    if cost_model not in cost_model_names():
        raise BadInput(f"unknown --cost-model {cost_model!r}; "
                       f"valid: {', '.join(cost_model_names())}")
    spec = backend_for(device, backend)
    if threads is not None and not spec.threads_choosable and threads != device.default_threads:
        raise BadInput(f"back-end {spec.name} does not let the thread count be chosen")
    if threads is not None and not 1 <= threads <= device.cpu.n_cores:
        raise BadInput(f"--threads {threads}: {device.name} has {device.cpu.n_cores} cores")
    try:
        lin = linear_quant(spec, weight_bits, group, STREAM_DTYPES[dtype])
    except ValueError as exc:
        raise BadInput(f"--weight-bits {weight_bits} --group-size {group}: {exc}") from None
    models = open_cost_models(cost_model, device, spec, cost_model_file)
    if models.threads is not None and threads is not None and threads != models.threads:
        raise BadInput(f"--cost-model {cost_model}: the model was measured at {models.threads} "
                       f"thread(s), not {threads}")
    shape = phase_shape(phase, prompt_len, context)
    fused = spec.fused_attention if spec.capability(OpKind.ATTENTION) is not None else None
    lowered = lower_step(export_step(model, shape), shape, fused)
    stream = STREAM_DTYPES[dtype]
    ops, skipped = lm_precision(lowered.ops, spec, weight_bits=weight_bits, group_size=group,
                                stream_bits=stream)
    batch = OpBatch.from_oplists([ops])
    threads = threads if threads is not None else models.threads or device.default_threads
    prediction = models.at(threads).predict(batch)
    if models.fitted is not None:
        prediction.assumptions.update({**models.provenance(), "threads": threads})
    cache_bits = kv_bits(spec, lin.act_bits, stream)
    table = lin if weight_bits >= 16 else QuantSpec(weight_bits, 8, lin.group_size)
    # stored, never streamed: an untied token table, MoE experts the step does not route to
    table_bytes = (lowered.embedding_elems + lowered.idle_expert_elems) * (
        table.weight_bits / 8 + table.scale_bytes_per_weight())
    return PricedPhase(device, spec.name, phase, shape.tokens, context, shape.attended,
                       tuple(ops), batch, prediction,
                       weight_bytes=int(round(model_bytes(ops) + table_bytes)),
                       # recurrent state (linear attention, SSM, conv windows) stays at the
                       # stream's precision: it accumulates; reported with the cache
                       kv_cache_bytes=(lowered.kv_cache_elems * cache_bits
                                       + lowered.state_elems * stream) // 8, kv_bits=cache_bits,
                       weight_bits=lin.weight_bits, group_size=lin.group_size, stream_bits=stream,
                       float_linears=tuple(skipped),
                       state_bytes=lowered.state_elems * stream // 8)


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def format_phase(priced: PricedPhase, *, model_name: str) -> str:
    a = priced.prediction.assumptions
    cores = ", ".join(f"{c['count']}x {c['core']}" for c in a["cores"])
    prec = (f"w{priced.weight_bits}"
            + (f" g{priced.group_size}" if priced.weight_bits < 8 else
               " per-channel" if priced.weight_bits == 8 else " (float)")
            + f", fp{priced.stream_bits} stream, {priced.kv_bits}-bit KV cache")
    step = (f"prefill of {priced.tokens} prompt tokens into a KV cache of {priced.context}"
            if priced.phase == "prefill" else f"decode of 1 token at context {priced.context}")
    lines = [f"{model_name}: {step}, {prec}",
             f"on {priced.device.display_name} [{priced.device.name}], back-end "
             f"{priced.backend}, {a['threads']} thread(s): {cores} @ {a['clock']} clock"]
    ms = priced.latency_s * 1e3
    if priced.phase == "prefill":
        lines.append(f"time to first token: {ms:.3f} ms  ({priced.tokens_per_s:.1f} tokens/s "
                     "prefill)")
    else:
        lines.append(f"per-token latency: {ms:.3f} ms  ({priced.tokens_per_s:.2f} tokens/s)")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in priced.bound_shares().items())
    lines.append(f"bound: {priced.bound} (time by bound: {shares})")
    lines.append(f"weights {_si(priced.weight_bytes, 'B')}, "
                 f"KV cache {_si(priced.kv_cache_bytes, 'B')}"
                 f"; streamed per step {_si(priced.streamed_bytes, 'B')} = "
                 f"{priced.dram_fraction():.0%} of the DRAM peak "
                 f"({_si(priced.device.memory.dram_bytes_per_s.value, 'B/s')})")
    kinds = [f"  {kind:<11} {agg['ops']:>5} ops {agg['latency_s'] * 1e3:>10.3f} ms "
             f"{agg['latency_s'] / priced.latency_s:>6.1%}  {agg['bound']}"
             for kind, agg in priced.by_kind().items()]
    lines += ["by op kind:"] + kinds
    if priced.float_linears:
        lines.append(f"left float (group size does not divide K): "
                     f"{', '.join(priced.float_linears[:5])}"
                     + (" ..." if len(priced.float_linears) > 5 else ""))
    return "\n".join(lines)


def run_phase(args) -> int:
    """``codesign predict --phase ...`` (``args`` from the predict parser)."""
    import json

    from codesign.cost_models.devices import load_device
    from codesign.userinput import build_user_model

    if args.input_shape is not None:
        raise BadInput("--input-shape and --phase exclude each other: a phase feeds token ids "
                       "(--prompt-len / --context)")
    context, _ = check_phase_args(args.phase, args.prompt_len, args.context, args.weight_bits,
                                  args.group_size, args.dtype)
    device = load_device(args.device)
    model = build_user_model(args.model)
    priced = price_lm_phase(model, device, phase=args.phase, prompt_len=args.prompt_len,
                            context=context, weight_bits=args.weight_bits,
                            group_size=args.group_size, dtype=args.dtype, backend=args.backend,
                            threads=args.threads, cost_model=args.cost_model,
                            cost_model_file=Path(args.cost_model_file) if args.cost_model_file
                            else None)
    if args.json:
        print(json.dumps(priced.to_json(), indent=2))
    else:
        print(format_phase(priced, model_name=args.model))
    return 0
