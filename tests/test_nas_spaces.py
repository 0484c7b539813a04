"""NAS-Bench-201 and FBNet spaces: parsing, params round trip, direct vs torch.export lowering."""
import csv
from pathlib import Path

import numpy as np
import optuna
import pytest

from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.devices import load_device
from codesign.cost_models.features import live_mask
from codesign.cost_models.ir import OpBatch, OpKind, total_flops
from codesign.cost_models.lowering import insert_precision_boundaries, lower_module
from codesign.search_spaces import fbnet, nasbench201
from codesign.search_spaces.fbnet import FBNetSpace
from codesign.search_spaces.nasbench201 import NASBench201Space

DATA = Path(__file__).parent / "data"
ALL_CONV = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
            "+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|")
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
MIXED = ("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|"
         "+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|")
ZERO_FED = "|none~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|nor_conv_1x1~1|none~2|"


def _rows(name):
    with (DATA / f"{name}_latency_ms_600.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _signature(op):
    return (op.name, op.kind, op.out_shape, op.in_shapes, op.m, op.n, op.k, op.groups, op.flops,
            op.weight_elems, op.out_channels, op.fused, op.inputs)


# ------------------------------------------------------------------------------ NAS-Bench-201
def test_arch_str_round_trips_for_every_subset_row():
    for row in _rows("nasbench201"):
        cell = nasbench201.parse_arch_str(row["arch_str"])
        assert cell.arch_str == row["arch_str"]


@pytest.mark.parametrize("bad, fragment", [
    ("|none~0|+|none~0|none~1|", "expected 3 nodes"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 must have 2"),
    ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
    ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "must be op~0"),
    ("none~0", "must look like"),
])
def test_bad_arch_str_names_the_problem(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        nasbench201.parse_arch_str(bad)


@pytest.mark.parametrize("arch", [ALL_CONV, MIXED, ZERO_FED])
def test_nasbench201_direct_lowering_matches_torch_export(arch):
    cell = nasbench201.parse_arch_str(arch)
    direct = nasbench201.lower_arch(cell)
    exported = lower_module(nasbench201.build_module(cell), nasbench201.INPUT_SHAPE)
    assert [_signature(op) for op in direct] == [_signature(op) for op in exported]
    assert insert_precision_boundaries(direct) == list(direct)  # fp32 throughout


def test_nasbench201_hand_counts():
    ops = nasbench201.lower_arch(nasbench201.parse_arch_str(ALL_CONV))
    convs = [op for op in ops if op.kind is OpKind.CONV2D and ".layers." in op.name]
    assert len(convs) == 15 * 6 and all(op.k == op.n * 9 for op in convs)  # 3x3, C -> C
    # each node i sums i terms: 0 + 1 + 2 adds per cell
    assert sum(op.kind is OpKind.ADD and ".layers." not in op.name and "cells.5" != op.name
               and "cells.11" != op.name for op in ops) == 15 * 3
    none = nasbench201.lower_arch(nasbench201.parse_arch_str(ALL_NONE))
    # nothing runs in the cells: stem, two residual blocks, BN-ReLU, pool, view, classifier
    assert not [op for op in none if ".layers." in op.name]
    assert none[-1].kind is OpKind.LINEAR and none[-1].k == 64 and none[-1].n == 10
    # the zero cell output is a constant: nothing after it depends on the input
    assert not live_mask(none).any()


def test_zero_nodes_are_buffers_and_their_readers_still_run():
    ops = nasbench201.lower_arch(nasbench201.parse_arch_str(ZERO_FED))
    readers = [op for op in ops if any(src.startswith("b_cells_") for src in op.inputs)]
    assert readers and all(op.kind is OpKind.ELEMENTWISE for op in readers)  # ReLU of a conv edge
    live = live_mask(ops)
    assert not any(live[i] for i, op in enumerate(ops) if op in readers)


def test_nasbench201_suggest_reads_an_arch_str_back():
    # the generic round trip and suggest == decode: tests/test_space_conformance.py
    space = NASBench201Space()
    params = space.encode(nasbench201.parse_arch_str(ALL_CONV))
    trial = optuna.trial.FixedTrial(space.encode(nasbench201.parse_arch_str(MIXED)))
    assert space.suggest(trial).arch_str == MIXED
    with pytest.raises(ValueError, match="not one of"):
        space.decode({**params, "node1.in0": "conv"})
    with pytest.raises(ValueError, match="missing"):
        space.decode({"node1.in0": "none"})


# ------------------------------------------------------------------------------ FBNet
def test_fbnet_layout_matches_hw_nas_bench_cifar():
    layout = fbnet.layer_layout()
    assert len(layout) == 22
    assert layout[0] == (16, 16, 1) and layout[1] == (16, 24, 1) and layout[5] == (24, 32, 2)
    assert layout[9] == (32, 64, 2) and layout[13] == (64, 112, 1) and layout[17] == (112, 184, 2)
    assert layout[21] == (184, 352, 1)


def test_fbnet_ops_round_trip_for_every_subset_row():
    for row in _rows("fbnet"):
        assert fbnet.parse_ops(row["ops"]).ops_str == row["ops"]
    with pytest.raises(ValueError, match="expected 22"):
        fbnet.parse_ops("k3_e1 skip")
    with pytest.raises(ValueError, match="unknown FBNet block 'k7_e1'"):
        fbnet.parse_ops(" ".join(["k7_e1"] * 22))


@pytest.mark.parametrize("arch", [
    " ".join(["k5_e1_g2"] * 22), " ".join(["skip"] * 22),
    "k5_e6 skip k3_e1_g2 skip k5_e1 skip skip skip k5_e6 k5_e1 k3_e1_g2 k5_e1 k5_e6 k3_e6 k3_e3 "
    "k5_e6 k3_e6 k3_e3 k5_e1 k3_e3 k5_e1 k5_e1_g2"])
def test_fbnet_direct_lowering_matches_torch_export(arch):
    candidate = fbnet.parse_ops(arch)
    direct = fbnet.lower_arch(candidate)
    exported = lower_module(fbnet.build_module(candidate), fbnet.INPUT_SHAPE)
    assert [_signature(op) for op in direct] == [_signature(op) for op in exported]
    assert live_mask(direct).all()


def test_fbnet_block_structure():
    ops = fbnet.lower_arch(fbnet.parse_ops(" ".join(["k3_e6"] * 22)))
    by_name = {op.name: op for op in ops}
    assert by_name["cells.1.conv1"].n == 16 * 6  # expansion of the layer's input width
    assert by_name["cells.1.conv2"].kind is OpKind.DEPTHWISE_CONV2D
    assert by_name["cells.1.conv2"].k == 9 and by_name["cells.1.conv2"].groups == 96
    assert "cells.1" not in by_name and by_name["cells.2"].kind is OpKind.ADD  # 16->24 vs 24->24
    assert by_name["fc"].k == 1504 and by_name["fc"].n == 100
    grouped = fbnet.lower_arch(fbnet.parse_ops(" ".join(["k3_e1_g2"] * 22)))
    first = {op.name: op for op in grouped}
    assert first["cells.0.conv1"].groups == 2 and first["cells.0.shuffle#1"].kind is OpKind.LAYOUT


def test_fbnet_has_one_param_per_layer():
    # the params round trip: tests/test_space_conformance.py
    assert len(list(FBNetSpace().iter_distributions({}))) == 22


def test_both_spaces_price_on_the_analytic_model():
    model = AnalyticCostModel(load_device("pixel7"), "xnnpack", threads=1)
    nb = NASBench201Space()
    fb = FBNetSpace()
    lists = [nb.to_ops(nasbench201.parse_arch_str(a)) for a in (ALL_CONV, ALL_NONE, MIXED)]
    lists += [fb.to_ops(fbnet.parse_ops(r["ops"])) for r in _rows("fbnet")[:3]]
    pred = model.predict(OpBatch.from_oplists(lists))
    assert np.all(pred.latency_s > 0)
    assert pred.latency_s[0] > pred.latency_s[2] > pred.latency_s[1]
    assert total_flops(lists[0]) > total_flops(lists[2]) > total_flops(lists[1])
