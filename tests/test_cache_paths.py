"""One user cache directory for every cache (supernets, tile tuner, kernel benchmarks, learned
models), the same from any current directory, moved by ``CODESIGN_CACHE_DIR`` alone; a search
says which one it used."""
import json

import platformdirs
import pytest

from codesign.cli import main
from codesign.learned_pricing import default_model_path
from codesign.kernels import bench_harness, tile_tuner
from codesign.kernels.cache_paths import cache_dir
from codesign.search_spaces import mbconv_training, transformer_lm
from codesign.search_spaces.mbconv import load_mbconv_config
from codesign.search_spaces.transformer import load_transformer_config

PROXY = "tests.search_helpers:proxy_accuracy"


def every_cache_path() -> dict[str, object]:
    return {"mbconv supernet": mbconv_training.cache_path(load_mbconv_config()).parent,
            "lm supernet": transformer_lm.cache_path(load_transformer_config()).parent,
            "tile tuner": tile_tuner.default_cache_dir(),
            "kernel bench": bench_harness.default_cache_dir(),
            "learned model": default_model_path("pixel8", "xnnpack", "hybrid").parent}


EXPECTED = {"mbconv supernet": "supernets", "lm supernet": "supernets",
            "tile tuner": "tile_tuner", "kernel bench": "kernel_bench", "learned model": "models"}


def test_the_cache_does_not_depend_on_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("CODESIGN_CACHE_DIR", raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    from_a = every_cache_path()
    monkeypatch.chdir(tmp_path / "b")
    assert every_cache_path() == from_a
    root = platformdirs.user_cache_dir("codesign", appauthor=False)
    assert str(cache_dir()) == root
    assert {k: str(v) for k, v in from_a.items()} == \
        {k: f"{root}/{sub}" for k, sub in EXPECTED.items()}


def test_codesign_cache_dir_moves_every_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    assert every_cache_path() == {k: tmp_path / "mine" / sub for k, sub in EXPECTED.items()}
    monkeypatch.setenv("CODESIGN_CACHE_DIR", "rel")  # a relative setting is made absolute
    assert cache_dir() == tmp_path / "rel"
    with pytest.raises(ValueError, match="unknown cache kind 'nope'; valid: supernets"):
        cache_dir("nope")


def test_search_says_which_cache_it_used(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["search", "--device", "pixel8", "--budget", "10ms", "--trials", "3",
                 "--evaluator", PROXY, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    pareto = json.loads(captured.out)  # stdout is the JSON alone
    line = f"cache directory: {tmp_path / 'cache'} (set CODESIGN_CACHE_DIR to move it)"
    assert line in captured.err.splitlines()
    assert pareto["provenance"]["cache_dir"] == str(tmp_path / "cache")
    assert json.loads((out / "run.json").read_text())["cache_dir"] == str(tmp_path / "cache")
