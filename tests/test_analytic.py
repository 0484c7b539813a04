"""Roofline sanity of the analytic model, sparsity only where declared, and the protocol."""
import numpy as np
import pytest

from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.base import BOUNDS, UnpriceableOp
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import Op, OpBatch, OpKind
from codesign.kernels.specs import QuantSpec, TileSpec, block, two_four, unstructured


def conv(m=3136, n=128, k=576, quant=QuantSpec(), sparsity=None, tile=None, name="conv"):
    """A 3x3 convolution as its GEMM (56x56 output pixels, 64->128 channels by default)."""
    kw = {} if sparsity is None else {"sparsity": sparsity}
    return Op(name, OpKind.CONV2D, (1, n, m), ((1, k // 9, m),), m=m, n=n, k=k,
              flops=2.0 * m * n * k, weight_elems=n * k, out_channels=n, quant=quant, tile=tile,
              **kw)


def elementwise_add(elems):
    return Op("add", OpKind.ADD, (elems,), ((elems,), (elems,)), flops=float(elems))


def price(model, *oplists):
    return model.predict(OpBatch.from_oplists(list(oplists)))


@pytest.fixture(scope="module")
def pixel8():
    return load_device("pixel8")


def test_more_flops_never_faster(pixel8):
    model = AnalyticCostModel(pixel8, "xnnpack", threads=4)
    sizes = [(m, n, k) for m in (49, 196, 784, 3136) for n in (16, 64, 256) for k in (9, 64, 576)]
    ops = [[conv(m, n, k)] for m, n, k in sizes]
    lat = price(model, *ops).latency_s
    flops = np.array([2.0 * m * n * k for m, n, k in sizes])
    for i in range(len(sizes)):
        for j in range(len(sizes)):
            dominated = all(a >= b for a, b in zip(sizes[i], sizes[j]))
            if dominated and flops[i] > flops[j]:
                assert lat[i] >= lat[j], (sizes[i], sizes[j])


def test_int8_faster_than_fp32_when_compute_bound(pixel8):
    model = AnalyticCostModel(pixel8, "xnnpack", threads=1)
    pred = price(model, [conv()], [conv(quant=QuantSpec(8, 8))])
    assert BOUNDS[pred.op_bound[0]] == "compute"
    assert pred.latency_s[1] < 0.75 * pred.latency_s[0]


def test_memory_bound_op_tracks_bytes(pixel8):
    model = AnalyticCostModel(pixel8, "xnnpack", threads=1)
    sizes = [2**20, 2**21, 2**22]  # 12..48 MB of traffic: past every cache
    pred = price(model, *[[elementwise_add(s)] for s in sizes])
    assert all(BOUNDS[b] == "memory" for b in pred.op_bound)
    ratios = pred.latency_s[1:] / pred.latency_s[:-1]
    np.testing.assert_allclose(ratios, 2.0, rtol=0.02)


def test_little_cores_help_less_than_big_cores(pixel8):
    lat = {t: price(AnalyticCostModel(pixel8, "xnnpack", threads=t), [conv()]).latency_s[0]
           for t in (4, 5, 6)}
    gain_big = lat[4] / lat[5]  # 5th thread: the last free A715
    gain_little = lat[5] / lat[6]  # 6th thread: spills onto an A510
    assert lat[6] < lat[5] < lat[4]
    assert gain_little - 1 < 0.6 * (gain_big - 1)


def test_sparsity_only_where_backend_declares_it(pixel8):
    xnn = AnalyticCostModel(pixel8, "xnnpack", threads=1)
    cds = AnalyticCostModel(pixel8, "codesign", threads=1)
    patterns = [two_four(), block(4, 4, 0.75), unstructured(0.75)]
    for model, accelerates in ((xnn, False), (cds, True)):
        lat = price(model, [conv()], *[[conv(sparsity=p)] for p in patterns]).latency_s
        if accelerates:
            assert all(lat[1:] < lat[0])
        else:
            np.testing.assert_allclose(lat[1:], lat[0])
    # a depthwise op has no sparse kernel even on codesign: pruning it changes nothing
    dw = Op("dw", OpKind.DEPTHWISE_CONV2D, (1, 64, 3136), ((1, 64, 3136),), m=3136, n=1, k=9,
            groups=64, flops=2.0 * 3136 * 9 * 64, weight_elems=576, out_channels=64)
    dw_sparse = Op(**{**dw.__dict__, "sparsity": unstructured(0.5)})
    lat = price(cds, [dw], [dw_sparse]).latency_s
    assert lat[0] == lat[1]


def test_tile_changes_latency_only_where_choosable(pixel8):
    tiles = [TileSpec(72, 1024, 512, 6, 16), TileSpec(8, 8, 16, 1, 8), TileSpec(48, 64, 64, 4, 8)]
    for backend, choosable in (("codesign", True), ("xnnpack", False)):
        model = AnalyticCostModel(pixel8, backend, threads=1)
        lat = price(model, *[[conv(tile=t)] for t in tiles]).latency_s
        assert (len(set(lat.round(12))) > 1) == choosable
    model = AnalyticCostModel(pixel8, "codesign", threads=1)
    lat = price(model, *[[conv(tile=t)] for t in tiles]).latency_s
    assert lat[0] < lat[1]  # a 6x16 register tile beats a 1x8 one on a 4-FMA-pipe core


def test_unrunnable_precision_is_an_error_not_zero(pixel8):
    model = AnalyticCostModel(pixel8, "xnnpack", threads=1)
    with pytest.raises(UnpriceableOp, match="conv2d at w4a8"):
        price(model, [conv(quant=QuantSpec(4, 8))])
    # the co-design back-end runs it
    assert price(AnalyticCostModel(pixel8, "codesign"), [conv(quant=QuantSpec(4, 8))]).latency_s[0] > 0


def test_batched_equals_one_by_one(pixel8):
    model = AnalyticCostModel(pixel8, "codesign", threads=4)
    lists = [[conv(196, 64, 576)], [conv(), elementwise_add(4096)], [conv(784, 32, 288)]]
    batched = price(model, *lists).latency_s
    single = [price(model, ops).latency_s[0] for ops in lists]
    np.testing.assert_allclose(batched, single, rtol=1e-12)


def test_save_load_round_trip(pixel8, tmp_path):
    model = AnalyticCostModel(pixel8, "xnnpack", threads=2)
    model.save(tmp_path / "m.json")
    again = AnalyticCostModel.load(tmp_path / "m.json")
    lists = [[conv()], [elementwise_add(10_000)]]
    np.testing.assert_array_equal(price(model, *lists).latency_s, price(again, *lists).latency_s)


def test_assumptions_name_cores_and_backend(pixel8):
    a = AnalyticCostModel(pixel8, "xnnpack", threads=5).assumptions
    assert a["backend"] == "xnnpack" and a["threads"] == 5
    assert a["cores"] == [{"cluster": "prime", "core": "cortex-x3", "count": 1},
                          {"cluster": "big", "core": "cortex-a715", "count": 4}]


def depthwise(kernel: int, channels: int = 96, hw: int = 64):
    m = hw * hw
    return Op(f"dw{kernel}", OpKind.DEPTHWISE_CONV2D, (1, channels, hw, hw),
              ((1, channels, hw, hw),), m=m, n=1, k=kernel * kernel, groups=channels,
              flops=2.0 * m * kernel * kernel * channels, weight_elems=channels * kernel * kernel,
              out_channels=channels)


def test_xnnpack_large_depthwise_kernels_take_the_generic_path(pixel8):
    from codesign.cost_models.backends import load_backend

    xnnpack = load_backend("xnnpack")
    assert xnnpack.depthwise_max_taps == 25
    lat = price(AnalyticCostModel(pixel8, xnnpack, threads=1),
                [depthwise(5)], [depthwise(7)]).latency_s
    per_flop_ratio = (lat[1] / 49) / (lat[0] / 25)
    dw_eff = xnnpack.efficiency[OpKind.DEPTHWISE_CONV2D]["fp32"].value
    large_eff = xnnpack.depthwise_large_kernel_efficiency["fp32"].value
    # compute-bound at this size: the per-FLOP slowdown is the ratio of the two efficiencies
    assert per_flop_ratio == pytest.approx(dw_eff / large_eff, rel=0.1)
    # the codesign back-end declares no such limit: 7x7 costs about 49/25 of 5x5
    codesign = price(AnalyticCostModel(pixel8, load_backend("codesign"), threads=1),
                     [depthwise(5)], [depthwise(7)]).latency_s
    assert codesign[1] / codesign[0] < 2.5


def test_bad_depthwise_limit_names_file_and_field(tmp_path):
    import yaml

    from codesign.cost_models.backends import config_path, parse_backend
    from codesign.cost_models.devices import SpecError

    data = yaml.safe_load(config_path("backends", "xnnpack").read_text())
    data["depthwise_large_kernel"]["max_taps"]["value"] = 2.5
    with pytest.raises(SpecError, match="depthwise_large_kernel.max_taps.*positive integer"):
        parse_backend(data, "xnnpack.yaml")


def gemv(k=1024, n=4096, quant=QuantSpec(), name="gemv"):
    return Op(name, OpKind.LINEAR, (1, n), ((1, k),), m=1, n=n, k=k, flops=2.0 * n * k,
              weight_elems=n * k, out_channels=n, quant=quant)


def test_measured_read_curve_prices_resident_weights_at_the_working_set_bandwidth(pixel8):
    # a catalog device keeps its spec's cache bandwidth; a measured curve (bytes -> bytes/s)
    # prices LLC-resident weights at the bandwidth of the model's whole weight working set
    assert AnalyticCostModel(pixel8, "xnnpack").read_curve is None
    curve = ((1 << 20, 64e9), (1 << 21, 16e9))
    slow = AnalyticCostModel(pixel8, "xnnpack", threads=1, read_curve=curve)
    none = AnalyticCostModel(pixel8, "xnnpack", threads=1, read_curve=None)
    one = [gemv(k=256, n=1024)]                                   # 1 MiB of fp32 weights
    two = [gemv(k=256, n=1024, name=f"g{i}") for i in range(2)]   # 2 MiB: still LLC-resident
    w = one[0].weight_bytes()
    assert 2 * w <= slow.assumptions["llc_bytes"]
    m1 = slow.predict(OpBatch.from_oplists([one])).op_memory_s[0]
    assert m1 >= w / 64e9 and m1 < w / 64e9 * 1.1   # the weights dominate the op's traffic
    # twice the weights: the working set's bandwidth (16 GB/s) prices each GEMV 4x slower
    m2 = slow.predict(OpBatch.from_oplists([two])).op_memory_s[0]
    assert m2 > 3.5 * m1
    assert none.predict(OpBatch.from_oplists([one])).op_memory_s[0] != m1


def test_blockwise_four_bit_gemv_uses_its_measured_efficiency_on_its_isa(pixel8):
    w8 = gemv(quant=QuantSpec(8, 8, 0, True))
    w4 = {g: gemv(quant=QuantSpec(4, 8, g, True), name=f"w4g{g}") for g in (32, 128, 256)}
    host = AnalyticCostModel(load_device("host"), "xnnpack", threads=1)
    c = host.predict(OpBatch.from_oplists([[w8, *w4.values()]])).op_compute_s
    assert c[1] > c[2] > c[0]      # g32 slower than g128, both slower per MAC than 8-bit
    assert c[3] == pytest.approx(c[2])  # g256 (not measured) takes the nearest group's term
    if pixel8.cpu.isa != "x86-64":  # measured on x86 only: AArch64 keeps the dense int8 term
        p = AnalyticCostModel(pixel8, "xnnpack", threads=1).predict(
            OpBatch.from_oplists([[w8, w4[128]]])).op_compute_s
        assert p[1] == pytest.approx(p[0])


def test_measured_gemv_efficiency_only_for_one_row_linears_on_its_isa(pixel8):
    host = AnalyticCostModel(load_device("host"), "xnnpack", threads=1)
    eff = host.backend.gemv_efficiency["x86-64"]["fp32"].value
    one = gemv(k=512, n=512)
    rows = Op("rows", OpKind.LINEAR, (4, 512), ((4, 512),), m=4, n=512, k=512,
              flops=2.0 * 4 * 512 * 512, weight_elems=512 * 512, out_channels=512)
    c = host.predict(OpBatch.from_oplists([[one, rows]])).op_compute_s
    if host.device.cpu.isa == "x86-64":
        peak = host.assumptions["peak_flops_per_s"]["fp32"]
        assert c[0] == pytest.approx(one.flops / (peak * eff))
    assert c[1] != pytest.approx(rows.flops / (host.assumptions["peak_flops_per_s"]["fp32"] * eff))
    if pixel8.cpu.isa != "x86-64":  # not measured there: the derived terms
        p = AnalyticCostModel(pixel8, "xnnpack", threads=1)
        ok = p.predict(OpBatch.from_oplists([[one]])).op_compute_s[0]
        assert ok != pytest.approx(one.flops / (p.assumptions["peak_flops_per_s"]["fp32"] * eff))
