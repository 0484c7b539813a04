"""A ``transformer`` member as an ExecuTorch program: build, lower, check and time its decode.

ExecuTorch's LLM export recipe (``examples/models/llama/export_llama_lib.py``), step by step:

1. the candidate as ExecuTorch's own Llama ``Transformer`` (``build_decoder``), static KV cache;
2. where the runtime has the kernels, its source transformations ``replace_sdpa_with_custom_op``
   and ``replace_kv_cache_with_custom_kv_cache`` (attention through ``llama::custom_sdpa``, the
   cache written by ``llama::update_cache``: the ops ``--use_sdpa_with_kv_cache`` selects in
   ExecuTorch 1.5.1), else the plain static cache (index_put + masked SDPA);
3. each dynamically quantized linear with torchao's ``quantize_`` filtered to that module
   (``transformer_plan.py``; ``program._apply_torchao``);
4. ``torch.export`` with ``(tokens[1, 1], {"input_pos": tensor([pos])})``; static ``w8a8``
   linears then go through PT2E as issue 6's CNN layers do (``program.layer_quantizer`` admitting
   only the nodes those modules own), calibrated by decoding ``CALIBRATION_TOKENS`` tokens from
   position 0 (the caches are zeroed afterwards), converted and re-exported;
5. ``to_edge_transform_and_lower`` with the dynamically-quantized-linear partitioner first and
   the general XNNPACK partitioner second (the recipe's order with ``--xnnpack-extended-ops``),
   then ``to_executorch``. The KV cache is a mutable buffer in the program's planned memory
   (zero at load, as in the recipe).

The runtime check decodes a fixed token sequence from position 0 through the ``.pte`` and
through the eager (quantized) module, step by step; the timing decodes one token at position
``context - 1``, the priced worst case (attention over the whole cache).

The custom ops' runtime kernels are registered into the Python runtime by importing
``executorch.extension.llm.custom_ops.custom_ops`` (it loads ``libcustom_ops_aot_lib.so``, which
carries both the ATen and the ExecuTorch kernels); ``custom_sdpa_runtime`` checks the registry.
The Python runtime gives kernels no temp allocator, so ``custom_sdpa`` logs "No temp allocator
provided" on every call and allocates its scratch itself; ``quiet_stderr`` drops those lines
while timing.
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from codesign.export.plan import PT2E_INT8, LayerPlan
from codesign.export.program import _output_scale
from codesign.measure.pte import _quiet_export, lower_exported, quiet_imports

SDPA_CUSTOM_OPS = ("llama::custom_sdpa.out", "llama::update_cache.out")
ATOL = RTOL = 1e-3          # fp32 programs: ExecuTorch's XNNPACK tests' tolerance
QUANT_REL_TOL = 1e-2        # quantized programs: 1e-3 + 1% of the step's logit range, or
QTOL_STEPS = 2              # 2 int8 steps of the logits where a static int8 head writes them
CHECK_TOKENS = 8
CALIBRATION_TOKENS = 64


# ------------------------------------------------------------------------------ runtime
def custom_sdpa_runtime() -> tuple[bool, str]:
    """(whether the Python runtime can run the custom SDPA/KV-cache ops, why not)."""
    try:
        with quiet_imports():
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
            from executorch.extension.pybindings import portable_lib
    except Exception as exc:  # the wheel without the library: fall back, say why
        return False, f"cannot load ExecuTorch's LLM custom ops: {type(exc).__name__}: {exc}"
    names = set(portable_lib._get_operator_names())
    missing = [op for op in SDPA_CUSTOM_OPS if op not in names]
    if missing:
        return False, f"the runtime has no kernel for {', '.join(missing)}"
    return True, ""


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Route file descriptor 2 to /dev/null (the runtime's C++ log lines) for the block."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def decode_inputs(token: int, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The program's flat inputs for one decode step."""
    return torch.tensor([[int(token)]], dtype=torch.long), torch.tensor([int(pos)],
                                                                          dtype=torch.long)


# ------------------------------------------------------------------------------ build
def build_module(candidate, plans: Sequence[LayerPlan], vocab: int,
                 state_dict: Mapping[str, torch.Tensor] | None, *, custom_sdpa: bool,
                 seed: int = 0) -> torch.nn.Module:
    """The candidate's decoder (recipe steps 1-3). ``state_dict`` None: seeded random weights
    (``build_decoder``'s initialisation) - latency and sizes do not depend on their values."""
    from codesign.export.program import _apply_torchao
    from codesign.search_spaces.transformer_model import build_decoder

    missing = [p.name for p in plans if p.realisation is None]
    if missing:
        raise ValueError(f"layers with no XNNPACK realisation: {', '.join(missing)}")
    torch.manual_seed(seed)
    model = build_decoder(candidate, vocab, state_dict, kv_cache=True)
    if custom_sdpa:
        with quiet_imports():
            from executorch.examples.models.llama.source_transformation.custom_kv_cache import (
                replace_kv_cache_with_custom_kv_cache)
            from executorch.examples.models.llama.source_transformation.sdpa import (
                replace_sdpa_with_custom_op)
        model = replace_kv_cache_with_custom_kv_cache(replace_sdpa_with_custom_op(model))
    with quiet_imports(), torch.no_grad():
        _apply_torchao(model, plans)
    return model.eval()


