"""The fast MBConv pricing path against the per-op one it replaces in batches.

``MBConvSpace.op_batch`` (memoised rows) must give the columns of
``OpBatch.from_oplists([to_ops(c) ...])`` bit for bit, hence the same latencies, and the fast
``decode`` the candidate of the define-by-run walk; a change to either side that makes them
diverge fails here.
"""
import json
import pickle
from dataclasses import fields

import numpy as np
import pytest

from codesign.bench_scoring import run_scoring_benchmark
from codesign.cost_models.analytic import AnalyticCostModel
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.cost_models.ir import DeferredOps, OpBatch
from codesign.cost_models.lowering import insert_precision_boundaries
from codesign.search_spaces.mbconv import (SPARSITY_CHOICES, Arch, Candidate, Format, LayerChoice,
                                           MBConvSpace, StageChoice, lower_arch, units)

SHAPES = [None, (1, 3, 32, 32), (2, 3, 97, 80), (1, 3, 224, 224)]


@pytest.fixture(scope="module", params=["codesign", "xnnpack"])
def space(request):
    return MBConvSpace(load_backend(request.param), threads_choices=(1, 2, 4))


def per_op_batch(space, candidates, shape=None) -> tuple[OpBatch, list]:
    """The reference: every candidate's op records, then one row per record."""
    oplists = [insert_precision_boundaries(lower_arch(
        c, space.config, shape or space.deploy_input_shape, space.backend, space.config.tiles))
        for c in candidates]
    return OpBatch.from_oplists(oplists), oplists


def assert_same_columns(fast: OpBatch, ref: OpBatch) -> None:
    assert fast.n_candidates == ref.n_candidates
    for f in fields(OpBatch):
        if f.name in ("n_candidates", "ops"):
            continue
        a, b = getattr(fast, f.name), getattr(ref, f.name)
        assert a.dtype == b.dtype and a.shape == b.shape, f.name
        assert a.tobytes() == b.tobytes(), f.name  # bit for bit, NaNs and signed zeros too


def odd_candidates(space, rng, count: int) -> list[Candidate]:
    """Candidates decode never gives (per-unit params from older runs): any precision, sparsity
    and tile on any unit, the stem and classifier included, and tile names no config has."""
    cfg = space.config
    precisions = sorted(set(space.conv_precisions) | set(space.linear_precisions))
    tiles = ["default", "no-such-tile", *cfg.tiles]
    out = []
    for _ in range(count):
        arch = Arch(int(rng.choice(cfg.stem_widths)), tuple(
            StageChoice(int(rng.choice(s.widths)),
                        *zip(*[(int(rng.choice(s.kernels)), int(rng.choice(s.expands)))
                               for _ in range(int(rng.choice(s.depths)))]))
            for s in cfg.stages), int(rng.choice(cfg.head_widths)))
        layers = tuple(sorted((u, LayerChoice(str(rng.choice(precisions)),
                                              str(rng.choice(list(SPARSITY_CHOICES))),
                                              str(rng.choice(tiles)))) for u in units(arch)))
        out.append(Candidate(arch, layers, 1))
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_op_batch_equals_the_per_op_path(space, shape):
    rng = np.random.default_rng(11)
    cands = [space.decode(space.sample(rng)) for _ in range(200)]
    cands += [space.decode(p) for p in space.seed_params()]
    cands += [space.uniform(space.config.max_arch(), label) for label in space.formats]
    ref, oplists = per_op_batch(space, cands, shape)
    fast = space.op_batch(cands, shape)
    assert_same_columns(fast, ref)
    assert isinstance(fast.ops, DeferredOps) and len(fast.ops) == len(ref)
    assert list(fast.ops) == [op for ops in oplists for op in ops]
    assert [space.to_ops(c, shape) for c in cands[:5]] == oplists[:5]
    device = load_device("pixel8")
    for threads in (1, 2, 4):
        model = AnalyticCostModel(device, space.backend, threads=threads)
        a, b = model.predict(fast), model.predict(ref)
        assert np.array_equal(a.latency_s, b.latency_s)
        assert np.array_equal(a.op_latency_s, b.op_latency_s)


def test_op_batch_equals_the_per_op_path_on_any_unit_choice(space):
    cands = odd_candidates(space, np.random.default_rng(12), 120)
    ref, _ = per_op_batch(space, cands)
    assert_same_columns(space.op_batch(cands), ref)


