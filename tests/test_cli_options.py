"""The command line's options: one integer rule and one duration rule for every subcommand,
shared options declared once, and the same options listed as before the parser was split."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from codesign.bundle import etdump_execution_ms, parse_runner_log
from codesign.calibrate import read_measurements
from codesign.cli import main
from codesign.cli_options import OptionType
from codesign.cli_parser import build_parser
from codesign.userinput import BadInput, SEED_MAX, parse_duration, parse_int

PHONE_RESULTS = Path(__file__).parent / "data" / "phone_results"

# every subcommand's options as they were before the split ("!" required), recorded from it
OPTIONS_BEFORE = {
    # issue 18: --input-shape optional beside the causal-LM phase options
    "predict": "--device! --model! --input-shape --dtype --phase --prompt-len --context "
               "--weight-bits --group-size --threads --backend --cost-model "
               "--cost-model-file --json",
    "search": "--device! --budget! --ttft-budget --backend --space --trials --timeout --seed "
              "--sampler --cost-model --cost-model-file --workers --ray-address --evaluator "
              "--baseline --out --resume --json --export --no-progress --min-accuracy "
              "--max-formats --predictor-trials --finetune-steps --task --threads",
    "calibrate": "--space! --measurements! --target! --prior-columns --samples! --seed --save "
                 "--cost-model --device --backend --threads --json",
    "measure": "--device! --space! --backend --n! --out! --seed --threads --warmup --repeats "
               "--rounds --noise-candidates --from-pareto --clock --json",
    "bundle": "--space! --n! --out! --backend --device --seed --threads --warmup --repeats "
              "--rounds",
    "ingest": "RESULTS! --out! --device --manifest --json",
    "devices": "ACTION NAME --json",
    "bench": "SUITE! --quick --backend --json",
    "export": "RUN_DIR! --format --members --json",
    # issue 21: run an exported numba program
    "run": "PROGRAM_DIR! --threads --warmup --repeats --json",
    "sweep": "--devices! --budgets! --trials --backend --space --seed --sampler --cost-model "
             "--evaluator --ray-address --out!",
    "report": "RUN_DIR! --member --html",
}
# the options that read an integer (each must be typed: a plain string would skip the rule)
INTEGER_OPTIONS = {
    "predict": {"--threads", "--prompt-len", "--context", "--weight-bits", "--group-size"},
    "search": {"--trials", "--seed", "--workers", "--max-formats", "--predictor-trials",
               "--finetune-steps", "--threads"},
    "calibrate": {"--samples", "--seed", "--threads"},
    "measure": {"--n", "--seed", "--threads", "--warmup", "--repeats", "--rounds",
                "--noise-candidates"},
    "bundle": {"--n", "--seed", "--threads", "--warmup", "--repeats", "--rounds"},
    "run": {"--threads", "--warmup", "--repeats"},
    "sweep": {"--trials", "--seed"},
    "report": {"--member"},
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser("codesign")
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _listed(sub: argparse.ArgumentParser) -> list[str]:
    names = []
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest.upper()
        names.append(name + ("!" if action.required else ""))
    return names


def test_every_subcommand_lists_the_same_options_as_before() -> None:
    subs = _subparsers()
    assert list(subs) == list(OPTIONS_BEFORE)  # the order `codesign --help` lists them in
    for name, sub in subs.items():
        assert _listed(sub) == OPTIONS_BEFORE[name].split(), name


def _minimal_argv(command: str, sub: argparse.ArgumentParser, flag: str, value: str) -> list[str]:
    """``command`` with its required arguments filled in (valid for their type) and ``flag``."""
    argv = [command]
    for action in sub._actions:
        if not action.required or flag in action.option_strings:
            continue
        kind = getattr(action.type, "kind", None)
        filler = {"integer": "1", "duration": "10ms"}.get(kind, "x")
        if action.choices:
            filler = next(iter(action.choices))
        argv += [action.option_strings[0], filler] if action.option_strings else [filler]
    return argv + [flag, value]  # "-1" too: main attaches it to its flag


def _integer_options() -> list[tuple[str, str]]:
    found = {(name, action.option_strings[0])
             for name, sub in _subparsers().items() for action in sub._actions
             if isinstance(action.type, OptionType) and action.type.kind == "integer"}
    expected = {(name, flag) for name, flags in INTEGER_OPTIONS.items() for flag in flags}
    assert found == expected
    return sorted(found)


@pytest.mark.parametrize("command, flag", _integer_options())
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "1e3"])
def test_every_integer_option_rejects_non_integers_with_one_line(command, flag, value,
                                                                 capsys) -> None:
    argv = _minimal_argv(command, _subparsers()[command], flag, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"codesign {command}: error: {flag} must be ")
    assert f"got {value!r}" in err


@pytest.mark.parametrize("command", ["measure", "bundle"])
def test_warmup_zero_is_one_rule_in_measure_and_bundle(command, capsys) -> None:
    """`--warmup` accepted 0 in measure and refused it in bundle; now both take 0 and refuse
    -1 with the same words."""
    sub = _subparsers()[command]
    argv = _minimal_argv(command, sub, "--warmup", "0")[1:]
    assert sub.parse_args(argv).warmup == 0
    assert main(_minimal_argv(command, sub, "--warmup", "-1")) == 2
    assert capsys.readouterr().err == (f"codesign {command}: error: --warmup must be an integer "
                                       ">= 0, got '-1'\n")


def test_bundle_with_warmup_zero_reaches_its_output_check(tmp_path, capsys) -> None:
    """The library check that ``write_bundle`` runs takes --warmup 0 too (it refused it)."""
    (tmp_path / "taken").write_text("")
    assert main(["bundle", "--space", "mbconv", "--n", "1", "--warmup", "0",
                 "--out", str(tmp_path)]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err


def test_ingest_reads_a_bundle_run_with_zero_warmups(tmp_path, capsys) -> None:
    """warmup 0: the script's warm-up runs execute nothing, every execution is timed."""
    results = tmp_path / "results"
    shutil.copytree(PHONE_RESULTS, results)
    manifest = json.loads((results / "manifest.json").read_text())
    manifest.update(warmup=0, repeats=manifest["warmup"] + manifest["repeats"])
    (results / "manifest.json").write_text(json.dumps(manifest))
    for log in results.glob("*.warmup.log"):  # what executor_runner --num_executions 0 says
        text = log.read_text()
        if "executed successfully" in text:
            log.write_text(text.split("Model executed")[0]
                           + "Model executed successfully 0 time(s) in 0.000000 ms.\n")
    out = tmp_path / "m.csv"
    assert main(["ingest", str(results), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_ingested"] == 3
    table = read_measurements("mbconv", out)
    per_iteration = parse_runner_log(results / "c-53b9a6e876ecdecb.r1.log").iterations_ms
    per_iteration2 = parse_runner_log(results / "c-53b9a6e876ecdecb.r2.log").iterations_ms
    totals = [parse_runner_log(results / f"c-0f7e143b13307982.r{r}.log") for r in (1, 2)]
    etdump = etdump_execution_ms(results / "c-5a87b3ae3d79ed15.r1.etdump")
    expected = [min(np.median(per_iteration), np.median(per_iteration2)),
                min(t.total_ms / t.executions for t in totals), np.median(etdump)]
    assert table.latency_ms.ravel().tolist() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- the parsers
@pytest.mark.parametrize("value, expected", [("3", 3), (" 3 ", 3), ("+3", 3), ("0", 0), (7, 7)])
def test_parse_int_reads_decimal_integers(value, expected) -> None:
    assert parse_int(value, "--n") == expected


@pytest.mark.parametrize("value", ["1.5", "1e3", "0x10", "1_000", "", "٣", "3 4", True, 1.5,
                                   None])
def test_parse_int_refuses_anything_else(value) -> None:
    with pytest.raises(BadInput, match=r"^--n must be an integer >= 0, got "):
        parse_int(value, "--n")


def test_parse_int_bounds_and_library_callers() -> None:
    assert parse_int(SEED_MAX, "--seed", high=SEED_MAX) == SEED_MAX
    with pytest.raises(BadInput, match=rf"--seed must be an integer from 0 to {SEED_MAX}"):
        parse_int(str(SEED_MAX + 1), "--seed", high=SEED_MAX)
    with pytest.raises(BadInput, match="--member must be a trial number, got 'x'"):
        parse_int("x", "--member", noun="a trial number")
    with pytest.raises(BadInput, match="--n must be an integer >= 1, got '3'"):
        parse_int("3", "--n", low=1, text=False)  # code passes ints; text there is a bug


def test_seed_beyond_what_the_samplers_take_is_bad_input(capsys) -> None:
    assert main(["search", "--device", "pixel8", "--budget", "10ms",
                 "--seed", str(SEED_MAX + 1)]) == 2
    assert f"--seed must be an integer from 0 to {SEED_MAX}" in capsys.readouterr().err


@pytest.mark.parametrize("text, seconds", [("600", 600.0), ("2.5", 2.5), ("1e2", 100.0),
                                           ("90s", 90.0), ("500ms", 0.5)])
def test_timeout_reads_bare_seconds_or_a_unit(text, seconds) -> None:
    assert parse_duration(text, "--timeout", bare_unit="s") == pytest.approx(seconds)


@pytest.mark.parametrize("text, message", [("-5", "'-5' is negative"), ("0", "positive"),
                                           ("inf", "not a duration"), ("nan", "not a duration"),
                                           ("1e999", "positive"), ("soon", "not a duration"),
                                           ("5min", "unknown unit 'min'")])
def test_timeout_bad_values_exit_2_with_one_line(text, message, capsys) -> None:
    """`--timeout inf` used to pass (float('inf') > 0); it now goes through the duration rule."""
    assert main(["search", "--device", "pixel8", "--budget", "10ms", f"--timeout={text}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codesign search: error: --timeout {text!r}") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--budget", "--ttft-budget"])
def test_budgets_name_their_flag(flag, capsys) -> None:
    argv = ["search", "--device", "pixel8", "--budget", "10ms", f"{flag}=10"]
    assert main(argv) == 2
    assert f"{flag} '10' has no unit; valid units: s, ms, us, µs" in capsys.readouterr().err
