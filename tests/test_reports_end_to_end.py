"""`moe-prefetch report` on every kind of input: one offline HTML file that a real browser renders without
a JavaScript error, every plot drawn, every section present (or omitted with its reason)."""

from __future__ import annotations

import dataclasses
import re
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from moe_prefetch.cli import main
from reports.browser import check_page
from reports.inputs import TraceInput, load_inputs
from reports.sections import policies
from reports.sections.accuracy import trace_accuracy_table
from sim.cache import CacheConfig
from sim.config import SimOptions
from sim.hardware import load_profile
from sim.policies import PolicySpec
from sim.results import write_results
from sim.simulation import simulate
from sim.sweep import load_sweep, run_sweep
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import write_trace

POLICIES = (
    "on-demand",
    "previous-token",
    "cross-layer",
    "pre-attention",
    "pre-attention:m=10",
    "oracle",
    "resident",
)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """A folder with a trace, simulation results (with timelines), a sweep table, an accuracy table and a
    live/simulated pair, as the project's commands write them."""
    folder = tmp_path_factory.mktemp("results")
    spec = SyntheticSpec(
        KNOWN_SHAPES["olmoe-1b-7b"],
        num_sequences=2,
        tokens_per_sequence=24,
        predictor_accuracy={"pre-attention": 0.9, "cross-layer": 0.7},
        prediction_width=10,
    )
    trace = generate_trace(spec)
    write_trace(trace, folder / "olmoe.parquet")
    hardware = load_profile("h200")
    cache = CacheConfig(fraction=0.25)
    options = SimOptions(timeline_steps=2)
    results = [
        simulate(trace, trace.metadata.model, hardware, cache, PolicySpec.parse(p), options) for p in POLICIES
    ]
    write_results(results, folder / "sim.parquet")
    # a "live" run of the same configuration (here: the simulated one, 4% slower) for the validation section
    live = dataclasses.replace(results[3], clock="live", token_latency_s=results[3].token_latency_s * 1.04)
    write_results([live], folder / "live.parquet")
    (folder / "sweep.toml").write_text(
        textwrap.dedent(
            """
            [sweep]
            traces = ["olmoe.parquet"]
            policies = ["on-demand", "pre-attention", "oracle"]
            cache_fractions = [0.1, 0.5]
            [hardware]
            pcie_gbps = [16.0, 64.0]
            """
        )
    )
    run_sweep(load_sweep(folder / "sweep.toml"), folder / "sweep.parquet", workers=1, progress=False)
    accuracy = trace_accuracy_table(TraceInput("olmoe", "olmoe.parquet", trace), bootstrap_resamples=20)
    pq.write_table(accuracy.table, folder / "accuracy.parquet")
    return folder


def test_inputs_are_recognised_by_content(results_dir) -> None:
    inputs = load_inputs([results_dir])
    assert [t.name for t in inputs.traces] == ["olmoe"]
    assert len(inputs.runs) == len(POLICIES) + 1
    assert {r.trace_name for r in inputs.runs} == {"olmoe"}  # matched by trace fingerprint
    assert len(inputs.sweeps) == 1 and inputs.sweeps[0].table.num_rows == 12
    assert len(inputs.accuracy) == 1
    assert inputs.synthetic_sources() == ["trace olmoe", f"sweep table {results_dir / 'sweep.parquet'}"]


@pytest.mark.browser
@pytest.mark.slow
def test_full_report_renders_in_a_browser_without_errors(results_dir, tmp_path, capsys) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(results_dir), "--out", str(out)]) == 0
    assert "report written to" in capsys.readouterr().out
    html = out.read_text()
    assert "Omitted:" not in html  # every section had its inputs
    titles = ("At a glance", "Trace overview", "Predictor accuracy", "Policy comparison", "Timeline",
              "Hardware sweeps", "Simulator validation", "Provenance")  # fmt: skip
    for title in titles:
        assert f">{title}" in html
    assert "SYNTHETIC INPUTS: trace olmoe" in html
    check = check_page(out)
    assert check.errors == []
    assert check.external_requests == []
    # trace overview 3, accuracy 1, policy comparison 5 for the simulated and 5 for the live setting,
    # timeline 2, sweeps 2 (heatmap and lines), validation 1
    assert len(check.plots) == 19
    assert check.blank_plots == []


def test_report_with_only_a_trace_scores_its_predictions_and_omits_the_rest_with_reasons(
    results_dir, tmp_path
) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(results_dir / "olmoe.parquet"), "--out", str(out)]) == 0
    html = out.read_text()
    assert html.count("Omitted:") == 5  # at a glance, policies, timeline, sweeps, validation
    assert "Omitted: no sweep table among the inputs" in html
    # accuracy comes from the trace's own prediction columns when no accuracy table is given
    assert "olmoe (prediction columns of the trace)" in html


