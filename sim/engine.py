"""The simulated clock: a SimPy process that plays the decode against the shared decision objects.

One SimPy process is the host: it delivers the controller's events (sim.controller) at simulated times,
issues the transfers the controller returns onto the PCIe link (sim.link, a fluid model of the copy
engines advanced lazily), and launches ops whose times come from the cost model (sim.costs).

Two clocks, as in the live executor (sim.live), which this engine mirrors: the host thread's and the
GPU compute stream's. The host launches every op and issues every copy; the GPU runs an op once it is
launched and its inputs are there. Timing model of one MoE decoder layer::

    host: [wait: GPU past the router of two MoE layers back] norm | attention add norm router + host_layer
          | router decision: issue copies | launch shared, hit experts, waiting experts (landing order), add
    GPU:   norm | attention add norm router (R) | shared, experts (each: launched, and its copy landed) | add
           ^ layer start marker: pre-attention predictor (in line, on a side stream or on the CPU)

- Each op has a launch time (sim.costs.launch_s: the host's; the op time where not measured apart) and a
  GPU time (sim.costs.gpu_s). A GPU op ends at ``max(previous GPU end + its GPU time, the end of its
  launch)``; an expert whose copy is not there also waits for the landing: ``max(landing + GPU time,
  ...)``. When the GPU keeps up, step time is the host's sum of launch times (an eager executor at batch
  1); when the launches are short (ops replayed from CUDA graphs) it is the GPU's; when copies stall the
  GPU, the host runs on and launches the next layer's ops meanwhile, up to the live executor's limit: at
  a MoE layer's start it waits until the GPU has passed the router of two MoE layers back.
- A GPU predictor runs in line on the compute stream (the default) or on a side stream, where the compute
  stream still loses the calibrated share of its time (``predictor_share``; session 6's live timelines
  showed a Qwen3 layer's attention 21 us slower with the pre-attention predictor beside it): the
  pre-attention predictor's time (or share) delays the router, the cross-layer predictor's the MoE
  block after its router. Predicted copies start when the prediction is ready.
- Copies in flight slow the GPU's own work (session 5 on the H200: a routed expert 20.8 us alone, 26.4 us
  beside a copy). Where the profile measured it (``<op>_copying`` curves), the GPU time of a layer's
  attention group (attention, add, norm, router), of its shared experts, of its routed experts (each,
  or all of them at once when none waits for a copy) and of a dense layer is its time alone stretched
  towards its time beside copies by the share of it that a copy was in flight (a layer's first norm and
  last add keep their few microseconds alone).
- Host costs (measured by calibration, zero in datasheet presets): ``host_layer`` per MoE layer before
  its router decision (the executor's decisions, events, polling), and ``copy.issue_s`` per copy that
  takes a copy engine; on the GPU, ``gpu_layer`` per MoE layer, spread evenly as a gap before each of
  its ops (sim.costs.gpu_gap_s: the idle time between a layer's launches). The live executor commits
  a copy to a copy stream only when one is free: at the submission that queues it, or while it polls.
  So the host pays for the copies that took an engine at each submission, and, for those that took one
  while it worked on, when it next waits (for the GPU at a layer's start or a step's end), where the
  cost hides in the wait it would spin through.
- The host submits every copy at its own time with a gate, the GPU marker it must not start before:
  layer-start and layer-end copies behind the compute stream at that point, router copies behind the
  router, predicted copies behind the predictor (sim.link: a shared link starts a copy once both have
  passed; a serial link's next free engine goes to the most urgent copy submitted by then, which waits
  there for its gate). The MoE block commits the copies it still waits for at once (a serial link's
  FIFO then fixes their landings), as the live executor does. An expert waiting for a copy starts
  ``copy.landing_delay_s`` after the landing (the compute stream's wake-up; a copy's own wake-up after
  its gate, ``copy.gate_delay_s``, is the link's). The controller learns which copies
  landed right before each router decision (at the host's time: the only decision that reads them,
  hit versus late) and at the end.
- A step's latency is the GPU time from the previous step's end marker to this one's (recorded after
  the step's last launch), plus ``step_overhead_s``. The next step starts when the previous token is
  there: the host waits for the GPU at every step boundary.
- Stall of a layer = the time its experts' copies held the GPU back (beyond what launches did).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import simpy

from sim.cache import CacheConfig
from sim.controller import HIT, LATE, DecisionCounters, DecodeController, RouterDecision
from sim.costs import CostModel
from sim.link import LinkBase, Transfer
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
    link: LinkBase,
    shape: ModelShape,
    predictor_s: float,
    gate_predictor_s: float,
    step_overhead_s: float,
    timeline_steps: int = 0,
    max_timeline_intervals: int = 100_000,
    predictor_device: str = "gpu",
) -> EngineOutput:
    """Simulate every step of ``controller``'s workload. ``predictor_s``: time from a layer's start to
    its pre-attention prediction (0 for policies without predictor; on the GPU, in line or beside the
    compute stream, or on the CPU, where the router decision waits for it: ``predictor_device``);
    ``gate_predictor_s``: time from a router to the cross-layer prediction of the next layer (on the
    GPU, beside the compute stream only for "gpu-side")."""
    env = simpy.Environment()
    state = _Run(
        controller, costs, link, shape, predictor_s, gate_predictor_s, step_overhead_s, predictor_device
    )
    state.timeline = _Timeline(timeline_steps, max_timeline_intervals)
    recording = state.timeline.on
    env.process(state.decode(env))
    env.run()
    busy_s = link.busy_s  # link activity during the decode; copies still in flight then land after it
    link.drain()
    state.flush(INF)
    counters = controller.finish()
    stall = np.asarray(state.stall, dtype=np.float64)
    return EngineOutput(
        step_latency_s=np.asarray(state.step_latency, dtype=np.float64),
        stall_s=stall,
        compute_s=state.t_compute - float(stall.sum()),
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
        link: LinkBase,
        shape: ModelShape,
        predictor_s: float,
        gate_predictor_s: float,
        step_overhead_s: float,
        predictor_device: str,
    ) -> None:
        self.controller = controller
        self.costs = costs
        self.link = link
        self.shape = shape
        self.predictor_s = predictor_s
        self.gate_predictor_s = gate_predictor_s
        self.step_overhead_s = step_overhead_s
        self.predictor_device = predictor_device
        self.t_compute = 0.0  # end of the last step on the GPU
        self.step_latency: list[float] = []
        self.stall = [0.0] * controller.num_layers
        self.paid = 0  # copies the host has paid issue_s for (link.started counts those that started)
        self.events = 0
        self.timeline: _Timeline
        moe = set(shape.moe_layers)
        self.layer_plan = [(d in moe) for d in range(shape.num_layers)]

    # -- helpers

    def flush(self, host_s: float) -> None:
        """Tell the controller about the copies that landed by host time ``host_s`` (the link may have
        run further, to a copy gated on a GPU marker the host is ahead of)."""
        completed = self.link.completed
        if not completed:
            return
        n = len(completed)
        while n and completed[n - 1].end_s > host_s:
            n -= 1
        if not n:
            return
        landed = completed[:n]
        del completed[:n]
        self.controller.transfers_finished(landed)
        if self.timeline.on:
            for t in landed:
                kind = "demand" if t.demand else ("prefetch" if t.priority else "late prefetch")
                self.timeline.add(f"copy{t.engine}", kind, t.start_s, t.end_s, t.layer, t.expert)

    def paid_starts(self, h: float) -> float:
        """Host time ``h`` after the host issued the copies that took an engine since it last did."""
        started = self.link.started
        if started == self.paid:
            return h
        h += (started - self.paid) * self.costs.issue_s
        self.paid = started
        return h

    def waited(self, h: float, until: float) -> float:
        """Host time after waiting from ``h`` until ``until`` (later), polling the copies meanwhile:
        those that took an engine by then are issued within the wait, or after it if they cost more."""
        self.link.advance(until)
        return max(until, self.paid_starts(h))

    def beside_copies(self, start: float, alone: float, copying: float) -> float:
        """GPU time of an op starting at ``start``: ``alone``, stretched towards ``copying`` (its time
        beside copies) by the share of it with a copy in flight."""
        if copying == alone:
            return alone
        return alone + (copying - alone) * self.link.copying_share(start, start + alone)

    def _moe_experts(
        self,
        decision: RouterDecision[Transfer],
        t: float,
        h: float,
        j: int,
        n_tok: int,
        c_one: float,
        g_one: float,
        copying_one: float,
    ) -> tuple[float, float]:
        """The routed experts of one MoE block in general (copies to wait for, several tokens, copies in
        flight that slow the GPU, a timeline): hits first, then the others in landing order; each
        launched by the host (op time) and run by the GPU (GPU time) once launched, after the gap before
        each op, and ``landing_delay_s`` after its copy landed.
        Returns the GPU's and the host's times after them and adds the block's wait for copies to the
        layer's stall."""
        costs, link, timeline = self.costs, self.link, self.timeline
        status = decision.status
        if n_tok == 1:
            cs = [c_one] * len(status)
            gs = [g_one] * len(status)
            copying = [copying_one] * len(status)
        else:
            cs = [costs.launch_s("expert", x, 0) for x in decision.tokens]
            gs = [costs.gpu_s("expert", x, 0) for x in decision.tokens]
            copying = [costs.gpu_copying_s("expert", x, 0) for x in decision.tokens]
        waiting: list[tuple[float, int]] = []
        if decision.late or decision.demands:
            # the host commits the copies it still waits for now (a serial link's FIFO then fixes their
            # landings); on a shared link no copy starts before this block ends, so running it on to
            # each landing is exact
            link.commit_all(decision.late, h)  # promoted to demands, issued before them: they go first
            link.commit_all(decision.demands, h)
            late_iter, demand_iter = iter(decision.late), iter(decision.demands)
            for i, st in enumerate(status):
                if st != HIT:
                    transfer = next(late_iter) if st == LATE else next(demand_iter)
                    waiting.append((link.finish_time(transfer), i))
            waiting.sort()
        gap = costs.gpu_gap_s(n_tok)
        for i, st in enumerate(status):
            if st == HIT:
                g_i = self.beside_copies(t, gs[i], copying[i])
                t += gap + g_i
                h += cs[i]
                if h > t:
                    t = h
                if timeline.on:
                    timeline.add("compute", "expert", t - g_i, t, j, decision.experts[i])
        layer_stall = 0.0
        woken = costs.landing_delay_s  # the compute stream's wake-up after a landing
        for landed, i in waiting:
            h += cs[i]
            start = max(t + gap, landed + woken)
            g_i = self.beside_copies(start, gs[i], copying[i])
            ready = t + gap + g_i  # without the wait for the copy
            if h > ready:
                ready = h
            t = start + g_i
            if h > t:
                t = h
            layer_stall += t - ready
            if timeline.on:
                timeline.add("compute", "expert", t - g_i, t, j, decision.experts[i])
        if layer_stall > 0.0:
            self.stall[j] += layer_stall
        return t, h

    # -- the process

    def decode(self, env: simpy.Environment) -> Generator[simpy.Event, object, None]:
        """The host process. Within a layer the controller's events are delivered at explicit host times
        (non-decreasing); the SimPy clock advances once per layer, to the host's time at its layer_end,
        which keeps SimPy's work per token-layer to one timeout."""
        controller, costs, link = self.controller, self.costs, self.link
        timeline = self.timeline
        issue_point = controller.policy.issue_point
        pre_attention = issue_point == LAYER_START
        cross_layer = issue_point == ROUTER
        on_host = self.predictor_device == "cpu"
        num_moe = controller.num_layers
        predictor_s, gate_s = self.predictor_s, self.gate_predictor_s
        # the compute stream's loss to a GPU predictor: all of its time in line, a share beside
        share = costs.predictor_share(self.predictor_device)
        pre_loss = share * predictor_s if pre_attention and not on_host else 0.0
        cross_loss = share * gate_s if cross_layer else 0.0
        # a predictor in line on the compute stream is one more op of its layer there, with the GPU's gap
        # before it like every other (CostModel.gpu_gap_s); beside, on the CPU or free it is none
        in_line = self.predictor_device != "gpu-side"
        pre_gaps = 1.0 if pre_attention and not on_host and in_line and predictor_s > 0 else 0.0
        cross_gaps = 1.0 if cross_layer and in_line and gate_s > 0 else 0.0
        # (methods of the link and the controller are called through their objects, not bound to locals:
        # in the compiled build (sim.COMPILED) that is a direct C call, in pure Python it costs one lookup)
        sim_now = env.now
        gpu_s = costs.gpu_s
        copying_s = costs.gpu_copying_s
        beside = self.beside_copies
        slowed = costs.slowed_by_copies
        launch_s = costs.launch_s
        paid_starts = self.paid_starts
        timeout = env.timeout
        events = 0
        h = 0.0  # host: the time its next action starts
        g = 0.0  # GPU compute stream: free from g on
        boundary = 0.0  # GPU time of the last step's end marker
        r_back2 = 0.0  # GPU times of the routers of the last two MoE layers (the host's look-ahead limit)
        r_back1 = 0.0

        recording = timeline.on
        for s in range(controller.workload.num_steps):
            if recording and s >= timeline.steps:
                timeline.on = recording = False
            step_start = boundary
            if boundary > h:  # the next token needs the previous one
                h = self.waited(h, boundary)
            g = boundary
            issued = controller.begin_step(s)
            if issued:
                link.submit_all(issued, h, boundary)
                h = paid_starts(h)
            step = controller.step
            assert step is not None
            n_tok = step.num_tokens
            ctx = step.context_total
            # launch times (the host's) and GPU times of this step's ops
            norm = launch_s("norm", n_tok, 0)
            add = launch_s("add", n_tok, 0)
            attn = launch_s("attention", n_tok, ctx)
            router = launch_s("router", n_tok, 0)
            shared = launch_s("shared", n_tok, 0)
            c_one = launch_s("expert", 1, 0)
            host_pre = attn + add + norm + router + costs.host_layer_s(n_tok)
            g_norm = gpu_s("norm", n_tok, 0)
            g_add = gpu_s("add", n_tok, 0)
            g_router = gpu_s("router", n_tok, 0)
            # the gap before each GPU op of a MoE layer: four in the attention group, one before the input
            # norm, the shared experts (or the zeroed MoE sum), each routed expert and the last add
            gap = costs.gpu_gap_s(n_tok)
            g_pre = gpu_s("attention", n_tok, ctx) + g_add + g_norm + g_router + 4 * gap
            pre_step = pre_loss + pre_gaps * gap  # the compute stream's time for an in-line predictor
            cross_step = cross_loss + cross_gaps * gap
            g_shared = gpu_s("shared", n_tok, 0)
            g_one = gpu_s("expert", 1, 0)
            dense = 2 * norm + attn + launch_s("dense", n_tok, 0) + 2 * add
            g_dense = 2 * g_norm + gpu_s("attention", n_tok, ctx) + gpu_s("dense", n_tok, 0) + 2 * g_add
            # GPU times beside copies in flight (equal to those alone without such curves), of the ops
            # that take most of a layer: the attention group, the MLPs (a layer's first norm and last add,
            # a few microseconds, keep their times alone: one share per op would cost the engine more)
            gc_pre = (
                copying_s("attention", n_tok, ctx)
                + copying_s("add", n_tok, 0)
                + copying_s("norm", n_tok, 0)
                + copying_s("router", n_tok, 0)
                + 4 * gap
            )
            gc_shared = copying_s("shared", n_tok, 0)
            gc_one = copying_s("expert", 1, 0)
            gc_dense = (
                2 * g_norm + copying_s("attention", n_tok, ctx) + copying_s("dense", n_tok, 0) + 2 * g_add
            )
            j = 0
            for is_moe in self.layer_plan:
                if not is_moe:
                    t = max(g, h)
                    t += beside(t, g_dense, gc_dense) if slowed else g_dense
                    h += dense
                    if h > t:
                        t = h
                    timeline.add("compute", "dense layer", t - g_dense, t)
                    g = t
                    continue
                if r_back2 > h:  # at most one MoE layer ahead of the GPU
                    h = self.waited(h, r_back2)
                # layer start: the input norm is launched; on the GPU the pre-attention predictor starts
                # (an empty batch is neither submitted nor charged)
                g_ls = max(g, h) + gap + g_norm
                h += norm
                if h > g_ls:
                    g_ls = h
                if recording:
                    timeline.add("compute", "norm", g_ls - g_norm, g_ls, j)
                issued = controller.layer_start(j)
                if issued:
                    link.submit_all(issued, h, g_ls)
                    h = paid_starts(h)
                t_pred = 0.0
                if pre_attention:
                    # on the CPU the host computes it (its router decision waits for it below)
                    t_pred = (max(h, g_ls) if on_host else g_ls + pre_gaps * gap) + predictor_s
                    if recording:
                        timeline.add("predictor", "predict", t_pred - predictor_s, t_pred, j)
                    issued = controller.prediction_ready(j)
                    if issued:
                        link.submit_all(issued, h, t_pred)
                        h = paid_starts(h)
                # attention, add, norm, router and the executor's own work; then the router decision
                h += host_pre
                if on_host and t_pred > h:
                    h = t_pred
                t_router = g_ls + (beside(g_ls, g_pre, gc_pre) if slowed else g_pre) + pre_step
                if h > t_router:
                    t_router = h
                if recording:
                    timeline.add("compute", "attention", g_ls, t_router - g_router, j)
                    timeline.add("compute", "router", t_router - g_router, t_router, j)
                link.advance(h)  # learn which copies landed before the decision: hit versus late
                if link.completed:
                    self.flush(h)
                decision = controller.router(j)
                late, demands, prefetches = decision.late, decision.demands, decision.prefetches
                if late:
                    link.promote_all(late, DEMAND)
                if demands:
                    link.submit_all(demands, h, t_router)
                if prefetches:
                    link.submit_all(prefetches, h, t_router)
                if demands or prefetches:
                    h = paid_starts(h)
                if cross_layer and j + 1 < num_moe:
                    t_pred = t_router + cross_gaps * gap + gate_s
                    issued = controller.prediction_ready(j + 1)
                    if issued:
                        link.submit_all(issued, h, t_pred)
                        h = paid_starts(h)
                # the MoE block: shared and hit experts launched first, then the others in landing order
                # (a cross-layer gate predictor beside it takes its share of the GPU)
                t = t_router + cross_step if j + 1 < num_moe else t_router
                t += gap  # before the shared experts, or the zeroing of the MoE sum
                if shared > 0:
                    t += beside(t, g_shared, gc_shared) if slowed else g_shared
                    h += shared
                    if h > t:
                        t = h
                    if recording:
                        timeline.add("compute", "shared experts", t - g_shared, t, j)
                status = decision.status
                if n_tok == 1 and not (late or demands or recording):
                    # every expert is on the GPU (most layers of most runs): t_k = max(t_{k-1} + g_exp,
                    # h + k * c_one) over the k experts, in closed form (beside copies: the share of the
                    # experts' time alone with a copy in flight stretches them all alike)
                    n_exp = len(status)
                    g_exp = gap + (beside(t, n_exp * g_one, n_exp * gc_one) / n_exp if slowed else g_one)
                    end = h + (n_exp * c_one if c_one >= g_exp else c_one + (n_exp - 1) * g_exp)
                    t = max(t + n_exp * g_exp, end)
                    h += n_exp * c_one
                else:
                    t, h = self._moe_experts(decision, t, h, j, n_tok, c_one, g_one, gc_one)
                t += gap + g_add
                h += add
                if h > t:
                    t = h
                g = t
                r_back2, r_back1 = r_back1, t_router
                # layer end: its experts may now be evicted. SimPy's clock is kept in sim_now, read once
                # after each timeout (env.now is a property; the loop would read it twice per layer)
                if h > sim_now:
                    yield timeout(h - sim_now)
                    sim_now = env.now
                    events += 1
                issued = controller.layer_end(j)
                if issued:
                    link.submit_all(issued, h, g)
                    h = paid_starts(h)
                j += 1
            controller.end_step()
            boundary = max(g, h) + self.step_overhead_s
            self.step_latency.append(boundary - step_start)
        self.t_compute = boundary
        self.events = events
