"""The serial link model (copy.serial): the host commits copies to one FIFO, at most ``engines`` at once;
each moves when the copy ahead has landed and its gate has passed, so it lands one whole copy time
later, as host-to-device copies did on the H200 (none of 4757 live copies overlapped)."""

from __future__ import annotations

import pytest

from sim.hardware import load_profile
from sim.link import DONE, Link, SerialLink, Transfer

SIZE = 1_000_000
COPY_S = 1e-4


def _transfer(seq: int, slot: int, priority: int = 1) -> Transfer:
    return Transfer(seq, seq, 0, seq, slot, priority, priority == 0, 0)


def _serial(engines: int = 2) -> SerialLink:
    return SerialLink(engines, transfer_s=COPY_S, size_bytes=SIZE)


def test_serial_link_lands_a_burst_one_whole_copy_time_apart() -> None:
    """A copy's setup does not overlap the copy ahead of it: on the H200 (session 4), back-to-back 9 MiB
    copies landed 175-180 us apart, one copy's time alone (174 us), not its wire time (157 us)."""
    link = _serial()
    burst = [_transfer(i, i) for i in range(3)]
    link.submit_all(burst, 0.0)
    link.drain()
    assert [t.end_s for t in burst] == pytest.approx([1e-4, 2e-4, 3e-4])


def test_serial_and_shared_links_move_a_burst_in_the_same_total_time_when_busy() -> None:
    def last_landing(link) -> float:
        burst = [_transfer(i, i) for i in range(6)]
        link.submit_all(burst, 0.0)
        link.drain()
        return max(t.end_s for t in burst)

    shared = Link(3, latency_s=0.0, transfer_s=COPY_S, size_bytes=SIZE, capacity_bps=SIZE / COPY_S)
    assert last_landing(_serial(3)) == pytest.approx(last_landing(shared), rel=0.1)


def test_a_committed_copy_lands_when_committed_whatever_comes_later() -> None:
    link = _serial()
    first, second = _transfer(0, 0), _transfer(1, 1)
    link.submit_all([first, second], 0.0)
    assert link.finish_time(second) == pytest.approx(2e-4)  # known without running the link on
    assert link.now == 0.0 and second.state != DONE
    urgent = _transfer(2, 2, priority=0)
    link.submit(urgent, 0.5e-4)
    link.drain()
    assert second.end_s == pytest.approx(2e-4) and urgent.end_s == pytest.approx(3e-4)


def test_a_demand_the_host_submitted_takes_the_free_engine_before_an_older_prefetch() -> None:
    """The live host decides a layer's demands at its router launch, a layer ahead of the GPU: when an
    engine frees, the demand takes it and waits there for the router; a prefetch queued long before waits
    (session 7, Qwen3 cross-layer: no wrong prediction started in the live cold step)."""
    link = _serial(engines=1)
    moving, wrong = _transfer(0, 0), _transfer(1, 1)
    link.submit_all([moving, wrong], 0.0)
    demand = _transfer(2, 2, priority=0)
    link.submit(demand, 0.2e-4, gate_s=1.5e-4)  # the host is ahead: the router runs on the GPU later
    link.drain()
    assert demand.start_s == pytest.approx(1.5e-4)  # the engine freed at 1e-4 and waited for the gate
    assert demand.end_s == pytest.approx(2.5e-4) and wrong.end_s == pytest.approx(3.5e-4)


def test_the_moe_block_commits_copies_it_needs_beyond_the_engines_most_urgent_first() -> None:
    link = _serial(engines=1)
    moving, prefetch, late, demand = (_transfer(i, i, priority=p) for i, p in enumerate((1, 1, 2, 0)))
    link.submit(moving, 0.0)
    link.submit_all([prefetch, late, demand], 0.0)
    link.promote(late, 0)  # the router needs it
    link.commit_all([late, demand], 0.1e-4)
    assert [link.finish_time(t) for t in (late, demand)] == pytest.approx([2e-4, 3e-4])
    link.drain()
    assert prefetch.end_s == pytest.approx(4e-4)


