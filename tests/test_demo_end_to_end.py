"""`moe-prefetch demo` end to end (fast sizes): it compares the policies, sweeps the hardware, writes a
report a browser renders cleanly, prints the summary table, and says so loudly when it had to fall back
to a synthetic trace."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest

from moe_prefetch.cli import main
from reports import demo
from reports.browser import check_page
from sim.cache import CacheConfig
from sim.hardware import load_profile
from sim.policies import PolicySpec
from sim.results import write_results
from sim.simulation import simulate
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import write_trace


@pytest.mark.slow
@pytest.mark.browser
def test_demo_without_shipped_traces_runs_on_a_labelled_synthetic_trace(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(demo, "DATA_DIR", tmp_path / "empty")
    monkeypatch.setattr(demo, "ACCURACY_DIR", tmp_path / "none")
    monkeypatch.setattr(demo, "VALIDATION_DIR", tmp_path / "none")
    out = tmp_path / "out" / "demo.html"
    assert main(["demo", "--fast", "--workers", "1", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("SYNTHETIC") >= 2  # before the work starts and under the summary table
    assert f"report: {out.resolve()}" in printed
    table = [line for line in printed.splitlines() if line.startswith("synthetic-qwen3-30b-a3b ")]
    expected = ["on-demand", "previous-token", "cross-layer", "pre-attention", "pre-attention:m=12", "oracle"]
    assert [line.split()[1] for line in table] == [*expected, "resident"]
    on_demand = table[0].split()
    assert on_demand[4] == "1.00x"  # the baseline's speed-up over itself
    html = out.read_text()
    assert "moe-prefetch demo (SYNTHETIC DATA)" in html and "SYNTHETIC INPUTS" in html
    check = check_page(out)
    assert check.errors == [] and check.external_requests == []
    assert len(check.plots) >= 12 and check.blank_plots == []


@pytest.mark.slow
def test_demo_replays_shipped_traces_also_on_the_public_shape_they_mirror(
    tmp_path, monkeypatch, capsys
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    small = dataclasses.replace(
        KNOWN_SHAPES["phi-3.5-moe"], name="phi-mini-moe-like", num_layers=4, moe_layers=(0, 1, 2, 3),
        hidden_size=256, expert_intermediate_size=512, bytes_per_expert=3 * 256 * 512 * 2,
    )  # fmt: skip
    spec = SyntheticSpec(small, num_sequences=2, tokens_per_sequence=20, include_oracle=True)
    write_trace(generate_trace(spec), data / "phi-like.parquet")
    monkeypatch.setattr(demo, "DATA_DIR", data)
    monkeypatch.setattr(demo, "ACCURACY_DIR", tmp_path / "none")
    monkeypatch.setattr(demo, "VALIDATION_DIR", _validation_runs(tmp_path / "validation"))
    out = tmp_path / "demo.html"
    assert main(["demo", "--fast", "--workers", "1", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "generated synthetic trace" not in printed
    own = [line.split()[1] for line in printed.splitlines() if line.startswith("phi-like ")]
    replayed = [
        line.split()[1] for line in printed.splitlines() if line.startswith("phi-like-as-phi-3.5-moe ")
    ]
    # no pred.pre-attention / pred.cross-layer columns: only the policies the trace supports
    assert own == replayed == ["on-demand", "previous-token", "oracle", "resident"]
    assert (tmp_path / "phi-like-as-phi-3.5-moe.parquet").exists()
    html = out.read_text()
    assert "replayed on the shape of microsoft/Phi-3.5-MoE-instruct (32 MoE layers" in html
    provenance = html.split('<section id="provenance">')[1]
    assert "phi-like-as-phi-3.5-moe" in provenance  # every trace the report replays is listed, with its file
    assert "phi-like-as-phi-3.5-moe.parquet" in provenance and str(tmp_path) not in provenance
    assert "Omitted: no live runs" not in html  # the committed validation runs feed their section ...
    assert "live clock" not in html.split('id="trace-overview"')[0]  # ... and stay out of "At a glance"
    sweep = pq.read_table(tmp_path / "demo_sweep.parquet")
    assert set(sweep.column("trace").to_pylist()) == {"phi-like-as-phi-3.5-moe"}  # the deepest trace


def test_demo_replays_fewer_tokens_when_traces_are_deeper() -> None:
    settings = demo.DemoSettings()
    shallow = demo.TraceInput("a", "a", generate_trace(SyntheticSpec(KNOWN_SHAPES["olmoe-1b-7b"], 1, 8)))
    deep = demo.TraceInput("b", "b", generate_trace(SyntheticSpec(KNOWN_SHAPES["qwen3-30b-a3b"], 1, 8)))
    tokens_shallow = demo._tokens_per_trace([shallow], settings.compare_token_layers, 7, settings)
    tokens_deep = demo._tokens_per_trace([deep], settings.compare_token_layers, 7, settings)
    assert tokens_shallow == min(settings.max_tokens, settings.compare_token_layers // (16 * 7))
    assert tokens_deep == settings.compare_token_layers // (48 * 7) < tokens_shallow


def _validation_runs(folder):
    """A live run and its simulated twin, as ``moe-prefetch validate`` leaves them in reports/validation."""
    folder.mkdir()
    trace = generate_trace(SyntheticSpec(KNOWN_SHAPES["olmoe-1b-7b"], num_sequences=1, tokens_per_sequence=8))
    simulated = simulate(
        trace, trace.metadata.model, load_profile("h200"), CacheConfig(fraction=0.5), PolicySpec("on-demand")
    )
    write_results([simulated], folder / "sim.parquet")
    write_results([dataclasses.replace(simulated, clock="live")], folder / "live.parquet")
    return folder


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_demo_refuses_fewer_than_one_worker_as_a_usage_error(tmp_path, capsys, workers) -> None:
    out = tmp_path / "demo.html"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--fast", "--quiet", "--workers", workers, "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"moe-prefetch demo: error: argument --workers: must be an integer >= 1, got '{workers}'"
    )
    assert not out.parent.joinpath("demo_sweep.parquet").exists()
