"""The classical byte-model references (codesign.evaluation.ngram): Kneser-Ney against a hand
computation and a naive implementation, distributions summing to one, the window histories the
perplexity evaluator's predictions imply, and the references on the real split."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from codesign.evaluation.ngram import (KneserNey, bigram_probs, modified_discounts,
                                       reference_perplexities, unigram_probs, window_histories)


def _b(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)


def test_kn_bigram_matches_hand_computation():
    # train "abcab": bigrams ab x2, bc, ca (raw counts; n1 = 2, n2 = 1, n3 = 0 -> one discount
    # Y = 2 / (2 + 2) = 0.5). Unigram continuation counts: a, b, c each follow one distinct byte
    # (n1 = 3, n2 = 0 -> 0.5); total 3, mass 3 x 0.5, interpolated with 1/256.
    m = KneserNey(_b("abcab"), 2)
    assert m.orders[1].discounts == (0.5, 0.5, 0.5)
    p1 = {w: (0.5 + 1.5 / 256) / 3 for w in "abc"}
    p1_unseen = (1.5 / 256) / 3
    d = m.distribution(b"a")
    assert d[ord("b")] == pytest.approx((2 - 0.5 + 0.5 * p1["b"]) / 2)
    assert d[ord("c")] == pytest.approx(0.5 * p1["c"] / 2)
    assert d[ord("z")] == pytest.approx(0.5 * p1_unseen / 2)
    assert m.distribution(b"c")[ord("a")] == pytest.approx(0.5 + 0.5 * p1["a"])
    # an unseen context backs off to the unigram level entirely
    assert m.distribution(b"z")[ord("a")] == pytest.approx(p1["a"])
    assert m.distribution(b"z")[ord("q")] == pytest.approx(p1_unseen)


def test_modified_discounts_follow_chen_goodman():
    counts = np.array([1] * 40 + [2] * 20 + [3] * 10 + [4] * 5 + [9] * 3)
    y = 40 / (40 + 2 * 20)
    assert modified_discounts(counts) == pytest.approx(
        (1 - 2 * y * 20 / 40, 2 - 3 * y * 10 / 20, 3 - 4 * y * 5 / 10))


def _naive_kn(train: bytes, order: int):
    """A direct dictionary implementation of interpolated modified KN (the same definitions,
    written independently of the vectorised one) for cross-checking."""
    raw = Counter(train[i:i + order] for i in range(len(train) - order + 1))
    tables = {order: raw}
    for k in range(order - 1, 0, -1):
        longer = {train[i:i + k + 1] for i in range(len(train) - k)}
        tables[k] = Counter(g[1:] for g in longer)
    disc = {k: modified_discounts(np.array(list(t.values()))) for k, t in tables.items()}

    def d_of(k, c):
        return 0.0 if c == 0 else disc[k][min(c, 3) - 1]

    def prob(history: bytes, w: int) -> float:
        p = 1 / 256
        for k in range(1, order + 1):
            if len(history) < k - 1:
                break
            ctx = history[len(history) - (k - 1):] if k > 1 else b""
            grams = {g: c for g, c in tables[k].items() if g[:-1] == ctx}
            total = sum(grams.values())
            if total == 0:
                continue
            mass = sum(d_of(k, c) for c in grams.values())
            c = grams.get(ctx + bytes([w]), 0)
            p = (max(c - d_of(k, c), 0) + mass * p) / total
        return p

    return prob


def test_kn_matches_naive_implementation_on_real_text():
    from codesign.search_spaces.transformer_lm import corpus

    text = corpus()[:6000]
    train, held = text[:5000], text[5000:5400]
    fast = KneserNey(np.frombuffer(train, dtype=np.uint8), 3)
    slow = _naive_kn(train, 3)
    for i in range(2, 60, 3):
        hist, w = held[i - 2:i], held[i]
        assert fast.distribution(hist)[w] == pytest.approx(slow(hist, w), rel=1e-12)
    # a history shorter than the order uses the orders it can
    assert fast.distribution(held[:1])[held[1]] == pytest.approx(slow(held[:1], held[1]))


@pytest.mark.parametrize("order", [1, 2, 3, 5, 7])
def test_kn_distributions_sum_to_one(order):
    from codesign.search_spaces.transformer_lm import corpus

    text = corpus()[:20000]
    model = KneserNey(np.frombuffer(text, dtype=np.uint8), order)
    for history in (b"", b"e", b"the ", text[100:110], b"\x00\x01\x02\x03\x04\x05\x06"):
        d = model.distribution(history)
        assert d.min() > 0
        assert d.sum() == pytest.approx(1.0, abs=1e-12)


def test_kn_rejects_bad_orders():
    with pytest.raises(ValueError, match="order must be in 1..7"):
        KneserNey(_b("abc"), 8)
    with pytest.raises(ValueError, match="cannot fit an order-3"):
        KneserNey(_b("ab"), 3)


def test_window_histories_stop_at_window_starts():
    tokens = np.arange(10, 19)  # 9 tokens: 8 predictions in windows of 4
    hist, lens, targets = window_histories(tokens, 8, 4, 2)
    assert targets.tolist() == list(range(11, 19))
    # window 0 inputs tokens[0..3]: target tokens[1] sees 1 byte, tokens[2] sees 2 (capped)
    assert lens.tolist() == [1, 2, 2, 2, 1, 2, 2, 2]
    assert hist[0].tolist() == [0, 10] and hist[1].tolist() == [10, 11]
    assert hist[4].tolist() == [0, 14]  # target tokens[5]: its window starts at tokens[4]
    with pytest.raises(ValueError, match="do not fit"):
        window_histories(tokens, 6, 4, 2)


def test_add_one_models_are_distributions():
    train = _b("hello world")
    assert unigram_probs(train, np.arange(256)).sum() == pytest.approx(1.0)
    assert bigram_probs(train, np.full(256, ord("l")), np.arange(256)).sum() == pytest.approx(1.0)
    # 'l' is followed by l, o, d in train: (1 + 1) / (3 + 256) for 'o'
    assert bigram_probs(train, np.array([ord("l")]), np.array([ord("o")]))[0] == \
        pytest.approx(2 / 259)


def test_references_on_the_evaluators_split_rank_as_expected():
    from codesign.search_spaces.transformer_lm import split_tokens

    train = split_tokens("train").numpy()
    val = split_tokens("val").numpy()
    n = (len(val) - 1) // 512 * 512
    rows = reference_perplexities(train, {"val": (val, n)}, 512)
    ppl = {r["model"]: r["val"] for r in rows}
    assert list(ppl) == ["unigram", "bigram", "kn3", "kn5", "kn7"]
    # more context, lower perplexity, on held-out text
    assert ppl["unigram"] > ppl["bigram"] > ppl["kn3"] > ppl["kn5"] > ppl["kn7"] > 1
