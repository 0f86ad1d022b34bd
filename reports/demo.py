"""The demo: the project's story in numbers from the shipped data, in one command and about a minute.

1. Traces: the real traces shipped in ``traces/data/`` (GPU-collected routing of the reference models,
   with predictor columns), each also replayed on the shape of the public model it mirrors (same
   experts and top-k; real expert sizes; layers repeated modulo). When there are none, a synthetic
   trace of Qwen3-30B-A3B's shape is generated instead and every output says so.
2. Policies: every applicable prefetch policy replays each trace on the H200 profile with one cache
   size (the cache starts empty; the first steps are left out of the latency summary as warm-up).
3. A small hardware sweep on the deepest of those traces: PCIe bandwidth x cache size for on-demand,
   pre-attention and oracle.
4. The report (``reports/out/demo.html``), with the committed predictor accuracy tables
   (``reports/accuracy/``; otherwise the traces' own prediction columns are scored) and validation
   runs (``reports/validation/``) when present.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import traces as traces_package
from predictor.metrics import paper_overprovision
from reports.build import write_report
from reports.inputs import (
    ReportInputs,
    RunInput,
    TableInput,
    TraceInput,
    find_result_files,
    load_inputs,
    run_inputs,
)
from sim.config import trace_fingerprint
from sim.policies import PolicySpec
from sim.results import SimResult
from sim.retarget import retarget_trace
from sim.sweep import (
    RunPoint,
    SweepSpec,
    expand,
    load_sweep_trace,
    policy_problem,
    run_sweep,
    simulate_point,
)
from sim.sweep_exec import execute_local
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import Trace, read_trace, write_trace

DATA_DIR = Path(traces_package.__file__).parent / "data"
ACCURACY_DIR = Path(__file__).parent / "accuracy"
VALIDATION_DIR = Path(__file__).parent / "validation"
DEFAULT_OUT = Path("reports/out/demo.html")
SYNTHETIC_NAME = "synthetic-qwen3-30b-a3b"
SWEEP_FILE = "demo_sweep.parquet"
#: policies compared, best known order; "{k_prime}" becomes the paper's over-provisioning width
POLICIES = (
    "on-demand",
    "previous-token",
    "cross-layer",
    "pre-attention",
    "pre-attention:m={k_prime}",
    "oracle",
    "resident",
)
TIMELINE_POLICIES = ("on-demand", "pre-attention")
#: the public model whose routing geometry (experts, top-k) each reference model mirrors
PUBLIC_SHAPES = {
    "qwen3-30b-a3b-like": "qwen3-30b-a3b",
    "deepseek-v2-lite-like": "deepseek-v2-lite",
    "phi-mini-moe-like": "phi-3.5-moe",
}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; ``fast()`` is a seconds-long version for tests.

    The simulator's cost grows with token-layers (tokens x MoE layers x runs), so the demo's run time is
    set by two budgets; each trace replays as many of its first tokens as its share of the budget allows
    (at least ``min_tokens``, at most ``max_tokens``).
    """

    compare_token_layers: int = 150_000
    sweep_token_layers: int = 200_000
    min_tokens: int = 64
    max_tokens: int = 2000
    cache_fraction: float = 0.25
    warmup_steps: int = 32
    timeline_steps: int = 3
    hardware: str = "h200"
    sweep_pcie_gbps: tuple[float, ...] = (8.0, 16.0, 32.0, 64.0)
    sweep_cache_fractions: tuple[float, ...] = (0.1, 0.25, 0.5)
    sweep_policies: tuple[str, ...] = ("on-demand", "pre-attention", "oracle")
    synthetic_tokens_per_sequence: int = 256
    public_shapes: bool = True
    workers: int | None = None

    @classmethod
    def fast(cls, workers: int | None = 1) -> DemoSettings:
        return cls(
            compare_token_layers=6_000,
            sweep_token_layers=6_000,
            min_tokens=8,
            warmup_steps=4,
            timeline_steps=2,
            sweep_pcie_gbps=(16.0, 64.0),
            sweep_cache_fractions=(0.1, 0.5),
            synthetic_tokens_per_sequence=40,
            workers=workers,
        )


@dataclass(frozen=True)
class DemoOutcome:
    report: Path
    synthetic: bool
    traces: list[str]
    summary: list[dict[str, Any]]


