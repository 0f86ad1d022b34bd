"""At a glance: every setting's mean per-token latency under every policy, and its speed-up over on-demand,
in one table: the report's answer before its evidence."""

from __future__ import annotations

from reports.inputs import ReportInputs
from reports.page import Note, Omitted, Section, Table
from reports.sections.policies import BASELINE, IDEAL, deployable, group_by_setting, mean_latency_s

KEY = "glance"
TITLE = "At a glance"


def build(inputs: ReportInputs) -> Section | Omitted:
    compared = inputs.comparison_runs()
    if not compared:
        return Omitted(KEY, TITLE, "no simulation results among the inputs")
    settings = group_by_setting(compared)
    columns = list(dict.fromkeys(column(r.policy) for runs in settings.values() for r in runs))
    rows = []
    for setting, runs in settings.items():
        base = next((mean_latency_s(r) for r in runs if r.policy == BASELINE), None)
        cells = {column(r.policy): _cell(r.policy, mean_latency_s(r), base) for r in runs}
        rows.append([setting, *(cells.get(c, "–") for c in columns)])
    caption = "Mean latency per token in ms (speed-up over on-demand)"
    return Section(
        KEY,
        TITLE,
        [Table(["setting", *columns], rows, caption=caption), Note(_headline(settings))],
        intro="Each row replays one trace with one cache and hardware; each column is a prefetch policy.",
        synthetic=any(r.synthetic for r in compared),
    )


def _cell(policy: str, mean_s: float, base_s: float | None) -> str:
    text = f"{1e3 * mean_s:.2f}" + (f" ({base_s / mean_s:.2f}x)" if base_s else "")
    knobs = policy.partition(":")[2]
    return f"{text} {knobs}" if column(policy) != policy else text


def column(policy: str) -> str:
    """Table column of a policy: over-provisioned variants (``pre-attention:m=12``, whose m is the
    model's own k') share one column whatever their m."""
    name, _, knobs = policy.partition(":")
    if knobs.startswith("m=") and ":" not in knobs:
        return f"{name}, over-provisioned"
    return policy


def _headline(settings: dict) -> str:
    """Which deployable policy wins most often, and how far the best one stays from resident."""
    wins: dict[str, int] = {}
    gaps = []
    for runs in settings.values():
        means = {r.policy: mean_latency_s(r) for r in runs}
        candidates = deployable(means)
        if not candidates:
            continue
        best = min(candidates, key=means.__getitem__)
        wins[best] = wins.get(best, 0) + 1
        if IDEAL in means and means[IDEAL] > 0:
            gaps.append(means[best] / means[IDEAL])
    if not wins:
        return "No deployable offloading policy was run (only the resident and oracle bounds)."
    leader = max(wins, key=wins.__getitem__)
    text = f"The fastest deployable policy is {leader} in {wins[leader]} of {len(settings)} settings"
    if gaps:
        span = f"{min(gaps):.2f}x" if len(gaps) == 1 else f"{min(gaps):.2f}x to {max(gaps):.2f}x"
        text += f"; the best one takes {span} the latency of keeping every expert resident"
    return text + "."
