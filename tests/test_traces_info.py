"""``moe-prefetch trace info``: one summary per file, with provenance, predictors and routing statistics."""

from __future__ import annotations

import pytest

from moe_prefetch.cli import main
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import write_trace


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    spec = SyntheticSpec(
        KNOWN_SHAPES["olmoe-1b-7b"],
        num_sequences=3,
        tokens_per_sequence=40,
        popularity_skew=1.5,
        predictor_accuracy={"pre_attn": 0.9},
        prediction_width=12,
    )
    path = tmp_path_factory.mktemp("info") / "olmoe.parquet"
    write_trace(generate_trace(spec), path)
    return path


def test_info_prints_size_model_origin_predictors_and_statistics(trace_file, capsys):
    assert main(["trace", "info", str(trace_file)]) == 0
    out = capsys.readouterr().out
    assert "120 in 3 sequences" in out
    assert "allenai/OLMoE-1B-7B-0924 (olmoe): 16 MoE of 16 layers, 64 experts, top-8" in out
    assert "synthetic (NOT measured on a model)" in out
    assert "pre_attn (synthetic, 12 ranked): exact_match=" in out
    assert "busiest 10% of experts take" in out
    assert "reuse distance p50" in out
    assert "Belady" not in out


def test_info_cache_bound_is_opt_in_and_explains_impossible_sizes(trace_file, capsys):
    assert main(["trace", "info", str(trace_file), "--cache-slots", "16"]) == 0
    assert "Belady hit rate" in capsys.readouterr().out
    assert main(["trace", "info", str(trace_file), "--cache-slots", "4"]) == 0
    assert "cannot hold the 8 experts" in capsys.readouterr().out


def test_info_on_a_missing_file_is_one_line_exit_2(tmp_path, capsys):
    assert main(["trace", "info", str(tmp_path / "nope.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.parquet: no such file" in err
