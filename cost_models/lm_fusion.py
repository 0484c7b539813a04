"""Graph analysis of an exported causal-LM step for ``lm_lowering``: which nodes run in a norm
module's call (one ``NORM`` op), which form a rotary embedding (one ``ROPE`` op), the module a
node ran in, and casts that change nothing."""
from __future__ import annotations

import operator

import torch

aten = torch.ops.aten


def _float_out(node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        val = val[0] if val else None
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


_CASTS = {aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.to.device,
          aten.type_as.default}


def _is_alias_cast(node) -> bool:
    src = node.args[0] if node.args else None
    return node.target in _CASTS and (not isinstance(src, torch.fx.Node) or not _float_out(src)
                                      or src.meta["val"].dtype == node.meta["val"].dtype)


def _module_of(node) -> tuple[str, str]:
    """(path, class name) of the innermost module the node ran in."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return path, name.rsplit(".", 1)[-1]


def _module_base(node) -> str:
    """The module part of the names ``_Lowerer.name_for`` gives the node's ops."""
    stack = node.meta.get("nn_module_stack") or {}
    base = list(stack.values())[-1][0] if stack else node.name
    return base.replace("L['self'].", "").replace("L__self___", "") or node.name


def _norm_kind(cls: str) -> str | None:
    low = cls.lower()
    if "rmsnorm" in low or "rms_norm" in low:
        return "rms"
    if "layernorm" in low or "layer_norm" in low or low.endswith("norm"):
        return "layer" if "layer" in low else "rms"
    return None


class FusionAnalysis:
    """Mixin of ``_LMLowerer``: needs ``graph`` and ``live`` (the token-dependent nodes)."""

    def _norm_groups(self):
        """Contiguous runs of live float nodes in one norm module call: output node -> group."""
        out, inner = {}, set()
        run: list = []
        key = None

        def close():
            # a leading same-dtype cast is the norm's input itself (the residual reads it too)
            while run and (_is_alias_cast(run[0]) or not _float_out(run[0])):
                run.pop(0)
            if run:
                members = set(run)
                ends = [n for n in run if any(u not in members for u in n.users)]
                if len(ends) == 1:
                    out[ends[0]] = (key, run[:])
                    inner.update(n for n in run if n is not ends[0])
            run.clear()

        for node in self.graph.nodes:
            if node.op != "call_function" or node not in self.live:
                continue
            path, cls = _module_of(node)
            kind = _norm_kind(cls)
            this = (path, kind) if kind else None
            if this != key:
                close()
                key = this
            if this is not None:
                run.append(node)
        close()
        return out, inner

    def _rope_regions(self):
        """``x*cos + rotate_half(x)*sin``: the add -> (x, interior nodes)."""
        rope_of, inner = {}, set()

        def split_mul(mul):
            if mul.target is not aten.mul.Tensor or len(mul.args) < 2:
                return None
            a, b = mul.args[:2]
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
                return None
            if a in self.live and b not in self.live:
                return a
            if b in self.live and a not in self.live:
                return b
            return None

        for node in self.graph.nodes:
            if node.target is not aten.add.Tensor or node not in self.live:
                continue
            args = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
            if len(args) != 2:
                continue
            xs = [split_mul(a) for a in args]
            if None in xs:
                continue
            for first, second in ((0, 1), (1, 0)):
                x, y = xs[first], xs[second]
                region = self._path_between(x, y)
                if region is not None:
                    rope_of[node] = (x, args + list(region))
                    inner.update(args)
                    inner.update(region)
                    break
        return rope_of, inner

    def _path_between(self, x, y, depth: int = 8):
        """The live nodes from ``x`` (excluded) to ``y`` (included) if ``y`` derives from ``x``
        within ``depth`` steps through rotate-half ops, else None."""
        allowed = {aten.neg.default, aten.cat.default, aten.slice.Tensor, aten.stack.default,
                   aten.view.default, aten.reshape.default, aten.flatten.using_ints,
                   aten.unsqueeze.default, aten.select.int, aten.mul.Tensor,
                   aten.transpose.int, aten.clone.default, operator.getitem,
                   aten.split.Tensor, aten.chunk.default, aten.unbind.int}
        region, frontier = set(), [y]
        for _ in range(depth):
            nxt = []
            for n in frontier:
                if n is x:
                    continue
                if n.target not in allowed or n not in self.live:
                    return None
                region.add(n)
                nxt += [a for a in n.all_input_nodes if a in self.live]
            if not nxt:
                break
            frontier = nxt
        if any(n is not x for n in frontier) or x in region:
            return None
        return region
