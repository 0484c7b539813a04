"""The byte-level LM supernet of the transformer space and its perplexity evaluator, on a tiny
space and training budget: data splits, deterministic cached training, candidate weights that load
into ExecuTorch's decoder, 2:4 masks, fake quantization that raises perplexity, and a search whose
front is labelled perplexity (lower is better)."""
import dataclasses
import json

import numpy as np
import optuna
import pytest
import torch

from codesign.context import SearchContext
from codesign.evaluation.fake_quant import fake_quant_per_token, quantize_weight
from codesign.evaluation.perplexity import (PerplexityEvaluator, bootstrap_perplexity,
                                            paired_ratio, quantized_state_dict)
from codesign.report import report
from codesign.search import SearchConfig, run_search
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.kernels.specs import QuantSpec
from codesign.search_spaces import transformer_lm as lm
from codesign.search_spaces.transformer import LayerChoice, TransformerSpace
from codesign.search_spaces.transformer_model import build_decoder
from tests.transformer_helpers import temporary_lm_cache, tiny_config, tiny_train

PIXEL8 = load_device("pixel8")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with temporary_lm_cache(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def space():
    return TransformerSpace(load_backend("codesign"), config=tiny_config())


@pytest.fixture(scope="module")
def params(cache, space):
    return lm.get_trained_lm(space.config, 0, train=tiny_train(), threads=1)


def candidate(space, *, layers=2, d_model=256, heads=4, gqa_ratio=2, context=64,
              prec="w16a16", group=32, sparsity="dense"):
    p = {"layers": layers, "d_model": d_model, "heads": heads, "gqa_ratio": gqa_ratio,
         "ffn_mult": 2, "context": context, "prefill_tile": "default", "decode_tile": "default"}
    for unit in [f"l{i}" for i in range(layers)] + ["head"]:
        p.update({f"{unit}.prec": prec, f"{unit}.group": group, f"{unit}.ffn_sparsity": sparsity})
    active = space.active_names(p)
    return space.decode({k: v for k, v in p.items() if k in active})


def test_splits_are_contiguous_fixed_cpython_text():
    text = lm.corpus()
    parts = [lm.split_tokens(s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(text) > 400_000
    assert bytes(torch.cat(parts).to(torch.uint8).tolist()) == text
    assert [round(len(p) / len(text), 2) for p in parts] == [0.90, 0.05, 0.05]
    assert int(parts[0].max()) < 256


def test_training_is_cached_and_deterministic(cache, space, params):
    path = lm.cache_path(space.config, 0, tiny_train())
    assert path.is_file()
    lm._LOADED.clear()
    again = lm.get_trained_lm(space.config, 0, train=tiny_train())  # from disk
    assert all(torch.equal(params[k], again[k]) for k in params)
    fresh = lm.train_lm_supernet(space.config, 0, tiny_train(), threads=1)
    assert all(torch.equal(params[k], fresh[k]) for k in params)
    other = lm.cache_key(space.config, 1, tiny_train())
    assert other != lm.cache_key(space.config, 0, tiny_train())


class _Interrupted(Exception):
    """Raised from the progress callback: a cold start interrupted mid-training."""


def test_interrupted_training_resumes_from_its_checkpoint(space, tmp_path, monkeypatch):
    """A cold start killed after step 5 resumes at the step-4 checkpoint (not at 0) and ends
    with exactly the weights of a training that was never interrupted."""
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    train = dataclasses.replace(tiny_train(), steps=7)
    path = lm.cache_path(space.config, 0, train)
    ckpt = lm.checkpoint_path(path)
    assert ckpt.parent == path.parent == tmp_path / "supernets"

    def stop_after_5(report):
        if report.step == 5:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        lm.get_trained_lm(space.config, 0, train=train, threads=1, progress=stop_after_5,
                          checkpoint_every=2)
    assert not path.exists()
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    reports = []
    try:
        resumed = lm.get_trained_lm(space.config, 0, train=train, threads=1,
                                    progress=reports.append, checkpoint_every=2)
    finally:
        lm._LOADED.clear()
    steps = [r.step for r in reports if r.steps]
    assert steps == [5, 6, 7]  # steps 1-4 came from the checkpoint
    assert any(f"resumed at step 4/7 from {ckpt}" in r.message for r in reports)
    assert path.is_file() and not ckpt.exists()  # the checkpoint goes once the weights are cached
    straight = lm.train_lm_supernet(space.config, 0, train, threads=1)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_checkpoint_of_another_training_is_not_resumed(space, tmp_path):
    train = dataclasses.replace(tiny_train(), steps=4)
    ckpt = tmp_path / "x.ckpt.pt"
    with pytest.raises(_Interrupted):
        lm.train_lm_supernet(space.config, 0, train, threads=1, checkpoint=ckpt,
                             checkpoint_every=2, progress=lambda r: _raise_at(r, 3))
    reports = []
    lm.train_lm_supernet(space.config, 1, train, threads=1, checkpoint=ckpt,  # another seed
                         checkpoint_every=0, progress=reports.append)
    assert [r.step for r in reports if r.steps][0] == 1


def _raise_at(report, step):
    if report.step == step:
        raise _Interrupted


def test_lm_training_reports_progress_on_stderr_only(space, tmp_path, monkeypatch, capsys):
    from codesign.progress import TrainingProgress

    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path))
    train = dataclasses.replace(tiny_train(), steps=10)
    try:
        lm.get_trained_lm(space.config, 0, train=train, threads=1,
                          progress=TrainingProgress("LM supernet training"))
    finally:
        lm._LOADED.clear()
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("LM supernet training: training the ")
    steps = [line for line in lines if ": step " in line]
    assert [line.split("step ")[1].split(" ")[0] for line in steps] == \
        [f"{k}/10" for k in range(1, 11)]  # not a terminal: a line each 10%
    assert "loss" in steps[-1] and "ETA 0s" in steps[-1]
    assert lines[-1] == f"LM supernet training: cached {lm.cache_path(space.config, 0, train)}"


def test_shipped_weights_load_without_training(space, params, tmp_path, monkeypatch):
    """A cold cache with weights shipped for the training key loads them (float16 on disk)
    instead of training; a damaged shipped file is skipped and the supernet trained."""
    monkeypatch.setattr(lm, "CONFIG_DIR", tmp_path / "configs")
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(tmp_path / "cold"))
    monkeypatch.setattr(lm, "_LOADED", {})
    shipped = lm.shipped_path(space.config, 0, tiny_train())
    assert shipped.parent == tmp_path / "configs" / "weights"
    digest = lm.save_shipped_weights(params, shipped)
    import hashlib
    assert digest == hashlib.sha256(shipped.read_bytes()).hexdigest()
    events = []
    loaded = lm.get_trained_lm(space.config, 0, train=tiny_train(), threads=1,
                               progress=events.append)
    assert [e.message for e in events] == [f"loaded {shipped}"]
    assert all(torch.equal(loaded[k], params[k].half().float()) for k in params)
    assert not lm.cache_path(space.config, 0, tiny_train()).exists()
    monkeypatch.setattr(lm, "_LOADED", {})
    shipped.write_bytes(b"not safetensors")
    events.clear()
    again = lm.get_trained_lm(space.config, 0, train=tiny_train(), threads=1,
                              progress=events.append)
    assert events[0].message.startswith(f"ignoring unreadable weights {shipped}")
    assert all(torch.equal(again[k], params[k]) for k in params)  # trained: the same weights


