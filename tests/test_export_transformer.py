"""codesign export of a transformer run: a mixed-precision decoder (4-bit dynamic, static int8,
fp32 head) becomes an XNNPACK .pte with a static KV cache that decodes on ExecuTorch's runtime as
the eager module does; a member with a precision XNNPACK cannot run gets no .pte and a reason
per layer."""
from __future__ import annotations

import hashlib
import json

import pytest

from codesign.cli import main
from codesign.export.plan import FP32, PT2E_INT8, TORCHAO_DYN
from codesign.export.transformer_plan import module_name, plan_linears
from codesign.cost_models.backends import load_backend
from codesign.cost_models.devices import load_device
from codesign.search_spaces.transformer import Candidate, LayerChoice, TransformerArch

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]


def _space(backend: str = "xnnpack"):
    from codesign.context import load_space

    return load_space("transformer", load_backend(backend), load_device("host"))


def _candidate(space, first: str, rest: str = "w8a8", head: str = "w16a16") -> Candidate:
    """The space's smallest decoder: block 0 at ``first``, the others at ``rest``."""
    cfg = space.config
    heads = min(cfg.heads)
    arch = TransformerArch(min(cfg.layers), min(cfg.d_model), heads, heads // max(
        r for r in cfg.gqa_ratios if heads % r == 0), min(cfg.ffn_mults), min(cfg.context),
        cfg.head_dim)
    group = min(space.group_choices)

    def choice(precision):
        return LayerChoice(precision, group if precision.startswith("w4") else 0)

    blocks = (choice(first),) + (choice(rest),) * (arch.layers - 1)
    return Candidate(arch, blocks, choice(head), threads=1)


def _write_run(tmp_path, space, members, backend="xnnpack"):
    run = tmp_path / f"run-{backend}"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "device": "host", "backend": backend, "space": "transformer",
        "space_sha256": space.config.sha256, "seed": 0}))
    (run / "pareto.json").write_text(json.dumps({
        "budget_s": 0.01, "metric": "perplexity", "higher_is_better": False, "members": [
            {"trial": trial, "params": space.encode(c), "latency_s": 0.001, "perplexity": 9.5,
             "perplexity_interval": [9.0, 10.0]} for trial, c in members]}))
    return run


def test_plan_maps_every_linear_to_its_module_and_refuses_what_xnnpack_cannot_run():
    space = _space()
    xnn = load_backend("xnnpack")
    plans = plan_linears(space.to_ops(_candidate(space, "w8a8", "w4a8-dyn")), xnn)
    assert module_name("l1.gate") == "layers.1.feed_forward.w1"
    by_name = {p.name: p for p in plans}
    assert by_name["layers.0.attention.wq"].realisation == PT2E_INT8
    assert by_name["layers.1.feed_forward.w2"].realisation == TORCHAO_DYN
    assert by_name["output"].realisation == FP32 and "fp32" in by_name["output"].note
    # a codesign-back-end precision XNNPACK does not run is refused with the back-end's reason
    codesign_space = _space("codesign")
    plans = plan_linears(codesign_space.to_ops(_candidate(space, "w4a16", "w8a16")), xnn)
    assert "does not run linear at w4a16" in plans[0].reason
    assert all(p.realisation is None for p in plans[:-1])


