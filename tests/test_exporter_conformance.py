"""Every registered exporter honours the ``Exporter`` protocol (codesign/registry.py).

Written once, run over ``codesign.registry.EXPORTERS`` (optuna's ``pytest_samplers.py``
pattern). Each exporter opens a tiny finished run (``TINY_RUNS``: a small space, on the
``codesign`` back-end, with one member XNNPACK expresses and one it cannot) through its
``open`` and exports members through its ``export_member``, as ``codesign export`` does. The
checks are plain functions (``CHECKS``) taking a ``TinyRun``, so a plug-in's own test can run
them on its exporter.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from codesign.cost_models.backends import load_backend
from codesign.export.run import MemberResult, _sha256
from codesign.pareto_member import ParetoMember
from codesign.registry import EXPORTERS
from codesign.userinput import BadInput
from tests.export_helpers import write_run

NOT_A_POINT = {"trial": 9, "params": {"not": "a point of the space"}}


@dataclass
class TinyRun:
    """A finished run for ``exporter``: ``evaluator`` the one to open it with (None: the
    run's own), ``exportable`` a member XNNPACK expresses, ``refused`` one it cannot."""

    exporter: Any
    run_dir: Path
    evaluator: Any
    exportable: dict[str, Any]
    refused: dict[str, Any]

    def export(self, member: dict[str, Any], formats=("pte", "pt2")) -> MemberResult:
        run = self.exporter.open(self.run_dir, self.evaluator)
        out = self.run_dir / "export" / f"trial-{member['trial']}"
        return self.exporter.export_member(run, ParetoMember.from_json(member), out, formats,
                                           lambda _: None)


def _supernet_run(root: Path, monkeypatch) -> tuple[Path, Any, dict, dict]:
    from codesign.evaluation.supernet_evaluator import SupernetEvaluator
    from codesign.search_spaces.mbconv import LayerChoice, units
    from tests.export_helpers import TINY_TRAIN, small_space

    evaluator = SupernetEvaluator(small_space(load_backend("codesign")), seed=0,
                                  train=TINY_TRAIN)
    space = evaluator.space
    arch = space.decode(space.sample(np.random.default_rng(0))).arch

    def member(trial: int, precision_of: Callable[[str], str]) -> dict:
        layers = tuple(sorted((u, LayerChoice(precision_of(u))) for u in units(arch)))
        candidate = dataclasses.replace(space.decode(space.sample(np.random.default_rng(0))),
                                        arch=arch, layers=layers, threads=1)
        return {"trial": trial, "params": space.encode(candidate), "latency_s": 0.004,
                "threads": 1}

    # w4a8 convolutions: the project's int4 kernels run them, XNNPACK has no 4-bit conv
    members = [member(1, lambda unit: "w32a32"),
               member(2, lambda unit: "w4a8" if unit[1:2].isdigit() else "w32a32")]
    run_dir = write_run(root, "tests.export_helpers:small_space", "codesign", members)
    return run_dir, evaluator, *members


def _transformer_run(root: Path, monkeypatch) -> tuple[Path, Any, dict, dict]:
    import codesign.export.transformer_run as transformer_run
    from codesign.search_spaces.transformer import Candidate, LayerChoice, TransformerArch
    from tests.transformer_helpers import tiny_space

    # seeded random weights, the exporter's own fallback: the program, its runtime check and its
    # files do not depend on the values (training the LM is the evaluator suite's business)
    monkeypatch.setattr(transformer_run, "member_weights",
                        lambda space, candidate, seed, finetuned=None: (None, "random (test)"))
    space = tiny_space(load_backend("codesign"))
    cfg = space.config
    arch = TransformerArch(min(cfg.layers), min(cfg.d_model), min(cfg.heads), min(cfg.heads),
                           min(cfg.ffn_mults), min(cfg.context), cfg.head_dim)

    def member(trial: int, precision: str) -> dict:
        group = min(space.group_choices) if precision.startswith("w4") else 0
        choice = LayerChoice(precision, group)
        candidate = Candidate(arch, (choice,) * arch.layers, choice, threads=1)
        return {"trial": trial, "params": space.encode(candidate), "latency_s": 0.001}

    # w4a16: the codesign kernels run 4-bit weights on 16-bit activations, XNNPACK does not
    members = [member(1, "w16a16"), member(2, "w4a16")]
    run_dir = write_run(root, "tests.transformer_helpers:tiny_space", "codesign", members)
    return run_dir, None, *members


TINY_RUNS: dict[str, Callable[[Path, Any], tuple[Path, Any, dict, dict]]] = {
    "supernet": _supernet_run, "transformer": _transformer_run}


# ------------------------------------------------------------------------------ checks
def _manifest_matches_files(result: MemberResult) -> dict[str, Any]:
    """The member's manifest parses, says the result's status, and hashes its files."""
    manifest = json.loads((result.directory / "manifest.json").read_text())
    assert manifest["status"] == result.status and manifest["reason"] == result.reason
    assert manifest["params"]
    for name, digest in manifest["sha256"].items():
        assert _sha256(result.directory / name) == digest
    return manifest


def check_exports_a_member_to_a_program_that_loads(tiny: TinyRun) -> None:
    """An expressible member: exported, its .pte loads on ExecuTorch's runtime and its .pt2
    with torch.export, both hashed in the manifest."""
    from executorch.runtime import Runtime

    result = tiny.export(tiny.exportable)
    assert result.status == "exported", result.reason
    manifest = _manifest_matches_files(result)
    assert {"model.pte", "model.pt2"} <= set(manifest["sha256"])
    program = Runtime.get().load_program((result.directory / "model.pte").read_bytes())
    assert "forward" in program.method_names
    assert isinstance(torch.export.load(str(result.directory / "model.pt2")),
                      torch.export.ExportedProgram)


def check_refuses_what_xnnpack_cannot_express(tiny: TinyRun) -> None:
    """A member XNNPACK cannot run: no .pte, a reason naming the layer and the precision, and
    still a .pt2 that loads plus the project kernels' contract (a codesign member)."""
    result = tiny.export(tiny.refused)
    assert not result.failed and result.status != "exported"
    assert result.reason and "w4a" in result.reason
    manifest = _manifest_matches_files(result)
    assert manifest["pte"] is None and not (result.directory / "model.pte").exists()
    assert set(manifest["sha256"]) == {"model.pt2", "kernels.json"}
    torch.export.load(str(result.directory / "model.pt2"))
    assert json.loads((result.directory / "kernels.json").read_text())["trial"] == \
        tiny.refused["trial"]


def check_a_member_not_of_the_space_raises(tiny: TinyRun) -> None:
    """``export_member`` raises (``codesign export`` then reports the member as failed with
    the reason) on params that are no point of the run's space."""
    with pytest.raises(ValueError, match="missing params"):
        tiny.export(NOT_A_POINT)


def check_open_refuses_a_run_scored_by_a_user_evaluator(tiny: TinyRun) -> None:
    """The members would be built with weights the run's --evaluator did not score."""
    identity = json.loads((tiny.run_dir / "run.json").read_text())
    scored = tiny.run_dir.parent / f"{tiny.run_dir.name}-user-evaluator"
    write_run(scored, identity["space"], identity["backend"], [])
    (scored / "run.json").write_text(json.dumps({**identity, "evaluator": "mine:ppl"}))
    with pytest.raises(BadInput, match="scored its candidates with --evaluator mine:ppl"):
        tiny.exporter.open(scored)


def check_open_refuses_an_unfinished_run(tiny: TinyRun) -> None:
    empty = tiny.run_dir.parent / f"{tiny.run_dir.name}-empty"
    empty.mkdir(exist_ok=True)
    with pytest.raises(BadInput, match=r"not a finished codesign run \(no run.json\)"):
        tiny.exporter.open(empty, tiny.evaluator)


CHECKS = (check_refuses_what_xnnpack_cannot_express, check_a_member_not_of_the_space_raises,
          check_open_refuses_a_run_scored_by_a_user_evaluator,
          check_open_refuses_an_unfinished_run)
SLOW_CHECKS = (check_exports_a_member_to_a_program_that_loads,)


# ------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CODESIGN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    made: dict[str, TinyRun] = {}

    def get(name: str) -> TinyRun:
        if name not in made:
            if name not in TINY_RUNS:
                pytest.skip(f"no tiny run for exporter {name!r}: its plug-in's tests run "
                            "CHECKS on one")
            run_dir, evaluator, exportable, refused = TINY_RUNS[name](
                tmp_path_factory.mktemp(name) / "run", mp)
            made[name] = TinyRun(EXPORTERS.get(name), run_dir, evaluator, exportable, refused)
        return made[name]
    yield get
    mp.undo()


def test_the_built_in_exporters_are_registered_with_a_tiny_run() -> None:
    assert {"supernet", "transformer"} <= set(EXPORTERS.names())
    assert {"supernet", "transformer"} <= set(TINY_RUNS)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", EXPORTERS.names())
def test_exporter_conformance(tiny_runs, name, check) -> None:
    check(tiny_runs(name))


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("check", SLOW_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", EXPORTERS.names())
def test_exporter_conformance_slow(tiny_runs, name, check) -> None:
    check(tiny_runs(name))
