"""The PCIe link model: shared bandwidth, demand before prefetch, no pre-emption, slot order."""

from __future__ import annotations

import pytest

from sim.link import Link, Transfer

SIZE = 1_000_000


def transfer(seq: int, priority: int = 1, slot: int | None = None) -> Transfer:
    return Transfer(seq, seq, 0, seq, seq if slot is None else slot, priority, priority == 0, 0)


def link(
    engines: int = 2, latency_s: float = 1e-6, capacity_gbps: float = 1.0, record_busy: bool = False
) -> Link:
    # one copy alone: 1 us setup + 1 ms on the wire at 1 GB/s
    return Link(
        engines, latency_s, latency_s + SIZE / 1e9, SIZE, capacity_gbps * 1e9, record_busy=record_busy
    )


def test_one_copy_takes_setup_plus_bytes_over_bandwidth() -> None:
    lk = link()
    t = transfer(0)
    lk.submit(t, 0.0)
    assert lk.finish_time(t) == pytest.approx(1e-6 + 1e-3)


def test_concurrent_copies_share_the_link_instead_of_each_getting_full_bandwidth() -> None:
    lk = link(engines=2, capacity_gbps=1.0)
    a, b = transfer(0), transfer(1)
    lk.submit(a, 0.0)
    lk.submit(b, 0.0)
    assert lk.finish_time(a) == pytest.approx(1e-6 + 2e-3)
    assert lk.finish_time(b) == pytest.approx(1e-6 + 2e-3)


def test_a_faster_link_lets_two_engines_run_at_full_rate() -> None:
    lk = link(engines=2, capacity_gbps=2.0)
    a, b = transfer(0), transfer(1)
    lk.submit(a, 0.0)
    lk.submit(b, 0.0)
    assert lk.finish_time(b) == pytest.approx(1e-6 + 1e-3)


def test_demand_loads_overtake_queued_prefetches_but_not_running_ones() -> None:
    lk = link(engines=1)
    running, queued, demand = transfer(0), transfer(1), transfer(2, priority=0)
    for t in (running, queued, demand):
        lk.submit(t, 0.0)
    assert lk.finish_time(running) == pytest.approx(1.001e-3)
    assert lk.finish_time(demand) == pytest.approx(2 * 1.001e-3)
    assert lk.finish_time(queued) == pytest.approx(3 * 1.001e-3)


def test_promoted_prefetch_moves_ahead_of_other_prefetches() -> None:
    lk = link(engines=1)
    first, second, third = transfer(0), transfer(1), transfer(2)
    for t in (first, second, third):
        lk.submit(t, 0.0)
    lk.promote(third, 0)
    assert lk.finish_time(third) < lk.finish_time(second)


def test_a_copy_into_a_busy_slot_waits_for_the_previous_copy() -> None:
    lk = link(engines=2, capacity_gbps=2.0)
    old, new = transfer(0, slot=7), transfer(1, priority=0, slot=7)
    lk.submit(old, 0.0)
    lk.submit(new, 0.0)
    assert lk.finish_time(new) == pytest.approx(2 * 1.001e-3)  # it could not start on the free engine


def test_drain_lands_everything_and_counts_bytes() -> None:
    lk = link(engines=3)
    copies = [transfer(i) for i in range(5)]
    for t in copies:
        lk.submit(t, 0.0)
    lk.drain()
    assert lk.pending == 0 and lk.bytes_moved == 5 * SIZE
    assert sorted(t.end_s for t in copies) == [t.end_s for t in copies]


def test_copying_share_is_the_share_of_an_interval_with_a_copy_in_flight() -> None:
    lk = link(engines=1, record_busy=True)
    a, b, c = transfer(0), transfer(1), transfer(2)
    lk.submit_all([a, b], 1e-3)  # back to back: in flight from 1 ms to 1 ms + 2 x 1.001 ms
    lk.submit(c, 5e-3)  # alone: 5 ms to 6.001 ms
    busy_end = 1e-3 + 2 * 1.001e-3
    assert lk.copying_share(0.0, 0.5e-3) == 0.0
    assert lk.copying_share(0.5e-3, 1.5e-3) == pytest.approx(0.5)
    assert lk.copying_share(2e-3, 2.5e-3) == pytest.approx(1.0)
    assert lk.copying_share(busy_end - 1e-4, 5.5e-3) == pytest.approx(
        (1e-4 + 0.5e-3) / (5.5e-3 - busy_end + 1e-4)
    )
    assert lk.copying_share(6.5e-3, 7e-3) == 0.0


def test_copying_share_answers_for_times_the_link_has_already_run_past() -> None:
    lk = link(engines=1, record_busy=True)
    a = transfer(0)
    lk.submit(a, 0.0)
    lk.drain()  # the link has run to a's landing (1.001 ms)
    assert lk.copying_share(0.5e-3, 0.6e-3) == pytest.approx(1.0)
    assert lk.copying_share(2e-3, 3e-3) == 0.0
