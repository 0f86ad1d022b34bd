"""Synthetic traces: valid, deterministic, marked synthetic, and every knob moves the statistic it names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.schema import ModelShape
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import read_trace, write_trace


def tiny_shape(num_experts: int = 16, top_k: int = 4, num_layers: int = 4) -> ModelShape:
    return ModelShape(
        name="tiny",
        architecture="mixtral",
        num_layers=num_layers,
        moe_layers=tuple(range(num_layers)),
        num_experts=num_experts,
        top_k=top_k,
        hidden_size=64,
        expert_intermediate_size=128,
        bytes_per_expert=3 * 64 * 128 * 2,
    )


def spec(**overrides) -> SyntheticSpec:
    base = dict(shape=tiny_shape(), num_sequences=4, tokens_per_sequence=500, seed=3)
    base.update(overrides)
    return SyntheticSpec(**base)


def top_expert_share(experts: np.ndarray, num_experts: int) -> float:
    """Mean over layers of the share of routed slots going to the layer's most used expert."""
    shares = []
    for layer in range(experts.shape[1]):
        counts = np.bincount(experts[:, layer].ravel(), minlength=num_experts)
        shares.append(counts.max() / counts.sum())
    return float(np.mean(shares))


def previous_token_hit_rate(trace) -> float:
    """Fraction of a token's experts that the previous token of the same sequence also used (same layer)."""
    e = trace.experts
    same_seq = trace.seq_id[1:] == trace.seq_id[:-1]
    hits = (e[1:, :, :, None] == e[:-1, :, None, :]).any(axis=3)
    return float(hits[same_seq].mean())


def cross_layer_predictability(experts: np.ndarray, num_experts: int) -> float:
    """Share of (layer l-1 expert, layer l expert) co-occurrences of a token explained by the most frequent
    layer-l partner of each layer-(l-1) expert: 1 when layer l is a fixed function of layer l-1."""
    explained, total = 0, 0
    for layer in range(1, experts.shape[1]):
        prev = np.repeat(experts[:, layer - 1], experts.shape[2], axis=1).ravel().astype(np.int64)
        nxt = np.tile(experts[:, layer], (1, experts.shape[2])).ravel().astype(np.int64)
        co = np.bincount(prev * num_experts + nxt, minlength=num_experts**2).reshape(num_experts, -1)
        explained += co.max(axis=1).sum()
        total += co.sum()
    return explained / total


def test_trace_has_requested_shape_and_valid_routing(tmp_path):
    trace = generate_trace(spec(predictor_accuracy={"p": 0.8}, prediction_width=6, include_oracle=True))
    assert trace.experts.shape == (2000, 4, 4)
    assert trace.experts.dtype == np.int16
    ordered = np.sort(trace.experts, axis=-1)
    assert (ordered[..., 1:] != ordered[..., :-1]).all()
    assert trace.experts.min() >= 0 and trace.experts.max() < 16
    assert (trace.weights > 0).all()
    np.testing.assert_allclose(trace.weights.sum(-1), 1.0, rtol=1e-5)
    assert (np.diff(trace.weights, axis=-1) <= 0).all()
    assert trace.predictions["p"].shape == (2000, 4, 6)
    assert np.array_equal(trace.predictions["oracle"], trace.experts)
    assert list(trace.seq_starts) == [0, 500, 1000, 1500, 2000]
    path = tmp_path / "t.parquet"
    write_trace(trace, path)
    again = read_trace(path)
    assert np.array_equal(again.experts, trace.experts)
    assert np.array_equal(again.predictions["p"], trace.predictions["p"])


def test_provenance_says_synthetic_and_records_recipe():
    trace = generate_trace(spec(popularity_skew=1.7))
    prov = trace.metadata.provenance
    assert prov.origin == "synthetic"
    assert "synthetic" in prov.notes
    assert prov.recipe["popularity_skew"] == 1.7
    assert prov.recipe["shape"] == "tiny"


def test_same_seed_same_trace_other_seed_other_trace():
    a, b = generate_trace(spec(seed=5)), generate_trace(spec(seed=5))
    c = generate_trace(spec(seed=6))
    assert np.array_equal(a.experts, b.experts) and np.array_equal(a.weights, b.weights)
    assert not np.array_equal(a.experts, c.experts)


def test_adding_a_predictor_leaves_routing_unchanged():
    plain = generate_trace(spec())
    with_pred = generate_trace(spec(predictor_accuracy={"p": 0.5}))
    assert np.array_equal(plain.experts, with_pred.experts)


def test_higher_skew_concentrates_traffic_on_top_expert():
    shares = [top_expert_share(generate_trace(spec(popularity_skew=s)).experts, 16) for s in (0.0, 1.0, 2.0)]
    assert shares[0] < shares[1] < shares[2]
    assert shares[0] < 1.5 / 16  # near uniform: each expert gets about 1/16 of the slots


