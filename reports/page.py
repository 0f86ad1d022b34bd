"""The page assembler: turns report sections into ONE self-contained HTML file.

A report is a list of sections; a section holds blocks (figures with a one-line takeaway, tables, notes).
The page embeds plotly.js exactly once, inline, and renders every figure from JSON embedded next to its
``<div>``; nothing is fetched from the network, so the file works offline and can be mailed around.
Sections whose inputs are absent become an :class:`Omitted` entry: listed in the table of contents with
the reason, so a reader sees what the report could have shown.
"""

from __future__ import annotations

import html
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

#: CSS class of every plot container; the browser test and the bootstrap script look for it.
PLOT_CLASS = "mp-plot"


@dataclass(frozen=True)
class Figure:
    """One plotly figure and the sentence a reader should take away from it (computed from the data)."""

    figure: Any  # plotly.graph_objects.Figure; typed loosely so importing this module stays light
    takeaway: str
    height_px: int = 420


@dataclass(frozen=True)
class Table:
    """A small HTML table; cells are rendered with ``str`` and escaped."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass(frozen=True)
class Note:
    """A paragraph of text; ``kind`` "warning" draws it as a highlighted box (used for synthetic data)."""

    text: str
    kind: str = "info"


Block = Figure | Table | Note


@dataclass(frozen=True)
class Section:
    """A titled part of the report. ``synthetic`` puts a visible SYNTHETIC badge next to the title."""

    key: str
    title: str
    blocks: Sequence[Block]
    intro: str = ""
    synthetic: bool = False


@dataclass(frozen=True)
class Omitted:
    """A section that could not be built because its inputs are absent."""

    key: str
    title: str
    reason: str


@dataclass(frozen=True)
class PageMeta:
    title: str
    subtitle: str = ""
    banners: Sequence[str] = field(default_factory=tuple)


def render_page(meta: PageMeta, sections: Sequence[Section | Omitted], plotly_js: str | None = None) -> str:
    """The complete HTML document. ``plotly_js`` defaults to the bundle shipped with the plotly package."""
    if plotly_js is None:
        from plotly.offline import get_plotlyjs

        plotly_js = get_plotlyjs()
    figure_numbers = itertools.count(1)  # plot-1, plot-2, ... unique across the page
    toc = "\n".join(_toc_entry(s) for s in sections)
    body = "\n".join(_render_section(s, figure_numbers) for s in sections)
    banners = "\n".join(f'<div class="banner">{html.escape(b)}</div>' for b in meta.banners)
    subtitle = f'<p class="subtitle">{html.escape(meta.subtitle)}</p>' if meta.subtitle else ""
    return _PAGE.format(
        title=html.escape(meta.title),
        css=_CSS,
        subtitle=subtitle,
        banners=banners,
        toc=toc,
        body=body,
        plotly_js=_script_safe(plotly_js),
        bootstrap=_BOOTSTRAP.replace("PLOT_CLASS", PLOT_CLASS),
    )


def _toc_entry(section: Section | Omitted) -> str:
    if isinstance(section, Omitted):
        return f'<li class="omitted">{html.escape(section.title)} <span>(omitted)</span></li>'
    badge = ' <span class="badge">synthetic</span>' if section.synthetic else ""
    return f'<li><a href="#{section.key}">{html.escape(section.title)}</a>{badge}</li>'


def _render_section(section: Section | Omitted, figure_numbers: Iterator[int]) -> str:
    if isinstance(section, Omitted):
        return (
            f'<section id="{section.key}" class="omitted"><h2>{html.escape(section.title)}</h2>'
            f'<p class="note">Omitted: {html.escape(section.reason)}</p></section>'
        )
    badge = ' <span class="badge">SYNTHETIC DATA</span>' if section.synthetic else ""
    intro = f"<p>{html.escape(section.intro)}</p>" if section.intro else ""
    blocks = "\n".join(_render_block(b, figure_numbers) for b in section.blocks)
    return (
        f'<section id="{section.key}"><h2>{html.escape(section.title)}{badge}</h2>{intro}\n{blocks}</section>'
    )


def _render_block(block: Block, figure_numbers: Iterator[int]) -> str:
    if isinstance(block, Figure):
        return _render_figure(block, next(figure_numbers))
    if isinstance(block, Table):
        return _render_table(block)
    css = "note warning" if block.kind == "warning" else "note"
    return f'<p class="{css}">{html.escape(block.text)}</p>'


def _render_figure(block: Figure, number: int) -> str:
    from plotly.utils import PlotlyJSONEncoder

    spec = block.figure.to_plotly_json()
    payload = json.dumps({"data": spec["data"], "layout": spec["layout"]}, cls=PlotlyJSONEncoder)
    plot_id = f"plot-{number}"
    return (
        f'<figure class="figure"><p class="takeaway">{html.escape(block.takeaway)}</p>'
        f'<div id="{plot_id}" class="{PLOT_CLASS}" style="height:{int(block.height_px)}px"></div>'
        f'<script type="application/json" id="{plot_id}-spec">{_json_script_safe(payload)}</script></figure>'
    )


def _render_table(block: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in block.rows
    )
    caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
    table = f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="table-wrap">{table}</div>'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _script_safe(text: str) -> str:
    """Text that can sit inside a <script> element without ending it early."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE).replace("<!--", "<\\!--")


