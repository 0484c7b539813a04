"""Per-op fixed costs, portable kernels and measured efficiencies in the analytic model (issue 19)."""
import dataclasses

import numpy as np
import pytest

from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import MeasuredOn, load_backend, parse_backend
from codesign.cost_models.devices import SpecError, Sourced, load_device, load_yaml
from codesign.cost_models.ir import Op, OpBatch, OpKind

from tests.test_analytic import conv, elementwise_add


def _s(value):
    return Sourced(value, "measured", "test")


REF = MeasuredOn(clock_hz=4.0e9, decode_width=4, core="x86-64",
                 provenance={"command": "c", "date": "d", "host": "h", "load": "l"})


def _backend(**changes):
    return dataclasses.replace(load_backend("xnnpack"), **changes)


def where_op(elems, aten="aten.where.self"):
    return Op("sel", OpKind.ELEMENTWISE, (elems,), ((elems,),), flops=float(elems), aten=aten)


@pytest.fixture(scope="module")
def pixel8():
    return load_device("pixel8")


def test_fixed_cost_scale_by_clock_and_core_class(pixel8):
    b = _backend(fixed_costs_measured_on=REF)
    big = pixel8.cpu.clusters[0]
    assert b.fixed_cost_scale(big) == pytest.approx(4.0e9 / big.sustained_hz.value)
    for cluster in pixel8.cpu.clusters:
        u = cluster.uarch
        expect = 4.0e9 / cluster.sustained_hz.value
        if u is not None and not u.out_of_order:  # Cortex-A520: in-order
            expect *= 4 / u.decode_width.value
        assert b.fixed_cost_scale(cluster) == pytest.approx(expect)
    assert any(c.uarch is not None and not c.uarch.out_of_order for c in pixel8.cpu.clusters)
    assert _backend(fixed_costs_measured_on=None).fixed_cost_scale(big) == 1.0


def test_program_overhead_charged_once_per_candidate(pixel8):
    plain = AnalyticCostModel(pixel8, _backend(program_overhead_s=None), threads=1)
    with_p = AnalyticCostModel(pixel8, _backend(program_overhead_s=_s(1e-5),
                                                fixed_costs_measured_on=REF), threads=1)
    lists = [[conv()], [elementwise_add(1000), conv(), elementwise_add(10)]]
    a = plain.predict(OpBatch.from_oplists(lists))
    b = with_p.predict(OpBatch.from_oplists(lists))
    # the dispatch term is carried too, so compare the difference to the carried program cost
    scale = with_p.backend.fixed_cost_scale(with_p.cores[0])
    extra_dispatch = np.array([1, 3]) * pixel8_dispatch(with_p, plain)
    np.testing.assert_allclose(b.latency_s - a.latency_s, 1e-5 * scale + extra_dispatch)
    np.testing.assert_allclose(np.bincount(b.candidate, b.op_latency_s), b.latency_s)


def pixel8_dispatch(carried, plain):
    return carried._dispatch_s - plain._dispatch_s


def test_portable_op_priced_at_its_rate_on_one_thread(pixel8):
    b = _backend(portable_ops={"aten.where.self": "select"},
                 portable_rates={"select": (_s(2e-6), _s(3e-9))}, fixed_costs_measured_on=REF,
                 program_overhead_s=None)
    scale = b.fixed_cost_scale(pixel8.cpu.clusters[0])
    n = 200_000
    for threads in (1, 4):
        model = AnalyticCostModel(pixel8, b, threads=threads)
        pred = model.predict(OpBatch.from_oplists([[where_op(n)], [where_op(n, aten="")]]))
        assert pred.latency_s[0] == pytest.approx((2e-6 + 3e-9 * n) * scale)
        # the same op run by the back-end's own kernel is priced by the roofline instead
        assert pred.latency_s[1] != pytest.approx(pred.latency_s[0])


def test_sdpa_decomposition_names_its_portable_kernels():
    import torch

    from codesign.cost_models.lowering import lower_module

    class Attn(torch.nn.Module):
        def forward(self, x):
            mask = torch.ones(8, 8, dtype=torch.bool).tril()
            return torch.nn.functional.scaled_dot_product_attention(x, x, x, attn_mask=mask)

    ops = lower_module(Attn(), (1, 2, 8, 16))
    atens = {op.name.rsplit(".", 1)[-1]: op.runtime_op for op in ops}
    assert atens["mask_values"] == "aten.where.self"
    assert atens["masked"] == "aten.eq.Scalar"
    assert atens["masked_rows"] == "aten.any.dim"
    assert atens["safe_softmax"] == "aten.where.self"
    assert atens["scores"].startswith("aten.scaled_dot_product_attention")


