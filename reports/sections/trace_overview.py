"""Trace overview: which experts each layer uses, how soon it uses them again, and what an ideal cache
could hit. These bound every prefetch policy: skewed, repetitive routing makes caching easy; uniform,
fresh routing leaves prediction as the only way to hide transfers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go

from reports.inputs import ReportInputs, TraceInput
from reports.page import Figure, Note, Omitted, Section
from reports.style import distinct_colours, figure, pct
from traces import stats

KEY = "trace-overview"
TITLE = "Trace overview"
#: cache sizes (fraction of a layer's experts, per-layer cache) for the Belady curve
CACHE_FRACTIONS = (0.05, 0.1, 0.25, 0.5)
#: Belady's cache is simulated in Python over every routed slot: cap the tokens it replays
BELADY_MAX_TOKENS = 2000


def build(inputs: ReportInputs) -> Section | Omitted:
    if not inputs.traces:
        return Omitted(KEY, TITLE, "no trace among the inputs")
    blocks: list[Any] = []
    colours = distinct_colours(t.name for t in inputs.traces)  # one colour per trace in every figure
    for item in inputs.traces:
        if item.synthetic:
            blocks.append(
                Note(f"{item.name} is a SYNTHETIC trace (generated, not measured).", kind="warning")
            )
        blocks += [_popularity(item), _reuse(item, colours[item.name])]
    blocks.append(_oracle_cache(inputs.traces, colours))
    return Section(
        KEY,
        TITLE,
        blocks,
        intro="Routing statistics of each trace, replayed token by token as a batch-1 decode would see it.",
        synthetic=any(t.synthetic for t in inputs.traces),
    )


def _popularity(item: TraceInput) -> Figure:
    counts = stats.expert_counts(item.trace)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    layers = list(item.trace.metadata.model.moe_layers)
    num_experts = item.trace.num_experts
    fig = figure(
        title={"text": f"{item.name}: share of routed tokens per expert and layer"},
        xaxis={"title": {"text": "expert"}},
        yaxis={"title": {"text": "decoder layer"}, "type": "category"},
    )
    fig.add_trace(
        go.Heatmap(
            z=share,
            x=list(range(num_experts)),
            y=[str(layer) for layer in layers],
            colorscale="Viridis",
            colorbar={"title": {"text": "share"}, "tickformat": ".0%"},
            hovertemplate="layer %{y}, expert %{x}: %{z:.2%}<extra></extra>",
        )
    )
    skew = stats.popularity_skew(counts)
    top = max(1, math.ceil(0.1 * num_experts))
    mean_share = float(skew.top_decile_share.mean())
    takeaway = (
        f"{item.name}: the busiest {top} of {num_experts} experts take {pct(mean_share)} "
        f"of a layer's routed tokens on average (uniform routing: {pct(top / num_experts)}); "
        f"the most skewed layer reaches {pct(float(skew.top_decile_share.max()))}."
    )
    return Figure(fig, takeaway, height_px=max(320, min(900, 18 * len(layers) + 140)))


def _reuse(item: TraceInput, bar_colour: str) -> Figure:
    summary = stats.reuse_distance_summary(item.trace)
    edges = summary.bin_edges
    labels = [_bin_label(i, edges) for i in range(len(edges))]
    total = max(1, int(summary.histogram.sum()))
    fig = figure(
        title={"text": f"{item.name}: tokens until a layer uses the same expert again"},
        xaxis={"title": {"text": "reuse distance (tokens)"}, "type": "category"},
        yaxis={"title": {"text": "share of reuses"}, "tickformat": ".0%"},
    )
    fig.add_trace(go.Bar(x=labels, y=summary.histogram / total, marker={"color": bar_colour}, name=item.name))
    next_token = summary.histogram[0] / total if len(summary.histogram) else 0.0
    median = summary.quantiles.get(0.5, math.nan)
    takeaway = (
        f"{item.name}: {pct(next_token)} of reuses come at the very next token and half within "
        f"{median:.0f} tokens; {pct(summary.first_use_share)} of routed slots are an expert's first use."
    )
    return Figure(fig, takeaway, height_px=360)


def _oracle_cache(traces: list[TraceInput], colours: dict[str, str]) -> Figure:
    fig = figure(
        title={"text": "Hit rate of an optimal (Belady) per-layer expert cache, no prefetching"},
        xaxis={
            "title": {"text": "cache slots per layer (share of the layer's experts)"},
            "tickformat": ".0%",
        },
        yaxis={"title": {"text": "hit rate"}, "tickformat": ".0%", "range": [0, 1]},
    )
    best: list[tuple[float, str, float]] = []
    for item in traces:
        trace = item.trace
        if trace.num_tokens > BELADY_MAX_TOKENS:
            trace = trace.select_tokens(np.arange(BELADY_MAX_TOKENS))
        points = []
        for fraction in CACHE_FRACTIONS:
            slots = max(trace.top_k, round(fraction * trace.num_experts))
            points.append((slots / trace.num_experts, stats.oracle_cache_hit_rate(trace, slots)))
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                name=item.name,
                mode="lines+markers",
                line={"color": colours[item.name]},
            )
        )
        quarter = min(points, key=lambda p: abs(p[0] - 0.25))
        best.append((quarter[1], item.name, quarter[0]))
    hit, name, fraction = max(best)
    takeaway = (
        f"A clairvoyant cache holding {pct(fraction, 0)} of each layer's experts hits {pct(hit)} of requests "
        f"at best ({name}); the other {pct(1 - hit)} must be prefetched or waited for."
    )
    if any(t.trace.num_tokens > BELADY_MAX_TOKENS for t in traces):
        takeaway += f" (First {BELADY_MAX_TOKENS} tokens of each trace.)"
    return Figure(fig, takeaway, height_px=380)


def _bin_label(index: int, edges: np.ndarray) -> str:
    high = int(edges[index])
    low = int(edges[index - 1]) + 1 if index else 1
    return str(high) if low == high else f"{low}-{high}"
