"""Compact trace writing (for traces shipped in the repository): same reader, bf16-rounded floats, smaller."""

from __future__ import annotations

import numpy as np

from traces.schema import ModelShape, PredictorInfo, Provenance, TraceMetadata
from traces.trace import Trace, read_trace, write_trace


def routed_trace(tokens: int = 4000, layers: int = 4, experts: int = 64, k: int = 6) -> Trace:
    rng = np.random.default_rng(0)
    shape = ModelShape("m", "deepseek_v2", layers + 1, tuple(range(1, layers + 1)), experts, k, 64, 32, 12288)
    ids = np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :k].astype(np.int16)
    weights = np.sort(rng.dirichlet(np.ones(experts), size=(tokens, layers))[:, :, :k], axis=2)[:, :, ::-1]
    trace = Trace(
        metadata=TraceMetadata(shape, Provenance(origin="synthetic", notes="unit test")),
        seq_id=np.repeat(np.arange(tokens // 100, dtype=np.int32), 100),
        pos=np.tile(np.arange(100, dtype=np.int32), tokens // 100),
        experts=ids,
        weights=np.ascontiguousarray(weights, dtype=np.float32),
    )
    ranked = np.argsort(rng.random((tokens, layers, experts)), axis=2)[:, :, :10].astype(np.int16)
    scores = np.sort(rng.random((tokens, layers, 10)), axis=2)[:, :, ::-1]
    return trace.with_prediction(PredictorInfo("pre-attention", "learned"), ranked, scores)


def test_compact_trace_reads_back_with_ids_exact_and_floats_at_bf16_precision(tmp_path):
    trace = routed_trace()
    write_trace(trace, tmp_path / "plain.parquet")
    write_trace(trace, tmp_path / "compact.parquet", compact=True)
    back = read_trace(tmp_path / "compact.parquet")
    np.testing.assert_array_equal(back.experts, trace.experts)
    np.testing.assert_array_equal(back.predictions["pre-attention"], trace.predictions["pre-attention"])
    np.testing.assert_allclose(back.weights, trace.weights, rtol=2**-8)
    assert (back.weights.view(np.uint32) & 0xFFFF).max() == 0  # exactly representable in bf16
    np.testing.assert_allclose(
        back.confidences["pre-attention"].astype(np.float32),
        trace.confidences["pre-attention"].astype(np.float32),
        rtol=2**-8,
    )
    assert back.metadata == trace.metadata
    plain, compact = ((tmp_path / f).stat().st_size for f in ("plain.parquet", "compact.parquet"))
    assert compact < 0.85 * plain


def test_bf16_rounding_is_to_nearest():
    from traces.trace import _bf16_round

    # bf16 keeps 7 mantissa bits: neighbours of 1 are 1 + 2**-7 apart; halfway cases go to the even one
    values = np.array([1 + 2**-9, 1 + 2**-8, 1 + 2**-8 + 2**-10, 1 + 3 * 2**-8], dtype=np.float32)
    expected = np.array([1.0, 1.0, 1 + 2**-7, 1 + 2**-6], dtype=np.float32)
    np.testing.assert_array_equal(_bf16_round(values), expected)
