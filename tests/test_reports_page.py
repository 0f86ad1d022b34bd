"""The page assembler writes one self-contained HTML document: plotly inlined once, nothing fetched."""

from __future__ import annotations

import re

import plotly.graph_objects as go

from reports.page import PLOT_CLASS, Figure, Note, Omitted, PageMeta, Section, Table, render_page


def _page(sections, banners=()) -> str:
    return render_page(PageMeta("Title & more", "sub", banners), sections)


def _figure(takeaway: str = "takeaway") -> Figure:
    return Figure(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), takeaway)


def test_plotly_js_is_embedded_exactly_once_however_many_figures() -> None:
    page = _page([Section("a", "A", [_figure(), _figure()]), Section("b", "B", [_figure()])])
    assert page.count("Plotly.newPlot") == 1  # the bootstrap loop, not one call per figure
    assert len(re.findall(r"<script[^>]*>", page)) == 2 + 3  # plotly.js, bootstrap, three figure specs
    assert page.count(f'class="{PLOT_CLASS}"') == 3


def test_page_loads_no_script_or_stylesheet_from_the_network() -> None:
    page = _page([Section("a", "A", [_figure()])])
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)


def test_text_is_escaped_and_cannot_close_a_script_element() -> None:
    nasty = "</script><b>x</b>"
    page = _page([Section("a", nasty, [_figure(nasty), Table(["c"], [[nasty]]), Note(nasty)])])
    assert "<b>x</b>" not in page
    figure = go.Figure(go.Scatter(x=[1], y=[1], name=nasty))
    page = _page([Section("a", "A", [Figure(figure, "t")])])
    assert page.lower().count("</script>") == 3  # plotly.js, the spec and the bootstrap close normally


def test_omitted_section_shows_its_reason_and_is_greyed_in_contents() -> None:
    page = _page([Omitted("sweeps", "Sweeps", "no sweep table among the inputs")])
    assert "Omitted: no sweep table among the inputs" in page
    assert '<li class="omitted">Sweeps' in page


def test_synthetic_section_and_banner_are_visible() -> None:
    page = _page([Section("a", "Trace", [Note("n")], synthetic=True)], banners=["SYNTHETIC INPUT: t.parquet"])
    assert "SYNTHETIC DATA" in page
    assert '<div class="banner">SYNTHETIC INPUT: t.parquet</div>' in page


def test_table_formats_floats_compactly() -> None:
    page = _page([Section("a", "A", [Table(["x", "y"], [["row", 0.123456789]], caption="cap")])])
    assert "<td>0.1235</td>" in page and "<caption>cap</caption>" in page


def test_figure_spec_stays_valid_json_whatever_its_text() -> None:
    """Names such as '<!--' or '</script>' must neither end the spec's script element nor break JSON.parse
    (a broken spec leaves that plot blank in the browser)."""
    import json

    name = "a <!-- b </script> c"
    page = _page([Section("a", "A", [Figure(go.Figure(go.Scatter(x=[1], y=[1], name=name)), "t")])])
    spec = re.search(r'id="plot-1-spec">(.*?)</script>', page, flags=re.DOTALL).group(1)
    assert json.loads(spec)["data"][0]["name"] == name
