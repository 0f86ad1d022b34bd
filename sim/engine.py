"""The simulated clock: a SimPy process that plays the decode against the shared decision objects.

One SimPy process is the host: it delivers the controller's events (sim.controller) at simulated times,
issues the transfers the controller returns onto the PCIe link (sim.link, a fluid model of the copy
engines advanced lazily), and books compute-stream time from the cost model (sim.costs).

Timing model of one MoE decoder layer, on one compute stream (dense layers run straight through)::

    norm | attention | add | norm | router | shared experts, routed experts (in arrival order) | add
         ^ layer_start + prediction start (pre-attention predictor on a side stream or the CPU)
                                           ^ router event: demand loads issued, experts launched

- Each controller event is delivered at the later of its physical time and the previous delivery (the
  host handles events in order; a slow predictor thus delays its layer's router decision). Landed
  copies are reported to the controller right before each router event (the only decision that reads
  them: hit versus late) and at the end.
- The MoE block starts when the router event is delivered: shared experts and resident routed experts
  first, then the others in the order their copies land; each starts at max(previous end, landing).
  Its end is computed from the copies' landing times in one go: SimPy sees a handful of events per
  layer, not one per op or copy.
- Host costs (measured by calibration, zero in datasheet presets): ``host_layer`` per MoE layer before
  its router (the executor's decisions, events, polling), and ``copy.issue_s`` per copy issued, which
  delays the compute stream at the point of issue (one host thread launches kernels and copies).
- Stall of a layer = time its compute stream sat idle (waiting for copies or for the host).
- A step's latency is the compute stream's time from the step's first op to its last, plus
  ``step_overhead_s``; steps run back to back (the next token needs the previous one).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import simpy

from sim.cache import CacheConfig
from sim.controller import HIT, LATE, DecisionCounters, DecodeController
from sim.costs import CostModel
from sim.link import DONE, Link, Transfer
from sim.policies import DEMAND, LAYER_START, ROUTER, Policy, TimingEstimates
from sim.workload import Workload
from traces.schema import ModelShape

INF: Final = float("inf")

#: timeline interval: (lane, kind, start_s, end_s, moe_layer, expert); expert -1 when not an expert
Interval = tuple[str, str, float, float, int, int]


@dataclass
class EngineOutput:
    """Raw outcome of one simulated run (sim.results turns it into a SimResult)."""

    step_latency_s: np.ndarray
    stall_s: np.ndarray  # per MoE layer, summed over the run
    compute_s: float  # compute-stream busy time
    total_s: float
    counters: DecisionCounters
    bytes_moved: float
    link_busy_s: float
    timeline: list[Interval] | None = None
    events: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class EngineController(DecodeController[Transfer]):
    """The decode controller of a simulated run: its requests are the link's Transfers."""

    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        cache_config: CacheConfig,
        estimates: TimingEstimates | None = None,
    ) -> None:
        super().__init__(workload, policy, cache_config, estimates, request_type=Transfer)

    def _new_request(
        self, seq: int, key: int, layer: int, expert: int, slot: int, priority: int, demand: bool, target: int
    ) -> Transfer:
        return Transfer(seq, key, layer, expert, slot, priority, demand, target)


class _Timeline:
    def __init__(self, steps: int, limit: int) -> None:
        self.steps = steps
        self.limit = limit
        self.intervals: list[Interval] = []
        self.on = steps > 0

    def add(self, lane: str, kind: str, start: float, end: float, layer: int = -1, expert: int = -1) -> None:
        if self.on and len(self.intervals) < self.limit and end > start:
            self.intervals.append((lane, kind, start, end, layer, expert))

    def add_run(
        self, lane: str, kind: str, start: float, durations: list[float], layer: int, experts: list[int]
    ) -> None:
        """Intervals of ops run back to back from ``start`` (the same float additions as the engine's)."""
        for c, expert in zip(durations, experts, strict=True):
            self.add(lane, kind, start, start + c, layer, expert)
            start += c


