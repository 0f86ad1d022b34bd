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
- ``serial`` links (``copy.serial`` in the profile) move the bytes of one copy at a time: a copy whose
  setup ended waits, holding its engine, until the copy ahead of it has landed (FIFO in start order).
  Measured on an H200: host-to-device copies issued on separate CUDA streams never overlapped (each ran
  at the single-copy rate, one after the other), so fair sharing would land the first copy of a burst
  far too late. ``engines`` then counts copies committed to the hardware queue at once. A copy's setup
  does not overlap the copy ahead of it either: back-to-back copies land a whole single-copy time
  apart (session 4 on the H200: 9 MiB copies 175-180 us apart; alone 174 us, bytes alone 157 us).

All copies of one run have the same size, so they all move bytes at the same rate: the copies in setup
and the copies on the wire each finish in the order they started, and two FIFO queues replace any
per-byte bookkeeping. The state only changes at submissions, setup ends and completions, so the engine
may advance the link to any time once it knows every submission before that time.
"""

from __future__ import annotations

from collections.abc import Sequence
from heapq import heappop, heappush
from typing import Final

from sim.controller import FetchRequest

# transfer states, ordered: state <= BLOCKED means not started yet (Final: constants in the compiled build)
QUEUED: Final = 0
BLOCKED: Final = 1
SETUP: Final = 2
WIRE: Final = 3
DONE: Final = 4
INF: Final = float("inf")


class Transfer(FetchRequest):
    """A FetchRequest with the link's state (the controller creates these when the simulator asks it
    to, so a request *is* its transfer). ``start_s``: it got an engine; ``end_s``: its bytes landed."""

    __slots__ = ("blocked", "end_s", "engine", "finish_v", "setup_end", "start_s", "state", "waits_for")

    # declared here for the compiled build (sim.COMPILED: its classes have exactly these attributes)
    state: int
    blocked: list[Transfer] | None  # copies into the same slot waiting for this one
    waits_for: Transfer | None
    start_s: float
    setup_end: float
    finish_v: float
    engine: int
    end_s: float

    def __init__(
        self, seq: int, key: int, layer: int, expert: int, slot: int, priority: int, demand: bool, target: int
    ) -> None:
        self.seq = seq  # FetchRequest's fields, set here directly (this runs once per copy)
        self.key = key
        self.layer = layer
        self.expert = expert
        self.slot = slot
        self.priority = priority
        self.demand = demand
        self.target = target
        self.state = QUEUED
        self.blocked = None
        # waits_for, start_s, setup_end, finish_v, engine and end_s are set by the link before any read


class Link:
    """Copy engines sharing one link; see the module docstring for the model."""

    def __init__(
        self,
        engines: int,
        latency_s: float,
        transfer_s: float,
        size_bytes: int,
        capacity_bps: float,
        serial: bool = False,
        record_busy: bool = False,
    ) -> None:
        """``transfer_s``: one copy of ``size_bytes`` alone on an idle link (setup included);
        ``record_busy``: keep the periods with a copy in flight, for ``copying_share``."""
        self.engines = engines
        self.serial = serial
        # FIFOs of copies; each holds at most ``engines`` of them, so plain lists serve (as quick as deques
        # in pure Python, quicker in the compiled build). _ready: serial link, setup done, wire busy
        self._ready: list[Transfer] = []
        if serial:  # a copy's setup does not overlap the copy ahead: it holds the link all along
            latency_s = 0.0
        self.latency_s = latency_s
        self.size_bytes = float(size_bytes)
        wire_s = max(transfer_s - latency_s, 1e-15)
        self.engine_bps = size_bytes / wire_s
        self.capacity_bps = capacity_bps
        self._rates = [0.0] + [min(self.engine_bps, capacity_bps / n) for n in range(1, engines + 1)]
        self.now = 0.0
        self.virtual = 0.0  # bytes each wire copy has moved since time 0 (all move at the same rate)
        self._queue: list[tuple[int, int, Transfer]] = []
        self._setup: list[Transfer] = []
        self._wire: list[Transfer] = []
        self._free = list(range(engines - 1, -1, -1))
        self._last_in_slot: dict[int, Transfer] = {}
        self.completed: list[Transfer] = []  # landed, not yet collected by the engine
        self.pending = 0  # copies submitted and not landed yet
        self.started = 0  # copies that took an engine
        self.busy_s = 0.0  # time with at least one copy moving bytes
        self.submitted = 0
        # periods with a copy in flight (set up or moving bytes), recorded only if asked for
        self.record_busy = record_busy
        self._busy_since = INF  # start of the current period; INF: no copy in flight
        self._periods: list[tuple[float, float]] = []  # (start, end) of ended periods not yet queried past

    # -- submissions

    def submit(self, transfer: Transfer, at_s: float) -> None:
        """Queue a copy at time ``at_s`` (not before the last submission or advance)."""
        self.submit_all((transfer,), at_s)

    def submit_all(self, transfers: Sequence[Transfer], at_s: float) -> None:
        """Queue copies at time ``at_s``, in order (one call per batch: this runs for every copy). An
        empty batch does nothing (the link is not advanced: that would change its float arithmetic)."""
        if not transfers:
            return
        if at_s > self.now:
            self.advance(at_s)
        self.pending += len(transfers)
        self.submitted += len(transfers)
        last_in_slot, free, queue = self._last_in_slot, self._free, self._queue
        for transfer in transfers:
            slot = transfer.slot
            previous = last_in_slot.get(slot)
            last_in_slot[slot] = transfer
            if previous is not None and previous.state != DONE:
                transfer.state = BLOCKED
                transfer.waits_for = previous
                if previous.blocked is None:
                    previous.blocked = [transfer]
                else:
                    previous.blocked.append(transfer)
                if transfer.priority < previous.priority:
                    self.promote(previous, transfer.priority)
            elif free and not queue:  # an idle engine takes it at once
                transfer.state = SETUP
                transfer.engine = free.pop()
                transfer.start_s = now = self.now
                transfer.setup_end = now + self.latency_s
                self._setup.append(transfer)
                self.started += 1
                if now < self._busy_since:
                    self._busy_since = now
            else:
                heappush(queue, (transfer.priority, transfer.seq, transfer))
                if free:
                    self._dispatch()

    def promote_all(self, transfers: Sequence[Transfer], priority: int = 0) -> None:
        """``promote`` each of ``transfers`` that is still waiting (one call per router: most late copies
        are already moving)."""
        for transfer in transfers:
            if priority < transfer.priority and transfer.state <= BLOCKED:
                self.promote(transfer, priority)

    def promote(self, transfer: Transfer, priority: int = 0) -> None:
        """Make a waiting copy at least as urgent as ``priority`` (a late prefetch became a demand)."""
        if priority >= transfer.priority or transfer.state in (SETUP, WIRE, DONE):
            return
        transfer.priority = priority
        if transfer.state == QUEUED:
            heappush(self._queue, (priority, transfer.seq, transfer))
            return
        previous = transfer.waits_for  # blocked: hurry the copy it waits for
        assert previous is not None
        self.promote(previous, priority)

    def _dispatch(self) -> None:
        """Start queued copies on free engines, most urgent first, at the link's current time."""
        queue, free, now = self._queue, self._free, self.now
        while free and queue:
            priority, _, transfer = heappop(queue)
            if transfer.state != QUEUED or priority != transfer.priority:
                continue  # stale entry (promoted or already started)
            transfer.state = SETUP
            transfer.engine = free.pop()
            transfer.start_s = now
            transfer.setup_end = now + self.latency_s
            self._setup.append(transfer)
            self.started += 1
            if now < self._busy_since:
                self._busy_since = now

    # -- time

    def advance(self, t: float, until: Transfer | None = None) -> None:
        """Run the link until time ``t``, or until copy ``until`` has landed if that comes first; landed
        copies are appended to ``completed``. One loop, no calls per event: this is the hot path."""
        if until is not None and until.state == DONE:
            return
        setup, wire = self._setup, self._wire
        if not setup and not wire:  # idle link: nothing happens until the next submission
            if t > self.now and until is None:
                self.now = t
            return
        now, virtual, busy = self.now, self.virtual, self.busy_s
        rates, size, ready, serial = self._rates, self.size_bytes, self._ready, self.serial
        n_wire = len(wire)
        rate = rates[n_wire]
        while True:
            next_setup = setup[0].setup_end if setup else INF
            if n_wire:
                next_done = now + (wire[0].finish_v - virtual) / rate
                if next_done <= next_setup:  # a copy lands
                    if next_done > t:
                        break
                    if next_done > now:
                        virtual += rate * (next_done - now)
                        busy += next_done - now
                        now = next_done
                    transfer = wire.pop(0)
                    if ready:  # serial link: the next copy in line takes the wire
                        head = ready.pop(0)
                        head.state = WIRE
                        head.finish_v = virtual + size
                        wire.append(head)
                    else:
                        n_wire -= 1
                        rate = rates[n_wire]
                    transfer.state = DONE
                    transfer.end_s = now
                    self.pending -= 1
                    self._free.append(transfer.engine)
                    self.completed.append(transfer)
                    if transfer.blocked:
                        self._unblock(transfer)
                    if self._queue:
                        self.now = now
                        self._dispatch()
                    if not n_wire and not setup and self.record_busy:  # the link fell idle
                        self._periods.append((self._busy_since, now))
                        self._busy_since = INF
                    if transfer is until:
                        break
                    continue
            elif not setup:
                break
            if next_setup > t:  # a setup ends
                break
            if next_setup > now:
                if n_wire:
                    virtual += rate * (next_setup - now)
                    busy += next_setup - now
                now = next_setup
            transfer = setup.pop(0)
            if serial and n_wire:
                ready.append(transfer)
                continue
            transfer.state = WIRE
            transfer.finish_v = virtual + size
            wire.append(transfer)
            n_wire += 1
            rate = rates[n_wire]
        if now < t < INF:
            if n_wire:
                virtual += rate * (t - now)
                busy += t - now
            now = t
        self.now, self.virtual, self.busy_s = now, virtual, busy

    def copying_share(self, start_s: float, end_s: float) -> float:
        """The share of ``[start_s, end_s]`` with a copy in flight (set up or moving bytes), for a link made
        with ``record_busy``. Advances the link to ``end_s`` when it is behind (valid while no copy is
        submitted before ``end_s``, as for ``advance``). Queries must come in time order: periods that
        ended before ``start_s`` are forgotten."""
        if end_s > self.now:
            self.advance(end_s)
        periods = self._periods
        while periods and periods[0][1] <= start_s:
            periods.pop(0)
        busy = 0.0
        for a, b in periods:
            if a >= end_s:
                break
            busy += min(b, end_s) - max(a, start_s)
        if self._busy_since < end_s:
            busy += end_s - max(self._busy_since, start_s)
        return busy / (end_s - start_s) if end_s > start_s else 0.0

    def finish_time(self, transfer: Transfer) -> float:
        """When ``transfer`` lands; advances the link until it has (valid while no copy is submitted
        before that time)."""
        if transfer.state != DONE:
            self.advance(float("inf"), until=transfer)
            if transfer.state != DONE:
                raise RuntimeError(f"copy #{transfer.seq} can never start (state {transfer.state})")
        return transfer.end_s

    def drain(self) -> None:
        """Run until every submitted copy has landed."""
        self.advance(float("inf"))
        if self.pending:
            raise RuntimeError(f"{self.pending} copies can never land")

    @property
    def bytes_moved(self) -> float:
        """Bytes of every landed copy."""
        return (self.submitted - self.pending) * self.size_bytes

    def _unblock(self, transfer: Transfer) -> None:
        for waiting in transfer.blocked or ():
            waiting.state = QUEUED
            waiting.waits_for = None
            heappush(self._queue, (waiting.priority, waiting.seq, waiting))
        transfer.blocked = None
