"""Reference-model recipes: geometry, balance loss, quality numbers and a tiny CPU training run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from traces.architectures import model_shape
from traces.collect import load_model
from traces.corpus import CorpusBundle, build_bundle
from traces.refmodels import (
    RECIPE_FILE,
    RECIPES,
    balance_stats,
    build_model,
    evaluate,
    load_balancing_loss,
    save,
    train,
    unigram_baseline,
)


@pytest.mark.parametrize(
    ("name", "experts", "top_k", "moe_layers", "shared"),
    [
        ("deepseek-v2-lite-like", 64, 6, (1, 2), 2),
        ("qwen3-30b-a3b-like", 128, 8, (0, 1, 2), 0),
        ("phi-mini-moe-like", 16, 2, (0, 1, 2), 0),
    ],
)
def test_recipes_have_the_routing_geometry_of_the_models_they_mirror(
    name, experts, top_k, moe_layers, shared
):
    model = build_model(RECIPES[name], vocab_size=300, eos_id=0, smoke=True)
    shape = model_shape(model, name)
    assert (shape.num_experts, shape.top_k, shape.moe_layers) == (experts, top_k, moe_layers)
    assert shape.num_shared_experts == shared
    full = RECIPES[name].config
    assert full["hidden_size"] == 512 and full["num_hidden_layers"] == 8


def test_balance_loss_is_one_when_balanced_and_grows_with_imbalance():
    balanced_logits = torch.zeros(8, 4)
    balanced_ids = torch.arange(8).reshape(8, 1) % 4
    assert float(load_balancing_loss(balanced_logits, balanced_ids, 4)) == pytest.approx(1.0)
    skewed_logits = torch.tensor([[5.0, 0, 0, 0]]).repeat(8, 1)
    skewed_ids = torch.zeros(8, 1, dtype=torch.long)
    assert float(load_balancing_loss(skewed_logits, skewed_ids, 4)) > 3.5


def test_balance_stats_by_hand():
    stats = balance_stats(np.array([6, 2, 0, 0]))
    assert stats["max_over_mean"] == pytest.approx(3.0)
    assert stats["min_over_mean"] == 0.0
    assert stats["unused_experts"] == 2
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4)
    assert stats["normalized_entropy"] == pytest.approx(entropy)


def test_unigram_baseline_by_hand():
    train_tokens = np.array([0, 0, 1])  # add-one counts over 3 tokens: 3, 2, 1 of 6
    loss = unigram_baseline(train_tokens, np.array([0, 2]), vocab_size=3)
    assert loss == pytest.approx(-(math.log(3 / 6) + math.log(1 / 6)) / 2)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    sentences = ["the cache holds hot experts", "a token picks two experts", "copies run over the bus"]
    for i in range(30):
        text = ". ".join(rng.choice(sentences, size=40)) + "."
        (root / f"doc{i}.txt").write_text(f"Doc {i}\n\n{text}\n")
    build_bundle([str(root)], root / "b.tar.xz", vocab_size=300, validation_fraction=0.2, test_fraction=0.2)
    return CorpusBundle(root / "b.tar.xz")


@pytest.mark.slow
def test_tiny_training_learns_and_the_checkpoint_carries_its_recipe(tiny_bundle, tmp_path):
    recipe = RECIPES["phi-mini-moe-like"]
    result = train(recipe, tiny_bundle, "cpu", minutes=1.0, smoke=True, max_steps=25, log=lambda _: None)
    report = result.report
    assert report["steps"] == 25 and report["tokens_seen"] == 25 * 4 * 64
    quality = evaluate(result.model, tiny_bundle, "cpu", max_tokens=1024, seq_len=64)
    # untrained, the loss is about log(vocab) = 5.7 nats; 25 steps on this repetitive text cut it by ~1.5
    assert quality["validation_loss"] < math.log(tiny_bundle.vocab_size) - 1.0
    assert set(quality["router_balance"]) == {"0", "1", "2"}
    save(result, quality, tmp_path / "ckpt")
    recipe_doc = json.loads((tmp_path / "ckpt" / RECIPE_FILE).read_text())
    assert recipe_doc["quality"]["validation_loss"] == quality["validation_loss"]
    loaded = load_model(tmp_path / "ckpt", torch.device("cpu"))
    assert not loaded.random_weights
    assert loaded.recipe["recipe"] == "phi-mini-moe-like"
    assert loaded.shape.num_experts == 16
