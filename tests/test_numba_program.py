"""codesign export --format numba / codesign run: codesign members run end to end on the
project's kernels, checked against the fake-quantized model the search scored."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from codesign.cli import main
from codesign.cost_models.backends import load_backend
from codesign.evaluation.supernet_evaluator import SupernetEvaluator
from codesign.export.numba_runtime import load_program
from codesign.export.run import export_run
from codesign.search_spaces.mbconv import Candidate, LayerChoice, MBConvSpace, units
from tests.export_helpers import TINY_TRAIN, small_config, write_run

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

SPACE = "tests.export_helpers:small_space"
ALL_FORMATS = {"w8a8", "w4a8", "fp32", "fp32+2:4", "fp32+block4x4", "fp32+csr"}


def _params(space, seed: int, choice_of) -> dict:
    arch = space.decode(space.sample(np.random.default_rng(seed))).arch
    layers = tuple(sorted((u, LayerChoice(*choice_of(u))) for u in units(arch)))
    return space.encode(Candidate(arch, layers, 1))


def _integer(unit: str) -> tuple[str, str]:
    # int8 and int4 weights side by side, stage by stage
    return ("w4a8" if unit[1:2] in ("1", "3") or unit == "feature" else "w8a8", "dense")


_SPARSE = {"s0": "2:4", "s1": "block4x4", "s2": "unstructured50", "s3": "2:4",
           "head": "block4x4", "feature": "unstructured75"}


def _float_sparse(unit: str) -> tuple[str, str]:
    return ("w32a32", _SPARSE.get(unit.split(".")[0], "dense"))


def _mixed(unit: str) -> tuple[str, str]:
    # fp32 and int8 layers alternate: every kind of precision boundary
    if unit in ("stem", "feature"):
        return ("w32a32", "dense")
    if unit in ("head", "classifier") or unit.endswith("b0"):
        return ("w8a8", "dense")
    return ("w32a32", "2:4")


@pytest.fixture(scope="module")
def numba_export(module_cache_dir, tmp_path_factory):
    space = MBConvSpace(load_backend("codesign"), threads_choices=(1,), config=small_config(),
                        max_formats=6)
    ev = SupernetEvaluator(space, seed=0, train=TINY_TRAIN)
    members = []
    for trial, choice in ((1, _integer), (2, _float_sparse), (3, _mixed)):
        params = _params(space, trial, choice)
        candidate = space.decode(params)
        members.append({"trial": trial, "params": params, "latency_s": 0.004, "threads": 1,
                        "accuracy": ev.evaluate(candidate).accuracy,
                        "test_accuracy": ev.evaluate(candidate, split="test").accuracy})
    run_dir = write_run(tmp_path_factory.mktemp("run") / "cd", SPACE, "codesign", members)
    results = export_run(run_dir, formats=("numba",), evaluator=ev)
    return ev, run_dir, {r.trial: r for r in results}


def _dir(run_dir, trial):
    return run_dir / "export" / f"trial-{trial}" / "numba"


def test_every_member_runs_and_matches_the_scored_model(numba_export):
    _, run_dir, results = numba_export
    formats = set()
    for trial, result in results.items():
        m = result.manifest
        assert result.status == "exported", result.reason
        num = m["numerics"]
        assert num["max_diff_steps"] <= 1.0 and num["top1_agreement"] >= 0.995
        assert num["n_images"] > 100  # the whole test split
        assert m["accuracy_exported"] == num["accuracy_program"]
        formats |= set(m["layer_formats"])
    assert ALL_FORMATS <= formats


def test_an_integer_chain_is_bit_exact(numba_export):
    """int8 layers accumulate exact integer levels in both the program and the scored model.
    While the fake quantization accumulated rounded float products (and a symmetric tensor
    could get zero point 127), an all-w8a8 member of the 10 ms host search differed from its
    program by 3 output steps (18 of 359 test images over one step)."""
    _, _, results = numba_export
    m = results[1].manifest
    assert set(m["layer_formats"]) == {"w8a8", "w4a8"}
    assert m["max_abs_diff"] == 0.0 and m["top1_agreement"] == 1.0


def test_program_files_are_plain_data_with_hashes(numba_export):
    _, run_dir, results = numba_export
    out = _dir(run_dir, 3)
    plan = json.loads((out / "program.json").read_text())
    assert plan["format"] == "codesign-numba-program/1" and plan["input_shape"] == [1, 3, 32, 32]
    names = [layer["name"] for layer in plan["layers"]]
    assert "input:quantize8" not in names and any(n.endswith(":quantize8") for n in names)
    for layer in plan["layers"]:
        if layer["op"] in ("conv2d", "linear") and layer["format"] in ("w8a8", "w4a8", "fp32"):
            assert layer["tile_run"] is not None and layer["kernel"].startswith("codesign.kernels")
    # safetensors: an 8-byte header length then JSON, no pickle opcodes
    raw = (out / "weights.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert any(k.endswith("/bias") for k in header)
    m = results[3].manifest
    for name, digest in m["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert set(m["sha256"]) == {"program.json", "weights.safetensors", "check.safetensors"}


def test_manifest_puts_the_measurement_beside_the_host_prediction(numba_export):
    _, _, results = numba_export
    for result in results.values():
        m = result.manifest
        assert m["host_latency_s_measured"] > 0 and m["host_latency_repeats"] == 30
        assert m["host_latency_s_predicted"] > 0
        assert m["host_prediction"]["backend"] == "codesign"
        assert m["host_prediction"]["threads"] == m["threads"] == 1


def test_loaded_program_reproduces_the_scored_model(numba_export):
    ev, run_dir, _ = numba_export
    program = load_program(_dir(run_dir, 2))
    x = ev.data().x_test[:8]
    candidate = ev.space.decode(json.loads(
        (_dir(run_dir, 2) / "manifest.json").read_text())["params"])
    with torch.no_grad():
        ref = ev.executor(candidate)(x).numpy()
    out = program(x.numpy())
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)  # fp32 + sparse: float rounding


def test_cli_run_times_and_checks(numba_export, capsys):
    _, run_dir, _ = numba_export
    code = main(["run", str(_dir(run_dir, 1)), "--json", "--warmup", "1", "--repeats", "3"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["host_latency_s_measured"] > 0 and result["timing"]["repeats"] == 3
    assert result["timing"]["clock"] == "cpu" and result["check"]["max_diff_steps"] == 0.0
    assert result["host_latency_s_predicted"] > 0
    assert main(["run", str(_dir(run_dir, 1)), "--repeats", "2"]) == 0
    text = capsys.readouterr().out
    assert "latency p50" in text and "host prediction" in text and "output steps" in text


def _broken(run_dir, tmp_path, edit):
    import shutil

    dst = tmp_path / "prog"
    shutil.copytree(_dir(run_dir, 1), dst)
    edit(dst)
    return dst


def _drop_weights_key(d):
    plan = json.loads((d / "program.json").read_text())
    plan["layers"][1]["weights"]["packed"] = "no/such/tensor"
    (d / "program.json").write_text(json.dumps(plan))


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "program.json").unlink(), "not a numba program (no program.json)"),
    (lambda d: (d / "program.json").write_text("{oops"), "program.json: not valid JSON"),
    (lambda d: (d / "program.json").write_text('{"format": "v0"}'), "format 'v0', expected"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"12345678junk"), "unreadable"),
    (_drop_weights_key, "tensor 'no/such/tensor' missing from weights.safetensors"),
])
def test_malformed_program_exits_2_with_one_line(numba_export, tmp_path, capsys, edit, message):
    _, run_dir, _ = numba_export
    program = _broken(run_dir, tmp_path, edit)
    assert main(["run", str(program), "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_run_of_a_missing_directory_and_bad_threads(tmp_path, capsys, numba_export):
    _, run_dir, _ = numba_export
    assert main(["run", str(tmp_path / "nowhere")]) == 2
    assert "no such program directory" in capsys.readouterr().err
    assert main(["run", str(_dir(run_dir, 1)), "--threads", "100000"]) == 2
    assert "--threads 100000: numba runs 1 to" in capsys.readouterr().err


def test_numba_format_refuses_xnnpack_runs(tmp_path, capsys):
    run_dir = write_run(tmp_path / "x", SPACE, "xnnpack", [])
    assert main(["export", str(run_dir), "--format", "numba"]) == 2
    assert "numba programs run members of the codesign back-end" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "numba,pte"]) == 2
    assert "or numba alone" in capsys.readouterr().err
