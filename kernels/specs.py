"""Frozen specs describing how one layer is executed: precision, sparsity and kernel tile.

They are the vocabulary shared by every layer of the project: search spaces choose them, the
op-list IR carries them, cost models price them and the kernels run them. All are hashable so a
candidate built from them can key caches.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

WEIGHT_BITS = (2, 4, 8, 16, 32)
ACTIVATION_BITS = (8, 16, 32)


@dataclass(frozen=True)
class QuantSpec:
    """Precision of one layer.

    Attributes:
        weight_bits: storage bits per weight (32 = fp32, 16 = fp16, <= 8 = integer).
        act_bits: bits of the activations the layer reads and writes (32, 16 or 8).
        group_size: elements sharing one weight scale along the reduction dimension; 0 means
            per output channel (int8) or not quantized (fp16/fp32).
        dynamic_act: activations quantized at run time (torchao's "dynamic" int8 activations);
            static otherwise (PT2E with calibrated scales).
    """

    weight_bits: int = 32
    act_bits: int = 32
    group_size: int = 0
    dynamic_act: bool = False

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight_bits must be one of {WEIGHT_BITS}, got {self.weight_bits}")
        if self.act_bits not in ACTIVATION_BITS:
            raise ValueError(f"act_bits must be one of {ACTIVATION_BITS}, got {self.act_bits}")
        if self.group_size < 0:
            raise ValueError(f"group_size must be >= 0, got {self.group_size}")

    @property
    def is_float(self) -> bool:
        return self.weight_bits >= 16 and self.act_bits >= 16

    @property
    def compute_dtype(self) -> str:
        """The arithmetic the kernel runs: integer when both operands are integer, else float.

        Weight-only quantization (int weights, float activations) dequantizes into the float
        pipeline, so it computes at the activation precision.
        """
        if self.weight_bits <= 8 and self.act_bits <= 8:
            return "int8"
        # The float side decides: 8-bit activations next to float weights are dequantized.
        float_bits = self.act_bits if self.act_bits >= 16 else self.weight_bits
        return "fp16" if float_bits == 16 else "fp32"

    def scale_bytes_per_weight(self) -> float:
        """Bytes of scales and zero points per weight element (0 for float weights)."""
        if self.weight_bits >= 16:
            return 0.0
        if self.group_size:
            # one fp16 scale and one int8 zero point per group (torchao's group-wise layout)
            return 3.0 / self.group_size
        return 0.0  # per-channel scales are counted per output channel by the IR


FP32 = QuantSpec()


class SparsityPattern(str, enum.Enum):
    DENSE = "dense"
    N_M = "n:m"  # N non-zeros in every M consecutive weights along K (2:4)
    BLOCK = "block"  # block-sparse rows x cols blocks (BSR)
    UNSTRUCTURED = "unstructured"  # element-wise, stored as CSR


@dataclass(frozen=True)
class SparsitySpec:
    """Weight sparsity of one layer.

    Attributes:
        pattern: the structure of zeros.
        density: fraction of weights kept (1.0 = dense; 0.5 for 2:4).
        n, m: for N:M, n kept of every m.
        block_rows, block_cols: for BLOCK, the block shape.
    """

    pattern: SparsityPattern = SparsityPattern.DENSE
    density: float = 1.0
    n: int = 0
    m: int = 0
    block_rows: int = 0
    block_cols: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.pattern is SparsityPattern.DENSE and self.density != 1.0:
            raise ValueError("a dense layer has density 1.0")
        if self.pattern is SparsityPattern.N_M and (self.n <= 0 or self.m <= self.n):
            raise ValueError(f"N:M sparsity needs 0 < n < m, got {self.n}:{self.m}")
        if self.pattern is SparsityPattern.BLOCK and (self.block_rows <= 0 or self.block_cols <= 0):
            raise ValueError("block sparsity needs a positive block shape")

    @property
    def label(self) -> str:
        if self.pattern is SparsityPattern.DENSE:
            return "dense"
        if self.pattern is SparsityPattern.N_M:
            return f"{self.n}:{self.m}"
        if self.pattern is SparsityPattern.BLOCK:
            return f"block{self.block_rows}x{self.block_cols}@{1 - self.density:.0%}"
        return f"unstructured@{1 - self.density:.0%}"

    def index_bits_per_kept_weight(self) -> float:
        """Metadata bits stored per kept weight (indices / masks), the cost of the format."""
        if self.pattern is SparsityPattern.N_M:
            # 2:4 stores a 2-bit position per kept value (the Ampere / CUTLASS metadata layout)
            return float(max(1, (self.m - 1).bit_length()))
        if self.pattern is SparsityPattern.BLOCK:
            # one int32 column index per kept block (BSR), amortised over the block
            return 32.0 / (self.block_rows * self.block_cols)
        if self.pattern is SparsityPattern.UNSTRUCTURED:
            return 16.0  # CSR with int16 column indices (row pointers are negligible)
        return 0.0


DENSE = SparsitySpec()


def two_four() -> SparsitySpec:
    return SparsitySpec(SparsityPattern.N_M, 0.5, n=2, m=4)


def block(rows: int, cols: int, sparsity: float) -> SparsitySpec:
    return SparsitySpec(SparsityPattern.BLOCK, 1.0 - sparsity, block_rows=rows, block_cols=cols)


def unstructured(sparsity: float) -> SparsitySpec:
    return SparsitySpec(SparsityPattern.UNSTRUCTURED, 1.0 - sparsity)


@dataclass(frozen=True)
class TileSpec:
    """Blocking of a GEMM-shaped kernel (the BLIS/GotoBLAS decomposition).

    Attributes:
        mc, nc, kc: cache blocks of the M, N and K loops (kc x nc panel of B lives in L2/L3,
            mc x kc block of A in L2, kc x nr sliver of B in L1).
        mr, nr: the register micro-tile, mr x nr accumulators.
    """

    mc: int = 72
    nc: int = 1024
    kc: int = 512
    mr: int = 6
    nr: int = 16

    def __post_init__(self) -> None:
        for name in ("mc", "nc", "kc", "mr", "nr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"tile {name} must be positive, got {getattr(self, name)}")
        if self.mc % self.mr or self.nc % self.nr:
            raise ValueError(f"tile mc must be a multiple of mr and nc of nr, got {self}")

    @property
    def label(self) -> str:
        return f"{self.mc}x{self.nc}x{self.kc}/{self.mr}x{self.nr}"
