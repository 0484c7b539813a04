"""``ParetoMember``: pareto.json members read and written through one record, and
``PricedCandidate``: what ``SearchContext.price`` returns."""
import dataclasses
import json
from pathlib import Path

import pytest

from codesign.pareto_member import ParetoMember, baseline_member, front_members
from codesign.pricing import PricedCandidate

DATA = Path(__file__).parent / "data"
OLD_FILES = ("pareto_d23d524_cnn.json", "pareto_d23d524_lm.json")


def old_pareto(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.mark.parametrize("name", OLD_FILES)
def test_a_pareto_json_the_old_writer_wrote_round_trips_key_for_key(name):
    pareto = old_pareto(name)
    records = pareto["members"] + ([pareto["baseline"]] if pareto.get("baseline") else [])
    members = front_members(pareto) + ([baseline_member(pareto)] if pareto.get("baseline")
                                       else [])
    for record, member in zip(records, members, strict=True):
        assert member.extra == {}, "every key the old writer wrote is a known field"
        # identical: the same keys in the same order, the same values
        assert json.dumps(member.to_json()) == json.dumps(record)


def test_fields_are_read_as_typed_attributes_under_the_runs_metric():
    cnn, lm = (front_members(old_pareto(name))[0] for name in OLD_FILES)
    assert cnn.metric == "accuracy" and lm.metric == "perplexity"
    raw = old_pareto(OLD_FILES[1])["members"][0]
    assert lm.quality == raw["perplexity"] and lm.test_quality == raw["test_perplexity"]
    assert lm.quality_interval == tuple(raw["perplexity_interval"])
    assert lm.ttft_s == raw["ttft_s"] and lm.memory_bytes == raw["memory_bytes"]
    assert cnn.ttft_s is None and cnn.memory_bytes is None and cnn.formats
    # without the run's metric, the one the member's keys are named after
    assert ParetoMember.from_json(raw).metric == "perplexity"
    assert baseline_member(old_pareto(OLD_FILES[0])).baseline is True


def test_unknown_and_null_keys_are_kept_and_written_back():
    record = {**old_pareto(OLD_FILES[0])["members"][0], "a_newer_key": {"x": 1}, "ttft_s": None}
    member = ParetoMember.from_json(record)
    assert member.extra == {"a_newer_key": {"x": 1}, "ttft_s": None}
    assert member.ttft_s is None
    assert member.to_json() == record


def test_fine_tuned_members_keep_the_before_scores_where_the_search_writes_them():
    record = old_pareto(OLD_FILES[0])["members"][0]
    test_keys = ("test_accuracy", "test_accuracy_interval")
    tuned = {k: v for k, v in record.items() if k not in test_keys}
    tuned.update(accuracy_before_finetune=0.5, accuracy_before_finetune_interval=[0.4, 0.6])
    tuned.update({k: record[k] for k in test_keys})  # member_record writes the test keys last
    member = ParetoMember.from_json(tuned)
    assert member.quality_before_finetune == 0.5
    assert json.dumps(member.to_json()) == json.dumps(tuned)


def test_a_member_without_trial_or_params_is_not_one():
    with pytest.raises(KeyError):
        ParetoMember.from_json({"params": {}})
    with pytest.raises(TypeError):
        ParetoMember.from_json([1, 2])


def test_the_search_writes_members_with_the_old_writers_keys(tmp_path):
    from codesign.search import SearchConfig, run_search

    old = old_pareto(OLD_FILES[0])
    base = tmp_path / "base.json"
    base.write_text(json.dumps(old["baseline"]["params"]))
    result = run_search(SearchConfig(
        device="pixel8", budget_s=0.006, budget_text="6ms", trials=4, seed=6, sampler="random",
        evaluator="tests.search_helpers:proxy_accuracy", baseline=base, out=tmp_path / "run",
        progress=False, backend="codesign"))
    written = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert written["members"] and written["baseline"]
    assert {tuple(m) for m in written["members"]} == {tuple(m) for m in old["members"]}
    assert list(written["baseline"]) == list(old["baseline"])
    assert written == result.pareto


def test_a_priced_candidate_is_frozen_and_has_no_phase_a_cnn_lacks():
    from codesign.context import SearchContext
    from codesign.cost_models.analytic import AnalyticCostModel
    from codesign.cost_models.backends import backend_for
    from codesign.cost_models.devices import load_device
    from codesign.evaluation.base import FunctionEvaluator
    from codesign.search_spaces.nasbench201 import NASBench201Space
    import numpy as np

    device = load_device("pixel8")
    backend = backend_for(device, None)
    space = NASBench201Space(backend)
    context = SearchContext(device, backend, space, FunctionEvaluator(lambda c, split: 0.5),
                            0.01, "analytic")
    candidate = space.decode(space.sample(np.random.default_rng(0)))
    priced = context.price(candidate)
    assert isinstance(priced, PricedCandidate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        priced.latency_s = 0.0
    assert priced.latency_s == float(priced.prediction.latency_s[0]) > 0
    assert priced.ttft_s is priced.memory_bytes is priced.prefill_batch is None
    # the cost model is made once per thread count by the registry's factory
    model = context.cost_model(device.default_threads)
    assert isinstance(model, AnalyticCostModel) and model.threads == device.default_threads
    assert context.cost_model(device.default_threads) is model
