"""Compressed sparse weight formats for ``Y = X @ W`` with W (K x N) the sparse operand.

Every format is organised by *output channel* n (a column of W, a row of PyTorch's
``weight[out, in]``), the way pruned linear / 1x1-conv weights are stored:

* :class:`NMWeights` - N:M structured (2:4): in each group of m consecutive k of a channel only
  n are kept; values are stored densely (``values[n_out, T]``, ``T = n * ceil(K/m)``) and each
  kept value's position inside its group is a ``log2(m)``-bit index (2 bits for 2:4, the
  Ampere/CUTLASS metadata), packed little-endian into ``meta`` bytes per channel.
* :class:`BSRWeights` - block-sparse rows of W^T: blocks of ``rows`` channels x ``cols`` k,
  one int32 block-column index per kept block.
* :class:`CSRWeights` - unstructured, CSR over W^T with int16 column (k) indices.

Also the pruning helpers that produce them from dense weights (magnitude based), used by the
tests and the benchmarks, and ``to_dense`` inverses for checking.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check_array(name: str, a: object, dtype, ndim: int) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D {np.dtype(dtype).name} array")
    if not a.flags.c_contiguous or not a.flags.aligned:
        raise ValueError(f"{name} must be C-contiguous and aligned")


def _check_compressed(indptr, indices, index_dtype, rows: int, nnz: int, cols: int) -> None:
    """CSR/BSR structure: row pointers 0..nnz non-decreasing, column indices in [0, cols)."""
    _check_array("indptr", indptr, np.int32, 1)
    _check_array("indices", indices, index_dtype, 1)
    if indptr.shape[0] != rows + 1 or indices.shape[0] != nnz:
        raise ValueError(f"indptr must have {rows + 1} entries and indices {nnz}, got "
                         f"{indptr.shape[0]} and {indices.shape[0]}")
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise ValueError("indptr must rise from 0 to the number of stored entries")
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= cols):
        raise ValueError(f"indices must lie in [0, {cols})")


def _check_dense(w: object) -> np.ndarray:
    if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 2:
        raise ValueError("w must be a 2-D float32 numpy array (K, N)")
    return np.ascontiguousarray(w)


# ------------------------------------------------------------------------------------ N:M ---
#: Metadata is read by the kernels one 64-bit little-endian word at a time.
META_WORD_BITS = 64


def nm_code_bits(m: int) -> int:
    """Stored bits per kept-value position: log2(m) (2 for 2:4; m is a power of two)."""
    return (m - 1).bit_length()


@dataclass(frozen=True, eq=False)
class NMWeights:
    """N:M compressed weights (see module docstring).

    Attributes:
        values: (N_out, Tp) float32 kept values of each channel in increasing k order; the
            T = n * ceil(K/m) real entries are followed by zeros up to Tp, a multiple of the
            ``64 / bits`` codes in one metadata word, so kernels decode whole words.
        meta: (N_out, Tp * bits / 8) uint8: entry t's position inside its group of m, ``bits``
            bits at bit offset ``t * bits`` of the channel's little-endian bit stream (2 bits
            per kept weight for 2:4). Padding entries have code 0.
        k: logical K (the reduction length).
        n, m: n kept of every m.
    """

    values: np.ndarray
    meta: np.ndarray
    k: int
    n: int
    m: int

    @property
    def n_out(self) -> int:
        return int(self.values.shape[0])

    @property
    def bits(self) -> int:
        return nm_code_bits(self.m)

    @property
    def groups(self) -> int:
        return -(-self.k // self.m)

    @property
    def kept_per_channel(self) -> int:
        """T, the real kept entries per channel (``values.shape[1]`` may be larger)."""
        return self.groups * self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the kept values plus their packed positions (padding excluded)."""
        t = self.n_out * self.kept_per_channel
        return int(4 * t + (t * self.bits + 7) // 8)

    def check(self) -> None:
        """Raise ValueError unless the arrays are consistent (the kernels index them unchecked)."""
        if self.m not in (2, 4, 16) or not 0 < self.n < self.m or self.k < 0:
            raise ValueError(f"invalid N:M weights {self.n}:{self.m}, K={self.k}")
        _check_array("values", self.values, np.float32, 2)
        _check_array("meta", self.meta, np.uint8, 2)
        per_word = META_WORD_BITS // self.bits
        n_out, tp = self.values.shape
        if tp % per_word or tp < self.kept_per_channel:
            raise ValueError(f"values must have a multiple of {per_word} >= "
                             f"{self.kept_per_channel} entries per channel, got {tp}")
        if self.meta.shape != (n_out, tp * self.bits // 8):
            raise ValueError(f"meta must have shape {(n_out, tp * self.bits // 8)}, "
                             f"got {self.meta.shape}")

    def positions(self) -> np.ndarray:
        """(N_out, T) int64 absolute k of every kept value (decoded from ``meta``)."""
        t = np.arange(self.kept_per_channel)
        bitpos = t * self.bits
        codes = (self.meta[:, bitpos >> 3].astype(np.int64) >> (bitpos & 7)) & (self.m - 1)
        return (t // self.n) * self.m + codes

    def to_dense(self) -> np.ndarray:
        """The (K, N_out) float32 matrix these weights represent."""
        dense = np.zeros((self.n_out, self.groups * self.m), np.float32)
        np.put_along_axis(dense, self.positions(), self.values[:, :self.kept_per_channel],
                          axis=1)
        return np.ascontiguousarray(dense[:, :self.k].T)


def compress_nm(w: np.ndarray, n: int = 2, m: int = 4) -> NMWeights:
    """Prune W (K, N) to n:m along K (keep the n largest |w| per group) and compress it.

    K need not be a multiple of m: the last group is padded with zeros (which may be kept;
    kernels read the matching zero-padded activation rows).

    Raises:
        ValueError: W not 2-D float32, or not 0 < n < m with m in (2, 4, 16) (positions must
            pack evenly into 64-bit words).
    """
    w = _check_dense(w)
    if m not in (2, 4, 16) or not 0 < n < m:
        raise ValueError(f"N:M needs m in (2, 4, 16) and 0 < n < m, got {n}:{m}")
    k, n_out = w.shape
    groups = -(-k // m)
    wt = np.zeros((n_out, groups * m), np.float32)
    wt[:, :k] = w.T
    g = wt.reshape(n_out, groups, m)
    # stable argsort on -|w| keeps the earliest positions among ties, then sort positions
    keep = np.sort(np.argsort(-np.abs(g), axis=2, kind="stable")[:, :, :n], axis=2)
    bits = nm_code_bits(m)
    per_word = META_WORD_BITS // bits
    t = groups * n
    tp = max(per_word, -(-t // per_word) * per_word)
    values = np.zeros((n_out, tp), np.float32)
    values[:, :t] = np.take_along_axis(g, keep, axis=2).reshape(n_out, t)
    codes = np.zeros((n_out, tp), np.uint64)
    codes[:, :t] = keep.reshape(n_out, t)
    shifts = (np.arange(tp, dtype=np.uint64) % per_word) * np.uint64(bits)
    words = np.bitwise_or.reduce((codes << shifts).reshape(n_out, tp // per_word, per_word),
                                 axis=2)
    meta = np.ascontiguousarray(words.astype("<u8")).view(np.uint8).reshape(n_out, -1)
    return NMWeights(values, meta, k, n, m)


# ------------------------------------------------------------------------------------ BSR ---
@dataclass(frozen=True, eq=False)
class _CompressedRows:
    """Rows of W^T (output channels) in compressed-row form: row pointers ``indptr``, column
    (k) ``indices`` and the stored ``data``; ``k, n_out`` the logical shape of W (K, N)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    k: int
    n_out: int

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)


@dataclass(frozen=True, eq=False)
class BSRWeights(_CompressedRows):
    """Block-sparse W^T: block row br holds channels br*rows .. +rows, blocks of cols k.

    Attributes:
        indptr: (ceil(N/rows) + 1,) int32 block-row pointers.
        indices: (nnzb,) int32 block-column index (k0 = index * cols), increasing per row.
        data: (nnzb, rows, cols) float32 block values (data[e, r, c] = W[k0 + c, n0 + r]).
        k, n_out: logical shape of W (K, N).
    """

    @property
    def block(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    def check(self) -> None:
        """Raise ValueError unless the arrays are consistent (the kernels index them unchecked)."""
        _check_array("data", self.data, np.float32, 3)
        r, c = self.block
        if r <= 0 or c <= 0:
            raise ValueError(f"block shape must be positive, got {r}x{c}")
        _check_compressed(self.indptr, self.indices, np.int32, -(-self.n_out // r),
                          self.data.shape[0], -(-self.k // c))

    @property
    def density(self) -> float:
        r, c = self.block
        return self.data.size / float(max(1, -(-self.n_out // r) * r * -(-self.k // c) * c))

    def to_dense(self) -> np.ndarray:
        r, c = self.block
        nbr = len(self.indptr) - 1
        kpad = -(-self.k // c) * c
        wt = np.zeros((nbr * r, kpad), np.float32)
        for br in range(nbr):
            for e in range(self.indptr[br], self.indptr[br + 1]):
                k0 = self.indices[e] * c
                wt[br * r:(br + 1) * r, k0:k0 + c] = self.data[e]
        return np.ascontiguousarray(wt[:self.n_out, :self.k].T)


def to_bsr(w: np.ndarray, rows: int, cols: int) -> BSRWeights:
    """Convert W (K, N) to BSR with ``rows x cols`` blocks of W^T, dropping all-zero blocks.

    Raises:
        ValueError: W not 2-D float32, or a non-positive block shape.
    """
    w = _check_dense(w)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"block shape must be positive, got {rows}x{cols}")
    k, n_out = w.shape
    nbr, nbc = -(-n_out // rows), -(-k // cols)
    wt = np.zeros((nbr * rows, nbc * cols), np.float32)
    wt[:n_out, :k] = w.T
    blocks = wt.reshape(nbr, rows, nbc, cols).transpose(0, 2, 1, 3)  # (nbr, nbc, rows, cols)
    nz = np.any(blocks != 0, axis=(2, 3))
    indptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int32)
    brs, bcs = np.nonzero(nz)
    data = np.ascontiguousarray(blocks[brs, bcs], np.float32)
    return BSRWeights(indptr, bcs.astype(np.int32), data, k, n_out)


def prune_blocks(w: np.ndarray, rows: int, cols: int, sparsity: float) -> np.ndarray:
    """Zero the ``sparsity`` fraction of rows x cols blocks (of W^T) with the smallest L2 norm.

    Returns a pruned dense copy of W (K, N) float32.
    """
    w = _check_dense(w)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k, n_out = w.shape
    nbr, nbc = -(-n_out // rows), -(-k // cols)
    wt = np.zeros((nbr * rows, nbc * cols), np.float32)
    wt[:n_out, :k] = w.T
    blocks = wt.reshape(nbr, rows, nbc, cols)
    norms = np.sqrt((blocks.astype(np.float64) ** 2).sum(axis=(1, 3)))
    drop = int(round(sparsity * norms.size))
    if drop:
        order = np.argsort(norms, axis=None, kind="stable")[:drop]
        mask = np.ones(norms.size, bool)
        mask[order] = False
        blocks *= mask.reshape(nbr, 1, nbc, 1)
    return np.ascontiguousarray(blocks.reshape(nbr * rows, nbc * cols)[:n_out, :k].T)


# ------------------------------------------------------------------------------------ CSR ---
@dataclass(frozen=True, eq=False)
class CSRWeights(_CompressedRows):
    """Unstructured W^T in CSR: channel n keeps ``data[indptr[n]:indptr[n+1]]`` at k
    ``indices[...]`` (int16, so K <= 32767), increasing."""

    @property
    def density(self) -> float:
        return self.data.size / float(max(1, self.k * self.n_out))

    def check(self) -> None:
        """Raise ValueError unless the arrays are consistent (the kernels index them unchecked)."""
        _check_array("data", self.data, np.float32, 1)
        _check_compressed(self.indptr, self.indices, np.int16, self.n_out, self.data.shape[0],
                          self.k)

    def to_dense(self) -> np.ndarray:
        wt = np.zeros((self.n_out, self.k), np.float32)
        rows = np.repeat(np.arange(self.n_out), np.diff(self.indptr))
        wt[rows, self.indices.astype(np.int64)] = self.data
        return np.ascontiguousarray(wt.T)


def to_csr(w: np.ndarray) -> CSRWeights:
    """Convert W (K, N) to CSR over W^T (zeros dropped).

    Raises:
        ValueError: W not 2-D float32, or K > 32767 (int16 indices).
    """
    w = _check_dense(w)
    k, n_out = w.shape
    if k > np.iinfo(np.int16).max:
        raise ValueError(f"CSR weights use int16 k indices: K must be <= 32767, got {k}")
    wt = w.T
    rows, cols = np.nonzero(wt)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_out))])
    return CSRWeights(indptr.astype(np.int32), cols.astype(np.int16),
                      np.ascontiguousarray(wt[rows, cols], np.float32), k, n_out)


def prune_unstructured(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the ``sparsity`` fraction of W's entries with the smallest magnitude (a copy)."""
    w = _check_dense(w)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    drop = int(round(sparsity * w.size))
    out = w.copy()
    if drop:
        order = np.argsort(np.abs(w), axis=None, kind="stable")[:drop]
        out.reshape(-1)[order] = 0.0
    return out
