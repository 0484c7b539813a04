"""Tile tuner (kernels/tile_tuner.py) and calibrated tile terms (cost_models/tile_calibration.py).

Timing-independent where it matters: the ranking check fits and scores a recorded measurement
file (tests/data/tiles_recorded.json); the tuner test only checks where the answer comes from.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codesign.cost_models import tile_calibration as tc
from codesign.cost_models import tile_resolution as tr
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import Op, OpBatch, OpKind
from codesign.kernels import tile_tuner as tt
from codesign.kernels.specs import DENSE, FP32, QuantSpec, TileSpec, two_four

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "data" / "tiles_recorded.json"
SHAPE = (30, 24, 40)  # op shape (m, n, k): tiny, so a tuning session takes milliseconds


def _samples(rows):
    return [tc.Sample(tuple(s), tuple(t), y) for s, t, y in rows]


@pytest.fixture(scope="module")
def recorded():
    return json.loads(RECORDED.read_text())


@pytest.fixture(scope="module")
def recorded_terms(recorded):
    kt = tc.fit_kernel("fp32", _samples(recorded["train"]), recorded["micro_gops"],
                       recorded["l1_bytes"], recorded["l2_bytes"], fallback_ratio=0.95)
    return tc.TileTerms("test", recorded["l1_bytes"], recorded["l2_bytes"], {"fp32": kt})


@pytest.fixture(scope="module")
def tuned_cache(tmp_path_factory):
    """A tuner cache holding one budget-2 tuning of SHAPE, and that session's result."""
    cache = tt.tuner_cache(tmp_path_factory.mktemp("tuner"))
    res = tt.tune(SHAPE, "fp32", budget=2, cache=cache, repeats=3, min_sample_s=1e-4)
    return cache, res


def _gemm(shape, tile=None, quant=FP32, kind=OpKind.LINEAR, sparsity=DENSE):
    m, n, k = shape
    return Op("g", kind, (m, n), ((m, k),), m=m, n=n, k=k, flops=2.0 * m * n * k,
              weight_elems=k * n, out_channels=n, quant=quant, sparsity=sparsity, tile=tile)


# ------------------------------------------------------------------------------ tuner
def test_candidates_are_runnable_distinct_and_include_the_default():
    default = load_backend("codesign").default_tile("x86-64")
    for dtype in ("fp32", "int8", "int4"):
        tiles = tt.candidate_tiles((196, 160, 960), dtype, default=default)
        assert len({tt.effective_blocks((196, 160, 960), t) for t in tiles}) == len(tiles)
        assert all((t.mr, t.nr) in tt.micro_tiles(dtype) for t in tiles)
        assert dtype == "fp32" or all(t.kc % 2 == 0 for t in tiles)
        assert default in tiles
    # k = 24 clips every kc to 24: kc variants collapse into one candidate each
    small = tt.candidate_tiles((784, 64, 24), "fp32")
    assert len(small) == len({(t.mc, t.nc, t.mr, t.nr) for t in small})
    quick = tt.candidate_tiles((196, 160, 960), "fp32", quick=True)
    assert len(quick) == tt.QUICK_MICRO_TILES
    assert tt.parse_tile(default.label) == default


def test_tuner_picks_a_candidate_and_caches_it(tuned_cache, monkeypatch):
    cache, res = tuned_cache
    candidates = tt.candidate_tiles(SHAPE, "fp32",
                                    default=load_backend("codesign").default_tile("x86-64"))[:2]
    assert res.measured == 2 and res.best_tile in candidates
    assert {dict(r.params)["tile"] for r in res.records} == {t.label for t in candidates}
    assert res.best_time_s(res.best_tile) == min(r.min_s for r in res.records)

    def no_measuring(*args, **kwargs):
        raise AssertionError("a cached tuning must not measure")

    monkeypatch.setattr(tt, "measure_tiles", no_measuring)
    again = tt.tune(SHAPE, "fp32", budget=2, cache=cache)
    assert again.measured == 0 and again.best_tile == res.best_tile
    assert len(again.records) == 2
    assert tt.tuned_tile(SHAPE, "fp32", cache=cache) == res.best_tile
    # a budgeted decision answers lookups but not a request for the full search
    with pytest.raises(AssertionError, match="must not measure"):
        tt.tune(SHAPE, "fp32", cache=cache)
    # sparse layers run format-blocked kernels: never tuned, never measured
    sparse = tt.tune(SHAPE, "fp32", two_four(), cache=cache)
    assert sparse.measured == 0 and sparse.records == ()
    assert tt.tuned_tile(SHAPE, "fp32", two_four(), cache=cache) is None
    assert tt.tuned_tile((31, 24, 40), "fp32", cache=cache) is None


