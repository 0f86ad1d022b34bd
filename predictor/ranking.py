"""Turning per-expert scores into ranked expert lists, with one deterministic tie rule everywhere.

Ties are broken towards the lower expert id, so every predictor's ranking is reproducible bit for bit
whatever the sort implementation; ``-1`` marks "no prediction" (a row of a token the predictor cannot
serve, such as the cross-layer predictor at the first MoE layer).
"""

from __future__ import annotations

import numpy as np

NO_PREDICTION = -1


#: Above this width a full stable sort beats repeated arg-max passes.
_ARGMAX_PASSES_MAX = 24


def top_m(scores: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` best experts per row of ``scores`` [N, E], best first, ties to the lower id.

    Returns ``(ranked int16 [N, m], their scores float32 [N, m])``; the same result as a stable sort of
    every row. NaN and -inf scores rank last. For small ``m`` it takes ``m`` arg-max passes (arg-max
    returns the first, i.e. lowest, id among equal values), several times faster than sorting.
    """
    num_experts = scores.shape[1]
    if not 1 <= m <= num_experts:
        raise ValueError(f"m={m} must be in [1, {num_experts}]")
    work = np.nan_to_num(np.array(scores, dtype=np.float64), nan=-np.inf)
    if m > _ARGMAX_PASSES_MAX:
        order = np.argsort(-work, axis=1, kind="stable")[:, :m]
    else:
        work = np.maximum(work, -np.finfo(np.float64).max)  # -inf -> lowest finite, below "taken"
        order = np.empty((len(work), m), dtype=np.int64)
        rows = np.arange(len(work))
        for j in range(m):
            order[:, j] = np.argmax(work, axis=1)
            work[rows, order[:, j]] = -np.inf
    return order.astype(np.int16), np.take_along_axis(scores, order, axis=1).astype(np.float32)


def rank_with_prefix(prefix: np.ndarray, fill_scores: np.ndarray, m: int) -> np.ndarray:
    """Rankings that start with ``prefix`` [N, p] (in its order) and continue by ``fill_scores`` [N, E].

    Used where a few experts are known exactly (the true or the previous token's top-k) and the rest of
    an over-provisioned list comes from scores (pass zeros to continue in expert-id order).
    ``prefix`` entries must be distinct and valid in each row. Returns int16 [N, m].
    """
    n, p = prefix.shape
    keys = np.array(fill_scores, dtype=np.float64)
    finite = np.isfinite(keys)
    keys = np.where(finite, keys, -np.inf)
    span = np.abs(keys[finite]).max() if finite.any() else 0.0
    # prefix entries above every fill score, in prefix order
    boost = span * 4 + 4 + (p - np.arange(p, dtype=np.float64))[None, :]
    np.put_along_axis(keys, prefix.astype(np.int64), np.broadcast_to(boost, (n, p)), axis=1)
    ranked, _ = top_m(keys, m)
    return ranked


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (router probabilities from router logits)."""
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def empty_ranking(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of "no prediction": ranked all -1, scores all NaN."""
    return np.full((n, m), NO_PREDICTION, dtype=np.int16), np.full((n, m), np.nan, dtype=np.float32)
