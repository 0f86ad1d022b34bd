"""Validation bookkeeping: grids from TOML, live/simulated rows matched by configuration, errors,
policy rankings, repeatability and the live findings."""

from __future__ import annotations

import dataclasses

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


def _scaled(result, factor: float, clock: str = "live"):
    return dataclasses.replace(
        result,
        clock=clock,
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


def test_errors_are_simulated_over_live_minus_one(results) -> None:
    rows = v.compare([_scaled(r, 1.25) for r in results], results)
    assert all(r["mean_err"] == pytest.approx(1 / 1.25 - 1) for r in rows)


def test_a_swapped_pair_breaks_the_ranking_and_is_reported(results) -> None:
    live = [_scaled(r, 10.0 if r.config.policy.name == "resident" else 1.0) for r in results]
    ranks = v.rankings(v.compare(live, results))
    assert not any(r["same"] for r in ranks)
    assert all(any("resident" in s["pair"] for s in r["swapped_pairs"]) for r in ranks)


def test_repeated_live_runs_are_kept_out_of_the_table_and_measured(results) -> None:
    live = [_scaled(r, 1.0) for r in results] + [_scaled(results[0], 1.1, v.REPEAT_CLOCK)]
    assert len(v.compare(live, results)) == len(results)
    (repeat,) = v.repeatability(live)
    assert repeat["difference"] == pytest.approx(0.1)


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


def test_synthetic_shape_trace_is_cut_to_the_requested_tokens() -> None:
    shape, trace = v.shape_trace(v.ShapeRun("olmoe-1b-7b", v.SYNTHETIC, 10))
    assert trace.num_tokens == 10 and trace.metadata.provenance.origin == "synthetic"
    assert {"pre-attention", "cross-layer"} <= set(trace.predictions)
    assert np.all(trace.experts < shape.num_experts)


def test_prefer_repeat_compares_the_second_run_and_keeps_the_first(results) -> None:
    live = [_scaled(r, 2.0) for r in results] + [_scaled(results[0], 1.0, v.REPEAT_CLOCK)]
    rows = v.compare(live, results, prefer_repeat=True)
    repeated = [r for r in rows if r["live_run"] == v.REPEAT_CLOCK]
    assert len(repeated) == 1 and repeated[0]["mean_err"] == 0
    assert repeated[0]["first_run_mean_ms"] == pytest.approx(2 * repeated[0]["live_mean_ms"])
    assert "(repeat)" in v.markdown_table(rows)
