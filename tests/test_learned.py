"""Learned cost model and ``calibrate``: features, robust fit, transfer, persistence, bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from codesign.calibrate import (calibrate, fit_and_score, metrics, read_measurements,
                                split_rows)
from codesign.userinput import BadInput
from codesign.cost_models.base import Prediction
from codesign.cost_models.features import (CONSTANT, DEAD, FEATURE_NAMES, LIVE, UNUSED,
                                           FeatureConfig, OpFeaturizer, live_mask, liveness,
                                           signatures_from_batch, signatures_from_oplists)
from codesign.cost_models.ir import Op, OpBatch, OpKind
from codesign.cost_models.learned import (FORMAT_VERSION, LearnedCostModel, ModelFormatError,
                                          robust_fit)
from codesign.search_spaces import fbnet, nasbench201

DATA = Path(__file__).parent / "data"
NB_CSV = DATA / "nasbench201_latency_ms_600.csv"
FB_CSV = DATA / "fbnet_latency_ms_600.csv"


@pytest.fixture(scope="module")
def nb_table():
    return read_measurements("nasbench201", NB_CSV)


@pytest.fixture(scope="module")
def fb_table():
    return read_measurements("fbnet", FB_CSV)


@pytest.fixture(scope="module")
def fb_model(fb_table):
    priors = [c for c in fb_table.columns if c != "pixel3"]
    return fit_and_score(fb_table, "pixel3", priors, 10, 0)


# ------------------------------------------------------------------------------ features
def test_oplist_and_batch_featurisation_agree():
    lists = [nasbench201.lower_arch(nasbench201.parse_arch_str(a)) for a in (
        "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|nor_conv_3x3~2|",
        "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")]
    lists.append(fbnet.lower_arch(fbnet.parse_ops(" ".join(["k3_e1_g2"] * 22))))
    featurizer = OpFeaturizer()
    a = featurizer.features_from_oplists(lists)
    b = featurizer.features_from_batch(OpBatch.from_oplists(lists))
    assert a.shape == (3, len(FEATURE_NAMES))
    np.testing.assert_allclose(a, b, rtol=1e-12)
    t1, t2 = signatures_from_oplists(lists), signatures_from_batch(OpBatch.from_oplists(lists))
    np.testing.assert_array_equal(t1.signatures, t2.signatures)
    assert (t1.counts != t2.counts).nnz == 0
    total = a[:, FEATURE_NAMES.index("total.latency_s")]
    parts = sum(a[:, FEATURE_NAMES.index(f"{g}.latency_s")] for g in (
        "conv", "depthwise", "gemm", "binary", "pool", "activation", "norm", "data_movement"))
    np.testing.assert_allclose(parts + a[:, FEATURE_NAMES.index("foldable.latency_s")], total)


def test_features_carry_op_terms_not_the_per_inference_cost():
    """Each distinct op is priced as a one-op candidate: the analytic model's per-inference
    program cost must not be counted once per distinct op (it was, after the measured
    program overhead landed, and put 5 us on every op of a phone's features)."""
    lists = [fbnet.lower_arch(fbnet.parse_ops(" ".join(["k3_e1_g2"] * 22)))]
    featurizer = OpFeaturizer()
    assert featurizer.analytic.program_overhead_s > 0
    table = signatures_from_oplists(lists)
    live = table.signatures[:, -1] > 0
    total = featurizer.features_from_oplists(lists)[0, FEATURE_NAMES.index("total.latency_s")]
    analytic = featurizer.analytic.predict(OpBatch.from_oplists(lists)).latency_s[0]
    # the candidate's analytic latency is its live ops' terms plus one program cost
    np.testing.assert_allclose(total + featurizer.analytic.program_overhead_s, analytic,
                               rtol=1e-9)
    assert live.any()


def test_live_mask_finds_dead_and_constant_ops():
    ops = [Op("a", OpKind.ELEMENTWISE, (4,), ((4,),), inputs=("",)),
           Op("dead", OpKind.ELEMENTWISE, (4,), ((4,),), inputs=("a",)),
           Op("const", OpKind.ELEMENTWISE, (4,), ((4,),), inputs=("buffer",)),
           Op("out", OpKind.ADD, (4,), ((4,), (4,)), inputs=("a", "const"))]
    assert live_mask(ops).tolist() == [True, False, False, True]
    ops.insert(3, Op("unused", OpKind.ELEMENTWISE, (4,), ((4,),), inputs=("buffer",)))
    assert liveness(ops).tolist() == [LIVE, DEAD, CONSTANT, UNUSED, LIVE]


def test_signatures_keep_dead_and_constant_ops_apart():
    # A conv reading the input whose result nobody reads (dead) and one reading a zero node
    # (constant) price the same op but are different signatures: converters fold one, not both.
    lists = [nasbench201.lower_arch(nasbench201.parse_arch_str(a)) for a in (
        "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|",
        "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|")]
    table = signatures_from_oplists(lists)
    states = table.signatures[:, -1]
    ran = [set(states[table.counts[i].indices].tolist()) for i in range(2)]
    assert DEAD in ran[0] and CONSTANT not in ran[0] and CONSTANT in ran[1]


# ------------------------------------------------------------------------------ fitting
def test_robust_fit_recovers_an_additive_model_despite_outliers():
    rng = np.random.default_rng(0)
    Z = rng.uniform(1, 10, size=(60, 3))
    y = Z @ np.array([0.5, 2.0, 0.0]) + 1.0
    y[:3] = 1e-3  # graphs a converter folded away: must not drag the fit
    theta, err = robust_fit(np.column_stack([Z, np.ones(60)]), y, np.zeros(4),
                            nonneg=np.ones(4, bool))
    np.testing.assert_allclose(theta, [0.5, 2.0, 0.0, 1.0], atol=1e-3)
    assert np.all(err[3:] < 1e-4) and np.all(err[:3] > 5)


def test_calibrate_transfers_and_beats_flops(nb_table, fb_table, fb_model):
    for table, result in ((fb_table, fb_model[0]), (nb_table, fit_and_score(
            nb_table, "1080ti_1", [c for c in nb_table.columns if c != "1080ti_1"], 10, 0)[0])):
        train, test = split_rows(len(table.archs), 10, 0)
        flops = table.features[:, FEATURE_NAMES.index("total.flops")]
        rho_flops = stats.spearmanr(flops[test], table.column(result["target"])[test])[0]
        assert result["n_train"] == 10 and result["n_test"] == 590
        assert result["spearman"] > rho_flops + 0.02
        assert result["spearman"] > 0.9 and result["within_10pct"] > 0.5
        assert 0 < result["cv_rms_log_error"] < 0.5


def test_more_samples_do_not_hurt(nb_table):
    priors = [c for c in nb_table.columns if c != "silver_4114"]
    small, _ = fit_and_score(nb_table, "silver_4114", priors, 10, 3)
    large, _ = fit_and_score(nb_table, "silver_4114", priors, 100, 3)
    assert large["within_10pct"] >= small["within_10pct"] - 0.02


def test_no_prior_columns_falls_back_to_analytic_features(fb_table):
    result, model = fit_and_score(fb_table, "pixel3", [], 20, 0)
    assert not model.priors and result["spearman"] > 0.9


# ------------------------------------------------------------------------------ protocol
def test_predict_batch_matches_table_and_sums_ops(fb_table, fb_model):
    _, model = fb_model
    lists = [fbnet.lower_arch(fbnet.parse_ops(a)) for a in fb_table.archs[:8]]
    batch = OpBatch.from_oplists(lists)
    pred = model.predict(batch)
    assert isinstance(pred, Prediction)
    np.testing.assert_allclose(pred.latency_s * 1e3, model.predict_table(
        fb_table.table, fb_table.features)[:8], rtol=1e-10)
    np.testing.assert_allclose(np.bincount(batch.candidate, pred.op_latency_s), pred.latency_s)
    low, high = pred.band
    assert low < 1 < high


def test_save_load_round_trip_is_identical(tmp_path, fb_table, fb_model):
    _, model = fb_model
    path = tmp_path / "model.json"
    model.save(path)
    payload = json.loads(path.read_text())
    assert payload["format"] == "codesign.learned" and payload["version"] == FORMAT_VERSION
    loaded = LearnedCostModel.load(path)
    lists = [fbnet.lower_arch(fbnet.parse_ops(a)) for a in fb_table.archs[:20]]
    batch = OpBatch.from_oplists(lists)
    a, b = model.predict(batch), loaded.predict(batch)
    np.testing.assert_array_equal(a.latency_s, b.latency_s)
    np.testing.assert_array_equal(a.op_latency_s, b.op_latency_s)
    assert a.band == b.band
    loaded.update(OpBatch.from_oplists(lists[:4]), fb_table.column("pixel3")[:4] * 1e-3)
    assert len(loaded.training["latency_ms"]) == 14


def test_known_ops_keep_their_fitted_analytic_terms(fb_table, fb_model):
    _, model = fb_model
    lists = [fbnet.lower_arch(fbnet.parse_ops(a)) for a in fb_table.archs[:40]]
    table = signatures_from_oplists(lists)
    known = np.array([tuple(r) in model._index for r in table.signatures.tolist()])
    rows = np.flatnonzero((table.counts[:, np.flatnonzero(~known)].sum(axis=1).A1 == 0))
    assert len(rows) > 10
    before = model.predict_table(table)[rows]
    original = model.featurizer
    try:  # as if the reference device's catalog file had been edited since the fit
        model.featurizer = OpFeaturizer(FeatureConfig(device="pixel8"))
        after = model.predict_table(table)[rows]
    finally:
        model.featurizer = original
    np.testing.assert_allclose(after, before, rtol=1e-12)


def test_load_rejects_unknown_format_and_version(tmp_path, fb_model):
    _, model = fb_model
    path = tmp_path / "model.json"
    model.save(path)
    payload = json.loads(path.read_text())
    (tmp_path / "v99.json").write_text(json.dumps({**payload, "version": 99}))
    with pytest.raises(ModelFormatError, match="version 99 is not supported"):
        LearnedCostModel.load(tmp_path / "v99.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "codesign.analytic"}))
    with pytest.raises(ModelFormatError, match="not a codesign.learned model"):
        LearnedCostModel.load(tmp_path / "other.json")
    broken = {**payload}
    del broken["target"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ModelFormatError, match="malformed"):
        LearnedCostModel.load(tmp_path / "broken.json")


def test_version_1_file_loads_and_prices_as_it_did(tmp_path):
    """``data/learned_v1_nasbench201.json``: written by format version 1 (features version 1, a
    live flag in the signatures), fitted on ``nasbench201_latency_ms_600.csv`` (pixel3, 30 rows,
    3 prior columns); ``..._predictions.json``: what that code predicted for 40 of its rows."""
    expected = json.loads((DATA / "learned_v1_nasbench201_predictions.json").read_text())
    lists = [nasbench201.lower_arch(nasbench201.parse_arch_str(a)) for a in expected["arch_str"]]
    batch = OpBatch.from_oplists(lists)
    assert not all(live_mask(ops).all() for ops in lists)  # the legacy look-up is exercised
    model = LearnedCostModel.load(DATA / "learned_v1_nasbench201.json")
    np.testing.assert_allclose(model.predict(batch).latency_s, expected["latency_s"], rtol=1e-9)
    model.save(tmp_path / "again.json")  # still a version-1 file: its signatures are v1 keys
    assert json.loads((tmp_path / "again.json").read_text())["version"] == 1
    np.testing.assert_allclose(LearnedCostModel.load(tmp_path / "again.json").predict(
        batch).latency_s, expected["latency_s"], rtol=1e-9)


# ------------------------------------------------------------------------------ calibrate
def test_calibrate_contract_keys_and_save(tmp_path):
    out = tmp_path / "pixel3.json"
    result = calibrate("fbnet", FB_CSV, "pixel3", ["samsung_a50", "gold_6240"], 10, 1, out)
    for key in ("spearman", "kendall", "mape", "within_10pct", "n_train", "n_test"):
        assert key in result
    assert result["prior_columns"] == ["samsung_a50", "gold_6240"]
    assert json.loads(json.dumps(result)) == result  # plain JSON
    assert LearnedCostModel.load(out).target.name == "pixel3"


def test_metrics_report_near_zero_rows_instead_of_dropping_them():
    meas = np.array([10.0, 12.0, 8.0, 0.004])
    pred = np.array([10.5, 12.0, 8.0, 9.0])
    m = metrics(pred, meas)
    assert m["n_near_zero"] == 1 and m["mape"] > 500  # the folded graph counts in the MAPE
    assert m["mape_excluding_near_zero"] == pytest.approx(0.05 / 3)
    assert m["within_10pct"] == 0.75


def _write(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


ROW = "0,k5_e6 skip k3_e1_g2 skip k5_e1 skip skip skip k5_e6 k5_e1 k3_e1_g2 k5_e1 k5_e6 " \
      "k3_e6 k3_e3 k5_e6 k3_e6 k3_e3 k5_e1 k3_e3 k5_e1 k5_e1_g2"


@pytest.mark.parametrize("args, fragment", [
    (dict(space="darts"), "unknown --space 'darts'; valid: mbconv, nasbench201, fbnet"),
    (dict(measurements=Path("/nonexistent.csv")), "cannot read"),
    (dict(target="pixel9"), "--target 'pixel9' is not a latency column"),
    (dict(prior_columns=["gold_6240", "tpu"]), "unknown column 'tpu'; valid: pixel3"),
    (dict(prior_columns=["pixel3"]), "must not include the target"),
    (dict(samples=1), "--samples must be an integer from 2 to 599"),
    (dict(samples=600), "--samples must be an integer from 2 to 599"),
    (dict(space="nasbench201"), "no 'arch_str' column for space nasbench201"),
])
def test_calibrate_bad_input_is_one_line(args, fragment):
    kwargs = dict(space="fbnet", measurements=FB_CSV, target="pixel3", prior_columns=None,
                  samples=10, seed=0, save=None)
    kwargs.update(args)
    with pytest.raises(BadInput) as info:
        calibrate(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, fragment", [
    ("index,ops,pixel3\n" + ROW + ",1.5,3\n", "line 2: expected 3 fields, got 4"),
    ("index,ops,pixel3\n" + ROW + ",fast\n", "line 2, column pixel3: 'fast' is not a positive"),
    ("index,ops,pixel3\n" + ROW + ",-1\n", "line 2, column pixel3"),
    ("index,ops,pixel3\n0,k3_e1 skip,1.0\n", "line 2, column ops: FBNet ops"),
    ("", "empty file"),
    ("index,ops,pixel3\n", "no data rows"),
])
def test_malformed_csv_names_line_and_column(tmp_path, text, fragment):
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(")):
        calibrate("fbnet", _write(tmp_path, text), "pixel3", None, 2, 0, None)


# ------------------------------------------------------------------------------ shrinkage
def _rank_corr(a, b):
    return stats.spearmanr(a, b)[0]


def test_blend_keeps_the_prior_when_the_fit_ranks_worse_out_of_fold():
    from codesign.cost_models.learned_fit import choose_blend

    rng = np.random.default_rng(0)
    y = np.exp(rng.normal(size=10))
    prior = y * np.exp(rng.normal(scale=0.02, size=10))  # orders the rows as measured
    fit_oof = np.exp(rng.normal(size=10))  # unrelated to the measurements
    blend = choose_blend("total.flops", fit_oof, prior, y)
    assert blend.weight == 0.0
    assert blend.scale == pytest.approx(float(np.exp(np.median(np.log(y / prior)))))
    # priced on new candidates it ranks them exactly as the prior, whatever the fit says
    new_prior, new_fit = np.exp(rng.normal(size=50)), np.exp(rng.normal(size=50))
    out = blend.apply(new_fit, new_prior)
    assert _rank_corr(out, new_prior) == pytest.approx(1.0)
    np.testing.assert_allclose(out, blend.scale * new_prior, rtol=1e-12)


def test_blend_moves_to_the_fit_when_it_ranks_clearly_better():
    from codesign.cost_models.learned_fit import choose_blend

    rng = np.random.default_rng(1)
    y = np.exp(rng.normal(size=10))
    fit_oof = y * np.exp(rng.normal(scale=0.02, size=10))
    prior = np.exp(rng.normal(size=10))
    blend = choose_blend("total.flops", fit_oof, prior, y)
    assert blend.weight == 1.0
    fit = np.exp(rng.normal(size=50))
    np.testing.assert_array_equal(blend.apply(fit, np.exp(rng.normal(size=50))), fit)


def test_blend_prior_wins_ties_and_small_wins_need_more_rows():
    from codesign.cost_models.learned_fit import choose_blend

    y = np.arange(1.0, 11.0)
    same = y[::-1].copy()  # fit and prior equally (maximally) wrong
    assert choose_blend("total.flops", same, same, y).weight == 0.0
    # a fit a little better than the prior: at 10 rows that is within the noise, at 400 it
    # is not (the rule depends on N through the standard error of the difference)
    weights = {}
    for n in (10, 400):
        rng = np.random.default_rng(2)
        logy = rng.normal(size=n)
        prior = np.exp(logy + rng.normal(scale=0.6, size=n))
        fit = np.exp(logy + rng.normal(scale=0.5, size=n))
        weights[n] = choose_blend("total.flops", fit, prior, np.exp(logy)).weight
    assert weights == {10: 0.0, 400: 1.0}


def _with_target(table, values):
    """The table with one more latency column, "synthetic", holding ``values``."""
    from dataclasses import replace

    return replace(table, columns=table.columns + ("synthetic",),
                   latency_ms=np.column_stack([table.latency_ms, values]))


def test_fit_that_ranks_worse_than_flops_returns_the_flops_ranking(fb_table):
    # a target whose latency grows as FLOPs squared: FLOPs rank it perfectly, a model additive
    # over ops cannot (its ten-row fit misorders some rows); the model must rank as FLOPs does
    flops = fb_table.features[:, FEATURE_NAMES.index("total.flops")]
    table = _with_target(fb_table, (flops / np.median(flops)) ** 2 * 20.0)
    y = table.column("synthetic")
    for seed in range(3):
        train, test = split_rows(len(y), 10, seed)
        fit_alone = LearnedCostModel.fit(
            table.table, table.features, target_name="synthetic", train_rows=train,
            target_latency_ms=y[train], prior_latency_ms=fb_table.latency_ms,
            prior_names=list(fb_table.columns), shrink_prior=None)
        assert _rank_corr(fit_alone.predict_table(table.table, table.features)[test],
                          y[test]) < 0.999  # the fit alone is worse than the prior
        result, model = fit_and_score(table, "synthetic", list(fb_table.columns), 10, seed)
        assert model.blend.prior == "total.flops" and model.blend.weight == 0.0
        pred = model.predict_table(table.table, table.features)
        assert _rank_corr(pred, flops) == pytest.approx(1.0)
        assert result["blend_weight"] == 0.0 and result["shrink_prior"] == "total.flops"


def test_fit_that_ranks_better_than_flops_is_kept(fb_table):
    # a GPU column: FLOPs rank it poorly (Spearman ~0.2 in the full data), the prior GPUs well
    flops = fb_table.features[:, FEATURE_NAMES.index("total.flops")]
    y = fb_table.column("titanx_1")
    priors = [c for c in fb_table.columns if c != "titanx_1"]
    result, model = fit_and_score(fb_table, "titanx_1", priors, 10, 0)
    assert model.blend.weight == 1.0
    train, test = split_rows(len(y), 10, 0)
    assert result["spearman"] > _rank_corr(flops[test], y[test]) + 0.3


def test_blend_survives_save_load_and_update(tmp_path, fb_table):
    flops = fb_table.features[:, FEATURE_NAMES.index("total.flops")]
    table = _with_target(fb_table, flops * 1e-7)
    _, model = fit_and_score(table, "synthetic", list(fb_table.columns), 10, 0)
    assert model.blend.weight == 0.0 and len(model.blend.knots[0]) > 10
    model.save(tmp_path / "m.json")
    loaded = LearnedCostModel.load(tmp_path / "m.json")
    assert loaded.blend == model.blend
    np.testing.assert_allclose(loaded.predict_table(table.table, table.features),
                               model.predict_table(table.table, table.features), rtol=1e-12)
    batch = OpBatch.from_oplists([fbnet.lower_arch(fbnet.parse_ops(a))
                                  for a in table.archs[20:25]])
    loaded.update(batch, flops[20:25] * 1e-10)  # s: the same FLOPs-proportional target
    assert len(loaded.training["latency_ms"]) == 15 and loaded.blend is not None
    assert loaded.blend.prior == "total.flops"


def test_kept_prior_takes_the_fits_latencies_in_the_priors_order():
    from codesign.cost_models.learned_fit import Blend, monotone_map

    rng = np.random.default_rng(4)
    prior = np.exp(rng.normal(size=2000))
    # a fit that agrees with the prior's order up to noise, on another scale (power 1.5)
    fit = 3.0 * prior ** 1.5 * np.exp(rng.normal(scale=0.05, size=2000))
    blend = Blend("total.flops", 0.0, 1.0, knots=monotone_map(prior, fit))
    assert len(blend.knots[0]) == 256
    assert Blend.from_json(json.loads(json.dumps(blend.to_json()))) == blend  # a file keeps it
    new = np.exp(rng.normal(scale=1.3, size=500))  # some beyond the knots' range
    out = blend.apply(np.ones(500), new)
    assert _rank_corr(out, new) == pytest.approx(1.0)
    inside = (new > prior.min()) & (new < prior.max())
    ratio = out[inside] / (3.0 * new[inside] ** 1.5)
    assert np.median(np.abs(ratio - 1)) < 0.03
    # a fit flat over half the range still leaves the prior's order intact (no ties)
    flat = Blend("total.flops", 0.0, 1.0, knots=monotone_map(prior, np.minimum(prior, 1.0)))
    assert np.all(np.diff(flat.knots[1]) >= 0)  # tie means rounded down by one ulp were not
    out = flat.apply(np.ones(500), new)
    assert len(np.unique(out)) == 500 and _rank_corr(out, new) == pytest.approx(1.0)
    top = (new > 3) & inside
    assert top.sum() > 10 and np.allclose(out[top], 1.0, rtol=1e-4)  # the fit's values: flat
