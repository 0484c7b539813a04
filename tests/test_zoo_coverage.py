"""Model-zoo coverage (issue 18): every image-classification class of transformers lowers and
prices on pixel8 with both back-ends (>= 95%), and every failure names its op or step."""
import pytest
import torch
from torch import nn

from benchmarks.zoo_coverage import ZooRow, blocker_of, coverage, markdown, price_zoo
from benchmarks.zoo_entries import ZooEntry, vision_entries
from codesign.cost_models.devices import load_device
from codesign.pricing import price_module
from tests.models import small_convnet


def test_vision_entries_are_every_class_of_the_mapping():
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as mapping)

    classes = {n for names in mapping.values()
               for n in (names if isinstance(names, tuple) else (names,))}
    entries = vision_entries()
    assert {e.name for e in entries} == classes and len(entries) == len(classes)
    assert all(e.family == "vision" and e.key in mapping for e in entries)


@torch.library.custom_op("codesign_zoo_test::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@opaque.register_fake
def _(x):
    return torch.empty_like(x)


class Opaque(nn.Module):
    def forward(self, x):
        return torch.ops.codesign_zoo_test.opaque(x)


def _missing_library():
    raise ImportError("FooForImageClassification requires the foo library but it was not found")


def test_price_zoo_rows_match_predict_and_name_failures():
    entries = [ZooEntry("SmallConvNet", "small", "test", lambda: (small_convnet(), (1, 3, 32, 32))),
               ZooEntry("Opaque", "opaque", "test", lambda: (Opaque(), (1, 8))),
               ZooEntry("Foo", "foo", "test", _missing_library)]
    rows = price_zoo(entries, ["pixel8"], ["xnnpack", "codesign"], ["fp32", "int8"])
    assert len(rows) == 3 * 2 * 2
    ok = {(r.backend, r.dtype): r for r in rows if r.model == "SmallConvNet"}
    assert all(r.ok for r in ok.values())
    for (backend, dtype), row in ok.items():  # one lowering, the price `codesign predict` gives
        priced = price_module(small_convnet(), (1, 3, 32, 32), load_device("pixel8"),
                              backend=backend, dtype=dtype)
        assert row.latency_s == pytest.approx(priced.latency_s, rel=1e-12)
    opaque_rows = [r for r in rows if r.model == "Opaque"]
    assert all(not r.ok and r.stage == "lower" and r.blocker == "codesign_zoo_test.opaque.default"
               for r in opaque_rows)
    foo = [r for r in rows if r.model == "Foo"]
    assert all(r.stage == "build" and r.blocker == "foo (library not installed)" for r in foo)
    assert coverage(rows, "pixel8", "xnnpack", "fp32") == (1, 3)
    table = markdown(rows)
    assert "blocked: `codesign_zoo_test.opaque.default`" in table
    assert "xnnpack fp32: 1/3 (33.3%)" in table


@pytest.mark.parametrize("stage,message,blocker", [
    ("lower", "no lowering rule for aten.sort.default (node sort); it cannot be priced",
     "aten.sort.default"),
    ("lower", "torch.export failed at input shape [1, 3]: RuntimeError: bad", "torch.export"),
    ("price", "cannot price op 'attn.softmax': back-end x has no kernel for op kind softmax",
     "softmax (attn.softmax)"),
])
def test_blocker_names_the_op_or_step(stage, message, blocker):
    assert blocker_of(stage, message) == blocker


@pytest.mark.slow
def test_vision_zoo_prices_on_pixel8_with_both_backends():
    rows = price_zoo(vision_entries(), ["pixel8"], ["xnnpack", "codesign"], ["fp32"])
    for backend in ("xnnpack", "codesign"):
        priced, total = coverage(rows, "pixel8", backend, "fp32")
        assert total == len(vision_entries())
        assert priced / total >= 0.95, [(r.model, r.reason) for r in rows if not r.ok]
    for row in rows:
        if row.ok:
            assert row.latency_s > 0 and row.n_ops > 0
        else:  # named: an op of the graph, or the step with the library it lacks
            assert row.blocker and row.blocker not in ("build", "lower", "price"), row
            assert row.reason
