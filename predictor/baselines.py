"""The predictors the paper's method is measured against, all cheap and numpy-only.

- ``CrossLayerPredictor`` (FATE, arXiv 2502.12224): layer l-1's router input (its
  ``post_attention_layernorm`` output) times layer l's own router weights (+ bias); training-free.
  At decoder layer 0 there is no previous layer: no prediction, unless the explicitly named variant
  ``cross-layer-embed`` is asked for, which uses the embedding output there instead. Models whose first
  MoE layer is not decoder layer 0 (DeepSeek: layer 0 is dense) do have a previous layer there.
- ``PreviousTokenPredictor``: the previous token of the same sequence at the same layer; the first token
  of a sequence (or after a gap in positions) has no prediction.
- ``FrequencyPredictor``: per-layer popularity over a sliding window of the same sequence's most recent
  tokens, ties (and the empty window) by training-set popularity.
- ``OraclePredictor``: the router's own top-k (an upper bound, and a check of the plumbing).
- ``RandomPredictor``: a seeded uniformly random ranking (the chance level).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from predictor.base import ExpertPredictor
from predictor.data import ActivationView, layer_name
from predictor.ranking import empty_ranking, rank_with_prefix, softmax, top_m


def router_logits(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """A linear router's logits ``x @ weight.T + bias`` in float32 ([N, d] x [E, d] -> [N, E])."""
    logits = x.astype(np.float32) @ weight.astype(np.float32).T
    if bias is not None:
        logits += bias.astype(np.float32)
    return logits


def fill_scores(logits: np.ndarray | None, n: int, num_experts: int) -> np.ndarray:
    """Scores that order experts beyond a known prefix: probabilities from ``logits``, or zeros."""
    return softmax(logits) if logits is not None else np.zeros((n, num_experts), dtype=np.float32)


class CrossLayerPredictor(ExpertPredictor):
    """FATE: the previous decoder layer's router input fed to this layer's router (see module docstring)."""

    kind = "training-free"
    score_meaning = "router probability (softmax of the predicted router logits)"

    def __init__(self, embed_at_first_layer: bool = False) -> None:
        self.embed_at_first_layer = embed_at_first_layer
        self.name = "cross-layer-embed" if embed_at_first_layer else "cross-layer"

    def input_name(self, layer: int) -> str | None:
        """The activation this predictor feeds to ``layer``'s router, or None if it has none."""
        if layer > 0:
            return layer_name(layer - 1, "postattn")
        return "embed" if self.embed_at_first_layer else None

    def predict_layer(self, view: ActivationView, layer: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.input_name(layer)
        if name is None:
            return empty_ranking(view.num_tokens, m)
        logits = router_logits(view.load(name), *view.router(layer))
        ranked, _ = top_m(logits, m)
        probs = np.take_along_axis(softmax(logits), ranked.astype(np.int64), axis=1)
        return ranked, probs

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "first_layer": "embedding output" if self.embed_at_first_layer else "none",
        }


class PreviousTokenPredictor(ExpertPredictor):
    """The same layer's routing of the previous token in the same sequence."""

    name = "previous-token"
    kind = "baseline"
    score_meaning = "previous token's router probability"

    def predict_layer(self, view: ActivationView, layer: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        ranked, scores = empty_ranking(view.num_tokens, m)
        prev = view.previous_row()
        has = prev >= 0
        if not has.any():
            return ranked, scores
        topk = view.topk(layer)[prev[has]]
        logits = view.logits(layer)
        probs = fill_scores(
            None if logits is None else logits[prev[has]], int(has.sum()), view.model.num_experts
        )
        ranked[has] = rank_with_prefix(topk, probs, m)
        scores[has] = np.take_along_axis(probs, ranked[has].astype(np.int64), axis=1)
        return ranked, scores


class FrequencyPredictor(ExpertPredictor):
    """Experts most often selected by the same sequence's last ``window`` tokens at this layer."""

    name = "frequency"
    kind = "baseline"
    score_meaning = "fraction of the recent window's tokens that selected the expert"

    def __init__(self, window: int = 32) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self.popularity: dict[int, np.ndarray] = {}

    def fit(self, train: ActivationView, val: ActivationView | None = None) -> None:
        """Training-set popularity per layer: the tie-breaker and the answer for a sequence's first token."""
        num_experts = train.model.num_experts
        for layer in train.moe_layers:
            counts = np.bincount(train.topk(layer).reshape(-1), minlength=num_experts)
            self.popularity[layer] = counts / max(1, train.num_tokens)

    def predict_layer(self, view: ActivationView, layer: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        num_experts = view.model.num_experts
        popularity = self.popularity.get(layer, np.zeros(num_experts))
        topk = view.topk(layer)
        n = view.num_tokens
        selected = np.zeros((n + 1, num_experts), dtype=np.int32)
        selected[np.arange(1, n + 1)[:, None], topk] = 1  # a token's k experts are distinct
        cumulative = np.cumsum(selected, axis=0)  # cumulative[t] = selections in rows [0, t)
        rows = np.arange(n)
        low = np.maximum(rows - self.window, view.sequence_start_row())
        counts = cumulative[rows] - cumulative[low]
        length = (rows - low)[:, None]
        frequency = np.where(length > 0, counts / np.maximum(length, 1), popularity[None, :])
        # integer counts decide; popularity (< 1) only breaks ties among equal counts
        ranked, _ = top_m(counts + 0.5 * popularity[None, :], m)
        return ranked, np.take_along_axis(frequency, ranked.astype(np.int64), axis=1).astype(np.float32)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "window_tokens": self.window}


class OraclePredictor(ExpertPredictor):
    """The router's true top-k, continued by the router's own ranking of the other experts."""

    name = "oracle"
    kind = "oracle"
    score_meaning = "true router probability"

    def predict_layer(self, view: ActivationView, layer: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        topk = view.topk(layer)
        probs = fill_scores(view.logits(layer), view.num_tokens, view.model.num_experts)
        ranked = rank_with_prefix(topk, probs, m)
        return ranked, np.take_along_axis(probs, ranked.astype(np.int64), axis=1)


class RandomPredictor(ExpertPredictor):
    """A uniformly random ranking per token and layer, reproducible from ``seed``."""

    name = "random"
    kind = "random"
    score_meaning = "k / E for every expert (no information)"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def predict_layer(self, view: ActivationView, layer: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, layer])
        num_experts = view.model.num_experts
        ranked, _ = top_m(rng.random((view.num_tokens, num_experts)), m)
        return ranked, np.full(ranked.shape, view.model.top_k / num_experts, dtype=np.float32)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seed": self.seed}
