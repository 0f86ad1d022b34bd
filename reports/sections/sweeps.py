"""Sweeps: how the answer moves with the hardware. Heatmaps of PCIe bandwidth x cache size -> speed-up
of a prefetch policy over on-demand, and lines of latency against the swept parameter per policy.

Input: tables written by ``moe-prefetch sweep`` (one row per run; axis columns such as ``pcie_gbps``,
``cache_fraction``, ``policy`` and summary columns such as ``mean_latency_s``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from reports.inputs import ReportInputs, TableInput
from reports.page import Figure, Note, Omitted, Section, Table
from reports.sections.policies import BASELINE, IDEAL, deployable
from reports.style import colour, dash, figure, ms

KEY = "sweeps"
TITLE = "Hardware sweeps"
#: columns that describe a run's setting (besides trace and policy), in the order figures prefer them
AXES = (
    "pcie_gbps",
    "cache",
    "copy_latency_s",
    "copy_engines",
    "host_memory",
    "compute_scale",
    "predictor_s",
    "batch_size",
    "hardware",
    "eviction",
    "per_layer",
)
AXIS_TITLES = {
    "pcie_gbps": "PCIe bandwidth (GB/s)",
    "cache": "cache size",
    "copy_latency_s": "copy latency (s)",
    "copy_engines": "copy engines",
    "compute_scale": "compute time scale",
    "predictor_s": "predictor time (s)",
    "batch_size": "batch size",
}
AXIS_UNITS = {"pcie_gbps": " GB/s", "copy_latency_s": " s", "predictor_s": " s"}
HEADLINE_POLICIES = ("pre-attention", "confidence", "cross-layer", "previous-token")


def build(inputs: ReportInputs) -> Section | Omitted:
    if not inputs.sweeps:
        return Omitted(KEY, TITLE, "no sweep table among the inputs (moe-prefetch sweep)")
    blocks: list[Any] = []
    for sweep in inputs.sweeps:
        rows = normalised_rows(sweep)
        if not rows:
            blocks.append(Note(f"{sweep.source}: the sweep table is empty."))
            continue
        for trace in dict.fromkeys(r["trace"] for r in rows):
            blocks += _trace_blocks(trace, [r for r in rows if r["trace"] == trace])
    return Section(
        KEY,
        TITLE,
        blocks,
        intro="Each point is one simulated run; the grid is the product of the sweep file's lists. Where "
        "more than two parameters vary, the others are held at their middle value (named with each figure).",
        synthetic=any(s.synthetic for s in inputs.sweeps),
    )


def normalised_rows(sweep: TableInput) -> list[dict[str, Any]]:
    """Rows with one ``cache`` column (fraction of experts, or slots when the sweep counted slots)."""
    rows = sweep.table.to_pylist()
    for row in rows:
        fraction = row.get("cache_fraction")
        row["cache"] = fraction if fraction is not None else row.get("cache_slots")
    return rows


def varying_axes(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [a for a in AXES if len({r.get(a) for r in rows}) > 1]


def speedups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each non-baseline row with ``speedup`` = on-demand's mean latency / its own, same setting."""
    baseline = {_setting(r): r["mean_latency_s"] for r in rows if r["policy"] == BASELINE}
    out = []
    for row in rows:
        base = baseline.get(_setting(row))
        if row["policy"] != BASELINE and base and row["mean_latency_s"] > 0:
            out.append({**row, "speedup": base / row["mean_latency_s"]})
    return out


def _setting(row: dict[str, Any]) -> tuple:
    return tuple(row.get(a) for a in ("trace", *AXES))


def _trace_blocks(trace: str, rows: list[dict[str, Any]]) -> list[Any]:
    axes = varying_axes(rows)
    blocks: list[Any] = []
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    headline = next((p for name in HEADLINE_POLICIES for p in policies if p.split(":")[0] == name), None)
    if "pcie_gbps" in axes and "cache" in axes and headline and BASELINE in policies:
        blocks.append(_heatmap(trace, rows, headline, axes))
    line_axis = next((a for a in axes if a in AXIS_TITLES), None)
    if line_axis is not None:
        blocks.append(_lines(trace, rows, line_axis, axes))
    if not blocks:
        blocks.append(_table(trace, rows))
    return blocks


def _held(rows: list[dict[str, Any]], axes: list[str], free: Sequence[str]) -> tuple[list[dict], str]:
    """Rows with every varying axis outside ``free`` held at its middle value, and a note saying which."""
    held = {a: _middle({r.get(a) for r in rows}) for a in axes if a not in free}
    kept = [r for r in rows if all(r.get(a) == v for a, v in held.items())]
    note = ", ".join(f"{a} = {_fmt(v)}" for a, v in held.items())
    return kept, (f" Held fixed: {note}." if note else "")


