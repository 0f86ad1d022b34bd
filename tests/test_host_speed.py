"""The host-speed gate (sim.host_speed): it lets a measurement through only at the core's fast level,
learns that level from the fastest probe, and gives up after its timeout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sim import host_speed
from sim.host_speed import HostGate


@pytest.fixture
def probes(monkeypatch):
    """Script the probe: ``probes.extend([...])`` queues seconds; 1 ms once the queue is empty."""
    queue: list[float] = []
    monkeypatch.setattr(host_speed, "probe_s", lambda: queue.pop(0) if queue else 1e-3)
    return queue


def test_the_probe_times_a_fixed_amount_of_work() -> None:
    assert host_speed.work(100) == host_speed.work(100)
    assert 0 < host_speed.probe_s(chunks=1) < 1.0


def test_the_step_probe_is_short_and_the_fast_steps_are_within_the_tolerance_of_the_fastest() -> None:
    assert 0 < host_speed.step_probe_s() < host_speed.probe_s()
    mask = host_speed.fast_steps(np.array([1.0, 1.4, 1.6, 2.0]) * 1e-5, 1e-5)
    assert mask.tolist() == [True, True, False, False]


def test_a_gate_waits_through_slow_probes_until_the_fast_level(probes) -> None:
    gate = HostGate(reference_s=1e-3, tolerance=1.25, timeout_s=10)
    probes.extend([2e-3, 2.1e-3, 1.1e-3])
    result = gate.wait()
    assert result.probe_s == 1.1e-3 and not result.timed_out
    assert probes == []


def test_the_reference_is_the_fastest_probe_seen(probes) -> None:
    gate = HostGate(tolerance=1.25, timeout_s=0)
    probes.extend([2e-3, 1e-3])
    assert not gate.wait().timed_out  # the first probe is the fastest so far
    assert gate.reference_s == 2e-3
    gate.settle(0.01)
    assert gate.reference_s == 1e-3
    assert not gate.fast(1.3e-3) and gate.fast(1.2e-3)


def test_a_gate_gives_up_after_its_timeout_and_says_so(probes) -> None:
    gate = HostGate(reference_s=1e-3, timeout_s=0.0)
    probes.extend(itertools.repeat(3e-3, 5))
    result = gate.wait()
    assert result.timed_out and result.probe_s == 3e-3


def test_a_gate_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        HostGate(tolerance=0.5)
    with pytest.raises(ValueError):
        HostGate(timeout_s=-1)


def test_a_measurement_the_core_ends_slow_is_repeated_at_the_fast_level(probes) -> None:
    gate = HostGate(reference_s=1e-3, timeout_s=10)
    probes.extend([1e-3, 2.5e-3, 2.5e-3, 1e-3, 1e-3])  # wait, after (slow) | wait slow, fast, after
    calls = []
    gated = gate.run(lambda: calls.append(len(calls)) or len(calls))
    assert calls == [0, 1] and gated.value == 2
    assert gated.attempts == 2 and not gated.slow_after and gated.after_s == 1e-3


def test_a_measurement_that_keeps_ending_slow_is_kept_and_flagged_after_the_last_attempt(probes) -> None:
    gate = HostGate(reference_s=1e-3, timeout_s=10)
    probes.extend([1e-3, 3e-3] * 3)
    gated = gate.run(lambda: "measured", attempts=3)
    assert gated.value == "measured" and gated.attempts == 3 and gated.slow_after
