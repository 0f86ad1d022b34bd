"""Decode steps derived from a trace: batching, prefill chunks, prediction sources, Belady's future."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.testing import tiny_shape, tiny_trace
from sim.workload import ORACLE, PREVIOUS_TOKEN, BatchingOptions, Workload
from traces.schema import PredictorInfo


def test_single_token_steps_follow_the_trace() -> None:
    trace = tiny_trace(tiny_shape(), num_sequences=2, tokens_per_sequence=5)
    workload = Workload(trace, sources=("pre-attention", ORACLE, PREVIOUS_TOKEN))
    assert workload.num_steps == trace.num_tokens
    step = workload.step(7)
    assert step.needed == trace.experts[7].tolist()
    assert step.context_total == int(trace.pos[7]) + 1
    assert step.predictions[ORACLE] == trace.experts[7].tolist()
    assert step.predictions[PREVIOUS_TOKEN] == trace.experts[6].tolist()
    assert workload.step(5).predictions[PREVIOUS_TOKEN] == [[], [], []]  # first token of sequence 2
    assert step.top("pre-attention", 0, 3) == trace.predictions["pre-attention"][7, 0, :3].tolist()


def test_batches_decode_sequences_side_by_side_and_refill_lanes() -> None:
    trace = tiny_trace(tiny_shape(), num_sequences=3, tokens_per_sequence=4)
    workload = Workload(trace, BatchingOptions(batch_size=2))
    tokens = [workload.step(s).tokens.tolist() for s in range(workload.num_steps)]
    assert tokens == [[0, 4], [1, 5], [2, 6], [3, 7], [8], [9], [10], [11]]
    step = workload.step(0)
    for j in range(trace.num_layers):
        union = set(trace.experts[0, j].tolist()) | set(trace.experts[4, j].tolist())
        assert set(step.needed[j]) == union
        counts = dict(zip(step.needed[j], step.tokens_per_expert[j], strict=True))
        for e in union:
            assert counts[e] == int(e in trace.experts[0, j]) + int(e in trace.experts[4, j])
    assert workload.step_of_token.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]


def test_prefill_chunks_take_several_prompt_positions_per_step() -> None:
    trace = tiny_trace(tiny_shape(), num_sequences=1, tokens_per_sequence=10)
    workload = Workload(trace, BatchingOptions(prompt_tokens=5, prefill_chunk=2))
    tokens = [workload.step(s).tokens.tolist() for s in range(workload.num_steps)]
    assert tokens == [[0, 1], [2, 3], [4], [5], [6], [7], [8], [9]]
    assert workload.decode_token_mask().tolist() == [False] * 5 + [True] * 5
    assert workload.max_needed() == [max(len(workload.step(s).needed[j]) for s in range(8)) for j in range(3)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), batch=st.integers(1, 4), m=st.integers(1, 4))
def test_top_m_of_a_batch_is_the_union_of_every_tokens_top_m(seed: int, batch: int, m: int) -> None:
    trace = tiny_trace(tiny_shape(), num_sequences=4, tokens_per_sequence=3, seed=seed)
    workload = Workload(trace, BatchingOptions(batch_size=batch), sources=("pre-attention",))
    ranked = trace.predictions["pre-attention"]
    for s in range(workload.num_steps):
        step = workload.step(s)
        for j in range(trace.num_layers):
            expected = {int(e) for t in step.tokens for e in ranked[t, j, :m]}
            chosen = step.top("pre-attention", j, m)
            assert set(chosen) == expected and len(chosen) == len(expected)


def test_unknown_prediction_source_is_named() -> None:
    trace = tiny_trace(tiny_shape())
    with pytest.raises(KeyError, match="'fate' is not in the trace"):
        Workload(trace, sources=("fate",))


def test_unknown_source_message_lists_each_available_source_once() -> None:
    trace = tiny_trace(tiny_shape())
    trace = trace.with_prediction(PredictorInfo(ORACLE, "oracle"), trace.predictions["pre-attention"])
    with pytest.raises(KeyError) as caught:
        Workload(trace, sources=("fate",))
    listed = caught.value.args[0].split("(have: ")[1].rstrip(")").split(", ")
    assert sorted(listed) == sorted({"pre-attention", "cross-layer", ORACLE, PREVIOUS_TOKEN})


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), batch=st.integers(1, 3))
def test_next_use_names_the_next_step_that_needs_an_expert(seed: int, batch: int) -> None:
    shape = tiny_shape(num_moe_layers=2, num_experts=5)
    trace = tiny_trace(shape, num_sequences=2, tokens_per_sequence=6, seed=seed)
    workload = Workload(trace, BatchingOptions(batch_size=batch))
    needed = [[set(workload.step(s).needed[j]) for j in range(2)] for s in range(workload.num_steps)]
    rng = np.random.default_rng(seed)
    for _ in range(30):
        j, e = int(rng.integers(2)), int(rng.integers(5))
        pos = int(rng.integers(-1, workload.num_steps * 2))
        later = [s * 2 + j for s in range(workload.num_steps) if e in needed[s][j] and s * 2 + j > pos]
        expected = later[0] if later else workload.next_use.NEVER
        assert workload.next_use.after(j * 5 + e, pos) == expected
