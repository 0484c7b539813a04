"""Operand checks shared by the kernel wrappers.

The compiled kernels index their arrays without bounds checks, so every public wrapper
validates dtype, rank, contiguity and shapes here first, with the same one-line messages.
"""
from __future__ import annotations

import numpy as np

from .specs import TileSpec


def check_array(name: str, x: object, dtype, ndim: int) -> np.ndarray:
    """``x`` if it is a C-contiguous ``ndim``-D numpy array of ``dtype``, else ValueError."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return x


def check_tile_type(tile: object) -> TileSpec:
    if not isinstance(tile, TileSpec):
        raise ValueError("tile must be a codesign.kernels.specs.TileSpec, "
                         f"got {type(tile).__name__}")
    return tile


def check_int_tile(tile: object, packed_nr: int) -> TileSpec:
    """A tile the integer GEMM can run over weights packed in ``packed_nr``-wide slivers."""
    check_tile_type(tile)
    if tile.kc % 2:
        raise ValueError(f"integer GEMM needs an even kc (whole k-pairs), got kc={tile.kc}")
    if tile.nr != packed_nr:
        raise ValueError(f"tile nr={tile.nr} differs from the weights' packing nr={packed_nr}")
    return tile


def result_matrix(out: np.ndarray | None, shape: tuple[int, int], dtype,
                  inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A new ``shape`` array of ``dtype``, or ``out`` checked to be one that overlaps none of
    ``inputs`` (name -> array; the kernels read them while they write ``out``)."""
    if out is None:
        return np.empty(shape, dtype)
    check_array("out", out, dtype, 2)
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if inputs and any(np.may_share_memory(out, x) for x in inputs.values()):
        raise ValueError(f"out must not overlap {' or '.join(inputs)}")
    return out


def check_stride(stride: object) -> int:
    """A convolution stride: a positive int (not a bool)."""
    if (not isinstance(stride, (int, np.integer)) or isinstance(stride, bool)
            or stride <= 0):
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    return int(stride)
