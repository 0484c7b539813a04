"""``codesign report``: the table, pareto.png, pareto.html and a member's per-layer breakdown."""
import json
import re
import shutil
import struct

import pytest

from codesign.cli import main
from codesign.cost_models.backends import load_backend
from codesign.report import load_run, member_layers
from codesign.report_plot import PNG_SIZE_PX
from codesign.search import SearchConfig, run_search

PROXY = "tests.search_helpers:proxy_accuracy"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    # a tight budget: some trials over it, some within, a front of several members
    run_search(SearchConfig(device="pixel8", budget_s=0.006, budget_text="6ms", trials=20, seed=5,
                            sampler="random", evaluator=PROXY, out=out, progress=False,
                            backend="codesign"))
    return out


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_prints_the_table_and_writes_the_plot(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    png = run_dir / "pareto.png"
    assert png.stat().st_size > 10_000
    assert png_size(png) == PNG_SIZE_PX
    assert "Pareto front: pixel8 / codesign, budget 6 ms" in out
    assert "20 trials: 20 complete" in out
    assert f"optuna-dashboard {run_dir / 'study.journal'}" in out


def test_plot_points_are_every_completed_trial_with_the_front_marked(run_dir):
    run = load_run(run_dir)
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert len(run.points) == pareto["n_complete"]
    assert sum(p.feasible for p in run.points) == pareto["n_feasible"]
    assert 0 < pareto["n_feasible"] < pareto["n_complete"], "both kinds are drawn"
    assert {p.number for p in run.points if p.on_front} == {m["trial"] for m in pareto["members"]}
    for p in run.points:
        assert p.accuracy_interval[0] <= p.accuracy <= p.accuracy_interval[1]
        assert p.latency_band_s[0] <= p.latency_s <= p.latency_band_s[1]
        assert p.feasible == (p.latency_s <= pareto["budget_s"])


def test_member_breakdown_shares_sum_to_100(run_dir, capsys):
    pareto = json.loads((run_dir / "pareto.json").read_text())
    member = max(pareto["members"], key=lambda m: m["latency_s"])
    assert main(["report", str(run_dir), "--member", str(member["trial"])]) == 0
    out = capsys.readouterr().out
    names = [layer["name"] for layer in member["layers"]]
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in names]
    assert len(rows) == len(names)
    shares = [float(row[3]) for row in rows]  # layer, kind, ms, share %, ...
    assert sum(shares) == pytest.approx(100, abs=0.05 * len(rows))
    ms = [float(row[2]) for row in rows]
    assert sum(ms) == pytest.approx(member["latency_s"] * 1e3, rel=1e-3, abs=1e-3)
    assert {row[4] for row in rows} <= {"compute", "memory", "overhead"}
    assert all(re.fullmatch(r"w\d+a\d+", row[5]) for row in rows)
    assert f"trial {member['trial']} on pixel8 / codesign" in out
    assert re.search(r"time by bound: (compute|memory|overhead) \d+%", out)
    layers = member_layers(member["layers"])
    assert sum(layer["share"] for layer in layers) == pytest.approx(1.0)
    slowest = max(layers, key=lambda layer: layer["latency_s"])
    assert f"slowest: {slowest['name']}" in out


def test_html_plot_via_optuna(run_dir, capsys):
    pytest.importorskip("plotly")
    assert main(["report", str(run_dir), "--html"]) == 0
    html = run_dir / "pareto.html"
    assert f"interactive plot: {html}" in capsys.readouterr().out
    text = html.read_text()
    assert html.stat().st_size > 100_000 and "plotly" in text.lower()
    assert "budget 6 ms" in text


