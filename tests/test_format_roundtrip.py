"""Trace format v1: what is written is read back exactly, predictions included."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from traces.schema import METADATA_KEY, ModelShape, PredictorInfo, Provenance, TraceMetadata
from traces.trace import NO_PREDICTION, Trace, read_trace, write_trace


def _trace(num_tokens: int = 30, layers: tuple[int, ...] = (1, 2, 3), e: int = 16, k: int = 2) -> Trace:
    rng = np.random.default_rng(7)
    shape = ModelShape("tiny", "deepseek_v2", 4, layers, e, k, 64, 32, 3 * 64 * 32 * 2)
    experts = np.argsort(rng.random((num_tokens, len(layers), e)), axis=2)[:, :, :k].astype(np.int16)
    weights = np.sort(rng.random((num_tokens, len(layers), k)).astype(np.float32), axis=2)[:, :, ::-1]
    seq = np.repeat(np.arange(3), num_tokens // 3).astype(np.int32)
    pos = np.tile(np.arange(num_tokens // 3), 3).astype(np.int32)
    meta = TraceMetadata(shape, Provenance("synthetic", notes="unit test"))
    return Trace(meta, seq, pos, experts, np.ascontiguousarray(weights))


def test_round_trip_keeps_routing_and_metadata(tmp_path) -> None:
    trace = _trace()
    write_trace(trace, tmp_path / "t.parquet")
    back = read_trace(tmp_path / "t.parquet")
    assert np.array_equal(back.experts, trace.experts)
    assert np.array_equal(back.weights, trace.weights)
    assert np.array_equal(back.seq_id, trace.seq_id) and np.array_equal(back.pos, trace.pos)
    assert back.metadata == trace.metadata
    assert back.seq_starts.tolist() == [0, 10, 20, 30]


def test_predictions_with_missing_layers_round_trip_as_minus_one(tmp_path) -> None:
    trace = _trace()
    ranked = np.concatenate([trace.experts, trace.experts[:, :, :1]], axis=2)
    ranked[:, 0, :] = NO_PREDICTION  # e.g. cross-layer has nothing for the first MoE layer
    scores = np.linspace(0, 1, ranked.size).reshape(ranked.shape)
    trace = trace.with_prediction(PredictorInfo("cross-layer", "fate"), ranked, scores)
    write_trace(trace, tmp_path / "t.parquet")
    back = read_trace(tmp_path / "t.parquet")
    assert np.array_equal(back.predictions["cross-layer"], ranked)
    assert back.confidences["cross-layer"].dtype == np.float16
    assert [p.name for p in back.metadata.predictors] == ["cross-layer"]


def test_file_is_plain_parquet_with_one_row_per_token_and_layer(tmp_path) -> None:
    write_trace(_trace(), tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.num_rows == 30 * 3
    assert table.column_names[:5] == ["seq_id", "pos", "layer", "experts", "weights"]
    assert METADATA_KEY in table.schema.metadata


def test_unsorted_rows_are_read_in_token_order(tmp_path) -> None:
    trace = _trace()
    write_trace(trace, tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    pq.write_table(shuffled, tmp_path / "shuffled.parquet")
    back = read_trace(tmp_path / "shuffled.parquet")
    assert np.array_equal(back.experts, trace.experts)
