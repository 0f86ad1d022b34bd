"""The one interface every expert predictor implements.

A predictor serves all MoE layers of one model. ``fit`` learns from the training tokens (a no-op for the
training-free ones); ``predict`` returns, for every token and MoE layer, a ranked list of ``m`` experts,
best first, with a score per entry. What a score means depends on the predictor (``score_meaning``):
an estimated probability that the expert is among the router's top-k for the learned predictors, a
router probability for cross-layer and oracle, a recent selection frequency for frequency. A row of
``-1`` (scores NaN) means the predictor has nothing to say for that token and layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor.data import ActivationView


@dataclass(frozen=True)
class Prediction:
    """Ranked experts ``ranked`` int16 [N, L, m] (-1 = none) and ``scores`` float32 [N, L, m] (NaN = none).

    The L axis follows ``model.moe_layers``, like ``traces.Trace``.
    """

    ranked: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.ranked.shape != self.scores.shape or self.ranked.ndim != 3:
            raise ValueError(f"ranked {self.ranked.shape} and scores {self.scores.shape} must be [N, L, m]")

    @property
    def width(self) -> int:
        return int(self.ranked.shape[2])

    def truncated(self, m: int) -> Prediction:
        """The first ``m`` entries of every ranked list."""
        return Prediction(self.ranked[:, :, :m], self.scores[:, :, :m])


class ExpertPredictor(ABC):
    """Predicts the experts of every MoE layer of one model for each token (see module docstring)."""

    #: Name used in tables and in the trace column ``pred.<name>``.
    name: str = ""
    #: "learned", "training-free", "baseline", "oracle" or "random".
    kind: str = ""
    #: What ``Prediction.scores`` holds for this predictor, in words.
    score_meaning: str = ""

    def fit(self, train: ActivationView, val: ActivationView | None = None) -> None:  # noqa: B027
        """Learn from the training tokens. Training-free predictors keep this no-op."""

    @abstractmethod
    def predict_layer(self, view: ActivationView, layer: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Ranked int16 [N, m] and scores float32 [N, m] for decoder layer ``layer`` (an MoE layer)."""

    def predict(self, view: ActivationView, m: int) -> Prediction:
        """Predictions for every MoE layer of ``view``'s tokens, ranked lists of width ``m``."""
        ranked = np.empty((view.num_tokens, len(view.moe_layers), m), dtype=np.int16)
        scores = np.empty(ranked.shape, dtype=np.float32)
        for j, layer in enumerate(view.moe_layers):
            ranked[:, j], scores[:, j] = self.predict_layer(view, layer, m)
        return Prediction(ranked, scores)

    def config(self) -> dict[str, Any]:
        """Settings that define this predictor (recorded in traces and tables)."""
        return {"score_meaning": self.score_meaning}
