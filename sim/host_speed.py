"""How fast the host core runs right now, and a gate that waits for its fast level.

At batch 1 the live executor is host-bound: its step time is the speed of the CPU core it runs on. On
the H200 VMs a pinned vCPU switched between two speed levels about 2x apart and stayed at each for
seconds to tens of seconds; a probe on the same core before a run predicted the run (r = 0.98 for
DeepSeek-V2-Lite resident), a probe on another core did not (r = 0.0), and the decode slowed by 1.6x at
the slow level (``benchmarks/bench_host_tracking.py``, reports/validation/session3/). A calibration and
a validation grid that meet different levels disagree whatever the model, so both measure only while
the core is at its fast level: ``HostGate.run`` waits for it before each host-dependent measurement,
probes again right after, and repeats a measurement that the core ended at its slow level (a quarter of
the gated live runs of one grid did).

The probe is a fixed amount of interpreter work (dict and list traffic, like a decode loop's
bookkeeping), a few milliseconds long; its time is comparable between processes on the same machine.
A gate cannot see a switch in the middle of a run, so the live executor also takes a short probe at
every step (``step_probe_s``, about 40 us): the validation then compares the simulator with the live
steps that ran at the fast level as well as with all of them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")

#: loop iterations of one probe chunk (about 1.5 ms on the development VM, 1 ms on the H200 host)
PROBE_ITERATIONS = 5000
#: seconds of probing before a gate's first wait, to find the fast level
SETTLE_S = 3.0
#: loop iterations of one per-step probe chunk (about 13 us on the H200 host at its fast level)
STEP_PROBE_ITERATIONS = 100
#: a step ran at the fast level when its probe is within this factor of the fastest step probe seen
#: (the levels were 2x apart; the fast level's short probes spread less than that)
FAST_STEP_TOLERANCE = 1.5


def work(n: int) -> int:
    """A fixed amount of interpreter work (dict and list traffic, like a decode loop's bookkeeping)."""
    d: dict[int, int] = {}
    acc = 0
    for i in range(n):
        d[i & 1023] = i
        acc += d.get((i * 7) & 1023, 0) & 7
    return acc


def _chunk_times(iterations: int, chunks: int) -> list[float]:
    times = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        work(iterations)
        times.append(time.perf_counter() - t0)
    return times


def probe_s(chunks: int = 5) -> float:
    """Median seconds of ``chunks`` chunks of ``PROBE_ITERATIONS`` iterations of ``work``."""
    return statistics.median(_chunk_times(PROBE_ITERATIONS, chunks))


def step_probe_s(chunks: int = 3) -> float:
    """The fastest of ``chunks`` chunks of ``STEP_PROBE_ITERATIONS`` iterations of ``work``: short enough
    to take at every decode step, and the fastest chunk shows the core's level even when an interrupt
    lands in another (at the slow level every chunk is slow)."""
    return min(_chunk_times(STEP_PROBE_ITERATIONS, chunks))


def fast_steps(
    probes_s: np.ndarray, reference_s: float, tolerance: float = FAST_STEP_TOLERANCE
) -> np.ndarray:
    """Mask of the steps whose probe shows the fast level: within ``tolerance`` of ``reference_s`` (the
    fastest step probe of the comparison)."""
    return np.asarray(probes_s) <= tolerance * reference_s


@dataclass(frozen=True)
class GateResult:
    """One ``HostGate.wait``: the probe that let it through (or the last one), how long it waited, and
    whether it gave up."""

    probe_s: float
    waited_s: float
    timed_out: bool


@dataclass(frozen=True)
class GatedRun(Generic[T]):
    """A measurement made through ``HostGate.run``: its value, the gate before its last attempt, the
    probe right after it, how many attempts it took, and whether it still ended on the slow level."""

    value: T
    before: GateResult
    after_s: float
    attempts: int
    slow_after: bool


class HostGate:
    """Waits until the host core runs at its fast level: a probe within ``tolerance`` of the fastest
    probe seen (``reference_s``: the fastest so far, seeded by the caller, e.g. from the calibration
    that made the profile). The levels seen on the H200 VMs were 2x apart and the fast level's probes
    spread up to 1.35x its fastest, hence the default 1.5. ``timeout_s`` bounds each wait; a gate that
    times out lets the measurement run and says so."""

    def __init__(
        self, reference_s: float | None = None, tolerance: float = 1.5, timeout_s: float = 30.0
    ) -> None:
        if tolerance < 1.0 or timeout_s < 0.0:
            raise ValueError(f"need tolerance >= 1 and timeout_s >= 0, got {tolerance}, {timeout_s}")
        self.reference_s = reference_s if reference_s and reference_s > 0 else float("inf")
        self.tolerance = tolerance
        self.timeout_s = timeout_s

    def probe(self) -> float:
        """One probe; it also lowers the reference if it is the fastest yet."""
        seconds = probe_s()
        self.reference_s = min(self.reference_s, seconds)
        return seconds

    def fast(self, seconds: float) -> bool:
        return seconds <= self.tolerance * self.reference_s

    def settle(self, seconds: float | None = None) -> None:
        """Probe for ``seconds`` (default ``SETTLE_S``) to find the fast level before the first
        measurement."""
        end = time.perf_counter() + (SETTLE_S if seconds is None else seconds)
        while time.perf_counter() < end:
            self.probe()

    def wait(self) -> GateResult:
        """Probe until the core is at its fast level (or ``timeout_s`` passed)."""
        started = time.perf_counter()
        seconds = self.probe()
        while not self.fast(seconds) and time.perf_counter() - started < self.timeout_s:
            seconds = self.probe()
        return GateResult(seconds, time.perf_counter() - started, not self.fast(seconds))

    def run(self, measure: Callable[[], T], attempts: int = 3) -> GatedRun[T]:
        """``measure()`` at the fast level: wait, measure, probe; repeat (up to ``attempts`` in all) when
        the core ended the measurement at its slow level, which a wait beforehand cannot rule out (a
        quarter of the gated live runs on the H200 VM ended slow)."""
        attempt = 0
        while True:
            attempt += 1
            before = self.wait()
            value = measure()
            after = self.probe()
            if self.fast(after) or attempt >= attempts:
                return GatedRun(value, before, after, attempt, not self.fast(after))


__all__ = [
    "FAST_STEP_TOLERANCE",
    "PROBE_ITERATIONS",
    "SETTLE_S",
    "STEP_PROBE_ITERATIONS",
    "GateResult",
    "GatedRun",
    "HostGate",
    "fast_steps",
    "probe_s",
    "step_probe_s",
    "work",
]
