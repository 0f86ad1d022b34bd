"""scripts/timeline_stats.py: the median duration of each kind of recorded interval, per run."""

from __future__ import annotations

import dataclasses
import runpy
from pathlib import Path

import pytest

from sim.cache import CacheConfig
from sim.config import SimOptions
from sim.hardware import load_profile
from sim.policies import PolicySpec
from sim.results import write_results
from sim.simulation import simulate
from sim.testing import tiny_shape, tiny_trace

STATS = runpy.run_path(str(Path(__file__).resolve().parent.parent / "scripts" / "timeline_stats.py"))
SHAPE = tiny_shape(num_moe_layers=2, name="tiny-timeline")


@pytest.fixture(scope="module")
def result():
    trace = tiny_trace(SHAPE, num_sequences=1, tokens_per_sequence=6)
    options = SimOptions(timeline_steps=2)
    return simulate(
        trace, SHAPE, load_profile("h200"), CacheConfig(fraction=0.25), PolicySpec("on-demand"), options
    )


def test_intervals_are_grouped_by_kind_with_copy_lanes_pooled(result) -> None:
    timeline = [
        ("compute", "expert", 0.0, 2e-5, 0, 1),
        ("compute", "expert", 1e-4, 1.4e-4, 0, 2),
        ("copy0", "demand", 0.0, 1e-4, 0, 1),
        ("copy1", "prefetch", 0.0, 3e-4, 1, 3),
    ]
    stats = STATS["interval_medians_us"](dataclasses.replace(result, timeline=timeline))
    assert stats == {"copy": (2, pytest.approx(200.0)), "expert": (2, pytest.approx(30.0))}


def test_the_script_prints_one_line_per_run_with_a_timeline(result, tmp_path, capsys) -> None:
    path = tmp_path / "sim.parquet"
    write_results([result, dataclasses.replace(result, timeline=None)], path)
    assert STATS["main"]([str(path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("tiny-timeline | on-demand | 0.25 | sim:") and "copy" in line and "expert" in line
    assert STATS["main"]([str(tmp_path / "missing.parquet")]) == 1