def test_candidate_state_dict_is_the_subnet_in_executorch_names(space, params):
    for arch_kw in ({}, {"layers": 1, "d_model": 128, "heads": 2, "gqa_ratio": 1},
                    {"d_model": 128, "heads": 4, "gqa_ratio": 2, "context": 32}):
        cand = candidate(space, **arch_kw)
        sd = lm.candidate_state_dict(space, cand, train=tiny_train())
        assert all(v.dtype == torch.float32 for v in sd.values())
        model = build_decoder(cand, 256, sd, kv_cache=False, full_logits=True)
        x = lm.split_tokens("val")[:cand.arch.context].view(1, -1)
        ref = lm.run_subnet(lm.ModuleCache(256), params, cand.arch, x)
        torch.testing.assert_close(model(x), ref)
        a = cand.arch
        assert sd["layers.0.attention.wk.weight"].shape == (a.kv_heads * a.head_dim, a.d_model)
        assert torch.equal(sd["layers.0.attention.wq.weight"],
                           params["layers.0.attention.wq.weight"][:a.q_dim, :a.d_model])
        assert torch.equal(sd["layers.0.attention.wo.weight"],
                           params["layers.0.attention.wo.weight"][:a.d_model, :a.q_dim])


def test_a_head_is_the_same_weights_and_rotation_in_every_subnet(space):
    """Issue 20: with head_dim = d_model / heads, head 0 of a d 128 / 4-head subnet was rows
    0-31 of Q rotated with 32-wide RoPE frequencies, and of the d 256 / 4-head one rows 0-63
    with 64-wide ones: one weight, two roles. With the space's fixed head_dim it is one slice
    and one rotation in every subnet."""
    from codesign.search_spaces.transformer import TransformerArch

    cfg = space.config
    params = lm._init_params(lm.max_arch(cfg), cfg.vocab, 0)
    wide = TransformerArch(2, 256, 4, 2, 2, 64, cfg.head_dim)
    narrow = TransformerArch(1, 128, 2, 1, 2, 64, cfg.head_dim)
    sw, sn = lm.slice_params(params, wide), lm.slice_params(params, narrow)
    q = "layers.0.attention.wq.weight"
    assert sw[q].shape == (256, 256) and sn[q].shape == (128, 128)
    assert torch.equal(sn[q], sw[q][:128, :128])  # heads 0-1: the same rows, fewer inputs
    o = "layers.0.attention.wo.weight"
    assert torch.equal(sn[o], sw[o][:128, :128])
    modules = lm.ModuleCache(cfg.vocab)
    rope = "layers.0.attention.rope.freqs_cos"
    bw = dict(modules.get(wide).named_buffers())[rope]
    bn = dict(modules.get(narrow).named_buffers())[rope]
    assert bw.shape == (64, cfg.head_dim // 2) and torch.equal(bw, bn)
    with pytest.raises(ValueError, match="head_dim=32"):
        lm.check_arch(cfg, TransformerArch(1, 128, 4, 2, 2, 64))  # d 128 / 4 heads: 32 wide


def test_two_four_masks_baked_into_ffn_weights_only(space):
    cand = candidate(space)
    layers = (dataclasses.replace(cand.layers[0], ffn_sparsity="2:4"), cand.layers[1])
    sd = lm.candidate_state_dict(space, dataclasses.replace(cand, layers=layers),
                                 train=tiny_train())
    for w in ("w1", "w3", "w2"):
        zeros = (sd[f"layers.0.feed_forward.{w}.weight"] == 0).reshape(-1, 4).sum(1)
        assert torch.all(zeros == 2)
        assert (sd[f"layers.1.feed_forward.{w}.weight"] == 0).sum() == 0
    assert (sd["layers.0.attention.wq.weight"] == 0).sum() == 0


def test_fake_quant_matches_torchao_schemes():
    w = torch.randn(8, 64)
    q = quantize_weight(w, QuantSpec(4, 8, 32), symmetric_groups=True)
    for row_q, row in zip(q.reshape(-1, 32), w.reshape(-1, 32)):
        scale = row.abs().max() / 7.5
        levels = torch.round(row_q / scale)
        assert torch.allclose(levels * scale, row_q, atol=1e-6)
        assert levels.min() >= -8 and levels.max() <= 7
    assert len(torch.unique(q[0, :32])) <= 16 and not torch.equal(q, w)
    x = torch.randn(3, 5, 64) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1)
    y = fake_quant_per_token(x)
    rel = ((y - x).abs().amax(-1) / (x.amax(-1) - x.amin(-1))).max()
    assert 0 < rel <= 0.5 / 255 + 1e-6  # every token quantized with its own range


