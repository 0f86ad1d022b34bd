"""The serial link model (copy.serial): copies committed at once move their bytes one after the other,
as host-to-device copies on separate CUDA streams did on the H200 (none of 4757 live copies overlapped)."""

from __future__ import annotations

import pytest

from sim.hardware import load_profile
from sim.link import Link, Transfer

SIZE = 1_000_000


def _transfer(seq: int, slot: int, priority: int = 1) -> Transfer:
    return Transfer(seq, seq, 0, seq, slot, priority, priority == 0, 0)


def _land_times(serial: bool, engines: int, n: int) -> list[float]:
    link = Link(
        engines,
        latency_s=1e-5,
        transfer_s=1e-5 + 1e-4,
        size_bytes=SIZE,
        capacity_bps=SIZE / 1e-4,
        serial=serial,
    )
    transfers = [_transfer(i, i) for i in range(n)]
    for t in transfers:
        link.submit(t, 0.0)
    link.drain()
    return [t.end_s for t in transfers]


def test_serial_link_lands_a_burst_one_whole_copy_time_apart() -> None:
    """A copy's setup does not overlap the copy ahead of it: on the H200 (session 4), back-to-back 9 MiB
    copies landed 175-180 us apart, one copy's time alone (174 us), not its wire time (157 us)."""
    assert _land_times(True, 2, 3) == pytest.approx([1.1e-4, 2.2e-4, 3.3e-4])


def test_shared_link_lands_concurrent_copies_together() -> None:
    times = _land_times(False, 2, 2)
    assert times == pytest.approx([2.1e-4, 2.1e-4])


def test_serial_and_shared_links_move_a_burst_in_the_same_total_time_when_busy() -> None:
    assert _land_times(True, 3, 6)[-1] == pytest.approx(_land_times(False, 3, 6)[-1], rel=0.1)


def test_a_demand_load_waits_only_for_committed_copies_on_a_serial_link() -> None:
    link = Link(2, latency_s=0.0, transfer_s=1e-4, size_bytes=SIZE, capacity_bps=SIZE / 1e-4, serial=True)
    prefetches = [_transfer(i, i) for i in range(4)]
    for t in prefetches:
        link.submit(t, 0.0)
    demand = _transfer(10, 10, priority=0)
    link.submit(demand, 0.5e-4)
    link.drain()
    # two prefetches were committed at time 0; the demand goes next, ahead of the two queued ones
    assert demand.end_s == pytest.approx(3e-4)
    assert sorted(t.end_s for t in prefetches[2:]) == pytest.approx([4e-4, 5e-4])


def test_profiles_without_the_serial_field_keep_their_dictionary() -> None:
    profile = load_profile("a100-pcie-gen4")
    assert "serial" not in profile.to_dict()["copy"]
    assert profile.with_copy(serial=True).to_dict()["copy"]["serial"] is True
