"""Retargeting a trace onto another model shape: layers and experts modulo, distinct experts per token."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.retarget import dedupe_rows, retarget_trace
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import NO_PREDICTION


def _source():
    shape = KNOWN_SHAPES["olmoe-1b-7b"]  # 16 layers, 64 experts, top-8
    spec = SyntheticSpec(
        shape, num_sequences=2, tokens_per_sequence=6, predictor_accuracy={"pre-attention": 0.7}, seed=1
    )
    return generate_trace(spec)


def test_layers_wrap_modulo_and_experts_stay_distinct_on_a_smaller_expert_pool() -> None:
    source = _source()
    target = KNOWN_SHAPES["qwen3-30b-a3b"]  # 48 layers, 128 experts, top-8
    out = retarget_trace(source, target)
    assert out.experts.shape == (source.num_tokens, 48, 8)
    assert np.array_equal(out.experts[:, 16], source.experts[:, 0])  # 64 < 128: ids unchanged
    assert out.metadata.model == target
    assert "retargeted from" in out.metadata.provenance.notes


def test_fewer_experts_map_modulo_and_collisions_take_the_smallest_unused_id() -> None:
    source = _source()
    target = KNOWN_SHAPES["mixtral-8x7b"]  # 8 experts, top-2
    trimmed = source.select_tokens(np.arange(4))
    trimmed.experts = trimmed.experts[:, :, :2].copy()
    trimmed.weights = trimmed.weights[:, :, :2].copy()
    trimmed.predictions = {}
    trimmed.confidences = {}
    out = retarget_trace(trimmed, target)
    assert out.experts.max() < 8
    for row in out.experts.reshape(-1, 2):
        assert row[0] != row[1]


def test_missing_predictions_stay_missing() -> None:
    rows = np.array([[NO_PREDICTION, NO_PREDICTION], [3, 3]], dtype=np.int16)
    out = dedupe_rows(rows, 4, keep_missing=True)
    assert out[0].tolist() == [NO_PREDICTION, NO_PREDICTION]
    assert out[1].tolist() == [3, 0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3), min_size=1, max_size=20),
)
def test_dedupe_gives_distinct_ids_and_keeps_first_occurrences(rows: list[list[int]]) -> None:
    ids = np.array(rows, dtype=np.int16)
    out = dedupe_rows(ids, 6)
    for before, after in zip(ids, out, strict=True):
        assert len(set(after.tolist())) == 3
        seen = set()
        for b, a in zip(before.tolist(), after.tolist(), strict=True):
            if b not in seen:
                assert a == b
            seen.add(b)


def test_a_trace_routing_more_experts_keeps_the_first_in_router_order() -> None:
    source = _source()  # top-8 of 64
    target = KNOWN_SHAPES["deepseek-v2-lite"]  # top-6 of 64, first layer dense
    out = retarget_trace(source, target)
    assert out.experts.shape == (source.num_tokens, 26, 6)
    assert np.array_equal(out.experts[:, 0], source.experts[:, 0, :6])
    assert out.weights.shape == out.experts.shape


def test_a_trace_routing_fewer_experts_than_the_target_is_refused() -> None:
    source = _source()
    source.experts = source.experts[:, :, :2].copy()
    with pytest.raises(ValueError, match="fewer than"):
        retarget_trace(source, KNOWN_SHAPES["qwen3-30b-a3b"])
