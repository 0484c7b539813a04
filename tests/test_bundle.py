"""`codesign bundle` writes what a phone run needs; `codesign ingest` reads back what it produced.

The phone's side is replayed from ``tests/data/phone_results`` (see tests/data/README.md: a real
bundle manifest, hand-written executor_runner logs and one ETDump recorded on this host's
ExecuTorch runtime; no phone is attached here)."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from codesign.cli import main

DATA = Path(__file__).parent / "data" / "phone_results"
PER_ITERATION, TOTALS_ONLY, FAILED, ETDUMP = ("c-53b9a6e876ecdecb", "c-0f7e143b13307982",
                                              "c-0ca0777614ec71d4", "c-5a87b3ae3d79ed15")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in csv.DictReader(path.open())}


def test_ingest_recorded_runner_logs_round_trip(tmp_path, capsys) -> None:
    out = tmp_path / "pixel8.csv"
    assert main(["ingest", str(DATA), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["device"] == "pixel8"  # the bundle's --device names the column
    assert summary["ingested"] == [PER_ITERATION, TOTALS_ONLY, ETDUMP]
    assert list(summary["failed"]) == [FAILED] and "failed with status 0x12" in \
        summary["failed"][FAILED] and summary["missing"] == []
    rows = _rows(out)
    # every iteration logged: the 3 warm-ups dropped, median of the other 10, lowest round
    assert float(rows[PER_ITERATION]["pixel8"]) == pytest.approx(47.85)
    assert float(rows[PER_ITERATION]["p90_ms"]) == pytest.approx(48.71)
    assert rows[PER_ITERATION]["round_p50s_ms"] == "47.85;48.85"
    assert float(rows[PER_ITERATION]["first_run_ms"]) == pytest.approx(61.2)
    assert float(rows[PER_ITERATION]["load_ms"]) == pytest.approx(40.9)
    # totals only: (T_full - T_warmup) / repeats
    assert float(rows[TOTALS_ONLY]["pixel8"]) == pytest.approx(28.05)
    assert rows[TOTALS_ONLY]["p90_ms"] == "" and rows[TOTALS_ONLY]["source"] == \
        "executor_runner-mean-of-totals"
    # an ETDump (one round recorded): Method::execute per execution, warm-ups dropped
    assert float(rows[ETDUMP]["pixel8"]) == pytest.approx(410.1125425, rel=1e-5)
    assert float(rows[ETDUMP]["first_run_ms"]) == pytest.approx(338.967614, rel=1e-5)
    assert rows[ETDUMP]["source"] == "etdump" and rows[ETDUMP]["round_p50s_ms"] == "410.113"
    manifest = json.loads((DATA / "manifest.json").read_text())
    params = {p["id"]: p["params"] for p in manifest["programs"]}
    assert json.loads(rows[PER_ITERATION]["params"]) == params[PER_ITERATION]
    # the file is a calibrate table: the params decode, one latency column
    from codesign.calibrate import read_measurements

    table = read_measurements("mbconv", out)
    assert table.columns == ("pixel8",)
    assert table.latency_ms.ravel().tolist() == pytest.approx([47.85, 28.05, 410.1125425], rel=1e-5)
    # ingesting again appends nothing
    assert main(["ingest", str(DATA), "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["n_ingested"] == 0 and again["skipped_already_in_out"] == summary["ingested"]


def test_ingest_results_csv_from_another_harness(tmp_path, capsys) -> None:
    out = tmp_path / "phone.csv"
    assert main(["ingest", str(DATA / "results.csv"), "--out", str(out), "--device", "myphone",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ingested"] == [PER_ITERATION, FAILED]
    assert summary["missing"] == [TOTALS_ONLY, ETDUMP]
    rows = _rows(out)
    assert float(rows[PER_ITERATION]["myphone"]) == 47.9  # two rounds: the lower one
    assert rows[PER_ITERATION]["round_p50s_ms"] == "47.9;48.8"
    assert float(rows[FAILED]["myphone"]) == 19.25


def _copy(tmp_path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(DATA, results)
    return results


@pytest.mark.parametrize("edit, args, message", [
    (lambda d: (d / "results.csv").write_text("id,latency_ms\nc-nope,3.0\n"), ["results.csv"],
     "line 2: id 'c-nope' is not in the bundle's manifest"),
    (lambda d: (d / "results.csv").write_text(f"id,latency_ms\n{PER_ITERATION},-1\n"),
     ["results.csv"], "line 2, column latency_ms: '-1' is not a positive latency"),
    (lambda d: (d / "results.csv").write_text("name,ms\n"), ["results.csv"],
     "expected columns id,latency_ms"),
    (lambda d: (d / "manifest.json").write_text("{}"), [], "not a codesign.bundle manifest"),
    (lambda d: (d / f"{PER_ITERATION}.r1.log").write_text(
        (d / f"{PER_ITERATION}.r1.log").read_text().replace("13 time(s)", "20 time(s)")
        .replace(" of 13:", " of 20:")), [], "iteration lines do not count 1..20"),
    (lambda d: (d / f"{TOTALS_ONLY}.r1.log").write_text(
        (d / f"{TOTALS_ONLY}.r1.log").read_text().replace("13 time(s)", "12 time(s)")), [],
     "12 executions, the bundle asked for 13"),
    (lambda d: (d / f"{ETDUMP}.r1.etdump").write_bytes(b"not an etdump"), [],
     "not a readable ETDump"),
    (lambda d: [p.unlink() for p in (*d.glob("*.log"), *d.glob("*.etdump"))], [],
     "no measurement of any bundle program"),
    (lambda d: None, ["--device", "my phone"], "names a CSV column"),
])
def test_ingest_bad_input_exits_2(tmp_path, capsys, edit, args, message) -> None:
    results = _copy(tmp_path)
    edit(results)
    target = str(results / args[0]) if args[:1] == ["results.csv"] else str(results)
    extra = args[1:] if args[:1] == ["results.csv"] else args
    assert main(["ingest", target, "--out", str(tmp_path / "o.csv"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_ingest_refuses_a_csv_of_another_device_column(tmp_path, capsys) -> None:
    out = tmp_path / "o.csv"
    assert main(["ingest", str(DATA), "--out", str(out)]) == 0
    assert main(["ingest", str(DATA), "--out", str(out), "--device", "pixel9"]) == 2
    assert "not a measurement CSV for column 'pixel9'" in capsys.readouterr().err


@pytest.mark.slow
def test_bundle_writes_programs_manifest_and_script(tmp_path, capsys, one_torch_thread) -> None:
    from codesign.measure.host_runner import run_pte

    out = tmp_path / "bundle"
    assert main(["bundle", "--space", "tests.measure_helpers:tiny_mbconv", "--n", "1", "--out",
                 str(out), "--device", "pixel8", "--repeats", "7", "--warmup", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "codesign.bundle" and manifest["version"] == 1
    assert (manifest["warmup"], manifest["repeats"], manifest["threads"]) == (2, 7, 1)
    ids = [p["id"] for p in manifest["programs"]]
    assert len(ids) == 1 and (out / "programs.txt").read_text().split() == ids
    import torch

    for program in manifest["programs"]:
        pte = (out / program["file"]).read_bytes()
        assert hashlib.sha256(pte).hexdigest() == program["sha256"]
        assert program["analytic_ms"] > 0 and program["undelegated"] == []
        # the program runs on ExecuTorch as shipped (here: the host runtime)
        (y,) = run_pte(pte, (torch.zeros(program["input_shape"]),))
        assert tuple(y.shape) == (1, 10)
    script = out / "run_on_phone.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--num_executions $((WARMUP + REPEATS))" in text and "WARMUP=2" in text
    # without a runner binary the script stops with a clear message before touching adb
    run = subprocess.run(["sh", str(script), str(tmp_path / "no-runner")], capture_output=True,
                         text=True)
    assert run.returncode == 2 and "no executor_runner at" in run.stderr
    # a bundle directory is never overwritten
    assert main(["bundle", "--space", "mbconv", "--n", "1", "--out", str(out)]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