def kv_cache_buffers(exported: torch.export.ExportedProgram) -> dict[str, int]:
    """Bytes of each K/V cache buffer of the program (name -> bytes). By name: the custom
    ``update_cache`` op writes the cache in place, so the graph signature does not list it
    among the mutated buffers as it does the plain cache's ``index_put``."""
    out = {}
    for name in exported.graph_signature.buffers:
        if name.endswith(("k_cache", "v_cache")):
            t = exported.state_dict.get(name)
            if t is None:
                t = exported.constants[name]
            out[name] = t.numel() * t.element_size()
    return out


def _zero_caches(module: torch.nn.Module) -> None:
    for name, buf in module.named_buffers():
        if name.endswith(("k_cache", "v_cache")):
            buf.zero_()


def _random_tokens(candidate, vocab: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed + 11)
    n = min(CALIBRATION_TOKENS, candidate.arch.context)
    return [int(t) for t in torch.randint(0, vocab, (n,), generator=gen)]


def _static_int8(exported: torch.export.ExportedProgram, static: set[str],
                 module_names: Sequence[str], tokens: Sequence[int]) -> torch.nn.Module:
    """PT2E static int8 on the linears named in ``static`` only; calibrated by decoding
    ``tokens`` from position 0; returns the converted module with its caches zeroed."""
    from codesign.export.program import layer_quantizer, owner_resolver

    with quiet_imports():
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    owner = owner_resolver(module_names)
    prepared = prepare_pt2e(exported.module(), layer_quantizer(lambda n: owner(n) in static))
    with quiet_stderr():  # the custom SDPA's ATen kernel logs "No temp allocator" per call
        for pos, tok in enumerate(tokens):
            t, p = decode_inputs(tok, pos)
            prepared(t, {"input_pos": p})
    converted = convert_pt2e(prepared)
    _zero_caches(converted)
    return converted


@dataclass
class DecoderProgram:
    pte: bytes
    exported: torch.export.ExportedProgram
    reference: torch.nn.Module  # the eager module, its caches untouched by export
    custom_sdpa: bool
    sdpa_note: str
    kv_cache_bytes: int
    kv_buffers: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    output_scale: float | None = None  # the logits' int8 step when a static head writes them


def lower_decoder(exported: torch.export.ExportedProgram) -> bytes:
    """Recipe step 5: the dynamically-quantized-linear partitioner first, then the general one."""
    return lower_exported(exported, dynamic_linears_first=True)


def export_decoder(candidate, plans: Sequence[LayerPlan], vocab: int,
                   state_dict: Mapping[str, torch.Tensor] | None = None, *,
                   sdpa: str = "auto", seed: int = 0,
                   calibration: Sequence[int] | None = None) -> DecoderProgram:
    """Recipe steps 1-5. ``sdpa``: ``auto`` (the custom op where the runtime runs it),
    ``custom`` or ``plain``. ``calibration``: tokens decoded to set static int8 ranges
    (default: seeded random bytes)."""
    if sdpa not in ("auto", "custom", "plain"):
        raise ValueError(f"sdpa must be auto, custom or plain, got {sdpa!r}")
    available, why = custom_sdpa_runtime() if sdpa != "plain" else (False, "")
    if sdpa == "custom" and not available:
        raise RuntimeError(f"custom SDPA requested: {why}")
    custom = sdpa != "plain" and available
    note = ("llama::custom_sdpa + llama::update_cache (ExecuTorch's --use_sdpa_with_kv_cache "
            "source transformations)" if custom else
            "plain static KV cache (index_put + masked SDPA)" +
            (f": {why}" if why else " (requested)"))
    with warnings.catch_warnings():
        # ExecuTorch's custom-op registrations call torch._check_is_size, deprecated in torch
        warnings.filterwarnings("ignore", message=".*_check_is_size.*", category=FutureWarning)
        return _export_decoder(candidate, plans, vocab, state_dict, custom, note, seed,
                               calibration)


