"""Result records: summary rows, run keys, Parquet and JSON files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sim.cache import CacheConfig
from sim.config import RunConfig, SimOptions, trace_fingerprint
from sim.policies import PolicySpec
from sim.results import RESULTS_METADATA_KEY, SimResult, read_results, write_results
from sim.simulation import simulate
from sim.testing import tiny_hardware, tiny_shape, tiny_trace
from traces.fileio import InputError


@pytest.fixture(scope="module")
def results() -> list[SimResult]:
    shape = tiny_shape()
    trace = tiny_trace(shape)
    options = SimOptions(timeline_steps=2, warmup_steps=3)
    return [
        simulate(trace, shape, tiny_hardware(), CacheConfig(fraction=0.5), PolicySpec.parse(p), options)
        for p in ("on-demand", "pre-attention:m=3")
    ]


def test_summary_row_is_flat_and_counts_add_up(results: list[SimResult]) -> None:
    row = results[1].summary_row()
    assert all(not isinstance(v, dict | list) for v in row.values())
    assert row["policy"] == "pre-attention:m=3" and row["hardware"] == "tiny"
    assert (
        row["hits"] + row["late"] + row["misses"]
        == results[1].hits.sum() + results[1].late.sum() + results[1].misses.sum()
    )
    assert row["mean_latency_s"] == pytest.approx(results[1].token_latency_s[results[1].decode_token].mean())
    assert not results[1].decode_token[:3].any()  # the warm-up steps are left out


def test_parquet_round_trip_keeps_everything(tmp_path: Path, results: list[SimResult]) -> None:
    path = tmp_path / "r.parquet"
    write_results(results, path)
    back = read_results(path)
    for a, b in zip(results, back, strict=True):
        assert a.summary_row() == b.summary_row()
        assert np.array_equal(a.token_latency_s, b.token_latency_s)
        assert [tuple(i) for i in a.timeline] == b.timeline
        assert a.config == b.config


def test_json_round_trip(tmp_path: Path, results: list[SimResult]) -> None:
    path = tmp_path / "r.json"
    results[0].to_json(path)
    back = SimResult.read_json(path)
    assert back.summary_row() == results[0].summary_row()
    assert back.host_probe_s is None


def test_live_host_probes_survive_both_files_and_simulated_runs_have_none(
    tmp_path: Path, results: list[SimResult]
) -> None:
    probes = np.linspace(1e-5, 2e-5, results[0].token_latency_s.size)
    live = dataclasses.replace(results[0], clock="live", host_probe_s=probes)
    write_results([live, results[1]], tmp_path / "r.parquet")
    back_live, back_sim = read_results(tmp_path / "r.parquet")
    assert np.array_equal(back_live.host_probe_s, probes) and back_sim.host_probe_s is None
    live.to_json(tmp_path / "r.json")
    assert np.array_equal(SimResult.read_json(tmp_path / "r.json").host_probe_s, probes)


def test_unreadable_results_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(InputError, match="not a simulation result"):
        SimResult.read_json(path)
    with pytest.raises(InputError, match="no such file"):
        read_results(tmp_path / "none.parquet")


def test_results_table_missing_a_column_or_of_another_version_is_refused_in_one_line(
    tmp_path: Path, results: list[SimResult]
) -> None:
    path = tmp_path / "r.parquet"
    write_results(results, path)
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["counters"]), tmp_path / "cut.parquet")
    with pytest.raises(InputError, match="lacks column 'counters'"):
        read_results(tmp_path / "cut.parquet")
    newer = table.replace_schema_metadata({RESULTS_METADATA_KEY: b'{"version": 99}'})
    pq.write_table(newer, tmp_path / "newer.parquet")
    with pytest.raises(InputError, match="unknown results version 99"):
        read_results(tmp_path / "newer.parquet")


def test_run_key_changes_with_any_input(results: list[SimResult]) -> None:
    config = results[0].config
    assert RunConfig.from_dict(config.to_dict()) == config
    keys = {
        config.key(),
        dataclasses.replace(config, cache=CacheConfig(fraction=0.25)).key(),
        dataclasses.replace(config, policy=PolicySpec("oracle")).key(),
        dataclasses.replace(config, options=SimOptions(batch_size=2)).key(),
        dataclasses.replace(config, hardware=config.hardware.with_copy(engines=1)).key(),
    }
    assert len(keys) == 5


def test_trace_fingerprint_sees_routing_and_predictions() -> None:
    trace = tiny_trace(tiny_shape())
    changed = dataclasses.replace(trace, experts=trace.experts[::-1].copy())
    assert trace_fingerprint(trace) == trace_fingerprint(tiny_trace(tiny_shape()))
    assert trace_fingerprint(trace) != trace_fingerprint(changed)


def test_a_run_with_no_measured_token_reports_no_latency_rather_than_its_warm_up(
    results: list[SimResult],
) -> None:
    warm_up_only = dataclasses.replace(results[0], decode_token=np.zeros_like(results[0].decode_token))
    summary = warm_up_only.summary()
    assert warm_up_only.measured_tokens == 0
    for name in ("mean_latency_s", "p50_latency_s", "p99_latency_s"):
        assert np.isnan(summary[name]), name  # not the mean over the warm-up steps
    assert summary["tokens"] == results[0].summary()["tokens"] and summary["tokens_per_s"] > 0


def test_a_run_of_prompts_only_has_nan_latency_and_survives_its_files(tmp_path: Path) -> None:
    shape = tiny_shape()
    trace = tiny_trace(shape, tokens_per_sequence=8)
    options = SimOptions(prompt_tokens=8)  # every token is prefill: no decode token to measure
    result = simulate(
        trace, shape, tiny_hardware(), CacheConfig(fraction=0.5), PolicySpec("on-demand"), options
    )
    assert result.measured_tokens == 0 and np.isnan(result.summary()["mean_latency_s"])
    write_results([result], tmp_path / "r.parquet")
    result.to_json(tmp_path / "r.json")
    for back in (read_results(tmp_path / "r.parquet")[0], SimResult.read_json(tmp_path / "r.json")):
        assert back.measured_tokens == 0 and np.isnan(back.summary()["p99_latency_s"])
