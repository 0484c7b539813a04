"""The decoder-only transformer space (on-device LLMs), priced in two phases.

Architecture: a byte-level embedding (tied to the LM head), ``layers`` pre-norm blocks (RMSNorm,
Q/K/V projections, RoPE, attention over a static KV cache with grouped-query heads, output
projection, residual; RMSNorm, SwiGLU FFN, residual), a final RMSNorm and the LM head. Each block
chooses the precision of its linears (weight bits {4 group-wise, 8, 16} x activation bits
{8, 16}, as the back-end runs them), the group size of 4-bit weights, and 2:4 sparsity of its FFN
weights where the back-end accelerates it. The config is ``configs/spaces/transformer.yaml``.

Two phases, two op lists (``to_ops(candidate, phase=...)``):

- ``decode``: one token at context L (the candidate's KV-cache length, its worst case): every
  linear is a GEMV (M = 1) that streams its weights, and attention reads the whole K and V caches.
  ``latency_s`` of a search over this space is this per-token latency.
- ``prefill``: P prompt tokens (``prompt_tokens``): GEMMs with M = P, attention over P positions,
  the LM head on the last token only (what generation needs). Its latency is the time to first
  token (``ttft_s``).

Attention's QK^T and PV are MATMUL ops whose K or V cache is their stationary operand, carried in
``weight_elems`` so the cost model streams it like weights (``cost_models/ir.py``), while
``model_bytes`` leaves it out: it is state allocated at load, counted by ``kv_cache_bytes``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from optuna.distributions import CategoricalDistribution

from codesign.cost_models.backends import BackendSpec, Precision
from codesign.cost_models.devices import CONFIG_DIR, SpecError, load_yaml
from codesign.cost_models.ir import Op, OpKind, model_bytes
from codesign.cost_models.lm_precision import drop_dynamic_dequantize
from codesign.cost_models.lowering import insert_precision_boundaries
from codesign.kernels.specs import DENSE, QuantSpec, TileSpec, two_four
from codesign.search_spaces.base import SearchSpace

PHASES = ("decode", "prefill")
SPARSITY_CHOICES = {"dense": DENSE, "2:4": two_four()}
WEIGHT_BITS = (4, 8, 16)
ACT_BITS = (8, 16)


@dataclass(frozen=True)
class TransformerConfig:
    name: str
    vocab: int
    layers: tuple[int, ...]
    d_model: tuple[int, ...]
    heads: tuple[int, ...]
    head_dim: int  # fixed across heads and widths (HAT); 0: d_model / heads
    gqa_ratios: tuple[int, ...]
    ffn_mults: tuple[int, ...]
    context: tuple[int, ...]
    prompt_tokens: int
    stream_bits: int
    precisions: Mapping[str, tuple[str, ...]]
    group_sizes: tuple[int, ...]
    ffn_sparsity: tuple[str, ...]
    tiles: Mapping[str, Mapping[str, TileSpec]]  # phase -> name -> tile
    seed: int
    sha256: str = ""


def load_transformer_config(path: Path | None = None) -> TransformerConfig:
    """Read and check the space YAML; SpecError names the file and field."""
    path = Path(path or CONFIG_DIR / "spaces" / "transformer.yaml")
    data, digest = load_yaml(path)
    try:
        cfg = TransformerConfig(
            name=data["name"], vocab=int(data["vocab"]), layers=tuple(data["layers"]),
            d_model=tuple(data["d_model"]), heads=tuple(data["heads"]),
            head_dim=int(data.get("head_dim", 0)), gqa_ratios=tuple(data["gqa_ratios"]), ffn_mults=tuple(data["ffn_mults"]),
            context=tuple(data["context"]), prompt_tokens=int(data["prompt_tokens"]),
            stream_bits=int(data["stream_bits"]),
            precisions={b: tuple(v) for b, v in data["precisions"].items()},
            group_sizes=tuple(data["group_sizes"]), ffn_sparsity=tuple(data["ffn_sparsity"]),
            tiles={phase: {k: TileSpec(*v) for k, v in (data["tiles"].get(phase) or {}).items()}
                   for phase in ("prefill", "decode")},
            seed=int(data["seed"]), sha256=digest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SpecError(f"{path}: malformed space config: {type(exc).__name__}: {exc}") from None
    _check_config(cfg, path)
    return cfg


def _check_config(cfg: TransformerConfig, path: Path) -> None:
    def bad(field: str, why: str) -> SpecError:
        return SpecError(f"{path}: field '{field}': {why}")

    for field in ("layers", "d_model", "heads", "gqa_ratios", "ffn_mults", "context",
                  "group_sizes"):
        values = getattr(cfg, field)
        if not values or not all(isinstance(v, int) and v > 0 for v in values):
            raise bad(field, f"expected a non-empty list of positive integers, got {list(values)}")
    lcm = math.lcm(*cfg.group_sizes)
    for d in cfg.d_model:
        if d % lcm:
            raise bad("d_model", f"{d} is not a multiple of every group size {list(cfg.group_sizes)}")
        for h in cfg.heads if not cfg.head_dim else ():
            if d % h or (d // h) % 2:
                raise bad("heads", f"d_model {d} / {h} heads must be an even head_dim (RoPE)")
    if cfg.head_dim:
        if cfg.head_dim < 0 or cfg.head_dim % 2:
            raise bad("head_dim", f"must be a positive even number (RoPE), got {cfg.head_dim}")
        for h in cfg.heads:  # the output projection reduces over heads x head_dim
            if (h * cfg.head_dim) % lcm:
                raise bad("heads", f"{h} heads x head_dim {cfg.head_dim} is not a multiple of "
                          f"every group size {list(cfg.group_sizes)}")
    for h in cfg.heads:
        for r in cfg.gqa_ratios:
            if h % r:
                raise bad("gqa_ratios", f"{r} does not divide {h} heads")
    if not 0 < cfg.prompt_tokens <= min(cfg.context):
        raise bad("prompt_tokens", f"must be in 1..{min(cfg.context)} (the shortest context)")
    if cfg.stream_bits not in (16, 32):
        raise bad("stream_bits", "valid: 16, 32")
    for backend, tokens in cfg.precisions.items():
        for token in tokens:
            try:
                p = Precision.parse(token)
            except ValueError as exc:
                raise bad(f"precisions.{backend}", str(exc)) from None
            if p.weight_bits not in WEIGHT_BITS or p.act_bits not in ACT_BITS:
                raise bad(f"precisions.{backend}", f"{token}: weight bits must be one of "
                          f"{list(WEIGHT_BITS)} and activation bits one of {list(ACT_BITS)}")
    unknown = [s for s in cfg.ffn_sparsity if s not in SPARSITY_CHOICES]
    if unknown or "dense" not in cfg.ffn_sparsity:
        raise bad("ffn_sparsity", f"must include dense; valid: {', '.join(SPARSITY_CHOICES)}")


# ------------------------------------------------------------------------------ candidate
@dataclass(frozen=True)
class TransformerArch:
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    ffn_mult: int
    context: int  # KV-cache length (tokens), allocated at load
    # width of one head; 0 (the default): d_model / heads. A space with a fixed head_dim gives
    # it, so Q and O are heads x head_dim wide, not d_model.
    head_dim: int = 0

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.d_model // self.heads)

    @property
    def q_dim(self) -> int:
        """Width of Q and of attention's output: heads x head_dim."""
        return self.heads * self.head_dim

    @property
    def d_ff(self) -> int:
        return self.ffn_mult * self.d_model


