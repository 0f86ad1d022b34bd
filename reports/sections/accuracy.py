"""Predictor accuracy: per layer for every predictor, and the first MoE layer beside the paper's numbers.

Input: the long accuracy tables written by ``moe-prefetch predictor evaluate`` (columns model, predictor,
layer (-1 = mean over MoE layers), metric, k_prime, value, ci_low, ci_high, num_tokens, coverage). Without
one, the same table is computed from the ``pred.<name>`` columns of the input traces against their own
routing (every token the trace holds), with the metrics of ``predictor.evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from predictor.base import Prediction
from predictor.evaluate import EvaluationSettings, accuracy_rows, default_k_primes
from predictor.metrics import SequenceBootstrap
from predictor.tables import MEAN_LAYER, PAPER_FIRST_LAYER, to_arrow
from reports.inputs import ReportInputs, TableInput, TraceInput, display_path
from reports.page import Figure, Note, Omitted, Section, Table
from reports.style import distinct_colours, figure, pct

KEY = "accuracy"
TITLE = "Predictor accuracy"
HEADLINE_METRIC = "exact_match"
METRIC_LABELS = {
    "exact_match": "exact match",
    "overprovision_hit": "over-provisioning hit",
    "top1": "top-1 in true set",
    "recall_at_k": "recall@k",
}


def build(inputs: ReportInputs) -> Section | Omitted:
    tables = inputs.accuracy or [trace_accuracy_table(t) for t in inputs.traces if t.trace.predictions]
    if not tables:
        return Omitted(
            KEY, TITLE, "no accuracy table (moe-prefetch predictor evaluate) and no trace with predictions"
        )
    blocks: list[Any] = []
    for table_input in tables:
        rows = table_input.table.to_pylist()
        for model in dict.fromkeys(r["model"] for r in rows):
            model_rows = [r for r in rows if r["model"] == model]
            blocks += _model_blocks(model, model_rows, inputs.shape_of(model), table_input.source)
    blocks.append(_paper_table())
    return Section(
        KEY,
        TITLE,
        blocks,
        intro="Every predictor scored on the same held-out tokens of the same model. Exact match: the "
        "predicted top-k set equals the router's. Intervals are 95% bootstrap intervals over sequences.",
        synthetic=any(t.synthetic for t in tables),
    )


def trace_accuracy_table(item: TraceInput, bootstrap_resamples: int = 200) -> TableInput:
    """Accuracy of the trace's prediction columns against its own routing, on every token it holds."""
    trace = item.trace
    truth = trace.experts.astype(np.int64)
    k_primes = tuple(
        k for k in default_k_primes(trace.top_k, trace.num_experts)
        if all(p.shape[2] >= k for p in trace.predictions.values())
    )  # fmt: skip
    evaluation = EvaluationSettings(k_primes=k_primes, thresholds=(), num_resamples=bootstrap_resamples)
    bootstrap = SequenceBootstrap(trace.seq_id, evaluation.num_resamples, seed=evaluation.seed)
    rows: list[dict[str, Any]] = []
    for name, ranked in trace.predictions.items():
        scores = trace.confidences.get(name)
        scores = np.full(ranked.shape, np.nan, np.float32) if scores is None else scores.astype(np.float32)
        prediction = Prediction(ranked, scores)
        rows += accuracy_rows(
            trace.metadata.model.name,
            name,
            truth,
            prediction,
            trace.metadata.model.moe_layers,
            bootstrap,
            evaluation,
        )
    return TableInput(
        f"{item.name} (prediction columns of the trace)", to_arrow(rows), synthetic=item.synthetic
    )


def _model_blocks(
    model: str, rows: list[dict[str, Any]], shape_key: tuple[int, int] | None, source: str
) -> list[Any]:
    layers = sorted({r["layer"] for r in rows if r["layer"] != MEAN_LAYER})
    if not layers:
        return [Note(f"{model}: the accuracy table has no per-layer rows.")]
    first_layer = layers[0]
    k_prime = _overprovision_k(rows, shape_key)
    return [
        Figure(_per_layer_figure(model, rows, layers), _takeaway(model, rows)),
        Table(
            ["predictor", "exact match", f"over-provisioning hit (k'={k_prime})", "top-1", "coverage"],
            _first_layer_rows(rows, first_layer, k_prime),
            caption=f"{model}: first MoE layer (decoder layer {first_layer}); source: {display_path(source)}",
        ),
    ]


