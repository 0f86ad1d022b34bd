"""Host costs in the simulator (measured by calibration for the live executor): a fixed host time per
MoE layer and a host time per issued copy, both on the compute stream's path, and each op's launch time,
which a graphed executor keeps far below the GPU's time."""

from __future__ import annotations

import dataclasses

import pytest

from sim.cache import CacheConfig
from sim.config import SimOptions
from sim.hardware import OpCurve, load_profile
from sim.policies import PolicySpec
from sim.simulation import simulate
from traces.schema import ModelShape
from traces.synthetic import SyntheticSpec, generate_trace

SHAPE = ModelShape(
    name="tiny-host-costs",
    architecture="qwen3_moe",
    num_layers=3,
    moe_layers=(0, 1, 2),
    num_experts=8,
    top_k=2,
    hidden_size=64,
    expert_intermediate_size=32,
    bytes_per_expert=3 * 64 * 32 * 2,
)


@pytest.fixture(scope="module")
def trace():
    return generate_trace(SyntheticSpec(SHAPE, num_sequences=1, tokens_per_sequence=10, seed=2))


def _run(trace, hardware, policy: str, fraction: float = 0.25):
    return simulate(trace, SHAPE, hardware, CacheConfig(fraction=fraction), PolicySpec(policy), SimOptions())


def test_host_layer_time_adds_once_per_moe_layer(trace) -> None:
    base = load_profile("h200")
    extra = base.with_compute(curves=(*base.compute.curves, OpCurve("host_layer", SHAPE.name, (1,), (1e-3,))))
    before, after = _run(trace, base, "resident"), _run(trace, extra, "resident")
    assert after.step_latency_s - before.step_latency_s == pytest.approx([3e-3] * trace.num_tokens)


def test_each_issued_copy_delays_compute_by_the_issue_time(trace) -> None:
    fast = load_profile("h200").with_copy(
        latency_s=0.0, pinned_gbps=1e9, link_gbps=1e9, curve=None, issue_s=0.0
    )
    slow_host = fast.with_copy(issue_s=1e-3)
    before, after = _run(trace, fast, "on-demand"), _run(trace, slow_host, "on-demand")
    assert after.counters["transfers"] == before.counters["transfers"] > 0
    assert after.total_s - before.total_s == pytest.approx(after.counters["transfers"] * 1e-3, rel=1e-6)


def test_profiles_without_host_costs_keep_their_dictionary() -> None:
    profile = load_profile("a100-pcie-gen4")
    assert "issue_s" not in profile.to_dict()["copy"]
    assert dataclasses.replace(profile.copy, issue_s=2e-6) != profile.copy


def _op_curves(suffix: str, seconds: float) -> tuple[OpCurve, ...]:
    """Every decode op of SHAPE at ``seconds`` per call (curves named ``<op><suffix>``)."""
    flat = [
        OpCurve(f"{op}{suffix}", SHAPE.name, (1,), (seconds,)) for op in ("norm", "router", "add", "expert")
    ]
    attention = OpCurve(f"attention{suffix}", SHAPE.name, (1,), ((seconds, seconds),), (1, 4096))
    return (*flat, attention)


def test_launches_far_shorter_than_the_gpu_time_make_a_step_take_the_gpus_time(trace) -> None:
    base = load_profile("h200")
    ops = (*_op_curves("", 100e-6), *_op_curves("_gpu", 50e-6))
    eager = base.with_compute(curves=(*base.compute.curves, *ops))
    graphed = base.with_compute(curves=(*base.compute.curves, *ops, *_op_curves("_host", 1e-6)))
    # per MoE layer: norm, attention, add, norm, router, top_k experts, add
    calls = 6 + SHAPE.top_k
    host_bound, gpu_bound = _run(trace, eager, "resident"), _run(trace, graphed, "resident")
    assert host_bound.step_latency_s == pytest.approx([3 * calls * 100e-6] * trace.num_tokens)
    # the host runs ahead, launching in 1 us what the GPU runs in 50: the GPU sets the pace
    assert gpu_bound.step_latency_s == pytest.approx([3 * calls * 50e-6] * trace.num_tokens)
