"""Policy comparison: for each setting (trace, hardware, cache, ...) how the prefetch policies compare in
per-token latency, throughput, where the stall sits, how needed experts were found, and what crossed the
PCIe link for nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from reports.inputs import ReportInputs, RunInput
from reports.page import Figure, Note, Omitted, Section
from reports.style import colour, dash, figure, human_bytes, ms, pct

KEY = "policies"
TITLE = "Policy comparison"
#: at most this many settings get the full set of figures (the rest are listed)
MAX_SETTINGS = 6
BASELINE = "on-demand"
IDEAL = "resident"
#: the clairvoyant prefetcher (knows each token's routing in advance): a bound, not a policy anyone can run
ORACLE = "oracle"


def deployable(policies: Iterable[str]) -> list[str]:
    """The offloading policies a user could run: all but the two bounds (every expert resident, and the
    oracle's foresight). A takeaway that crowned the oracle would say nothing about real prefetching."""
    return [p for p in policies if p.split(":")[0] not in (IDEAL, ORACLE)]


def build(inputs: ReportInputs) -> Section | Omitted:
    compared = inputs.comparison_runs()
    if not compared:
        return Omitted(KEY, TITLE, "no simulation results among the inputs (moe-prefetch simulate --out)")
    settings = group_by_setting(compared)
    blocks: list[Any] = []
    for setting, runs in list(settings.items())[:MAX_SETTINGS]:
        if len(settings) > 1:
            described = runs[0].trace_description
            blocks.append(Note(f"Setting: {setting}." + (f" {described}" if described else "")))
        blocks += [_latency(runs), _throughput(runs), _stall(runs), _outcomes(runs), _traffic(runs)]
    if len(settings) > MAX_SETTINGS:
        rest = ", ".join(list(settings)[MAX_SETTINGS:])
        blocks.append(Note(f"{len(settings) - MAX_SETTINGS} more settings not drawn: {rest}."))
    return Section(
        KEY,
        TITLE,
        blocks,
        intro="Every policy replays the same trace with the same cache and hardware; only the prefetch "
        "decisions differ. Latency is per decode token (time between successive tokens of a sequence).",
        synthetic=any(r.synthetic for r in compared),
    )


def group_by_setting(runs: Sequence[RunInput]) -> dict[str, list[RunInput]]:
    """Runs grouped by everything but the policy, each group in a fixed policy order; the groups with
    the most policies first (they compare the most)."""
    groups: dict[str, list[RunInput]] = {}
    for run in runs:
        groups.setdefault(run.setting, []).append(run)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    return {k: sorted(v, key=lambda r: _policy_order(r.policy)) for k, v in ordered}


def mean_latency_s(run: RunInput) -> float:
    return float(run.result.summary()["mean_latency_s"])


def _policy_order(policy: str) -> tuple[int, str]:
    order = [
        "on-demand",
        "previous-token",
        "cross-layer",
        "pre-attention",
        "confidence",
        "oracle",
        "resident",
    ]
    base = policy.split(":")[0]
    return (order.index(base) if base in order else len(order), policy)


def _decode_latency_s(run: RunInput) -> np.ndarray:
    result = run.result
    latency = result.token_latency_s[result.decode_token]
    return latency if latency.size else result.token_latency_s


def _latency(runs: list[RunInput]) -> Figure:
    fig = figure(
        title={"text": f"Per-token latency: {runs[0].setting}"},
        yaxis={"title": {"text": "latency per token (ms)"}, "rangemode": "tozero"},
        showlegend=False,
    )
    for run in runs:
        fig.add_trace(
            go.Box(
                y=1e3 * _decode_latency_s(run),
                name=run.policy,
                marker={"color": colour(run.policy)},
                boxmean=True,
                boxpoints=False,
            )
        )
    return Figure(fig, _latency_takeaway(runs))


def _latency_takeaway(runs: list[RunInput]) -> str:
    means = {r.policy: mean_latency_s(r) for r in runs}
    best = min(deployable(means) or means, key=means.__getitem__)
    text = f"{best} has the lowest mean latency of the deployable policies: {ms(means[best])} per token"
    if BASELINE in means and best != BASELINE:
        saving = 1 - means[best] / means[BASELINE]
        text += f", {pct(saving)} below on-demand ({ms(means[BASELINE])})"
    if ORACLE in means and best != ORACLE:
        text += f"; the clairvoyant oracle would reach {ms(means[ORACLE])}"
    if IDEAL in means:
        text += f"; with every expert resident it would be {ms(means[IDEAL])}"
    return text + "."


def _throughput(runs: list[RunInput]) -> Figure:
    rates = [float(r.result.summary()["tokens_per_s"]) for r in runs]
    fig = figure(
        title={"text": "Decode throughput"},
        yaxis={"title": {"text": "tokens per second"}},
        showlegend=False,
    )
    fig.add_trace(
        go.Bar(
            x=[r.policy for r in runs],
            y=rates,
            marker={"color": [colour(r.policy) for r in runs]},
            text=[f"{v:.0f}" for v in rates],
            textposition="outside",
        )
    )
    by_policy = dict(zip([r.policy for r in runs], rates, strict=True))
    fastest = max(deployable(by_policy), key=by_policy.__getitem__, default=None)
    if fastest is None:
        rates = ", ".join(f"{p} {v:.0f}" for p, v in by_policy.items())
        takeaway = f"Only the bounds were run ({rates} tokens/s)."
    elif BASELINE in by_policy and fastest != BASELINE and by_policy[BASELINE] > 0:
        speedup = by_policy[fastest] / by_policy[BASELINE]
        takeaway = (
            f"{fastest} decodes {by_policy[fastest]:.0f} tokens/s, {speedup:.2f}x on-demand's "
            f"{by_policy[BASELINE]:.0f} tokens/s."
        )
    else:
        takeaway = f"{fastest} is the fastest deployable policy at {by_policy[fastest]:.0f} tokens/s."
    return Figure(fig, takeaway, height_px=380)


def _stall(runs: list[RunInput]) -> Figure:
    layers = list(runs[0].result.config.shape.moe_layers)
    fig = figure(
        title={"text": "Compute stall per MoE layer (waiting for expert weights)"},
        xaxis={"title": {"text": "decoder layer"}},
        yaxis={"title": {"text": "stall per token (ms)"}, "rangemode": "tozero"},
    )
    worst: tuple[float, str, int] = (-1.0, "", 0)
    for run in runs:
        per_token = run.result.stall_s / max(1, run.result.token_latency_s.size)
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=1e3 * per_token,
                name=run.policy,
                mode="lines",
                line={"color": colour(run.policy), "dash": dash(run.policy)},
            )
        )
        if per_token.size and per_token.max() > worst[0]:
            worst = (float(per_token.max()), run.policy, layers[int(per_token.argmax())])
    totals = {r.policy: float(r.result.stall_s.sum()) / max(1, r.result.token_latency_s.size) for r in runs}
    lowest = min(deployable(totals), key=totals.__getitem__, default=None)
    takeaway = f"Stall is largest for {worst[1]} at decoder layer {worst[2]} ({ms(worst[0], 3)} per token)"
    if lowest is not None:
        takeaway += f"; {lowest} stalls least, {ms(totals[lowest], 3)} per token over all layers"
    return Figure(fig, takeaway + ".", height_px=380)