def run_demo(
    settings: DemoSettings, out: Path = DEFAULT_OUT, say: Callable[[str], None] = print, progress: bool = True
) -> DemoOutcome:
    """Run the whole demo and write the report to ``out``; ``say`` receives progress lines."""
    out = Path(out)
    shipped = _shipped_inputs()
    synthetic = not shipped.traces
    if synthetic:
        say(
            "SYNTHETIC DATA: traces/data/ holds no trace yet, so the demo runs on a generated synthetic "
            "trace (Qwen3-30B-A3B shape; predictor accuracies set to the paper's numbers, not measured). "
            "Its figures illustrate the tool; they are not findings."
        )
        shipped.traces.append(_synthetic_trace(out.parent / f"{SYNTHETIC_NAME}.parquet", settings))
    say("traces: " + ", ".join(f"{t.name} ({t.trace.num_tokens} tokens)" for t in shipped.traces))
    public = (
        _on_public_shapes(shipped.traces, out.parent, settings.max_tokens) if settings.public_shapes else []
    )
    for item in public:
        say(f"  replayed on a public model's shape: {item.name} ({item.trace.metadata.model.name})")
    replays = public + shipped.traces  # the public shapes first: they are what people run
    shipped.replayed_traces += public

    tokens = _tokens_per_trace(replays, settings.compare_token_layers, len(POLICIES), settings)
    say(
        f"comparing policies on {settings.hardware} with {settings.cache_fraction:.0%} of experts cached, "
        f"first {tokens} tokens of each trace ..."
    )
    replayed = {trace_fingerprint(load_sweep_trace(item.source, tokens)): item for item in replays}
    results = _compare_policies([Path(t.source) for t in replays], tokens, settings)
    runs = run_inputs(results, shipped.traces, "demo", replayed)
    shipped.runs += runs

    # the sweep replays the deepest trace (most MoE layers: transfers add up most), to stay quick
    swept = [max(public or shipped.traces, key=lambda t: t.trace.num_layers)]
    sweep = _sweep_spec(swept, settings)
    sweep = dataclasses.replace(
        sweep, max_tokens=_tokens_per_trace(swept, settings.sweep_token_layers, sweep.num_runs, settings)
    )
    say(
        f"hardware sweep: {sweep.num_runs} runs (PCIe bandwidth x cache size), first {sweep.max_tokens} "
        f"tokens of {', '.join(t.name for t in swept)} ..."
    )
    outcome = run_sweep(sweep, out.parent / SWEEP_FILE, workers=settings.workers, progress=progress)
    metadata = {"name": sweep.name, "command": "moe-prefetch demo"}
    shipped.sweeps.append(TableInput(str(outcome.path), outcome.grid_table(), metadata, synthetic))

    shipped.commands.append("moe-prefetch demo")
    title = "moe-prefetch demo" + (" (SYNTHETIC DATA)" if synthetic else "")
    report = write_report(shipped, out, title=title)
    return DemoOutcome(report, synthetic, [t.name for t in replays], summary_rows(runs))


def _on_public_shapes(traces: Sequence[TraceInput], folder: Path, max_tokens: int) -> list[TraceInput]:
    """Each reference-model trace replayed on the public model whose routing geometry it mirrors.

    The reference models are small (sub-MB experts), so offloading them costs little; what people run
    are the public models. Their expert sizes, layer counts and op times come from the public shape;
    the routing stays the reference model's, layers repeated modulo (``sim.retarget``), and the trace's
    provenance notes say so. The first ``max_tokens`` tokens are written next to the report as
    ``<trace>-as-<shape>.parquet``.
    """
    replays = []
    for item in traces:
        key = PUBLIC_SHAPES.get(item.trace.metadata.model.name)
        if key is None:
            continue
        shape = KNOWN_SHAPES[key]
        path = folder / f"{item.name}-as-{key}.parquet"
        head = item.trace.select_tokens(np.arange(min(item.trace.num_tokens, max_tokens)))
        write_trace(retarget_trace(head, shape), path)
        description = (
            f"Routing recorded from {item.name} ({item.trace.num_layers} MoE layers) replayed on the shape "
            f"of {shape.name} ({shape.num_moe_layers} MoE layers, {shape.bytes_per_expert / 1e6:.1f} MB per "
            f"expert): its MoE layer j takes the routing of recorded layer j mod {item.trace.num_layers}."
        )
        replays.append(TraceInput(path.stem, str(path), read_trace(path), description))
    return replays


def _shipped_inputs() -> ReportInputs:
    """Traces and accuracy tables shipped with the package, and the committed validation runs (for the
    validation section only)."""
    shipped = [d for d in (DATA_DIR, ACCURACY_DIR) if d.is_dir() and find_result_files([d])]
    inputs = load_inputs(shipped) if shipped else ReportInputs()
    # the committed validation table's own runs (the folder's top level, as the package ships it; probes
    # in its subfolders are read by their own READMEs, not by the demo)
    validation_files = sorted(VALIDATION_DIR.glob("*.parquet")) if VALIDATION_DIR.is_dir() else []
    if validation_files:
        validation = load_inputs(validation_files)
        inputs.runs += [dataclasses.replace(r, validation_only=True) for r in validation.runs]
    return inputs


