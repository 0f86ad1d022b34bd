"""``moe-prefetch predictor train`` / ``evaluate`` end to end on a small planted activation store."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from moe_prefetch.cli import main
from predictor.splits import split_mask
from predictor.synthetic import (
    planted_model,
    planted_source,
    planted_trace,
    write_planted_store,
    write_planted_trace,
)
from predictor.tables import COLUMNS, read_metadata
from traces.trace import read_trace, write_trace

MODEL = planted_model(num_layers=3, first_moe_layer=0, num_experts=8, top_k=2, hidden_size=16)
FAST = ["--hidden", "32", "--epochs", "4", "--batch-size", "256", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A planted store and its trace, predictors trained on it, and an evaluation run."""
    root = tmp_path_factory.mktemp("predictor_cli")
    source = planted_source(MODEL, num_sequences=40, seq_len=30, seed=1)
    write_planted_store(root / "acts", source, shard_tokens=500)
    write_planted_trace(root / "trace.parquet", source)
    assert main(["predictor", "train", "--activations", str(root / "acts"), "--out", str(root / "pred"),
                 "--arch", "all", *FAST]) == 0  # fmt: skip
    code = main(["predictor", "evaluate", "--activations", str(root / "acts"), "--predictors",
                 str(root / "pred"), "--trace", str(root / "trace.parquet"), "--out",
                 str(root / "out.parquet"), "--table", str(root / "tables"), "--bootstrap", "50",
                 "--quiet"])  # fmt: skip
    assert code == 0
    return root, source


def test_train_writes_weights_and_a_manifest_for_every_architecture(workdir) -> None:
    root, _ = workdir
    manifest = json.loads((root / "pred" / "predictors.json").read_text())
    names = [e["name"] for e in manifest["predictors"]]
    assert names == ["pre-attention", "pre-attention-arch2", "pre-attention-linear"]
    for name in names:
        assert (root / "pred" / f"{name}.pt").stat().st_size > 0
    assert manifest["split_fractions"] == {"train": 0.7, "val": 0.1, "test": 0.2}
    assert manifest["activations_provenance"]["origin"] == "synthetic"
    entry = manifest["predictors"][0]
    assert len(entry["training"]["best_val_loss"]) == MODEL.num_moe_layers


