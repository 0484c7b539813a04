"""Classical byte-level language models: the references a ``transformer`` search is judged by.

A user looking at the perplexity of a front needs to know what a model with no training loop
reaches on the same bytes. Three references, all fitted on the supernet's train split and
scored on exactly the bytes ``PerplexityEvaluator`` predicts (``split_windows``):

- ``unigram``: add-one smoothed byte frequencies;
- ``bigram``: add-one smoothed P(w | previous byte);
- ``kn{n}``: interpolated modified Kneser–Ney of order n (Chen & Goodman 1998, "An empirical
  study of smoothing techniques for language modeling", section 3.5 / eq. 17): the highest order
  uses raw counts, every lower order continuation counts (the number of distinct bytes seen
  before the n-gram), three discounts per order (D1, D2, D3+) from that order's count-of-counts
  (Y = n1 / (n1 + 2 n2), D_c = c - (c + 1) Y n_{c+1} / n_c), and the unigram level interpolated
  with the uniform distribution over the 256 bytes, so every byte has a probability > 0 and
  every conditional distribution sums to 1.

A byte is predicted from the bytes before it in its evaluation window only (the windows of the
space's largest context: what the largest candidate sees), so a reference and a candidate are
scored on the same predictions with the same history available. n-grams are coded as integers
(base 256, at most 7 bytes: int64), counted with ``np.unique``, looked up with ``searchsorted``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VOCAB = 256
MAX_ORDER = 7  # 256**8 overflows int64 codes
KN_ORDERS = (3, 5, 7)


def _codes(data: np.ndarray, k: int) -> np.ndarray:
    """The base-256 code of every k-gram of ``data`` (int64, len(data) - k + 1 of them)."""
    data = data.astype(np.int64)
    n = len(data) - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    code = np.zeros(n, dtype=np.int64)
    for i in range(k):
        code = code * VOCAB + data[i:i + n]
    return code


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at ``query``'s positions in the sorted ``keys``; 0 where a query is absent."""
    if keys.size == 0:
        return np.zeros(query.shape, dtype=values.dtype)
    idx = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[idx] == query, values[idx], 0)


@dataclass
class _Order:
    """The tables of one order k: counts of k-grams and, per (k-1)-byte context, the total
    count and the discount mass numerator D1 N1 + D2 N2 + D3+ N3+."""
    grams: np.ndarray      # sorted k-gram codes
    counts: np.ndarray     # their (raw or continuation) counts
    ctx: np.ndarray        # sorted context codes
    ctx_total: np.ndarray  # sum of counts over the context's k-grams
    ctx_mass: np.ndarray   # discount mass numerator of the context
    discounts: tuple[float, float, float]