def test_kernel_host_fingerprint_ignores_import_order():
    code = ("import sys\n"
            "if sys.argv[1] == 'scipy':\n    import scipy.linalg\n"
            "from codesign.kernels.tile_tuner import kernel_host\n"
            "print(kernel_host().fingerprint())\n")
    prints = {subprocess.run([sys.executable, "-c", code, first], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
              for first in ("scipy", "numpy")}
    assert len(prints) == 1


# ------------------------------------------------------------------------------ search hook
def test_resolve_tile_falls_back_to_the_backend_default(tuned_cache, tmp_path):
    cache, res = tuned_cache
    host, pixel = load_device("host"), load_device("pixel8")
    backend = load_backend("codesign")
    x86 = backend.default_tile("x86-64")
    empty = tt.tuner_cache(tmp_path)
    assert tr.resolve_tile(host, _gemm(SHAPE), backend, cache=empty) == \
        backend.default_tile(host.cpu.isa)
    assert tr.resolve_tile(host, _gemm(SHAPE), backend, cache=cache) == res.best_tile
    assert tr.resolve_tile(pixel, _gemm(SHAPE), backend, cache=cache) == \
        backend.default_tile("aarch64")
    chosen = TileSpec(32, 256, 128, 4, 8)
    assert tr.resolve_tile(host, _gemm(SHAPE, chosen), backend, cache=cache) == chosen
    # accelerated sparsity blocks by format; depthwise has no tile; fixed-tile back-ends
    assert tr.resolve_tile(host, _gemm(SHAPE, sparsity=two_four()), backend,
                           cache=cache) == backend.default_tile(host.cpu.isa)
    dw = _gemm(SHAPE, kind=OpKind.DEPTHWISE_CONV2D)
    assert tr.resolve_tile(host, dw, backend, cache=cache) is None
    assert not load_backend("xnnpack").tiles_choosable
    assert tr.resolve_tile(host, _gemm(SHAPE), "xnnpack", cache=cache) == \
        load_backend("xnnpack").default_tile(host.cpu.isa)
    # an int8 layer of the same shape was not tuned: default
    assert tr.resolve_tile(host, _gemm(SHAPE, quant=QuantSpec(8, 8)), backend,
                           cache=cache) == backend.default_tile(host.cpu.isa)
    ops = [_gemm(SHAPE), dw, _gemm(SHAPE, chosen)]
    assert tr.apply_tuned_tiles(ops, pixel, backend, cache=cache) == ops
    filled = tr.apply_tuned_tiles(ops, host, backend, cache=cache)
    assert [op.tile for op in filled] == [res.best_tile, None, chosen]
    assert host.cpu.isa != "x86-64" or backend.default_tile(host.cpu.isa) == x86


# ------------------------------------------------------------------------------ calibration
def test_calibrated_terms_rank_recorded_tiles(recorded, recorded_terms):
    held = tc.rank_check(recorded_terms, "fp32", _samples(recorded["heldout"]))
    assert len(held["shapes"]) == 8
    assert held["median_spearman"] >= 0.9 and held["min_spearman"] >= 0.8
    assert held["max_choice_cost"] <= 1.1
    fit = recorded_terms.kernels["fp32"].fit
    assert fit["rms_rel_err"] < 0.06 and all(v >= 0 for v in recorded_terms.kernels["fp32"]
                                             .coef.values())


def test_analytic_model_prices_tiles_with_the_terms(recorded, recorded_terms, tmp_path):
    host = load_device("host")
    shape = (196, 160, 960)
    tiles = [TileSpec(*t) for s, t, _ in recorded["train"] if tuple(s) == (196, 112, 336)]
    batch = OpBatch.from_oplists([[_gemm(shape, t)] for t in tiles])
    model = AnalyticCostModel(host, "codesign", threads=1, tile_terms=recorded_terms)
    plain = AnalyticCostModel(host, "codesign", threads=1, tile_terms=None)
    pred = model.predict(batch).latency_s
    m, n, k = shape
    t = np.array([(x.mc, x.nc, x.kc, x.mr, x.nr) for x in tiles], float)
    direct = recorded_terms.kernel_seconds("fp32", m, n, k, *t.T, np.full(len(t), 1e11))
    overhead = load_backend("codesign").dispatch_overhead_s.value
    np.testing.assert_allclose(pred, direct + overhead, rtol=1e-9)
    assert not np.allclose(pred, plain.predict(batch).latency_s)
    assert model.assumptions["tile_terms"]["fingerprint"] == "test"
    model.save(tmp_path / "m.json")
    again = AnalyticCostModel.load(tmp_path / "m.json")
    np.testing.assert_array_equal(again.predict(batch).latency_s, pred)
    # another device never loads this host's terms
    assert AnalyticCostModel(load_device("pixel8"), "codesign").tile_terms is None


def test_terms_json_round_trip(recorded_terms, tmp_path, monkeypatch):
    path = recorded_terms.save(tmp_path / "t.json")
    again = tc.TileTerms.load(path)
    assert again.to_dict() == recorded_terms.to_dict()
    m, n, k = np.array([49.0]), np.array([256.0]), np.array([960.0])
    args = (m, n, k, *np.array([[60.0], [1024.0], [512.0], [5.0], [16.0]]), np.array([1e11]))
    assert again.kernel_seconds("fp32", *args) == recorded_terms.kernel_seconds("fp32", *args)
    doc = json.loads(path.read_text())
    assert doc["format"] == "codesign.tile_terms" and doc["version"] == tc.FORMAT_VERSION
    with pytest.raises(ValueError):
        tc.TileTerms.from_dict({**doc, "version": tc.FORMAT_VERSION + 1})
    # terms_for only answers for host + codesign, from this host's file in the terms dir
    monkeypatch.setenv("CODESIGN_TILE_TERMS_DIR", str(tmp_path / "terms"))
    tc.load_terms.cache_clear()
    host = load_device("host")
    assert tc.terms_for(host, load_backend("codesign")) is None
    mine = tc.TileTerms(tt.kernel_host().fingerprint(), 32768, 524288,
                        dict(recorded_terms.kernels))
    mine.save()
    assert tc.terms_for(host, load_backend("codesign")) is not None
    assert tc.terms_for(host, load_backend("xnnpack")) is None
    assert tc.terms_for(load_device("pixel8"), load_backend("codesign")) is None
    tc.load_terms.cache_clear()


def test_kernels_default_tiles_are_the_codesign_backends():
    """kernels/ owns its untuned tile per ISA (it imports nothing above it); the codesign
    back-end's YAML describes the same kernels, so its default_tile must agree."""
    backend = load_backend("codesign")
    for isa, tile in tt.DEFAULT_TILES.items():
        assert backend.default_tile(isa) == tile, isa


def test_a_batch_goes_to_the_tuner_cache_in_one_write_and_to_a_plain_cache_record_by_record(
        tmp_path, monkeypatch):
    """The tuner's caches are one class (what ``_put`` tests for), so a tuning session's batch
    is stored under one lock; a plain ResultCache gets the records one at a time, stamped."""
    from codesign.kernels.bench_harness import ResultCache

    tuner, other = tt.tuner_cache(tmp_path / "a"), tt.tuner_cache(tmp_path / "b")
    assert type(tuner) is type(other)
    batches = []
    monkeypatch.setattr(type(tuner), "put_many", lambda self, recs: batches.append(list(recs)))
    tt._put(tuner, ["r1", "r2"])
    assert batches == [["r1", "r2"]]
    plain = ResultCache(tmp_path / "c", tt.kernel_host())
    stored = []
    monkeypatch.setattr(tt, "_stamped", lambda rec, host: (rec, host))
    monkeypatch.setattr(ResultCache, "put", lambda self, rec: stored.append(rec))
    tt._put(plain, ["r1", "r2"])
    assert stored == [("r1", plain.host), ("r2", plain.host)] and batches == [["r1", "r2"]]