def test_evaluate_writes_the_long_table_for_every_predictor_layer_and_metric(workdir) -> None:
    root, _ = workdir
    table = pq.read_table(root / "tables" / "accuracy.parquet")
    assert table.schema.names == list(COLUMNS)
    assert read_metadata(table)["models"][MODEL.name]["origin"] == "synthetic"
    rows = table.to_pylist()
    predictors = {r["predictor"] for r in rows}
    assert predictors == {
        "pre-attention", "pre-attention-arch2", "pre-attention-linear", "cross-layer", "cross-layer-embed",
        "previous-token", "frequency", "oracle", "random",
    }  # fmt: skip
    assert {r["layer"] for r in rows} == {-1, 0, 1, 2}
    index = {(r["predictor"], r["layer"], r["metric"], r["k_prime"]): r for r in rows}
    assert index[("oracle", -1, "exact_match", 0)]["value"] == 1.0
    assert index[("oracle", 0, "overprovision_hit", 3)]["value"] == 1.0  # paper's k' for top-2
    assert ("oracle", 0, "overprovision_hit", 4) in index  # and 2k
    # FATE has nothing at decoder layer 0 of this model: excluded and reported through coverage
    first = index[("cross-layer", 0, "exact_match", 0)]
    assert np.isnan(first["value"]) and first["coverage"] == 0.0
    assert index[("cross-layer", -1, "exact_match", 0)]["coverage"] == pytest.approx(2 / 3)
    assert index[("cross-layer-embed", 0, "exact_match", 0)]["coverage"] == 1.0
    for r in rows:
        if not np.isnan(r["value"]) and not np.isnan(r["ci_low"]):
            assert r["ci_low"] - 1e-12 <= r["value"] <= r["ci_high"] + 1e-12
    csv_lines = (root / "tables" / "accuracy.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(COLUMNS) and len(csv_lines) == len(rows) + 1
    markdown = (root / "tables" / f"accuracy_{MODEL.name}.md").read_text()
    assert "First MoE layer (decoder layer 0)" in markdown and "| oracle | 100.00%" in markdown


def test_evaluate_writes_the_test_split_trace_with_prediction_columns(workdir) -> None:
    root, source = workdir
    trace = read_trace(root / "out.parquet")
    expected_tokens = split_mask(source.tokens()[:, 0], "test").sum()
    assert trace.num_tokens == expected_tokens
    assert split_mask(trace.seq_id, "test").all()
    assert set(trace.predictions) == {"pre-attention", "cross-layer", "previous-token", "frequency", "oracle"}
    assert set(trace.confidences) == {"pre-attention"}
    assert trace.predictions["oracle"].shape == (expected_tokens, 3, 3)  # m = k' = 3 for top-2
    np.testing.assert_array_equal(trace.predictions["oracle"][:, :, :2], trace.experts)
    assert (trace.predictions["cross-layer"][:, 0] == -1).all()
    info = {p.name: p for p in trace.metadata.predictors}["pre-attention"]
    assert info.kind == "learned" and "train" in info.training_data
    assert info.metrics["first_moe_layer"]["exact_match"] is not None


def test_a_trace_from_another_run_is_refused_in_one_line(workdir, tmp_path, capsys) -> None:
    root, source = workdir
    trace = planted_trace(source)
    other = dataclasses.replace(trace, experts=np.roll(trace.experts, 1, axis=0))
    write_trace(other, tmp_path / "other.parquet")
    code = main(["predictor", "evaluate", "--activations", str(root / "acts"), "--predictors",
                 str(root / "pred"), "--trace", str(tmp_path / "other.parquet"), "--out",
                 str(tmp_path / "out.parquet"), "--table", str(tmp_path / "t"), "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "routing differs" in err
    assert not (tmp_path / "out.parquet").exists()


def test_missing_activation_store_is_a_one_line_error(tmp_path, capsys) -> None:
    code = main(["predictor", "train", "--activations", str(tmp_path / "nope"), "--out", str(tmp_path / "p")])
    assert code == 2
    assert "no such activation store" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--trace-predictors", "oracle,nope"], "--trace-predictors: no predictor named ['nope']"),
        (["--trace-scores", "nope"], "--trace-scores: no predictor named ['nope']"),
    ],
)
def test_evaluate_refuses_bad_options_before_writing_anything(
    workdir, tmp_path, capsys, extra, problem
) -> None:
    root, _ = workdir
    code = main(["predictor", "evaluate", "--activations", str(root / "acts"), "--predictors",
                 str(root / "pred"), "--trace", str(root / "trace.parquet"), "--out",
                 str(tmp_path / "out.parquet"), "--table", str(tmp_path / "t"), "--quiet",
                 *extra])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "out.parquet").exists()


def test_predictors_trained_for_another_model_are_refused(workdir, tmp_path, capsys) -> None:
    root, _ = workdir
    other = dataclasses.replace(MODEL, name="other", num_experts=6)
    write_planted_store(tmp_path / "acts", planted_source(other, num_sequences=5, seq_len=4))
    code = main(["predictor", "evaluate", "--activations", str(tmp_path / "acts"), "--predictors",
                 str(root / "pred"), "--table", str(tmp_path / "t"), "--quiet"])  # fmt: skip
    assert code == 2
    assert "trained for model" in capsys.readouterr().err


def test_training_without_router_logits_works_and_says_what_is_lost(tmp_path, capsys) -> None:
    source = planted_source(MODEL, num_sequences=20, seq_len=10)
    source.arrays = {name: a for name, a in source.arrays.items() if not name.endswith(".logits")}
    write_planted_store(tmp_path / "acts", source)
    code = main(["predictor", "train", "--activations", str(tmp_path / "acts"), "--out", str(tmp_path / "p"),
                 "--arch", "linear", *FAST])  # fmt: skip
    assert code == 0
    assert "no router logits" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "p" / "predictors.json").read_text())
    assert manifest["labels"].startswith("router top-k only")
