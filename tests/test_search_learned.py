"""`codesign search --cost-model learned|hybrid`: a saved model prices the search and says so.

Models are fitted by `codesign calibrate` on ``tests/data/host_mbconv_measured_40.csv`` (40 rows
of this project's host measurements, see tests/data/README.md); the accuracy is the proxy of
``tests/search_helpers.py`` so a search takes seconds."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from codesign.calibrate import calibrate
from codesign.cli import main
from codesign.cost_models.learned import LearnedCostModel

DATA = Path(__file__).parent / "data"
HOST = DATA / "host_mbconv_measured_40.csv"
PROXY = "tests.search_helpers:proxy_accuracy"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("learned", "hybrid"):
        out[kind] = root / f"host-xnnpack-{kind}.json"
        calibrate("mbconv", HOST, "host", None, 30, 0, out[kind], kind=kind, device="host")
    out["pixel3"] = root / "pixel3.json"
    calibrate("nasbench201", DATA / "nasbench201_latency_ms_600.csv", "pixel3",
              ["samsung_a50", "silver_4114"], 10, 0, out["pixel3"])
    return out


def _search(tmp_path, *extra: str) -> list[str]:
    return ["search", "--device", "host", "--backend", "xnnpack", "--budget", "2s",
            "--evaluator", PROXY, "--trials", "4", "--out", str(tmp_path / "run"), *extra]


def test_search_priced_by_a_learned_model(tmp_path, models, capsys) -> None:
    assert main(_search(tmp_path, "--cost-model", "learned", "--cost-model-file",
                        str(models["learned"]), "--json")) == 0
    pareto = json.loads(capsys.readouterr().out)
    assert pareto["cost_model"] == "learned"
    assert pareto["provenance"]["cost_model_file"] == str(models["learned"])
    model = LearnedCostModel.load(models["learned"])
    err = model.error_estimate
    assert pareto["provenance"]["cost_model_cv_rms_log_error"] == pytest.approx(err)
    from codesign.cost_models.backends import load_backend
    from codesign.cost_models.ir import OpBatch
    from codesign.search_spaces.mbconv import MBConvSpace

    space = MBConvSpace(load_backend("xnnpack"), threads_choices=(1,))
    assert pareto["members"]
    for member in pareto["members"]:
        assert member["threads"] == 1  # the thread count the model was measured at
        ops = space.to_ops(space.decode(member["params"]))
        expected = float(model.predict(OpBatch.from_oplists([ops])).latency_s[0])
        assert member["latency_s"] == pytest.approx(expected)
        lo, hi = member["latency_band_s"]
        assert (lo, hi) == pytest.approx((expected * math.exp(-err), expected * math.exp(err)))
    band = pareto["latency_band"]  # the band is the model's own cross-validated error
    assert band["fraction"] == pytest.approx(math.exp(err) - 1)
    assert band["lower_fraction"] == pytest.approx(1 - math.exp(-err))
    assert (band["source"], band["file"], band["devices"]) == \
        ("measured", str(models["learned"]), ["host"])
    assert "on its 30 measured training rows" in band["ref"]
    # the table says which model priced the front, and what its band is
    assert main(_search(tmp_path / "again", "--cost-model", "learned", "--cost-model-file",
                        str(models["learned"]))) == 0
    out = capsys.readouterr().out
    assert "cost model learned" in out
    assert (f"latency band: -{(1 - math.exp(-err)) * 100:.3g}%/+{(math.exp(err) - 1) * 100:.3g}% "
            "of the predicted latency, measured on host\n") in out
    assert f"  = {models['learned']} cost_model_cv_rms_log_error (measured): " in out


def test_hybrid_from_the_default_model_directory(tmp_path, models, capsys, monkeypatch) -> None:
    # the default model file: models/<device>-<backend>-<kind>.json in the cache directory
    default = tmp_path / "cache" / "models" / models["hybrid"].name
    default.parent.mkdir(parents=True)
    shutil.copy(models["hybrid"], default)
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(_search(tmp_path, "--cost-model", "hybrid", "--json")) == 0
    pareto = json.loads(capsys.readouterr().out)
    assert pareto["cost_model"] == "hybrid"
    assert pareto["provenance"]["cost_model_file"] == str(default)
    # the analytic search prices the same kind of candidates differently
    assert main(_search(tmp_path / "a", "--json")) == 0
    analytic = json.loads(capsys.readouterr().out)
    assert analytic["cost_model"] == "analytic" and "cost_model_file" not in \
        analytic["provenance"]


@pytest.mark.parametrize("extra, message", [
    (["--cost-model", "learned"], "no learned cost model for device host / back-end xnnpack: "
                                  "looked for"),
    (["--cost-model", "learned", "--cost-model-file", "/no/such.json"],
     "--cost-model-file: no such file /no/such.json"),
    (["--cost-model", "hybrid", "--cost-model-file", "{learned}"],
     "is a learned model, not a hybrid one"),
    (["--cost-model", "learned", "--cost-model-file", "{pixel3}"],
     "was fitted for device 'pixel3', not 'host'"),
    (["--cost-model", "learned", "--cost-model-file", "{learned}", "--backend", "codesign"],
     "was fitted on back-end 'xnnpack', this search uses 'codesign'"),
    (["--cost-model-file", "{learned}"], "--cost-model-file needs --cost-model learned or hybrid"),
    (["--cost-model", "lookup"], "unknown --cost-model 'lookup'; valid: analytic, learned, hybrid"),
    (["--cost-model", "learned", "--cost-model-file", "{corrupt}"], "cannot read a learned model"),
])
def test_bad_cost_model_input_exits_2(tmp_path, models, capsys, monkeypatch, extra,
                                      message) -> None:
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "empty"))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    paths = {**{k: str(v) for k, v in models.items()}, "corrupt": str(corrupt)}
    extra = [x.format(**paths) for x in extra]
    assert main(_search(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_calibrate_hybrid_needs_the_device(capsys) -> None:
    assert main(["calibrate", "--space", "mbconv", "--measurements", str(HOST), "--target",
                 "host", "--samples", "10", "--cost-model", "hybrid", "--json"]) == 2
    assert "--cost-model hybrid needs --device" in capsys.readouterr().err


def _predict(*extra: str) -> list[str]:
    return ["predict", "--device", "host", "--backend", "xnnpack", "--model",
            "tests.models:small_convnet", "--input-shape", "1,3,32,32", "--dtype", "int8", *extra]


def test_predict_priced_by_a_learned_model(models, capsys) -> None:
    from codesign.cost_models.backends import load_backend
    from codesign.cost_models.devices import load_device
    from codesign.cost_models.ir import OpBatch
    from codesign.cost_models.lowering import apply_precision, lower_module
    from tests.models import small_convnet

    assert main(_predict("--cost-model", "hybrid", "--cost-model-file", str(models["hybrid"]),
                         "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    model = LearnedCostModel.load(models["hybrid"])
    spec = load_backend("xnnpack")
    assert load_device("host").name == out["device"]
    ops = apply_precision(lower_module(small_convnet(), (1, 3, 32, 32)), spec, "int8")
    expected = float(model.predict(OpBatch.from_oplists([ops])).latency_s[0])
    assert out["latency_s"] == pytest.approx(expected)
    assert out["latency_s"] == pytest.approx(sum(layer["latency_s"] for layer in out["layers"]))
    a = out["assumptions"]
    assert a["cost_model"] == model.name and a["cost_model_file"] == str(models["hybrid"])
    assert a["threads"] == 1
    assert main(_predict("--cost-model", "hybrid", "--cost-model-file",
                         str(models["hybrid"]))) == 0
    assert f"priced by the {model.name} model {models['hybrid']}" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (("--cost-model", "learned", "--cost-model-file", "{pixel3}"),
     "was fitted for device 'pixel3', not 'host'"),
    (("--cost-model", "hybrid", "--cost-model-file", "{hybrid}", "--threads", "2"),
     "the model was measured at 1 thread(s), not 2"),
    (("--cost-model", "learned", "--cost-model-file", "{hybrid}"), "is a hybrid model"),
    (("--cost-model-file", "{hybrid}"), "--cost-model-file needs --cost-model learned or hybrid"),
])
def test_predict_refuses_a_model_that_does_not_fit(models, capsys, extra, message) -> None:
    argv = [x.format(**{k: str(v) for k, v in models.items()}) for x in extra]
    assert main(_predict(*argv)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_predictor_stage_prices_with_the_searchs_learned_model(tmp_path, models) -> None:
    """The predictor-guided stage filters its proposals by the latency the search's own cost
    model predicts (it priced them with the analytic model before, whatever --cost-model)."""
    import numpy as np

    from codesign.context import build_context
    from codesign.predictor_stage import _price
    from codesign.search import SearchConfig

    context = build_context(SearchConfig(
        device="host", backend="xnnpack", budget_s=2.0, budget_text="2s", evaluator=PROXY,
        cost_model="learned", cost_model_file=models["learned"], out=tmp_path / "run",
        progress=False))
    rng = np.random.default_rng(0)
    candidates = [context.space.decode(context.space.sample(rng)) for _ in range(4)]
    latency, _ = _price(context, candidates)
    # the same model, batched vs one at a time: equal up to the summation order of the
    # feature products (BLAS picks other kernels for 1 row than for 4)
    assert latency.tolist() == pytest.approx([context.price(c).latency_s for c in candidates],
                                             rel=1e-12)
    assert context.cost_model(1) is context.cost_models.fitted.model
    with pytest.raises(ValueError, match="measured at 1 thread"):
        context.cost_model(2)
