"""Causal LMs for the LLM-phase tests (random weights from tiny configs, no download)."""
from __future__ import annotations

import torch

# a Llama shape whose every size the group size 32 divides
TINY = dict(layers=2, d_model=128, heads=4, kv_heads=2, ffn=256, vocab=256)


def llama(layers=TINY["layers"], d_model=TINY["d_model"], heads=TINY["heads"],
          kv_heads=TINY["kv_heads"], ffn=TINY["ffn"], vocab=TINY["vocab"], tied=True,
          meta=False):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=d_model, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                      tie_word_embeddings=tied, max_position_embeddings=4096)
    with torch.device("meta" if meta else "cpu"):
        return AutoModelForCausalLM.from_config(cfg).eval()


def llama_untied():
    return llama(tied=False)


def bert():
    """An encoder without an LM head: not a causal LM."""
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=128, vocab_size=128)).eval()


class TokenLM(torch.nn.Module):
    """Not a Hugging Face model: a module taking token ids (embedding, one causal attention
    block, LM head), priced in prefill from ``forward(tokens)``."""

    def __init__(self, vocab=64, d=32, heads=2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)
        self.heads = heads

    def forward(self, tokens):
        x = self.embed(tokens)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return self.head(self.norm(x))


def token_lm():
    return TokenLM().eval()
