"""NHWC conv2d (im2col + GEMM) and depthwise conv against torch.nn.functional.conv2d."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codesign.kernels import conv
from codesign.kernels.specs import TileSpec


def torch_conv_nhwc(x, w_oihw, bias, stride, pad, groups=1):
    y = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w_oihw),
                 None if bias is None else torch.from_numpy(bias), stride=stride, padding=pad,
                 groups=groups)
    return y.permute(0, 2, 3, 1).numpy()


def rand(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("n,h,w,cin,cout,k,stride,pad", [
    (2, 9, 11, 5, 7, 3, 1, 1),
    (1, 10, 7, 3, 17, 3, 2, "same"),
    (1, 5, 6, 4, 6, 1, 1, 0),      # 1x1: the no-im2col path
    (1, 8, 8, 3, 5, 5, 2, 2),
    (1, 7, 9, 2, 3, 3, 1, 0),      # valid padding
    (1, 6, 5, 3, 4, 1, 2, 0),      # strided 1x1 goes through im2col
])
def test_conv2d_matches_torch(n, h, w, cin, cout, k, stride, pad):
    rng = np.random.default_rng(h * w + cin)
    x, wt, b = rand(rng, (n, h, w, cin)), rand(rng, (cout, cin, k, k)), rand(rng, (cout,))
    torch_pad = k // 2 if pad == "same" else pad
    ref = torch_conv_nhwc(x, wt, b, stride, torch_pad)
    y = conv.conv2d(x, conv.weights_from_oihw(wt), b, stride=stride, padding=pad)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_conv2d_chunked_im2col_and_small_tile(monkeypatch):
    # tiny chunks: many im2col row chunks, each a separate GEMM into a slice of the output
    monkeypatch.setattr(conv, "IM2COL_CHUNK_BYTES", 256)
    rng = np.random.default_rng(1)
    x, wt = rand(rng, (2, 13, 12, 6)), rand(rng, (9, 6, 3, 3))
    y = conv.conv2d(x, conv.weights_from_oihw(wt), stride=1, padding=1,
                    tile=TileSpec(mc=12, nc=32, kc=16, mr=6, nr=16))
    np.testing.assert_allclose(y, torch_conv_nhwc(x, wt, None, 1, 1), rtol=1e-4, atol=1e-4)


def test_im2col_layout():
    x = np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2)
    cols = conv.im2col(x, 2, 2, stride=1, padding=0)
    assert cols.shape == (2 * 2 * 2, 2 * 2 * 2)
    # row 0 = pixel (0, 0) of image 0: taps (0,0), (0,1), (1,0), (1,1), channels innermost
    np.testing.assert_array_equal(cols[0], np.concatenate([x[0, 0, 0], x[0, 0, 1],
                                                           x[0, 1, 0], x[0, 1, 1]]))


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_depthwise_matches_torch(k, stride):
    rng = np.random.default_rng(k * 10 + stride)
    for n, h, w, c in [(2, 9, 11, 5), (1, 10, 7, 19), (1, 4, 3, 33)]:
        x, wt, b = rand(rng, (n, h, w, c)), rand(rng, (c, 1, k, k)), rand(rng, (c,))
        y = conv.depthwise_conv2d(x, conv.depthwise_weights_from_oihw(wt), b, stride=stride)
        ref = torch_conv_nhwc(x, wt, b, stride, k // 2, groups=c)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_conv_validation():
    x = np.zeros((1, 4, 4, 3), np.float32)
    w = np.zeros((3, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match="channels"):
        conv.conv2d(x, np.zeros((3, 3, 4, 2), np.float32))
    with pytest.raises(ValueError, match="padding"):
        conv.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="stride"):
        conv.conv2d(x, w, stride=0)
    # a bool is not a stride (True used to run as stride 1), as in codesign.kernels.conv_int8
    for call in (conv.conv2d, conv.depthwise_conv2d):
        with pytest.raises(ValueError, match="stride must be a positive int, got True"):
            call(x, w if call is conv.conv2d else np.zeros((3, 3, 3), np.float32), stride=True)
    with pytest.raises(ValueError, match="larger than"):
        conv.conv2d(np.zeros((1, 2, 2, 3), np.float32), w)
    with pytest.raises(ValueError, match="4-D"):
        conv.conv2d(x[0], w)
    with pytest.raises(ValueError, match="bias"):
        conv.depthwise_conv2d(x, np.zeros((3, 3, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"\(C, 1, KH, KW\)"):
        conv.depthwise_weights_from_oihw(np.zeros((3, 2, 3, 3), np.float32))
