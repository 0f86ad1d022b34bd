"""One look for every figure: layout defaults, a fixed colour per policy and per predictor, number formats."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import plotly.graph_objects as go

#: Colours follow the name, not the order of appearance, so a policy has the same colour in every figure.
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
KNOWN_COLOURS = {
    "on-demand": "#7f7f7f",
    "pre-attention": "#d62728",
    "cross-layer": "#1f77b4",
    "previous-token": "#ff7f0e",
    "oracle": "#2ca02c",
    "resident": "#9467bd",
    "frequency": "#8c564b",
    "random": "#bcbd22",
}


#: colours for other names (traces, predictor variants such as ``pre-attention-arch2``): none of them is
#: a known name's colour, so a variant never looks like another policy
OTHER_COLOURS = ("#17becf", "#e377c2", "#222222", "#637939", "#7b4173", "#e7ba52", "#6b6ecf", "#a6cee3")


def colour(name: str) -> str:
    """A stable colour per policy or predictor name; variants (``pre-attention:m=12``) share the base's."""
    base = name.split(":")[0]
    if base in KNOWN_COLOURS:
        return KNOWN_COLOURS[base]
    return OTHER_COLOURS[sum(name.encode()) % len(OTHER_COLOURS)]


def distinct_colours(names: Iterable[str]) -> dict[str, str]:
    """Colours for the lines of one figure: each name's ``colour`` unless an earlier other name already
    took it, then the first free one, so two lines of a legend never look alike (up to eight other names)."""
    taken: set[str] = set()
    chosen: dict[str, str] = {}
    for name in dict.fromkeys(names):
        preferred = colour(name)
        if name.split(":")[0] not in KNOWN_COLOURS and preferred in taken:
            preferred = next((c for c in OTHER_COLOURS if c not in taken), preferred)
        chosen[name] = preferred
        taken.add(preferred)
    return chosen


def dash(name: str) -> str:
    """Line style: solid for a policy as registered, dashed for a variant with knobs (``:m=12``)."""
    return "dash" if ":" in name else "solid"


def figure(**layout: Any) -> go.Figure:
    """An empty figure with the report's layout defaults (no template: keeps the file small)."""
    base: dict[str, Any] = {
        "template": "none",
        "font": {"family": "system-ui, sans-serif", "size": 13},
        "margin": {"l": 70, "r": 30, "t": 40, "b": 60},
        "legend": {"orientation": "h", "y": -0.2},
        "colorway": list(PALETTE),
        "plot_bgcolor": "white",
        "xaxis": {"gridcolor": "#e5e8ec", "zeroline": False},
        "yaxis": {"gridcolor": "#e5e8ec", "zeroline": False},
    }
    for key, value in layout.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return go.Figure(layout=base)


def pct(fraction: float, digits: int = 1) -> str:
    """0.9303 -> '93.0%'."""
    return f"{100 * fraction:.{digits}f}%"


def ms(seconds: float, digits: int = 2) -> str:
    """0.00123 -> '1.23 ms'."""
    return f"{1e3 * seconds:.{digits}f} ms"


def human_bytes(count: float) -> str:
    """12_582_912 -> '12.6 MB' (decimal units, as link bandwidths are quoted)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    raise AssertionError("unreachable")
