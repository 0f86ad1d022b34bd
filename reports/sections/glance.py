"""At a glance: every setting's mean per-token latency under every policy, and its speed-up over on-demand,
in one table: the report's answer before its evidence."""

from __future__ import annotations

from reports.inputs import ReportInputs
from reports.page import Note, Omitted, Section, Table
from reports.sections.policies import BASELINE, IDEAL, group_by_setting, mean_latency_s

KEY = "glance"
TITLE = "At a glance"


def build(inputs: ReportInputs) -> Section | Omitted:
    compared = inputs.comparison_runs()
    if not compared:
        return Omitted(KEY, TITLE, "no simulation results among the inputs")
    settings = group_by_setting(compared)
    policies = list(dict.fromkeys(r.policy for runs in settings.values() for r in runs))
    rows = []
    for setting, runs in settings.items():
        means = {r.policy: mean_latency_s(r) for r in runs}
        base = means.get(BASELINE)
        cells = [
            "–"
            if p not in means
            else f"{1e3 * means[p]:.2f}" + (f" ({base / means[p]:.2f}x)" if base else "")
            for p in policies
        ]
        rows.append([setting, *cells])
    return Section(
        KEY,
        TITLE,
        [
            Table(
                ["setting", *policies], rows, caption="Mean latency per token, ms (speed-up over on-demand)"
            ),
            Note(_headline(settings)),
        ],
        intro="Each row replays one trace with one cache and hardware; each column is a prefetch policy.",
        synthetic=any(r.synthetic for r in compared),
    )


def _headline(settings: dict) -> str:
    """Which offloading policy wins most often, and how far the best one stays from resident."""
    wins: dict[str, int] = {}
    gaps = []
    for runs in settings.values():
        means = {r.policy: mean_latency_s(r) for r in runs}
        offloaded = {p: v for p, v in means.items() if p != IDEAL}
        if not offloaded:
            continue
        best = min(offloaded, key=offloaded.__getitem__)
        wins[best] = wins.get(best, 0) + 1
        if IDEAL in means and means[IDEAL] > 0:
            gaps.append(offloaded[best] / means[IDEAL])
    if not wins:
        return "No offloading policy was run."
    leader = max(wins, key=wins.__getitem__)
    text = f"The fastest offloading policy is {leader} in {wins[leader]} of {len(settings)} settings"
    if gaps:
        span = f"{min(gaps):.2f}x" if len(gaps) == 1 else f"{min(gaps):.2f}x to {max(gaps):.2f}x"
        text += f"; the best one takes {span} the latency of keeping every expert resident"
    return text + "."
