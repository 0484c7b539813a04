"""`codesign predict` and `codesign devices` end to end, bad input included (exit 2, one line)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codesign.cli import main
from codesign.userinput import BadInput, parse_budget, parse_shape
from tests.cli_helpers import assert_bad_input_exits_2

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "codesign.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_predict_json_contract(capsys):
    code = main(["predict", "--device", "pixel8", "--model", "tests.models:small_convnet",
                 "--input-shape", "1,3,32,32", "--backend", "xnnpack", "--threads", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "pixel8" and out["backend"] == "xnnpack"
    assert out["assumptions"]["threads"] == 2
    assert out["latency_s"] == pytest.approx(sum(layer["latency_s"] for layer in out["layers"]))
    for layer in out["layers"]:
        assert set(layer) >= {"name", "kind", "latency_s", "bound", "flops", "bytes"}
        assert layer["bound"] in ("compute", "memory", "overhead")
    assert {layer["name"] for layer in out["layers"]} >= {"conv1", "conv2", "fc"}


def test_predict_table_mentions_every_kernel(capsys):
    assert main(["predict", "--device", "host", "--model", "tests.models:small_convnet",
                 "--input-shape", "1,3,32,32", "--dtype", "int8", "--backend", "xnnpack"]) == 0
    text = capsys.readouterr().out
    assert "predicted latency:" in text and "conv1" in text and "w8a8" in text
    assert "time by bound:" in text


@pytest.mark.parametrize("args, message", [
    (["--device", "pixel9"], "unknown device 'pixel9'; valid: "),
    (["--backend", "tflite"], "has no back-end 'tflite'; valid: xnnpack, codesign"),
    (["--model", "nomodule_xyz:f"], "cannot import module 'nomodule_xyz'"),
    (["--model", "tests.models"], "must be MODULE:NAME"),
    (["--model", "tests.models:nothing"], "has no attribute 'nothing'"),
    (["--model", "tests.models:_make_divisible"], "the factory raised TypeError"),
    (["--input-shape", "1,3,x,32"], "comma-separated positive integers"),
    (["--input-shape", "1,5,32,32"], "torch.export failed"),
    (["--dtype", "int4"], "unknown --dtype 'int4'; valid: fp32, fp16, int8"),
    (["--threads", "0"], "--threads must be an integer >= 1, got '0'"),
    (["--threads", "99"], "pixel8 has 9 cores"),
    (["--cost-model", "magic"], "unknown --cost-model 'magic'; valid: analytic, learned, hybrid"),
])
def test_predict_bad_input_exits_2_with_one_line(args, message, capsys):
    assert_bad_input_exits_2("predict", {"--device": "pixel8",
                                         "--model": "tests.models:small_convnet",
                                         "--input-shape": "1,3,32,32"}, args, message, capsys)


def test_bad_device_yaml_exits_2(tmp_path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\ncpu: [unclosed\n")
    assert main(["predict", "--device", str(bad), "--model", "tests.models:small_convnet",
                 "--input-shape", "1,3,32,32"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not valid YAML" in err


def test_devices_list_and_show(capsys):
    assert main(["devices"]) == 0
    listing = capsys.readouterr().out
    assert "pixel8" in listing and "host" in listing
    assert main(["devices", "show", "pixel8", "--json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["cpu"]["clusters"][0]["burst_hz"]["source"] in ("published", "reported")
    assert main(["devices", "show", "host"]) == 0
    assert "detected" in capsys.readouterr().out
    assert main(["devices", "show", "nope"]) == 2


def test_console_entry_point_help_and_usage_errors():
    code, out, _ = run_cli("--help")
    assert code == 0 and "predict" in out
    for cmd in ("predict", "devices", "bench"):
        code, out, _ = run_cli(cmd, "--help")
        assert code == 0 and "usage:" in out
    code, _, err = run_cli("predict", "--device", "pixel8")
    assert code == 2 and "required" in err and "Traceback" not in err


@pytest.mark.parametrize("text, seconds", [("10ms", 0.01), ("10 ms", 0.01), ("2.5ms", 0.0025),
                                           ("500us", 0.0005), ("0.01s", 0.01), ("1e1ms", 0.01)])
def test_budget_parsing(text, seconds):
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, message", [("10", "has no unit"), ("0ms", "positive"),
                                           ("-5ms", "negative"), ("10min", "unknown unit 'min'"),
                                           ("fast", "not a duration"), ("", "not a duration")])
def test_budget_bad(text, message):
    with pytest.raises(BadInput, match=message):
        parse_budget(text)


def test_shape_parsing():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    with pytest.raises(BadInput):
        parse_shape("1,-3")
