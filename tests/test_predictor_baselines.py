"""The training-free predictors: FATE wiring (also on a real tiny HF model), previous token, frequency,
oracle and random, on hand-built activations."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from predictor.baselines import (
    CrossLayerPredictor,
    FrequencyPredictor,
    OraclePredictor,
    PreviousTokenPredictor,
    RandomPredictor,
    router_logits,
)
from predictor.data import ActivationView, ArraySource, layer_name
from predictor.synthetic import planted_model
from traces.schema import ModelShape

E, K, D = 5, 2, 3
MODEL = ModelShape("hand", "synthetic", 2, (0, 1), E, K, D, 8, 8)


def hand_source(tokens: list[tuple[int, int]], topk: list[list[int]], logits: bool = True) -> ArraySource:
    """Two MoE layers (0, 1) with the same routing ``topk`` on both; logits favour low expert ids."""
    n = len(tokens)
    rng = np.random.default_rng(0)
    arrays = {"embed": rng.standard_normal((n, D)).astype(np.float16)}
    for layer in (0, 1):
        arrays[layer_name(layer, "preattn")] = rng.standard_normal((n, D)).astype(np.float16)
        arrays[layer_name(layer, "postattn")] = rng.standard_normal((n, D)).astype(np.float16)
        arrays[layer_name(layer, "topk")] = np.array(topk, dtype=np.int16)
        if logits:
            arrays[layer_name(layer, "logits")] = np.tile(-np.arange(E, dtype=np.float16), (n, 1))
    routers = {layer: (rng.standard_normal((E, D)).astype(np.float32), None) for layer in (0, 1)}
    return ArraySource(MODEL, np.array(tokens, dtype=np.int32), arrays, routers)


def test_previous_token_uses_the_same_sequence_previous_position_whatever_the_row_order() -> None:
    # rows deliberately out of order; sequence 7 has a gap between positions 1 and 3
    tokens = [(7, 1), (5, 1), (5, 0), (7, 0), (7, 3)]
    topk = [[3, 4], [1, 2], [0, 4], [2, 3], [0, 1]]
    view = ActivationView(hand_source(tokens, topk))
    assert view.tokens.tolist() == [[5, 0], [5, 1], [7, 0], [7, 1], [7, 3]]
    ranked, scores = PreviousTokenPredictor().predict_layer(view, 1, 3)
    # the previous token's top-k in router order, then the best remaining expert by its logits (id 0 or 1)
    assert ranked.tolist() == [[-1, -1, -1], [0, 4, 1], [-1, -1, -1], [2, 3, 0], [-1, -1, -1]]
    assert np.isnan(scores[0]).all() and not np.isnan(scores[1]).any()


def test_frequency_counts_the_same_sequences_recent_window_and_breaks_ties_by_popularity() -> None:
    tokens = [(0, p) for p in range(5)] + [(1, 0)]
    topk = [[0, 1], [0, 2], [0, 2], [3, 4], [1, 2], [0, 1]]
    source = hand_source(tokens, topk)
    predictor = FrequencyPredictor(window=2)
    predictor.fit(ActivationView(source))  # popularity counts: 0: 4, 1: 3, 2: 3, 3: 1, 4: 1
    ranked, scores = predictor.predict_layer(ActivationView(source), 0, 3)
    # a sequence's first token has an empty window: training popularity, ties to the lower id
    assert ranked[0].tolist() == [0, 1, 2]
    assert ranked[5].tolist() == [0, 1, 2]
    # token 3 sees tokens 1 and 2: experts 0 and 2 twice each, the rest never
    assert ranked[3].tolist() == [0, 2, 1]
    np.testing.assert_allclose(scores[3], [1.0, 1.0, 0.0])
    # token 4 sees tokens 2 and 3: 0, 2, 3, 4 once each -> popularity decides: 0, 2, then 3 (ties 4, lower id)
    assert ranked[4].tolist() == [0, 2, 3]
    np.testing.assert_allclose(scores[4], [0.5, 0.5, 0.5])


def test_oracle_returns_the_true_top_k_first_then_the_router_ranking() -> None:
    view = ActivationView(hand_source([(0, 0), (0, 1)], [[3, 1], [4, 0]]))
    ranked, _ = OraclePredictor().predict_layer(view, 0, 4)
    assert ranked.tolist() == [[3, 1, 0, 2], [4, 0, 1, 2]]


def test_random_is_reproducible_from_its_seed_and_differs_between_seeds() -> None:
    view = ActivationView(hand_source([(0, p) for p in range(50)], [[0, 1]] * 50))
    a, _ = RandomPredictor(seed=1).predict_layer(view, 0, E)
    b, _ = RandomPredictor(seed=1).predict_layer(view, 0, E)
    c, _ = RandomPredictor(seed=2).predict_layer(view, 0, E)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (np.sort(a, axis=1) == np.arange(E)).all()


def test_cross_layer_feeds_the_previous_layers_router_input_to_this_layers_router() -> None:
    source = hand_source([(0, p) for p in range(6)], [[0, 1]] * 6)
    view = ActivationView(source)
    ranked, scores = CrossLayerPredictor().predict_layer(view, 1, 3)
    logits = router_logits(source.arrays[layer_name(0, "postattn")], *source.routers[1])
    np.testing.assert_array_equal(ranked, np.argsort(-logits, axis=1, kind="stable")[:, :3])
    assert (np.diff(scores, axis=1) <= 0).all()
    # decoder layer 0 has no previous layer: no prediction, unless the named embedding variant is used
    ranked0, _ = CrossLayerPredictor().predict_layer(view, 0, 3)
    assert (ranked0 == -1).all()
    embed, _ = CrossLayerPredictor(embed_at_first_layer=True).predict_layer(view, 0, 3)
    from_embed = router_logits(source.arrays["embed"], *source.routers[0])
    np.testing.assert_array_equal(embed, np.argsort(-from_embed, axis=1, kind="stable")[:, :3])


def test_cross_layer_has_a_prediction_at_a_first_moe_layer_above_a_dense_layer() -> None:
    from predictor.synthetic import planted_source

    source = planted_source(planted_model(num_layers=3, first_moe_layer=1), num_sequences=2, seq_len=5)
    ranked, _ = CrossLayerPredictor().predict_layer(ActivationView(source), 1, 2)
    assert (ranked >= 0).all()


def test_fate_with_a_tiny_qwen3_moe_reproduces_the_routers_top_k_when_fed_its_own_input() -> None:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    model = Qwen3MoeForCausalLM(config).eval()
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(
            layer.post_attention_layernorm.register_forward_hook(
                lambda _m, _i, out, i=i: captured.__setitem__(f"norm{i}", out.reshape(-1, 32))
            )
        )
        hooks.append(
            layer.mlp.gate.register_forward_hook(
                lambda _m, _i, out, i=i: captured.__setitem__(f"topk{i}", out[2].reshape(-1, 2))
            )
        )
    with torch.no_grad():
        model(torch.randint(0, 64, (2, 16)))
    for hook in hooks:
        hook.remove()
    n = 32
    shape = ModelShape("tiny-qwen3", "qwen3_moe", 4, (1, 2, 3), 8, 2, 32, 16, 3 * 32 * 16 * 2)
    # decoder layer i of the HF model plays MoE layer i + 1 here, so that "layer l-1's router input" is
    # exactly the HF router's own input: the wiring must then reproduce the router's choice exactly
    arrays = {layer_name(i, "postattn"): captured[f"norm{i}"].numpy() for i in range(3)}
    routers = {i + 1: (model.model.layers[i].mlp.gate.weight.detach().numpy(), None) for i in range(3)}
    tokens = np.stack([np.repeat([0, 1], 16), np.tile(np.arange(16), 2)], axis=1)
    view = ActivationView(ArraySource(shape, tokens, arrays, routers))
    for i in range(3):
        ranked, _ = CrossLayerPredictor().predict_layer(view, i + 1, 2)
        assert ranked.shape == (n, 2)
        np.testing.assert_array_equal(ranked, captured[f"topk{i}"].numpy())  # same experts, same order


def test_predictors_without_router_logits_continue_past_the_top_k_in_expert_id_order() -> None:
    view = ActivationView(hand_source([(0, 0), (0, 1)], [[3, 1], [4, 0]], logits=False))
    ranked, _ = OraclePredictor().predict_layer(view, 0, 4)
    assert ranked.tolist() == [[3, 1, 0, 2], [4, 0, 1, 2]]
    ranked, _ = PreviousTokenPredictor().predict_layer(view, 0, 4)
    assert ranked.tolist() == [[-1, -1, -1, -1], [3, 1, 0, 2]]