def test_report_bad_input_exits_2(run_dir, tmp_path, capsys):
    pareto = json.loads((run_dir / "pareto.json").read_text())
    front = {m["trial"] for m in pareto["members"]}
    off_front = next(n for n in range(100) if n not in front)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "pareto.json").write_text('{"device": ')
    cases = [
        ([str(tmp_path / "nope")], "no such run directory"),
        ([str(unfinished)], f"--resume {unfinished}"),
        ([str(broken)], "pareto.json: unreadable"),
        ([str(run_dir), "--member", "x"], "--member must be a trial number"),
        ([str(run_dir), "--member", str(off_front)], "is not on the front"),
    ]
    for argv, message in cases:
        assert main(["report", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.fixture()
def saved_figures(monkeypatch):
    """Every figure ``pareto.png`` is drawn on: (suptitle, x label, y label)."""
    from matplotlib.figure import Figure

    seen, save = [], Figure.savefig

    def spy(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen.append((fig._suptitle.get_text(), ax.get_xlabel(), ax.get_ylabel()))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def _search_table(tmp_path, space: str, capsys) -> tuple[str, str]:
    out = tmp_path / space.rsplit(":", 1)[1]
    assert main(["search", "--device", "pixel8", "--budget", "20ms", "--trials", "3",
                 "--space", space, "--evaluator", PROXY, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    return table, capsys.readouterr().out


def test_table_plot_and_report_state_both_input_shapes_when_they_differ(tmp_path, capsys,
                                                                        saved_figures):
    table, report_out = _search_table(tmp_path, "tests.search_helpers:resized_space", capsys)
    note = "latency priced at 1x3x256x256; accuracy measured at 1x3x64x64"
    for text in (table, report_out):
        lines = text.splitlines()
        assert lines[0].startswith("Pareto front: pixel8") and lines[1] == note
        assert lines[2].startswith("trial ")  # the note heads the table
    (title, xlabel, ylabel), = saved_figures
    assert title.endswith("\n" + note)
    assert xlabel.startswith("predicted latency on pixel8 at 1x3x256x256 (ms)")
    assert ylabel.startswith("validation accuracy at 1x3x64x64")


def test_nothing_said_about_shapes_when_they_are_equal(tmp_path, capsys, saved_figures):
    table, report_out = _search_table(tmp_path, "tests.search_helpers:same_size_space", capsys)
    assert "priced at" not in table and "priced at" not in report_out
    (title, xlabel, ylabel), = saved_figures
    assert "\n" not in title and " at 1x3x" not in xlabel + ylabel


def test_the_latency_band_says_what_it_is_and_where_it_was_measured(run_dir, capsys):
    from codesign.cost_models.backends import load_backend

    error = load_backend("codesign").analytic_error
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert pareto["latency_band"] == {
        "fraction": 0.5, "lower_fraction": 0.5, "upper_fraction": 0.5, "source": "estimated",
        "ref": error.ref, "file": "configs/backends/codesign.yaml", "field": "analytic_error",
        "devices": ["host"]}
    for m in pareto["members"]:
        assert m["latency_band_s"] == pytest.approx([m["latency_s"] * 0.5, m["latency_s"] * 1.5])
    assert main(["report", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("latency band: ±50% of the predicted latency, measured on host, "
                     "not on pixel8")
    assert lines[at + 1] == ("  = configs/backends/codesign.yaml analytic_error (estimated): "
                             "xnnpack's measured host MAPE (0.33) widened by half for kernels not "
                             "yet measured end to end")
    assert lines[at - 1].startswith(str(pareto["members"][-1]["trial"]))  # under the table


def test_an_xnnpack_band_is_its_measured_error(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["search", "--device", "host", "--backend", "xnnpack", "--budget", "1s",
                 "--trials", "2", "--evaluator", PROXY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    measured = load_backend("xnnpack").analytic_error.value
    assert f"latency band: ±{measured:.0%} of the predicted latency, measured on host\n" in text
    assert "  = configs/backends/xnnpack.yaml analytic_error (measured): host reality check" in text
    band = json.loads((out / "pareto.json").read_text())["latency_band"]
    assert (band["fraction"], band["source"], band["devices"]) == (measured, "measured", ["host"])
