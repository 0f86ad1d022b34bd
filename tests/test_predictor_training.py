"""Training the pre-attention predictor on planted structure: it must recover the routing, random must not."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from predictor.baselines import RandomPredictor
from predictor.data import split_view
from predictor.evaluate import true_topk
from predictor.loss import RankTiers
from predictor.metrics import token_metrics
from predictor.preattention import PreAttentionPredictor
from predictor.stacked import StackedPredictorNet
from predictor.synthetic import planted_model, planted_source
from predictor.train import TrainConfig, prepare_data, validate

MODEL = planted_model(num_layers=3, first_moe_layer=1, num_experts=8, top_k=2, hidden_size=16)
TIERS = RankTiers.relative(MODEL.top_k, MODEL.num_experts)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls run fastest on one thread (and do not fight parallel test workers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def source():
    return planted_source(MODEL, num_sequences=60, seq_len=50, num_clusters=6, seed=0)


@pytest.fixture(scope="module")
def trained(source) -> PreAttentionPredictor:
    predictor = PreAttentionPredictor(
        TrainConfig(arch="1", hidden_size=64, epochs=20, batch_size=256), TIERS, "cpu", progress=False
    )
    predictor.fit(split_view(source, "train"), split_view(source, "val"))
    return predictor


def exact_match_per_layer(predictor, view) -> list[float]:
    prediction = predictor.predict(view, MODEL.top_k)
    truth = true_topk(view)
    out = []
    for j in range(len(view.moe_layers)):
        _, metrics = token_metrics(truth[:, j], prediction.ranked[:, j])
        out.append(float(next(m.values for m in metrics if m.metric == "exact_match").mean()))
    return out


def test_pre_attention_recovers_planted_routing_while_random_stays_at_chance(source, trained) -> None:
    test = split_view(source, "test")
    assert test.num_tokens >= 300
    assert min(exact_match_per_layer(trained, test)) >= 0.99
    chance = 1 / 28  # one of C(8, 2) sets
    assert max(exact_match_per_layer(RandomPredictor(seed=0), test)) < chance + 0.05


def test_each_layer_keeps_the_state_of_its_best_validation_epoch(source, trained) -> None:
    val = prepare_data(split_view(source, "val"), TIERS, torch.device("cpu"))
    loss, exact = validate(trained.net, val, MODEL.top_k, TIERS)
    np.testing.assert_allclose(loss.numpy(), trained.training["best_val_loss"], rtol=1e-5)
    np.testing.assert_allclose(exact.numpy(), trained.training["best_val_exact_match"])
    history = trained.training["history"]
    for j in range(2):
        assert trained.training["best_val_loss"][j] == pytest.approx(min(h["val_loss"][j] for h in history))


def test_saved_predictor_loads_back_with_identical_predictions(source, trained, tmp_path) -> None:
    entry = trained.save(tmp_path)
    loaded = PreAttentionPredictor.load(tmp_path, entry, MODEL, "cpu")
    view = split_view(source, "test")
    a, b = trained.predict(view, 4), loaded.predict(view, 4)
    np.testing.assert_array_equal(a.ranked, b.ranked)
    np.testing.assert_allclose(a.scores, b.scores)
    assert ((a.scores > 0) & (a.scores < 1)).all()
    assert (np.diff(a.scores, axis=2) <= 0).all()  # ranked by score


def test_stacked_layers_are_independent_networks() -> None:
    torch.manual_seed(0)
    for arch in ("1", "2", "linear"):
        net = StackedPredictorNet(arch, 3, 4, 8, 5).eval()
        x = torch.randn(3, 10, 4)
        out = net(x)
        assert out.shape == (3, 10, 5)
        x2 = x.clone()
        x2[0] += 1.0  # changing layer 0's input changes only layer 0's output
        out2 = net(x2)
        assert not torch.allclose(out[0], out2[0])
        torch.testing.assert_close(out[1:], out2[1:])


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="architecture"):
        StackedPredictorNet("3", 1, 4, 8, 5)