def _heatmap(trace: str, rows: list[dict[str, Any]], policy: str, axes: list[str]) -> Figure:
    kept, held = _held(rows, axes, ("pcie_gbps", "cache", "policy"))
    points = [r for r in speedups(kept) if r["policy"] == policy]
    bandwidths = sorted({r["pcie_gbps"] for r in points})
    caches = sorted({r["cache"] for r in points})
    grid = {(r["cache"], r["pcie_gbps"]): r["speedup"] for r in points}
    z = [[grid.get((c, b)) for b in bandwidths] for c in caches]
    fig = figure(
        title={"text": f"{trace}: speed-up of {policy} over on-demand"},
        xaxis={"title": {"text": AXIS_TITLES["pcie_gbps"]}, "type": "category"},
        yaxis={"title": {"text": _cache_title(rows)}, "type": "category"},
    )
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=[_fmt(b) for b in bandwidths],
            y=[_fmt(c) for c in caches],
            colorscale="RdYlGn",
            zmid=1.0,
            colorbar={"title": {"text": "speed-up"}},
            text=[[("" if v is None else f"{v:.2f}x") for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate="PCIe %{x} GB/s, cache %{y}: %{z:.2f}x<extra></extra>",
        )
    )
    best = max(points, key=lambda r: r["speedup"])
    worst = min(points, key=lambda r: r["speedup"])
    where = f"{_with_unit('pcie_gbps', best['pcie_gbps'])} with cache {_fmt(best['cache'])}"
    verdict = (
        f"the gain is largest at {where}"
        if best["speedup"] > 1.0
        else f"it never beats on-demand; it comes closest at {where}"
    )
    span = f"{worst['speedup']:.2f}x to {best['speedup']:.2f}x"
    takeaway = f"{policy} is {span} as fast as on-demand; {verdict}.{held}"
    return Figure(fig, takeaway, height_px=max(320, 50 * len(caches) + 180))


def _lines(trace: str, rows: list[dict[str, Any]], axis: str, axes: list[str]) -> Figure:
    kept, held = _held(rows, axes, (axis, "policy"))
    fig = figure(
        title={"text": f"{trace}: latency against {AXIS_TITLES[axis].split(' (')[0]}"},
        xaxis={"title": {"text": AXIS_TITLES[axis] if axis != "cache" else _cache_title(rows)}},
        yaxis={"title": {"text": "mean latency per token (ms)"}, "rangemode": "tozero"},
    )
    series: dict[str, list[tuple[float, float]]] = {}
    for row in kept:
        series.setdefault(row["policy"], []).append((row[axis], row["mean_latency_s"]))
    for policy, points in series.items():
        points.sort()
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[1e3 * p[1] for p in points],
                name=policy,
                mode="lines+markers",
                line={"color": colour(policy), "dash": "dot" if policy == IDEAL else dash(policy)},
            )
        )
    return Figure(fig, _lines_takeaway(series, axis) + held, height_px=420)


def _lines_takeaway(series: dict[str, list[tuple[float, float]]], axis: str) -> str:
    offloaded = {p: series[p] for p in deployable(series) or series}
    low_x = min(x for points in offloaded.values() for x, _ in points)
    high_x = max(x for points in offloaded.values() for x, _ in points)
    at_low = {p: dict(v)[low_x] for p, v in offloaded.items() if low_x in dict(v)}
    at_high = {p: dict(v)[high_x] for p, v in offloaded.items() if high_x in dict(v)}
    best_low = min(at_low, key=at_low.__getitem__)
    best_high = min(at_high, key=at_high.__getitem__)
    name = AXIS_TITLES.get(axis, axis).split(" (")[0]
    return (
        f"At {name} {_with_unit(axis, low_x)} the fastest deployable policy is {best_low} "
        f"({ms(at_low[best_low])} per token); at {_with_unit(axis, high_x)} it is {best_high} "
        f"({ms(at_high[best_high])})."
    )


def _table(trace: str, rows: list[dict[str, Any]]) -> Table:
    return Table(
        ["policy", "hardware", "cache", "mean latency", "p99 latency", "tokens/s"],
        [
            [r["policy"], r.get("hardware", ""), _fmt(r["cache"]), ms(r["mean_latency_s"]),
             ms(r["p99_latency_s"]), f"{r['tokens_per_s']:.1f}"]
            for r in rows
        ],
        caption=f"{trace}: every run (no parameter varies enough to plot)",
    )  # fmt: skip


def _cache_title(rows: Sequence[dict[str, Any]]) -> str:
    counted_slots = any(r.get("cache_fraction") is None for r in rows)
    return "cache slots" if counted_slots else "cache size (share of all experts)"


def _middle(values: set[Any]) -> Any:
    """The median of a set of values (the lower one of an even count), in sorted order."""
    ordered = sorted(values, key=lambda v: (v is None, v if isinstance(v, int | float) else str(v)))
    return ordered[(len(ordered) - 1) // 2]


def _with_unit(axis: str, value: Any) -> str:
    return _fmt(value) + AXIS_UNITS.get(axis, "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