def test_hot_experts_differ_between_layers():
    experts = generate_trace(spec(popularity_skew=2.0, cross_layer_corr=0.0)).experts
    hottest = {int(np.bincount(experts[:, layer].ravel()).argmax()) for layer in range(4)}
    assert len(hottest) > 1


@pytest.mark.parametrize("reuse", [0.0, 0.5, 0.9])
def test_reuse_prob_sets_a_floor_on_previous_token_hits(reuse):
    rate = previous_token_hit_rate(generate_trace(spec(reuse_prob=reuse, popularity_skew=0.0)))
    assert reuse - 0.03 <= rate
    # with uniform popularity a fresh draw hits the previous set with probability about k/E
    assert rate <= reuse + (1 - reuse) * (4 / 16) + 0.05


def test_higher_reuse_raises_previous_token_hits():
    rates = [previous_token_hit_rate(generate_trace(spec(reuse_prob=r))) for r in (0.0, 0.4, 0.8)]
    assert rates[0] < rates[1] < rates[2]


def test_cross_layer_corr_makes_layers_predictable_from_the_previous_one():
    values = [
        cross_layer_predictability(generate_trace(spec(cross_layer_corr=c, popularity_skew=0.5)).experts, 16)
        for c in (0.0, 0.5, 0.95)
    ]
    assert values[0] < values[1] < values[2]


@pytest.mark.parametrize("accuracy", [0.0, 0.5, 0.93, 1.0])
def test_prediction_exact_match_matches_requested_accuracy(accuracy):
    trace = generate_trace(spec(predictor_accuracy={"p": accuracy}))
    pred = trace.predictions["p"]
    exact = (np.sort(pred, -1) == np.sort(trace.experts, -1)).all(-1).mean()
    assert abs(exact - accuracy) < 0.02
    assert trace.metadata.predictors[0].metrics["exact_match"] == pytest.approx(exact)


def test_wider_predictions_recover_displaced_experts():
    trace = generate_trace(spec(predictor_accuracy={"p": 0.5}, prediction_width=8))
    pred, truth = trace.predictions["p"], trace.experts
    exact = (np.sort(pred[..., :4], -1) == np.sort(truth, -1)).all(-1)
    covered = (truth[..., :, None] == pred[..., None, :]).any(-1).all(-1)
    assert covered.mean() > exact.mean() + 0.3
    assert covered[exact].all()


@settings(max_examples=25, deadline=None)
@given(
    num_experts=st.integers(2, 24),
    data=st.data(),
    skew=st.floats(0, 3),
    reuse=st.floats(0, 1),
    corr=st.floats(0, 1),
    accuracy=st.floats(0, 1),
)
def test_any_knobs_give_distinct_in_range_experts_and_predictions(
    num_experts, data, skew, reuse, corr, accuracy
):
    top_k = data.draw(st.integers(1, num_experts - 1))
    width = data.draw(st.integers(top_k, num_experts))
    trace = generate_trace(
        SyntheticSpec(
            shape=tiny_shape(num_experts, top_k, num_layers=3),
            num_sequences=2,
            tokens_per_sequence=30,
            popularity_skew=skew,
            reuse_prob=reuse,
            cross_layer_corr=corr,
            predictor_accuracy={"p": accuracy},
            prediction_width=width,
        )
    )
    for ranked in (trace.experts, trace.predictions["p"]):
        ordered = np.sort(ranked, axis=-1)
        assert (ordered[..., 1:] != ordered[..., :-1]).all()
        assert ranked.min() >= 0 and ranked.max() < num_experts


def test_every_expert_routed_makes_every_prediction_exact():
    trace = generate_trace(spec(shape=tiny_shape(4, 4), predictor_accuracy={"p": 1.0}))
    assert (np.sort(trace.predictions["p"], -1) == np.arange(4)).all()


@pytest.mark.parametrize(
    "bad",
    [
        {"reuse_prob": 1.5},
        {"cross_layer_corr": -0.1},
        {"predictor_accuracy": {"p": 2.0}},
        {"prediction_width": 3},
        {"prediction_width": 17},
        {"popularity_skew": -1.0},
        {"num_sequences": 0},
    ],
)
def test_invalid_spec_is_rejected(bad):
    with pytest.raises(ValueError):
        spec(**bad)


def test_qwen3_sized_trace_builds():
    shape = KNOWN_SHAPES["qwen3-30b-a3b"]
    trace = generate_trace(
        spec(
            shape=shape,
            num_sequences=2,
            tokens_per_sequence=200,
            predictor_accuracy={"p": 0.9},
            prediction_width=12,
        )
    )
    assert trace.experts.shape == (400, 48, 8)
    assert trace.predictions["p"].shape == (400, 48, 12)