def _export_decoder(candidate, plans, vocab, state_dict, custom, note, seed,
                    calibration) -> DecoderProgram:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = build_module(candidate, plans, vocab, state_dict, custom_sdpa=custom, seed=seed)
    reference = copy.deepcopy(model)
    with _quiet_export(), quiet_imports(), torch.no_grad():
        tokens, pos = decode_inputs(0, 0)
        exported = torch.export.export(model, (tokens, {"input_pos": pos}), strict=False)
        static = {p.name for p in plans if p.realisation == PT2E_INT8}
        if static:
            reference = _static_int8(exported, static, [p.name for p in plans],
                                     calibration or _random_tokens(candidate, vocab, seed))
            exported = torch.export.export(reference, (tokens, {"input_pos": pos}),
                                           strict=False)
    seconds["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pte = lower_decoder(exported)
    seconds["lower"] = time.perf_counter() - t0
    buffers = kv_cache_buffers(exported)
    return DecoderProgram(pte, exported, reference, custom, note, sum(buffers.values()),
                          buffers, seconds, _output_scale(exported))


# ------------------------------------------------------------------------------ check
@dataclass(frozen=True)
class DecodeCheck:
    tokens: tuple[int, ...]
    max_abs_diff: float            # over every step's logits
    max_rel_diff: float            # max |diff| / max |reference logits| of that step
    atol: float
    rtol: float
    rule: str
    argmax_agree: int
    ok: bool

    def as_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "steps": len(self.tokens),
                "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "atol": self.atol, "rtol": self.rtol, "rule": self.rule,
                "argmax_agree": self.argmax_agree, "within_tolerance": self.ok}


def check_decode(pte: bytes, reference: torch.nn.Module, *, quantized: bool,
                 n_tokens: int = CHECK_TOKENS, vocab: int = 256, seed: int = 0,
                 threads: int = 1, output_scale: float | None = None) -> DecodeCheck:
    """Decode ``n_tokens`` seeded tokens from position 0 through the program (one loaded
    method, so its KV cache carries over) and through a copy of ``reference``; compare each
    step's logits. fp32: ``allclose(atol=rtol=1e-3)``; quantized: ``|diff| <= 1e-3 + max(1% of
    the step's max |logit|, 2 int8 steps of the logits when a static head writes them as int8
    (``output_scale``; issue 6's tolerance))`` - XNNPACK's fused int8 kernels round and
    accumulate apart from the torchao / PT2E reference, and a flipped int8 step propagates
    through the layers."""
    from codesign.measure.host_runner import _load_method, configure_threads

    gen = torch.Generator().manual_seed(seed + 7)
    tokens = tuple(int(t) for t in torch.randint(0, vocab, (n_tokens,), generator=gen))
    eager = copy.deepcopy(reference)
    configure_threads(threads)
    _program, method = _load_method(pte, decode_inputs(0, 0), "forward")
    max_abs = max_rel = 0.0
    agree, ok = 0, True
    with torch.no_grad(), quiet_stderr():
        for pos, tok in enumerate(tokens):
            inputs = decode_inputs(tok, pos)
            out = method.execute(inputs)[0].reshape(-1)
            ref = eager(inputs[0], {"input_pos": inputs[1]})
            ref = (ref[0] if isinstance(ref, tuple) else ref).reshape(-1)
            diff = float((out - ref).abs().max())
            scale = float(ref.abs().max())
            max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / max(scale, 1e-12))
            agree += int(out.argmax() == ref.argmax())
            if quantized:
                ok &= diff <= ATOL + max(QUANT_REL_TOL * scale, QTOL_STEPS * (output_scale or 0))
            else:
                ok &= bool(torch.allclose(out, ref, atol=ATOL, rtol=RTOL))
    rule = (f"|diff| <= {ATOL} + max({QUANT_REL_TOL} x max|reference logit|, {QTOL_STEPS} x "
            f"logit int8 step {output_scale}) per step" if quantized
            else f"allclose(atol={ATOL}, rtol={RTOL})")
    return DecodeCheck(tokens, max_abs, max_rel, ATOL, QUANT_REL_TOL if quantized else RTOL,
                       rule, agree, ok)


# ------------------------------------------------------------------------------ timing
@dataclass(frozen=True)
class DecodeTiming:
    position: int
    threads: int
    p50_s: float
    p90_s: float
    wall_p50_s: float
    cpu_p50_s: float
    first_run_s: float
    load_s: float
    repeats: int
    clock: str
    loadavg_1m: float

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def time_decode(pte: bytes, context: int, *, threads: int = 1, warmup: int = 5,
                repeats: int = 30) -> DecodeTiming:
    """One token at position ``context - 1``, timed as ``host_runner.timed_runs`` times any
    program (threadpool set before loading, first run apart, warm-ups, repeats). The latency is
    the CPU-clock median with one thread (the executing thread's own time, which a loaded
    2-core machine does not inflate; BENCHMARKS.md, issue 5), the wall-clock median with more."""
    from codesign.measure.host_runner import check_counts, configure_threads, timed_runs
    from codesign.measure.records import summarize_samples

    check_counts(warmup, repeats)
    configure_threads(threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with quiet_stderr():
        runs = timed_runs(pte, decode_inputs(1, context - 1), "forward", warmup, repeats)
    clock = "cpu" if threads == 1 else "wall"
    chosen = summarize_samples(runs.cpu_s if clock == "cpu" else runs.wall_s)
    return DecodeTiming(context - 1, threads, chosen["p50_s"], chosen["p90_s"],
                        summarize_samples(runs.wall_s)["p50_s"],
                        summarize_samples(runs.cpu_s)["p50_s"], runs.first_run_s, runs.load_s,
                        repeats, clock, load)
