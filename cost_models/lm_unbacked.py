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
