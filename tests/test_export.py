"""codesign export: members become .pte/.pt2 programs that run on ExecuTorch's runtime."""
from __future__ import annotations

import hashlib
import json
import math
import zipfile

import numpy as np
import pytest
import torch

from codesign.cli import main
from codesign.evaluation.supernet_evaluator import SupernetEvaluator
from codesign.export.plan import PT2E_INT8, TORCHAO_DYN, plan_layers
from codesign.export.program import owner_resolver
from codesign.export.run import export_run, format_results
from codesign.measure.host_runner import run_pte
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import OpBatch
from tests.export_helpers import SHAPE, TINY_TRAIN, small_space, write_run
from codesign.search_spaces.mbconv import Candidate, LayerChoice, units

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

XNN_SPACE = "tests.export_helpers:small_space"
MANIFEST_KEYS = {"params", "latency_s_predicted", "host_latency_s_measured", "max_abs_diff",
                 "host_latency_s_predicted", "host_prediction", "target_prediction",
                 "accuracy_exported", "precision_per_layer", "sha256", "device", "backend",
                 "budget_s", "memory", "status"}


def _params(space, seed: int, precision_of) -> dict:
    """A sampled architecture with each unit at ``precision_of(unit)``, as palette params."""
    arch = space.decode(space.sample(np.random.default_rng(seed))).arch
    layers = tuple(sorted((u, LayerChoice(precision_of(u))) for u in units(arch)))
    return space.encode(Candidate(arch, layers, 1))


def _member(evaluator, trial: int, params: dict) -> dict:
    candidate = evaluator.space.decode(params)
    test = evaluator.evaluate(candidate, split="test")
    return {"trial": trial, "params": params, "latency_s": 0.004, "threads": 1,
            "accuracy": evaluator.evaluate(candidate).accuracy, "test_accuracy": test.accuracy}


@pytest.fixture(scope="module")
def xnn_export(module_cache_dir, tmp_path_factory):
    space = small_space(load_backend("xnnpack"))
    ev = SupernetEvaluator(space, seed=0, train=TINY_TRAIN)
    fp32 = _params(space, 1, lambda unit: "w32a32")
    mixed = _params(space, 2, lambda unit: {"classifier": "w4a8-dyn", "stem": "w32a32"}.get(
        unit, "w8a8"))
    members = [_member(ev, 1, fp32), _member(ev, 2, mixed),
               {"trial": 3, "params": {"not": "a point of the space"}}]
    run_dir = write_run(tmp_path_factory.mktemp("run") / "xnn", XNN_SPACE, "xnnpack", members)
    results = export_run(run_dir, evaluator=ev)
    return ev, run_dir, {r.trial: r for r in results}


def test_every_good_member_is_exported_and_the_broken_one_reported(xnn_export):
    _, run_dir, results = xnn_export
    assert [results[t].status for t in (1, 2, 3)] == ["exported", "exported", "failed"]
    assert "missing params" in results[3].reason
    broken = json.loads((run_dir / "export" / "trial-3" / "manifest.json").read_text())
    assert broken["status"] == "failed" and "missing params" in broken["reason"]
    summary = json.loads((run_dir / "export" / "summary.json").read_text())
    assert [m["status"] for m in summary["members"]] == ["exported", "exported", "failed"]


@pytest.mark.parametrize("trial", [1, 2])
def test_manifest_keys_and_hashes(xnn_export, trial):
    _, run_dir, _ = xnn_export
    out = run_dir / "export" / f"trial-{trial}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(manifest)
    assert set(manifest["sha256"]) == {"model.pte", "model.pt2"}
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert manifest["host_latency_s_measured"] > 0
    assert manifest["memory"]["planned_constant_bytes"] > 0
    assert manifest["delegates"] == ["XnnpackBackend"] and manifest["undelegated_operators"] == []
    # the exported program scores what the search scored, within 2 points
    assert abs(manifest["accuracy_exported"] - manifest["accuracy_search_test"]) <= 0.02


