"""`codesign calibrate --device PATH.yaml`: a hybrid for a phone that is not in the catalog."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from codesign.cli import main
from codesign.cost_models.devices import CONFIG_DIR
from codesign.cost_models.learned import LearnedCostModel

DATA = Path(__file__).parent / "data"
HOST = DATA / "host_mbconv_measured_40.csv"


def _calibrate(device: str, save: Path) -> list[str]:
    return ["calibrate", "--space", "mbconv", "--measurements", str(HOST), "--target", "host",
            "--samples", "10", "--seed", "0", "--cost-model", "hybrid", "--device", device,
            "--save", str(save), "--json"]


def _phone(tmp_path: Path, name: str, clock_factor: float = 1.0) -> Path:
    """pixel8's file under another name (a phone the catalog lacks), clocks scaled."""
    data = yaml.safe_load((CONFIG_DIR / "devices" / "pixel8.yaml").read_text())
    data["name"] = name
    for cluster in data["cpu"]["clusters"]:
        for key in ("sustained_hz", "burst_hz"):
            cluster[key]["value"] *= clock_factor
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_hybrid_from_a_device_yaml_path(tmp_path, capsys) -> None:
    twin = _phone(tmp_path, "pixel8-twin")
    assert main(_calibrate(str(twin), tmp_path / "twin.json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cost_model"] == "hybrid" and result["shrink_prior"] == "total.latency_s"
    model = LearnedCostModel.load(tmp_path / "twin.json")
    assert model.config.device == str(twin.resolve())  # the saved model finds its file again
    assert model.target_info["device"] == "pixel8-twin"
    assert model.featurizer.analytic.device.name == "pixel8-twin"
    # the same numbers as the catalog's pixel8: the same features, the same fit
    assert main(_calibrate("pixel8", tmp_path / "pixel8.json")) == 0
    capsys.readouterr()
    ref = LearnedCostModel.load(tmp_path / "pixel8.json")
    assert ref.config.device == "pixel8"
    d_twin, d_ref = model.training["design"], ref.training["design"]
    np.testing.assert_allclose(d_twin.target_basis, d_ref.target_basis, rtol=1e-12)
    # a phone with other clocks has other analytic terms: the file is what priced the features
    slow = _phone(tmp_path, "pixel8-slow", clock_factor=0.5)
    assert main(_calibrate(str(slow), tmp_path / "slow.json")) == 0
    capsys.readouterr()
    d_slow = LearnedCostModel.load(tmp_path / "slow.json").training["design"]
    assert np.all(d_slow.target_basis.sum(axis=1) > 1.2 * d_ref.target_basis.sum(axis=1))


@pytest.mark.parametrize("device, message", [
    ("/nonexistent/phone.yaml", "/nonexistent/phone.yaml: no such device file"),
    ("pixel99", "unknown device 'pixel99'; valid: "),
])
def test_bad_device_is_exit_2_one_line(tmp_path, capsys, device, message) -> None:
    assert main(_calibrate(device, tmp_path / "m.json")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.json").exists()


def test_invalid_device_yaml_is_exit_2_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\ncpu: [1, 2\n")
    assert main(_calibrate(str(bad), tmp_path / "m.json")) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and len(err.splitlines()) == 1


def test_search_prices_with_a_hybrid_fitted_on_a_device_file(tmp_path, capsys) -> None:
    twin = _phone(tmp_path, "pixel8-twin")
    assert main(_calibrate(str(twin), tmp_path / "twin.json")) == 0
    capsys.readouterr()
    assert main(["search", "--device", str(twin), "--backend", "xnnpack", "--budget", "2s",
                 "--evaluator", "tests.search_helpers:proxy_accuracy", "--trials", "3",
                 "--out", str(tmp_path / "run"), "--cost-model", "hybrid",
                 "--cost-model-file", str(tmp_path / "twin.json"), "--json"]) == 0
    pareto = json.loads(capsys.readouterr().out)
    assert pareto["cost_model"] == "hybrid" and pareto["members"]
