"""Accuracy of ranked expert predictions against the router's true top-k, with sequence-bootstrap intervals.

Per token and MoE layer, with the true top-k set T (|T| = k) and the ranked prediction r_1, r_2, ...:

- ``exact_match``: {r_1..r_k} == T (the paper's headline metric);
- ``overprovision_hit`` at k': T is a subset of {r_1..r_k'} (the paper's 10 of 6, 12 of 8, 3 of 2);
- ``top1``: r_1 is in T;
- ``recall_at_k``: |{r_1..r_k} & T| / k;
- confidence-driven over-provisioning at threshold c: fetch r_1..r_k, then keep fetching r_{k+1}, ... while
  their score is >= c (up to the list's width); ``confidence_hit@c`` is the rate at which T is inside the
  fetched set and ``confidence_extra@c`` the mean number of experts fetched beyond k.

Rows whose prediction is ``-1`` (no prediction) are left out of every metric; ``coverage`` is the fraction
of rows that have one. Tokens of one sequence are correlated, so confidence intervals come from a bootstrap
that resamples whole sequences (percentile interval of the ratio estimator).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from predictor.ranking import NO_PREDICTION

#: Confidence thresholds reported for the confidence-driven over-provisioning curve.
DEFAULT_THRESHOLDS = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)

#: The paper's over-provisioning width for its models' top-k (10 of 6, 12 of 8, 3 of 2).
PAPER_OVERPROVISION = {2: 3, 6: 10, 8: 12}


def paper_overprovision(top_k: int, num_experts: int) -> int:
    """The paper's k' for this top-k (10 of 6, 12 of 8, 3 of 2); ceil(1.5 k) for other k; at most E."""
    return min(num_experts, PAPER_OVERPROVISION.get(top_k, -(-3 * top_k // 2)))


def check_ranked(ranked: np.ndarray) -> None:
    """Raise ValueError if a row of ``ranked`` [N, m] names an expert twice."""
    ordered = np.sort(ranked.astype(np.int64), axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != NO_PREDICTION)
    if repeated.any():
        row = int(np.flatnonzero(repeated.any(axis=1))[0])
        raise ValueError(f"ranked row {row} names an expert twice: {ranked[row].tolist()}")


def found_within(true_topk: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """``found[n, j]`` = how many of row n's true experts are among its first j+1 ranked ones (int [N, m])."""
    hits = (ranked[:, :, None].astype(np.int64) == true_topk[:, None, :].astype(np.int64)).any(axis=2)
    return np.cumsum(hits, axis=1)


@dataclass(frozen=True)
class TokenMetric:
    """One metric's per-token values (defined where ``covered``)."""

    metric: str
    k_prime: int
    values: np.ndarray


def token_metrics(
    true_topk: np.ndarray,
    ranked: np.ndarray,
    scores: np.ndarray | None = None,
    k_primes: Iterable[int] = (),
    thresholds: Iterable[float] = (),
) -> tuple[np.ndarray, list[TokenMetric]]:
    """Per-token values of every metric for one layer; returns ``(covered [N] bool, metrics)``.

    ``true_topk`` [N, k]; ``ranked`` [N, m] best first; ``scores`` [N, m] needed for the confidence
    metrics. Every k' must be in [k, m].
    """
    n, k = true_topk.shape
    m = ranked.shape[1]
    if m < k:
        raise ValueError(f"ranked lists of width {m} are shorter than top_k={k}")
    check_ranked(ranked)
    covered = ranked[:, 0] != NO_PREDICTION
    found = found_within(true_topk, ranked)
    metrics = [
        TokenMetric("exact_match", 0, (found[:, k - 1] == k).astype(np.float64)),
        TokenMetric("top1", 0, (found[:, 0] == 1).astype(np.float64)),
        TokenMetric("recall_at_k", 0, found[:, k - 1] / k),
    ]
    for k_prime in sorted(set(k_primes)):
        if not k <= k_prime <= m:
            raise ValueError(f"k'={k_prime} outside [top_k={k}, width={m}]")
        metrics.append(
            TokenMetric("overprovision_hit", k_prime, (found[:, k_prime - 1] == k).astype(np.float64))
        )
    thresholds = tuple(thresholds)
    if thresholds and scores is not None:
        beyond = scores[:, k:] if m > k else np.zeros((n, 0), dtype=np.float32)
        for threshold in thresholds:
            # leading run of scores >= threshold after the first k entries
            extra = np.cumprod(beyond >= threshold, axis=1).sum(axis=1)
            hit = found[np.arange(n), k - 1 + extra] == k
            metrics.append(TokenMetric(f"confidence_hit@{threshold:g}", 0, hit.astype(np.float64)))
            metrics.append(TokenMetric(f"confidence_extra@{threshold:g}", 0, extra.astype(np.float64)))
    return covered, metrics


class SequenceBootstrap:
    """Percentile bootstrap intervals of a mean over tokens, resampling whole sequences with replacement.

    All statistics computed from one instance share the same resamples, so intervals of different
    predictors and metrics are comparable.
    """

    def __init__(
        self, seq_id: np.ndarray, num_resamples: int = 1000, level: float = 0.95, seed: int = 0
    ) -> None:
        _, self.sequence_of_token = np.unique(np.asarray(seq_id), return_inverse=True)
        self.num_sequences = int(self.sequence_of_token.max()) + 1 if len(seq_id) else 0
        self.level = level
        rng = np.random.default_rng(seed)
        if self.num_sequences and num_resamples:
            uniform = np.full(self.num_sequences, 1.0 / self.num_sequences)
            self.resample_counts = rng.multinomial(self.num_sequences, uniform, size=num_resamples).astype(
                np.float64
            )
        else:
            self.resample_counts = np.zeros((0, self.num_sequences))

    def mean(self, numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float, float]:
        """``sum(numerator) / sum(denominator)`` over tokens, and its interval: ``(value, low, high)``.

        Per-token ``denominator`` counts how many observations a token contributes (0 = excluded), so a
        mean over covered tokens is ``mean(values * covered, covered)``. NaN when nothing is covered.
        """
        num = np.bincount(self.sequence_of_token, weights=numerator, minlength=self.num_sequences)
        den = np.bincount(self.sequence_of_token, weights=denominator, minlength=self.num_sequences)
        if den.sum() == 0:
            return float("nan"), float("nan"), float("nan")
        value = float(num.sum() / den.sum())
        if len(self.resample_counts) == 0:
            return value, float("nan"), float("nan")
        boot_den = self.resample_counts @ den
        boot = (self.resample_counts @ num)[boot_den > 0] / boot_den[boot_den > 0]
        tail = (1.0 - self.level) / 2 * 100
        low, high = np.percentile(boot, [tail, 100 - tail])
        return value, float(low), float(high)
