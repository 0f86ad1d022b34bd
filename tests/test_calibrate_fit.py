"""Calibration's pure logic: fitting the copy line, link sharing, rotation sizes, and a CPU smoke run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim import calibrate as cal
from traces.schema import ModelShape

TINY = ModelShape(
    name="tiny-deepseek",
    architecture="deepseek_v2",
    num_layers=3,
    moe_layers=(1, 2),
    num_experts=8,
    top_k=2,
    hidden_size=64,
    expert_intermediate_size=32,
    bytes_per_expert=3 * 64 * 32 * 2,
    num_shared_experts=1,
    shared_intermediate_size=32,
    dense_intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


@given(
    latency_us=st.floats(0.5, 50.0),
    gbps=st.floats(1.0, 200.0),
)
def test_copy_line_recovers_latency_and_bandwidth_of_exact_data(latency_us: float, gbps: float) -> None:
    sizes = np.array([64e3, 256e3, 1e6, 4e6, 16e6, 64e6])
    times = latency_us * 1e-6 + sizes / (gbps * 1e9)
    latency, fitted = cal.fit_copy_line(sizes, times)
    assert latency == pytest.approx(latency_us * 1e-6, rel=1e-6)
    assert fitted == pytest.approx(gbps, rel=1e-6)


def test_copy_line_clamps_a_negative_latency_to_zero_and_refits_bandwidth() -> None:
    sizes = np.array([1e6, 2e6, 4e6])
    times = np.array([0.9e-4, 2.0e-4, 4.1e-4])  # intercept would be slightly negative
    latency, gbps = cal.fit_copy_line(sizes, times)
    assert latency == 0.0
    assert 9.0 < gbps < 11.5


def test_copy_line_refuses_a_single_size() -> None:
    with pytest.raises(ValueError, match="two different sizes"):
        cal.fit_copy_line([1e6, 1e6], [1e-4, 1.1e-4])


def test_link_sharing_is_one_when_concurrent_copies_take_proportionally_longer() -> None:
    points = [cal.ConcurrencyPoint(n, 64 << 20, n * 1.2e-3) for n in (1, 2, 3)]
    assert cal.link_sharing_factor(points) == pytest.approx(1.0)


def test_link_sharing_is_n_when_concurrent_copies_do_not_slow_down() -> None:
    points = [cal.ConcurrencyPoint(n, 64 << 20, 1.2e-3) for n in (1, 3)]
    assert cal.link_sharing_factor(points) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("item", "budget", "expected"),
    [(1 << 20, 256 << 20, 64), (100 << 20, 256 << 20, 3), (1 << 30, 256 << 20, 1), (1 << 20, 0, 1)],
)
def test_rotation_count_covers_the_budget_within_bounds(item: int, budget: int, expected: int) -> None:
    assert cal.rotation_count(item, budget) == expected


def test_smoke_calibration_on_cpu_measures_every_curve_and_round_trips() -> None:
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    timings = result.shapes[TINY.name]
    effort = cal.Effort.smoke()
    assert len(timings.attention_s) == len(effort.batches)
    assert all(len(row) == len(effort.contexts) for row in timings.attention_s)
    for curve in (timings.expert_s, timings.shared_s, timings.dense_s):
        assert len(curve) == len(effort.tokens)
    assert all(t > 0 for t in timings.expert_s + timings.norm_s + timings.predictor_cpu_s)
    assert {p.size_bytes for p in result.copies} >= {TINY.bytes_per_expert}
    assert result.device == "cpu" and result.launch_overhead_s > 0
    again = cal.Calibration.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_fit_scalar_finds_where_a_rising_curve_meets_the_target() -> None:
    assert cal.fit_scalar(lambda x: 3.0 * x + 1.0, 2.5, 0.0, 10.0, 40) == pytest.approx(0.5)


@pytest.mark.parametrize(("target", "expected"), [(-1.0, 0.0), (100.0, 10.0)])
def test_fit_scalar_clamps_to_the_nearer_bound(target: float, expected: float) -> None:
    assert cal.fit_scalar(lambda x: x, target, 0.0, 10.0, 40) == expected


def test_cpu_calibration_fits_a_host_time_per_copy_within_its_bounds() -> None:
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    assert 0.0 <= result.issue_s <= cal.ISSUE_FIT_MAX_S
    assert TINY.name in result.host_layer_s
    assert cal.to_profile(result, [TINY]).copy.issue_s == result.issue_s


def test_host_costs_refit_offline_from_the_kept_runs_give_the_same_numbers(tmp_path) -> None:
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    assert {(r.shape, r.kind) for r in result.host_runs} == {(TINY.name, "layer"), (TINY.name, "copy")}
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(result.to_dict()))
    again = cal.Calibration.from_dict(json.loads(raw.read_text()))
    again.issue_s, again.host_layer_s = 0.0, {}
    cal.fit_host_costs(again, [TINY])
    assert again.issue_s == result.issue_s and again.host_layer_s == result.host_layer_s


def test_refit_refuses_a_raw_file_without_the_shape_or_without_host_runs(tmp_path, capsys) -> None:
    from moe_prefetch.cli import main
    from traces.shapes import resolve_shape

    doc = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_costs=False).to_dict()
    doc["shapes"] = {resolve_shape("olmoe-1b-7b").name: doc["shapes"][TINY.name]}
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(doc))
    out = tmp_path / "p.toml"
    for shape, problem in (
        ("mixtral-8x7b", "has no op timings of"),
        ("olmoe-1b-7b", "holds no host-cost runs"),
    ):
        code = main(["calibrate", "--model-shape", shape, "--out", str(out), "--refit", str(raw)])
        assert code == 2 and problem in capsys.readouterr().err
    assert not out.exists()


def test_a_gated_calibration_waits_before_each_host_bound_phase_and_records_the_fast_level(
    monkeypatch,
) -> None:
    from sim import host_speed

    monkeypatch.setattr(host_speed, "probe_s", lambda: 2e-3)
    monkeypatch.setattr(host_speed, "SETTLE_S", 0.0)
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_gate_timeout_s=1.0)
    phases = [g["phase"] for g in result.host_gates]
    assert phases == [
        "launch overhead",
        f"ops {TINY.name}",
        f"host layer {TINY.name}",
        f"host copy {TINY.name}",
    ]
    assert result.host_probe_s == 2e-3 and not any(g["timed_out"] for g in result.host_gates)
    profile = cal.to_profile(result, [TINY])
    assert profile.meta.host_probe_s == 2e-3 and "fast level" in profile.meta.notes
    assert cal.Calibration.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_an_ungated_calibration_leaves_no_host_probe_in_the_profile() -> None:
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_costs=False)
    assert result.host_probe_s == 0.0 and result.host_gates == []
    assert "host_probe_s" not in cal.to_profile(result, [TINY]).to_dict()["meta"]


def test_host_costs_are_fitted_to_the_steps_the_host_ran_at_its_fast_level() -> None:
    warm = cal.HOST_WARMUP_STEPS
    fast_and_slow = cal.HostRun("a", "layer", [1.0] * 8, [1e-5] * 5 + [2e-5] * 3)
    all_slow = cal.HostRun("b", "layer", [1.0] * 8, [2e-5] * 8)
    unprobed = cal.HostRun("c", "copy", [1.0] * 8)
    masks, slow = cal.host_fit_steps([fast_and_slow, all_slow, unprobed])
    assert slow == ["layer b"]
    assert np.flatnonzero(masks["a", "layer"]).tolist() == list(range(warm, 5))
    assert np.flatnonzero(masks["b", "layer"]).tolist() == list(range(warm, 8))  # none fast: all measured
    assert np.flatnonzero(masks["c", "copy"]).tolist() == list(range(warm, 8))


def test_phases_measured_before_the_fast_level_was_seen_are_measured_again(monkeypatch) -> None:
    from sim import host_speed

    probes = [2e-3, 2e-3, 2e-3, 1e-3]  # launch overhead: before, after; ops: before, after
    monkeypatch.setattr(host_speed, "probe_s", lambda: probes.pop(0) if probes else 1e-3)
    monkeypatch.setattr(host_speed, "SETTLE_S", 0.0)
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_gate_timeout_s=1.0)
    assert [g["phase"] for g in result.host_gates] == [
        "launch overhead",
        f"ops {TINY.name}",
        "launch overhead",
        f"ops {TINY.name}",
        f"host layer {TINY.name}",
        f"host copy {TINY.name}",
    ]
    assert result.host_probe_s == 1e-3 and result.host_gates[2]["probe_s"] == 1e-3


def test_measured_gpu_times_become_curves_the_cost_model_reads_below_the_op_time() -> None:
    from sim.costs import CostModel

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_costs=False)
    timings = result.shapes[TINY.name]
    assert timings.gpu_s == {}  # nothing to hide launches behind on the CPU
    timings.gpu_s = {
        "expert": [t / 4 for t in timings.expert_s],
        "attention": [[t * 10 for t in row] for row in timings.attention_s],  # above the op time
    }
    costs = CostModel(TINY, cal.to_profile(result, [TINY]))
    assert costs.gpu_s("expert", 1) == pytest.approx(costs.expert_s(1) / 4)
    assert costs.gpu_s("attention", 1, 64) == costs.attention_s(1, 64)  # capped by the op time
    again = cal.Calibration.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.shapes[TINY.name].gpu_s == timings.gpu_s


def test_times_beside_copies_and_the_predictor_share_become_what_the_cost_model_reads() -> None:
    from sim.costs import CostModel

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_costs=False)
    timings = result.shapes[TINY.name]
    assert timings.copying_s == {} and timings.predictor_share is None  # GPU-only measurements
    unmeasured = CostModel(TINY, cal.to_profile(result, [TINY]))
    assert unmeasured.predictor_share("gpu-side") == 0.0  # beside: overlaps freely unless measured
    assert unmeasured.predictor_share("gpu") == 1.0  # in line: the compute stream pays all of it
    timings.gpu_s = {"expert": [t / 4 for t in timings.expert_s]}
    timings.copying_s = {"expert": [t / 2 for t in timings.expert_s]}
    timings.predictor_share = 0.4
    costs = CostModel(TINY, cal.to_profile(result, [TINY]))
    assert costs.slowed_by_copies
    assert costs.gpu_copying_s("expert", 1) == pytest.approx(2 * costs.gpu_s("expert", 1))
    assert costs.gpu_copying_s("norm", 1) == costs.gpu_s("norm", 1)  # no curve: as fast as alone
    assert costs.predictor_share("gpu-side") == 0.4 and costs.predictor_share("gpu") == 1.0
    again = cal.Calibration.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.shapes[TINY.name].copying_s == timings.copying_s
    assert again.shapes[TINY.name].predictor_share == 0.4


def test_host_time_per_copy_is_what_the_oracle_run_spent_per_copy() -> None:
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    (run,) = [r for r in result.host_runs if r.kind == "copy"]
    c = run.counters
    assert c["live_transfers"] > 0
    assert result.issue_s == pytest.approx(
        (c["host_issue_us"] + c["host_landing_us"]) / 1e6 / c["live_transfers"]
    )
    run.counters = {}  # a run kept before the counters existed: the old end-to-end fit
    cal.fit_host_costs(result, [TINY])
    assert 0.0 <= result.issue_s <= cal.ISSUE_FIT_MAX_S


def test_op_samples_taken_at_the_slow_level_are_left_out_of_the_medians() -> None:
    samples = [[1.0, 1.0, 2.0, 2.0, 2.0], [5.0, 5.0]]
    probes = [[1e-5, 1e-5, 2e-5, 2e-5, 2e-5], [2e-5, 2e-5]]
    assert cal.fast_samples(samples, probes) == [[1.0, 1.0], [5.0, 5.0]]  # the second had no fast one
    assert cal.fast_samples(samples, [[], []]) == samples


def test_the_cpu_stopwatch_drops_bursts_the_host_ran_slow(monkeypatch) -> None:
    import torch

    slow_rounds = iter([False, True, True, True, True, True, True, False, False])  # mostly slow
    state = {"slow": False}

    def probe() -> float:
        state["slow"] = next(slow_rounds)
        return 2e-5 if state["slow"] else 1e-5

    monkeypatch.setattr(cal, "step_probe_s", probe)
    clock = iter(range(1000))
    monkeypatch.setattr(cal.time, "perf_counter", lambda: float(next(clock)) * 1e-3)

    def op(_i: int) -> None:  # each call costs one tick of the fake clock, three when the host is slow
        for _ in range(2 if state["slow"] else 0):
            cal.time.perf_counter()

    effort = dataclasses.replace(cal.Effort.smoke(), warmup=1, reps=9, inner=1)
    assert cal.Stopwatch(torch.device("cpu"), effort).per_call_s(op) == pytest.approx(1e-3)


def test_host_costs_ignore_steps_slowed_without_the_probe_seeing_it() -> None:
    """Slowdowns only add time, and some do not show in the probe: the fit takes a low quantile, so
    making most of a run's steps slower (probes unchanged) leaves the per-layer host time alone (a run
    kept without its host busy time, whose host time per layer is what the step lacks)."""
    from sim.simulation import simulate

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    result.issue_s, result.host_layer_s, result.gpu_layer_s = 0.0, {}, {}
    layer_run = next(r for r in result.host_runs if r.kind == "layer")
    layer_run.host_busy_s = 0.0
    small, trace = cal.host_workload(TINY, layer_run.moe_layers)
    ops_only = simulate(trace, small, cal.to_profile(result, [TINY]), *cal.host_run_setup("layer"))
    host_s = 1e-3  # a step's host time beyond its ops
    layer_run.step_latency_s = [t + host_s for t in ops_only.step_latency_s]
    layer_run.host_probe_s = [1e-5] * len(layer_run.step_latency_s)
    cal.fit_host_costs(result, [TINY])
    assert result.host_layer_s[TINY.name] == pytest.approx(host_s / small.num_moe_layers)
    steps = layer_run.step_latency_s
    layer_run.step_latency_s = [t * (1.5 if i % 5 < 3 else 1.0) for i, t in enumerate(steps)]
    cal.fit_host_costs(result, [TINY])  # 60% of the steps half as slow again, at fast probes
    assert result.host_layer_s[TINY.name] == pytest.approx(host_s / small.num_moe_layers)


def _graphed(result: cal.Calibration, copying_ratio: float = 1.0) -> cal.ShapeTimings:
    """``result``'s TINY timings made those of a graphed executor: every op runs 100 us on the GPU
    (``copying_ratio`` times that beside copies), back to back too, and launches in 1 us, with no
    fitted factor on them (nothing measured on this CPU is left in the ops' times)."""
    from sim.hardware import GPU_TIMED_OPS

    result.gpu_scale, result.copying_scale = {}, {}
    timings = result.shapes[TINY.name]

    def curve(op: str, seconds: float) -> list:
        if op == "attention":
            return [[seconds] * len(timings.contexts) for _ in timings.batches]
        return [seconds] * len(timings.tokens if op in ("expert", "shared", "dense") else timings.batches)

    for op in GPU_TIMED_OPS:
        setattr(timings, f"{op}_s", curve(op, 1e-4))
        timings.gpu_s[op] = curve(op, 1e-4)
        timings.host_s[op] = curve(op, 1e-6)
        timings.copying_s[op] = curve(op, 1e-4 * copying_ratio)
    return timings


def _decoded(result: cal.Calibration, kind: str, profile) -> cal.HostRun:
    """``result``'s host-cost run of ``kind``, its steps replaced by those ``profile`` simulates, at fast
    probes, and a resident run's host busy time made of ``result``'s host time per layer, the probe and
    the launches, as ``fit_host_costs`` takes it apart (a made-up live run whose truth is known)."""
    from sim.costs import CostModel
    from sim.simulation import simulate

    probe_s = 1e-5
    run = next(r for r in result.host_runs if r.kind == kind)
    small, trace = cal.host_workload(TINY, run.moe_layers)
    run.step_latency_s = list(simulate(trace, small, profile, *cal.host_run_setup(kind)).step_latency_s)
    run.host_probe_s = [probe_s] * len(run.step_latency_s)
    if kind == "layer":
        launches = cal.launch_time_per_step_s(CostModel(small, profile), small, cal.HOST_TOKENS // 2)
        run.host_busy_s = 3 * probe_s + launches + small.num_moe_layers * result.host_layer_s[TINY.name]
    return run


def test_with_the_hosts_busy_time_measured_the_host_and_gpu_time_per_layer_are_told_apart() -> None:
    """A graphed executor launches in microseconds what the GPU runs for tens: its step time is the
    GPU's, so the host's own time per layer comes from its measured busy time (less the probe and the
    launches), and the GPU's gaps between launches from what the simulated steps still lack."""

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    _graphed(result)
    result.host_layer_s, result.gpu_layer_s = {TINY.name: 2e-4}, {TINY.name: 5e-5}
    truth = cal.to_profile(result, [TINY])
    _decoded(result, "layer", truth)
    cal.fit_host_costs(result, [TINY])
    assert result.host_layer_s[TINY.name] == pytest.approx(2e-4)
    assert result.gpu_layer_s[TINY.name] == pytest.approx(5e-5, rel=1e-3)
    assert cal.to_profile(result, [TINY]).compute.curve("gpu_layer", TINY.name) is not None


def test_a_resident_run_faster_than_its_ops_allow_scales_their_gpu_times_down() -> None:
    """Calibration's own buffers can run the ops slower than the model does: with no gap left to fit,
    the ops' GPU times (alone and beside copies) take the factor that matches the run, and say so."""

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    _graphed(result, copying_ratio=1.25)
    result.host_layer_s, result.gpu_layer_s, result.gpu_scale = (
        {TINY.name: 2e-5},
        {TINY.name: 0.0},
        {TINY.name: 0.8},
    )
    truth = cal.to_profile(result, [TINY])
    assert truth.compute.curve("expert_gpu", TINY.name).at(1) == pytest.approx(0.8e-4)
    assert truth.compute.curve("expert_copying", TINY.name).at(1) == pytest.approx(0.8 * 1.25e-4)
    layer_run = _decoded(result, "layer", truth)
    cal.fit_host_costs(result, [TINY])
    assert result.gpu_layer_s[TINY.name] == 0.0
    assert result.gpu_scale[TINY.name] == pytest.approx(0.8, rel=1e-2)
    assert f"{TINY.name} x0.8" in cal.to_profile(result, [TINY]).meta.notes
    layer_run.step_latency_s = [t + 1e-3 for t in layer_run.step_latency_s]  # now a gap is left
    cal.fit_host_costs(result, [TINY])
    assert result.gpu_layer_s[TINY.name] > 0.0 and result.gpu_scale == {}


def test_with_the_link_busy_every_op_runs_at_its_scaled_time_beside_copies() -> None:
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_costs=False)
    _graphed(result, copying_ratio=1.2)
    result.copying_scale = {TINY.name: 1.5}
    busy = cal.with_link_busy(result, TINY.name)
    profile = cal.to_profile(result, [TINY])
    busy_profile = cal.to_profile(busy, [TINY])
    for op in ("expert", "norm"):
        assert profile.compute.curve(f"{op}_copying", TINY.name).at(1) == pytest.approx(1e-4 * 1.2 * 1.5)
        assert busy_profile.compute.curve(f"{op}_gpu", TINY.name).at(1) == pytest.approx(1e-4 * 1.2 * 1.5)
        assert busy_profile.compute.curve(op, TINY.name).at(1) >= 1e-4 * 1.2 * 1.5  # back to back too
    attention = busy_profile.compute.curve("attention_gpu", TINY.name)
    assert attention.at(1, result.shapes[TINY.name].contexts[-1]) == pytest.approx(1e-4 * 1.8)
    assert result.copying_scale == {TINY.name: 1.5}  # (the input is left as it was)
    result.copying_scale = {TINY.name: 0.5}  # an op is never faster beside copies than alone
    assert cal.to_profile(cal.with_link_busy(result, TINY.name), [TINY]).compute.curve(
        "expert_gpu", TINY.name
    ).at(1) == pytest.approx(1e-4)


def test_a_run_beside_copies_fits_the_factor_on_the_ops_times_beside_copies() -> None:
    """The model of a "copying" run slows beside copies 1.4 times as much as the ops timed one at a time
    beside them: the fit, after the resident run's costs, finds that factor, and says so."""

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    _graphed(result, copying_ratio=1.25)
    copying_run = dataclasses.replace(next(r for r in result.host_runs if r.kind == "layer"), kind="copying")
    result.host_runs.append(copying_run)
    result.host_layer_s, result.gpu_layer_s = {TINY.name: 2e-5}, {TINY.name: 5e-5}
    truth = cal.to_profile(result, [TINY])
    _decoded(result, "layer", truth)
    result.copying_scale = {TINY.name: 1.4}
    _decoded(result, "copying", cal.to_profile(cal.with_link_busy(result, TINY.name), [TINY]))
    result.copying_scale = {}
    cal.fit_host_costs(result, [TINY])
    assert result.gpu_layer_s[TINY.name] == pytest.approx(5e-5, rel=1e-2)
    assert result.copying_scale[TINY.name] == pytest.approx(1.4, rel=1e-2)
    profile = cal.to_profile(result, [TINY])
    assert profile.compute.curve("expert_copying", TINY.name).at(1) == pytest.approx(1.4 * 1.25e-4, rel=1e-2)
    assert f"{TINY.name} x1.4" in profile.meta.notes and "x1.4" in cal.summary_text(result)
    result.host_runs.remove(copying_run)
    cal.fit_host_costs(result, [TINY])
    assert result.copying_scale == {}  # without the run the curves stay as measured


def test_stream_hand_overs_become_the_profiles_copy_delays_and_round_trip() -> None:
    """The delays are what each hand-over took beyond what the simulator charges: a copy's time on the
    copy curve, the op's time alone."""
    from sim.stream_delays import StreamDelays

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_costs=False)
    assert result.stream_delays is None  # measured on a GPU only
    assert cal.to_profile(result, [TINY]).copy.gate_delay_s == 0.0
    copy_s = cal.to_profile(result, [TINY]).copy.transfer_s(TINY.bytes_per_expert)
    result.stream_delays = StreamDelays(
        size_bytes=TINY.bytes_per_expert,
        alone_s=copy_s + 3e-6,
        period_s=copy_s + 1.5e-6,
        gated_s=copy_s + 7e-6,
        op_alone_s=3e-6,
        landed_op_s=7.5e-6,
    )
    profile = cal.to_profile(result, [TINY])
    copy = profile.copy
    assert (copy.gate_delay_s, copy.gap_s, copy.landing_delay_s) == pytest.approx((7e-6, 1.5e-6, 4.5e-6))
    assert f"one every {(copy_s + 1.5e-6) * 1e6:.1f} us" in profile.meta.notes
    again = cal.Calibration.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    faster = result.stream_delays.delays(copy_s + 2e-6)  # never a negative delay
    assert faster["gap_s"] == 0.0 and faster["gate_delay_s"] == pytest.approx(5e-6)


