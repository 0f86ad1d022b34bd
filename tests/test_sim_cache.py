"""The expert cache and its eviction rules, driven through the decision controller without a clock."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cache import CacheConfig, CacheTooSmall, ExpertCache
from sim.controller import HIT, LATE, MISS, DecisionCounters, DecodeController, run_decisions
from sim.policies import PolicySpec, make_policy
from sim.testing import tiny_shape, tiny_trace
from sim.workload import BatchingOptions, Workload
from traces.trace import Trace


def replay(
    trace: Trace, policy: str, cache: CacheConfig, batch: int = 1
) -> tuple[DecodeController, DecisionCounters]:
    policy_obj = make_policy(PolicySpec.parse(policy), trace.top_k)
    workload = Workload(trace, BatchingOptions(batch_size=batch), policy_obj.sources)
    controller = DecodeController(workload, policy_obj, cache)
    return controller, run_decisions(controller)


def reference_lru_hits(experts: np.ndarray, capacity: int) -> int:
    """A plain LRU over (layer, expert) keys: the layer's present experts are refreshed in router order,
    then its absent ones loaded in router order, each evicting the least recently used key that the
    layer does not need."""
    cache: OrderedDict[tuple[int, int], None] = OrderedDict()
    hits = 0
    for token in experts:
        for layer, row in enumerate(token):
            needed = [(layer, int(e)) for e in row]
            for key in needed:
                if key in cache:
                    hits += 1
                    cache.move_to_end(key)
            for key in needed:
                if key not in cache:
                    if len(cache) >= capacity:
                        victim = next(k for k in cache if k not in needed)
                        del cache[victim]
                    cache[key] = None
    return hits


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    experts=st.integers(3, 12),
    layers=st.integers(1, 4),
    k=st.integers(1, 3),
    extra=st.integers(0, 30),
)
def test_lru_hit_count_matches_a_straightforward_reference(
    seed: int, experts: int, layers: int, k: int, extra: int
) -> None:
    k = min(k, experts - 1)
    shape = tiny_shape(num_moe_layers=layers, num_experts=experts, top_k=k)
    trace = tiny_trace(shape, num_sequences=2, tokens_per_sequence=15, seed=seed)
    capacity = min(k + extra, layers * experts)
    _, counters = replay(trace, "on-demand", CacheConfig(slots=capacity, eviction="lru"))
    assert sum(counters.hits) == reference_lru_hits(trace.experts, capacity)
    assert sum(counters.late) == 0


def test_fifo_ignores_uses_and_lru_does_not() -> None:
    cache = ExpertCache(CacheConfig(slots=2, eviction="fifo"), 1, 4, reserve=[1])
    lru = ExpertCache(CacheConfig(slots=2, eviction="lru"), 1, 4, reserve=[1])
    for c in (cache, lru):
        for pos, expert in enumerate([0, 1, 0]):
            entry = c.get(expert) or c.allocate(expert, pos, prefetch=False)
            c.use(entry, pos)
            c.release_through(pos)
        c.allocate(2, 3, prefetch=False)
    assert sorted(cache.entries) == [1, 2]  # FIFO evicted 0, the first in
    assert sorted(lru.entries) == [0, 2]  # LRU evicted 1, the least recently used


def test_pinned_entries_are_never_evicted() -> None:
    cache = ExpertCache(CacheConfig(slots=2), 1, 8, reserve=[1])
    first = cache.allocate(0, pin_until=0, prefetch=True)
    second = cache.allocate(1, pin_until=0, prefetch=True)
    assert first is not None and second is not None
    assert cache.allocate(2, pin_until=0, prefetch=True) is None  # both pinned: the prefetch is dropped
    cache.routed(0)
    cache.use(second, 0)
    cache.release_through(0)
    third = cache.allocate(2, pin_until=1, prefetch=True)
    assert third is not None and third.slot == first.slot
    assert cache.wasted == 1  # expert 0 was prefetched and never used


def test_far_prefetches_leave_room_for_demand_loads() -> None:
    cache = ExpertCache(CacheConfig(slots=3), 2, 8, reserve=[2, 2])
    cache.routed(0)
    # pins until position 5 reach beyond the next router (position 1): at most 3 - 2 of them
    assert cache.allocate(8, pin_until=5, prefetch=True) is not None
    assert cache.allocate(9, pin_until=5, prefetch=True) is None
    # the next router's demand loads still fit
    assert cache.allocate(0, pin_until=1, prefetch=False) is not None
    assert cache.allocate(1, pin_until=1, prefetch=False) is not None


def test_a_cache_smaller_than_one_layers_needs_is_refused() -> None:
    with pytest.raises(CacheTooSmall, match="at least 4 slots"):
        ExpertCache(CacheConfig(slots=3), 2, 8, reserve=[4, 2])
    with pytest.raises(CacheTooSmall, match="per-layer budget of 2 slots"):
        ExpertCache(CacheConfig(slots=5, per_layer=True), 2, 8, reserve=[3, 3])


def test_per_layer_budgets_split_slots_and_keep_layers_apart() -> None:
    shape = tiny_shape(num_moe_layers=3, num_experts=8, top_k=2)
    trace = tiny_trace(shape, tokens_per_sequence=30)
    controller, counters = replay(trace, "pre-attention", CacheConfig(slots=10, per_layer=True))
    sizes = [p.capacity for p in controller.cache.partitions]
    assert sizes == [4, 3, 3]
    for key, entry in controller.cache.entries.items():
        layer = key // shape.num_experts
        base = sum(sizes[:layer])
        assert base <= entry.slot < base + sizes[layer]
    assert sum(counters.misses) + sum(counters.hits) + sum(counters.late) == trace.num_tokens * 3 * 2


def test_no_cache_mode_loads_every_expert_every_time() -> None:
    shape = tiny_shape()
    trace = tiny_trace(shape)
    _, counters = replay(trace, "on-demand", CacheConfig(slots=0))
    assert sum(counters.hits) == 0
    assert sum(counters.misses) == trace.experts.size
    controller, counters = replay(trace, "oracle", CacheConfig(slots=0))
    assert sum(counters.misses) == 0 and counters.prefetches_issued == trace.experts.size
    assert controller.cache.occupancy() == 0


def test_router_reports_hits_late_and_misses() -> None:
    shape = tiny_shape(num_moe_layers=1, num_experts=6, top_k=3)
    trace = tiny_trace(shape, num_sequences=1, tokens_per_sequence=2, accuracy=1.0)
    policy = make_policy(PolicySpec("pre-attention", m=2), trace.top_k)
    controller = DecodeController(Workload(trace, sources=policy.sources), policy, CacheConfig(slots=6))
    controller.begin_step(0)
    controller.layer_start(0)
    requests = controller.prediction_ready(0)
    assert len(requests) == 2
    controller.transfer_finished(requests[0])
    decision = controller.router(0)
    assert decision.status == [HIT, LATE, MISS]
    assert decision.late == [requests[1]]
    assert len(decision.demands) == 1 and decision.demands[0].demand
    assert len(set(decision.slots)) == 3


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), slots=st.integers(4, 24), batch=st.integers(1, 3))
def test_belady_never_misses_more_than_lru_lfu_or_fifo(seed: int, slots: int, batch: int) -> None:
    shape = tiny_shape(num_moe_layers=2, num_experts=8, top_k=2)
    trace = tiny_trace(shape, tokens_per_sequence=20, seed=seed)
    slots = max(slots, min(batch * 2, 8))
    misses = {
        rule: sum(replay(trace, "on-demand", CacheConfig(slots=slots, eviction=rule), batch)[1].misses)
        for rule in ("lru", "lfu", "fifo", "belady")
    }
    assert misses["belady"] == min(misses.values())
