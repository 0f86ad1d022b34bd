"""Validation: simulated against live per-token latency for every configuration run on the GPU both
ways, with the y = x line and the error table. A simulator nobody checked against hardware is an opinion.

Inputs, either of:
- pairs of runs with the same configuration, one with ``clock="live"`` and one with ``clock="sim"``
  (result files of ``moe-prefetch validate`` / the live executor next to simulated ones);
- validation tables (one row per configuration with live and simulated columns).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from reports.inputs import ReportInputs
from reports.page import Figure, Omitted, Section, Table
from reports.style import colour, figure, ms, pct

KEY = "validation"
TITLE = "Simulator validation"
MEAN_TARGET = 0.05
P99_TARGET = 0.10


def build(inputs: ReportInputs) -> Section | Omitted:
    rows = paired_runs(inputs) + table_rows(inputs)
    if not rows:
        return Omitted(
            KEY, TITLE, "no live runs with matching simulated runs, and no validation table, among the inputs"
        )
    return Section(
        KEY,
        TITLE,
        [_scatter(rows), _error_table(rows)],
        intro=f"Targets: mean per-token latency within {pct(MEAN_TARGET, 0)}, p99 within "
        f"{pct(P99_TARGET, 0)}; hit and miss counts must be identical (both clocks drive the same decision "
        "objects).",
        synthetic=any(r["synthetic"] for r in rows),
    )


def paired_runs(inputs: ReportInputs) -> list[dict[str, Any]]:
    """One row per configuration that was run on both clocks."""
    simulated = {r.result.config.key(): r for r in inputs.runs if r.result.clock == "sim"}
    rows = []
    for live in (r for r in inputs.runs if r.result.clock == "live"):
        sim = simulated.get(live.result.config.key())
        if sim is None:
            continue
        live_summary, sim_summary = live.result.summary(), sim.result.summary()
        rows.append(
            {
                "configuration": f"{sim.policy} ({sim.setting})",
                "policy": sim.policy,
                "live_mean_s": live_summary["mean_latency_s"],
                "sim_mean_s": sim_summary["mean_latency_s"],
                "live_p99_s": live_summary["p99_latency_s"],
                "sim_p99_s": sim_summary["p99_latency_s"],
                "live_misses": live_summary["misses"],
                "sim_misses": sim_summary["misses"],
                "synthetic": bool(sim.synthetic),
            }
        )
    return rows


def table_rows(inputs: ReportInputs) -> list[dict[str, Any]]:
    """Rows of validation tables, in the same form as ``paired_runs``."""
    rows = []
    for table in inputs.validation:
        for row in table.table.to_pylist():
            rows.append({**row, "synthetic": table.synthetic})
    return rows


def relative_error(simulated: float, live: float) -> float:
    return (simulated - live) / live if live else math.nan


def _scatter(rows: Sequence[dict[str, Any]]) -> Figure:
    fig = figure(
        title={"text": "Mean per-token latency: simulated against live"},
        xaxis={"title": {"text": "live (ms)"}},
        yaxis={"title": {"text": "simulated (ms)"}},
    )
    top = 1e3 * max(max(r["live_mean_s"], r["sim_mean_s"]) for r in rows) * 1.05
    fig.add_trace(
        go.Scatter(
            x=[0, top], y=[0, top], mode="lines", name="y = x", line={"color": "#7f7f7f", "dash": "dash"}
        )
    )
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        fig.add_trace(
            go.Scatter(
                x=[1e3 * r["live_mean_s"] for r in mine],
                y=[1e3 * r["sim_mean_s"] for r in mine],
                text=[r["configuration"] for r in mine],
                mode="markers",
                name=policy,
                marker={"color": colour(policy), "size": 9},
                hovertemplate="%{text}<br>live %{x:.3f} ms, simulated %{y:.3f} ms<extra></extra>",
            )
        )
    errors = [(abs(relative_error(r["sim_mean_s"], r["live_mean_s"])), r["configuration"]) for r in rows]
    worst, where = max(errors)
    within = sum(1 for e, _ in errors if e <= MEAN_TARGET)
    takeaway = (
        f"{within} of {len(rows)} configurations are within {pct(MEAN_TARGET, 0)} of the live mean latency; "
        f"the worst is off by {pct(worst)} ({where})."
    )
    return Figure(fig, takeaway, height_px=480)


def _error_table(rows: Sequence[dict[str, Any]]) -> Table:
    body = []
    for r in sorted(rows, key=lambda r: -abs(relative_error(r["sim_mean_s"], r["live_mean_s"]))):
        same = "yes" if r["live_misses"] == r["sim_misses"] else "NO"
        body.append(
            [
                r["configuration"],
                ms(r["live_mean_s"], 3),
                ms(r["sim_mean_s"], 3),
                f"{100 * relative_error(r['sim_mean_s'], r['live_mean_s']):+.1f}%",
                ms(r["live_p99_s"], 3),
                ms(r["sim_p99_s"], 3),
                f"{100 * relative_error(r['sim_p99_s'], r['live_p99_s']):+.1f}%",
                f"{r['live_misses']} / {r['sim_misses']} ({same})",
            ]
        )
    columns = [
        "configuration",
        "live mean",
        "sim mean",
        "error",
        "live p99",
        "sim p99",
        "error",
        "misses live/sim",
    ]
    return Table(columns, body, caption="Per configuration, worst mean error first")