def _json_script_safe(payload: str) -> str:
    """JSON that can sit inside a <script> element and still parses: every ``<`` becomes ``\\u003c``
    (``<`` occurs only inside JSON strings, where that escape is valid; ``<\\!`` would not be)."""
    return payload.replace("<", "\\u003c")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script>{plotly_js}</script>
</head>
<body>
<header><h1>{title}</h1>{subtitle}{banners}</header>
<nav><h2>Contents</h2><ol>{toc}</ol></nav>
<main>
{body}
</main>
<script>{bootstrap}</script>
</body>
</html>
"""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 1.5rem 3rem; color: #1d232b; line-height: 1.45; }
header h1 { margin-bottom: 0.2rem; }
.subtitle { color: #55606e; margin-top: 0; }
.banner { background: #fff3cd; border: 2px solid #d4a106; padding: 0.6rem 0.9rem; margin: 0.6rem 0;
          font-weight: 600; }
nav ol { columns: 2; }
nav li.omitted { color: #8a939f; }
section { border-top: 1px solid #d9dee4; margin-top: 2rem; }
section.omitted h2 { color: #8a939f; }
.badge { background: #c0392b; color: white; font-size: 0.7em; padding: 0.1em 0.45em; border-radius: 0.3em;
         vertical-align: middle; }
.takeaway { font-weight: 600; margin-bottom: 0.2rem; }
figure { margin: 1rem 0 1.5rem; }
.note { color: #3c4652; }
.note.warning { background: #fdecea; border-left: 4px solid #c0392b; padding: 0.5rem 0.8rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { border: 1px solid #d9dee4; padding: 0.25rem 0.55rem; text-align: right; }
th { background: #f3f5f7; }
td:first-child, th:first-child { text-align: left; }
"""

#: Renders every plot from its embedded JSON; marks each div so a reader (or test) can tell it finished.
_BOOTSTRAP = """
(function () {
  var config = {responsive: true, displaylogo: false};
  document.querySelectorAll("div.PLOT_CLASS").forEach(function (div) {
    try {
      var spec = JSON.parse(document.getElementById(div.id + "-spec").textContent);
      Plotly.newPlot(div, spec.data, spec.layout, config).then(function () {
        div.setAttribute("data-rendered", "1");
      });
    } catch (error) {
      // one broken figure must not stop the others; the error still surfaces as uncaught
      setTimeout(function () { throw error; });
    }
  });
})();
"""
