"""The decode decision sequence both clocks call: it owns the cache and the policy and says, per event,
what to fetch now (and at what priority), which needed experts are hits, late or misses, and it learns
when a transfer finished.

One step of the decode, for MoE layers ``j = 0 .. L-1`` in order (``logical_events`` lists it)::

    begin_step(s)
      layer_start(j)                   -> prefetch requests
      prediction_ready(j)              -> prefetch requests   (issue_point == "layer-start" only)
      router(j)                        -> RouterDecision: hits / late / misses + demand requests
      prediction_ready(j + 1)          -> prefetch requests   (issue_point == "router", j + 1 < L only)
      layer_end(j)                     -> prefetch requests
    end_step()

A clock (the SimPy engine, the live executor) calls these in exactly this order and decides only *when*:
it delivers each event at the later of its physical time and the previous event's delivery, issues the
returned transfers, lets a late prefetch's transfer jump to demand priority, starts a needed expert's
compute once its copy has landed, and reports each landed copy with ``transfer_finished`` as soon as it
knows (before the next event it delivers). Everything the controller decides depends on the trace, the
cache's logical state and static profile estimates, never on the clock, so hit-or-late versus miss,
evictions, waste and bytes moved are identical in both clocks; only hit versus late can differ.

Timing rules a clock must honour (they keep the physical state consistent with the logical one):
- a transfer into a slot may start only after the previous transfer into that slot completed and after
  the compute that last read the slot finished (``FetchRequest.slot`` names the slot);
- every returned request is transferred (no cancellation): bytes moved = requests x bytes per expert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar, cast

from sim.cache import CacheConfig, Entry, ExpertCache
from sim.policies import DEMAND, LAYER_START, PREFETCH, ROUTER, Actions, CacheView, Policy, TimingEstimates
from sim.workload import Step, Workload

HIT: Final = 0
LATE: Final = 1
MISS: Final = 2

#: event kinds, in the order they occur within one MoE layer
LAYER_START_EVENT = "layer_start"
PREDICTION_EVENT = "prediction_ready"
ROUTER_EVENT = "router"
LAYER_END_EVENT = "layer_end"


class FetchRequest:
    """One host-to-device copy of one expert into one slot. ``seq`` is the global issue order; a clock
    queues transfers by ``(priority, seq)``. ``demand`` tells a demand load from a prefetch; ``target``
    is the decode position (``step * L + layer``) the expert was fetched for."""

    __slots__ = ("demand", "expert", "key", "layer", "priority", "seq", "slot", "target")

    def __init__(  # the controller calls it positionally, as below
        self, seq: int, key: int, layer: int, expert: int, slot: int, priority: int, demand: bool, target: int
    ) -> None:
        self.seq = seq
        self.key = key
        self.layer = layer
        self.expert = expert
        self.slot = slot
        self.priority = priority
        self.demand = demand
        self.target = target

    def __repr__(self) -> str:
        kind = "demand" if self.demand else "prefetch"
        return f"FetchRequest(#{self.seq} {kind} layer={self.layer} expert={self.expert} slot={self.slot})"


#: the request class a controller creates: FetchRequest or a clock's subclass of it
R = TypeVar("R", bound=FetchRequest)


class RouterDecision(Generic[R]):
    """What layer ``layer``'s router needs: ``experts`` (router order), their ``slots`` and ``status``
    (HIT: copy landed, LATE: copy issued but not landed, MISS: absent, a demand load was issued),
    ``tokens`` (how many of the step's tokens each serves), the new ``demands`` and the outstanding
    requests of the ``late`` experts (a clock should promote them to demand priority), and the policy's
    ``prefetches`` issued at this router (after the demands). The three request lists are an empty
    tuple when there are none (most routers: one shared object, not three new lists per layer).
    ``entries`` has an Entry for every needed expert once the controller returns the decision."""

    __slots__ = ("demands", "entries", "experts", "late", "layer", "prefetches", "status", "tokens")

    def __init__(
        self, layer: int, experts: list[int], tokens: list[int], entries: list[Entry | None]
    ) -> None:
        self.layer = layer
        self.experts = experts
        self.tokens = tokens
        self.entries = entries
        self.status: list[int] = []
        self.demands: Sequence[R] = ()
        self.late: Sequence[R] = ()
        self.prefetches: Sequence[R] = ()

    @property
    def slots(self) -> list[int]:
        """The GPU slot of each needed expert, in router order."""
        return [entry.slot for entry in self.entries if entry is not None]


@dataclass
class DecisionCounters:
    """Logical outcome of a run; identical for every clock except the hits/late split."""

    hits: list[int]
    late: list[int]
    misses: list[int]
    demand_loads: int = 0
    prefetches_issued: int = 0
    prefetches_present: int = 0
    prefetches_dropped: int = 0
    wasted: int = 0
    evictions: int = 0
    slots_used: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def transfers(self) -> int:
        return self.demand_loads + self.prefetches_issued


def logical_events(num_layers: int, issue_point: str) -> Iterator[tuple[str, int]]:
    """The event sequence of one step: ``(kind, layer)`` pairs in the order a clock must deliver them."""
    for j in range(num_layers):
        yield LAYER_START_EVENT, j
        if issue_point == LAYER_START:
            yield PREDICTION_EVENT, j
        yield ROUTER_EVENT, j
        if issue_point == ROUTER and j + 1 < num_layers:
            yield PREDICTION_EVENT, j + 1
        yield LAYER_END_EVENT, j


class DecodeController(Generic[R]):
    """Decisions of one run: a workload, a fresh policy object and a cache configuration. ``R`` is the
    class of the requests it creates (FetchRequest unless a clock passes ``request_type``)."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        cache_config: CacheConfig,
        estimates: TimingEstimates | None = None,
        request_type: type[R] = FetchRequest,  # type: ignore[assignment]  # (mypy issue 3737)
    ) -> None:
        """``request_type``: the class of the requests this controller creates; a clock may pass a
        subclass of FetchRequest that carries its own per-transfer state (the simulator's link does)."""
        self.workload = workload
        self._request_type = request_type
        self.policy = policy
        self.num_layers = workload.num_layers
        self.num_experts = workload.num_experts
        self.cache = ExpertCache(
            cache_config,
            self.num_layers,
            self.num_experts,
            reserve=workload.max_needed(),
            next_use=lambda: workload.next_use,
            resident=policy.resident,
        )
        policy.bind(workload, CacheView(self.cache.contains, self.num_experts), estimates)
        self.counters = DecisionCounters(
            hits=[0] * self.num_layers, late=[0] * self.num_layers, misses=[0] * self.num_layers
        )
        self.step: Step | None = None
        self.layer = -1
        self._pos_base = 0
        self._seq = 0
        cls = type(policy)
        self._hooks = {
            name: getattr(cls, name) is not getattr(Policy, name)
            for name in (
                "on_step_start",
                "on_layer_start",
                "on_prediction_ready",
                "on_router",
                "on_layer_end",
            )
        }

    # -- the sequence

    def begin_step(self, s: int) -> list[R]:
        self.step = step = self.workload.step(s)
        self._pos_base = s * self.num_layers
        self.layer = -1
        if self._hooks["on_step_start"]:
            return self._prefetch(self.policy.on_step_start(step))
        return []

    def layer_start(self, j: int) -> list[R]:
        self.layer = j
        self.cache.current_pos = self._pos_base + j
        if self._hooks["on_layer_start"]:
            step = self.step
            assert step is not None, "layer_start outside a step"
            return self._prefetch(self.policy.on_layer_start(step, j))
        return []

    def prediction_ready(self, j: int) -> list[R]:
        """The prediction for MoE layer ``j`` is available."""
        if self._hooks["on_prediction_ready"]:
            step = self.step
            assert step is not None, "prediction_ready outside a step"
            return self._prefetch(self.policy.on_prediction_ready(step, j))
        return []

    def router(self, j: int) -> RouterDecision[R]:
        step = self.step
        assert step is not None, "router outside a step"
        pos = self._pos_base + j
        needed = step.needed[j]
        found, ready = self.cache.route(j, needed, pos)
        decision: RouterDecision[R] = RouterDecision(j, needed, step.tokens_per_expert[j], found)
        if ready:  # the common case: all hits
            decision.status = [HIT] * len(found)
            self.counters.hits[j] += len(found)
        else:
            self._classify(decision, found, j, pos)
        if self._hooks["on_router"]:
            decision.prefetches = self._prefetch(self.policy.on_router(step, j))
        return decision

    def _classify(self, decision: RouterDecision[R], found: list[Entry | None], j: int, pos: int) -> None:
        """Statuses of a layer with late or absent experts; demand loads for the absent ones, in router
        order (allocating one cannot evict another needed expert: the router pinned them all)."""
        status: list[int] = []
        late: list[R] = []
        demands: list[R] = []
        for i, entry in enumerate(found):
            if entry is None:
                cache = self.cache
                e = decision.experts[i]
                key = j * self.num_experts + e
                entry = found[i] = cache.allocate(key, pos, prefetch=False)
                assert entry is not None  # a demand load that finds no slot raises CacheTooSmall
                cache.use(entry, pos)
                entry.request = request = self._new_request(
                    self._seq, key, j, e, entry.slot, DEMAND, True, pos
                )
                self._seq += 1
                demands.append(request)
                status.append(MISS)
            elif entry.arrived:
                status.append(HIT)
            else:
                status.append(LATE)
                late.append(cast(R, entry.request))  # in flight: the request that loads it
        decision.status = status
        if late:
            decision.late = late
        if demands:
            decision.demands = demands
        counters = self.counters
        n_miss, n_late = len(demands), len(late)
        counters.misses[j] += n_miss
        counters.late[j] += n_late
        counters.hits[j] += len(found) - n_miss - n_late
        counters.demand_loads += n_miss

    def layer_end(self, j: int) -> list[R]:
        self.cache.release_through(self._pos_base + j)
        if self._hooks["on_layer_end"]:
            step = self.step
            assert step is not None, "layer_end outside a step"
            return self._prefetch(self.policy.on_layer_end(step, j))
        return []

    def end_step(self) -> None:
        self.step = None

    def transfers_finished(self, requests: Iterable[FetchRequest]) -> None:
        """``transfer_finished`` for each of ``requests``, in order."""
        entries = self.cache.entries
        for request in requests:
            entry = entries.get(request.key)
            if entry is not None and entry.request is request:
                entry.arrived = True
                entry.request = None

    def transfer_finished(self, request: FetchRequest) -> None:
        """The copy of ``request`` landed in its slot (the clock calls this once per request)."""
        entry = self.cache.entries.get(request.key)
        if entry is not None and entry.request is request:
            entry.arrived = True
            entry.request = None

    def finish(self) -> DecisionCounters:
        counters = self.counters
        counters.wasted = self.cache.finish()
        counters.evictions = self.cache.evictions
        counters.slots_used = self.cache.peak_slots
        return counters

    # -- internals

    def _new_request(
        self, seq: int, key: int, layer: int, expert: int, slot: int, priority: int, demand: bool, target: int
    ) -> R:
        """A new request of ``request_type`` (a clock's subclass may build its own class directly instead:
        in the compiled build that is a C call, where calling ``request_type`` goes through Python)."""
        return self._request_type(seq, key, layer, expert, slot, priority, demand, target)

    def _pos(self, j: int) -> int:
        return self._pos_base + j

    def _prefetch(self, actions: Actions) -> list[R]:
        """Turn a policy's actions into transfers: pin what is present, allocate (or drop) what is not."""
        requests: list[R] = []
        cache = self.cache
        step = self.step
        assert step is not None
        s = step.index
        entries = cache.entries  # (its methods are called through it: a direct call when compiled)
        seq = self._seq
        present = 0
        for layer, experts, priority in actions:
            target = (s if layer >= self.layer else s + 1) * self.num_layers + layer
            base = layer * self.num_experts
            prefetch_priority = priority if priority > PREFETCH else PREFETCH
            near = target <= cache.routed_through + 1  # pinned until the next router: no booking
            for e in experts:
                key = base + e
                entry = entries.get(key)
                if entry is not None:
                    if target > entry.pin_until:
                        if near and not entry.counted:
                            entry.pin_until = target
                        else:
                            cache.protect(entry, target)
                    present += 1
                    continue
                entry = cache.allocate(key, target, True)
                if entry is None:
                    self.counters.prefetches_dropped += 1
                    continue
                entry.request = request = self._new_request(
                    seq, key, layer, e, entry.slot, prefetch_priority, False, target
                )
                seq += 1
                requests.append(request)
        self.counters.prefetches_present += present
        self.counters.prefetches_issued += seq - self._seq
        self._seq = seq
        return requests


