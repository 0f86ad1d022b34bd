"""The paper's ranking-aware loss: rank-weighted BCE against the true top-k set plus a pairwise hinge.

For one token with predictor scores s (logits, one per expert) and the router's true ranking of the
experts (rank 0 = the router's best):

    loss = mean_e [ w(rank_e) * BCE(sigmoid(s_e), [rank_e < k]) ]
         + 0.3 * sum_{i, j in top-t, rank_i < rank_j} ReLU(0.1 - (s_i - s_j))

and the batch loss is the mean over tokens. ``w`` is a step function of the true rank with three tiers.

Tiers. The paper fixes them for DeepSeek-sized pools: weight 3.0 for ranks 1-10, 1.5 for ranks 11-30,
0.5 beyond, and the hinge over pairs inside the true top-10 (``RankTiers.paper``). For 16 experts top-2
those tiers would weight nearly every expert as "top" and for 128 experts top-8 they would ignore most
of the pool, so the default (``RankTiers.relative``) scales them with k and E, keeping the paper's
proportions at E=64, k=6 exactly:

    tier-1 size t1 = min(E, ceil(10 / 6 * k))           (10 for k=6, 14 for k=8, 4 for k=2)
    tier-2 end  t2 = min(E, max(t1, ceil(30 / 64 * E))) (30 for E=64, 60 for E=128, 8 for E=16)
    hinge over pairs inside the true top-t1.

Ranks beyond the known ones (a store without router logits knows only the top-k) are marked with
``UNKNOWN_RANK``; such experts get the lowest tier's weight and take no part in the hinge.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

UNKNOWN_RANK = 32767
TIER_CHOICES = ("relative", "paper")


@dataclass(frozen=True)
class RankTiers:
    """Weights by true rank: ``weights[0]`` for ranks < ``tier1``, ``weights[1]`` below ``tier2``, else
    ``weights[2]``; hinge over pairs within the true top ``hinge_top``."""

    tier1: int
    tier2: int
    hinge_top: int
    weights: tuple[float, float, float] = (3.0, 1.5, 0.5)
    hinge_weight: float = 0.3
    margin: float = 0.1

    @classmethod
    def paper(cls, num_experts: int) -> RankTiers:
        """The paper's exact tiers (ranks 1-10, 11-30, rest; hinge inside the top-10), capped at E."""
        return cls(tier1=min(10, num_experts), tier2=min(30, num_experts), hinge_top=min(10, num_experts))

    @classmethod
    def relative(cls, top_k: int, num_experts: int) -> RankTiers:
        """Tiers scaled with k and E (see module docstring); equal to ``paper`` for E=64, k=6."""
        tier1 = min(num_experts, math.ceil(10 * top_k / 6))
        tier2 = min(num_experts, max(tier1, math.ceil(30 * num_experts / 64)))
        return cls(tier1=tier1, tier2=tier2, hinge_top=tier1)

    @classmethod
    def named(cls, name: str, top_k: int, num_experts: int) -> RankTiers:
        if name == "paper":
            return cls.paper(num_experts)
        if name == "relative":
            return cls.relative(top_k, num_experts)
        raise ValueError(f"unknown loss tiers {name!r}; expected one of {TIER_CHOICES}")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def true_ranks(topk: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Every expert's rank in the router's ordering, int16 [N, E] (0 = best), on the inputs' device.

    The top-k keep the router's order exactly (``topk`` [N, k] is in router order); the other experts
    follow by their ``logits`` [N, E] (ties to the lower id). Without logits use ``true_ranks_from_topk``.
    """
    n, k = topk.shape
    topk = topk.long()
    keys = torch.nan_to_num(logits.float(), nan=-torch.inf)
    keys.scatter_(1, topk, torch.inf)  # top-k first ...
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices
    order[:, :k] = topk  # ... in router order
    positions = torch.arange(order.shape[1], device=order.device, dtype=torch.int16).expand(n, -1)
    return torch.empty(order.shape, dtype=torch.int16, device=order.device).scatter_(1, order, positions)


def true_ranks_from_topk(topk: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Ranks known only for the top-k (router order); every other expert gets ``UNKNOWN_RANK``."""
    n, k = topk.shape
    ranks = torch.full((n, num_experts), UNKNOWN_RANK, dtype=torch.int16, device=topk.device)
    positions = torch.arange(k, device=topk.device, dtype=torch.int16).expand(n, -1)
    return ranks.scatter_(1, topk.long(), positions)


def top_order(ranks: torch.Tensor, count: int) -> torch.Tensor:
    """The experts at true ranks 0..count-1, int16 [N, count]; -1 where that rank is unknown."""
    n = ranks.shape[0]
    order = torch.full((n, count + 1), -1, dtype=torch.int16, device=ranks.device)
    experts = torch.arange(ranks.shape[1], device=ranks.device, dtype=torch.int16).expand(n, -1)
    # ranks >= count (and unknown ones) all land in the spare last column, which is dropped
    slot = ranks.long().clamp(max=count)
    order.scatter_(1, slot, experts)
    return order[:, :count]


def ranking_aware_loss(
    scores: torch.Tensor, ranks: torch.Tensor, hinge_order: torch.Tensor, top_k: int, tiers: RankTiers
) -> torch.Tensor:
    """The loss of ``scores`` [..., N, E] (logits) for true ``ranks`` [..., N, E].

    ``hinge_order`` [..., N, t] lists the experts at true ranks 0..t-1 (-1 = unknown; t = hinge_top, see
    ``top_order``). Returns the loss per leading index (shape ``scores.shape[:-2]``): mean over tokens of
    (mean over experts of the weighted BCE + hinge_weight * the sum of pairwise hinge terms).
    """
    scores = scores.float()
    ranks = ranks.long()
    target = (ranks < top_k).float()
    tier = (ranks >= tiers.tier1).long() + (ranks >= tiers.tier2).long()  # 0, 1 or 2
    weight = torch.tensor(tiers.weights, dtype=scores.dtype, device=scores.device)[tier]
    bce = F.binary_cross_entropy_with_logits(scores, target, weight=weight, reduction="none").mean(
        dim=(-2, -1)
    )
    if tiers.hinge_weight == 0 or hinge_order.shape[-1] < 2:
        return bce
    hinge_order = hinge_order.long()
    valid = hinge_order >= 0
    top_scores = torch.gather(scores, -1, hinge_order.clamp(min=0))
    # pair (i, j) with i ranked above j: hinge on s_i - s_j
    gaps = top_scores.unsqueeze(-1) - top_scores.unsqueeze(-2)
    t = hinge_order.shape[-1]
    above = torch.triu(torch.ones(t, t, dtype=torch.bool, device=scores.device), diagonal=1)
    pair_ok = above & valid.unsqueeze(-1) & valid.unsqueeze(-2)
    hinge = (F.relu(tiers.margin - gaps) * pair_ok).sum(dim=(-2, -1)).mean(dim=-1)
    return bce + tiers.hinge_weight * hinge
