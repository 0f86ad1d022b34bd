"""The PCIe link and its copy engines as a fluid model, advanced lazily to the simulation clock.

Model (its parameters come from the hardware profile's ``[copy]`` table):

- ``engines`` copies can be in flight at once; more wait in a queue ordered by ``(priority, seq)``:
  demand loads (priority 0) before prefetches, each class first come first served. A copy already on an
  engine runs to completion: nothing is pre-empted.
- A copy spends ``latency_s`` in setup (no bandwidth used), then moves its bytes. Copies moving bytes at
  the same time share the link fairly: each gets ``min(one copy's rate, shared capacity / n)``, so two
  engines never both get full bandwidth. One copy's rate comes from the measured single-copy curve.
- A copy into a slot whose previous copy has not finished waits (outside the queue) until it has; if it
  is more urgent than that previous copy, the previous copy is promoted (priority inheritance).

All copies of one run have the same size, so they all move bytes at the same rate: the copies in setup
and the copies on the wire each finish in the order they started, and two FIFO queues replace any
per-byte bookkeeping. The state only changes at submissions, setup ends and completions, so the engine
may advance the link to any time once it knows every submission before that time.
"""

from __future__ import annotations

import heapq
from collections import deque

QUEUED, BLOCKED, SETUP, WIRE, DONE = range(5)


class Transfer:
    """One copy on the link. ``start_s``: it got an engine; ``end_s``: its bytes landed."""

    __slots__ = (
        "blocked",
        "end_s",
        "engine",
        "finish_v",
        "priority",
        "request",
        "seq",
        "setup_end",
        "start_s",
        "state",
        "waits_for",
    )

    def __init__(self, request: object, seq: int, priority: int) -> None:
        self.request = request
        self.seq = seq
        self.priority = priority
        self.state = QUEUED
        self.blocked: list[Transfer] = []
        self.waits_for: Transfer | None = None
        self.start_s = -1.0
        self.end_s = -1.0
        self.setup_end = 0.0
        self.finish_v = 0.0
        self.engine = -1


class Link:
    """Copy engines sharing one link; see the module docstring for the model."""

    def __init__(
        self, engines: int, latency_s: float, transfer_s: float, size_bytes: int, capacity_bps: float
    ) -> None:
        """``transfer_s``: one copy of ``size_bytes`` alone on an idle link (setup included)."""
        self.engines = engines
        self.latency_s = latency_s
        self.size_bytes = float(size_bytes)
        wire_s = max(transfer_s - latency_s, 1e-15)
        self.engine_bps = size_bytes / wire_s
        self.capacity_bps = capacity_bps
        self._rates = [0.0] + [min(self.engine_bps, capacity_bps / n) for n in range(1, engines + 1)]
        self.now = 0.0
        self.virtual = 0.0  # bytes each wire copy has moved since time 0 (all move at the same rate)
        self._queue: list[tuple[int, int, Transfer]] = []
        self._setup: deque[Transfer] = deque()
        self._wire: deque[Transfer] = deque()
        self._free = list(range(engines - 1, -1, -1))
        self._last_in_slot: dict[int, Transfer] = {}
        self.completed: list[Transfer] = []  # landed, not yet collected by the engine
        self.pending: dict[int, Transfer] = {}  # seq -> copies not landed yet
        self.busy_s = 0.0  # time with at least one copy moving bytes
        self.bytes_moved = 0.0

    # -- submissions

    def submit(self, request: object, seq: int, priority: int, slot: int, at_s: float) -> Transfer:
        """Queue a copy into ``slot`` at time ``at_s`` (not before the last submission or advance)."""
        if at_s > self.now:
            self.advance(at_s)
        transfer = Transfer(request, seq, priority)
        self.pending[seq] = transfer
        previous = self._last_in_slot.get(slot)
        self._last_in_slot[slot] = transfer
        if previous is not None and previous.state != DONE:
            transfer.state = BLOCKED
            transfer.waits_for = previous
            previous.blocked.append(transfer)
            if priority < previous.priority:
                self.promote(previous, priority)
            return transfer
        heapq.heappush(self._queue, (priority, seq, transfer))
        self._dispatch()
        return transfer

    def promote(self, transfer: Transfer, priority: int = 0) -> None:
        """Make a waiting copy at least as urgent as ``priority`` (a late prefetch became a demand)."""
        if priority >= transfer.priority or transfer.state in (SETUP, WIRE, DONE):
            return
        transfer.priority = priority
        if transfer.state == QUEUED:
            heapq.heappush(self._queue, (priority, transfer.seq, transfer))
            return
        self.promote(transfer.waits_for, priority)  # blocked: hurry the copy it waits for

    def _dispatch(self) -> None:
        queue, free = self._queue, self._free
        while free and queue:
            priority, _, transfer = heapq.heappop(queue)
            if transfer.state != QUEUED or priority != transfer.priority:
                continue  # stale entry (promoted or already started)
            transfer.state = SETUP
            transfer.engine = free.pop()
            transfer.start_s = self.now
            transfer.setup_end = self.now + self.latency_s
            self._setup.append(transfer)

    # -- time

    def advance(self, t: float) -> None:
        """Run the link until time ``t``; landed copies are appended to ``completed``."""
        setup, wire = self._setup, self._wire
        if not setup and not wire:  # idle link: nothing happens until the next submission
            if t > self.now:
                self.now = t
            return
        while True:
            n_wire = len(wire)
            next_setup = setup[0].setup_end if setup else float("inf")
            if n_wire:
                rate = self._rates[n_wire]
                next_done = self.now + (wire[0].finish_v - self.virtual) / rate
            else:
                next_done = float("inf")
            t_next = next_setup if next_setup < next_done else next_done
            if t_next > t:
                if n_wire and t > self.now:
                    self.virtual += rate * (t - self.now)
                    self.busy_s += t - self.now
                if t > self.now:
                    self.now = t
                return
            if n_wire and t_next > self.now:
                self.virtual += rate * (t_next - self.now)
                self.busy_s += t_next - self.now
            if t_next > self.now:
                self.now = t_next
            if next_done <= next_setup:
                self._complete(wire.popleft())
            else:
                transfer = setup.popleft()
                transfer.state = WIRE
                transfer.finish_v = self.virtual + self.size_bytes
                wire.append(transfer)

    def finish_time(self, transfer: Transfer) -> float:
        """When ``transfer`` lands; advances the link until it has (valid while no copy is submitted
        before that time)."""
        while transfer.state != DONE:
            if not self._setup and not self._wire:
                raise RuntimeError(f"copy #{transfer.seq} can never start (state {transfer.state})")
            nxt = self._next_event_time()
            self.advance(nxt)
        return transfer.end_s

    def drain(self) -> None:
        """Run until every submitted copy has landed."""
        while self.pending:
            self.advance(self._next_event_time())

    def _next_event_time(self) -> float:
        next_setup = self._setup[0].setup_end if self._setup else float("inf")
        if self._wire:
            rate = self._rates[len(self._wire)]
            return min(next_setup, self.now + (self._wire[0].finish_v - self.virtual) / rate)
        return next_setup

    def _complete(self, transfer: Transfer) -> None:
        transfer.state = DONE
        transfer.end_s = self.now
        del self.pending[transfer.seq]
        self.bytes_moved += self.size_bytes
        self._free.append(transfer.engine)
        self.completed.append(transfer)
        for waiting in transfer.blocked:
            waiting.state = QUEUED
            waiting.waits_for = None
            heapq.heappush(self._queue, (waiting.priority, waiting.seq, waiting))
        transfer.blocked = []
        self._dispatch()