@pytest.fixture(scope="module")
def evaluator(cache, space, params):
    return PerplexityEvaluator(space, seed=0, train=tiny_train(), threads=1, max_tokens=8192)


def test_perplexity_scores_max_tokens_of_each_split(evaluator, space):
    # the Evaluator contract (interval, determinism, splits, pickling): the conformance suite
    cand = candidate(space)
    val = evaluator.evaluate(cand)
    assert val.interval[0] < val.accuracy < val.interval[1] and 1 < val.accuracy < 256
    assert val.n == 8192  # max_tokens (the whole split by default)
    assert evaluator.evaluate(cand, split="test").accuracy != val.accuracy
    # every context scores the same predicted bytes
    short = evaluator.evaluate(candidate(space, context=32))
    assert short.n == val.n


def test_four_bit_groups_change_weights_and_perplexity(evaluator, space):
    # On this barely trained tiny model 4-bit weights change perplexity but do not raise it
    # beyond the intervals; on the default trained supernet they do (BENCHMARKS.md, "Issue 9:
    # perplexity (measured)").
    c16 = candidate(space, prec="w16a16")
    c4 = candidate(space, prec="w4a16", group=128)
    sd = lm.candidate_state_dict(space, c16, train=tiny_train())
    q4 = quantized_state_dict(space, c4, sd)
    name = "layers.0.feed_forward.w1.weight"
    assert not torch.equal(q4[name], sd[name])
    assert len(torch.unique(q4[name][0, :128])) <= 16
    # the head is quantized from the shared table (untied, as exported); the gather reads floats
    assert torch.equal(q4["tok_embeddings.weight"], sd["tok_embeddings.weight"])
    assert not torch.equal(q4["output.weight"], sd["tok_embeddings.weight"])
    model = evaluator.build_quantized(c4)
    assert model.output.weight is not model.tok_embeddings.weight
    assert torch.equal(model.output.weight, q4["output.weight"])
    p16, p4 = evaluator.evaluate(c16), evaluator.evaluate(c4)
    assert p4.accuracy != p16.accuracy and p4.interval != p16.interval
    ratio, (lo, hi) = paired_ratio(evaluator.unit_nll(c16, "val"), evaluator.unit_nll(c4, "val"))
    assert lo <= ratio <= hi and ratio == pytest.approx(p4.accuracy / p16.accuracy)


