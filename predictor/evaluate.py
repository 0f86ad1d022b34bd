"""Scoring predictors on one split of an activation store, and writing their predictions into a trace.

Every predictor ranks experts for the same tokens; metrics come from the store's router top-k (the
labels), with intervals from one shared sequence bootstrap. ``attach_to_trace`` copies the predictions
into a trace collected in the same run, restricted to the same split's sequences, after checking that
the trace's routing is the store's routing token by token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from predictor.base import ExpertPredictor, Prediction
from predictor.data import ActivationView
from predictor.metrics import DEFAULT_THRESHOLDS, SequenceBootstrap, paper_overprovision, token_metrics
from predictor.tables import MEAN_LAYER
from traces.fileio import InputError
from traces.schema import PredictorInfo
from traces.trace import Trace


@dataclass(frozen=True)
class EvaluationSettings:
    """Which over-provisioning widths and confidence thresholds to report, and the bootstrap."""

    k_primes: tuple[int, ...]
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    num_resamples: int = 1000
    seed: int = 0


def default_k_primes(top_k: int, num_experts: int, extra: Sequence[int] = ()) -> tuple[int, ...]:
    """The paper's k' for this k, 2k, and any asked for, each capped at E."""
    wanted = {paper_overprovision(top_k, num_experts), 2 * top_k, *extra}
    return tuple(sorted({min(num_experts, max(top_k, int(k))) for k in wanted}))


def true_topk(view: ActivationView) -> np.ndarray:
    """The router's top-k of every token and MoE layer, int64 [N, L, k]."""
    return np.stack([view.topk(layer) for layer in view.moe_layers], axis=1)


def accuracy_rows(
    model_name: str,
    predictor_name: str,
    truth: np.ndarray,
    prediction: Prediction,
    moe_layers: Sequence[int],
    bootstrap: SequenceBootstrap,
    settings: EvaluationSettings,
) -> list[dict[str, Any]]:
    """Long-format table rows of one predictor: every metric per MoE layer and as mean over layers."""
    n, num_layers, _ = truth.shape
    per_layer = []
    for j in range(num_layers):
        covered, metrics = token_metrics(
            truth[:, j],
            prediction.ranked[:, j],
            prediction.scores[:, j],
            settings.k_primes,
            settings.thresholds,
        )
        per_layer.append((covered.astype(np.float64), metrics))
    rows = []

    def add(layer: int, metric: str, k_prime: int, numerator: np.ndarray, denominator: np.ndarray) -> None:
        value, low, high = bootstrap.mean(numerator, denominator)
        coverage = float(denominator.sum() / (n * (num_layers if layer == MEAN_LAYER else 1))) if n else 0.0
        rows.append(
            {
                "model": model_name,
                "predictor": predictor_name,
                "layer": layer,
                "metric": metric,
                "k_prime": k_prime,
                "value": value,
                "ci_low": low,
                "ci_high": high,
                "num_tokens": n,
                "coverage": coverage,
            }
        )

    for j, layer in enumerate(moe_layers):
        covered, metrics = per_layer[j]
        for metric in metrics:
            add(layer, metric.metric, metric.k_prime, metric.values * covered, covered)
    for i, metric in enumerate(per_layer[0][1]):
        numerator = sum(per_layer[j][1][i].values * per_layer[j][0] for j in range(num_layers))
        denominator = sum(per_layer[j][0] for j in range(num_layers))
        add(MEAN_LAYER, metric.metric, metric.k_prime, numerator, denominator)
    return rows


def evaluate_predictors(
    view: ActivationView,
    predictors: Sequence[ExpertPredictor],
    settings: EvaluationSettings,
    keep_width: int,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Prediction]]:
    """Score every predictor on ``view``; returns the table rows and each prediction cut to ``keep_width``."""
    model = view.model
    width = min(model.num_experts, max(keep_width, model.top_k, *settings.k_primes))
    truth = true_topk(view)
    bootstrap = SequenceBootstrap(view.seq_id, settings.num_resamples, seed=settings.seed)
    rows: list[dict[str, Any]] = []
    kept: dict[str, Prediction] = {}
    for predictor in tqdm(predictors, desc="evaluate", disable=not progress, unit="predictor", leave=False):
        prediction = predictor.predict(view, width)
        rows += accuracy_rows(
            model.name, predictor.name, truth, prediction, view.moe_layers, bootstrap, settings
        )
        kept[predictor.name] = prediction.truncated(keep_width)
    return rows, kept