def _per_layer_figure(model: str, rows: list[dict[str, Any]], layers: list[int]) -> go.Figure:
    fig = figure(
        title={"text": f"{model}: exact match per MoE layer"},
        xaxis={"title": {"text": "decoder layer"}, "tickmode": "array", "tickvals": layers},
        yaxis={"title": {"text": "exact match"}, "tickformat": ".0%", "range": [0, 1.02]},
    )
    colours = distinct_colours(r["predictor"] for r in rows)
    for name, line_colour in colours.items():
        points = sorted(
            (
                r
                for r in rows
                if r["predictor"] == name and r["metric"] == HEADLINE_METRIC and r["layer"] >= 0
            ),
            key=lambda r: r["layer"],
        )
        points = [r for r in points if _finite(r["value"])]
        if not points:
            continue
        upper = [_gap(r["ci_high"], r["value"]) for r in points]
        lower = [_gap(r["value"], r["ci_low"]) for r in points]
        fig.add_trace(
            go.Scatter(
                x=[r["layer"] for r in points],
                y=[r["value"] for r in points],
                name=name,
                mode="lines+markers",
                line={"color": line_colour},
                error_y={
                    "type": "data",
                    "array": upper,
                    "arrayminus": lower,
                    "visible": True,
                    "thickness": 1,
                },
            )
        )
    return fig


def _takeaway(model: str, rows: list[dict[str, Any]]) -> str:
    means = {
        r["predictor"]: r["value"]
        for r in rows
        if r["layer"] == MEAN_LAYER and r["metric"] == HEADLINE_METRIC and _finite(r["value"])
    }
    if not means:
        return f"{model}: no mean exact match in the table."
    best = max(means, key=means.__getitem__)
    others = {n: v for n, v in means.items() if n not in (best, "oracle")}
    text = f"{model}: {best} predicts the exact expert set for {pct(means[best])} of token-layers on average"
    if best == "oracle" and len(means) > 1:
        best_real = max((n for n in means if n != "oracle"), key=means.__getitem__)
        return f"{model}: best real predictor {best_real} is exact on {pct(means[best_real])} (oracle: 100%)."
    if others:
        runner_up = max(others, key=others.__getitem__)
        text += f", against {pct(others[runner_up])} for {runner_up}"
    return text + "."


def _first_layer_rows(rows: list[dict[str, Any]], layer: int, k_prime: int) -> list[list[str]]:
    index = {(r["predictor"], r["metric"], r["k_prime"]): r for r in rows if r["layer"] == layer}
    table = []
    for name in dict.fromkeys(r["predictor"] for r in rows):
        exact = index.get((name, "exact_match", 0))
        table.append(
            [
                name,
                _with_interval(exact),
                _with_interval(index.get((name, "overprovision_hit", k_prime))),
                _with_interval(index.get((name, "top1", 0))),
                pct(exact["coverage"]) if exact else "–",
            ]
        )
    return table


def _paper_table() -> Table:
    rows = [
        [
            paper["model"],
            f"{experts} / top-{k}",
            pct(paper["exact_match"], 2),
            f"{pct(paper['overprovision_hit'], 2)} (k'={paper['k_prime']})",
            pct(paper["top1"], 2),
        ]
        for (experts, k), paper in PAPER_FIRST_LAYER.items()
    ]
    return Table(
        ["paper's model", "experts", "exact match", "over-provisioning hit", "top-1"],
        rows,
        caption="The paper's reported first-MoE-layer numbers (arXiv 2511.10676, Table 4): its own models "
        "and data, quoted for comparison, not re-run here",
    )


def _overprovision_k(rows: Sequence[dict[str, Any]], shape_key: tuple[int, int] | None) -> int:
    """The paper's k' for this model's (experts, top-k) when known and present, else the smallest listed."""
    present = sorted({r["k_prime"] for r in rows if r["metric"] == "overprovision_hit"})
    paper = PAPER_FIRST_LAYER.get(shape_key) if shape_key else None
    if paper and paper["k_prime"] in present:
        return paper["k_prime"]
    return present[0] if present else 0


def _with_interval(row: dict[str, Any] | None) -> str:
    if row is None or not _finite(row["value"]):
        return "–"
    if not (_finite(row["ci_low"]) and _finite(row["ci_high"])):
        return pct(row["value"], 2)
    return f"{pct(row['value'], 2)} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _gap(high: float | None, low: float | None) -> float:
    return max(0.0, high - low) if _finite(high) and _finite(low) else 0.0


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


__all__ = ["KEY", "TITLE", "TableInput", "build"]
