"""The live executor on the CPU: it drives the simulator's own decision objects, so every logical outcome
(misses, transfers, evictions, waste) equals the simulator's; it refuses runs that do not fit."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sim import live
from sim.cache import CacheConfig
from sim.config import SimOptions
from sim.hardware import load_profile
from sim.policies import PolicySpec
from sim.simulation import simulate
from traces.fileio import InputError
from traces.schema import ModelShape
from traces.synthetic import SyntheticSpec, generate_trace

SHAPE = ModelShape(
    name="tiny-deepseek-like",
    architecture="deepseek_v2",
    num_layers=3,
    moe_layers=(1, 2),
    num_experts=12,
    top_k=3,
    hidden_size=32,
    expert_intermediate_size=16,
    bytes_per_expert=3 * 32 * 16 * 4,
    num_shared_experts=1,
    shared_intermediate_size=16,
    dense_intermediate_size=48,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    dtype="float32",
)
LOGICAL = ("misses", "transfers", "wasted", "evictions", "demand_loads", "prefetches_issued")


@pytest.fixture(scope="module")
def trace():
    spec = SyntheticSpec(
        SHAPE,
        num_sequences=2,
        tokens_per_sequence=8,
        predictor_accuracy={"pre-attention": 0.8, "cross-layer": 0.6},
        seed=3,
    )
    return generate_trace(spec)


@pytest.fixture(scope="module")
def model():
    options = live.LiveOptions(device="cpu", host_budget_bytes=10 * SHAPE.bytes_per_expert)
    return live.open_model(SHAPE, SHAPE.num_moe_layers * SHAPE.num_experts, True, 1, 16, True, 2, options)


@pytest.mark.parametrize(
    "policy", ["on-demand", "pre-attention", "cross-layer", "previous-token", "oracle", "resident"]
)
@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_live_decisions_equal_the_simulators(trace, model, policy: str, fraction: float) -> None:
    hardware = load_profile("h200")
    cache = CacheConfig(fraction=fraction)
    options = SimOptions(warmup_steps=1)
    ran = live.run_live(
        model, trace, hardware, cache, PolicySpec(policy), options, live.LiveOptions(device="cpu")
    )
    simulated = simulate(trace, SHAPE, hardware, cache, PolicySpec(policy), options)
    a, b = ran.summary_row(), simulated.summary_row()
    assert {k: a[k] for k in LOGICAL} == {k: b[k] for k in LOGICAL}
    assert a["hits"] + a["late"] == b["hits"] + b["late"]
    assert ran.counters["live_transfers"] == b["transfers"]
    assert ran.config.key() == simulated.config.key()
    assert ran.clock == "live" and len(ran.token_latency_s) == trace.num_tokens
    assert (ran.step_latency_s > 0).all()


def test_live_timeline_records_compute_and_copies_of_the_first_steps(trace, model) -> None:
    options = SimOptions(timeline_steps=2)
    ran = live.run_live(
        model,
        trace,
        load_profile("h200"),
        CacheConfig(fraction=0.25),
        PolicySpec("on-demand"),
        options,
        live.LiveOptions(device="cpu"),
    )
    lanes = {interval[0] for interval in ran.timeline}
    kinds = {interval[1] for interval in ran.timeline}
    assert "compute" in lanes and any(lane.startswith("copy") for lane in lanes)
    assert {"attention", "expert", "demand"} <= kinds
    assert all(end >= start for _, _, start, end, _, _ in ran.timeline)


def test_a_copies_only_live_timeline_records_every_copy_and_no_op(trace, model) -> None:
    """Without events around the ops (they slowed the H200's host by 4-14%), the copies still come out,
    all of them, and the stall (measured between those events) is unknown rather than zero."""
    run = functools.partial(
        live.run_live,
        model,
        trace,
        load_profile("h200"),
        CacheConfig(fraction=0.25),
        PolicySpec("pre-attention"),
        SimOptions(timeline_steps=trace.num_tokens),
    )
    full = run(live.LiveOptions(device="cpu"))
    copies = run(live.LiveOptions(device="cpu", timeline_compute=False))
    assert {lane for lane, *_ in copies.timeline} == {
        lane for lane, *_ in full.timeline if lane.startswith("copy")
    }
    assert len(copies.timeline) == copies.counters["live_transfers"] > 0
    assert np.isnan(copies.stall_s).all() and not np.isnan(full.stall_s).any()


def test_memory_plan_caps_host_buffers_at_the_budget_and_needs_none_without_transfers() -> None:
    plan = live.plan_memory(SHAPE, 5, True, 1, 64, True, host_budget_bytes=4 * SHAPE.bytes_per_expert)
    assert plan.host_buffers == 4 and plan.pinned_bytes == 4 * SHAPE.bytes_per_expert
    resident = live.plan_memory(SHAPE, 24, False, 1, 64, False, host_budget_bytes=1 << 40)
    assert resident.host_buffers == 0
    assert resident.gpu_bytes == 24 * SHAPE.bytes_per_expert + resident.resident_bytes + live.GPU_MARGIN_BYTES


def test_a_run_that_does_not_fit_is_refused_with_one_line_before_allocating() -> None:
    plan = live.plan_memory(SHAPE, 1000, True, 1, 64, True, host_budget_bytes=1 << 20)
    with pytest.raises(InputError, match="GiB of GPU memory") as info:
        live.check_memory(plan, SHAPE, free_gpu_bytes=plan.gpu_bytes - 1, free_host_bytes=1 << 50)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="pinned host memory"):
        live.check_memory(plan, SHAPE, free_gpu_bytes=1 << 50, free_host_bytes=plan.pinned_bytes)


@pytest.mark.parametrize(
    ("policy", "options", "message"),
    [
        ("pre-attention", SimOptions(predictor_device="cpu"), "GPU only"),
        ("pre-attention", SimOptions(predictor_s=1e-4), "predictor_s may only be 0"),
        ("on-demand", SimOptions(host_memory="pageable"), "pinned"),
    ],
)
def test_the_live_executor_refuses_what_it_cannot_run(trace, policy, options, message) -> None:
    with pytest.raises(InputError, match=message):
        live.prepare(trace, SHAPE, PolicySpec(policy), CacheConfig(fraction=0.25), options)


def _on_demand_on_the_cpu(model, trace, options: SimOptions, before_decode=None):
    hardware, cache = load_profile("h200"), CacheConfig(fraction=0.25)
    return live.run_live(
        model,
        trace,
        hardware,
        cache,
        PolicySpec("on-demand"),
        options,
        live.LiveOptions(device="cpu", warmup_steps=2),
        before_decode,
    )


def test_a_warm_up_as_long_as_the_run_is_refused_like_the_simulator(model, trace) -> None:
    with pytest.raises(ValueError, match="leaves no decode step"):
        _on_demand_on_the_cpu(model, trace, SimOptions(warmup_steps=10_000))


def test_the_host_time_breakdown_is_reported_and_adds_up(model, trace) -> None:
    c = _on_demand_on_the_cpu(model, trace, SimOptions()).counters
    assert c["host_loop_us"] > 0
    assert 0 <= c["host_wait_gpu_us"] <= c["host_loop_us"]
    # copies were committed and landed, each costing the host some time, within the loop
    assert c["live_transfers"] > 0 and c["host_issue_us"] > 0 and c["host_landing_us"] > 0
    assert c["host_issue_us"] + c["host_landing_us"] <= c["host_loop_us"]
    assert 0 <= c["host_issue_in_wait_us"] <= c["host_issue_us"]
    assert c["copies_committed_early"] == 0  # on the CPU every copy lands when issued


@pytest.mark.parametrize("policy", ["pre-attention", "cross-layer"])
def test_the_predictor_runs_where_asked_and_never_changes_a_decision(trace, model, policy: str) -> None:
    def run(device: str, predictor_s: float | None = None):
        options = SimOptions(timeline_steps=2, predictor_device=device, predictor_s=predictor_s)
        return live.run_live(
            model,
            trace,
            load_profile("h200"),
            CacheConfig(fraction=0.25),
            PolicySpec(policy),
            options,
            live.LiveOptions(device="cpu"),
        )

    runs = {"inline": run("gpu"), "side": run("gpu-side"), "none": run("gpu", 0.0)}
    predicted = {name: sum(i[1] == "predict" for i in r.timeline) for name, r in runs.items()}
    assert predicted["inline"] > 0 and predicted["side"] == predicted["inline"] and predicted["none"] == 0
    rows = [r.summary_row() for r in runs.values()]
    assert all({k: row[k] for k in LOGICAL} == {k: rows[0][k] for k in LOGICAL} for row in rows)


def test_work_put_beside_the_decode_starts_after_the_warm_up_and_set_up(trace, model, monkeypatch) -> None:
    """Calibration's chain of copies must keep the link busy through the measured decode: queued earlier,
    the warm-up's synchronisation or the set-up would spend it."""
    calls: list[str] = []
    decode_run = live._Decode.run

    def logged(self):
        calls.append(f"decode {self.num_steps} steps")
        return decode_run(self)

    monkeypatch.setattr(live._Decode, "run", logged)
    ran = _on_demand_on_the_cpu(model, trace, SimOptions(), before_decode=lambda: calls.append("beside"))
    assert calls == ["decode 2 steps", "beside", f"decode {len(ran.step_latency_s)} steps"]
