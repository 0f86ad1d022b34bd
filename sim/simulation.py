"""``simulate``: the simulator's public entry, a pure function of its inputs.

Builds the workload (sim.workload), a fresh policy (sim.policies) and cache (sim.cache) inside a
decision controller (sim.controller), the cost model (sim.costs) and the PCIe link (sim.link) from the
hardware profile, runs the SimPy clock (sim.engine) and returns a SimResult (sim.results). Same inputs,
bit-identical outputs: nothing depends on wall time, randomness or dict order beyond insertion.
"""

from __future__ import annotations

import time

import numpy as np

from sim.cache import CacheConfig
from sim.config import RunConfig, SimOptions, trace_fingerprint
from sim.costs import CostModel
from sim.engine import EngineController, run_engine
from sim.hardware import HardwareProfile
from sim.link import Link, LinkBase, SerialLink
from sim.policies import LAYER_START, ROUTER, Policy, PolicySpec, TimingEstimates, make_policy
from sim.results import SimResult
from sim.workload import Workload
from traces.schema import ModelShape
from traces.trace import Trace


def check_compatible(trace: Trace, shape: ModelShape) -> None:
    """The shape must match the trace's routing axes: as many MoE layers, and every routed expert id must
    exist (map a trace onto another shape first otherwise). The experts per token come from the trace."""
    if len(shape.moe_layers) != trace.num_layers:
        raise ValueError(
            f"shape {shape.name} has {len(shape.moe_layers)} MoE layers but the trace has {trace.num_layers}"
        )
    if shape.num_experts < trace.num_experts:
        raise ValueError(
            f"shape {shape.name} has {shape.num_experts} experts, the trace routes among {trace.num_experts}"
        )


def predictor_times(
    policy: Policy, costs: CostModel, options: SimOptions, tokens: int = 1
) -> tuple[float, float]:
    """(pre-attention prediction time, cross-layer prediction time) for ``policy`` at ``tokens`` tokens."""
    if options.predictor_s is not None:
        value = options.predictor_s if policy.predictor_kind is not None else 0.0
    else:
        value = costs.predictor_s(policy.predictor_kind, tokens, options.predictor_device)
    if policy.issue_point == LAYER_START:
        return value, 0.0
    if policy.issue_point == ROUTER:
        return 0.0, value
    return 0.0, 0.0


def timing_estimates(policy: Policy, costs: CostModel, options: SimOptions) -> TimingEstimates:
    """The static numbers a policy may plan with; the live executor must build them the same way."""
    pre, cross = predictor_times(policy, costs, options)
    return TimingEstimates(
        copy_s=costs.copy_s(options.pinned),
        predictor_s=pre or cross,
        attention_s=lambda context_total, tokens: costs.attention_s(tokens, context_total),
    )


def measured_tokens(workload: Workload, options: SimOptions) -> np.ndarray:
    """Mask of the trace tokens a run's latency summary counts: decode tokens after the warm-up steps.
    Refuses (ValueError) a warm-up that leaves no decode step to measure, so that neither clock reports
    a latency of nothing."""
    decode = workload.decode_token_mask() & (workload.step_of_token >= options.warmup_steps)
    if options.warmup_steps and not decode.any() and workload.decode_token_mask().any():
        raise ValueError(
            f"warmup_steps {options.warmup_steps} leaves no decode step to measure "
            f"(the run has {workload.num_steps} steps)"
        )
    return decode


def simulate(
    trace: Trace,
    shape: ModelShape,
    hardware: HardwareProfile,
    cache: CacheConfig,
    policy: PolicySpec,
    options: SimOptions | None = None,
) -> SimResult:
    """Simulate offloaded decode of ``trace`` on ``shape`` and ``hardware`` with one cache and policy."""
    options = options or SimOptions()
    started = time.perf_counter()
    check_compatible(trace, shape)
    config = RunConfig(trace_fingerprint(trace), shape, hardware, cache, policy, options)
    policy_obj = make_policy(policy, trace.top_k)
    workload = Workload(trace, options.batching(), policy_obj.sources)
    step_of_token = workload.step_of_token
    decode = measured_tokens(workload, options)
    costs = CostModel(shape, hardware, options.compute_scale)
    controller = EngineController(workload, policy_obj, cache, timing_estimates(policy_obj, costs, options))
    copy = hardware.copy
    size = shape.bytes_per_expert
    transfer_s = copy.transfer_s(size, options.pinned)
    capacity_bps = copy.shared_capacity_bps(size, options.pinned)
    link: LinkBase
    if copy.serial:
        link = SerialLink(
            copy.engines,
            transfer_s,
            size,
            record_busy=costs.slowed_by_copies,
            gate_delay_s=copy.gate_delay_s,
            gap_s=copy.gap_s,
        )
    else:
        link = Link(
            engines=copy.engines,
            latency_s=copy.latency_s,
            transfer_s=transfer_s,
            size_bytes=size,
            capacity_bps=capacity_bps,
            record_busy=costs.slowed_by_copies,
            gate_delay_s=copy.gate_delay_s,
        )
    pre_s, cross_s = predictor_times(policy_obj, costs, options)
    out = run_engine(
        controller,
        costs,
        link,
        shape,
        predictor_s=pre_s,
        gate_predictor_s=cross_s,
        step_overhead_s=options.step_overhead_s,
        timeline_steps=options.timeline_steps,
        max_timeline_intervals=options.max_timeline_intervals,
        predictor_device=options.predictor_device,
    )
    c = out.counters
    counters = {
        "demand_loads": c.demand_loads,
        "prefetches_issued": c.prefetches_issued,
        "prefetches_present": c.prefetches_present,
        "prefetches_dropped": c.prefetches_dropped,
        "wasted": c.wasted,
        "evictions": c.evictions,
        "transfers": c.transfers,
        "cache_slots": controller.cache.num_slots,
        "slots_used": c.slots_used,
        "sim_events": out.events,
    }
    return SimResult(
        config=config,
        clock="sim",
        token_latency_s=out.step_latency_s[step_of_token] if len(step_of_token) else np.zeros(0),
        decode_token=decode,
        step_latency_s=out.step_latency_s,
        stall_s=out.stall_s,
        hits=np.asarray(c.hits, dtype=np.int64),
        late=np.asarray(c.late, dtype=np.int64),
        misses=np.asarray(c.misses, dtype=np.int64),
        total_s=out.total_s,
        compute_s=out.compute_s,
        bytes_moved=out.bytes_moved,
        link_busy_s=out.link_busy_s,
        link_capacity_bps=capacity_bps,
        counters=counters,
        timeline=out.timeline,
        wall_s=time.perf_counter() - started,
    )