@pytest.mark.parametrize("trial", [1, 2])
def test_host_prediction_sits_beside_the_host_measurement(xnn_export, trial):
    """The host measurement is set beside the host's own analytic prediction of the program
    (device host, XNNPACK, the measurement's thread count), the target's prediction apart."""
    ev, run_dir, results = xnn_export
    manifest = json.loads((run_dir / "export" / f"trial-{trial}" / "manifest.json").read_text())
    host = manifest["host_prediction"]
    assert (host["device"], host["backend"], host["cost_model"]) == ("host", "xnnpack",
                                                                     "analytic")
    assert host["threads"] == manifest["threads"] and "why_not" not in host
    ops = ev.space.to_ops(ev.space.decode(manifest["params"]))
    expected = AnalyticCostModel(load_device("host"), load_backend("xnnpack"),
                                 threads=host["threads"]).predict(OpBatch.from_oplists([ops]))
    assert manifest["host_latency_s_predicted"] > 0
    assert manifest["host_latency_s_predicted"] == pytest.approx(float(expected.latency_s[0]))
    assert manifest["latency_s_predicted"] == 0.004  # the search's pixel8 prediction, kept
    assert manifest["target_prediction"] == {"device": "pixel8", "backend": "xnnpack",
                                             "threads": 1, "cost_model": "analytic"}
    summary = json.loads((run_dir / "export" / "summary.json").read_text())
    [row] = [m for m in summary["members"] if m["trial"] == trial]
    assert row["host_latency_s_predicted"] == manifest["host_latency_s_predicted"]


def test_export_table_pairs_host_prediction_with_host_measurement(xnn_export):
    _, _, results = xnn_export
    groups, header, *rows = format_results([results[t] for t in (1, 2, 3)]).splitlines()
    host_group, target_group = [g.strip() for g in groups.split("|")[1:3]]
    assert host_group.startswith("host") and "pixel8" in target_group
    assert header.split("|")[1].split() == ["thr", "pred", "ms", "meas", "ms", "meas/pred"]
    assert header.split("|")[2].split() == ["thr", "pred", "ms"]
    m = results[1].manifest
    host_cells, target_cells = (rows[0].split("|")[i].split() for i in (1, 2))
    pred, meas = m["host_latency_s_predicted"], m["host_latency_s_measured"]
    assert host_cells == ["1", f"{pred * 1e3:.2f}", f"{meas * 1e3:.2f}", f"{meas / pred:.2f}"]
    assert target_cells == ["1", "4.00"]
    assert rows[2].split("|")[1].split() == ["-"] * 4  # the failed member measured nothing


def test_fp32_program_matches_eager_within_1e3(xnn_export):
    ev, run_dir, results = xnn_export
    out = run_dir / "export" / "trial-1"
    manifest = results[1].manifest
    assert manifest["output_check"]["within_tolerance"] and manifest["max_abs_diff"] < 1e-3
    model = ev.build_deployable(ev.space.decode(manifest["params"]))
    x = ev.data().x_test[5:6]
    got = run_pte((out / "model.pte").read_bytes(), [x])[0]
    torch.testing.assert_close(got, model(x), atol=1e-3, rtol=1e-3)
    # the .pt2 holds the same program
    loaded = torch.export.load(str(out / "model.pt2")).module()
    torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("trial", [1, 2])
def test_pt2_keeps_one_deploy_shaped_example_input(xnn_export, trial):
    """torch.export.save writes the program's example inputs into the archive: a batch-1 view
    of the test split used to carry the split's whole storage with it (282 MB beside an 11 MB
    .pte); one image is 4 x 3 x 32 x 32 bytes."""
    ev, run_dir, _ = xnn_export
    path = run_dir / "export" / f"trial-{trial}" / "model.pt2"
    with zipfile.ZipFile(path) as archive:
        [inputs] = [i.file_size for i in archive.infolist() if "sample_inputs/" in i.filename]
    assert inputs < 4 * math.prod(SHAPE) + 16 * 1024
    assert len(ev.data().x_test) > 1  # the split is larger than one image, so this can fail
    loaded = torch.export.load(str(path))
    [[example], _] = loaded.example_inputs
    assert tuple(example.shape) == SHAPE
    x = ev.data().x_test[5:6]
    out = loaded.module()(x)
    assert out.shape[0] == 1 and torch.isfinite(out).all()


