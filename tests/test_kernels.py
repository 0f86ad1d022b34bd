"""The decode kernels that calibration times and the live executor runs: the graph-ready attention (fixed
lengths, masked) computes what plain decode attention computes, and ops fall back to eager calls on the
CPU and for partial batches."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from sim import kernels  # noqa: E402
from sim.live import _Op  # noqa: E402
from sim.testing import tiny_shape  # noqa: E402

SHAPE = dataclasses.replace(tiny_shape(num_moe_layers=1), dtype="float32")  # grouped-query: 4 heads, 2 kv
CPU = torch.device("cpu")


@pytest.mark.parametrize(("context", "length"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (9, 10), (10, 10)])
def test_attention_reads_the_context_rounded_up_to_a_power_of_two_within_the_cache(context, length) -> None:
    assert kernels.attention_length(context, max_context=10) == length


def test_every_attention_length_of_a_cache_is_listed_once() -> None:
    assert kernels.attention_lengths(10) == [1, 2, 4, 8, 10]
    assert kernels.attention_lengths(1) == [1]


def _plain_attention(x, layer, context):
    """Decode attention over exactly ``context`` positions, written out: the new key and value at the
    last position, each query head against its key/value group (the reference)."""
    heads, kv_heads, head_dim = kernels.attention_dims(SHAPE)
    q, k, v = (x @ layer.wqkv.t()).split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), -1)
    keys, values = layer.k_cache[0, :, :context].clone(), layer.v_cache[0, :, :context].clone()
    keys[:, -1], values[:, -1] = k.view(kv_heads, head_dim), v.view(kv_heads, head_dim)
    group = heads // kv_heads
    keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
    scores = torch.einsum("hd,hcd->hc", q.view(heads, head_dim), keys) / head_dim**0.5
    out = torch.einsum("hc,hcd->hd", torch.softmax(scores, -1), values)
    return out.reshape(1, heads * head_dim) @ layer.wo.t()


@pytest.mark.parametrize("context", [1, 3, 6, 8])
def test_masked_attention_over_the_rounded_length_equals_attention_over_the_context(context) -> None:
    gen = torch.Generator().manual_seed(0)
    layer = kernels.new_attention(SHAPE, 1, 8, CPU, gen)
    x = torch.randn(1, SHAPE.hidden_size, generator=gen)
    expected = _plain_attention(x, layer, context)
    at = kernels.Positions(8, CPU)
    at.set(context)
    got = kernels.attention(x, layer, SHAPE, at, kernels.attention_length(context, 8))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    heads, kv_heads, head_dim = kernels.attention_dims(SHAPE)
    k = (x @ layer.wqkv.t())[:, heads * head_dim : (heads + kv_heads) * head_dim]
    torch.testing.assert_close(layer.k_cache[0, :, context - 1], k.view(kv_heads, head_dim))  # written


def test_on_the_cpu_a_graph_pool_hands_back_the_call_itself() -> None:
    calls = []
    replay = kernels.GraphPool(CPU).capture(lambda: calls.append(1))
    replay()
    assert calls == [1]


def test_an_op_runs_the_whole_batch_from_its_capture_and_fewer_rows_eagerly() -> None:
    rows_seen = []
    op = _Op(rows_seen.append, batch=4, graphs=kernels.GraphPool(CPU))
    op(4)
    op(2)
    assert rows_seen == [4, 2]
