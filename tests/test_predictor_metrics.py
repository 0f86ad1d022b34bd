"""Accuracy metrics against hand-computed cases; ranking ties; the sequence bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.metrics import SequenceBootstrap, check_ranked, paper_overprovision, token_metrics
from predictor.ranking import rank_with_prefix, top_m

TRUE = np.array([[0, 1], [2, 3], [4, 5], [1, 0]])
RANKED = np.array(
    [
        [1, 0, 7, 6],  # exact (order within the top-k does not matter), top-1 hit
        [2, 5, 3, 0],  # one of two in the top-2, both inside the top-3
        [6, 4, 7, 5],  # top-1 wrong, one in the top-2, both only inside the top-4
        [-1, -1, -1, -1],  # no prediction
    ]
)


def values(metrics, name: str, k_prime: int = 0) -> np.ndarray:
    return next(m.values for m in metrics if m.metric == name and m.k_prime == k_prime)


def test_exact_top1_recall_and_overprovisioning_match_hand_computed_values() -> None:
    covered, metrics = token_metrics(TRUE, RANKED, k_primes=(3, 4))
    assert covered.tolist() == [True, True, True, False]
    assert values(metrics, "exact_match")[:3].tolist() == [1, 0, 0]
    assert values(metrics, "top1")[:3].tolist() == [1, 1, 0]
    assert values(metrics, "recall_at_k")[:3].tolist() == [1, 0.5, 0.5]
    assert values(metrics, "overprovision_hit", 3)[:3].tolist() == [1, 1, 0]
    assert values(metrics, "overprovision_hit", 4)[:3].tolist() == [1, 1, 1]


def test_overprovisioning_at_k_prime_equal_to_num_experts_always_hits() -> None:
    rng = np.random.default_rng(1)
    num_experts = 6
    ranked = np.stack([rng.permutation(num_experts) for _ in range(20)])
    true = np.stack([rng.choice(num_experts, 2, replace=False) for _ in range(20)])
    _, metrics = token_metrics(true, ranked, k_primes=(num_experts,))
    assert values(metrics, "overprovision_hit", num_experts).tolist() == [1.0] * 20
    # and at k' = k it is exact match
    _, metrics = token_metrics(true, ranked, k_primes=(2,))
    np.testing.assert_array_equal(values(metrics, "overprovision_hit", 2), values(metrics, "exact_match"))


def test_k_prime_outside_the_ranked_width_is_refused() -> None:
    with pytest.raises(ValueError, match="k'=5"):
        token_metrics(TRUE, RANKED, k_primes=(5,))


def test_a_ranking_naming_an_expert_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        check_ranked(np.array([[1, 2, 1]]))
    check_ranked(np.array([[-1, -1, -1], [0, 1, 2]]))  # "no prediction" rows are fine


def test_confidence_overprovisioning_fetches_the_leading_run_of_confident_extras() -> None:
    true = np.array([[0, 1], [0, 1], [0, 1]])
    ranked = np.array([[0, 2, 1, 3], [0, 2, 1, 3], [0, 1, 2, 3]])
    scores = np.array([[0.9, 0.8, 0.5, 0.4], [0.9, 0.8, 0.2, 0.6], [0.9, 0.8, 0.1, 0.1]])
    _, metrics = token_metrics(true, ranked, scores, thresholds=(0.3,))
    # row 0: extra run [0.5, 0.4] -> fetches 4, hit; row 1: 0.2 stops the run -> fetches 2, miss;
    # row 2: exact already, nothing extra
    assert values(metrics, "confidence_extra@0.3").tolist() == [2, 0, 0]
    assert values(metrics, "confidence_hit@0.3").tolist() == [1, 0, 1]
    _, at_tie = token_metrics(true, ranked, scores, thresholds=(0.5,))
    assert values(at_tie, "confidence_extra@0.5").tolist() == [1, 0, 0]  # a score equal to c counts


def test_top_m_breaks_ties_towards_the_lower_expert_id() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]])
    ranked, picked = top_m(scores, 4)
    assert ranked.tolist() == [[1, 3, 0, 2]]
    assert picked.tolist() == [[pytest.approx(0.9), pytest.approx(0.9), 0.5, 0.5]]


def test_ties_decide_exact_match_through_the_deterministic_ranking() -> None:
    # experts 2 and 3 tie for the second place; the lower id (2) is ranked first
    ranked, _ = top_m(np.array([[0.9, 0.0, 0.4, 0.4], [0.9, 0.0, 0.4, 0.4]]), 3)
    _, metrics = token_metrics(np.array([[0, 2], [0, 3]]), ranked, k_primes=(3,))
    assert values(metrics, "exact_match").tolist() == [1, 0]
    assert values(metrics, "overprovision_hit", 3).tolist() == [1, 1]


def test_rank_with_prefix_keeps_the_prefix_order_then_follows_the_scores() -> None:
    fill = np.array([[0.1, 0.9, 0.3, 0.2, 0.0]])
    assert rank_with_prefix(np.array([[3, 0]]), fill, 4).tolist() == [[3, 0, 1, 2]]


def test_paper_overprovision_widths() -> None:
    assert [paper_overprovision(k, 128) for k in (2, 6, 8)] == [3, 10, 12]
    assert paper_overprovision(4, 60) == 6
    assert paper_overprovision(8, 10) == 10


def test_bootstrap_interval_covers_the_estimate_and_ignores_uncovered_tokens() -> None:
    rng = np.random.default_rng(0)
    seq = np.repeat(np.arange(50), 20)
    hits = (rng.random(1000) < 0.7).astype(float)
    covered = np.ones(1000)
    covered[::10] = 0
    value, low, high = SequenceBootstrap(seq, 500).mean(hits * covered, covered)
    assert value == pytest.approx(hits[covered == 1].mean())
    assert low < value < high
    assert high - low < 0.1


def test_bootstrap_resamples_sequences_not_tokens() -> None:
    # every sequence is all-hit or all-miss: a sequence bootstrap sees 10 independent units, a token
    # bootstrap would see 1000 and give a far narrower interval
    seq = np.repeat(np.arange(10), 100)
    hits = np.repeat(np.array([1, 0] * 5, dtype=float), 100)
    value, low, high = SequenceBootstrap(seq, 2000, seed=3).mean(hits, np.ones(1000))
    assert value == 0.5
    assert high - low > 0.4


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_metrics_are_ordered_exact_le_hit_and_recall_between(top_k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_experts = top_k + int(rng.integers(0, 8))
    n = 30
    true = np.stack([rng.choice(num_experts, top_k, replace=False) for _ in range(n)])
    ranked = np.stack([rng.permutation(num_experts) for _ in range(n)])
    _, metrics = token_metrics(true, ranked, k_primes=(num_experts,))
    exact, recall = values(metrics, "exact_match"), values(metrics, "recall_at_k")
    assert (exact <= recall).all() and (recall <= 1).all()
    assert (values(metrics, "overprovision_hit", num_experts) == 1).all()
    assert ((exact == 1) == (recall == 1)).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1), st.booleans())
def test_top_m_equals_a_stable_full_sort_even_with_many_ties(
    num_experts: int, m: int, seed: int, ties: bool
) -> None:
    m = min(m, num_experts)
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(40, num_experts)) if ties else rng.standard_normal((40, num_experts))
    ranked, picked = top_m(scores.astype(np.float32), m)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :m]
    np.testing.assert_array_equal(ranked, expected)
    np.testing.assert_array_equal(picked, np.take_along_axis(scores, expected, axis=1).astype(np.float32))
