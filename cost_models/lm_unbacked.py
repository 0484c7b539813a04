"""Data-dependent values in an exported causal-LM step (``lm_export``).

A step is exported at one position of one generation (``PhaseShape``: ``tokens`` new tokens at
``start``). Some models read that position back out of a tensor with ``.item()`` (the cache's
filled length turned into an ``arange``, a learned position table indexed from it: trocr,
roformer, mvp, cpmant, git, prophetnet), which ``torch.export`` cannot trace (an unbacked
value, or a guard on one). For those the exporter's last attempt **pins the cache's filled
length to the step's start** (a Python int, as the step's shape already fixes it): the model
then builds the same positions from a known value. The ops and their shapes are those of the
step at that position; only the position arithmetic is folded, as ExecuTorch's export
precomputes it.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def pinned_length(step, start: int):
    """While active, every layer of ``step``'s static cache reports ``start`` filled positions
    (``get_seq_length``) as a Python int instead of its counter tensor."""
    layers = list(getattr(getattr(step, "static_cache", None), "layers", []) or [])
    saved = [layer.__dict__.get("get_seq_length") for layer in layers]
    for layer in layers:
        layer.get_seq_length = (lambda *_, _s=start: _s)
    try:
        yield
    finally:
        for layer, old in zip(layers, saved):
            if old is None:
                del layer.get_seq_length
            else:
                layer.get_seq_length = old


def balance_routed_rows(ep) -> dict:
    """Values for the data-dependent sizes of a split by rows per expert (jetmoe's MoE:
    ``inputs.split(expert_size)``, the sizes read from the router with ``.tolist()``). Their
    sum is the split's known row count R (tokens x top-k); routed evenly, as a balanced router
    does, ``min(E, R)`` experts get R / min(E, R) rows each and the others none (a decode's
    top-k reaches k experts, the ``_grouped_mm`` rule's count). Stored on the graph for the
    lowering (``lowering_rules.node_shape``); returns them."""
    import torch

    values = {}
    for node in ep.graph.nodes:
        if node.target is not torch.ops.aten.split_with_sizes.default:
            continue
        sizes = node.args[1]
        syms = []
        for size in sizes:
            val = size.meta.get("val") if isinstance(size, torch.fx.Node) else size
            expr = getattr(getattr(val, "node", None), "expr", None)
            syms.append(expr if expr is not None and expr.is_Symbol else None)
        if not syms or any(s is None for s in syms):
            continue
        dim = node.args[2] if len(node.args) > 2 else 0
        rows = node.args[0].meta["val"].shape[dim]
        try:
            rows = int(rows)
        except Exception:  # noqa: BLE001 - the rows themselves data-dependent: leave it
            continue
        touched = max(min(len(syms), rows), 1)
        for i, sym in enumerate(syms):
            share = rows // touched + (1 if i < rows % touched else 0)
            values.setdefault(sym, share if i < touched else 0)
    for node in ep.graph.nodes:  # a boolean mask over a batch of one: that row (xmod's
        # adapter of the one language the generation uses)
        if node.target is not torch.ops.aten.index.Tensor:
            continue
        out = node.meta.get("val")
        src = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        expr = getattr(getattr(out.shape[0], "node", None), "expr", None) \
            if isinstance(out, torch.Tensor) and out.dim() else None
        if expr is not None and expr.is_Symbol and src is not None and src.dim() \
                and isinstance(src.shape[0], int) and src.shape[0] == 1:
            values.setdefault(expr, 1)
    ep.graph.unbacked_values = values
    return values


def unrouted_experts(ops):
    """An expert no row was routed to (``balance_routed_rows``'s zero rows): its kernel call
    returns at once, so it is priced as no kernel (FREE) and its weights as stored, not
    streamed. Returns the ops and those weights' elements (bias included, stored at the
    weights' precision)."""
    from dataclasses import replace

    from codesign.cost_models.ir import OpKind

    idle, out = 0, []
    for op in ops:
        if op.kind is OpKind.LINEAR and op.m == 0:
            idle += op.weight_elems + op.out_channels  # its bias stored alike
            op = replace(op, kind=OpKind.FREE, weight_elems=0, flops=0.0, m=0, n=0, k=0)
        out.append(op)
    return out, idle
