"""Validation bookkeeping: grids from TOML, live/simulated rows matched by configuration, errors,
policy rankings, live passes combined token by token and the live findings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from sim import validate as v
from sim.cache import CacheConfig
from sim.config import SimOptions
from sim.hardware import load_profile
from sim.policies import PolicySpec
from sim.simulation import simulate
from traces.fileio import InputError
from traces.schema import ModelShape
from traces.synthetic import SyntheticSpec, generate_trace

SHAPE = ModelShape(
    name="tiny-qwen-like",
    architecture="qwen3_moe",
    num_layers=2,
    moe_layers=(0, 1),
    num_experts=8,
    top_k=2,
    hidden_size=32,
    expert_intermediate_size=16,
    bytes_per_expert=3 * 32 * 16 * 2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
)
POLICIES = ("on-demand", "pre-attention", "resident")


@pytest.fixture(scope="module")
def results():
    trace = generate_trace(
        SyntheticSpec(
            SHAPE, num_sequences=1, tokens_per_sequence=12, predictor_accuracy={"pre-attention": 0.9}
        )
    )
    hardware = load_profile("h200")
    return [
        simulate(trace, SHAPE, hardware, CacheConfig(fraction=f), PolicySpec(p), SimOptions(warmup_steps=1))
        for p in POLICIES
        for f in (0.25, 0.5)
    ]


def _scaled(result, factor: float, live_pass: int = 0):
    return dataclasses.replace(
        result,
        clock="live",
        counters=result.counters | {v.PASS_COUNTER: live_pass},
        token_latency_s=result.token_latency_s * factor,
        step_latency_s=result.step_latency_s * factor,
    )


def test_identical_clocks_give_zero_error_identical_counts_and_rankings(results) -> None:
    rows = v.compare([_scaled(r, 1.0) for r in results], results)
    assert len(rows) == len(results)
    assert all(r["mean_err"] == 0 and r["p99_err"] == 0 and r["misses_identical"] for r in rows)
    summary = v.fidelity_summary(rows, v.rankings(rows))
    assert (
        summary["mean_within_5pct"] == len(rows)
        and summary["rankings_identical"] == summary["ranking_groups"]
    )
    assert all(r["live_runs_ended_slow"] is None for r in rows)  # not gated
    assert "rows_all_runs_fast" not in summary


def test_errors_are_simulated_over_live_minus_one(results) -> None:
    rows = v.compare([_scaled(r, 1.25) for r in results], results)
    assert all(r["mean_err"] == pytest.approx(1 / 1.25 - 1) for r in rows)


def test_a_swapped_pair_breaks_the_ranking_and_is_reported(results) -> None:
    live = [_scaled(r, 10.0 if r.config.policy.name == "resident" else 1.0) for r in results]
    ranks = v.rankings(v.compare(live, results))
    assert not any(r["same"] for r in ranks)
    assert all(any("resident" in s["pair"] for s in r["swapped_pairs"]) for r in ranks)


def test_two_live_passes_combine_into_one_row_at_their_mean_with_their_spread(results) -> None:
    live = [_scaled(r, 1.0) for r in results] + [_scaled(r, 1.2, live_pass=1) for r in results]
    rows = v.compare(live, results)
    assert len(rows) == len(results)
    for row in rows:
        assert row["live_passes"] == 2 and row["live_spread"] == pytest.approx(0.2 / 1.1)
        assert row["live_mean_ms"] == pytest.approx(np.mean(row["live_pass_means_ms"]))
        assert row["mean_err"] == pytest.approx(1 / 1.1 - 1) and row["misses_identical"]


def test_a_burst_in_one_of_three_passes_drops_out_of_the_combined_latency(results) -> None:
    burst = results[0].token_latency_s.copy()
    burst[results[0].decode_token.nonzero()[0][:2]] *= 3.0  # two measured tokens 3x slow in one pass
    slow = dataclasses.replace(_scaled(results[0], 1.0, live_pass=1), token_latency_s=burst)
    live = [_scaled(results[0], 1.0), slow, _scaled(results[0], 1.0, live_pass=2)]
    (row,) = v.compare(live, results[:1])
    assert row["live_passes"] == 3 and row["live_spread"] > 0
    assert row["mean_err"] == pytest.approx(0.0) and row["p99_err"] == pytest.approx(0.0)


def test_a_pass_that_decided_differently_breaks_the_identity_check(results) -> None:
    other = _scaled(results[0], 1.0, live_pass=1)
    other = dataclasses.replace(other, misses=other.misses + 1)
    rows = v.compare([_scaled(results[0], 1.0), other], results)
    assert len(rows) == 1 and not rows[0]["misses_identical"]


def test_live_findings_are_ratios_of_live_means(results) -> None:
    rows = v.compare([_scaled(r, 1.0) for r in results], results)
    (first, *_) = v.live_findings(rows)
    means = {r["policy"]: r["live_mean_ms"] for r in rows if r["cache_fraction"] == first["cache_fraction"]}
    assert first["speedup_over_on_demand"] == pytest.approx(means["on-demand"] / means["pre-attention"])
    assert first["vs_resident"] == pytest.approx(means["pre-attention"] / means["resident"])


def test_resident_appears_under_every_cache_fraction(results) -> None:
    rows = [r for r in v.compare([_scaled(x, 1.0) for x in results], results) if r["cache_fraction"] == 0.25]
    expanded = v.expand_resident(rows, (0.1, 0.25, 0.5))
    resident = [r for r in expanded if r["policy"] == "resident"]
    assert sorted(r["cache_fraction"] for r in resident) == [0.1, 0.25, 0.5]


def test_resident_runs_once_per_shape_in_the_grid() -> None:
    grid = v.Grid(hardware="h200", shapes=(), policies=POLICIES, cache_fractions=(0.1, 0.5))
    points = [(spec.name, f) for spec, f in v.grid_points(grid)]
    assert points.count(("resident", 0.1)) == 1 and ("resident", 0.5) not in points
    assert ("on-demand", 0.5) in points


def test_a_malformed_grid_is_one_line_naming_the_file(tmp_path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text('[validate]\nhardware = "h200"\n')
    with pytest.raises(InputError, match=r"grid\.toml"):
        v.load_grid(path)
    path.write_text(
        '[validate]\nhardware = "h200"\nshapes = [{shape = "x", trace = "synthetic", tokens = 4}]\n'
    )
    assert v.load_grid(path).shapes[0].tokens == 4


def test_a_grid_cut_to_some_shapes_keeps_their_order_and_refuses_a_shape_it_lacks() -> None:
    runs = tuple(v.ShapeRun(key, v.SYNTHETIC, 4) for key in ("a", "b", "c"))
    grid = v.Grid(hardware="h200", shapes=runs)
    assert [r.shape for r in v.only_shapes(grid, ["c", "a"], "g.toml").shapes] == ["a", "c"]
    with pytest.raises(InputError, match=r"g\.toml: no shape d in the grid"):
        v.only_shapes(grid, ["a", "d"], "g.toml")


def test_synthetic_shape_trace_is_cut_to_the_requested_tokens() -> None:
    shape, trace = v.shape_trace(v.ShapeRun("olmoe-1b-7b", v.SYNTHETIC, 10))
    assert trace.num_tokens == 10 and trace.metadata.provenance.origin == "synthetic"
    assert {"pre-attention", "cross-layer"} <= set(trace.predictions)
    assert np.all(trace.experts < shape.num_experts)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("passes = 0", "passes must be >= 1"),
        ("host_gate_timeout_s = -1", "host_gate_timeout_s must be >= 0"),
        ("shape: passes = 0", "passes must be >= 1"),
        ('shape: host_gate = "no"', "host_gate must be true or false"),
        ('predictor_device = "tpu"', "predictor_device must be one of gpu, gpu-side, cpu"),
    ],
)
def test_a_grid_setting_out_of_range_is_refused_with_the_file_named(tmp_path, setting, message) -> None:
    path = tmp_path / "grid.toml"
    on_shape = setting.startswith("shape: ")
    shape_setting = ", " + setting.removeprefix("shape: ") if on_shape else ""
    grid_setting = "" if on_shape else setting
    path.write_text(
        f'[validate]\nhardware = "h200"\n{grid_setting}\n'
        f'shapes = [{{shape = "x", trace = "synthetic", tokens = 4{shape_setting}}}]\n'
    )
    with pytest.raises(InputError, match=rf"grid\.toml: {message}"):
        v.load_grid(path)


def test_pass_lists_are_one_csv_field(results, tmp_path) -> None:
    live = [_scaled(r, 1.0) for r in results] + [_scaled(r, 1.1, live_pass=1) for r in results]
    rows = v.compare(live, results)
    v.write_outputs(tmp_path, rows, v.rankings(rows), v.live_findings(rows), {})
    header, *lines = (tmp_path / "validation.csv").read_text().splitlines()
    assert all(len(line.split(",")) == len(header.split(",")) for line in lines)


def _tiny_grid(tmp_path, **changes) -> v.Grid:
    """A grid of three policies on a tiny Qwen3-like config written to ``tmp_path``."""
    config = {
        "_name_or_path": "tiny-qwen3-moe",
        "model_type": "qwen3_moe",
        "hidden_size": 32,
        "intermediate_size": 64,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "torch_dtype": "float32",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    grid = v.Grid(
        hardware="h200",
        shapes=(v.ShapeRun(str(tmp_path / "config.json"), v.SYNTHETIC, 8),),
        policies=("on-demand", "pre-attention", "resident"),
        cache_fractions=(0.25,),
        warmup_steps=1,
        passes=2,
    )
    return dataclasses.replace(grid, **changes)


def test_the_live_grid_runs_every_point_in_alternating_passes_on_the_cpu(tmp_path) -> None:
    grid = _tiny_grid(tmp_path)
    from sim.live import LiveOptions

    hardware = load_profile("h200")
    live = v.run_live_grid(grid, hardware, LiveOptions(device="cpu", warmup_steps=1))
    order = [(r.counters[v.PASS_COUNTER], r.config.policy.name) for r in live]
    assert order == [
        (0, "on-demand"),
        (0, "pre-attention"),
        (0, "resident"),
        (1, "resident"),
        (1, "pre-attention"),
        (1, "on-demand"),
    ]
    rows = v.compare(live, v.simulate_grid(grid, hardware))
    assert len(rows) == 3 and all(r["misses_identical"] and r["live_passes"] == 2 for r in rows)
    # every token carries its step's host probe, so the fast-step error is defined
    assert all(r.host_probe_s.shape == r.token_latency_s.shape and (r.host_probe_s > 0).all() for r in live)
    assert all(0 <= r["fast_step_share"] <= 1 for r in rows) and max(r["fast_step_share"] for r in rows) > 0


def test_a_shape_may_run_fewer_passes_than_the_grid(tmp_path) -> None:
    grid = _tiny_grid(tmp_path)
    grid = dataclasses.replace(grid, shapes=(dataclasses.replace(grid.shapes[0], passes=1),))
    from sim.live import LiveOptions

    live = v.run_live_grid(grid, load_profile("h200"), LiveOptions(device="cpu", warmup_steps=1))
    assert [r.counters[v.PASS_COUNTER] for r in live] == [0, 0, 0]


def test_a_grid_may_record_the_live_copies_alone(tmp_path) -> None:
    from sim.live import LiveOptions

    grid = _tiny_grid(tmp_path, passes=1, timeline_steps=8, timeline_compute=False)
    live = v.run_live_grid(grid, load_profile("h200"), LiveOptions(device="cpu", warmup_steps=1))
    lanes = {lane for r in live for lane, *_ in r.timeline}
    assert lanes and all(lane.startswith("copy") for lane in lanes)


def test_policies_the_simulator_ties_are_no_ranking_disagreement(results) -> None:
    rows = v.compare([_scaled(r, 1.0) for r in results], results)
    group = [r for r in rows if r["cache_fraction"] == 0.25]
    twin = {**group[0], "policy": "twin", "live_mean_ms": group[0]["live_mean_ms"] * 1.01}
    (rank,) = v.rankings([*group, twin])
    assert rank["same"] and rank["swapped_pairs"] == []
    faster_live = {**twin, "sim_mean_ms": twin["sim_mean_ms"] * 0.9}
    (rank,) = v.rankings([*group, faster_live])
    assert not rank["same"] and rank["swapped_pairs"][0]["pair"] == [group[0]["policy"], "twin"]


def _swapped_pair(results, base_passes_ms: list[float], twin_passes_ms: list[float]) -> list[dict]:
    """Two rows: a real one and a twin 1% slower live (passes as given) and 10% faster simulated."""
    rows = v.compare([_scaled(r, 1.0) for r in results], results)
    base = {**next(r for r in rows if r["cache_fraction"] == 0.25), "live_pass_means_ms": base_passes_ms}
    twin = {
        **base,
        "policy": "twin",
        "live_mean_ms": base["live_mean_ms"] * 1.01,
        "sim_mean_ms": base["sim_mean_ms"] * 0.9,
        "live_pass_means_ms": twin_passes_ms,
    }
    return [base, twin]


def test_a_swap_is_marked_when_the_live_passes_do_not_order_the_pair_either(results) -> None:
    """A live gap between two policies is an order the live clock resolves only when every pass puts
    them that way round; the swap is counted either way (rankings_identical) and marked, and only a swap
    the passes agree on breaks the ranking against the live clock."""
    for twin_passes, resolved in (([10.2, 9.9, 10.1], False), ([10.2, 10.1, 10.1], True)):
        members = _swapped_pair(results, [10.0, 10.0, 10.0], twin_passes)
        (rank,) = v.rankings(members)
        assert not rank["same"]
        assert rank["swapped_pairs"][0]["live_passes_agree"] is resolved
        summary = v.fidelity_summary(members, [rank])
        assert summary["rankings_identical"] == 0
        assert summary["rankings_agree_where_live_passes_agree"] == int(not resolved)


def test_one_live_pass_orders_every_pair(results) -> None:
    """With a single pass there is no second opinion: a swap counts against the simulator."""
    (rank,) = v.rankings(_swapped_pair(results, [10.0], [10.1]))
    assert rank["swapped_pairs"][0]["live_passes_agree"]


def test_a_gated_grid_repeats_a_run_the_host_ended_slow_and_records_the_probes(tmp_path, monkeypatch) -> None:
    from sim import host_speed
    from sim.live import LiveOptions

    probes = [1e-3, 3e-3, 3e-3, 1e-3]  # run 1 ends slow, waits once, is repeated; then all fast
    monkeypatch.setattr(host_speed, "probe_s", lambda: probes.pop(0) if probes else 1e-3)
    monkeypatch.setattr(host_speed, "SETTLE_S", 0.0)
    grid = _tiny_grid(tmp_path, passes=1, host_gate_timeout_s=5.0)
    h200 = load_profile("h200")  # without its calibration's fast level: the gate learns it from the probes
    unprobed = dataclasses.replace(h200, meta=dataclasses.replace(h200.meta, host_probe_s=0.0))
    live = v.run_live_grid(grid, unprobed, LiveOptions(device="cpu", warmup_steps=1))
    first, second, third = (r.counters for r in live)
    assert first["host_gate_attempts"] == 2 and first["host_probe_after_us"] == 1000.0
    assert first["host_probe_us"] == 1000.0 and first["host_gate_wait_ms"] >= 0.0
    assert all(c["host_gate_attempts"] == 1 for c in (second, third))
    assert not any(c["host_slow_after"] or c["host_gate_timed_out"] for c in (first, second, third))
    summary = v.gate_summary(live)
    assert (summary["gated_runs"], summary["repeated"], summary["slow_after"]) == (3, 1, 0)
    slow = dataclasses.replace(live[1], counters=live[1].counters | {"host_slow_after": 1})
    rows = v.compare([live[0], slow, live[2]], v.simulate_grid(grid, load_profile("h200")))
    assert sorted(r["live_runs_ended_slow"] for r in rows) == [0, 0, 1]
    fidelity = v.fidelity_summary(rows, v.rankings(rows))
    assert fidelity["rows_all_runs_fast"] == 2
    assert 0 <= fidelity["mean_within_5pct_all_runs_fast"] <= 2
    assert v.gate_summary([dataclasses.replace(r, counters={}) for r in live]) == {}


def _probed(result, slow_tokens: list[int], slowdown: float):
    """A live copy of ``result`` whose per-step probes show the slow level (2x) at ``slow_tokens``,
    where its latency is also ``slowdown`` times the simulated one."""
    probes = np.full(result.token_latency_s.size, 10e-6)
    probes[slow_tokens] = 20e-6
    latency = result.token_latency_s.copy()
    latency[slow_tokens] *= slowdown
    return dataclasses.replace(_scaled(result, 1.0), token_latency_s=latency, host_probe_s=probes)


def test_steps_the_host_ran_slow_are_left_out_of_the_fast_step_error(results) -> None:
    sim = results[0]
    measured = np.flatnonzero(sim.decode_token)
    slow = list(measured[:3])
    (row,) = v.compare([_probed(sim, slow, 1.8)], [sim])
    assert row["mean_err"] < -0.05  # every step counted: the slow ones make live look slower
    assert row["mean_err_fast"] == pytest.approx(0.0, abs=1e-12)
    assert row["fast_step_share"] == pytest.approx(1 - 3 / measured.size)
    summary = v.fidelity_summary([row], [])
    assert summary["rows_with_fast_steps"] == 1 and summary["mean_within_5pct_fast_steps"] == 1


def test_a_model_error_stays_visible_over_the_fast_steps(results) -> None:
    sim = results[0]
    live = _probed(_scaled(sim, 1.2), [], 1.0)
    (row,) = v.compare([live], [sim])
    assert row["mean_err_fast"] == pytest.approx(row["mean_err"]) == pytest.approx(1 / 1.2 - 1)


def test_runs_without_probes_have_no_fast_step_error(results) -> None:
    (row,) = v.compare([_scaled(results[0], 1.0)], [results[0]])
    assert np.isnan(row["mean_err_fast"]) and "rows_with_fast_steps" not in v.fidelity_summary([row], [])


def test_a_live_grid_also_decodes_calibrations_resident_run_on_each_model_that_holds_every_expert(
    tmp_path,
) -> None:
    """Also where the grid decodes fewer tokens than the host-cost run (Mixtral-8x7B's 14, session 11):
    the model is built with room for both."""
    from sim import calibrate
    from sim.live import LiveOptions

    grid = _tiny_grid(tmp_path, passes=1)
    assert grid.shapes[0].tokens < calibrate.HOST_TOKENS
    options = LiveOptions(device="cpu", warmup_steps=1)
    found = {}
    for policies in (grid.policies, ("on-demand",)):  # without resident the model has too few slots
        runs: list = []
        v.run_live_grid(
            dataclasses.replace(grid, policies=policies), load_profile("h200"), options, instance_runs=runs
        )
        found[policies] = runs
    (run,) = found[grid.policies]
    assert found[("on-demand",)] == []
    assert run.kind == "layer" and len(run.step_latency_s) == calibrate.HOST_TOKENS and run.host_busy_s > 0


def test_the_live_grid_hands_over_its_results_after_every_pass_and_keeps_them_when_a_later_one_fails(
    tmp_path, monkeypatch
) -> None:
    """A device call stopped at its time limit, or a run that fails, loses the pass under way only."""
    from sim import live
    from sim.live import LiveOptions

    decode = live.run_live
    runs = {"n": 0}

    def failing_in_the_second_pass(*args, **kwargs):
        runs["n"] += 1
        if runs["n"] == 1 + 3 + 2:  # burn-in, pass 1, two runs into pass 2
            raise RuntimeError("out of memory")
        return decode(*args, **kwargs)

    monkeypatch.setattr(live, "run_live", failing_in_the_second_pass)
    saved: list[list[int]] = []
    grid = _tiny_grid(tmp_path, passes=3)
    result = v.run_live_grid(
        grid,
        load_profile("h200"),
        LiveOptions(device="cpu", warmup_steps=1),
        checkpoint=lambda done: saved.append([r.counters[v.PASS_COUNTER] for r in done]),
    )
    assert saved == [[0, 0, 0]]
    assert [r.counters[v.PASS_COUNTER] for r in result] == [0, 0, 0]


def test_a_shape_may_run_without_the_grids_host_gate(tmp_path, monkeypatch) -> None:
    from sim import host_speed
    from sim.live import LiveOptions

    monkeypatch.setattr(host_speed, "SETTLE_S", 0.0)
    grid = _tiny_grid(tmp_path, passes=1, host_gate_timeout_s=5.0)
    for gated in (True, False):
        shapes = (dataclasses.replace(grid.shapes[0], host_gate=gated),)
        live = v.run_live_grid(
            dataclasses.replace(grid, shapes=shapes),
            load_profile("h200"),
            LiveOptions(device="cpu", warmup_steps=1),
        )
        assert all(("host_gate_attempts" in r.counters) is gated for r in live)