@pytest.mark.slow
def test_export_transformer_run_mixed_precision_and_refused(tmp_path, monkeypatch, capsys):
    import codesign.export.transformer_run as tr

    monkeypatch.setattr(tr, "member_weights",
                        lambda space, c, seed, finetuned=None: (None, "random (test)"))
    space = _space()
    mixed = _candidate(space, "w4a8-dyn")  # block 0 4-bit, the others static w8a8, head fp32
    run = _write_run(tmp_path, space, [(1, mixed)])
    assert main(["export", str(run)]) == 0
    groups = capsys.readouterr().out.splitlines()[0]
    assert "host: this machine, XNNPACK" in groups and "target: host, as searched" in groups

    out = run / "export" / "trial-1"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "exported", m["reason"]
    assert m["quality_search"] == {"perplexity": 9.5, "perplexity_interval": [9.0, 10.0]}
    layers = {p["name"]: p for p in m["precision_per_layer"]}
    assert layers["layers.0.attention.wq"]["precision"].startswith("w4a8-dyn-g")
    assert layers["layers.0.attention.wq"]["xnnpack"] == TORCHAO_DYN
    assert layers["output"]["xnnpack"] == FP32
    assert "tied" in m["lm_head"]["export"]
    # the runtime decodes as the eager quantized module, step by step from position 0
    check = m["output_check"]
    assert check["within_tolerance"] and check["steps"] >= 4
    assert check["argmax_agree"] >= check["steps"] - 1
    # every linear runs in XNNPACK: no matrix product outside the delegate
    assert m["delegates"] == ["XnnpackBackend"]
    assert not [op for op in m["undelegated_operators"]
                if op.split(".")[0] in ("aten::mm", "aten::addmm", "aten::linear", "aten::bmm")]
    a = mixed.arch
    kv = m["kv_cache"]
    assert kv["program_bytes"] == a.layers * 2 * a.context * a.kv_heads * a.head_dim * 4
    assert kv["program_over_priced"] == pytest.approx(2.0)  # fp32 on the host, priced fp16
    assert isinstance(m["sdpa"]["custom_op"], bool) and m["sdpa"]["path"]
    for key in ("host_latency_s_measured", "host_latency_p90_s", "host_first_run_s"):
        assert m[key] > 0
    assert m["host_decode"]["position"] == a.context - 1
    # beside the host measurement, the host's own prediction of the program at its threads
    assert m["host_latency_s_predicted"] > 0
    assert m["host_prediction"]["threads"] == m["host_decode"]["threads"] == m["threads"]
    assert (m["host_prediction"]["device"], m["host_prediction"]["backend"]) == ("host",
                                                                                 "xnnpack")
    assert m["latency_s_predicted"] == 0.001  # the target's prediction (the search's) is kept
    assert m["target_prediction"]["device"] == "host" and m["target_prediction"]["threads"] == 1
    pte = (out / "model.pte").read_bytes()
    assert m["memory"]["pte_bytes"] == len(pte)
    assert m["sha256"]["model.pte"] == hashlib.sha256(pte).hexdigest()
    assert m["sha256"]["model.pt2"] == hashlib.sha256((out / "model.pt2").read_bytes()).hexdigest()

    assert layers["layers.1.attention.wq"]["xnnpack"] == PT2E_INT8
    assert "random" in m["static_int8_calibration"]

    # a codesign member: XNNPACK cannot run its precisions; no .pte, the reason per layer
    codesign_space = _space("codesign")
    refused = _candidate(codesign_space, "w4a16", "w8a16", head="w8a16")
    run = _write_run(tmp_path, codesign_space, [(2, refused)], backend="codesign")
    assert main(["export", str(run)]) == 0
    r = json.loads((run / "export" / "trial-2" / "manifest.json").read_text())
    assert r["status"] == "refused" and r["pte"] is None
    assert "layers.0.attention.wq (w4a16-g" in r["reason"]
    assert not (run / "export" / "trial-2" / "model.pte").exists()
    why = {p["name"]: p.get("why_not") for p in r["precision_per_layer"]}
    assert "does not run linear at w8a16" in why["output"]
    summary = json.loads((run / "export" / "summary.json").read_text())
    assert [s["status"] for s in summary["members"]] == ["refused"]
    # ... but the codesign kernels' contract per phase, and the float program on the grid
    out = run / "export" / "trial-2"
    kernels = json.loads((out / "kernels.json").read_text())
    assert kernels["context"] == refused.arch.context
    for phase, rows in (("decode", 1), ("prefill", codesign_space.config.prompt_tokens)):
        layers = {k["name"]: k for k in kernels["phases"][phase]}
        q = layers["l0.q"]
        assert q["gemm"]["m"] == rows and q["gemm"]["k"] == refused.arch.d_model
        assert q["precision"].startswith("w4a16") and q["tile"] is not None
        assert layers["lm_head"]["weight_bits"] == 8
    assert r["sha256"]["kernels.json"] == hashlib.sha256(
        (out / "kernels.json").read_bytes()).hexdigest()
    import torch

    program = torch.export.load(out / "model.pt2").module()
    logits = program(torch.tensor([[7]]), {"input_pos": torch.tensor([0])})
    assert logits.shape[-1] == codesign_space.config.vocab and torch.isfinite(logits).all()
    assert "quantization grid" in r["pt2_semantics"] and r["weights"].startswith("random")