def run_decisions(
    controller: DecodeController,
    copies_land_at_once: bool = True,
    after_event: Callable[[], object] | None = None,
) -> DecisionCounters:
    """Drive ``controller`` through the whole workload with no clock at all.

    With ``copies_land_at_once`` every transfer is reported finished as soon as it is issued (so "late"
    never happens); otherwise none is (every prefetch that is needed counts as late). Either way misses,
    evictions, waste and transfers equal those of any clock: use it to check a clock or to size slots.
    ``after_event`` is called after each event (and its transfers) was handled: a way to watch the cache
    between events without patching its methods (which the compiled build does not allow).
    """
    issue_point = controller.policy.issue_point
    num_layers = controller.num_layers
    finish = controller.transfer_finished if copies_land_at_once else None

    def issue(requests: Sequence[FetchRequest]) -> None:
        if finish is not None:
            for request in requests:
                finish(request)

    for s in range(controller.workload.num_steps):
        issue(controller.begin_step(s))
        for kind, j in logical_events(num_layers, issue_point):
            if kind == ROUTER_EVENT:
                decision = controller.router(j)
                issue(decision.demands)
                issue(decision.prefetches)
            elif kind == LAYER_START_EVENT:
                issue(controller.layer_start(j))
            elif kind == PREDICTION_EVENT:
                issue(controller.prediction_ready(j))
            else:
                issue(controller.layer_end(j))
            if after_event is not None:
                after_event()
        controller.end_step()
    return controller.finish()