def run_engine(
    controller: DecodeController[Transfer],
    costs: CostModel,
    link: Link,
    shape: ModelShape,
    predictor_s: float,
    gate_predictor_s: float,
    step_overhead_s: float,
    timeline_steps: int = 0,
    max_timeline_intervals: int = 100_000,
) -> EngineOutput:
    """Simulate every step of ``controller``'s workload. ``predictor_s``: time from a layer's start to
    its pre-attention prediction (0 for policies without predictor); ``gate_predictor_s``: time from a
    router to the cross-layer prediction of the next layer."""
    env = simpy.Environment()
    state = _Run(controller, costs, link, shape, predictor_s, gate_predictor_s, step_overhead_s)
    state.timeline = _Timeline(timeline_steps, max_timeline_intervals)
    recording = state.timeline.on
    env.process(state.decode(env))
    env.run()
    busy_s = link.busy_s  # link activity during the decode; copies still in flight then land after it
    link.drain()
    state.flush()
    counters = controller.finish()
    return EngineOutput(
        step_latency_s=np.asarray(state.step_latency, dtype=np.float64),
        stall_s=np.asarray(state.stall, dtype=np.float64),
        compute_s=state.compute_busy,
        total_s=state.t_compute,
        counters=counters,
        bytes_moved=link.bytes_moved,
        link_busy_s=busy_s,
        timeline=state.timeline.intervals if recording else None,
        events=state.events,
    )


