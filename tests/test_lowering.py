"""torch.export lowering to the op-list IR: FLOPs by hand, folding, fusion, free ops, errors."""
import pytest
import torch
from torch import nn

from codesign.cost_models.backends import load_backend
from codesign.cost_models.ir import OpKind, model_bytes, peak_activation_bytes
from codesign.cost_models.lowering import LoweringError, apply_precision, lower_module
from tests.models import mobilenet_v2, small_convnet


def test_small_convnet_flops_match_hand_count():
    ops = lower_module(small_convnet(), (1, 3, 32, 32))
    by_name = {op.name: op for op in ops}
    # conv1: 32x32 outputs x 8 channels x (3 in x 3x3) MACs x 2
    assert by_name["conv1"].flops == 2 * 32 * 32 * 8 * 3 * 9 == 442368
    # conv2 (stride 2): 16x16 outputs x 16 channels x (8 x 3x3) MACs x 2
    assert by_name["conv2"].flops == 2 * 16 * 16 * 16 * 8 * 9 == 589824
    assert by_name["fc"].flops == 2 * 16 * 10
    assert (by_name["conv1"].m, by_name["conv1"].n, by_name["conv1"].k) == (1024, 8, 27)
    gemm = sum(op.flops for op in ops if op.kind in (OpKind.CONV2D, OpKind.LINEAR))
    assert gemm == 442368 + 589824 + 320


def test_batchnorm_folded_and_activations_fused():
    ops = lower_module(small_convnet(), (1, 3, 32, 32))
    kinds = [op.kind for op in ops]
    assert OpKind.NORM not in kinds and OpKind.ELEMENTWISE not in kinds
    by_name = {op.name: op for op in ops}
    assert by_name["conv1"].fused == ("batchnorm", "relu")
    assert by_name["conv2"].fused == ("relu",)


def test_free_ops_priced_by_rule_not_dropped():
    ops = lower_module(small_convnet(), (1, 3, 32, 32))
    free = [op for op in ops if op.kind is OpKind.FREE]
    assert {op.name for op in free} == {"view", "drop"}
    assert all(op.flops == 0 for op in free)
    # the linear reads through the free ops: the chain of inputs is intact
    assert {op.name: op for op in ops}["fc"].inputs == ("drop",)


def test_flatten_view_dropout_model_lowers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Dropout(0.3),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    ops = lower_module(model, (2, 3, 8, 8))
    assert [op.kind for op in ops] == [OpKind.CONV2D, OpKind.FREE, OpKind.FREE, OpKind.LINEAR]
    assert ops[-1].m == 2 and ops[-1].k == 144


def test_unfusable_activation_and_bn_become_ops():
    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(self.bn(x))  # BN on the input: nothing to fold into
            return torch.relu(y) + y  # y has two readers: ReLU cannot fuse

    ops = lower_module(TwoReaders().eval(), (1, 3, 4, 4))
    assert [op.kind for op in ops] == [OpKind.NORM, OpKind.CONV2D, OpKind.ELEMENTWISE, OpKind.ADD]


def test_mobilenet_v2_macs_and_structure():
    ops = lower_module(mobilenet_v2(), (1, 3, 224, 224))
    macs = sum(op.flops for op in ops) / 2
    assert 299e6 < macs < 302e6  # MobileNetV2 1.0 @ 224: ~300M MACs (Sandler et al. 2018)
    assert sum(op.kind is OpKind.DEPTHWISE_CONV2D for op in ops) == 17
    assert sum(op.kind is OpKind.ADD for op in ops) == 10
    assert not any(op.kind in (OpKind.NORM, OpKind.ELEMENTWISE) for op in ops)
    assert 3.4e6 < sum(op.weight_elems for op in ops) < 3.6e6  # 3.5M parameters
    assert model_bytes(ops) > 4 * 3.4e6
    assert peak_activation_bytes(ops) >= 4 * (96 * 112 * 112 + 16 * 112 * 112) * 0.99


def test_unknown_op_is_an_error_never_zero():
    class Sorts(nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=-1).values

    with pytest.raises(LoweringError, match="no lowering rule for aten.sort"):
        lower_module(Sorts(), (1, 8))


def test_bad_input_shape_and_unexportable_model():
    with pytest.raises(LoweringError, match="positive integers"):
        lower_module(small_convnet(), (1, 0, 32, 32))
    with pytest.raises(LoweringError, match="torch.export failed"):
        lower_module(small_convnet(), (1, 5, 32, 32))  # conv1 expects 3 channels


def test_int8_inserts_priced_boundaries():
    ops = lower_module(small_convnet(), (1, 3, 32, 32))
    q = apply_precision(ops, load_backend("xnnpack"), "int8")
    kinds = [op.kind for op in q]
    assert kinds[0] is OpKind.QUANTIZE  # fp32 input -> int8
    assert kinds[-1] is OpKind.DEQUANTIZE  # int8 output -> fp32 for the caller
    assert all(op.quant.weight_bits == 8 for op in q if op.kind is OpKind.CONV2D)
    # the graph stays connected: every input names an earlier op or the model input
    seen = {""}
    for op in q:
        assert set(op.inputs) <= seen, op
        seen.add(op.name)


def test_precision_the_backend_lacks_falls_back_with_boundaries():
    model = nn.Sequential(nn.Linear(8, 8), nn.Softmax(dim=-1), nn.Linear(8, 4)).eval()
    q = apply_precision(lower_module(model, (1, 8)), load_backend("xnnpack"), "int8")
    softmax = next(op for op in q if op.kind is OpKind.SOFTMAX)
    assert softmax.quant.act_bits == 32  # XNNPACK has no int8 softmax
    kinds = [op.kind for op in q]
    assert kinds.count(OpKind.DEQUANTIZE) >= 2 and kinds.count(OpKind.QUANTIZE) >= 2
