"""The concrete decoder of a transformer candidate: ExecuTorch's Llama module, tied head, state
dict checked, and the KV-cache decoder computing what the full-sequence model computes."""
import pytest
import torch

from codesign.search_spaces.transformer import TransformerArch
from codesign.search_spaces.transformer_model import build_decoder

ARCH = TransformerArch(layers=2, d_model=64, heads=4, kv_heads=2, ffn_mult=2, context=16)


def _state(seed=0):
    torch.manual_seed(seed)
    model = build_decoder(ARCH, vocab=32, kv_cache=False)
    return {n: torch.randn_like(p) * 0.1 for n, p in model.named_parameters()}


def test_cached_decode_matches_full_sequence_and_head_is_tied():
    state = _state()
    full = build_decoder(ARCH, 32, state, kv_cache=False, full_logits=True)
    cached = build_decoder(ARCH, 32, state, kv_cache=True)
    assert cached.output.weight is cached.tok_embeddings.weight
    tokens = torch.tensor([[3, 7, 1, 30, 12, 5]])
    with torch.no_grad():
        reference = full(tokens)[0]
        steps = [cached(tokens[:, i:i + 1], {"input_pos": torch.tensor([i])})
                 for i in range(tokens.shape[1])]
    for i, logits in enumerate(steps):
        torch.testing.assert_close(logits.reshape(-1), reference[i], atol=1e-4, rtol=1e-4)


def test_state_dict_errors_name_the_problem():
    state = _state()
    del state["layers.1.feed_forward.w2.weight"]
    with pytest.raises(ValueError, match="missing.*layers.1.feed_forward.w2.weight"):
        build_decoder(ARCH, 32, state)
    state = _state()
    state["norm.weight"] = torch.ones(65)
    with pytest.raises(ValueError, match=r"norm.weight: shape \(65,\)"):
        build_decoder(ARCH, 32, state)


def test_a_given_head_unties_it():
    state = _state()
    head = torch.randn(32, 64)
    model = build_decoder(ARCH, 32, {**state, "output.weight": head}, kv_cache=False)
    assert model.output.weight is not model.tok_embeddings.weight
    torch.testing.assert_close(model.output.weight.data, head)
    torch.testing.assert_close(model.tok_embeddings.weight.data, state["tok_embeddings.weight"])
    with pytest.raises(ValueError, match=r"output.weight: shape \(32, 65\)"):
        build_decoder(ARCH, 32, {**state, "output.weight": torch.zeros(32, 65)})
