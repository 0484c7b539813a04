"""Which tile a GEMM op runs with: the search's hook into the tile tuner's cache.

On ``--device host`` with the ``codesign`` back-end, a GEMM op that leaves its tile free gets
the tile :mod:`codesign.kernels.tile_tuner` tuned for its shape (cache lookup only, never a
measurement); elsewhere, or before tuning, the back-end's default tile. It sits beside the cost
model that prices the tile (imports flow cost_models -> kernels).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

from codesign.cost_models.backends import BackendSpec, load_backend
from codesign.cost_models.ir import GEMM_KINDS, OpKind
from codesign.kernels.specs import DENSE, TileSpec
from codesign.kernels.tile_tuner import kernel_dtype, tuned_tile

if TYPE_CHECKING:
    from codesign.kernels.bench_harness import ResultCache


def resolve_tile(device, op, backend=None, *, cache: "ResultCache | None" = None
                 ) -> TileSpec | None:
    """The tile ``op`` runs with on ``device`` through ``backend`` (default: "codesign").

    * Not a tiled GEMM (depthwise, element-wise, ...): None (no tile applies).
    * The op chose a tile (``op.tile``): that tile.
    * Back-end with fixed tiles, a device whose tiles are not tuned here (``device.tunes_tiles``
      False: not this machine), or a sparse layer the back-end accelerates (its kernel blocks by
      format): the back-end default tile for the ISA.
    * This machine: the tuned tile from the tuner cache (lookup only), else the back-end default.
    """
    if op.kind not in GEMM_KINDS or op.kind is OpKind.DEPTHWISE_CONV2D:
        return None
    if op.tile is not None:
        return op.tile
    if not isinstance(backend, BackendSpec):
        backend = load_backend(backend or "codesign")
    default = backend.default_tile(device.cpu.isa)
    if not backend.tiles_choosable or not device.tunes_tiles or backend.accelerates(
            op.kind, op.sparsity):
        return default
    return tuned_tile((op.m, op.n, op.k), kernel_dtype(op.quant), DENSE, cache=cache) or default


def apply_tuned_tiles(ops: Sequence, device, backend=None, *,
                      cache: "ResultCache | None" = None) -> list:
    """``ops`` with every free GEMM tile (``op.tile is None``) set by :func:`resolve_tile`.

    On devices whose tiles are not tuned here (``device.tunes_tiles`` False) the list is returned
    unchanged (the analytic model already prices a free tile at the back-end default), so the
    hook costs nothing there.
    """
    if not device.tunes_tiles:
        return list(ops)
    out = []
    for op in ops:
        if op.tile is None:
            tile = resolve_tile(device, op, backend, cache=cache)
            if tile is not None:
                op = dataclasses.replace(op, tile=tile)
        out.append(op)
    return out


# ------------------------------------------------------------------------------ micro-kernels