def test_mixed_precision_survives_per_layer(xnn_export):
    ev, run_dir, results = xnn_export
    manifest = results[2].manifest
    per_layer = {p["name"]: p for p in manifest["precision_per_layer"]}
    assert per_layer["stem"]["xnnpack"] == "fp32"
    assert per_layer["classifier"]["xnnpack"] == TORCHAO_DYN
    assert per_layer["s0.b0.expand"]["xnnpack"] == PT2E_INT8
    check = manifest["output_check"]
    assert check["within_tolerance"] and check["max_diff_steps"] <= 2
    # int8 layers really are int8 in the program the .pte was lowered from
    graph = torch.export.load(str(run_dir / "export" / "trial-2" / "model.pt2")).graph
    targets = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets)
    # and the float stem is not: its conv reads the raw input
    owner = owner_resolver([p["name"] for p in manifest["precision_per_layer"]])
    exported = torch.export.load(str(run_dir / "export" / "trial-2" / "model.pt2"))
    stem_convs = [n for n in exported.graph.nodes if n.op == "call_function"
                  and "conv" in str(n.target) and owner(n) == "stem"]
    assert stem_convs and all("dequantize" not in str(a.target) for n in stem_convs
                              for a in n.args[:2] if isinstance(a, torch.fx.Node))


def test_codesign_member_gets_kernels_json_and_no_pte_when_xnnpack_cannot_run_it(module_cache_dir,
                                                                              tmp_path):
    space = small_space(load_backend("codesign"))
    ev = SupernetEvaluator(space, seed=0, train=TINY_TRAIN)
    # w4a8 (per-channel int4 weights, int8 activations): the project's int4 kernels run it,
    # XNNPACK has no 4-bit convolution
    params = _params(space, 4, lambda unit: "w4a8" if unit[1:2].isdigit() else "w32a32")
    run_dir = write_run(tmp_path / "cd", "tests.export_helpers:small_space", "codesign",
                        [_member(ev, 7, params)])
    [result] = export_run(run_dir, evaluator=ev)
    out = run_dir / "export" / "trial-7"
    assert result.status == "pt2-only" and not (out / "model.pte").exists()
    assert "w4a8" in result.reason
    manifest = json.loads((out / "manifest.json").read_text())
    why = {p["name"]: p.get("why_not") for p in manifest["precision_per_layer"]}
    assert why["stem"] is None and "w4a8" in why["s0.b0.expand"]
    kernels = json.loads((out / "kernels.json").read_text())["layers"]
    first = next(k for k in kernels if k["name"] == "s0.b0.expand")
    assert first["weight_bits"] == 4 and first["act_bits"] == 8 and first["gemm"]["k"] > 0
    assert first["reference_kernel"].startswith("codesign.kernels.conv_int8.conv2d_int8")
    dw = next(k for k in kernels if k["name"] == "s0.b0.dw")
    assert dw["reference_kernel"] == "codesign.kernels.conv_int8.depthwise_conv2d_int8"
    assert set(manifest["sha256"]) == {"kernels.json", "model.pt2"}
    # the .pt2 holds 4-bit weights: at most 16 distinct values per output channel
    program = torch.export.load(str(out / "model.pt2"))
    weight = program.state_dict["s0.b0.expand.weight"]
    assert max(len(torch.unique(row)) for row in weight.reshape(weight.shape[0], -1)) <= 16


def test_plan_refuses_to_round_precisions():
    xnnpack = load_backend("xnnpack")
    space = small_space(load_backend("codesign"))
    params = _params(space, 0, lambda unit: "w4a8" if unit == "stem" else "w32a32")
    plans = {p.name: p for p in plan_layers(space.to_ops(space.decode(params)), xnnpack)}
    assert plans["stem"].realisation is None and "w4a8" in plans["stem"].reason
    assert plans["s0.b0.expand"].realisation == "fp32"


def test_cli_export_exits_1_when_a_member_fails(tmp_path, capsys):
    run_dir = write_run(tmp_path / "bad", XNN_SPACE, "xnnpack",
                        [{"trial": 4, "params": {"nonsense": 1}}])
    assert main(["export", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "trial 4: failed" in err and "export failed for trial(s) 4" in err


def test_cli_export_bad_input(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "not a finished codesign run (no run.json)" in capsys.readouterr().err


def test_a_front_with_no_members_exports_nothing_and_succeeds(tmp_path, capsys):
    run_dir = write_run(tmp_path / "empty", XNN_SPACE, "xnnpack", [])
    assert main(["export", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"members": []}