def test_a_copy_point_slower_than_the_same_copies_back_to_back_is_taken_at_their_rate() -> None:
    """A disturbance only adds time: the curve's point at the hand-overs' size is no slower than those
    copies back to back, and the profile says when it was; other sizes stay as measured."""
    from sim.stream_delays import StreamDelays

    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke(), host_costs=False)
    point = next(p for p in result.copies if p.size_bytes == TINY.bytes_per_expert)
    others = {p.size_bytes: p.pinned_s for p in result.copies if p is not point}
    period_s = point.pinned_s / 1.05
    result.stream_delays = StreamDelays(
        size_bytes=TINY.bytes_per_expert,
        alone_s=point.pinned_s,
        period_s=period_s,
        gated_s=point.pinned_s,
        op_alone_s=3e-6,
        landed_op_s=7e-6,
    )
    profile = cal.to_profile(result, [TINY])
    assert profile.copy.transfer_s(TINY.bytes_per_expert) == pytest.approx(period_s)
    assert profile.copy.gap_s == 0.0
    assert all(profile.copy.transfer_s(size) == pytest.approx(s) for size, s in others.items())
    assert "slower than the same copies back to back" in profile.meta.notes
    result.stream_delays = dataclasses.replace(result.stream_delays, period_s=point.pinned_s * 1.01)
    profile = cal.to_profile(result, [TINY])
    assert profile.copy.transfer_s(TINY.bytes_per_expert) == pytest.approx(point.pinned_s)
    assert profile.copy.gap_s == pytest.approx(point.pinned_s * 0.01)
    assert "back to back (" not in profile.meta.notes


