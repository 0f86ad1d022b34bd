"""How long the H200's streams take to wake up: the three delays of the copy path (``[copy]`` in a profile).

The live executor (sim.live) orders its work with CUDA events: a copy stream waits for a compute-stream
marker (the copy's *gate*: a layer's start, a prediction, a router), a copy committed behind another
follows it on the same stream, and the compute stream waits for a copy's landing before the expert that
reads it. Each hand-over may cost time that neither a copy timed alone nor an op timed alone shows. The
live timelines of session 7 put it at 5-9 us from a gate to the copy behind it, 1.3 us between two copies
committed back to back and 4-5 us from a landing to the expert behind it, with the timeline's own events
in between; timed without them (session 8, 9 MiB copies), a gated copy landed 3.9 us later than the copy
curve's time after its gate, back-to-back copies followed each other at the curve's pace, and an op
behind a landing ended 5.3 us later than alone: a few percent of a link-bound decode, on its critical
path.

``measure_stream_delays`` times each hand-over the way the executor performs it, with nothing else on the
GPU: every sequence is queued behind a sleeping kernel, so the host's launches never show:

- ``alone_s``: one copy between two events on an idle copy stream, behind a passed marker (for the
  record: 1.4-2.5 us more than the copy curve, which times a copy on an idle GPU);
- ``period_s``: per copy, ``COPIES`` copies committed back to back, each behind a wait for a passed
  marker and followed by its landing marker, as the executor commits them;
- ``gated_s``: from a compute-stream marker to the landing of the copy that waited for it;
- ``op_alone_s``: a small CUDA-graph op between two events on the compute stream;
- ``landed_op_s``: from a copy's landing marker to the end of that op, queued behind a wait for it.

The delays (``StreamDelays.delays``) are the differences from what the simulator already charges, a copy's
time alone on the copy curve (``copy_s``) and the op's time alone: ``gate_delay_s = gated_s - copy_s``,
``gap_s = period_s - copy_s``, ``landing_delay_s = landed_op_s - op_alone_s`` (each at least 0).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

#: copies committed back to back per period measurement
COPIES = 8
#: the sleeping kernel that holds a stream while the host queues a sequence behind it
HOLD_S = 2e-3


@dataclass(frozen=True)
class StreamDelays:
    """Medians of the hand-overs timed by ``measure_stream_delays`` (seconds), for copies of
    ``size_bytes``; see the module docstring."""

    size_bytes: int
    alone_s: float
    period_s: float
    gated_s: float
    op_alone_s: float
    landed_op_s: float

    def delays(self, copy_s: float) -> dict[str, float]:
        """The profile's ``[copy]`` delays, for a link that charges ``copy_s`` per copy of ``size_bytes``
        (the copy curve's time): ``gate_delay_s``, a gated copy's wake-up (it lands this long after its
        gate plus ``copy_s``); ``gap_s``, the idle time between copies committed back to back;
        ``landing_delay_s``, the compute stream's wake-up after a landing."""
        return {
            "gate_delay_s": max(0.0, self.gated_s - copy_s),
            "gap_s": max(0.0, self.period_s - copy_s),
            "landing_delay_s": max(0.0, self.landed_op_s - self.op_alone_s),
        }


def measure_stream_delays(device: Any, size_bytes: int, reps: int = 20, warmup: int = 3) -> StreamDelays:
    """Time the executor's three hand-overs on the CUDA ``device`` with copies of ``size_bytes`` (medians
    over ``reps`` rounds after ``warmup``); see the module docstring."""
    import torch

    from sim import kernels

    elements = max(1, size_bytes // 2)
    sources = [torch.empty(elements, dtype=torch.bfloat16).pin_memory() for _ in range(2)]
    slots = [torch.empty(elements, dtype=torch.bfloat16, device=device) for _ in range(COPIES)]
    compute, copy = torch.cuda.Stream(device), torch.cuda.Stream(device)
    hold_cycles = int(HOLD_S * sleep_cycles_per_s(device))
    small = torch.zeros(1 << 16, dtype=torch.bfloat16, device=device)
    op = kernels.GraphPool(device).capture(lambda: small.mul_(1.0))  # a graph op, as the executor's

    def marker(stream: Any) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def held(stream: Any) -> None:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(hold_cycles)

    def commit(i: int, gate: Any) -> Any:
        """One copy as the executor commits it: behind its gate, then its landing marker."""
        copy.wait_event(gate)
        with torch.cuda.stream(copy):
            slots[i % COPIES].copy_(sources[i % 2], non_blocking=True)
        return marker(copy)

    def one_round() -> tuple[float, ...]:
        """The four sequences, each queued behind a hold and finished before the next starts (so the
        copy stream is idle when a gate or a landing is waited for)."""
        held(copy)
        start = marker(copy)  # also the passed gate of the copies behind it
        landings = [commit(i, start) for i in range(COPIES)]
        torch.cuda.synchronize(device)
        held(compute)
        gate = marker(compute)
        gated = commit(0, gate)
        torch.cuda.synchronize(device)
        held(copy)
        landing = commit(1, marker(copy))
        compute.wait_event(landing)
        with torch.cuda.stream(compute):
            op()
        landed_op = marker(compute)
        torch.cuda.synchronize(device)
        held(compute)
        op_start = marker(compute)
        with torch.cuda.stream(compute):
            op()
        op_end = marker(compute)
        torch.cuda.synchronize(device)
        return (
            start.elapsed_time(landings[0]) / 1e3,
            landings[0].elapsed_time(landings[-1]) / 1e3 / (COPIES - 1),
            gate.elapsed_time(gated) / 1e3,
            op_start.elapsed_time(op_end) / 1e3,
            landing.elapsed_time(landed_op) / 1e3,
        )

    rounds = [one_round() for _ in range(warmup + reps)][warmup:]
    medians = [statistics.median(column) for column in zip(*rounds, strict=True)]
    return StreamDelays(size_bytes, *medians)


def sleep_cycles_per_s(device: Any) -> float:
    """Clock cycles per second of ``torch.cuda._sleep`` (a spinning kernel that holds a stream while
    launches queue up behind it), timed once on ``device``."""
    import torch

    cycles = 2_000_000
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    torch.cuda.synchronize(device)
    return cycles / (start.elapsed_time(end) / 1e3)
