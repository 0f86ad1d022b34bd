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
- Every copy is submitted by the host at its time with a *gate*, the GPU marker it must not start
  before (a layer's start, a prediction, a router). A copy stream that waits for its gate wakes
  ``gate_delay_s`` after it (``copy.gate_delay_s``: 3.7-4.6 us on the H200 beyond the copy's own time,
  sim.stream_delays): a gate counts from then. ``Link`` takes a copy when its gate has passed (at
  ``max(host time, gate)``): a copy that could start later never holds an engine meanwhile.

All copies of one run have the same size, so they all move bytes at the same rate: the copies in setup
and the copies on the wire each finish in the order they started, and two FIFO queues replace any
per-byte bookkeeping. The state only changes at submissions, setup ends and completions, so the engine
may advance the link to any time once it knows every submission before that time.

``SerialLink`` (``copy.serial`` in the profile) is the link of the H200: host-to-device copies issued on
separate CUDA streams never overlapped there (each ran at the single-copy rate, one after the other),
and a copy's setup did not overlap the copy ahead of it (9 MiB copies landed 175-180 us apart; alone
174 us, bytes alone 157 us). The live executor therefore commits every copy to one copy stream, at most
``engines`` at once (one moving, one queued), each behind a wait for its gate; when the MoE block needs a
copy that is still waiting, the host commits it at once, behind the others. So a copy's landing is fixed
the moment it is committed: it starts ``gap_s`` after the copy ahead of it has landed (``copy.gap_s``: on
the H200 0-0.7 us between copies committed back to back) and once its gate has passed, and takes one
copy's time alone. Which waiting copy the next free engine takes is decided at host times
(the executor's host commits a copy when it sees an engine free, choosing among what it has submitted
by then, gate passed or not): a demand load the host decided a layer ahead takes the engine before a
prefetch whose gate passed long ago (session 7, Qwen3 cross-layer: in the live cold first step no wrong
prediction started while demands waited; the fair link started 89 of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from heapq import heapify, heappop, heappush
from typing import Final

from sim.controller import FetchRequest

# transfer states, ordered: state <= BLOCKED means not started yet (Final: constants in the compiled build);
# a SerialLink marks a committed copy WIRE at once (its landing is then known)
QUEUED: Final = 0
BLOCKED: Final = 1
SETUP: Final = 2
WIRE: Final = 3
DONE: Final = 4
INF: Final = float("inf")
#: a waiting copy's heap key is ``priority << SEQ_BITS | seq``: one integer orders the queue by
#: ``(priority, seq)`` at a fraction of a tuple comparison's cost (a link-bound run queues thousands)
SEQ_BITS: Final = 40


def _entry(transfer: Transfer) -> tuple[int, Transfer]:
    """``transfer``'s queue entry at its current priority."""
    return (transfer.priority << SEQ_BITS) | transfer.seq, transfer


def _stale(key: int, transfer: Transfer) -> bool:
    """Whether a queue entry no longer stands for a waiting copy (it started, or was promoted since)."""
    return transfer.state != QUEUED or key >> SEQ_BITS != transfer.priority


class Transfer(FetchRequest):
    """A FetchRequest with the link's state (the controller creates these when the simulator asks it
    to, so a request *is* its transfer). ``start_s``: it got an engine; ``end_s``: its bytes landed."""

    __slots__ = (
        "blocked",
        "end_s",
        "engine",
        "finish_v",
        "gate_s",
        "setup_end",
        "start_s",
        "state",
        "waits_for",
    )

    # declared here for the compiled build (sim.COMPILED: its classes have exactly these attributes)
    state: int
    blocked: list[Transfer] | None  # copies into the same slot waiting for this one
    waits_for: Transfer | None
    start_s: float
    setup_end: float
    finish_v: float
    engine: int
    end_s: float
    gate_s: float

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


class LinkBase:
    """What both link models share: the queue of waiting copies ordered by ``(priority, seq)``, a slot's
    copies in order (priority inheritance), the counters the engine reads. ``now`` is the time the link
    has been run to; submissions and advances come in time order."""

    def __init__(self, engines: int, size_bytes: int, record_busy: bool, gate_delay_s: float = 0.0) -> None:
        self.engines = engines
        self.gate_delay_s = gate_delay_s
        self.size_bytes = float(size_bytes)
        self.now = 0.0
        self._queue: list[tuple[int, Transfer]] = []  # (key, copy); stale entries are skipped
        self._last_in_slot: dict[int, Transfer] = {}
        self.completed: list[Transfer] = []  # landed, not yet collected by the engine
        self.pending = 0  # copies submitted and not landed yet
        self.started = 0  # copies that took an engine
        self.busy_s = 0.0  # time with at least one copy moving bytes
        self.submitted = 0
        # periods with a copy in flight (set up or moving bytes), recorded only if asked for
        self.record_busy = record_busy
        self._periods: list[tuple[float, float]] = []  # (start, end) of ended periods not yet queried past

    # -- submissions

    def submit(self, transfer: Transfer, host_s: float, gate_s: float = 0.0) -> None:
        """Queue a copy the host submits at ``host_s`` (not before the last submission or advance), not to
        start before the GPU marker at ``gate_s``."""
        self.submit_all((transfer,), host_s, gate_s)

    def submit_all(self, transfers: Sequence[Transfer], host_s: float, gate_s: float = 0.0) -> None:
        """Queue copies the host submits at ``host_s``, in order, gated at ``gate_s``."""
        raise NotImplementedError

    def _behind_slot(self, transfer: Transfer) -> bool:
        """Register a new copy as its slot's last; if the slot's previous copy has not landed, block it
        behind that copy (hurrying the previous one if this one is more urgent) and return True."""
        slot = transfer.slot
        previous = self._last_in_slot.get(slot)
        self._last_in_slot[slot] = transfer
        if previous is None or previous.state == DONE:
            return False
        transfer.state = BLOCKED
        transfer.waits_for = previous
        if previous.blocked is None:
            previous.blocked = [transfer]
        else:
            previous.blocked.append(transfer)
        if transfer.priority < previous.priority:
            self.promote(previous, transfer.priority)
        return True

    def commit_all(self, transfers: Sequence[Transfer], host_s: float) -> None:
        """The MoE block needs these copies now: where the model lets the host commit a waiting copy
        ahead of a free engine, do so at ``host_s`` (``SerialLink``); else nothing."""

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
            heappush(self._queue, _entry(transfer))
            return
        previous = transfer.waits_for  # blocked: hurry the copy it waits for
        assert previous is not None
        self.promote(previous, priority)

    def _unblock(self, transfer: Transfer) -> None:
        for waiting in transfer.blocked or ():
            waiting.state = QUEUED
            waiting.waits_for = None
            heappush(self._queue, _entry(waiting))
        transfer.blocked = None

    # -- time

    def advance(self, t: float, until: Transfer | None = None) -> None:
        """Run the link until time ``t``, or until copy ``until`` has landed if that comes first."""
        raise NotImplementedError

    def copying_share(self, start_s: float, end_s: float) -> float:
        """The share of ``[start_s, end_s]`` with a copy in flight, for a link made with ``record_busy``."""
        raise NotImplementedError

    def _ended_busy_s(self, start_s: float, end_s: float) -> float:
        """Time within ``[start_s, end_s]`` covered by the recorded periods with a copy in flight that have
        ended; forgets those that ended before ``start_s`` (queries come in time order)."""
        periods = self._periods
        while periods and periods[0][1] <= start_s:
            periods.pop(0)
        busy = 0.0
        for a, b in periods:
            if a >= end_s:
                break
            busy += min(b, end_s) - max(a, start_s)
        return busy

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


class Link(LinkBase):
    """Copy engines sharing one link fairly; see the module docstring for the model."""

    def __init__(
        self,
        engines: int,
        latency_s: float,
        transfer_s: float,
        size_bytes: int,
        capacity_bps: float,
        record_busy: bool = False,
        gate_delay_s: float = 0.0,
    ) -> None:
        """``transfer_s``: one copy of ``size_bytes`` alone on an idle link (setup included);
        ``record_busy``: keep the periods with a copy in flight, for ``copying_share``; ``gate_delay_s``:
        a copy's wake-up after its gate."""
        super().__init__(engines, size_bytes, record_busy, gate_delay_s)
        self.latency_s = latency_s
        wire_s = max(transfer_s - latency_s, 1e-15)
        self.engine_bps = size_bytes / wire_s
        self.capacity_bps = capacity_bps
        self._rates = [0.0] + [min(self.engine_bps, capacity_bps / n) for n in range(1, engines + 1)]
        self.virtual = 0.0  # bytes each wire copy has moved since time 0 (all move at the same rate)
        # FIFOs of copies; each holds at most ``engines`` of them, so plain lists serve (as quick as deques
        # in pure Python, quicker in the compiled build)
        self._setup: list[Transfer] = []
        self._wire: list[Transfer] = []
        self._free = list(range(engines - 1, -1, -1))
        self._busy_since = INF  # start of the current period; INF: no copy in flight

    # -- submissions

    def submit_all(self, transfers: Sequence[Transfer], host_s: float, gate_s: float = 0.0) -> None:
        """Queue copies at ``max(host_s, gate_s)``, in order (one call per batch: this runs for every
        copy). An empty batch does nothing (the link is not advanced: that would change its float
        arithmetic)."""
        if not transfers:
            return
        gate_s += self.gate_delay_s
        at_s = gate_s if gate_s > host_s else host_s
        if at_s > self.now:
            self.advance(at_s)
        self.pending += len(transfers)
        self.submitted += len(transfers)
        free, queue = self._free, self._queue
        for transfer in transfers:
            if self._behind_slot(transfer):
                continue
            if free and not queue:  # an idle engine takes it at once
                transfer.state = SETUP
                transfer.engine = free.pop()
                transfer.start_s = now = self.now
                transfer.setup_end = now + self.latency_s
                self._setup.append(transfer)
                self.started += 1
                if now < self._busy_since:
                    self._busy_since = now
            else:
                heappush(queue, _entry(transfer))
                if free:
                    self._dispatch()

    def _dispatch(self) -> None:
        """Start queued copies on free engines, most urgent first, at the link's current time."""
        queue, free, now = self._queue, self._free, self.now
        while free and queue:
            key, transfer = heappop(queue)
            if _stale(key, transfer):
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
        rates, size = self._rates, self.size_bytes
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
        busy = self._ended_busy_s(start_s, end_s)
        if self._busy_since < end_s:
            busy += end_s - max(self._busy_since, start_s)
        return busy / (end_s - start_s) if end_s > start_s else 0.0


class SerialLink(LinkBase):
    """A link that moves one copy at a time, its copies committed to one FIFO by the host (see the module
    docstring): a committed copy's landing is known at once, so the link runs at host times only."""

    def __init__(
        self,
        engines: int,
        transfer_s: float,
        size_bytes: int,
        record_busy: bool = False,
        gate_delay_s: float = 0.0,
        gap_s: float = 0.0,
    ) -> None:
        """``engines``: copies the host commits at once (one moving, the others queued behind it);
        ``transfer_s``: one copy of ``size_bytes`` alone, setup included (a copy's setup does not overlap
        the copy ahead of it); ``gate_delay_s``: a copy's wake-up after its gate; ``gap_s``: the idle
        time between a landing and the start of the copy committed behind it."""
        super().__init__(engines, size_bytes, record_busy, gate_delay_s)
        self.transfer_s = transfer_s
        self.gap_s = gap_s
        self._fifo: list[Transfer] = []  # committed, not landed, in commit order (= landing order)
        self._next_start = 0.0  # the earliest start of the next committed copy (the last landing + gap)
        # copies waiting in the queue (its other entries are stale: committed by the MoE block, or
        # promoted); the queue is cleared or compacted when stale entries dominate, since the MoE block
        # commits most copies ahead of the engines and their entries would pile up
        self._queued = 0

    # -- submissions

    def submit_all(self, transfers: Sequence[Transfer], host_s: float, gate_s: float = 0.0) -> None:
        """Queue copies the host submits at ``host_s``; each waits on its engine for ``gate_s``."""
        if not transfers:
            return
        if host_s > self.now:
            self.advance(host_s)
        self.pending += len(transfers)
        self.submitted += len(transfers)
        gate_s += self.gate_delay_s
        queue, fifo, engines = self._queue, self._fifo, self.engines
        for transfer in transfers:
            transfer.gate_s = gate_s
            if self._behind_slot(transfer):
                continue
            if not self._queued and len(fifo) < engines:  # a free engine takes it at once
                self._commit(transfer)
            else:
                heappush(queue, _entry(transfer))
                self._queued += 1
        if self._queued and len(fifo) < engines:
            self._dispatch()

    def commit_all(self, transfers: Sequence[Transfer], host_s: float) -> None:
        """Commit the copies the MoE block needs that still wait, most urgent first, behind the committed
        ones at ``host_s`` (beyond ``engines``: the live executor commits them without waiting)."""
        if host_s > self.now:
            self.advance(host_s)
        waiting: list[tuple[int, int, Transfer]] = []
        for transfer in transfers:
            if transfer.state <= BLOCKED:
                waiting.append((transfer.priority, transfer.seq, transfer))
        if not waiting:  # most often: every copy the block waits for is committed already
            return
        waiting.sort()
        for _, _, transfer in waiting:
            self._commit_needed(transfer)

    def _commit_needed(self, transfer: Transfer) -> None:
        if transfer.state > BLOCKED:
            return
        if transfer.state == BLOCKED:
            previous = transfer.waits_for
            assert previous is not None
            self._commit_needed(previous)  # the slot's earlier copy goes first (it is committed now)
            if previous.blocked is not None:
                previous.blocked.remove(transfer)
            transfer.waits_for = None
        else:
            self._queued -= 1  # its queue entry goes stale
            if not self._queued:
                self._queue.clear()
        self._commit(transfer)

    def _unblock(self, transfer: Transfer) -> None:
        if transfer.blocked:
            self._queued += len(transfer.blocked)
        super()._unblock(transfer)

    def _dispatch(self) -> None:
        """Commit waiting copies, most urgent first, while fewer than ``engines`` are committed."""
        fifo, engines = self._fifo, self.engines
        if len(self._queue) > 2 * self._queued + 32:
            self._queue = [e for e in self._queue if not _stale(e[0], e[1])]
            heapify(self._queue)
        queue = self._queue
        while self._queued and len(fifo) < engines:
            key, transfer = heappop(queue)
            if _stale(key, transfer):
                continue  # stale entry (promoted, committed by the MoE block)
            self._queued -= 1
            self._commit(transfer)

    def _commit(self, transfer: Transfer) -> None:
        """Put ``transfer`` at the end of the FIFO now: it moves ``gap_s`` after the copy ahead has
        landed, once its gate has passed."""
        start = self.now
        if transfer.gate_s > start:
            start = transfer.gate_s
        if self._next_start > start:
            start = self._next_start
        transfer.state = WIRE
        transfer.engine = self.started % self.engines
        transfer.start_s = start
        transfer.end_s = end = start + self.transfer_s
        self._next_start = end + self.gap_s
        self._fifo.append(transfer)
        self.started += 1

    # -- time

    def advance(self, t: float, until: Transfer | None = None) -> None:
        """Land the committed copies due by ``t`` (committing waiting ones as engines free), or stop once
        ``until`` is committed, its landing then known."""
        fifo = self._fifo
        while fifo and fifo[0].end_s <= t:
            if until is not None and until.state > BLOCKED:
                return
            transfer = fifo.pop(0)
            if transfer.end_s > self.now:
                self.now = transfer.end_s
            transfer.state = DONE
            self.pending -= 1
            self.busy_s += transfer.end_s - transfer.start_s
            self.completed.append(transfer)
            if self.record_busy:  # back-to-back copies make one period
                periods = self._periods
                if periods and periods[-1][1] >= transfer.start_s:
                    periods[-1] = (periods[-1][0], transfer.end_s)
                else:
                    periods.append((transfer.start_s, transfer.end_s))
            if transfer.blocked:
                self._unblock(transfer)
            if self._queued:
                self._dispatch()
        if until is None and self.now < t < INF:
            self.now = t

    def finish_time(self, transfer: Transfer) -> float:
        """When ``transfer`` lands: known once it is committed (until then, the link runs on as if no
        copy were submitted before that time)."""
        if transfer.state <= BLOCKED:
            self.advance(INF, until=transfer)
            if transfer.state <= BLOCKED:
                raise RuntimeError(f"copy #{transfer.seq} can never start (state {transfer.state})")
        return transfer.end_s

    def copying_share(self, start_s: float, end_s: float) -> float:
        """The share of ``[start_s, end_s]`` with a copy moving, from the landed and the committed copies
        and the copies waiting for an engine. The link is not run on: it stands at the host's time, and
        the GPU asks about later times, by which the host will have committed waiting copies as engines
        freed, so these count too: from the next one's gate (or the last committed landing), back to back
        (session 8: without them, hits computed beside queued prefetches ran at their time alone). Queries
        must come in time order: periods that ended before ``start_s`` are forgotten."""
        busy = self._ended_busy_s(start_s, end_s)
        for transfer in self._fifo:
            a, b = transfer.start_s, transfer.end_s
            if a >= end_s:
                break
            if b > start_s:
                busy += min(b, end_s) - max(a, start_s)
        if self._queued and self._next_start < end_s:
            queue = self._queue
            while _stale(*queue[0]):  # the heap's top is the next copy to commit
                heappop(queue)
            a = max(self._next_start, self.now, queue[0][1].gate_s)
            b = a + self._queued * (self.transfer_s + self.gap_s)
            if a < end_s and b > start_s:
                busy += min(b, end_s) - max(a, start_s)
        return busy / (end_s - start_s) if end_s > start_s else 0.0