def test_unrecognised_file_fails_in_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    import pyarrow as pa

    stranger = tmp_path / "stranger.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), stranger)
    out = tmp_path / "report.html"
    assert main(["report", str(stranger), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stranger.parquet" in err[0] and "not a trace" in err[0]
    assert not out.exists()


def test_policy_takeaway_states_the_simulated_numbers(results_dir) -> None:
    inputs = load_inputs([results_dir / "olmoe.parquet", results_dir / "sim.parquet"])
    runs = next(iter(policies.group_by_setting(inputs.runs).values()))
    takeaway = policies._latency_takeaway(runs)
    means = {r.policy: policies.mean_latency_s(r) for r in runs}
    best = min((p for p in means if p not in ("resident", "oracle")), key=means.__getitem__)
    assert takeaway.startswith(f"{best} has the lowest mean latency")
    assert f"{1e3 * means[best]:.2f} ms" in takeaway
    assert f"{1e3 * means['resident']:.2f} ms" in takeaway
    assert f"oracle would reach {1e3 * means['oracle']:.2f} ms" in takeaway
    assert re.search(r"\d+\.\d% below on-demand", takeaway) or best == "on-demand"


def test_takeaways_never_crown_the_oracle_or_resident_bounds(results_dir) -> None:
    """The oracle knows the routing in advance: naming it the fastest policy says nothing a user can
    deploy, so every 'best policy' sentence picks among the others even when the oracle is fastest."""
    from reports.sections import glance

    inputs = load_inputs([results_dir / "olmoe.parquet", results_dir / "sim.parquet"])
    runs = next(iter(policies.group_by_setting(inputs.runs).values()))
    fastest_oracle = [
        dataclasses.replace(
            r, result=dataclasses.replace(r.result, token_latency_s=r.result.token_latency_s / 100)
        )
        if r.policy == "oracle"
        else r
        for r in runs
    ]
    assert min(fastest_oracle, key=policies.mean_latency_s).policy == "oracle"
    means = {r.policy: policies.mean_latency_s(r) for r in fastest_oracle}
    best = min((p for p in means if p not in ("resident", "oracle")), key=means.__getitem__)
    assert policies._latency_takeaway(fastest_oracle).startswith(f"{best} has the lowest mean latency")
    headline = glance._headline(policies.group_by_setting(fastest_oracle))
    assert headline.startswith(f"The fastest deployable policy is {best} in 1 of 1 settings")


def test_accuracy_table_of_synthetic_activations_is_flagged(tmp_path) -> None:
    from predictor.tables import write_tables

    row = {"model": "m", "predictor": "p", "layer": 0, "metric": "exact_match", "k_prime": 0, "value": 0.9,
           "ci_low": 0.88, "ci_high": 0.92, "num_tokens": 100, "coverage": 1.0}  # fmt: skip
    shape = KNOWN_SHAPES["olmoe-1b-7b"]
    write_tables(tmp_path, [row], shape, 12, "test", {"origin": "synthetic"})
    inputs = load_inputs([tmp_path / "accuracy.parquet"])
    assert inputs.accuracy[0].synthetic
    assert inputs.synthetic_sources() == [f"accuracy table {tmp_path / 'accuracy.parquet'}"]


def test_validation_pairs_live_and_simulated_runs_and_states_the_error(results_dir) -> None:
    from reports.sections import validation

    section = validation.build(load_inputs([results_dir / "sim.parquet", results_dir / "live.parquet"]))
    scatter, table = section.blocks
    assert scatter.takeaway.startswith("1 of 1 configurations are within 5% of the live mean latency")
    assert "misses identical in 1 of 1" in scatter.takeaway
    (row,) = table.rows
    assert row[0] == "allenai/OLMoE-1B-7B-0924 · pre-attention · 0.25 of experts"
    assert row[3] == f"{100 * (1 / 1.04 - 1):+.1f}%"  # the live run was made 4% slower
    assert row[7] == "1 (0.0%)"  # one live pass, so no spread
    assert row[9] == "-" and "fast level" not in scatter.takeaway  # no host probes in this live run


def test_validation_reports_the_error_over_the_steps_the_host_ran_fast(results_dir, tmp_path) -> None:
    from reports.sections import validation
    from sim.results import read_results

    (live,) = read_results(results_dir / "live.parquet")
    probes = [10e-6] * live.token_latency_s.size
    probes[-1] = 30e-6  # the last step ran at the slow level, and took twice as long
    latency = live.token_latency_s.copy()
    latency[-1] *= 2
    write_results(
        [dataclasses.replace(live, token_latency_s=latency, host_probe_s=np.array(probes))],
        tmp_path / "live.parquet",
    )
    section = validation.build(load_inputs([results_dir / "sim.parquet", tmp_path / "live.parquet"]))
    scatter, table = section.blocks
    measured = int(live.decode_token.sum())
    assert table.rows[0][9] == f"{100 * (measured - 1) / measured:.0f}% ({100 * (1 / 1.04 - 1):+.1f}%)"
    assert scatter.takeaway.endswith("fast level (per-step probes): 1 of 1.")


def test_at_a_glance_tabulates_every_setting_and_policy(results_dir) -> None:
    from reports.sections import glance

    section = glance.build(load_inputs([results_dir]))
    table, headline = section.blocks
    expected = [p if p != "pre-attention:m=10" else "pre-attention, over-provisioned" for p in POLICIES]
    assert table.columns == ["setting", *expected]
    simulated = table.rows[0]
    assert simulated[0] == "olmoe · h200 · 0.25 of experts, lru"
    assert simulated[1].endswith("(1.00x)")  # on-demand against itself
    assert simulated[5].endswith("x) m=10")  # the over-provisioned column names its m
    assert "live clock" in table.rows[1][0]
    assert headline.text.startswith("The fastest deployable policy is ")


@pytest.mark.parametrize("command", [["report", "RESULTS"], ["demo", "--fast", "--quiet"]])
@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_unwritable_out_fails_in_one_line_before_any_work(
    results_dir, tmp_path, capsys, command, where
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = blocker / "report.html" if where == "under a file" else tmp_path
    argv = [str(results_dir / "olmoe.parquet") if a == "RESULTS" else a for a in command]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0]


def test_provenance_lists_every_distinct_hardware_profile_even_under_one_name(results_dir) -> None:
    from reports.sections import provenance

    inputs = load_inputs([results_dir / "olmoe.parquet", results_dir / "sim.parquet"])
    run = inputs.runs[0]
    hardware = run.result.config.hardware
    recalibrated = dataclasses.replace(hardware, meta=dataclasses.replace(hardware.meta, date="2099-01-01"))
    config = dataclasses.replace(run.result.config, hardware=recalibrated)
    inputs.runs.append(dataclasses.replace(run, result=dataclasses.replace(run.result, config=config)))
    (table,) = [
        b for b in provenance.build(inputs).blocks if getattr(b, "caption", "") == "Hardware profiles"
    ]
    assert [row[0] for row in table.rows] == [hardware.meta.name, hardware.meta.name]
    assert {row[3] for row in table.rows} == {hardware.meta.date or "–", "2099-01-01"}


def test_provenance_lists_replayed_traces_with_their_origin_and_how_they_were_made(results_dir) -> None:
    from reports.sections import provenance

    inputs = load_inputs([results_dir / "olmoe.parquet"])
    original = inputs.traces[0]
    replay = TraceInput(
        "olmoe-as-other", "/elsewhere/olmoe-as-other.parquet", original.trace, "made from olmoe"
    )
    inputs.replayed_traces.append(replay)
    (table,) = [b for b in provenance.build(inputs).blocks if getattr(b, "caption", "") == "Traces"]
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert set(rows) == {original.name, "olmoe-as-other"}
    assert rows["olmoe-as-other"]["origin"] == rows[original.name]["origin"] == "SYNTHETIC"
    assert rows["olmoe-as-other"]["notes"] == "made from olmoe"
    assert rows["olmoe-as-other"]["file"] == "olmoe-as-other.parquet"  # no local folder of another machine


def test_accuracy_caption_names_the_table_without_a_local_absolute_path(results_dir) -> None:
    from reports.sections import accuracy

    path = (results_dir / "accuracy.parquet").resolve()
    captions = [
        getattr(b, "caption", "") for b in accuracy.build(load_inputs([path])).blocks if hasattr(b, "caption")
    ]
    sourced = [c for c in captions if "source:" in c]
    assert sourced and all(c.endswith("source: accuracy.parquet") for c in sourced)
    assert not any(str(results_dir) in c for c in captions)


def test_display_path_keeps_paths_inside_the_repository_relative_and_hides_other_folders(
    tmp_path, monkeypatch
) -> None:
    from reports.inputs import REPO_ROOT, display_path

    monkeypatch.chdir(tmp_path)
    assert display_path(str(REPO_ROOT / "reports" / "accuracy" / "accuracy.parquet")) == (
        "reports/accuracy/accuracy.parquet"
    )
    assert display_path(str(tmp_path / "runs" / "sim.parquet")) == "runs/sim.parquet"  # under the cwd
    assert display_path("/somewhere/else/sim.parquet") == "sim.parquet"
    assert display_path("results/sim.parquet") == "results/sim.parquet"
    assert (
        display_path("olmoe (prediction columns of the trace)") == "olmoe (prediction columns of the trace)"
    )
