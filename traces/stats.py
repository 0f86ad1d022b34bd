"""Statistics of a trace's routing: expert popularity and its skew, reuse distance, previous-token overlap,
and the hit rate of an optimal (Belady) expert cache. They feed ``moe-prefetch trace info`` and the
trace overview of the reports.

Conventions: tokens are taken in file order, sequences back to back, as a batch-1 decode replaying the
trace would see them (a cache survives from one sequence to the next). Layer index ``j`` is the MoE layer
axis of ``Trace.experts``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from traces.trace import Trace

#: Reuse-distance quantiles reported by ``reuse_distance_summary``.
REUSE_QUANTILES = (0.5, 0.9, 0.99)


def expert_counts(trace: Trace) -> np.ndarray:
    """[L, E] int64: how many tokens routed to each expert at each MoE layer."""
    num_layers, num_experts = trace.num_layers, trace.num_experts
    flat = (
        trace.experts.astype(np.int64) + (np.arange(num_layers, dtype=np.int64) * num_experts)[None, :, None]
    )
    return np.bincount(flat.ravel(), minlength=num_layers * num_experts).reshape(num_layers, num_experts)


@dataclass(frozen=True)
class SkewSummary:
    """How unevenly a layer's traffic spreads over its experts, per layer (arrays of length L).

    ``top_decile_share``: share of routed slots going to the busiest 10% of experts (at least one expert);
    0.1 means uniform. ``gini``: Gini coefficient of the per-expert counts (0 uniform, near 1 one expert
    takes all). ``cv``: coefficient of variation (std / mean) of the counts.
    """

    top_decile_share: np.ndarray
    gini: np.ndarray
    cv: np.ndarray


def popularity_skew(counts: np.ndarray) -> SkewSummary:
    """Skew measures of ``counts`` ([L, E], from ``expert_counts``), one value per layer."""
    counts = np.asarray(counts, dtype=np.float64)
    num_experts = counts.shape[1]
    ordered = np.sort(counts, axis=1)[:, ::-1]
    totals = np.maximum(ordered.sum(axis=1), 1.0)
    top = max(1, math.ceil(0.1 * num_experts))
    top_share = ordered[:, :top].sum(axis=1) / totals
    ascending = ordered[:, ::-1]
    ranks = np.arange(1, num_experts + 1)
    gini = (2 * (ranks * ascending).sum(axis=1) / (num_experts * totals)) - (num_experts + 1) / num_experts
    mean = counts.mean(axis=1)
    cv = np.divide(counts.std(axis=1), mean, out=np.zeros_like(mean), where=mean > 0)
    return SkewSummary(top_decile_share=top_share, gini=np.maximum(gini, 0.0), cv=cv)


def reuse_distances(trace: Trace, layer: int) -> tuple[np.ndarray, int]:
    """For one MoE layer: the reuse distance of every routed slot whose expert was used before at that
    layer (tokens since its previous use; 1 = the previous token), and the number of first uses."""
    tokens = np.repeat(np.arange(trace.num_tokens, dtype=np.int64), trace.top_k)
    experts = trace.experts[:, layer].ravel()
    order = np.argsort(experts, kind="stable")  # by expert, then by token (stable)
    sorted_experts, sorted_tokens = experts[order], tokens[order]
    same_expert = sorted_experts[1:] == sorted_experts[:-1]
    distances = np.diff(sorted_tokens)[same_expert]
    return distances, int(len(experts) - len(distances))


@dataclass(frozen=True)
class ReuseSummary:
    """Reuse distances pooled over all layers: ``quantiles`` maps q -> distance in tokens;
    ``first_use_share`` is the share of routed slots that use an expert for the first time at that layer;
    ``histogram`` counts distances in power-of-two bins [1], [2], [3, 4], [5, 8], ... (``bin_edges`` holds
    each bin's upper edge)."""

    quantiles: dict[float, float]
    first_use_share: float
    bin_edges: np.ndarray
    histogram: np.ndarray


def reuse_distance_summary(trace: Trace) -> ReuseSummary:
    """Quantiles and a log2 histogram of reuse distances over every layer."""
    per_layer = [reuse_distances(trace, layer) for layer in range(trace.num_layers)]
    distances = np.concatenate([d for d, _ in per_layer]) if per_layer else np.zeros(0, np.int64)
    first_uses = sum(n for _, n in per_layer)
    total = max(1, trace.num_tokens * trace.num_layers * trace.top_k)
    if len(distances):
        values = np.quantile(distances, REUSE_QUANTILES, method="inverted_cdf")
        quantiles = {q: float(v) for q, v in zip(REUSE_QUANTILES, values, strict=True)}
        top_bin = int(np.ceil(np.log2(distances.max()))) + 1
    else:
        quantiles = {q: math.nan for q in REUSE_QUANTILES}
        top_bin = 1
    edges = 2 ** np.arange(top_bin)
    bins = np.searchsorted(edges, distances, side="left")
    return ReuseSummary(quantiles, first_uses / total, edges, np.bincount(bins, minlength=len(edges)))


def previous_token_overlap(trace: Trace) -> np.ndarray:
    """[L] share of a token's experts that the previous token of the same sequence also used at that
    layer (first tokens of sequences excluded); NaN for a trace with no such token pair."""
    experts = trace.experts
    same_sequence = trace.seq_id[1:] == trace.seq_id[:-1]
    if not same_sequence.any():
        return np.full(trace.num_layers, np.nan)
    current, previous = experts[1:][same_sequence], experts[:-1][same_sequence]
    hit = np.zeros(current.shape, dtype=bool)
    for j in range(trace.top_k):
        hit |= current == previous[:, :, j : j + 1]
    return hit.mean(axis=(0, 2))


def oracle_cache_hit_rate(trace: Trace, slots: int, per_layer: bool = True) -> float:
    """Hit rate of an expert cache run by Belady's rule (evict the expert needed furthest in the future):
    the best any eviction policy can do without prefetching.

    ``per_layer``: each MoE layer has its own ``slots`` experts (``slots >= top_k``); otherwise one cache
    of ``slots`` experts is shared by all layers, requests ordered token by token, layer by layer.
    Runs in Python over every request (about a second per million routed slots).
    """
    if slots < trace.top_k:
        raise ValueError(f"a cache of {slots} slots cannot hold the {trace.top_k} experts of one token")
    if per_layer:
        hits = sum(
            _belady_hits(trace.experts[:, layer].astype(np.int64), slots) for layer in range(trace.num_layers)
        )
    else:
        ids = (
            trace.experts.astype(np.int64) + (np.arange(trace.num_layers) * trace.num_experts)[None, :, None]
        )
        hits = _belady_hits(ids.reshape(-1, trace.top_k), slots)
    return hits / max(1, trace.experts.size)


def _belady_hits(requests: np.ndarray, slots: int) -> int:
    """Hits of Belady's cache over ``requests`` [steps, k] (k distinct ids needed together per step)."""
    steps, k = requests.shape
    next_use = _next_use(requests)
    flat_ids, flat_next = requests.ravel().tolist(), next_use.ravel().tolist()
    resident: dict[int, int] = {}  # id -> step of its next use
    heap: list[tuple[int, int]] = []  # (-next use, id), lazily invalidated
    hits = 0
    for step in range(steps):
        base = step * k
        wanted = flat_ids[base : base + k]
        missing = []
        for offset, expert in enumerate(wanted):
            upcoming = flat_next[base + offset]
            if expert in resident:
                hits += 1
            else:
                missing.append(expert)
            resident[expert] = upcoming
            heapq.heappush(heap, (-upcoming, expert))
        overflow = len(resident) - slots
        kept: list[tuple[int, int]] = []
        while overflow > 0:
            negative_next, victim = heapq.heappop(heap)
            if resident.get(victim) != -negative_next:
                continue  # stale entry
            if victim in wanted:
                kept.append((negative_next, victim))
                continue
            del resident[victim]
            overflow -= 1
        for entry in kept:
            heapq.heappush(heap, entry)
    return hits


def _next_use(requests: np.ndarray) -> np.ndarray:
    """[steps, k] step at which each requested id is requested next (``steps`` plus the id if never, so that
    never-again ids are evicted first and ties break deterministically)."""
    steps, k = requests.shape
    ids = requests.ravel()
    step_of = np.repeat(np.arange(steps, dtype=np.int64), k)
    order = np.argsort(ids, kind="stable")
    following = np.full(len(ids), -1, dtype=np.int64)
    same = ids[order][1:] == ids[order][:-1]
    following[order[:-1][same]] = step_of[order[1:][same]]
    never = following < 0
    following[never] = steps + ids[never]
    return following.reshape(steps, k)
