"""numba-JIT CPU kernels for the layers the co-design search prices, plus their benchmarks.

Every public function validates its operands (dtype, shape, contiguity; ``ValueError`` with a
specific message) and calls a private numba kernel that takes only arrays and ints. numba
settings live in :mod:`codesign.kernels._numba_config`, which every kernel module imports before it
defines a kernel. Kernels compile on first use (about 2 s each) and are memoised per process;
nothing uses numba's on-disk cache.

Modules:
    specs           the shared vocabulary (QuantSpec, SparsitySpec, TileSpec); no numba
    gemm_f32        fp32 GEMM, BLIS blocking by :class:`codesign.kernels.specs.TileSpec`
    gemm_int8       int8 x int8/int4 -> int32 GEMM (vpmaddwd), requantisation to int8
    sparse_formats  N:M, BSR and CSR weight formats and pruning helpers
    sparse          sparse-weight GEMMs (2:4, BSR 4x4 / 1x4, CSR)
    conv            NHWC conv2d (im2col + GEMM) and direct depthwise conv
    conv_int8       the same two for int8 activations x int8/int4 weights, requantised to int8
    bench_harness   pyperf-style measurement, host metadata, on-disk result cache
    bench           ``run_kernel_benchmarks`` and ``measure_gemm``
    host_probe      peak FLOP/s, int8 op/s and STREAM bandwidth of this host

The names below are imported lazily (PEP 562), so ``import codesign.kernels.specs`` - done by the
cost models and search spaces - does not import numba or touch its configuration.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "conv": ("conv2d", "depthwise_conv2d", "depthwise_weights_from_oihw", "im2col",
             "weights_from_oihw"),
    "conv_int8": ("PackedConvWeights", "PackedDepthwiseInt4", "conv2d_int8",
                  "depthwise_conv2d_int8", "im2col_int8", "pack_conv_weights",
                  "pack_depthwise_weights_int4"),
    "gemm_f32": ("SUPPORTED_MICRO_TILES", "gemm_f32"),
    "gemm_int8": ("SUPPORTED_I4_MICRO_TILES", "SUPPORTED_I8_MICRO_TILES", "PackedIntWeights",
                  "gemm_i8_i32", "linear_i8", "pack_weights_int4", "pack_weights_int8",
                  "requantize_i32_i8"),
    "sparse": ("spmm_bsr", "spmm_csr", "spmm_nm"),
    "sparse_formats": ("BSRWeights", "CSRWeights", "NMWeights", "compress_nm", "prune_blocks",
                       "prune_unstructured", "to_bsr", "to_csr"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