def test_the_resident_host_cost_run_decodes_the_whole_model_where_it_fits(monkeypatch) -> None:
    """The GPU's time outside the ops is the whole model's (session 8: DeepSeek-V2-Lite's first 12 layers
    ran per layer up to 9% off its full model); the copy run stays truncated."""
    import torch

    from sim import live
    from traces.shapes import resolve_shape

    deepseek, cpu = resolve_shape("deepseek-v2-lite"), torch.device("cpu")
    assert cal.host_run_layers(deepseek, "layer", cpu) == deepseek.num_moe_layers
    assert cal.host_run_layers(deepseek, "copy", cpu) == cal.HOST_LAYERS
    monkeypatch.setattr(live, "free_gpu_bytes", lambda _device: 20 * 2**30)  # its 26 GiB of experts
    assert cal.host_run_layers(deepseek, "layer", cpu) == cal.HOST_LAYERS
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    assert {r.kind: r.moe_layers for r in result.host_runs} == {"layer": 2, "copy": 2}


def test_instance_runs_replace_the_calibrations_own_resident_run_and_say_so() -> None:
    """A validation's own model decodes calibration's resident run too (instance_runs.json): it takes the
    place of calibration's run of that shape, the copy run stays, and the profile's notes say whose run
    the costs per layer were fitted to."""
    result = cal.calibrate([TINY], device="cpu", effort=cal.Effort.smoke())
    copy_run = next(r for r in result.host_runs if r.kind == "copy")
    own = next(r for r in result.host_runs if r.kind == "layer")
    instance = dataclasses.replace(own, step_latency_s=[t * 1.2 for t in own.step_latency_s])
    beside = dataclasses.replace(own, kind="copying")  # as a GPU calibration has, on its own model
    result.host_runs.append(beside)
    cal.use_instance_runs(result, [instance])
    assert [r for r in result.host_runs if r.kind == "layer"] == [instance]
    assert [r for r in result.host_runs if r.kind == "copy"] == [copy_run]
    assert not [r for r in result.host_runs if r.kind == "copying"]  # it described calibration's model
    cal.fit_host_costs(result, [TINY])
    assert "instance_runs.json" in cal.to_profile(result, [TINY]).meta.notes
    instance_beside = dataclasses.replace(beside, step_latency_s=[t * 1.3 for t in own.step_latency_s])
    cal.use_instance_runs(result, [instance, instance_beside])
    assert [r for r in result.host_runs if r.kind == "copying"] == [instance_beside]
    assert "copying_scale" in result.notes


