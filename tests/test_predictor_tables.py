"""The accuracy table directory: one combined long table across models, one markdown file per model."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq

from predictor.synthetic import planted_model
from predictor.tables import read_metadata, write_tables

MODEL_A = planted_model(num_experts=64, top_k=6)
MODEL_B = dataclasses.replace(planted_model(num_experts=16, top_k=2), name="model-b")


def rows(model_name: str, value: float) -> list[dict]:
    return [
        {"model": model_name, "predictor": "p", "layer": layer, "metric": "exact_match", "k_prime": 0,
         "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "num_tokens": 10, "coverage": 1.0}
        for layer in (0, 1, 2, -1)
    ]  # fmt: skip


def test_models_share_one_table_and_a_rerun_replaces_only_its_own_rows(tmp_path) -> None:
    write_tables(tmp_path, rows(MODEL_A.name, 0.5), MODEL_A, 10, "a", {"origin": "synthetic"})
    write_tables(tmp_path, rows(MODEL_B.name, 0.6), MODEL_B, 3, "b", {"origin": "gpu-collected"})
    write_tables(tmp_path, rows(MODEL_A.name, 0.7), MODEL_A, 10, "a again", {"origin": "synthetic"})
    table = pq.read_table(tmp_path / "accuracy.parquet")
    by_model = {}
    for r in table.to_pylist():
        by_model.setdefault(r["model"], []).append(r["value"])
    assert by_model == {MODEL_A.name: [0.7] * 4, MODEL_B.name: [0.6] * 4}
    assert read_metadata(table)["models"] == {
        MODEL_A.name: {"origin": "synthetic"},
        MODEL_B.name: {"origin": "gpu-collected"},
    }
    assert len((tmp_path / "accuracy.csv").read_text().splitlines()) == 9


def test_markdown_puts_the_papers_numbers_for_the_same_shape_under_the_first_layer(tmp_path) -> None:
    write_tables(tmp_path, rows(MODEL_A.name, 0.5), MODEL_A, 10, "heading", {"origin": "synthetic"})
    text = (tmp_path / f"accuracy_{MODEL_A.name}.md").read_text()
    first = text.split("## First MoE layer")[1].split("## Mean")[0]
    assert "| p | 50.00% [40.0, 60.0]" in first
    assert "paper: DeepSeek-V2-Lite" in first and "93.03%" in first
    assert "paper" not in text.split("## Mean")[1]
