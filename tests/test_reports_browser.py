"""The browser harness really catches what a reader would see go wrong (it must be able to fail)."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from reports.browser import check_page, find_chromium
from reports.page import Figure, PageMeta, Section, render_page

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    assert binary, "headless Chromium is needed for the report tests: apt-get install chromium"
    return binary


def _page_with(figures: list[go.Figure]) -> str:
    return render_page(PageMeta("t"), [Section("s", "S", [Figure(f, "x") for f in figures])])


def test_clean_page_has_no_errors_and_every_plot_draws(tmp_path, chromium) -> None:
    figures = [
        go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])),
        go.Figure(go.Scatter(x=[1, 2, 3], y=[2, 1, 3])),
        go.Figure(go.Bar(x=["a", "b"], y=[1, 2])),
        go.Figure(go.Box(y=[1.0, 2.0, 5.0])),
    ]
    path = tmp_path / "ok.html"
    path.write_text(_page_with(figures))
    check = check_page(path, chromium=chromium)
    assert check.errors == [] and check.external_requests == []
    assert len(check.plots) == 4 and check.blank_plots == []


def test_javascript_error_and_network_request_are_reported(tmp_path, chromium) -> None:
    page = _page_with([go.Figure(go.Scatter(x=[1], y=[1]))])
    sabotage = '<script>console.error("broken on purpose"); fetch("http://192.0.2.1/x.js");</script></body>'
    path = tmp_path / "bad.html"
    path.write_text(page.replace("</body>", sabotage))
    check = check_page(path, chromium=chromium)
    assert any("broken on purpose" in e for e in check.errors)
    assert check.external_requests == ["http://192.0.2.1/x.js"]


def test_plot_whose_spec_is_broken_counts_as_blank(tmp_path, chromium) -> None:
    page = _page_with([go.Figure(go.Scatter(x=[1, 2], y=[1, 2])), go.Figure(go.Bar(x=[1], y=[1]))])
    path = tmp_path / "blank.html"
    # corrupt the first figure's JSON so that plotly never draws it
    path.write_text(page.replace('id="plot-1-spec">{', 'id="plot-1-spec">{{'))
    check = check_page(path, timeout_s=8, chromium=chromium)
    assert check.blank_plots == ["plot-1"]
    assert check.errors  # the JSON.parse failure is an uncaught exception
    assert [p.plot_id for p in check.plots if p.ok] == ["plot-2"]  # the healthy figure still drew