def test_a_host_cost_run_beside_copies_needs_a_gpu() -> None:
    """The CPU test vehicle has no link to keep busy: its models decode the resident run alone."""
    from sim import live
    from sim.hardware import load_profile

    options = live.LiveOptions(device="cpu")
    every_expert = TINY.num_moe_layers * TINY.num_experts
    model = live.open_model(TINY, every_expert, False, 1, cal.HOST_RUN_CONTEXT, False, 1, options)
    assert cal.instance_run_kinds(model) == ("layer",)
    with pytest.raises(ValueError, match="needs a GPU"):
        cal.host_run_on(model, "copying", load_profile("h200"), options)
    short = live.open_model(TINY, every_expert, False, 1, cal.HOST_RUN_CONTEXT - 1, False, 1, options)
    assert cal.instance_run_kinds(short) == ()  # no room for the trace's context


@pytest.mark.parametrize("seconds", [1e-4, 0.05, 0.94, 3.0])
def test_a_chain_of_copies_fits_the_streams_queue_and_lasts_long_enough(seconds: float) -> None:
    """Past about 1024 queued copies the host blocks until the link drains them, so a longer chain is
    mostly spent by the time it is queued: long chains take larger copies, short ones stay expert-sized."""
    expert_bytes = 9 * cal.MIB
    chunk = cal.CopyChain.chunk_bytes_for(seconds, expert_bytes)
    copies = cal.CopyChain.copies_for(seconds, chunk)
    assert copies <= cal.CopyChain.MAX_QUEUED_COPIES
    assert copies * chunk >= seconds * cal.CopyChain.FASTEST_LINK_BPS
    assert chunk >= expert_bytes
    if seconds * cal.CopyChain.FASTEST_LINK_BPS < (cal.CopyChain.MAX_QUEUED_COPIES - 1) * expert_bytes:
        assert chunk == expert_bytes


def test_copy_sizes_are_timed_in_interleaved_rounds() -> None:
    """A slow spell of the link must land on every size alike (one size after the other, session 10's
    fourth calibration had the expert's size 4.7% slow): one interleaved measurement of all sizes."""
    import torch

    class Recording(cal.Stopwatch):
        def per_call_all(self, fns, inner=None, reps=None):
            measured.append(len(fns))
            return super().per_call_all(fns, inner, reps)

    measured: list[int] = []
    watch = Recording(torch.device("cpu"), cal.Effort.smoke())
    points = cal.measure_copies(watch, [4096, 1 << 20, 4096, 1 << 16])
    assert measured == [3]
    assert [p.size_bytes for p in points] == [4096, 1 << 16, 1 << 20]
    assert all(p.pinned_s > 0 for p in points)
