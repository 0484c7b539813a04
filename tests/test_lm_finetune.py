"""The 4-bit fine-tune of transformer members (``codesign.evaluation.lm_finetune``) on a tiny
space: it lowers the member's loss on its train batch as scored (fake-quantized, 2:4 masked),
keeps its masks, is deterministic, and the perplexity evaluator and export keep and reload the
weights."""
import pickle

import pytest
import torch

from codesign.cost_models.backends import load_backend
from codesign.evaluation import lm_finetune as ft
from codesign.evaluation.perplexity import PerplexityEvaluator, quantized_state_dict
from codesign.search_spaces import transformer_lm as lm
from codesign.search_spaces.transformer import TransformerSpace
from tests.transformer_helpers import temporary_lm_cache, tiny_config, tiny_train


@pytest.fixture(scope="module")
def space():
    return TransformerSpace(load_backend("codesign"), config=tiny_config())


@pytest.fixture(scope="module")
def params(tmp_path_factory, space):
    with temporary_lm_cache(tmp_path_factory.mktemp("cache")):
        yield lm.get_trained_lm(space.config, 0, train=tiny_train(), threads=1)


def member(space, *, prec="w4a8", group=32, sparsity="2:4", context=64):
    p = {"layers": 2, "d_model": 256, "heads": 4, "gqa_ratio": 2, "ffn_mult": 2,
         "context": context, "prefill_tile": "default", "decode_tile": "default"}
    for unit in ("l0", "l1", "head"):
        p.update({f"{unit}.prec": prec, f"{unit}.group": group, f"{unit}.ffn_sparsity": sparsity})
    return space.decode({k: v for k, v in p.items() if k in space.active_names(p)})


def test_finetune_lowers_the_members_loss_keeps_masks_and_is_deterministic(space, params):
    c = member(space)
    start = lm.subnet_state_dict(params, c)
    masks = ft.sparsity_masks(start, c)
    assert len(masks) == 6 and all(0.4 < float(m.mean()) <= 0.5 for m in masks.values())
    loss = ft.MemberLoss(space, params, c, masks)
    x, y = ft.train_batch(c, torch.Generator().manual_seed(0 + 11))  # the fine-tune's first
    with torch.no_grad():
        # as scored: the straight-through forward is the evaluator's quantized model's
        scored = PerplexityEvaluator(space, train=tiny_train(), threads=1)
        scored.use_shared_state(scored.shared_state_key(), params)
        logits = scored.build_quantized(c)(x).reshape(-1, 256)
        soft = loss.teacher(x)
        kd = torch.nn.functional.kl_div(logits.log_softmax(-1), soft, reduction="batchmean")
        expected = 0.5 * kd + 0.5 * torch.nn.functional.cross_entropy(logits, y.reshape(-1))
        before = loss(start, x, y)
        assert float(before) == pytest.approx(float(expected), rel=1e-4)
    tuned = ft.finetune_member(space, params, c, 20, seed=0, lr=1e-3, threads=1)
    with torch.no_grad():
        after = loss(tuned, x, y)
    assert float(after) < float(before) - 0.01
    assert set(tuned) == set(start)
    assert any(not torch.equal(tuned[k], start[k]) for k in start)
    for k, m in masks.items():  # the pruned weights stay pruned
        assert torch.equal(tuned[k] == 0, start[k] == 0)
    again = ft.finetune_member(space, params, c, 20, seed=0, lr=1e-3, threads=1)
    assert all(torch.equal(tuned[k], again[k]) for k in tuned)
    other = ft.finetune_member(space, params, c, 20, seed=1, lr=1e-3, threads=1)
    assert any(not torch.equal(tuned[k], other[k]) for k in tuned)
    assert all(torch.equal(params[k], lm.get_trained_lm(space.config, 0, train=tiny_train())[k])
               for k in params)  # the supernet is untouched


def test_the_evaluator_keeps_and_reloads_fine_tuned_weights(space, params, tmp_path):
    from codesign.export.transformer_run import member_weights

    c = member(space, context=32)
    ev = PerplexityEvaluator(space, train=tiny_train(), threads=1, max_tokens=512,
                             finetuned_dir=tmp_path)
    ev.use_shared_state(ev.shared_state_key(), params)
    before = ev.evaluate(c).accuracy
    assert ev.finetune(c, 10)
    path = ev.finetuned_path(c)
    assert path.is_file() and path.parent == tmp_path
    after = ev.evaluate(c).accuracy  # scored again from the kept weights
    assert after != before
    assert not ev.finetune(c, 10)  # already there: nothing done
    dense16 = member(space, prec="w16a16", sparsity="dense", context=32)
    assert not ft.worth_finetuning(dense16) and ft.worth_finetuning(c)
    assert ft.worth_finetuning(member(space, prec="w8a8", sparsity="2:4"))
    assert not ev.finetune(dense16, 10) and not ev.finetuned_path(dense16).is_file()
    fresh = pickle.loads(pickle.dumps(ev))  # a worker / a later process
    assert fresh.finetuned_dir == tmp_path
    fresh.use_shared_state(fresh.shared_state_key(), params)
    kept = ft.load_member(path)
    assert all(torch.equal(kept[k], v) for k, v in fresh.member_state_dict(c).items())
    assert fresh.evaluate(c).accuracy == after
    no_dir = PerplexityEvaluator(space, train=tiny_train(), threads=1, max_tokens=512)
    no_dir.use_shared_state(no_dir.shared_state_key(), params)
    assert no_dir.evaluate(c).accuracy == before
    with pytest.raises(ValueError, match="finetuned_dir"):
        no_dir.finetune(c, 1)
    # export builds the member from the same weights
    state, source = member_weights(space, c, 0, tmp_path)
    assert "fine-tuned" in source and all(torch.equal(state[k], kept[k]) for k in kept)
    sd = quantized_state_dict(space, c, state)
    assert sd["layers.0.attention.wq.weight"].unique().numel() > 1


def test_a_search_fine_tunes_its_front_and_rescores_it(space, params, tmp_path):
    import json

    from codesign.context import SearchContext
    from codesign.cost_models.devices import load_device
    from codesign.search import SearchConfig, run_search

    ev = PerplexityEvaluator(space, train=tiny_train(), threads=1, max_tokens=1024)
    ev.use_shared_state(ev.shared_state_key(), params)
    ctx = SearchContext(load_device("pixel8"), space.backend, space, ev, 0.01, "analytic")
    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms",
                          space="transformer", trials=4, out=tmp_path / "run", progress=False,
                          finetune_steps=3)
    result = run_search(config, context=ctx)
    pareto = json.loads((result.run_dir / "pareto.json").read_text())
    assert pareto["finetune_steps"] == 3 and pareto["members"]
    tuned = [m for m in pareto["members"] if ft.worth_finetuning(space.decode(m["params"]))]
    assert tuned, "the tiny front has a 4-bit or 2:4 member"
    for m in pareto["members"]:  # 4-bit / 2:4 ones scored again with the fine-tuned weights
        path = ev.finetuned_path(space.decode(m["params"]))
        if m in tuned:
            assert path.is_file() and m["accuracy_before_finetune"] > 1
            assert m["perplexity"] != m["accuracy_before_finetune"]
        else:
            assert not path.is_file() and "accuracy_before_finetune" not in m