@dataclass(frozen=True)
class LayerChoice:
    """The precision of one block's linears (or the LM head's)."""

    precision: str  # e.g. "w4a8", "w4a8-dyn", "w16a16"
    group_size: int = 0  # 4-bit weights: elements per scale; 0 otherwise
    ffn_sparsity: str = "dense"


@dataclass(frozen=True)
class Candidate:
    """One point of the space; hashable. ``layers[i]`` is block i's choice."""

    arch: TransformerArch
    layers: tuple[LayerChoice, ...]
    head: LayerChoice
    prefill_tile: str = "default"
    decode_tile: str = "default"
    threads: int = 1

    def key(self) -> str:
        text = json.dumps([repr(self.arch), repr(self.layers), repr(self.head),
                           self.prefill_tile, self.decode_tile, self.threads])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def quant_spec(precision: str, group_size: int) -> QuantSpec:
    """The QuantSpec a decoder linear in ``precision`` (a back-end label, e.g. "w4a8-dyn") with
    ``group_size`` is priced at; the group applies to sub-byte weights only."""
    p = Precision.parse(precision)
    return QuantSpec(p.weight_bits, p.act_bits, group_size if p.weight_bits < 8 else 0,
                     p.dynamic_act)


class TransformerSpace(SearchSpace):
    """Decoder-only transformers bounded by ``backend``'s capability table."""

    def __init__(self, backend: BackendSpec, *, threads_choices: Sequence[int] = (1,),
                 config: TransformerConfig | None = None) -> None:
        self.config = cfg = config or load_transformer_config()
        self.backend = backend
        self.name = cfg.name
        self.threads_choices = tuple(sorted(set(threads_choices)))
        # the shapes a phase sees: (batch, tokens); decode's context varies per candidate
        self.deploy_input_shape = (1, 1)
        self.eval_input_shape = (1, cfg.prompt_tokens)
        offered = cfg.precisions.get(backend.name)
        if offered is None:
            raise SpecError(f"space {self.name} offers no precisions for back-end "
                            f"{backend.name!r}; valid: {', '.join(cfg.precisions)}")
        cap = backend.capability(OpKind.LINEAR)
        self.group_choices = tuple(g for g in cfg.group_sizes
                                   if cap is not None and g in cap.group_sizes)
        self.precisions = tuple(p for p in offered if self._runs(p))
        if not self.precisions:
            raise SpecError(f"back-end {backend.name} runs none of the precisions space "
                            f"{self.name} offers ({', '.join(offered)})")
        self.sparsity_choices = tuple(s for s in cfg.ffn_sparsity if s == "dense" or
                                      backend.accelerates(OpKind.LINEAR, SPARSITY_CHOICES[s]))
        self.tile_choices = {phase: ("default",) + (tuple(cfg.tiles[phase])
                                                    if backend.tiles_choosable else ())
                             for phase in PHASES}
        stream = QuantSpec(cfg.stream_bits, cfg.stream_bits)
        for kind in (OpKind.EMBEDDING, OpKind.NORM, OpKind.ROPE, OpKind.SOFTMAX, OpKind.MUL,
                     OpKind.ADD, OpKind.MATMUL):
            reason = backend.why_not(kind, stream, DENSE)
            if reason is not None:
                raise SpecError(f"space {self.name} needs {kind.value} at {cfg.stream_bits} bits "
                                f"on back-end {backend.name}: {reason}")

    def _runs(self, precision: str) -> bool:
        p = Precision.parse(precision)
        group = self.group_choices[0] if p.weight_bits < 8 and self.group_choices else 0
        if p.weight_bits < 8 and not group:
            return False
        return self.backend.why_not(OpKind.LINEAR, quant_spec(precision, group), DENSE) is None

    def kv_bits(self, choice: LayerChoice) -> int:
        """Bits per K/V cache element: the layer's activation bits where the back-end runs
        attention's matmuls at that precision, else the stream's."""
        bits = Precision.parse(choice.precision).act_bits
        if self.backend.why_not(OpKind.MATMUL, QuantSpec(bits, bits), DENSE) is None:
            return bits
        return self.config.stream_bits

    # ------------------------------------------------------------------ distributions
    def _layer_distributions(self, unit: str, params: Mapping[str, Any], *, ffn: bool):
        yield f"{unit}.prec", CategoricalDistribution(self.precisions)
        prec = params.get(f"{unit}.prec")
        if prec is not None and Precision.parse(prec).weight_bits < 8:
            yield f"{unit}.group", CategoricalDistribution(self.group_choices)
        if ffn and len(self.sparsity_choices) > 1:
            yield f"{unit}.ffn_sparsity", CategoricalDistribution(self.sparsity_choices)

    def iter_distributions(self, params: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        cfg = self.config
        if len(self.threads_choices) > 1:
            yield "threads", CategoricalDistribution(self.threads_choices)
        yield "layers", CategoricalDistribution(cfg.layers)
        yield "d_model", CategoricalDistribution(cfg.d_model)
        yield "heads", CategoricalDistribution(cfg.heads)
        yield "gqa_ratio", CategoricalDistribution(cfg.gqa_ratios)
        yield "ffn_mult", CategoricalDistribution(cfg.ffn_mults)
        yield "context", CategoricalDistribution(cfg.context)
        for i in range(params["layers"]):
            yield from self._layer_distributions(f"l{i}", params, ffn=True)
        yield from self._layer_distributions("head", params, ffn=False)
        for phase in PHASES:
            if len(self.tile_choices[phase]) > 1:
                yield f"{phase}_tile", CategoricalDistribution(self.tile_choices[phase])

    # ------------------------------------------------------------------ mapping
    def decode(self, params: Mapping[str, Any]) -> Candidate:
        self.check_params(params, allow_unknown=False)
        arch = TransformerArch(params["layers"], params["d_model"], params["heads"],
                               params["heads"] // params["gqa_ratio"], params["ffn_mult"],
                               params["context"], self.config.head_dim)

        def choice(unit: str) -> LayerChoice:
            return LayerChoice(params[f"{unit}.prec"], params.get(f"{unit}.group", 0),
                               params.get(f"{unit}.ffn_sparsity", "dense"))

        return Candidate(arch, tuple(choice(f"l{i}") for i in range(arch.layers)), choice("head"),
                         params.get("prefill_tile", "default"),
                         params.get("decode_tile", "default"),
                         params.get("threads", self.threads_choices[-1]))

    def encode(self, candidate: Candidate) -> dict[str, Any]:
        a = candidate.arch
        params: dict[str, Any] = {"threads": candidate.threads, "layers": a.layers,
                                  "d_model": a.d_model, "heads": a.heads,
                                  "gqa_ratio": a.heads // a.kv_heads, "ffn_mult": a.ffn_mult,
                                  "context": a.context}
        units = [(f"l{i}", c) for i, c in enumerate(candidate.layers)] + [("head", candidate.head)]
        for unit, c in units:
            params[f"{unit}.prec"] = c.precision
            params[f"{unit}.group"] = c.group_size
            params[f"{unit}.ffn_sparsity"] = c.ffn_sparsity
        params["prefill_tile"], params["decode_tile"] = candidate.prefill_tile, candidate.decode_tile
        active = self.active_names(params)
        return {k: v for k, v in params.items() if k in active}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prompt_tokens": self.config.prompt_tokens}

    # ------------------------------------------------------------------ lowering
    def to_ops(self, candidate: Candidate, phase: str = "decode", *,
               tokens: int | None = None) -> list[Op]:
        """The op list of one phase: ``decode`` (one token at the candidate's context length)
        or ``prefill`` (``tokens`` prompt tokens, default the config's ``prompt_tokens``)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; valid: {', '.join(PHASES)}")
        context = candidate.arch.context
        if phase == "decode":
            if tokens not in (None, 1):
                raise ValueError(f"decode runs one token at a time, got tokens={tokens}")
            t, attended = 1, context
        else:
            t = self.config.prompt_tokens if tokens is None else tokens
            if not 0 < t <= context:
                raise ValueError(f"prefill of {t} tokens does not fit the context of {context}")
            attended = t
        tile_name = candidate.decode_tile if phase == "decode" else candidate.prefill_tile
        tile = self.config.tiles[phase].get(tile_name)
        return drop_dynamic_dequantize(insert_precision_boundaries(
            self._lower(candidate, t, attended, tile, last_token_logits=phase == "prefill"),
            input_bits=self.config.stream_bits))

    def prefill_ops(self, candidate: Candidate) -> list[Op]:
        """The time-to-first-token op list (the search's hook for a second phase)."""
        return self.to_ops(candidate, "prefill")

    def kv_cache_bytes(self, candidate: Candidate, context: int | None = None) -> int:
        """Bytes of the K and V caches of every layer at ``context`` tokens (default: the
        candidate's own, which the runtime allocates at load)."""
        a = candidate.arch
        ctx = a.context if context is None else context
        return int(sum(2 * a.kv_heads * ctx * a.head_dim * self.kv_bits(c) // 8
                       for c in candidate.layers))

    def memory_bytes(self, candidate: Candidate) -> int:
        """What the deployed model holds in RAM from load on: weights (scales included) and
        the whole KV cache. Activations come on top (``peak_activation_bytes``)."""
        return model_bytes(self.to_ops(candidate, "decode")) + self.kv_cache_bytes(candidate)

    def _lower(self, candidate: Candidate, t: int, attended: int, tile: TileSpec | None, *,
               last_token_logits: bool) -> list[Op]:
        a, cfg = candidate.arch, self.config
        d, hd, kvh = a.d_model, a.head_dim, a.kv_heads
        stream = QuantSpec(cfg.stream_bits, cfg.stream_bits)
        ops: list[Op] = []

        def add(op: Op) -> str:
            ops.append(op)
            return op.name

        def linear(name, choice, rows, fin, fout, prev, *, sparse=False, fused=()):
            return add(Op(name, OpKind.LINEAR, (rows, fout), ((rows, fin),), m=rows, n=fout,
                          k=fin, flops=2.0 * rows * fout * fin, weight_elems=fin * fout,
                          out_channels=fout, quant=quant_spec(choice.precision, choice.group_size),
                          sparsity=SPARSITY_CHOICES[choice.ffn_sparsity] if sparse else DENSE,
                          tile=tile, fused=fused, inputs=(prev,)))

        def elementwise(name, kind, shape, inputs, flops_per_elem, in_shapes=None):
            n = math.prod(shape)
            return add(Op(name, kind, shape, in_shapes or tuple(shape for _ in inputs),
                          flops=flops_per_elem * n, quant=stream, inputs=tuple(inputs)))

        # tied table: the LM head's matrix is the one stored; the gather reads t rows of it
        x = add(Op("embed", OpKind.EMBEDDING, (t, d), ((t, d),), flops=0.0, quant=stream,
                   inputs=("",)))
        fused = (self.backend.fused_attention
                 if self.backend.capability(OpKind.ATTENTION) is not None else None)
        for i, c in enumerate(candidate.layers):
            u = f"l{i}"
            kv = QuantSpec(self.kv_bits(c), self.kv_bits(c))
            h = elementwise(f"{u}.attn_norm", OpKind.NORM, (t, d), (x,), 4.0)
            q = linear(f"{u}.q", c, t, d, a.q_dim, h)
            k = linear(f"{u}.k", c, t, d, kvh * hd, h)
            v = linear(f"{u}.v", c, t, d, kvh * hd, h)
            q = elementwise(f"{u}.rope_q", OpKind.ROPE, (t, a.heads, hd), (q,), 3.0)
            k = elementwise(f"{u}.rope_k", OpKind.ROPE, (t, kvh, hd), (k,), 3.0)
            if fused is not None:
                o = self._fused_attention(u, fused, a, t, attended, kv, (q, k, v), add)
            else:
                o = self._attention(u, a, t, attended, kv, tile, (q, k, v), add, elementwise)
            o = linear(f"{u}.o", c, t, a.q_dim, d, o)
            x = elementwise(f"{u}.attn_add", OpKind.ADD, (t, d), (x, o), 1.0)
            h = elementwise(f"{u}.ffn_norm", OpKind.NORM, (t, d), (x,), 4.0)
            g = linear(f"{u}.gate", c, t, d, a.d_ff, h, sparse=True, fused=("silu",))
            up = linear(f"{u}.up", c, t, d, a.d_ff, h, sparse=True)
            g = elementwise(f"{u}.glu", OpKind.MUL, (t, a.d_ff), (g, up), 1.0)
            f = linear(f"{u}.down", c, t, a.d_ff, d, g, sparse=True)
            x = elementwise(f"{u}.ffn_add", OpKind.ADD, (t, d), (x, f), 1.0)
        rows = 1 if last_token_logits else t
        x = elementwise("final_norm", OpKind.NORM, (rows, d), (x,), 4.0)
        linear("lm_head", candidate.head, rows, d, cfg.vocab, x)
        return ops

    @staticmethod
    def _attention(u: str, a, t: int, attended: int, kv: QuantSpec, tile, qkv, add,
                   elementwise) -> str:
        """Attention as separate kernels: the step's new K and V rows written into the caches
        (a copy of t rows each, at the cache's precision: the fused path's ``cache_updates``),
        then QK^T, softmax, PV; the K and V caches are the matmuls' streamed operands."""
        hd, kvh, ratio = a.head_dim, a.kv_heads, a.heads // a.kv_heads
        q, k, v = qkv
        k, v = (add(Op(f"{u}.{n}_cache_write", OpKind.LAYOUT, (t, kvh, hd), ((t, kvh, hd),),
                       quant=kv, inputs=(src,))) for n, src in (("k", k), ("v", v)))
        # scores: per K/V head, its `ratio` query heads x t tokens against the K cache
        s = add(Op(f"{u}.qk", OpKind.MATMUL, (t, a.heads, attended),
                   ((t, a.heads, hd), (t, kvh, hd)), m=t * ratio, n=attended, k=hd,
                   groups=kvh, flops=2.0 * t * a.heads * attended * hd,
                   weight_elems=kvh * attended * hd, quant=kv, tile=tile,
                   fused=("scale", "mask"), inputs=(q, k)))
        s = elementwise(f"{u}.softmax", OpKind.SOFTMAX, (t, a.heads, attended), (s,), 5.0)
        o = add(Op(f"{u}.pv", OpKind.MATMUL, (t, a.heads * hd),
                   ((t, a.heads, attended), (t, kvh, hd)), m=t * ratio, n=hd, k=attended, groups=kvh,
                   flops=2.0 * t * a.heads * attended * hd, weight_elems=kvh * attended * hd,
                   quant=kv, tile=tile, inputs=(s, v)))
        return o

    @staticmethod
    def _fused_attention(u: str, layout: Mapping[str, int], a, t: int, attended: int,
                         kv: QuantSpec, qkv: tuple[str, str, str], add) -> str:
        """Attention as a back-end with a fused decode-attention kernel runs it: ExecuTorch's
        Llama attention with its custom KV cache and SDPA ops (``codesign.export.transformer``).
        ``layout`` (the back-end file's ``fused_attention``) counts, per layer, the transposes
        the exported program runs: q/k/v to [heads, tokens] and back, the whole K and V caches
        ([context, kv_heads, head_dim]) to [kv_heads, context] and back, and the cache writes
        (``llama::update_cache``); then one ATTENTION op (``llama::custom_sdpa``): QK, softmax
        and PV of t tokens over ``attended`` cached positions, reading the caches' copies, its
        work split by query head (``groups``) across threads."""
        hd, kvh, ctx = a.head_dim, a.kv_heads, a.context
        q, k, v = qkv

        def move(name: str, shape: tuple[int, ...], prev: str) -> str:
            # a copy: reads and writes every element, no arithmetic
            return add(Op(name, OpKind.LAYOUT, shape, (shape,), flops=0.0, quant=kv,
                          inputs=(prev,)))

        for i in range(layout["query_transposes"]):
            q = move(f"{u}.q_layout{i}", (t, a.heads, hd), q)
        for i in range(layout["kv_transposes"] // 2):
            k = move(f"{u}.k_layout{i}", (t, kvh, hd), k)
            v = move(f"{u}.v_layout{i}", (t, kvh, hd), v)
        for i in range(layout["cache_updates"] // 2):
            k = move(f"{u}.k_cache_write{i}", (t, kvh, hd), k)
            v = move(f"{u}.v_cache_write{i}", (t, kvh, hd), v)
        for i in range(layout["cache_transposes"] // 2):
            k = move(f"{u}.k_cache_layout{i}", (ctx, kvh, hd), k)
            v = move(f"{u}.v_cache_layout{i}", (ctx, kvh, hd), v)
        return add(Op(f"{u}.sdpa", OpKind.ATTENTION, (t, a.heads * hd),
                      ((t, a.heads, hd), (attended, kvh, hd), (attended, kvh, hd)),
                      groups=a.heads, flops=t * a.heads * attended * (4.0 * hd + 5.0),
                      quant=kv, inputs=(q, k, v)))


def parameter_count(candidate: Candidate, vocab: int = 256) -> int:
    """Weights of the candidate (embedding tied to the LM head), dense."""
    a = candidate.arch
    per_layer = 2 * a.d_model * a.q_dim + 2 * a.d_model * a.kv_heads * a.head_dim \
        + 3 * a.d_model * a.d_ff
    return a.layers * per_layer + vocab * a.d_model