def test_a_needed_copy_into_a_slot_still_being_filled_is_committed_behind_that_copy() -> None:
    link = _serial(engines=1)
    moving, other, blocking, new = (_transfer(i, s) for i, s in enumerate((0, 1, 7, 7)))
    link.submit(moving, 0.0)
    link.submit_all([other, blocking, new], 0.0)  # new waits for blocking, its slot's copy (promoted)
    link.commit_all([new], 0.0)  # the slot's earlier copy is committed first
    assert link.finish_time(blocking) == pytest.approx(2e-4)
    assert link.finish_time(new) == pytest.approx(3e-4)
    link.drain()
    assert other.end_s == pytest.approx(4e-4)
    assert link.pending == 0 and link.bytes_moved == 4 * SIZE


def test_copying_share_counts_landed_and_committed_copies_without_running_the_link_on() -> None:
    link = SerialLink(1, transfer_s=COPY_S, size_bytes=SIZE, record_busy=True)
    a, b = _transfer(0, 0), _transfer(1, 1)
    link.submit(a, 0.0)
    link.submit(b, 0.0, gate_s=3e-4)
    assert link.copying_share(0.5e-4, 1.5e-4) == pytest.approx(0.5)
    link.advance(2e-4)  # a landed, b committed: it moves from its gate at 3e-4
    assert link.copying_share(2e-4, 4e-4) == pytest.approx(0.5)
    assert link.now == pytest.approx(2e-4)


def test_profiles_without_the_serial_field_keep_their_dictionary() -> None:
    profile = load_profile("a100-pcie-gen4")
    assert "serial" not in profile.to_dict()["copy"]
    assert profile.with_copy(serial=True).to_dict()["copy"]["serial"] is True


def test_copies_committed_back_to_back_land_one_copy_time_and_one_gap_apart() -> None:
    """On the H200 two copies committed back to back on one stream left 1.3 us between them (session 8):
    ``gap_s`` after a landing the next copy starts."""
    link = SerialLink(2, transfer_s=COPY_S, size_bytes=SIZE, gap_s=1e-5)
    burst = [_transfer(i, i) for i in range(3)]
    link.submit_all(burst, 0.0)
    link.drain()
    assert [t.start_s for t in burst] == pytest.approx([0.0, 1.1e-4, 2.2e-4])
    assert [t.end_s for t in burst] == pytest.approx([1e-4, 2.1e-4, 3.2e-4])


@pytest.mark.parametrize("serial", [True, False])
def test_a_copy_waiting_for_its_gate_starts_gate_delay_after_it_and_only_then(serial: bool) -> None:
    """A copy stream waiting for a compute-stream marker wakes a few microseconds after it (5-9 us on the
    H200, session 7's timelines); a copy whose gate passed long before starts at once."""
    delay = 7e-6
    if serial:
        link = SerialLink(2, transfer_s=COPY_S, size_bytes=SIZE, gate_delay_s=delay)
    else:
        link = Link(2, 0.0, COPY_S, SIZE, SIZE / COPY_S, gate_delay_s=delay)
    gated, passed = _transfer(0, 0), _transfer(1, 1)
    link.submit(gated, 0.0, gate_s=5e-4)  # submitted by a host ahead of the GPU
    assert link.finish_time(gated) == pytest.approx(5e-4 + delay + COPY_S)
    link.submit(passed, 2e-3, gate_s=1e-3)  # its gate passed a millisecond ago
    assert link.finish_time(passed) == pytest.approx(2e-3 + COPY_S)


def test_copying_share_counts_the_copies_waiting_for_an_engine_from_the_next_ones_gate() -> None:
    """The GPU asks about times the link has not reached (it stands at the host's time): copies waiting
    for an engine then will move back to back behind the committed ones, from the next one's gate."""
    link = SerialLink(2, transfer_s=COPY_S, size_bytes=SIZE, record_busy=True)
    burst = [_transfer(i, i) for i in range(4)]
    link.submit_all(burst, 0.0)  # two committed, two waiting
    assert link.copying_share(2e-4, 4e-4) == pytest.approx(1.0)
    assert link.copying_share(4e-4, 5e-4) == pytest.approx(0.0)
    late = SerialLink(1, transfer_s=COPY_S, size_bytes=SIZE, record_busy=True)
    late.submit(_transfer(0, 0), 0.0)
    late.submit(_transfer(1, 1), 0.0, gate_s=3e-4)  # waits for an engine and for its gate
    assert late.copying_share(1e-4, 3e-4) == pytest.approx(0.0)
    assert late.copying_share(3e-4, 4e-4) == pytest.approx(1.0)
