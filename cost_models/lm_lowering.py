"""Lower one generation step of a causal LM (``lm_export``) to the op IR, as ExecuTorch's LLM
export runs it, with the conventions of the decoder space (``search_spaces/transformer.py``):

- **token dependence**: only what depends on the token ids runs per step. Integer and boolean
  ops (positions, masks) and float ops that depend on positions alone (RoPE cos/sin tables,
  additive masks) are priced at zero: ExecuTorch's Llama export precomputes the RoPE tables and
  its ``custom_sdpa`` masks by position itself;
- **embedding**: a gather of ``tokens`` rows (``EMBEDDING``, no streamed weight: the table's
  stored bytes are counted by ``LoweredLM.embedding_elems`` where the table is not the LM head's);
- **norms**: the ops of one norm module call (RMSNorm's pow/mean/add/rsqrt/mul, LayerNorm) are one
  ``NORM`` op (4 FLOPs per element for RMSNorm, 5 for LayerNorm), as the decoder space prices it;
- **rotary embedding**: ``x * cos + rotate_half(x) * sin`` (with its slice/neg/cat) is one ``ROPE``
  op per rotated tensor (3 FLOPs per element);
- **attention** (``scaled_dot_product_attention`` over the cache): on a back-end with a fused
  decode-attention kernel (its ``fused_attention`` layout), the layout copies and cache writes that
  ExecuTorch's custom KV cache + ``custom_sdpa`` program runs, then one ``ATTENTION`` op; the
  graph's own transposes and cache writes in that attention module are then priced by that
  layout (FREE here). Elsewhere QK^T, softmax and PV (``MATMUL``s streaming the K and V caches as
  their stationary operand) and the cache writes as copies of the written rows. Either way the
  step attends to ``start + tokens`` positions (the custom kernel stops at the last filled one),
  not the whole allocated cache;
- **recurrent state** (linear attention, SSMs, short convolutions: ``lm_recurrent``): state
  buffers counted apart from the K/V cache, their rewrites as state copies at the stream's
  precision, the causal 1-D convolution as a depthwise one, the scan's matmuls at the stream's
  precision; data-dependent sizes (rows per expert) as a balanced router gives them
  (``lm_unbacked``). Norm / RoPE grouping: ``lm_fusion``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from codesign.cost_models.ir import Op, OpKind, PRICED_FREE_KINDS
from codesign.cost_models.lm_export import PhaseShape
from codesign.cost_models.lm_fusion import (FusionAnalysis, _float_out, _is_alias_cast,
                                            _module_base, _module_of, _CASTS)
from codesign.cost_models.lowering import _Lowerer
from codesign.cost_models.lowering_rules import LoweringError, matmul_rule, node_shape as _shape
from codesign.cost_models.lm_cache import KV_PREFIXES, buffer_inputs as _state_inputs
from codesign.cost_models.lm_recurrent import STATE_WRITE, conv1d, is_conv1d, recurrent_matmuls
from codesign.cost_models.lm_unbacked import balance_routed_rows, unrouted_experts

aten = torch.ops.aten

_SDPA = {aten.scaled_dot_product_attention.default}
_CACHE_WRITES = {aten.index_copy_.default: 3, aten.index_copy.default: 3,
                 aten.index_put_.default: 2, aten.index_put.default: 2,
                 aten.slice_scatter.default: 1, aten.copy_.default: 1}  # -> the written operand
_TRANSPOSES = {aten.transpose.int, aten.permute.default, aten.t.default}
_VIEWS = {aten.slice.Tensor, aten.select.int, aten.split.Tensor, aten.split_with_sizes.default,
          aten.chunk.default, aten.narrow.default, aten.unbind.int, aten.view.default,
          aten.reshape.default, aten.expand.default, aten.unsqueeze.default, aten.squeeze.dim,
          aten.squeeze.dims, aten.squeeze.default, aten._unsafe_view.default, aten.clone.default,
          aten.contiguous.default, aten.alias.default, aten.flatten.using_ints,
          aten.unflatten.int, aten.dropout.default, aten.detach.default, aten.view_as.default,
          aten.expand_as.default, aten.lift_fresh_copy.default, aten._unsafe_view.default,
          aten.view_as_real.default, aten.view_as_complex.default, aten.tensor_split.indices,
          aten.tensor_split.sections}
_UNARY = {aten.square.default, aten.neg.default, aten.rsqrt.default, aten.sqrt.default,
          aten.exp.default, aten.log.default, aten.cos.default, aten.sin.default, aten.erf.default,
          aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.reciprocal.default,
          aten.abs.default, aten.where.self, aten.masked_fill.Scalar, aten.masked_fill.Tensor,
          aten.rsub.Scalar, aten.softplus.default, aten.sub.Scalar, aten.add.Scalar,
          aten.mul.Scalar, aten.div.Scalar, aten.div.Tensor_mode, aten.maximum.default,
          aten.minimum.default, aten.sign.default, aten.log1p.default, aten.gelu_.default,
          aten.tanh_.default, aten.exp_.default, aten.div_.Tensor, aten.sub_.Tensor}
_UNARY |= {aten.log_sigmoid.default, aten.logaddexp.default, aten.min.other, aten.max.other, aten.clamp_min.default, aten.clamp_max.default,
           aten.sigmoid.default, aten.relu.default, aten.floor_divide.default,
           aten.expm1.default, aten.clamp.Tensor, aten.scatter.value, aten.scatter.src,
           aten.scatter_.value, aten.scatter_.src, aten.scatter_add.default,
           aten.scatter_add_.default, aten.index_add.default, aten.index_add_.default}
# a new tensor shaped like a live one: an allocation the memory planner does, no kernel
_ALLOCATIONS = {aten.zeros_like.default, aten.ones_like.default, aten.full_like.default,
                aten.empty_like.default, aten.new_zeros.default, aten.new_ones.default,
                aten.new_full.default, aten.new_empty.default}
# reductions and selections reading their input once (an MoE router's top-k too)
_REDUCTIONS = {aten.sum.dim_IntList, aten.amax.default, aten.var_mean.correction,
               aten.var.correction, aten.std.correction, aten.topk.default, aten.max.dim,
               aten.min.dim, aten.logsumexp.default, aten.amin.default, aten.argmax.default,
               aten.cumsum.default, aten.sort.default, aten.histc.default, aten.bincount.default,
               aten.std.dim, aten.var.dim}
_NORM_FLOPS = {"rms": 4.0, "layer": 5.0}
_GROUPED_MM = {"transformers.grouped_mm_fallback.default", "aten._grouped_mm.default"}
CACHE_WRITE = "cache_write"  # the ``source`` of an op storing the step's K or V rows


@dataclass(frozen=True)
class LoweredLM:
    """One step's ops (fp32, before ``lm_precision``) and what the graph told about the model."""

    ops: list[Op]
    shape: PhaseShape
    kv_cache_elems: int  # every K and V cache buffer the step updates, in elements
    embedding_elems: int  # token-embedding tables not shared with a linear (stored apart)
    tied: bool  # the token table is the LM head's matrix (stored once)
    idle_expert_elems: int = 0  # MoE experts' weights the step does not read (stored only)
    state_elems: int = 0  # recurrent / conv state buffers (``lm_recurrent``), not K/V


