"""Validation: simulated against live per-token latency for every configuration run both ways on the GPU,
with the y = x line and the error table. A simulator nobody checked against hardware is an opinion.

Input: live runs (``clock="live"``, e.g. ``live.parquet`` of ``moe-prefetch validate``) next to simulated
runs of the same configurations (``sim.parquet``). Pairs are matched exactly as ``moe-prefetch validate``
matches them (``sim.validate.compare``: same shape, policy, cache and trace; the hardware profile may
differ, since re-simulating with an improved profile is the point).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from reports.inputs import ReportInputs, RunInput
from reports.page import Figure, Omitted, Section, Table
from reports.style import colour, figure, pct
from sim.validate import compare

KEY = "validation"
TITLE = "Simulator validation"
#: the fidelity targets of issue 6
MEAN_TARGET = 0.05
P99_TARGET = 0.10


def build(inputs: ReportInputs) -> Section | Omitted:
    live = [r for r in inputs.runs if r.result.clock == "live"]
    simulated = [r for r in inputs.runs if r.result.clock == "sim"]
    rows = compare([r.result for r in live], [r.result for r in simulated]) if live else []
    if not rows:
        return Omitted(KEY, TITLE, "no live runs with matching simulated runs among the inputs")
    return Section(
        KEY,
        TITLE,
        [_scatter(rows), _error_table(rows)],
        intro=f"Targets: mean per-token latency within {pct(MEAN_TARGET, 0)}, p99 within "
        f"{pct(P99_TARGET, 0)}; misses must be identical (both clocks drive the same decision objects). "
        "Hit versus late may differ: that is timing.",
        synthetic=_any_synthetic(live),
    )


def configuration(row: dict[str, Any]) -> str:
    cache = f"{row['cache_fraction']:g} of experts" if row["cache_fraction"] is not None else "cache"
    return f"{row['shape']} · {row['policy']} · {cache}"


def _any_synthetic(runs: Sequence[RunInput]) -> bool:
    return any(r.synthetic for r in runs)


def _scatter(rows: Sequence[dict[str, Any]]) -> Figure:
    fig = figure(
        title={"text": "Mean per-token latency: simulated against live"},
        xaxis={"title": {"text": "live (ms)"}, "rangemode": "tozero"},
        yaxis={"title": {"text": "simulated (ms)"}, "rangemode": "tozero"},
    )
    top = max(max(r["live_mean_ms"], r["sim_mean_ms"]) for r in rows) * 1.05
    line = {"color": "#7f7f7f", "dash": "dash"}
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="y = x", line=line))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        fig.add_trace(
            go.Scatter(
                x=[r["live_mean_ms"] for r in mine],
                y=[r["sim_mean_ms"] for r in mine],
                text=[configuration(r) for r in mine],
                mode="markers",
                name=policy,
                marker={"color": colour(policy), "size": 9},
                hovertemplate="%{text}<br>live %{x:.3f} ms, simulated %{y:.3f} ms<extra></extra>",
            )
        )
    worst = max(rows, key=lambda r: abs(r["mean_err"]))
    within = sum(1 for r in rows if abs(r["mean_err"]) <= MEAN_TARGET)
    same_misses = sum(1 for r in rows if r["misses_identical"])
    takeaway = (
        f"{within} of {len(rows)} configurations are within {pct(MEAN_TARGET, 0)} of the live mean latency; "
        f"the worst is off by {pct(abs(worst['mean_err']))} ({configuration(worst)}); misses identical in "
        f"{same_misses} of {len(rows)}."
    )
    probed = [r for r in rows if _measured(r.get("mean_err_fast"))]
    if probed:
        fast_within = sum(1 for r in probed if abs(r["mean_err_fast"]) <= MEAN_TARGET)
        takeaway += (
            f" Over the steps the host core ran at its fast level (per-step probes): {fast_within} of "
            f"{len(probed)}."
        )
    return Figure(fig, takeaway, height_px=480)


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _error_table(rows: Sequence[dict[str, Any]]) -> Table:
    body = [
        [
            configuration(r),
            f"{r['live_mean_ms']:.3f}",
            f"{r['sim_mean_ms']:.3f}",
            f"{100 * r['mean_err']:+.1f}%",
            f"{r['live_p99_ms']:.3f}",
            f"{r['sim_p99_ms']:.3f}",
            f"{100 * r['p99_err']:+.1f}%",
            f"{r['live_passes']} ({100 * r['live_spread']:.1f}%)",
            f"{r['live_misses']} / {r['sim_misses']}" + ("" if r["misses_identical"] else " (DIFFER)"),
            _fast_steps(r),
        ]
        for r in sorted(rows, key=lambda r: -abs(r["mean_err"]))
    ]
    columns = ["configuration", "live mean ms", "sim mean ms", "error", "live p99 ms", "sim p99 ms", "error"]
    caption = (
        "Per configuration, worst mean error first. Live latencies are each token's median over the live "
        "passes. Live passes (spread): how many times the configuration ran live and how far apart their "
        "means were, (max - min) / mean: the live clock's own noise. "
        "Fast steps: the share of measured tokens whose step ran with the host core at its fast level "
        "(per-step probes), and the mean error over those tokens alone ('-' without probes)."
    )
    columns += ["live passes (spread)", "misses live / sim", "fast steps (error there)"]
    return Table(columns, body, caption=caption)


def _fast_steps(row: dict[str, Any]) -> str:
    share, err = row.get("fast_step_share"), row.get("mean_err_fast")
    if not _measured(share):
        return "-"
    return f"{pct(share, 0)} ({100 * err:+.1f}%)" if _measured(err) else f"{pct(share, 0)} (-)"