def test_bootstrap_interval_brackets_the_mean():
    units = np.random.default_rng(0).normal(1.5, 0.3, 200)
    ppl, (lo, hi) = bootstrap_perplexity(units, seed=3)
    assert lo < ppl < hi and ppl == pytest.approx(np.exp(units.mean()))
    assert bootstrap_perplexity(units, seed=3) == (ppl, (lo, hi))


def test_a_search_renders_lm_training_progress():
    from codesign.context import build_context
    from codesign.progress import TrainingProgress

    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms",
                          space="transformer", progress=False)
    progress = build_context(config).evaluator.progress
    assert isinstance(progress, TrainingProgress) and progress.label == "LM supernet training"
    assert progress.bar is False  # --no-progress / --json / not a terminal: plain lines


def test_search_minimises_perplexity_and_labels_it(evaluator, space, tmp_path):
    ctx = SearchContext(PIXEL8, space.backend, space, evaluator, 0.01, "analytic")
    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms",
                          space="transformer", trials=6, out=tmp_path / "run", progress=False)
    result = run_search(config, context=ctx)
    pareto = json.loads((result.run_dir / "pareto.json").read_text())
    assert pareto["metric"] == "perplexity" and pareto["higher_is_better"] is False
    assert pareto["members"] and "accuracy" not in pareto["members"][0]
    for m in pareto["members"]:
        lo, hi = m["perplexity_interval"]
        assert lo <= m["perplexity"] <= hi and m["test_perplexity"] > 1
        assert m["latency_s"] <= 0.01 and m["memory_bytes"] <= m["memory_share_bytes"]
    study = optuna.load_study(study_name="codesign", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(result.run_dir / "study.journal"))))
    assert study.directions[0] == optuna.study.StudyDirection.MINIMIZE
    header = (result.run_dir / "pareto.csv").read_text().splitlines()[0]
    assert "perplexity" in header and "accuracy" not in header
    text = report(result.run_dir, member=pareto["members"][0]["trial"])
    assert "val ppl" in text and "lower is better" in text and "val acc" not in text
    assert "prefill (time to first token)" in text
    # the classical references on the same bytes, in pareto.json and the report
    refs = {r["model"]: r for r in pareto["references"]}
    assert list(refs) == ["unigram", "bigram", "kn3", "kn5", "kn7"]
    assert refs == {r["model"]: r for r in evaluator.references()}
    assert refs["unigram"]["val"] > refs["bigram"]["val"] > refs["kn3"]["val"] > 1
    assert "references on the same bytes (val/test): add-one unigram" in text
    assert f"interpolated Kneser-Ney 7-gram {refs['kn7']['val']:.2f}/" in text


