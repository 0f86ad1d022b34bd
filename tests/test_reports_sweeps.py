"""The sweep heatmap's takeaway says plainly when a policy never beats on-demand."""

from __future__ import annotations

from reports.sections.sweeps import _heatmap


def _rows(prefetch_latency_s: float) -> list[dict]:
    rows = []
    for pcie_gbps in (16.0, 32.0):
        for cache in (0.1, 0.25):
            for policy, latency_s in (("on-demand", 0.010), ("pre-attention", prefetch_latency_s)):
                rows.append(
                    {
                        "trace": "t",
                        "policy": policy,
                        "pcie_gbps": pcie_gbps,
                        "cache": cache,
                        "mean_latency_s": latency_s * (32.0 / pcie_gbps),
                    }
                )
    return rows


def test_a_policy_slower_everywhere_is_not_called_a_gain() -> None:
    figure = _heatmap("t", _rows(prefetch_latency_s=0.012), "pre-attention", ["pcie_gbps", "cache"])
    assert "never beats on-demand" in figure.takeaway
    assert "gain is largest" not in figure.takeaway


def test_a_faster_policy_names_where_it_gains_most() -> None:
    figure = _heatmap("t", _rows(prefetch_latency_s=0.008), "pre-attention", ["pcie_gbps", "cache"])
    assert "gain is largest" in figure.takeaway
