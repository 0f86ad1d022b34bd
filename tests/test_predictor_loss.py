"""The ranking-aware loss on tiny hand-checked cases, its tiers, and the true-rank labels it trains on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from predictor.loss import (
    UNKNOWN_RANK,
    RankTiers,
    ranking_aware_loss,
    top_order,
    true_ranks,
    true_ranks_from_topk,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def loss_of(scores: list[float], ranks: list[int], top_k: int, tiers: RankTiers) -> float:
    ranks_t = torch.tensor([ranks], dtype=torch.int16)
    order = top_order(ranks_t, tiers.hinge_top)
    return ranking_aware_loss(torch.tensor([scores]), ranks_t, order, top_k, tiers).item()


def test_relative_tiers_equal_the_papers_at_its_deepseek_shape_and_scale_elsewhere() -> None:
    assert RankTiers.relative(6, 64) == RankTiers.paper(64) == RankTiers(10, 30, 10)
    assert (RankTiers.relative(8, 128).tier1, RankTiers.relative(8, 128).tier2) == (14, 60)
    assert (RankTiers.relative(2, 16).tier1, RankTiers.relative(2, 16).tier2) == (4, 8)
    assert RankTiers.paper(16) == RankTiers(10, 16, 10)  # capped at E
    assert RankTiers.named("paper", 2, 16) == RankTiers.paper(16)
    with pytest.raises(ValueError, match="unknown loss tiers"):
        RankTiers.named("fancy", 2, 16)


def test_weighted_bce_by_true_rank_hand_computed() -> None:
    tiers = RankTiers(tier1=1, tier2=2, hinge_top=1)  # weights 3.0 / 1.5 / 0.5, no pairs
    # experts ranked 0, 1, 2 by the router; k = 1: only expert 0 is a target
    got = loss_of([2.0, 0.0, -1.0], [0, 1, 2], 1, tiers)
    expected = (3.0 * softplus(-2.0) + 1.5 * softplus(0.0) + 0.5 * softplus(-1.0)) / 3
    assert got == pytest.approx(expected, rel=1e-6)


def test_pairwise_hinge_penalises_pairs_closer_than_the_margin_in_router_order() -> None:
    tiers = RankTiers(tier1=1, tier2=2, hinge_top=2)
    bce = (3.0 * softplus(-0.0) + 1.5 * softplus(0.05) + 0.5 * softplus(-5.0)) / 3
    # expert 1 (rank 1) scores above expert 0 (rank 0): hinge ReLU(0.1 - (0 - 0.05)) = 0.15
    got = loss_of([0.0, 0.05, -5.0], [0, 1, 2], 1, tiers)
    assert got == pytest.approx(bce + 0.3 * 0.15, rel=1e-6)
    # well separated in the right order: no hinge
    got = loss_of([1.0, 0.5, -5.0], [0, 1, 2], 1, tiers)
    bce_sep = (3.0 * softplus(-1.0) + 1.5 * softplus(0.5) + 0.5 * softplus(-5.0)) / 3
    assert got == pytest.approx(bce_sep, rel=1e-6)


def test_hinge_sums_over_all_ordered_pairs_of_the_top_group() -> None:
    tiers = RankTiers(tier1=3, tier2=3, hinge_top=3, weights=(0.0, 0.0, 0.0))  # hinge only
    # all three scores equal: each of the 3 pairs costs the margin 0.1
    assert loss_of([0.0, 0.0, 0.0, 0.0], [2, 0, 1, 3], 1, tiers) == pytest.approx(0.3 * 0.3)


def test_true_ranks_keep_router_order_for_the_top_k_and_logits_after_it() -> None:
    topk = torch.tensor([[2, 0]])
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.5]])  # 1 and 3 tie: lower id first
    assert true_ranks(topk, logits).tolist() == [[1, 2, 0, 3]]
    assert top_order(true_ranks(topk, logits), 3).tolist() == [[2, 0, 1]]
    assert top_order(true_ranks(topk, logits), 4).tolist() == [[2, 0, 1, 3]]


def test_ranks_unknown_without_logits_get_the_lowest_weight_and_no_pairs() -> None:
    ranks = true_ranks_from_topk(torch.tensor([[3, 1]]), 4)
    assert ranks.tolist() == [[UNKNOWN_RANK, 1, UNKNOWN_RANK, 0]]
    assert top_order(ranks, 3).tolist() == [[3, 1, -1]]
    tiers = RankTiers(tier1=3, tier2=3, hinge_top=3)
    got = loss_of([0.0, 1.0, 0.0, 2.0], ranks[0].tolist(), 2, tiers)
    bce = (0.5 * softplus(0.0) + 3.0 * softplus(-1.0) + 0.5 * softplus(0.0) + 3.0 * softplus(-2.0)) / 4
    assert got == pytest.approx(bce, rel=1e-6)  # pair (3, 1) is 1.0 apart: no hinge


def test_minimising_the_loss_recovers_the_true_top_k_in_router_order() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.standard_normal((16, 8)).astype(np.float32))
    topk = torch.argsort(logits, dim=1, descending=True)[:, :2]
    ranks = true_ranks(topk, logits)
    tiers = RankTiers.relative(2, 8)
    order = top_order(ranks, tiers.hinge_top)
    scores = torch.zeros(16, 8, requires_grad=True)
    optimizer = torch.optim.Adam([scores], lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        ranking_aware_loss(scores, ranks, order, 2, tiers).backward()
        optimizer.step()
    learned = torch.argsort(scores.detach(), dim=1, descending=True)[:, : tiers.hinge_top]
    torch.testing.assert_close(learned, top_order(ranks, tiers.hinge_top).long())
