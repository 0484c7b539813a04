"""The fast MBConv pricing path against the per-op one it replaces in batches.

``MBConvSpace.op_batch`` (memoised rows) must give the columns of
``OpBatch.from_oplists([to_ops(c) ...])`` bit for bit, hence the same latencies; a change to
either side that makes them diverge fails here.
"""
import pickle
from dataclasses import fields

import numpy as np
import pytest

from cost_models.analytic import AnalyticCostModel
from cost_models.backends import load_backend
from cost_models.devices import load_device
from cost_models.ir import DeferredOps, OpBatch
from cost_models.lowering import insert_precision_boundaries
from search_spaces.mbconv import (SPARSITY_CHOICES, Arch, Candidate, LayerChoice, MBConvSpace,
                                  StageChoice, lower_arch, units)

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
    cands = [space.decode(space.sample(rng)) for _ in range(150)]
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