def _synthetic_trace(path: Path, settings: DemoSettings) -> TraceInput:
    shape = KNOWN_SHAPES["qwen3-30b-a3b"]
    k_prime = paper_overprovision(shape.top_k, shape.num_experts)
    spec = SyntheticSpec(
        shape,
        num_sequences=4,
        tokens_per_sequence=settings.synthetic_tokens_per_sequence,
        popularity_skew=1.0,
        reuse_prob=0.3,
        cross_layer_corr=0.3,
        predictor_accuracy={"pre-attention": 0.9469, "cross-layer": 0.788},  # the papers' quoted numbers
        prediction_width=k_prime,
        seed=0,
    )
    trace = generate_trace(spec)
    write_trace(trace, path)
    return TraceInput(name=path.stem, source=str(path), trace=trace)


def applicable_policies(trace: Trace) -> list[str]:
    """The demo's policies that can replay this trace (its prediction columns exist and are wide enough)."""
    k_prime = paper_overprovision(trace.top_k, trace.num_experts)
    specs = [PolicySpec.parse(text.format(k_prime=k_prime)) for text in POLICIES]
    return list(dict.fromkeys(spec.label() for spec in specs if policy_problem(trace, spec) is None))


def _tokens_per_trace(
    traces: Sequence[TraceInput], budget_token_layers: int, runs_per_trace: int, settings: DemoSettings
) -> int:
    """Tokens each trace replays so that all runs together stay within the budget."""
    token_layers_per_token = sum(t.trace.num_layers for t in traces) * runs_per_trace
    tokens = budget_token_layers // max(1, token_layers_per_token)
    return int(min(settings.max_tokens, max(settings.min_tokens, tokens)))


def _compare_policies(trace_paths: Sequence[Path], tokens: int, settings: DemoSettings) -> list[SimResult]:
    points: list[RunPoint] = []
    for path in trace_paths:
        trace = load_sweep_trace(path, tokens)
        spec = _spec([path], applicable_policies(trace), (settings.cache_fraction,), settings, tokens)
        for point in expand(spec, {path.resolve(): trace}):
            if point.labels["policy"] in TIMELINE_POLICIES:
                options = dataclasses.replace(point.config.options, timeline_steps=settings.timeline_steps)
                point = dataclasses.replace(point, config=dataclasses.replace(point.config, options=options))
            points.append(point)
    results: list[SimResult] = []
    execute_local(points, simulate_point, settings.workers or _cores(), results.append)
    order = {p.config.key(): i for i, p in enumerate(points)}
    return sorted(results, key=lambda r: order[r.config.key()])


def _sweep_spec(traces: Sequence[TraceInput], settings: DemoSettings) -> SweepSpec:
    """The sweep over every trace, with the sweep policies that every trace supports."""
    supported = set.intersection(*(set(applicable_policies(t.trace)) for t in traces))
    policies = [p for p in settings.sweep_policies if p in supported]
    spec = _spec([Path(t.source) for t in traces], policies, settings.sweep_cache_fractions, settings, None)
    return dataclasses.replace(
        spec, name="demo: PCIe bandwidth x cache size", pcie_gbps=settings.sweep_pcie_gbps
    )


def _spec(
    paths: Sequence[Path],
    policies: Sequence[str],
    caches: Sequence[float],
    settings: DemoSettings,
    tokens: int | None,
) -> SweepSpec:
    return SweepSpec(
        name="demo",
        source="moe-prefetch demo",
        traces=tuple(p.resolve() for p in paths),
        policies=tuple(policies),
        cache=tuple(("fraction", c) for c in caches),
        max_tokens=tokens,
        warmup_steps=settings.warmup_steps,
        presets=(settings.hardware,),
    )


def summary_rows(runs: Sequence[RunInput]) -> list[dict[str, Any]]:
    """One row per (trace, policy): latency, throughput, speed-up over on-demand, hit rate."""
    baseline = {r.trace_name: r.result.summary()["mean_latency_s"] for r in runs if r.policy == "on-demand"}
    rows = []
    for run in runs:
        summary = run.result.summary()
        base = baseline.get(run.trace_name)
        rows.append(
            {
                "trace": run.trace_name,
                "policy": run.policy,
                "ms_per_token": 1e3 * summary["mean_latency_s"],
                "tokens_per_s": summary["tokens_per_s"],
                "speedup": base / summary["mean_latency_s"]
                if base and summary["mean_latency_s"]
                else float("nan"),
                "hit_rate": summary["hit_rate"],
            }
        )
    return rows


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a fixed-width text table."""
    header = (
        f"{'trace':<36} {'policy':<20} {'ms/token':>9} {'tokens/s':>9} {'vs on-demand':>12} {'hit rate':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        name, policy = r["trace"][:36], r["policy"][:20]
        lines.append(
            f"{name:<36} {policy:<20} {r['ms_per_token']:>9.3f} {r['tokens_per_s']:>9.1f} "
            f"{r['speedup']:>11.2f}x {100 * r['hit_rate']:>8.1f}%"
        )
    return "\n".join(lines)


def _cores() -> int:
    import os

    return os.cpu_count() or 1
