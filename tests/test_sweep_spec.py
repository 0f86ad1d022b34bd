"""Sweep files: the grid is the product of the lists, what-if hardware applies, bad files fail in one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from moe_prefetch.cli import main
from sim.hardware import load_profile
from sim.sweep import expand, load_sweep, what_if_hardware
from traces.fileio import InputError
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import write_trace


@pytest.fixture
def trace_file(tmp_path):
    spec = SyntheticSpec(
        KNOWN_SHAPES["olmoe-1b-7b"],
        num_sequences=2,
        tokens_per_sequence=20,
        predictor_accuracy={"pre-attention": 0.9},
        prediction_width=10,
    )
    path = tmp_path / "traces" / "olmoe.parquet"
    path.parent.mkdir()
    write_trace(generate_trace(spec), path)
    return path


def _sweep(tmp_path, body: str):
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_grid_is_the_product_of_every_list(tmp_path, trace_file) -> None:
    path = _sweep(
        tmp_path,
        """
        [sweep]
        traces = ["traces/*.parquet"]
        policies = ["on-demand", "pre-attention", "pre-attention:m=10"]
        cache_fractions = [0.1, 0.25]
        batch_sizes = [1, 2]
        [hardware]
        presets = ["h200", "a100-pcie-gen4"]
        pcie_gbps = [16, 32]
        host_memory = ["pinned", "pageable"]
        """,
    )
    spec = load_sweep(path)
    assert spec.traces == (trace_file.resolve(),)
    assert spec.num_runs == 3 * 2 * 2 * 2 * 2 * 2
    points = expand(spec)
    assert len(points) == spec.num_runs
    assert len({p.key for p in points}) == len(points)
    pageable = [p for p in points if p.labels["host_memory"] == "pageable"]
    assert {p.config.options.host_memory for p in pageable} == {"pageable"}
    assert {p.config.hardware.copy.link_gbps for p in points} == {16.0, 32.0}


def test_the_same_configuration_listed_twice_runs_once(tmp_path, trace_file) -> None:
    path = _sweep(
        tmp_path,
        """
        [sweep]
        traces = ["traces/olmoe.parquet", "traces/*.parquet"]
        policies = ["on-demand", "on-demand"]
        cache_slots = [64]
        """,
    )
    assert len(expand(load_sweep(path))) == 1


def test_what_if_bandwidth_replaces_the_measured_curve_and_keeps_the_pageable_ratio() -> None:
    h200 = load_profile("h200")
    assert h200.copy.curve is not None
    changed = what_if_hardware(h200, 16.0, None, 2)
    assert changed.copy.curve is None
    assert changed.copy.pinned_gbps == changed.copy.link_gbps == 16.0
    assert changed.copy.pageable_gbps == pytest.approx(16.0 * h200.copy.pageable_gbps / h200.copy.pinned_gbps)
    assert changed.copy.engines == 2
    assert changed.copy.transfer_s(16_000_000) == pytest.approx(h200.copy.latency_s + 1e-3)
    assert what_if_hardware(h200, None, None, None) is h200


def test_what_if_host_time_per_copy_keeps_the_measured_curve(tmp_path, trace_file) -> None:
    h200 = load_profile("h200")
    free_host = what_if_hardware(h200, None, None, None, 0.0)
    assert free_host.copy.issue_s == 0.0 and free_host.copy.curve == h200.copy.curve
    path = _sweep(
        tmp_path,
        """
        [sweep]
        traces = ["traces/olmoe.parquet"]
        policies = ["on-demand"]
        cache_fractions = [0.25]
        [hardware]
        copy_issue_s = [0.0, 1e-3]
        """,
    )
    points = expand(load_sweep(path))
    assert [p.config.hardware.copy.issue_s for p in points] == [0.0, 1e-3]
    assert len({p.key for p in points}) == 2


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('policies = ["on-demand"]\ncache_fractions = [0.1]', "missing key 'traces'"),
        ('traces = ["none/*.parquet"]\npolicies = ["on-demand"]\ncache_fractions = [0.1]', "matches no file"),
        ('traces = ["traces/*"]\npolicies = ["telepathy"]\ncache_fractions = [0.1]', "unknown policy"),
        ('traces = ["traces/*"]\npolicies = ["on-demand"]', "exactly one of cache_fractions or cache_slots"),
        (
            'traces = ["traces/*"]\npolicies = ["on-demand"]\ncache_fractions = [1.5]',
            "'cache_fractions' value",
        ),
        ('traces = ["traces/*"]\npolicies = []\ncache_slots = [4]', "'policies' is an empty list"),
        (
            'traces = ["traces/*"]\npolicies = ["on-demand"]\ncache_slots = [4]\nspeed = 3',
            "unknown key 'speed'",
        ),
        (
            'traces = ["traces/*"]\npolicies = ["on-demand"]\ncache_slots = [4]\neviction = ["random"]',
            "'eviction' value 'random'",
        ),
        (
            'traces = ["traces/*"]\npolicies = ["on-demand"]\ncache_slots = [4]\n[hardware]\npresets = ["x"]',
            "unknown hardware preset 'x'",
        ),
        (
            'traces = ["traces/*"]\npolicies = ["on-demand"]\ncache_slots = [4]\n[hardware]\npcie_gbps = [0]',
            "'pcie_gbps' value 0",
        ),
    ],
)
def test_bad_sweep_file_names_the_problem(tmp_path, trace_file, body: str, problem: str) -> None:
    path = _sweep(tmp_path, "[sweep]\n" + body + "\n")
    with pytest.raises(InputError, match=problem):
        load_sweep(path)


def test_cli_reports_a_bad_sweep_file_in_one_line_with_exit_2(tmp_path, capsys) -> None:
    path = _sweep(tmp_path, "[sweep\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "r.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "not valid TOML" in err[0]
    assert not (tmp_path / "r.parquet").exists()


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ("cross-layer", "no 'pred.cross-layer' column"),
        ("pre-attention:m=12", "ranks 10 experts, fewer than m=12"),
        ("confidence", "no 'conf.pre-attention' scores"),
    ],
)
def test_policy_the_trace_cannot_support_is_refused_before_any_run(
    tmp_path, trace_file, policy, problem
) -> None:
    path = _sweep(tmp_path, f'[sweep]\ntraces = ["traces/*"]\npolicies = ["{policy}"]\ncache_slots = [64]\n')
    with pytest.raises(InputError, match=problem):
        expand(load_sweep(path))


EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "sweeps").glob("*.toml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_sweep_files_describe_valid_grids(tmp_path, example) -> None:
    # the examples point at ../../traces/data/*.parquet: rebuild that layout around a synthetic trace
    # with every prediction column the examples use
    data = tmp_path / "traces" / "data"
    data.mkdir(parents=True)
    spec = SyntheticSpec(
        KNOWN_SHAPES["olmoe-1b-7b"],
        num_sequences=1,
        tokens_per_sequence=4,
        predictor_accuracy={"pre-attention": 0.9, "cross-layer": 0.7},
        prediction_width=12,
    )
    trace = generate_trace(spec)
    scores = np.linspace(1, 0, 12, dtype=np.float16) * np.ones(trace.predictions["pre-attention"].shape)
    trace = trace.with_prediction(trace.metadata.predictors[0], trace.predictions["pre-attention"], scores)
    write_trace(trace, data / "t.parquet")
    copy = tmp_path / "examples" / "sweeps" / example.name
    copy.parent.mkdir(parents=True)
    copy.write_text(example.read_text())
    sweep = load_sweep(copy)
    assert len(expand(sweep)) == sweep.num_runs > 1


def test_a_run_the_simulator_refuses_stops_the_sweep_with_one_line_naming_it(
    tmp_path, trace_file, capsys
) -> None:
    path = _sweep(
        tmp_path, '[sweep]\ntraces = ["traces/*"]\npolicies = ["on-demand"]\ncache_slots = [3, 256]\n'
    )
    assert main(["sweep", str(path), "--out", str(tmp_path / "r.parquet"), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]
    assert "run olmoe / on-demand / 3 slots, lru / h200" in err[0]