def test_measured_efficiency_applies_on_its_isa_only(pixel8):
    table = {"aarch64": {OpKind.CONV2D: {"fp32": _s(0.35)}}}
    base = AnalyticCostModel(pixel8, _backend(measured_efficiency=None), threads=1)
    meas = AnalyticCostModel(pixel8, _backend(measured_efficiency=table), threads=1)
    other = AnalyticCostModel(pixel8, _backend(measured_efficiency={"x86-64": table["aarch64"]}),
                              threads=1)
    batch = OpBatch.from_oplists([[conv()]])
    a, b, c = (m.predict(batch) for m in (base, meas, other))
    # compute-bound: time = FLOPs / (peak x 0.35 x edge utilisation x spill)
    peak = meas._cum_peak[0, 0]
    assert b.op_compute_s[0] == pytest.approx(2.0 * 3136 * 128 * 576 / (peak * 0.35), rel=0.02)
    assert c.latency_s[0] == a.latency_s[0]


def test_portable_table_errors_name_the_field(tmp_path):
    from codesign.cost_models.devices import CONFIG_DIR

    data, _ = load_yaml(CONFIG_DIR / "backends" / "xnnpack.yaml")
    data = dict(data)
    data["portable_kernels"] = {"ops": {"aten.where.self": "nope"},
                                "rates": {"select": {"fixed_s": {"value": 1e-6, "source": "measured"},
                                                     "per_elem_s": {"value": 1e-9,
                                                                    "source": "measured"}}}}
    with pytest.raises(SpecError, match="unknown rate class 'nope'"):
        parse_backend(data, "x.yaml")
    data["portable_kernels"]["ops"] = {"aten.where.self": "select"}
    data["fixed_costs_measured_on"] = {"clock_hz": {"value": 4e9, "source": "measured"},
                                       "decode_width": {"value": 4, "source": "estimated",
                                                        "ref": "x"},
                                       "core": "x86-64", "provenance": {"command": "c"}}
    with pytest.raises(SpecError, match="date"):
        parse_backend(data, "x.yaml")


def _threading(scaling=2.0, points=((1e5, 0.0), (1e6, 0.0))):
    from codesign.cost_models.backends import ThreadingTerms

    return {"aarch64": ThreadingTerms(_s(scaling), tuple(points), "test")}


def test_program_handoff_charged_once_at_two_threads_by_io_bytes(pixel8):
    points = ((1e5, 1e-6), (1e6, 5e-5))
    plain = {t: AnalyticCostModel(pixel8, _backend(measured_threading=None), threads=t)
             for t in (1, 2)}
    hand = {t: AnalyticCostModel(pixel8, _backend(measured_threading=_threading(points=points)),
                                 threads=t) for t in (1, 2)}
    # fp32 adds: the program reads 2 x 4 x 50000 bytes and writes the last op's 4 x 50000
    lists = [[elementwise_add(50_000), elementwise_add(50_000)], [elementwise_add(10)]]
    batch = OpBatch.from_oplists(lists)
    a1, b1 = plain[1].predict(batch), hand[1].predict(batch)
    np.testing.assert_allclose(b1.latency_s, a1.latency_s)
    a2, b2 = plain[2].predict(batch), hand[2].predict(batch)
    scale = hand[2].backend.fixed_cost_scale(hand[2].cores[0])
    io = np.array([3 * 4 * 50_000, 3 * 4 * 10])
    expected = np.interp(io, [1e5, 1e6], [1e-6, 5e-5]) * scale
    np.testing.assert_allclose(b2.latency_s - a2.latency_s, expected, rtol=1e-9)
    np.testing.assert_allclose(np.bincount(b2.candidate, b2.op_latency_s), b2.latency_s)


def test_stream_scaling_slows_two_thread_streaming_within_l2_only(pixel8):
    ideal = AnalyticCostModel(pixel8, _backend(measured_threading=None), threads=2)
    meas = AnalyticCostModel(pixel8, _backend(measured_threading=_threading(scaling=0.8)),
                             threads=2)
    small, big = elementwise_add(20_000), elementwise_add(2_000_000)  # 240 KB vs 24 MB moved
    a, b = (m.predict(OpBatch.from_oplists([[small], [big]])) for m in (ideal, meas))
    assert 3 * 4 * 20_000 <= meas._l2 < 3 * 4 * 2_000_000
    assert b.op_memory_s[0] == pytest.approx(a.op_memory_s[0] * 2.0 / 0.8)
    assert b.op_memory_s[1] == pytest.approx(a.op_memory_s[1])


def test_shipped_threading_terms_parse_and_bad_points_name_the_field():
    from codesign.cost_models.devices import CONFIG_DIR

    shipped = load_backend("xnnpack").measured_threading["x86-64"]
    assert 0 < shipped.stream_scaling.value < 2 and len(shipped.handoff) >= 3
    assert list(shipped.handoff) == sorted(shipped.handoff)
    data, _ = load_yaml(CONFIG_DIR / "backends" / "xnnpack.yaml")
    data = dict(data)
    data["measured_threading"] = {"x86-64": {"stream_scaling": {"value": 0.8,
                                                                "source": "measured"},
                                             "handoff": {"ref": "r", "points": [[1, 2, 3]]}}}
    with pytest.raises(SpecError, match="points"):
        parse_backend(data, "x.yaml")