class _Run:
    """The host process and its bookkeeping (kept in one object so the hot loop reads locals)."""

    def __init__(
        self,
        controller: DecodeController[Transfer],
        costs: CostModel,
        link: Link,
        shape: ModelShape,
        predictor_s: float,
        gate_predictor_s: float,
        step_overhead_s: float,
    ) -> None:
        self.controller = controller
        self.costs = costs
        self.link = link
        self.shape = shape
        self.predictor_s = predictor_s
        self.gate_predictor_s = gate_predictor_s
        self.step_overhead_s = step_overhead_s
        self.t_compute = 0.0  # compute stream is free from this time on
        self.t_host = 0.0  # last event delivery
        self.compute_busy = 0.0
        self.step_latency: list[float] = []
        self.stall = [0.0] * controller.num_layers
        self.events = 0
        self.timeline: _Timeline
        moe = set(shape.moe_layers)
        self.layer_plan = [(d in moe) for d in range(shape.num_layers)]

    # -- helpers

    def flush(self) -> None:
        """Tell the controller about copies that landed (all landed before the current host time)."""
        completed = self.link.completed
        if completed:
            self.controller.transfers_finished(completed)
            if self.timeline.on:
                for t in completed:
                    kind = "demand" if t.demand else ("prefetch" if t.priority else "late prefetch")
                    self.timeline.add(f"copy{t.engine}", kind, t.start_s, t.end_s, t.layer, t.expert)
            completed.clear()

    # -- the process

    def decode(self, env: simpy.Environment) -> Generator[simpy.Event, object, None]:
        """The host process. Within a layer the controller's events are delivered at explicit times
        (non-decreasing, the link advanced to each); the SimPy clock advances once per layer, to the
        delivery of its layer_end, which keeps SimPy's work per token-layer to one timeout."""
        controller, costs, link = self.controller, self.costs, self.link
        timeline = self.timeline
        issue_point = controller.policy.issue_point
        pre_attention = issue_point == LAYER_START
        cross_layer = issue_point == ROUTER
        num_moe = controller.num_layers
        predictor_s, gate_s = self.predictor_s, self.gate_predictor_s
        # (methods of the link and the controller are called through their objects, not bound to locals:
        # in the compiled build (sim.COMPILED) that is a direct C call, in pure Python it costs one lookup)
        sim_now = env.now
        stall = self.stall
        expert_s = costs.expert_s
        issue_s = costs.issue_s
        timeout = env.timeout
        events = 0
        t_c = 0.0  # the compute stream is free from t_c on
        t_h = 0.0  # last event delivery (host time)

        recording = timeline.on
        for s in range(controller.workload.num_steps):
            if recording and s >= timeline.steps:
                timeline.on = recording = False
            step_start = t_c
            t_h = max(t_h, t_c)
            issued = controller.begin_step(s)
            if issued:
                link.submit_all(issued, t_h)
            step = controller.step
            assert step is not None
            n_tok = step.num_tokens
            norm = costs.norm_s(n_tok)
            add = costs.add_s(n_tok)
            attn = costs.attention_s(n_tok, step.context_total)
            router = costs.router_s(n_tok)
            shared = costs.shared_s(n_tok)
            c_one = expert_s(1)
            before_router = attn + add + norm + router + costs.host_layer_s(n_tok)
            busy = 0.0
            j = 0
            for is_moe in self.layer_plan:
                if not is_moe:
                    layer_s = 2 * norm + attn + costs.dense_s(n_tok) + 2 * add
                    timeline.add("compute", "dense layer", t_c, t_c + layer_s)
                    t_c += layer_s
                    busy += layer_s
                    continue
                # layer start: the input norm is done, the pre-attention predictor starts
                # (an empty batch is neither submitted nor charged: adding 0 * issue_s changes no float)
                t_ls = t_c + norm
                if t_ls > t_h:
                    t_h = t_ls
                issued = controller.layer_start(j)
                t_router = t_ls + before_router
                if issued:
                    link.submit_all(issued, t_h)
                    t_router += len(issued) * issue_s
                if recording:
                    timeline.add("compute", "norm", t_c, t_ls, j)
                    timeline.add("compute", "attention", t_ls, t_ls + attn, j)
                    timeline.add("compute", "router", t_router - router, t_router, j)
                if pre_attention:
                    t_p = t_ls + predictor_s
                    if recording:
                        timeline.add("predictor", "predict", t_ls, t_p, j)
                    if t_p > t_h:
                        t_h = t_p
                    issued = controller.prediction_ready(j)
                    if issued:
                        link.submit_all(issued, t_h)
                        t_router += len(issued) * issue_s  # the host issues them during attention
                # router: hits, late prefetches (promoted to demand), misses (demand loads)
                if t_router > t_h:
                    t_h = t_router
                link.advance(t_h)  # learn which copies landed before the router: hit versus late
                if link.completed:
                    self.flush()
                decision = controller.router(j)
                t_block = t_h
                late, demands, prefetches = decision.late, decision.demands, decision.prefetches
                if late:
                    link.promote_all(late, DEMAND)
                if demands:
                    link.submit_all(demands, t_h)
                if prefetches:
                    link.submit_all(prefetches, t_h)
                if demands or prefetches:
                    t_block += (len(demands) + len(prefetches)) * issue_s
                if cross_layer and j + 1 < num_moe:
                    t_p = t_router + gate_s
                    if t_p > t_h:
                        t_h = t_p
                    issued = controller.prediction_ready(j + 1)
                    if issued:
                        link.submit_all(issued, t_h)
                        t_block += len(issued) * issue_s
                # the MoE block: shared and resident experts first, then the others as their copies land
                status = decision.status
                t = t_block + shared
                work = shared
                if recording and shared > 0:
                    timeline.add("compute", "shared experts", t_block, t, j)
                cs = [c_one] * len(status) if n_tok == 1 else [expert_s(x) for x in decision.tokens]
                if late or demands:
                    late_iter, demand_iter = iter(late), iter(demands)
                    waiting = []
                    for i, st in enumerate(status):
                        c = cs[i]
                        work += c
                        if st == HIT:
                            if recording:
                                timeline.add("compute", "expert", t, t + c, j, decision.experts[i])
                            t += c
                        else:
                            transfer = next(late_iter) if st == LATE else next(demand_iter)
                            if transfer.state != DONE:  # no copy starts before this block ends
                                link.advance(INF, transfer)
                            waiting.append((transfer.end_s, i))
                    waiting.sort()
                    for landed, i in waiting:
                        if landed > t:
                            t = landed
                        c = cs[i]
                        if recording:
                            timeline.add("compute", "expert", t, t + c, j, decision.experts[i])
                        t += c
                else:  # every needed expert is on the GPU: they run back to back
                    if recording:
                        timeline.add_run("compute", "expert", t, cs, j, decision.experts)
                    for c in cs:
                        t += c
                        work += c
                t += add
                work += add
                idle = (t - t_router) - work
                if idle > 0.0:  # (a float sum of the same ops can land a hair below zero)
                    stall[j] += idle
                busy += before_router + norm + work
                t_c = t
                # layer end: its experts may now be evicted. SimPy's clock is kept in sim_now, read once
                # after each timeout (env.now is a property; the loop would read it twice per layer)
                if t_c > t_h:
                    t_h = t_c
                if t_h > sim_now:
                    yield timeout(t_h - sim_now)
                    sim_now = env.now
                    events += 1
                issued = controller.layer_end(j)
                if issued:
                    link.submit_all(issued, t_h)
                    t_c += len(issued) * issue_s
                j += 1
            controller.end_step()
            t_c += self.step_overhead_s
            self.step_latency.append(t_c - step_start)
            self.compute_busy += busy + self.step_overhead_s
        self.t_compute = t_c
        self.events = events