def test_a_user_function_may_declare_perplexity():
    from codesign.evaluation.base import AccuracyResult, FunctionEvaluator

    def ppl(candidate, split):
        return 12.5

    ppl.metric, ppl.higher_is_better = "perplexity", False
    ev = FunctionEvaluator(ppl)
    result = ev.evaluate(None)
    assert (ev.metric, ev.higher_is_better) == ("perplexity", False)
    assert result.accuracy == 12.5 and result.metric == "perplexity"  # no [0, 1] check

    def mislabelled(candidate, split):
        return AccuracyResult(0.5, (0.4, 0.6), 10, split)  # says accuracy

    mislabelled.metric = "perplexity"
    with pytest.raises(ValueError, match="returned 'accuracy', but declares 'perplexity'"):
        FunctionEvaluator(mislabelled).evaluate(None)


def test_training_under_no_grad_trains_the_same_weights(cache, space, params):
    """A scoring path runs under torch.no_grad(); a supernet trained from there is the same."""
    with torch.no_grad():
        trained = lm.train_lm_supernet(space.config, 0, tiny_train(), threads=1)
    assert all(torch.equal(params[k], trained[k]) for k in params)


def test_search_on_a_cold_cache_trains_the_supernet_before_the_first_trial(space, tmp_path,
                                                                           monkeypatch):
    """Issue 16: with no cached supernet every trial used to FAIL ("element 0 of tensors does
    not require grad"): the evaluator trained it lazily inside its no_grad scoring."""
    cold = tmp_path / "cold-cache"
    monkeypatch.setenv("CODESIGN_CACHE_DIR", str(cold))
    monkeypatch.setattr(lm, "_LOADED", {})
    evaluator = PerplexityEvaluator(space, seed=0, train=tiny_train(), threads=1,
                                    max_tokens=4096)
    cached_at_first_trial = []
    score = evaluator.evaluate

    def spy(candidate, *, split="val"):
        if not cached_at_first_trial:
            cached_at_first_trial.append(lm.cache_path(space.config, 0, tiny_train()).is_file())
        return score(candidate, split=split)

    monkeypatch.setattr(evaluator, "evaluate", spy)
    ctx = SearchContext(PIXEL8, space.backend, space, evaluator, 0.01, "analytic")
    config = SearchConfig(device="pixel8", budget_s=0.01, budget_text="10ms",
                          space="transformer", trials=3, out=tmp_path / "run", progress=False)
    result = run_search(config, context=ctx)
    assert cached_at_first_trial == [True], "the supernet is trained before the first trial"
    assert result.n_failed == 0 and result.pareto["n_complete"] == 3
    assert result.pareto["members"]
