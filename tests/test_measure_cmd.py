"""`codesign measure`: candidates lowered per layer, timed on ExecuTorch, one CSV row each.

The end-to-end runs use the small MBConv space of ``tests/measure_helpers.py`` (a couple of seconds
to lower a candidate); the per-layer lowering is also checked on it."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from codesign.cli import main
from codesign.measure.table import META_COLUMNS, MeasurementCSV, columns_for
from codesign.userinput import BadInput
from tests.cli_helpers import assert_bad_input_exits_2

TINY = "tests.measure_helpers:tiny_mbconv"


# ---------------------------------------------------------------- the CSV
def _row(cid: str, ms: float) -> dict:
    return {"params": "{}", "host": ms, "id": cid, "space": "s", "backend": "xnnpack",
            "threads": 1}


def test_csv_appends_reopens_and_checks_configuration(tmp_path) -> None:
    path = tmp_path / "m.csv"
    table = MeasurementCSV.open(path, "host")
    table.append(_row("c-1", 1.5))
    table.append(_row("c-2", 2.5))
    again = MeasurementCSV.open(path, "host", expect={"threads": "1"})
    assert again.ids == {"c-1", "c-2"} and again.rows[1]["host"] == "2.5"
    with pytest.raises(BadInput, match="threads='1', this run uses '2'"):
        MeasurementCSV.open(path, "host", expect={"threads": "2"})
    with pytest.raises(BadInput, match="not a measurement CSV for column 'pixel8'"):
        MeasurementCSV.open(path, "pixel8")
    with pytest.raises(ValueError, match="positive number of ms"):
        again.append(_row("c-3", 0.0))
    with pytest.raises(ValueError, match="not measurement CSV columns"):
        again.append({**_row("c-3", 1.0), "latency": 1.0})


def test_csv_drops_a_half_written_last_line(tmp_path) -> None:
    path = tmp_path / "m.csv"
    MeasurementCSV.open(path, "host").append(_row("c-1", 1.5))
    with path.open("a") as fh:
        fh.write('"{}",3.1,c-2,s,xnn')  # the process died mid-row
    table = MeasurementCSV.open(path, "host")
    assert table.dropped_partial_line and table.ids == {"c-1"}
    table.append(_row("c-2", 3.1))
    rows = list(csv.DictReader(path.open()))
    assert [r["id"] for r in rows] == ["c-1", "c-2"]


def test_latency_column_name_is_checked(tmp_path) -> None:
    with pytest.raises(BadInput, match="cannot name a latency column"):
        columns_for("p90_ms")
    assert columns_for("host")[:2] == ["params", "host"] and len(META_COLUMNS) > 10


# ---------------------------------------------------------------- per-layer lowering
@pytest.mark.slow
def test_candidate_is_lowered_at_each_layers_priced_precision(one_torch_thread) -> None:
    from codesign.measure.candidate_program import lower_candidate
    from codesign.cost_models.backends import load_backend
    from tests.measure_helpers import tiny_mbconv

    space = tiny_mbconv(load_backend("xnnpack"))
    # the first sampled candidate whose palette mixes w8a8, w32a32 and w4a8-dyn layers
    rng = np.random.default_rng(0)
    candidate = next(c for c in (space.decode(space.sample(rng)) for _ in range(500))
                     if set(c.formats()) == {"w32a32", "w8a8", "w4a8-dyn"})
    lowered = lower_candidate(space, candidate)
    priced = {op.name: f"w{op.quant.weight_bits}a{op.quant.act_bits}"
              + ("-dyn" if op.quant.dynamic_act else "") for op in space.to_ops(candidate)
              if op.name in lowered.precisions}
    assert lowered.precisions == priced
    assert {"w32a32", "w8a8", "w4a8-dyn"} <= set(lowered.precisions.values())
    assert lowered.undelegated == ()
    # quantized layers differ from the float module, but not by much (a wrong graph would)
    assert 0 < lowered.max_rel_err < 0.1
    # an all-float candidate matches the float module to float rounding
    fp32 = space.uniform(candidate.arch, "w32a32")
    assert lower_candidate(space, fp32).max_rel_err < 1e-4


# ---------------------------------------------------------------- the command
@pytest.mark.slow
def test_measure_two_candidates_end_to_end_and_resume(tmp_path, capsys, one_torch_thread) -> None:
    out = tmp_path / "host.csv"
    args = ["measure", "--device", "host", "--space", TINY, "--n", "2", "--out", str(out),
            "--warmup", "1", "--repeats", "5", "--rounds", "2", "--noise-candidates", "1",
            "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_rows"] == 2 and summary["n_measured_now"] == 2
    assert summary["noise_floor"]["remeasure_rel_diff"]["n"] == 1
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and rows[0].keys() == set(columns_for("host"))
    for row in rows:
        rounds = [float(v) for v in row["round_p50s_ms"].split(";")]
        assert float(row["host"]) == pytest.approx(min(rounds), rel=1e-5)
        assert float(row["p90_ms"]) >= float(row["host"]) > 0
        assert float(row["analytic_ms"]) > 0 and row["precision"] == "per-layer"
        assert row["threads"] == "1" and row["undelegated"] == "" and row["loadavg_1m_before"]
        # one thread: the latency is the executing thread's CPU time; the wall clock beside it
        assert row["clock"] == "cpu" and float(row["cpu_p50_ms"]) == float(row["host"])
        assert float(row["wall_p50_ms"]) > 0
        assert json.loads(row["params"])["fmt.0"] in ("w32a32", "w8a8")
    assert rows[0]["id"] != rows[1]["id"]
    noise = list(csv.DictReader((tmp_path / "host.noise.csv").open()))
    assert len(noise) == 1 and noise[0]["id"] == rows[0]["id"]
    # a rerun over the same file measures nothing new
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["n_measured_now"] == 0
    assert len(list(csv.DictReader(out.open()))) == 2


@pytest.mark.parametrize("argv, message", [
    (["--device", "pixel8"], "the device is 'host'"),
    (["--backend", "codesign"], "back-end here is xnnpack"),
    (["--space", "nasbench201"], "no torch module builder"),
    (["--space", "tests.search_helpers:not_a_space"], "returned int"),
    (["--n", "0"], "--n must be an integer >= 1"),
    (["--threads", "x"], "--threads must be an integer"),
    (["--threads", "2", "--clock", "cpu"], "--clock cpu needs --threads 1"),
    (["--clock", "tsc"], "unknown --clock 'tsc'; valid: auto, cpu, wall"),
    (["--out", "/no/such/dir/m.csv"], "does not exist"),
])
def test_measure_bad_input_exits_2(argv, message, capsys) -> None:
    assert_bad_input_exits_2("measure", {"--device": "host", "--space": TINY, "--n": "1",
                                         "--out": "/tmp/never-written.csv"}, argv, message, capsys)


def test_from_pareto_reads_a_fronts_members(tmp_path, capsys) -> None:
    from codesign.measure_cmd import load_measure_space, pareto_candidates

    space = load_measure_space(TINY, "xnnpack", 1)
    params = [space.sample(np.random.default_rng(s)) for s in (0, 1)]
    pareto = tmp_path / "pareto.json"
    pareto.write_text(json.dumps({"members": [{"trial": i, "params": p}
                                              for i, p in enumerate(params)]}))
    got = pareto_candidates(pareto, space, 1)
    assert [p for _, p, _ in got] == [space.encode(space.decode(p)) for p in params]
    assert [cid for cid, _, _ in got] == ["c-" + space.decode(p).key() for p in params]
    pareto.write_text(json.dumps({"members": [{"trial": 0,
                                               "params": {**params[0], "threads": 2}}]}))
    assert main(["measure", "--device", "host", "--space", TINY, "--n", "1", "--out",
                 str(tmp_path / "m.csv"), "--from-pareto", str(pareto)]) == 2
    assert "a member runs 2 threads, this measurement 1" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()
    assert main(["measure", "--device", "host", "--space", TINY, "--n", "1", "--out",
                 str(tmp_path / "m.csv"), "--from-pareto", str(tmp_path / "none.json")]) == 2
    assert "--from-pareto" in capsys.readouterr().err
