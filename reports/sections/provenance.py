"""Provenance: where every input came from (traces, models, GPU, software, commands, dates) and how this
report itself was made, so a reader can judge and reproduce each number."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from reports.inputs import ReportInputs, display_path
from reports.page import Note, Section, Table

KEY = "provenance"
TITLE = "Provenance"
PACKAGES = ("moe-prefetch", "numpy", "pyarrow", "simpy", "plotly", "scipy")


def build(inputs: ReportInputs) -> Section:
    blocks: list[Any] = [_environment_table(inputs)]
    if inputs.traces or inputs.replayed_traces:
        blocks.append(_trace_table(inputs))
        predictors = _predictor_rows(inputs)
        if predictors:
            blocks.append(Table(["trace", "predictor", "kind", "training data"], predictors, "Predictors"))
    hardware = _hardware_rows(inputs)
    if hardware:
        blocks.append(Table(["profile", "source", "GPU", "date", "notes"], hardware, "Hardware profiles"))
    tables = _table_rows(inputs)
    if tables:
        blocks.append(Table(["kind", "file", "contents", "recorded"], tables, "Result tables"))
    if inputs.commands:
        blocks.append(Note("Commands: " + " ; ".join(inputs.commands)))
    return Section(KEY, TITLE, blocks)


def _environment_table(inputs: ReportInputs) -> Table:
    rows = [["python", sys.version.split()[0]], ["platform", platform.platform()]]
    rows += [[name, _version(name)] for name in PACKAGES]
    return Table(["component", "version"], rows, caption="This report was generated with")


def _trace_table(inputs: ReportInputs) -> Table:
    """Every trace the report uses, the replayed ones (e.g. on a public model's shape) included, each with
    its origin and, where it was made from another trace, how."""
    rows = []
    for item in [*inputs.traces, *inputs.replayed_traces]:
        meta = item.trace.metadata
        prov, model = meta.provenance, meta.model
        software = ", ".join(f"{k} {v}" for k, v in sorted(prov.software.items()))
        rows.append(
            [
                item.name,
                prov.origin.upper() if prov.origin == "synthetic" else prov.origin,
                f"{model.name} ({model.num_moe_layers} MoE layers, {model.num_experts} experts, "
                f"top-{model.top_k})",
                item.trace.num_tokens,
                prov.gpu or "–",
                software or "–",
                prov.corpus or "–",
                prov.command or "–",
                prov.date or "–",
                display_path(item.source),
                item.description or prov.notes or "–",
            ]
        )
    columns = [
        "trace", "origin", "model", "tokens", "GPU", "software", "corpus", "command", "date", "file", "notes"
    ]  # fmt: skip
    return Table(columns, rows, caption="Traces")


def _predictor_rows(inputs: ReportInputs) -> list[list[str]]:
    return [
        [item.name, info.name, info.kind, info.training_data or "–"]
        for item in inputs.traces
        for info in item.trace.metadata.predictors
    ]


def _hardware_rows(inputs: ReportInputs) -> list[list[str]]:
    """One row per distinct profile: two profiles of one name (a preset and a re-calibration) both show."""
    rows = dict.fromkeys(
        (meta.name, meta.source, meta.gpu or "–", meta.date or "–", meta.notes)
        for meta in (run.result.config.hardware.meta for run in inputs.runs)
    )
    return [list(row) for row in rows]


def _table_rows(inputs: ReportInputs) -> list[list[str]]:
    rows = []
    for sweep in inputs.sweeps:
        meta = sweep.metadata
        recorded = " ".join(str(meta.get(k, "")) for k in ("command", "date")).strip() or "–"
        rows.append(
            [
                "sweep",
                display_path(sweep.source),
                f"{sweep.table.num_rows} runs of '{meta.get('name', '?')}'",
                recorded,
            ]
        )
    for table in inputs.accuracy:
        models = sorted(set(table.table.column("model").to_pylist()))
        rows.append(
            ["accuracy", display_path(table.source), f"predictor accuracy of {', '.join(models)}", "–"]
        )
    for source in dict.fromkeys(r.source for r in inputs.runs):
        runs = [r for r in inputs.runs if r.source == source]
        clocks = ", ".join(sorted({r.result.clock for r in runs}))
        rows.append(["runs", display_path(source), f"{len(runs)} runs ({clocks} clock)", "–"])
    return rows


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