def test_the_memo_grows_across_calls_without_changing_a_batch(space):
    rng = np.random.default_rng(13)
    cands = [space.decode(space.sample(rng)) for _ in range(80)]
    fresh = MBConvSpace(space.backend, threads_choices=(1, 2, 4))
    parts = [fresh.op_batch(cands[:30]), fresh.op_batch(cands[30:]), fresh.op_batch([])]
    assert parts[2].n_candidates == 0 and len(parts[2]) == 0
    whole = fresh.op_batch(cands)
    assert_same_columns(whole, per_op_batch(space, cands)[0])
    n = len(parts[0])
    assert whole.kind[:n].tobytes() == parts[0].kind.tobytes()
    assert whole.flops[n:].tobytes() == parts[1].flops.tobytes()


# ------------------------------------------------------------------ decode
def walk_decode(space, params) -> Candidate:
    """The define-by-run decode the fast one replaced: check, then read name by name."""
    space.check_params(params)
    stages = []
    for i in range(len(space.config.stages)):
        depth = params[f"s{i}.depth"]
        stages.append(StageChoice(params[f"s{i}.width"],
                                  tuple(params[f"s{i}.b{j}.kernel"] for j in range(depth)),
                                  tuple(params[f"s{i}.b{j}.expand"] for j in range(depth))))
    arch = Arch(params["stem.width"], tuple(stages), params["head.width"])
    palette = [params[f"fmt.{slot}"] for slot in range(space.max_formats)]
    layers = []
    for u in units(arch):
        label = palette[params.get(f"{u}.fmt", 0)]
        if label not in space.unit_formats(u):
            label = palette[0]
        fmt = Format.parse(label)
        layers.append((u, LayerChoice(fmt.precision, fmt.sparsity,
                                      params.get(f"{u}.tile", "default"))))
    return Candidate(arch, tuple(sorted(layers)), params.get("threads", space.threads_choices[-1]))


@pytest.mark.parametrize("max_formats, threads", [(3, (4,)), (1, (1, 2, 4)), (2, (1,))])
def test_fast_decode_equals_the_define_by_run_walk(space, max_formats, threads):
    sp = MBConvSpace(space.backend, threads_choices=threads, max_formats=max_formats)
    rng = np.random.default_rng(14)
    for _ in range(150):
        params = sp.sample(rng)
        candidate = sp.decode(params)
        assert candidate == walk_decode(sp, params)
        assert candidate.key() == walk_decode(sp, params).key()
    # values equal to a choice but of another type decode as given, as they always did
    odd = {**params, "s0.depth": np.int64(params["s0.depth"]), "stem.width": 16.0,
           "classifier.tile": 1.0}
    assert sp.decode(odd).key() == walk_decode(sp, odd).key()
    for bad in ({**params, "s1.b0.kernel": 4}, {**params, "s2.depth": 9},
                {k: v for k, v in params.items() if k != "s3.b1.expand"}):
        with pytest.raises(ValueError) as fast_error:
            sp.decode(bad)
        with pytest.raises(ValueError) as walk_error:
            walk_decode(sp, bad)
        assert str(fast_error.value) == str(walk_error.value)


def test_deferred_ops_build_once_and_check_their_count():
    calls = []

    def build():
        calls.append(1)
        return ["a", "b", "c"]

    ops = DeferredOps(3, build)
    assert len(ops) == 3 and bool(ops) and not calls
    assert ops[1] == "b" and ops[1:] == ["b", "c"] and list(ops) == ["a", "b", "c"]
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="built 3 ops for a batch of 4"):
        DeferredOps(4, build)[0]
    assert pickle.loads(pickle.dumps(DeferredOps(3, build))) == ["a", "b", "c"]


@pytest.mark.parametrize("backend", ["codesign", "xnnpack"])
def test_scoring_benchmark_reports_the_end_to_end_rate(backend):
    result = run_scoring_benchmark(40, backend=backend, repeats=1, reference_candidates=10)
    assert result["distinct_candidates"] == result["candidates"] == 40
    for key in ("params_to_latency_per_s", "score_only_per_s", "lower_and_score_per_s",
                "decode_lower_and_score_per_s", "reference_params_to_latency_per_s"):
        assert result[key] > 0, key
    assert set(result["seconds"]) >= {"decode", "lower", "score"}


def test_cli_bench_scoring_names_its_backend(capsys):
    from codesign.cli import main

    assert main(["bench", "scoring", "--quick", "--backend", "xnnpack", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "xnnpack" and result["candidates"] == 1000
    assert result["params_to_latency_per_s"] > 0
    assert main(["bench", "kernels", "--backend", "xnnpack"]) == 2
    assert "scoring suite only" in capsys.readouterr().err
