"""Timeline: a Gantt view of what the compute stream, the predictor and each copy engine did during the
first decode steps of a run, so a reader sees whether copies hide behind attention or the GPU waits."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from reports.inputs import ReportInputs, RunInput
from reports.page import Figure, Omitted, Section
from reports.sections.policies import BASELINE, group_by_setting
from reports.style import figure, ms, pct

KEY = "timeline"
TITLE = "Timeline"
#: the runs drawn, by preference: the baseline and the paper's policy of the first setting with timelines
PREFERRED = (BASELINE, "pre-attention")
MAX_RUNS = 2
KIND_COLOURS = {
    "attention": "#1f77b4",
    "norm": "#aec7e8",
    "router": "#9467bd",
    "shared experts": "#8c564b",
    "expert": "#2ca02c",
    "dense layer": "#7f7f7f",
    "predict": "#e377c2",
    "demand": "#d62728",
    "prefetch": "#ff7f0e",
    "late prefetch": "#ffbb78",
}


def build(inputs: ReportInputs) -> Section | Omitted:
    with_timeline = [r for r in inputs.comparison_runs() if r.result.timeline]
    if not with_timeline:
        return Omitted(KEY, TITLE, "no simulation result with a recorded timeline (simulate --timeline)")
    runs = _chosen_runs(with_timeline)
    return Section(
        KEY,
        TITLE,
        [_gantt(run) for run in runs],
        intro="One lane per stream: the compute stream, the predictor and every copy engine. The cache "
        "starts empty, so the first steps show the cold start.",
        synthetic=any(r.synthetic for r in runs),
    )


def _chosen_runs(runs: list[RunInput]) -> list[RunInput]:
    first_setting = next(iter(group_by_setting(runs).values()))
    preferred = [r for name in PREFERRED for r in first_setting if r.policy == name]
    return (preferred or first_setting)[:MAX_RUNS]


def _gantt(run: RunInput) -> Figure:
    intervals = run.result.timeline or []
    lanes = sorted({i[0] for i in intervals}, key=_lane_order)
    fig = figure(
        title={"text": f"{run.policy}: {run.setting}"},
        barmode="overlay",
        xaxis={"title": {"text": "time (ms)"}},
        yaxis={"categoryorder": "array", "categoryarray": lanes[::-1], "title": {"text": ""}},
        bargap=0.25,
    )
    for kind in dict.fromkeys(i[1] for i in intervals):
        mine = [i for i in intervals if i[1] == kind]
        fig.add_trace(
            go.Bar(
                orientation="h",
                y=[i[0] for i in mine],
                base=[1e3 * i[2] for i in mine],
                x=[1e3 * (i[3] - i[2]) for i in mine],
                name=kind,
                marker={"color": KIND_COLOURS.get(kind, "#bcbd22")},
                customdata=[[i[4], i[5]] for i in mine],
                hovertemplate=f"{kind}<br>layer %{{customdata[0]}} expert %{{customdata[1]}}<br>"
                "%{base:.3f} ms + %{x:.3f} ms<extra></extra>",
            )
        )
    return Figure(fig, _takeaway(run, intervals), height_px=max(300, 60 * len(lanes) + 160))


def _takeaway(run: RunInput, intervals: list[Any]) -> str:
    start = min(i[2] for i in intervals)
    end = max(i[3] for i in intervals)
    window = max(end - start, 1e-12)
    compute = sum(i[3] - i[2] for i in intervals if i[0] == "compute")
    copies = [i for i in intervals if i[0].startswith("copy")]
    demand = sum(1 for i in copies if i[1] == "demand")
    return (
        f"{run.policy}: over the first {ms(window)} the compute stream is busy {pct(compute / window)} of "
        f"the time; {len(copies)} expert copies, {demand} of them demand loads the GPU had to wait for."
    )


def _lane_order(lane: str) -> tuple[int, str]:
    if lane == "compute":
        return (0, lane)
    if lane == "predictor":
        return (1, lane)
    return (2, lane.rjust(8))