def _outcomes(runs: list[RunInput]) -> Figure:
    counts = {
        r.policy: (int(r.result.hits.sum()), int(r.result.late.sum()), int(r.result.misses.sum()))
        for r in runs
    }
    fig = figure(
        title={"text": "How each needed expert was found at the router"},
        barmode="stack",
        yaxis={"title": {"text": "share of needed experts"}, "tickformat": ".0%"},
    )
    names = ("hit (resident)", "late (prefetch in flight)", "miss (demand load)")
    colours = ("#2ca02c", "#ff7f0e", "#d62728")
    policies = [r.policy for r in runs]
    for index, (name, fill) in enumerate(zip(names, colours, strict=True)):
        shares = [counts[p][index] / max(1, sum(counts[p])) for p in policies]
        fig.add_trace(go.Bar(x=policies, y=shares, name=name, marker={"color": fill}))
    best = max(deployable(policies) or policies, key=lambda p: counts[p][0] / max(1, sum(counts[p])))
    share = counts[best][0] / max(1, sum(counts[best]))
    late = counts[best][1] / max(1, sum(counts[best]))
    takeaway = f"{best} finds {pct(share)} of needed experts already resident and {pct(late)} still in flight"
    if BASELINE in counts and best != BASELINE:
        takeaway += f" (on-demand: {pct(counts[BASELINE][0] / max(1, sum(counts[BASELINE])))} resident)"
    return Figure(fig, takeaway + ".", height_px=380)


def _traffic(runs: list[RunInput]) -> Figure:
    bytes_per_expert = runs[0].result.config.shape.bytes_per_expert
    policies = [r.policy for r in runs]
    tokens = [max(1, r.result.token_latency_s.size) for r in runs]
    moved = [r.result.bytes_moved / n for r, n in zip(runs, tokens, strict=True)]
    wasted = [
        r.result.counters.get("wasted", 0) * bytes_per_expert / n for r, n in zip(runs, tokens, strict=True)
    ]
    fig = figure(
        title={"text": "PCIe traffic per token"},
        barmode="group",
        yaxis={"title": {"text": "MB per token"}},
    )
    fig.add_trace(go.Bar(x=policies, y=np.divide(moved, 1e6), name="moved", marker={"color": "#1f77b4"}))
    fig.add_trace(
        go.Bar(
            x=policies,
            y=np.divide(wasted, 1e6),
            name="wasted (prefetched, never used)",
            marker={"color": "#c0392b"},
        )
    )
    heaviest = int(np.argmax(moved))
    waste_share = wasted[heaviest] / moved[heaviest] if moved[heaviest] else 0.0
    takeaway = (
        f"{policies[heaviest]} moves the most: {human_bytes(moved[heaviest])} per token, "
        f"{pct(waste_share)} of it prefetched and never used"
    )
    if BASELINE in policies:
        base = moved[policies.index(BASELINE)]
        takeaway += f" (on-demand moves {human_bytes(base)} per token)"
    return Figure(fig, takeaway + ".", height_px=380)