def modified_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from the count-of-counts n1..n4 of ``counts``; an order too
    small to estimate them (some n_c = 0) falls back to one discount Y = n1 / (n1 + 2 n2)
    (Ney, Essen & Kneser 1994), and to 0.5 when even that is undefined."""
    n = [int(np.count_nonzero(counts == c)) for c in (1, 2, 3, 4)]
    if n[0] == 0 or n[1] == 0:
        return (0.5, 0.5, 0.5)
    y = n[0] / (n[0] + 2 * n[1])
    if n[2] == 0 or n[3] == 0:
        return (y, y, y)
    d = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
    # with very skewed counts an estimate can leave [0, c]; clip to a valid discount
    return tuple(float(min(max(v, 0.0), c)) for v, c in zip(d, (1, 2, 3)))


class KneserNey:
    """Interpolated modified Kneser–Ney of order ``order`` over bytes, fitted on ``train``."""

    def __init__(self, train: np.ndarray, order: int) -> None:
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be in 1..{MAX_ORDER}, got {order}")
        train = np.asarray(train, dtype=np.int64)
        if len(train) < order + 1:
            raise ValueError(f"{len(train)} training bytes cannot fit an order-{order} model")
        self.order = order
        self.orders: list[_Order] = []
        for k in range(1, order + 1):
            if k == order:  # raw counts
                grams, counts = np.unique(_codes(train, k), return_counts=True)
            else:  # continuation counts: distinct left extensions of each k-gram
                longer = np.unique(_codes(train, k + 1))
                grams, counts = np.unique(longer % (VOCAB ** k), return_counts=True)
            disc = modified_discounts(counts)
            d_of = np.select([counts == 1, counts == 2], [disc[0], disc[1]], disc[2])
            ctx_of = grams // VOCAB  # the k-gram's first k-1 bytes (0 for unigrams: one context)
            ctx, inverse = np.unique(ctx_of, return_inverse=True)
            total = np.bincount(inverse, weights=counts, minlength=ctx.size)
            mass = np.bincount(inverse, weights=d_of, minlength=ctx.size)
            self.orders.append(_Order(grams, counts.astype(np.float64), ctx, total, mass, disc))

    def probs(self, history: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """P(target | history) for m predictions at once.

        Args:
            history: (m, order - 1) int, the bytes before each target, most recent last.
            lengths: (m,) how many of those bytes exist (0..order-1); earlier ones are ignored.
            targets: (m,) the predicted bytes.
        """
        history = np.asarray(history, dtype=np.int64).reshape(len(targets), self.order - 1)
        targets = np.asarray(targets, dtype=np.int64)
        lengths = np.asarray(lengths)
        p = np.full(targets.shape, 1.0 / VOCAB)
        ctx = np.zeros(targets.shape, dtype=np.int64)  # code of the last k-1 history bytes
        for k, tab in enumerate(self.orders, start=1):
            if k > 1:
                ctx = _context_code(history, k - 1, self.order - 1)
            usable = lengths >= k - 1
            gram = ctx * VOCAB + targets
            count = _lookup(tab.grams, tab.counts, gram)
            total = _lookup(tab.ctx, tab.ctx_total, ctx)
            mass = _lookup(tab.ctx, tab.ctx_mass, ctx)
            d = np.select([count == 1, count == 2], [tab.discounts[0], tab.discounts[1]],
                          np.where(count == 0, 0.0, tab.discounts[2]))
            seen = usable & (total > 0)
            safe = np.where(seen, total, 1.0)
            higher = (np.maximum(count - d, 0.0) + mass * p) / safe
            p = np.where(seen, higher, p)
        return p

    def distribution(self, history: bytes | np.ndarray) -> np.ndarray:
        """P(w | history) for every byte w (256 values; sums to 1): the last order-1 bytes of
        ``history`` are used."""
        h = np.frombuffer(bytes(history), dtype=np.uint8).astype(np.int64) \
            if isinstance(history, (bytes, bytearray)) else np.asarray(history, dtype=np.int64)
        k = self.order - 1
        ctx = np.zeros(k, dtype=np.int64)
        n = min(k, len(h))
        if n:
            ctx[k - n:] = h[len(h) - n:]
        w = np.arange(VOCAB)
        return self.probs(np.tile(ctx, (VOCAB, 1)), np.full(VOCAB, n), w)


def _context_code(history: np.ndarray, j: int, width: int) -> np.ndarray:
    """Code of the last ``j`` of ``width`` history bytes (most recent last)."""
    code = np.zeros(history.shape[0], dtype=np.int64)
    for i in range(width - j, width):
        code = code * VOCAB + history[:, i]
    return code


# ------------------------------------------------------------------------------ scoring
def window_histories(tokens: np.ndarray, n: int, window: int, width: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(history (n, width), lengths (n,), targets (n,)) of the n predictions the perplexity
    evaluator makes on ``tokens``: ``tokens[1..n]``, each from the bytes before it inside its
    window of ``window`` inputs (window w holds inputs ``tokens[w*window:(w+1)*window]``)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < n + 1 or n % window:
        raise ValueError(f"{n} predictions in windows of {window} do not fit {len(tokens)} bytes")
    i = np.arange(1, n + 1)
    start = (i - 1) // window * window
    lengths = np.minimum(i - start, width)
    history = np.zeros((n, width), dtype=np.int64)
    for j in range(1, width + 1):  # column width-j holds the byte j places back
        history[:, width - j] = np.where(j <= lengths, tokens[np.maximum(i - j, 0)], 0)
    return history, lengths, tokens[1:n + 1]


def perplexity(probs: np.ndarray) -> float:
    return float(math.exp(-np.mean(np.log(probs))))


def unigram_probs(train: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Add-one smoothed byte frequencies of ``train`` at ``targets``."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=VOCAB) + 1.0
    return (counts / counts.sum())[targets]


def bigram_probs(train: np.ndarray, prev: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Add-one smoothed P(target | previous byte) from the byte pairs of ``train``."""
    train = np.asarray(train, dtype=np.int64)
    table = np.bincount(train[:-1] * VOCAB + train[1:], minlength=VOCAB * VOCAB)
    table = table.reshape(VOCAB, VOCAB) + 1.0
    table /= table.sum(axis=1, keepdims=True)
    return table[prev, targets]


def reference_perplexities(train: np.ndarray, splits: dict[str, tuple[np.ndarray, int]],
                           window: int, kn_orders: tuple[int, ...] = KN_ORDERS
                           ) -> list[dict[str, float | str]]:
    """Perplexity of every reference on each split: ``splits`` maps a split's name to (its
    tokens, how many bytes the evaluator predicts there). One record per model, e.g.
    ``{"model": "kn3", "label": "...", "val": 4.1, "test": 3.9}``."""
    width = max(max(kn_orders, default=1) - 1, 1)
    scored = {name: window_histories(tokens, n, window, width)
              for name, (tokens, n) in splits.items()}
    rows: list[dict[str, float | str]] = []

    def row(model: str, label: str, fn) -> None:
        rows.append({"model": model, "label": label,
                     **{name: perplexity(fn(h, lens, t)) for name, (h, lens, t) in scored.items()}})

    row("unigram", "add-one unigram", lambda h, lens, t: unigram_probs(train, t))
    # the first byte of a window has no previous byte: the unigram predicts it
    row("bigram", "add-one bigram", lambda h, lens, t: np.where(
        lens > 0, bigram_probs(train, h[:, -1], t), unigram_probs(train, t)))
    for n in kn_orders:
        model = KneserNey(train, n)
        row(f"kn{n}", f"interpolated Kneser-Ney {n}-gram",
            lambda h, lens, t, m=model, k=n: m.probs(h[:, h.shape[1] - (k - 1):], np.minimum(
                lens, k - 1), t))
    return rows
