"""Sparse formats and sparse-weight GEMMs against dense numpy references."""
from __future__ import annotations

import numpy as np
import pytest

from codesign.kernels.sparse import spmm_bsr, spmm_csr, spmm_nm
from codesign.kernels.sparse_formats import (compress_nm, prune_blocks, prune_unstructured, to_bsr,
                                             to_csr)

# M not a multiple of the 32/24/64-row panels, K not a multiple of 4 / of a metadata word,
# N not a multiple of the channel tile: every kernel runs ragged edges
SHAPES = [(37, 29, 19), (70, 64, 13), (5, 130, 7), (1, 3, 1)]


def rand(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def check(y, x, w_dense):
    np.testing.assert_allclose(y, x @ w_dense, rtol=2e-5, atol=2e-4)


def test_compress_nm_keeps_largest_and_roundtrips():
    rng = np.random.default_rng(0)
    w = rand(rng, (10, 6))  # K = 10: last group of 4 is half padding
    nm = compress_nm(w, 2, 4)
    dense = nm.to_dense()
    assert dense.shape == w.shape
    for c in range(6):
        for g in range(3):
            col = w[4 * g:4 * g + 4, c]
            kept = dense[4 * g:4 * g + 4, c]
            assert np.count_nonzero(kept) <= 2
            top = np.sort(np.abs(col))[-min(2, len(col)):]
            np.testing.assert_allclose(np.sort(np.abs(kept[kept != 0])), top[top != 0][-2:])
    assert nm.kept_per_channel == 6 and nm.bits == 2
    assert nm.values.shape[1] % 32 == 0  # padded to whole 64-bit metadata words
    assert nm.nbytes == 6 * 6 * 4 + (6 * 6 * 2 + 7) // 8  # values + 2-bit positions


@pytest.mark.parametrize("n,m,rows,mv", [(2, 4, 2, 4), (1, 4, 3, 2)])
def test_spmm_nm_matches_dense(n, m, rows, mv):
    rng = np.random.default_rng(n * 10 + m)
    for mm, k, nn in SHAPES + [(40, 300, 9)]:
        x, w = rand(rng, (mm, k)), rand(rng, (k, nn))
        nm = compress_nm(w, n, m)
        for kc in (64, 4096):  # several K blocks (accumulating), and one
            check(spmm_nm(x, nm, rows=rows, mv=mv, kc=kc), x, nm.to_dense())


def test_spmm_nm_already_sparse_input_is_exact_format():
    rng = np.random.default_rng(3)
    w = rand(rng, (16, 5))
    w.reshape(4, 4, 5)[:, 1:3, :] = 0  # already 2:4
    nm = compress_nm(w)
    np.testing.assert_array_equal(nm.to_dense(), w)


@pytest.mark.parametrize("rows,cols", [(4, 4), (1, 4), (2, 2)])
def test_spmm_bsr_matches_dense(rows, cols):
    rng = np.random.default_rng(rows * 10 + cols)
    for mm, k, nn in SHAPES:
        x, w = rand(rng, (mm, k)), rand(rng, (k, nn))
        for sparsity in (0.0, 0.75, 0.95):
            bsr = to_bsr(prune_blocks(w, rows, cols, sparsity), rows, cols)
            check(spmm_bsr(x, bsr), x, bsr.to_dense())


def test_bsr_format_and_pruning():
    rng = np.random.default_rng(4)
    w = rand(rng, (16, 12))
    pw = prune_blocks(w, 4, 4, 0.75)
    bsr = to_bsr(pw, 4, 4)
    assert bsr.data.shape == (3, 4, 4)  # 12 blocks, 3 kept
    assert bsr.density == pytest.approx(0.25)
    np.testing.assert_array_equal(bsr.to_dense(), pw)
    empty = to_bsr(np.zeros((8, 8), np.float32), 4, 4)
    assert empty.data.shape[0] == 0
    np.testing.assert_array_equal(spmm_bsr(rand(rng, (3, 8)), empty), np.zeros((3, 8)))


def test_spmm_csr_matches_dense():
    rng = np.random.default_rng(5)
    for mm, k, nn in SHAPES:
        x, w = rand(rng, (mm, k)), rand(rng, (k, nn))
        for sparsity in (0.5, 0.9):
            csr = to_csr(prune_unstructured(w, sparsity))
            assert csr.indices.dtype == np.int16
            check(spmm_csr(x, csr), x, csr.to_dense())


@pytest.mark.slow
def test_sparse_parallel_matches_serial():
    rng = np.random.default_rng(6)
    x, w = rand(rng, (150, 64), ), rand(rng, (64, 20))
    csr = to_csr(prune_unstructured(w, 0.8))
    np.testing.assert_allclose(spmm_csr(x, csr, parallel=True), spmm_csr(x, csr),
                               rtol=1e-6, atol=1e-6)


def test_sparse_validation():
    rng = np.random.default_rng(7)
    x, w = rand(rng, (4, 8)), rand(rng, (8, 4))
    nm = compress_nm(w)
    with pytest.raises(ValueError, match="K=9"):
        spmm_nm(rand(rng, (4, 9)), nm)
    with pytest.raises(ValueError, match="dtype float32"):
        spmm_nm(x.astype(np.float64), nm)
    with pytest.raises(ValueError, match="C-contiguous"):
        spmm_nm(np.asfortranarray(x), nm)
    with pytest.raises(ValueError, match="rows\\*mv<=13"):
        spmm_nm(x, nm, rows=4, mv=4)
    with pytest.raises(ValueError, match="NMWeights"):
        spmm_nm(x, w)
    with pytest.raises(ValueError, match="N:M needs"):
        compress_nm(w, 3, 8)
    with pytest.raises(ValueError, match="BSRWeights"):
        spmm_bsr(x, nm)
    with pytest.raises(ValueError, match="out must be"):
        spmm_csr(x, to_csr(w), out=np.empty((4, 5), np.float32))
    sq = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        spmm_csr(sq, to_csr(rand(rng, (4, 4))), out=sq)
    with pytest.raises(ValueError, match="int16"):
        to_csr(np.zeros((40000, 1), np.float32))
    with pytest.raises(ValueError, match="sparsity"):
        prune_blocks(w, 4, 4, 1.0)


def test_corrupt_formats_are_rejected_before_the_kernels_run():
    import dataclasses

    rng = np.random.default_rng(8)
    x, w = rand(rng, (4, 8)), rand(rng, (8, 8))
    bsr = to_bsr(w, 4, 4)
    bad_idx = bsr.indices.copy()
    bad_idx[0] = 2  # K = 8 has block columns 0 and 1 only
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\)"):
        spmm_bsr(x, dataclasses.replace(bsr, indices=bad_idx))
    with pytest.raises(ValueError, match="indptr"):
        spmm_bsr(x, dataclasses.replace(bsr, indptr=bsr.indptr[::-1].copy()))
    csr = to_csr(w)
    with pytest.raises(ValueError, match="indices"):
        spmm_csr(x, dataclasses.replace(csr, indices=csr.indices[:-1].copy()))
    nm = compress_nm(w)
    with pytest.raises(ValueError, match="meta must have shape"):
        spmm_nm(x, dataclasses.replace(nm, meta=nm.meta[:, :-8].copy()))