class _LMLowerer(FusionAnalysis, _Lowerer):
    def __init__(self, ep: torch.export.ExportedProgram, shape: PhaseShape,
                 fused_attention: Mapping[str, int] | None) -> None:
        super().__init__(ep)
        self.shape, self.layout = shape, fused_attention
        sig = ep.graph_signature
        self.mutated = set((getattr(sig, "buffers_to_mutate", {}) or {}).values())
        self.buffer_of = dict(sig.inputs_to_buffers)
        self.state_inputs = _state_inputs(ep)
        self.state_modules = {_module_base(n) for n in self.graph.nodes  # read a state
                              if any(a.name in self.state_inputs for a in n.all_input_nodes)}
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        user = [n for n in placeholders if n.name in set(sig.user_inputs)]
        self.tokens = user[0] if user else None
        self.live = self._token_dependent()
        self.attention_modules = {_module_of(n)[0] for n in self.graph.nodes if n.target in _SDPA}
        self.norm_out, self.norm_inner = self._norm_groups()
        self.rope_of, self.rope_inner = self._rope_regions()
        self.embedding_tables: list[torch.fx.Node] = []
        self.idle_expert_elems = 0
        self.linear_weights: set[str] = set()

    # ------------------------------------------------------------------ graph analysis
    def _token_dependent(self) -> set:
        live = set()
        if self.tokens is None:
            return live
        live.add(self.tokens)
        for node in self.graph.nodes:
            if node.op == "call_function" and any(a in live for a in node.all_input_nodes):
                live.add(node)
        return live

    # ------------------------------------------------------------------ lowering
    def lower(self, node: torch.fx.Node) -> None:
        target = node.target
        if node not in self.live:
            self.value_of[node] = ""  # positions, masks, RoPE tables: precomputed, no kernel
            return
        if not _float_out(node) and target is not operator.getitem \
                and target not in _CACHE_WRITES:
            self.value_of[node] = ""  # integer/boolean bookkeeping
            return
        if node in self.norm_inner or node in self.rope_inner:
            return  # part of the fused op emitted at its output
        if node in self.norm_out:
            return self._norm(node)
        if node in self.rope_of:
            return self._rope(node)
        if target in _SDPA:
            return self._attention(node)
        if target in _CACHE_WRITES:
            return self._cache_write(node)
        if target in _TRANSPOSES and _module_of(node)[0] in self.attention_modules:
            # heads <-> tokens: the fused layout prices the copies its program runs; separate
            # matmuls read the heads strided (``groups``), as the decoder space prices them
            return self._free(node)
        if target in _VIEWS or target in _ALLOCATIONS:
            return self._free(node)
        if target is aten.embedding.default:
            return self._embedding(node)
        if target in _CASTS:
            return self._free(node) if _is_alias_cast(node) else self.simple(
                node, OpKind.ELEMENTWISE)
        if target in _UNARY:
            return self.simple(node, OpKind.ELEMENTWISE)
        if target in _REDUCTIONS:
            return self.simple(node, OpKind.GLOBAL_POOL, from_input=True)
        if target is aten.rms_norm.default:
            return self.simple(node, OpKind.NORM, _NORM_FLOPS["rms"])
        if target in (aten.stack.default, aten.concat.default, aten.concatenate.default):
            return self.simple(node, OpKind.CONCAT, 0.0)
        if target in (aten.repeat.default, aten.repeat_interleave.self_int,
                      aten.index_select.default, aten.gather.default, aten.index.Tensor,
                      aten.roll.default, aten.flip.default):
            return self.simple(node, OpKind.LAYOUT, 0.0)
        if str(target) in _GROUPED_MM:
            return self._grouped_mm(node)
        if is_conv1d(node):
            return conv1d(self, node)
        if target is aten.baddbmm.default:
            return matmul_rule(self, node, node.args[1], node.args[2])
        if target is aten.linear.default and isinstance(node.args[1], torch.fx.Node):
            self.linear_weights.add(node.args[1].name)
        if target is aten.addmm.default and isinstance(node.args[2], torch.fx.Node):
            self.linear_weights.add(node.args[2].name)
        super().lower(node)

    def _grouped_mm(self, node) -> None:
        """An MoE layer's experts as one grouped GEMM: rows sorted by expert, weights
        (experts, K, N). Each row goes to one expert, so at most ``rows`` experts' weights are
        read (decode: its top-k); the others are stored, not streamed (``idle_expert_elems``)."""
        x, w = node.args[0], node.args[1]
        (rows, k), (experts, _, n) = _shape(x)[-2:], _shape(w)
        touched = min(experts, rows)
        self.idle_expert_elems += (experts - touched) * k * n
        self.emit(node, Op(self.name_for(node), OpKind.LINEAR, _shape(node), ((rows, k),),
                           m=rows, n=n, k=k, flops=2.0 * rows * n * k,
                           weight_elems=touched * k * n, out_channels=experts * n,
                           inputs=(self.producer(x),), source=str(node.target)))

    def _free(self, node) -> None:
        src = node.args[0] if node.args else None
        shape = _shape(node)
        self.emit(node, Op(self.name_for(node), OpKind.FREE, shape,
                           (_shape(src),) if isinstance(src, torch.fx.Node) else (),
                           inputs=(self.producer(src),), source=str(node.target)))

    def _external(self, members: Sequence) -> list:
        inside = set(members)
        seen, out = set(), []
        for n in members:
            for a in n.all_input_nodes:
                if a not in inside and a in self.live and _float_out(a) and a not in seen:
                    seen.add(a)
                    out.append(a)
        return out

    def _norm(self, node) -> None:
        (path, kind), members = self.norm_out[node]
        ins = self._external(members)
        shape = _shape(node)
        self.emit(node, Op(self.name_for(node), OpKind.NORM, shape,
                           tuple(_shape(x) for x in ins), flops=_NORM_FLOPS[kind] * _numel(shape),
                           inputs=tuple(self.producer(x) for x in ins), source=f"{kind}_norm"))

    def _rope(self, node) -> None:
        x, _ = self.rope_of[node]
        shape = _shape(node)
        self.emit(node, Op(self.name_for(node) + ".rope", OpKind.ROPE, shape, (_shape(x),),
                           flops=3.0 * _numel(shape), inputs=(self.producer(x),),
                           source="rotary_embedding"))

    def _embedding(self, node) -> None:
        table, idx = node.args[0], node.args[1]
        shape = _shape(node)
        self.embedding_tables.append(table)
        rows = (_numel(shape[:-1]), shape[-1])
        self.emit(node, Op(self.name_for(node), OpKind.EMBEDDING, shape, (rows,),
                           inputs=(self.producer(idx),), source=str(node.target)))

    def _written(self, node):
        src = node.args[_CACHE_WRITES[node.target]] if len(node.args) > _CACHE_WRITES[
            node.target] else None
        return src if isinstance(src, torch.fx.Node) else None

    def _cache_write(self, node) -> None:
        src = self._written(node)
        base = self._base(node)
        if base is not None and self.is_state(base):
            self.state_modules.add(_module_base(node))
        if base is not None and self.is_state(base) and src is not None:
            shape = _shape(src)  # a recurrent state rewritten: its real bytes, stream precision
            return self.emit(node, Op(self.name_for(node), OpKind.LAYOUT, shape, (shape,),
                                      inputs=(self.producer(src),), source=STATE_WRITE))
        if self.layout is not None and _module_of(node)[0] in self.attention_modules:
            # priced by the fused layout's cache writes at the attention op
            self.value_of[node] = self.producer(src) if src is not None else ""
            return
        if src is None:
            return self._free(node)
        shape = _shape(src)
        self.emit(node, Op(self.name_for(node), OpKind.LAYOUT, shape, (shape,),
                           inputs=(self.producer(src),), source=CACHE_WRITE))

    def _kv_heads(self, k) -> int:
        """K/V heads of the cache behind ``k`` (GQA expands them with views before SDPA)."""
        heads = _shape(k)[1]
        node = k
        for _ in range(8):
            if not isinstance(node, torch.fx.Node) or not node.args:
                break
            shape = _shape(node) if node.meta.get("val") is not None else ()
            if len(shape) == 4:
                heads = min(heads, shape[1])
            node = node.args[0] if isinstance(node.args[0], torch.fx.Node) else None
        return heads

    def _attention(self, node) -> None:
        q, k, v = node.args[:3]
        qs, ks = _shape(q), _shape(k)
        if len(qs) != 4 or len(ks) != 4:
            raise LoweringError(f"{node.name}: attention over {qs} x {ks}: expected 4-D "
                                "[batch, heads, tokens, head_dim] operands")
        heads, t, hd = qs[1] * qs[0], qs[2], qs[3]
        kvh = self._kv_heads(k)
        attended = min(self.shape.attended, ks[2])
        ctx = ks[2]
        base = self.name_for(node).rsplit(".", 1)[0] if "." in self.name_for(node) else node.name
        names = [self.producer(q), self.producer(k), self.producer(v)]
        out_shape = (t, heads * hd)

        def add(op: Op) -> str:
            self.ops.append(op)
            self.index[op.name] = len(self.ops) - 1
            return op.name

        if self.layout is not None:
            def move(name, shape, prev):
                return add(Op(name, OpKind.LAYOUT, shape, (shape,), inputs=(prev,)))

            qn, kn, vn = names
            for i in range(self.layout["query_transposes"]):
                qn = move(f"{base}.q_layout{i}", (t, heads, hd), qn)
            for i in range(self.layout["kv_transposes"] // 2):
                kn = move(f"{base}.k_layout{i}", (t, kvh, hd), kn)
                vn = move(f"{base}.v_layout{i}", (t, kvh, hd), vn)
            for i in range(self.layout["cache_updates"] // 2):
                kn = move(f"{base}.k_cache_write{i}", (t, kvh, hd), kn)
                vn = move(f"{base}.v_cache_write{i}", (t, kvh, hd), vn)
            for i in range(self.layout["cache_transposes"] // 2):
                kn = move(f"{base}.k_cache_layout{i}", (ctx, kvh, hd), kn)
                vn = move(f"{base}.v_cache_layout{i}", (ctx, kvh, hd), vn)
            name = add(Op(f"{base}.sdpa", OpKind.ATTENTION, out_shape,
                          ((t, heads, hd), (attended, kvh, hd), (attended, kvh, hd)),
                          groups=heads, flops=t * heads * attended * (4.0 * hd + 5.0),
                          inputs=(qn, kn, vn), source=str(node.target)))
        else:
            ratio = max(heads // kvh, 1)
            s = add(Op(f"{base}.qk", OpKind.MATMUL, (t, heads, attended),
                       ((t, heads, hd), (t, kvh, hd)), m=t * ratio, n=attended, k=hd, groups=kvh,
                       flops=2.0 * t * heads * attended * hd, weight_elems=kvh * attended * hd,
                       fused=("scale", "mask"), inputs=(names[0], names[1]),
                       source=str(node.target)))
            s = add(Op(f"{base}.softmax", OpKind.SOFTMAX, (t, heads, attended),
                       ((t, heads, attended),), flops=5.0 * t * heads * attended, inputs=(s,)))
            name = add(Op(f"{base}.pv", OpKind.MATMUL, out_shape,
                          ((t, heads, attended), (t, kvh, hd)), m=t * ratio, n=hd, k=attended,
                          groups=kvh, flops=2.0 * t * heads * attended * hd,
                          weight_elems=kvh * attended * hd, inputs=(s, names[2]),
                          source=str(node.target)))
        self.value_of[node] = name

    # ------------------------------------------------------------------ summary
    def _base(self, node):
        """The placeholder (buffer) an in-place write's destination views, or None."""
        base = node.args[0] if node.args else None
        for _ in range(8):  # through views of it only (an op's output is a new tensor)
            if not isinstance(base, torch.fx.Node) or base.op == "placeholder" or not (
                    base.target in _VIEWS or base.target in _TRANSPOSES):
                break
            base = base.args[0] if base.args else None
        return base if isinstance(base, torch.fx.Node) and base.op == "placeholder" else None

    def is_state(self, placeholder) -> bool:
        """A recurrent / conv state buffer (``lm_cache``), not a K/V cache."""
        return placeholder.name in self.state_inputs

    def cache_elems(self) -> tuple[int, int]:
        """Elements of the float buffers the step writes K/V rows into (the caches; in-place
        writes are not in ``buffers_to_mutate`` in torch.export's training IR), and of the
        recurrent state buffers it rewrites."""
        caches = {}
        for node in self.graph.nodes:
            if node.target not in _CACHE_WRITES or node not in self.live:
                continue
            base = self._base(node)
            if base is not None and base.name in self.params and _float_out(base):
                caches[base.name] = base
        for node in self.graph.nodes:  # functionalized graphs say it in the signature
            if node.op == "placeholder" and self.buffer_of.get(node.name) in self.mutated \
                    and _float_out(node) and len(_shape(node)) >= 3:
                caches[node.name] = node
        # a dynamic cache (appended by concatenation) and state an own cache object reassigns
        kv_inputs = _state_inputs(self.ep, KV_PREFIXES) | self.state_inputs
        for node in self.graph.nodes:
            if node.op == "placeholder" and node.name in kv_inputs and _float_out(node) \
                    and node.users:  # the buffer itself, where the graph reads its lifted twin
                caches[node.name] = node
        kv = sum(_numel(_shape(n)) for n in caches.values() if not self.is_state(n))
        state = sum(_numel(_shape(n)) for n in caches.values() if self.is_state(n))
        return kv, state


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def lower_step(ep: torch.export.ExportedProgram, shape: PhaseShape,
               fused_attention: Mapping[str, int] | None = None) -> LoweredLM:
    """The fp32 op list of one exported step (``lm_export.export_step``).

    ``fused_attention``: the back-end's decode-attention layout (``BackendSpec.fused_attention``)
    where it has a fused attention kernel, else None (separate QK^T / softmax / PV).

    Raises:
        LoweringError: an op without a rule (named), or a graph with no kernel.
    """
    balance_routed_rows(ep)  # rows per expert of a data-dependent split (lm_unbacked)
    lowerer = _LMLowerer(ep, shape, fused_attention)
    ops = lowerer.run()
    ops = recurrent_matmuls(ops, lowerer.state_modules)
    ops, idle = unrouted_experts(ops)
    lowerer.idle_expert_elems += idle
    if not any(op.kind not in PRICED_FREE_KINDS for op in ops):
        raise LoweringError("the model has no op that runs a kernel")
    tables = {t.name for t in lowerer.embedding_tables if isinstance(t, torch.fx.Node)}
    tied = bool(tables) and tables <= lowerer.linear_weights
    untied = [t for t in lowerer.embedding_tables
              if isinstance(t, torch.fx.Node) and t.name not in lowerer.linear_weights]
    kv, state = lowerer.cache_elems()
    return LoweredLM(ops, shape, kv,
                     sum(_numel(_shape(t)) for t in {t.name: t for t in untied}.values()), tied,
                     lowerer.idle_expert_elems, state)