def headline_metrics(
    rows: Sequence[dict[str, Any]], predictor_name: str, first_layer: int, k_prime: int
) -> dict[str, Any]:
    """A predictor's first-MoE-layer and mean-over-layers exact match, k' hit, top-1 and coverage."""
    out: dict[str, Any] = {}
    for layer, label in ((first_layer, "first_moe_layer"), (MEAN_LAYER, "mean_over_layers")):
        picked = {}
        for r in rows:
            if r["predictor"] != predictor_name or r["layer"] != layer:
                continue
            if r["metric"] in ("exact_match", "top1", "recall_at_k"):
                picked[r["metric"]] = r["value"]
                picked["coverage"] = r["coverage"]
            elif r["metric"] == "overprovision_hit" and r["k_prime"] == k_prime:
                picked[f"overprovision_hit@{k_prime}"] = r["value"]
        out[label] = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in picked.items()}
    return out


def trace_rows_in_view(
    trace: Trace, view: ActivationView, trace_path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """For the trace tokens of ``view``'s split: ``(trace token indices, matching view rows)``.

    Raises InputError when a trace token is missing from the store or routes differently there.
    """
    if tuple(trace.metadata.model.moe_layers) != tuple(view.moe_layers):
        raise InputError(
            trace_path,
            f"trace MoE layers {list(trace.metadata.model.moe_layers)} differ from the activation store's "
            f"{list(view.moe_layers)}",
        )
    trace_keys = (trace.seq_id.astype(np.int64) << 32) | trace.pos.astype(np.int64)
    view_keys = (view.seq_id.astype(np.int64) << 32) | view.pos.astype(np.int64)
    in_split = np.isin(trace.seq_id, np.unique(view.seq_id))
    token_index = np.flatnonzero(in_split)
    if len(token_index) == 0:
        raise InputError(trace_path, "no token of the trace belongs to the evaluated split's sequences")
    where = np.minimum(np.searchsorted(view_keys, trace_keys[token_index]), len(view_keys) - 1)
    found = view_keys[where] == trace_keys[token_index]
    if not found.all():
        missing = int((~found).sum())
        first = int(token_index[np.flatnonzero(~found)[0]])
        raise InputError(
            trace_path,
            f"{missing} tokens of the evaluated sequences are not in the activation store (first: seq_id="
            f"{int(trace.seq_id[first])}, pos={int(trace.pos[first])})",
        )
    trace_sets = np.sort(trace.experts[token_index].astype(np.int64), axis=2)
    store_sets = np.sort(true_topk(view)[where], axis=2)
    differ = (trace_sets != store_sets).any(axis=2)
    if differ.any():
        raise InputError(
            trace_path,
            f"routing differs from the activation store at {int(differ.sum())} of {differ.size} "
            "token-layers: trace and activations are not from the same collection run",
        )
    return token_index, where


def attach_to_trace(
    trace: Trace,
    view: ActivationView,
    predictions: dict[str, Prediction],
    infos: dict[str, PredictorInfo],
    with_scores: Sequence[str],
    trace_path: str | Path,
) -> Trace:
    """``trace`` restricted to ``view``'s sequences, carrying each prediction as ``pred.<name>``.

    ``with_scores`` names the predictors whose scores also go in (``conf.<name>``).
    """
    token_index, rows = trace_rows_in_view(trace, view, trace_path)
    out = trace.select_tokens(token_index)
    for name, prediction in predictions.items():
        scores = prediction.scores[rows] if name in with_scores else None
        out = out.with_prediction(infos[name], prediction.ranked[rows], scores)
    return out
