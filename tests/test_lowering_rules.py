"""The lowering rule set (issue 18): attention written three ways, views and dropout free,
selections copied, constants folded, padding="same" convs, resizes, einsum; an op with no rule
(a custom op, even on constants) and an op kind a back-end cannot run both fail naming the op."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from codesign.cli import main
from codesign.cost_models.backends import load_backend
from codesign.cost_models.base import UnpriceableOp
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpKind
from codesign.cost_models.lowering import LoweringError, lower_module
from codesign.pricing import price_module
from tests.models import vit_block_mha, vit_block_sdpa, vit_block_unbind

TOKENS, DIM, HEADS = 16, 32, 2
# per block: q k^T and (softmax) v, each 2 x tokens x tokens x head_dim x heads
ATTENTION_FLOPS = 2 * (2 * TOKENS * TOKENS * (DIM // HEADS) * HEADS)


def kinds(ops):
    return [op.kind for op in ops if op.kind is not OpKind.FREE]


@pytest.mark.parametrize("factory", [vit_block_unbind, vit_block_mha, vit_block_sdpa])
def test_handwritten_attention_blocks_price_on_both_backends(factory):
    ops = lower_module(factory(), (1, TOKENS, DIM))
    matmuls = [op for op in ops if op.kind is OpKind.MATMUL]
    assert sum(op.flops for op in matmuls) == ATTENTION_FLOPS
    assert all(op.groups == HEADS and op.m == TOKENS for op in matmuls)
    assert sum(op.kind is OpKind.SOFTMAX for op in ops) == 1
    # the qkv (or in-projection), output projection and MLP linears: 3d^2 + d^2 + 4d^2 MACs
    linear = sum(op.flops for op in ops if op.kind is OpKind.LINEAR)
    assert linear == 2 * TOKENS * 8 * DIM * DIM
    for backend in ("xnnpack", "codesign"):
        priced = price_module(factory(), (1, TOKENS, DIM), load_device("pixel8"),
                              backend=backend)
        assert priced.latency_s > 0


def test_sdpa_decomposes_into_what_the_runtime_runs():
    ops = lower_module(vit_block_sdpa(), (1, TOKENS, DIM))
    names = [op.name for op in ops if op.source.startswith("aten.scaled_dot_product")]
    assert [n.rsplit(".", 1)[1] for n in names] == ["scale_q", "scale_k", "scores", "softmax",
                                                    "context"]
    by_name = {op.name: op for op in ops}
    assert by_name[names[4]].inputs[0] == names[3]  # context reads the softmax
    assert by_name[names[2]].inputs == (names[0], names[1])
    assert by_name[names[2]].out_shape == (1, HEADS, TOKENS, TOKENS)


class WithMask(nn.Module):
    def forward(self, x):  # x: (batch, heads, tokens, dim)
        return nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)


def test_causal_sdpa_prices_its_mask_and_safe_softmax():
    ops = lower_module(WithMask(), (1, 2, 8, 4))
    assert kinds(ops) == [OpKind.MUL, OpKind.MUL, OpKind.MATMUL, OpKind.ELEMENTWISE, OpKind.ADD,
                          OpKind.SOFTMAX,
                          OpKind.ELEMENTWISE, OpKind.GLOBAL_POOL, OpKind.ELEMENTWISE,
                          OpKind.MATMUL]
    assert ops[-1].inputs[0].endswith(".safe_softmax")


class Extra(nn.Module):
    """``base`` with a view round trip and an eval-mode dropout (in place too) in the middle."""

    def __init__(self, base, extra: bool):
        super().__init__()
        self.base, self.extra = base, extra
        self.drop, self.drop_inplace = nn.Dropout(0.3), nn.Dropout(0.1, inplace=True)

    def forward(self, x):
        y = self.base.norm1(x)
        if self.extra:
            y = self.drop_inplace(self.drop(y.view(-1, DIM).view(y.shape)))
        x = x + self.base.attention(y)
        return x + self.base.mlp(self.base.norm2(x))


@pytest.mark.parametrize("backend", ["xnnpack", "codesign"])
def test_view_and_dropout_change_no_latency(backend):
    device = load_device("pixel8")
    plain = price_module(Extra(vit_block_unbind(), False), (1, TOKENS, DIM), device,
                         backend=backend)
    extra = price_module(Extra(vit_block_unbind(), True), (1, TOKENS, DIM), device,
                         backend=backend)
    assert len(extra.ops) > len(plain.ops)  # the extra ops are there, priced free
    assert extra.latency_s == plain.latency_s


@torch.library.custom_op("codesign_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOnInput(nn.Module):
    def forward(self, x):
        return torch.ops.codesign_test.mystery(x) + 1


class CustomOnConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.ones(4))

    def forward(self, x):  # the custom op's input is static: still no rule, still an error
        return x * torch.ops.codesign_test.mystery(self.table)


@pytest.mark.parametrize("module", [CustomOnInput(), CustomOnConstant()])
def test_op_without_rule_names_it(module):
    with pytest.raises(LoweringError, match="no lowering rule for codesign_test.mystery"):
        lower_module(module, (1, 4))


def test_backend_without_a_kind_fails_naming_the_op(monkeypatch, capsys):
    import codesign.pricing

    spec = load_backend("xnnpack")
    no_softmax = replace(spec, ops={k: v for k, v in spec.ops.items() if k is not OpKind.SOFTMAX})
    monkeypatch.setattr(codesign.pricing, "backend_for", lambda device, name: no_softmax)
    with pytest.raises(UnpriceableOp, match="softmax.*no kernel for op kind softmax"):
        price_module(vit_block_sdpa(), (1, TOKENS, DIM), load_device("pixel8"))
    code = main(["predict", "--device", "pixel8", "--model", "tests.models:vit_block_sdpa",
                 "--input-shape", f"1,{TOKENS},{DIM}", "--dtype", "int8"])
    err = capsys.readouterr().err
    assert code == 2 and "scaled_dot_product_attention.softmax" in err and "softmax" in err


class Selections(nn.Module):
    def forward(self, x):  # x: (3, 4, 8)
        whole = x[:, :, :]  # a no-op slice
        first = x[0]  # one contiguous run, still a select_copy in the program
        cols = x[..., 1:3]  # a strided part
        return whole.sum() + first.sum() + cols.sum()


def test_selections_copy_what_they_keep_unless_noop():
    ops = lower_module(Selections(), (3, 4, 8))
    layout = [op for op in ops if op.kind is OpKind.LAYOUT]
    assert sorted(op.out_shape for op in layout) == [(3, 4, 2), (4, 8)]
    assert all(op.in_shapes == (op.out_shape,) for op in layout)  # reads what it keeps


class Generated(nn.Module):
    def forward(self, x):  # (1, 8): a position table from arange, folded to a constant
        pos = torch.arange(8, dtype=torch.float32).unsqueeze(0) * 0.5
        return x + torch.sin(pos).to(x.dtype)


def test_static_subgraphs_fold_into_constants():
    ops = lower_module(Generated(), (1, 8))
    assert kinds(ops) == [OpKind.ADD]
    folded = {op.source.split(".")[1] for op in ops if op.source.startswith("folded")}
    assert {"arange", "sin", "mul"} <= folded


class SameConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, padding="same")
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x):
        y = nn.functional.interpolate(self.norm(self.conv(x)), scale_factor=2, mode="bilinear")
        return torch.einsum("bchw,bdhw->bcd", y, y)


def test_same_padding_conv_groupnorm_resize_and_einsum():
    ops = lower_module(SameConv(), (1, 3, 10, 10))
    by_kind = {op.kind: op for op in ops if op.kind is not OpKind.FREE}
    conv = by_kind[OpKind.CONV2D]
    assert conv.out_shape == (1, 8, 10, 10) and conv.flops == 2 * 100 * 8 * 3 * 25
    assert by_kind[OpKind.NORM].flops == 5 * 800
    resize = by_kind[OpKind.ELEMENTWISE]
    assert resize.out_shape == (1, 8, 20, 20) and resize.flops == 8 * 3200
    einsum = by_kind[OpKind.MATMUL]
    assert (einsum.m, einsum.n, einsum.k, einsum.groups) == (8, 8, 400, 1)
