"""Tests for codesign.measure: lowering to .pte, host timing, Measurement records, model zoo."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from codesign.measure.records import SCHEMA_VERSION, RuntimeHost, Measurement, summarize_samples

_SHAPE = (1, 3, 16, 16)


def _tiny_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


@pytest.fixture(scope="module")
def model_and_input() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    return _tiny_conv(), (torch.randn(_SHAPE, generator=gen),)


@pytest.fixture(scope="module")
def fp32_pte(model_and_input) -> bytes:
    from codesign.measure.pte import lower_to_pte

    module, inputs = model_and_input
    return lower_to_pte(module, inputs, precision="fp32")


@pytest.fixture(scope="module")
def int8_pte(model_and_input) -> bytes:
    from codesign.measure.pte import lower_to_pte

    module, inputs = model_and_input
    gen = torch.Generator().manual_seed(2)
    calibration = [(torch.randn(_SHAPE, generator=gen),) for _ in range(3)]
    return lower_to_pte(module, inputs, precision="int8", calibration_inputs=calibration)


# ---------------------------------------------------------------- lowering


@pytest.mark.slow
def test_lower_fp32_and_int8_produce_xnnpack_programs(fp32_pte: bytes, int8_pte: bytes) -> None:
    from codesign.measure.pte import delegate_backends, planned_memory, undelegated_operators

    for pte in (fp32_pte, int8_pte):
        assert isinstance(pte, bytes) and len(pte) > 0
        assert delegate_backends(pte) == ("XnnpackBackend",)
        assert undelegated_operators(pte) == ()
        mem = planned_memory(pte)
        assert mem.constant_bytes > 0 and mem.non_constant_bytes > 0
        assert mem.total_bytes == mem.constant_bytes + mem.non_constant_bytes
    assert fp32_pte != int8_pte


def test_bad_precision_raises_value_error(model_and_input) -> None:
    from codesign.measure.pte import lower_to_pte

    module, inputs = model_and_input
    with pytest.raises(ValueError, match=r"unsupported precision 'fp16'; expected one of fp32, int8"):
        lower_to_pte(module, inputs, precision="fp16")


def test_lowering_rejects_bad_inputs(model_and_input) -> None:
    from codesign.measure.pte import lower_to_pte

    module, inputs = model_and_input
    with pytest.raises(TypeError, match="non-empty tuple"):
        lower_to_pte(module, [inputs[0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one batch"):
        lower_to_pte(module, inputs, precision="int8", calibration_inputs=[])


@pytest.mark.slow
def test_lowering_restores_training_flags(model_and_input) -> None:
    from codesign.measure.pte import lower_to_pte

    _, inputs = model_and_input
    module = _tiny_conv().train()
    module[1].eval()  # a mixed state must survive as-is
    lower_to_pte(module, inputs)
    assert module.training and module[0].training and not module[1].training


def test_planned_memory_rejects_empty() -> None:
    from codesign.measure.pte import planned_memory

    with pytest.raises(ValueError, match="non-empty"):
        planned_memory(b"")


# ------------------------------------------------------------------ running


def _pte_and_eager(pte: bytes, model_and_input) -> tuple[torch.Tensor, torch.Tensor]:
    """(the program's output, the eager module's) on the same input, one thread."""
    from codesign.measure.host_runner import run_pte

    module, inputs = model_and_input
    with torch.no_grad():
        expected = module(*inputs)
    (got,) = run_pte(pte, inputs, threads=1)
    return got, expected


@pytest.mark.slow
def test_fp32_pte_matches_eager(fp32_pte: bytes, model_and_input) -> None:
    got, expected = _pte_and_eager(fp32_pte, model_and_input)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_int8_pte_is_close_to_eager(int8_pte: bytes, model_and_input) -> None:
    got, expected = _pte_and_eager(int8_pte, model_and_input)
    # Quantization error, not a bit-exact match: bound it relative to the output scale.
    assert float((got - expected).abs().max()) <= 0.1 * float(expected.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_time_pte_returns_sane_measurement(precision: str, fp32_pte: bytes, int8_pte: bytes,
                                           model_and_input) -> None:
    from codesign.measure.host_runner import time_pte

    pte = fp32_pte if precision == "fp32" else int8_pte
    _, inputs = model_and_input
    m = time_pte(pte, inputs, threads=1, warmup=2, repeats=10, name="tiny", precision=precision)
    assert isinstance(m, Measurement)
    assert m.p50_s > 0 and m.p90_s >= m.p50_s >= m.min_s > 0
    assert m.first_run_s > 0 and m.load_s > 0
    assert m.n_repeats == len(m.samples_s) == 10 and m.n_warmup == 2
    assert (m.threads, m.backend, m.precision, m.name) == (1, "xnnpack", precision, "tiny")
    assert m.extra_dict["input_shapes"] == "1x3x16x16"
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.mark.slow
def test_time_pte_validates_arguments(fp32_pte: bytes, model_and_input) -> None:
    from codesign.measure.host_runner import time_pte

    _, inputs = model_and_input
    with pytest.raises(ValueError, match="threads"):
        time_pte(fp32_pte, inputs, threads=0)
    with pytest.raises(ValueError, match="repeats"):
        time_pte(fp32_pte, inputs, threads=1, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        time_pte(fp32_pte, inputs, threads=1, warmup=-1)
    with pytest.raises(ValueError, match="shape"):
        time_pte(fp32_pte, (torch.randn(1, 3, 8, 8),), threads=1)
    with pytest.raises(ValueError, match="takes 1 inputs"):
        time_pte(fp32_pte, inputs + inputs, threads=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        time_pte(fp32_pte, (inputs[0].numpy(),), threads=1)  # type: ignore[arg-type]


# ------------------------------------------------------------------ records


def _measurement(**overrides) -> Measurement:
    kwargs = dict(name="m", backend="xnnpack", precision="fp32", threads=2,
                  samples_s=[2e-3, 1e-3, 3e-3, 1.5e-3], first_run_s=5e-3, load_s=1e-2, n_warmup=3,
                  host=RuntimeHost.current(), extra={"input_shapes": "1x3x32x32"})
    kwargs.update(overrides)
    return Measurement.from_samples(**kwargs)


def test_measurement_json_round_trip() -> None:
    m = _measurement()
    text = json.dumps(m.to_dict())
    back = Measurement.from_dict(json.loads(text))
    assert back == m
    assert back.to_dict() == m.to_dict()
    assert back.to_dict()["schema_version"] == SCHEMA_VERSION
    assert hash(back) == hash(m)  # frozen and built from hashable parts


def test_measurement_summary_values() -> None:
    m = _measurement()
    assert m.p50_s == pytest.approx(1.75e-3)
    assert m.p90_s == pytest.approx(2.7e-3)  # linear interpolation, like numpy's default
    assert m.min_s == 1e-3 and m.mean_s == pytest.approx(1.875e-3)
    assert m.samples_s == (2e-3, 1e-3, 3e-3, 1.5e-3)  # kept in measurement order
    with pytest.raises(AttributeError):
        m.p50_s = 1.0  # type: ignore[misc]


def test_measurement_validation() -> None:
    with pytest.raises(ValueError, match="threads"):
        _measurement(threads=0)
    with pytest.raises(ValueError, match="at least one"):
        _measurement(samples_s=[])
    with pytest.raises(ValueError, match="finite"):
        _measurement(samples_s=[1e-3, math.nan])
    with pytest.raises(ValueError, match="first_run_s"):
        _measurement(first_run_s=0.0)


def test_measurement_from_dict_is_strict() -> None:
    d = _measurement().to_dict()
    with pytest.raises(ValueError, match="schema_version"):
        Measurement.from_dict({**d, "schema_version": 99})
    with pytest.raises(ValueError, match="unknown keys"):
        Measurement.from_dict({**d, "p99_s": 1.0})
    missing = dict(d)
    del missing["p90_s"]
    with pytest.raises(ValueError, match="missing keys"):
        Measurement.from_dict(missing)


def test_host_info_describes_this_machine() -> None:
    host = RuntimeHost.current()
    assert host.cpu_model and host.logical_cores >= 1 and 1 <= host.usable_cores <= host.logical_cores
    assert host.torch_version.split("+")[0] == torch.__version__.split("+")[0]
    assert RuntimeHost.from_dict(host.to_dict()) == host


def test_summarize_samples_single_value() -> None:
    stats = summarize_samples([4e-3])
    assert stats["p50_s"] == stats["p90_s"] == stats["min_s"] == 4e-3 and stats["stdev_s"] == 0.0


# --------------------------------------------------------------------- zoo


def test_zoo_is_large_deterministic_and_runs() -> None:
    from benchmarks.host_models import MODELS, build, example_input

    assert len(MODELS) >= 36
    state = torch.random.get_rng_state()
    for name in MODELS:
        module, shape = build(name)
        assert not module.training, name
        with torch.no_grad():
            out = module(example_input(shape))
        assert out.shape[0] == shape[0] and torch.isfinite(out).all(), name
    # Building models must not consume or reseed the caller's RNG stream.
    assert torch.equal(torch.random.get_rng_state(), state)
    first, _ = build("mlp_64x2")
    second, _ = build("mlp_64x2")
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(KeyError, match="unknown model"):
        build("no_such_model")


def test_runtime_and_kernel_host_records_name_the_cpu_alike():
    """One /proc/cpuinfo reader (codesign.kernels.bench_harness.cpu_model) serves both records."""
    from codesign.kernels.bench_harness import host_info

    assert RuntimeHost.current().cpu_model == host_info().cpu_model != ""
