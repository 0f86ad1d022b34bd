"""Trace statistics: counts, skew, reuse distance, previous-token overlap and the Belady cache bound."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.schema import ModelShape, Provenance, TraceMetadata
from traces.stats import (
    expert_counts,
    oracle_cache_hit_rate,
    popularity_skew,
    previous_token_overlap,
    reuse_distance_summary,
    reuse_distances,
)
from traces.trace import Trace


def make_trace(experts, seq_id=None, num_experts: int = 8) -> Trace:
    experts = np.asarray(experts, dtype=np.int16)
    t, num_layers, k = experts.shape
    shape = ModelShape(
        name="t",
        architecture="mixtral",
        num_layers=num_layers,
        moe_layers=tuple(range(num_layers)),
        num_experts=num_experts,
        top_k=k,
        hidden_size=8,
        expert_intermediate_size=8,
        bytes_per_expert=384,
    )
    seq = np.zeros(t, np.int32) if seq_id is None else np.asarray(seq_id, np.int32)
    pos = np.concatenate([np.arange(n) for n in np.unique(seq, return_counts=True)[1]]).astype(np.int32)
    return Trace(
        metadata=TraceMetadata(shape, Provenance(origin="synthetic", notes="test")),
        seq_id=seq,
        pos=pos,
        experts=experts,
        weights=np.full(experts.shape, 1.0 / k, np.float32),
    )


def test_expert_counts_per_layer():
    trace = make_trace([[[0, 1], [2, 3]], [[0, 2], [2, 4]]])
    counts = expert_counts(trace)
    assert counts.shape == (2, 8)
    assert counts[0].tolist() == [2, 1, 1, 0, 0, 0, 0, 0]
    assert counts[1].tolist() == [0, 0, 2, 1, 1, 0, 0, 0]


def test_skew_is_zero_for_uniform_and_high_for_concentrated_counts():
    uniform = popularity_skew(np.full((1, 10), 5))
    assert uniform.top_decile_share[0] == pytest.approx(0.1)
    assert uniform.gini[0] == pytest.approx(0.0, abs=1e-12)
    assert uniform.cv[0] == pytest.approx(0.0)
    one_hot = popularity_skew(np.array([[100] + [0] * 9]))
    assert one_hot.top_decile_share[0] == pytest.approx(1.0)
    assert one_hot.gini[0] == pytest.approx(0.9)  # n-1/n for a single holder among n
    assert one_hot.cv[0] == pytest.approx(3.0)


def test_reuse_distance_counts_tokens_since_last_use_at_that_layer():
    # layer 0: expert 0 at tokens 0, 1, 4 -> distances 1, 3; expert 1 at token 0 only; 2 at 1, 2 -> 1
    trace = make_trace([[[0, 1]], [[0, 2]], [[2, 3]], [[4, 5]], [[0, 6]]])
    distances, first_uses = reuse_distances(trace, 0)
    assert sorted(distances.tolist()) == [1, 1, 3]
    assert first_uses == 7


def test_reuse_summary_histogram_uses_power_of_two_bins():
    trace = make_trace([[[0, 1]], [[0, 2]], [[2, 3]], [[4, 5]], [[0, 6]]])
    summary = reuse_distance_summary(trace)
    assert summary.bin_edges.tolist() == [1, 2, 4]
    assert summary.histogram.tolist() == [2, 0, 1]  # two of distance 1, one of 3 (bin 3-4)
    assert summary.quantiles[0.5] == 1.0
    assert summary.first_use_share == pytest.approx(7 / 10)


def test_previous_token_overlap_ignores_sequence_boundaries():
    experts = [[[0, 1]], [[1, 2]], [[3, 4]], [[3, 4]]]
    trace = make_trace(experts, seq_id=[0, 0, 1, 1])
    # pairs inside sequences: (t0,t1) shares 1 of 2, (t2,t3) shares 2 of 2; (t1,t2) crosses a boundary
    assert previous_token_overlap(trace)[0] == pytest.approx(0.75)


def naive_belady_hits(requests: list[list[int]], slots: int) -> int:
    cache: set[int] = set()
    hits = 0
    for step, wanted in enumerate(requests):
        hits += sum(e in cache for e in wanted)
        cache |= set(wanted)
        while len(cache) > slots:

            def next_use(e, step=step):
                later = [s for s in range(step + 1, len(requests)) if e in requests[s]]
                return later[0] if later else len(requests) + e

            victim = max((e for e in cache if e not in wanted), key=next_use)
            cache.remove(victim)
    return hits


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_experts=st.integers(3, 8), steps=st.integers(1, 40))
def test_belady_matches_a_naive_reference(data, num_experts, steps):
    k = data.draw(st.integers(1, num_experts - 1))
    slots = data.draw(st.integers(k, num_experts))
    rows = [
        data.draw(st.permutations(range(num_experts)).map(lambda p, k=k: list(p[:k]))) for _ in range(steps)
    ]
    trace = make_trace(np.array(rows)[:, None, :], num_experts=num_experts)
    expected = naive_belady_hits(rows, slots) / (steps * k)
    assert oracle_cache_hit_rate(trace, slots) == pytest.approx(expected)


def test_belady_with_every_expert_cached_misses_only_first_uses():
    rng = np.random.default_rng(0)
    rows = np.array([rng.permutation(8)[:2] for _ in range(200)])
    trace = make_trace(rows[:, None, :])
    first_uses = len(np.unique(rows))
    assert oracle_cache_hit_rate(trace, 8) == pytest.approx(1 - first_uses / rows.size)


def test_belady_beats_or_equals_every_fixed_cache_content():
    rng = np.random.default_rng(1)
    rows = np.array([rng.permutation(6)[:2] for _ in range(60)])
    trace = make_trace(rows[:, None, :], num_experts=6)
    best_static = max(np.isin(rows, list(c)).mean() for c in itertools.combinations(range(6), 3))
    assert oracle_cache_hit_rate(trace, 3) >= best_static - 1e-9


def test_global_cache_shares_slots_between_layers():
    # two layers each cycling over the same 2 experts: a global cache of 4 holds all four (layer, expert)
    rows = np.array([[[0, 1], [0, 1]]] * 10)
    trace = make_trace(rows)
    assert oracle_cache_hit_rate(trace, 4, per_layer=False) == pytest.approx(1 - 4 / 40)
    with pytest.raises(ValueError, match="cannot hold"):
        oracle_cache_hit_rate(trace, 1)
