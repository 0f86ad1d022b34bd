"""The accuracy table: long format (CSV + Parquet) for the report, and a markdown rendering for people.

One row per (model, predictor, layer, metric, k'): ``layer`` is the decoder layer index, ``-1`` the mean
over MoE layers (over every covered token-layer pair); ``k_prime`` is 0 where the metric has none;
``num_tokens`` is the number of tokens evaluated and ``coverage`` the fraction of them (of token-layer
pairs for ``layer = -1``) for which the predictor made a prediction.

``write_tables`` keeps one combined ``accuracy.csv`` / ``accuracy.parquet`` per table directory (rows of
the evaluated model replace that model's earlier rows, other models' rows stay) and writes one markdown
file per model, ``accuracy_<model>.md``. The Parquet file's key-value metadata holds, under
``METADATA_KEY``, a JSON document ``{"version": 1, "models": {model: {"origin": ..., ...}}}`` saying where
each model's activations came from (``origin`` as in a trace's provenance: a table computed from
synthetic activations says ``synthetic``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from traces.fileio import atomic_write, write_text_atomic
from traces.schema import ModelShape

COLUMNS: dict[str, pa.DataType] = {
    "model": pa.string(),
    "predictor": pa.string(),
    "layer": pa.int32(),
    "metric": pa.string(),
    "k_prime": pa.int32(),
    "value": pa.float64(),
    "ci_low": pa.float64(),
    "ci_high": pa.float64(),
    "num_tokens": pa.int64(),
    "coverage": pa.float64(),
}
MEAN_LAYER = -1
TABLE_STEM = "accuracy"
METADATA_KEY = b"moe_prefetch_accuracy"

#: The paper's first-MoE-layer numbers (arXiv 2511.10676, Table 4), by its models' (experts, top-k).
PAPER_FIRST_LAYER: dict[tuple[int, int], dict[str, Any]] = {
    (64, 6): {"model": "DeepSeek-V2-Lite", "k_prime": 10, "exact_match": 0.9303, "overprovision_hit": 0.9865,
              "top1": 0.9885},
    (128, 8): {"model": "Qwen3-30B-A3B", "k_prime": 12, "exact_match": 0.9469, "overprovision_hit": 0.9881,
               "top1": 0.9955},
    (16, 2): {"model": "Phi-mini-MoE", "k_prime": 3, "exact_match": 0.9762, "overprovision_hit": 0.9905,
              "top1": 0.9895},
}  # fmt: skip


def to_arrow(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with the COLUMNS keys) as an Arrow table with the fixed schema."""
    schema = pa.schema(list(COLUMNS.items()))
    return pa.table({name: pa.array([r[name] for r in rows], type=t) for name, t in COLUMNS.items()}, schema)


def _csv_text(table: pa.Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow(
            ["" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in row.values()]
        )
    return out.getvalue()


def _file_token(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def read_metadata(table: pa.Table) -> dict[str, Any]:
    """The accuracy metadata document of ``table`` (empty models when it has none)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {"version": 1, "models": {}}


def write_tables(
    table_dir: Path,
    rows: Sequence[dict[str, Any]],
    model: ModelShape,
    k_prime: int,
    heading: str,
    provenance: dict[str, Any],
) -> list[Path]:
    """Write the combined long tables and this model's markdown; returns the paths written.

    ``provenance`` describes this model's activations (at least ``origin``) for the Parquet metadata.
    """
    table_dir = Path(table_dir)
    new = to_arrow(rows)
    parquet_path = table_dir / f"{TABLE_STEM}.parquet"
    metadata = {"version": 1, "models": {}}
    combined = new
    if parquet_path.exists():
        old = pq.read_table(parquet_path)
        metadata = read_metadata(old)
        keep = [r for r in old.cast(new.schema).to_pylist() if r["model"] != model.name]
        combined = pa.concat_tables([to_arrow(keep), new]) if keep else new
    metadata["models"][model.name] = provenance
    paths = write_combined(table_dir, combined, metadata["models"])
    md_path = table_dir / f"{TABLE_STEM}_{_file_token(model.name)}.md"
    write_text_atomic(md_path, render_markdown(rows, model, k_prime, heading))
    return [*paths, md_path]


def write_combined(table_dir: Path, table: pa.Table, models: dict[str, Any]) -> list[Path]:
    """Write the long accuracy table of several models as Parquet (``models`` = each model's provenance,
    in the metadata) and CSV, atomically; returns the two paths."""
    table_dir = Path(table_dir)
    metadata = {"version": 1, "models": models}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    parquet_path = table_dir / f"{TABLE_STEM}.parquet"
    with atomic_write(parquet_path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    csv_path = table_dir / f"{TABLE_STEM}.csv"
    write_text_atomic(csv_path, _csv_text(table))
    return [parquet_path, csv_path]


# ---------------------------------------------------------------------------------------------- markdown


def _percent(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _with_interval(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    if math.isnan(row["value"]):
        return "no prediction"
    if math.isnan(row["ci_low"]):
        return _percent(row["value"])
    return f"{_percent(row['value'])} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def _index(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    return {(r["predictor"], r["layer"], r["metric"], r["k_prime"]): r for r in rows}


def _summary_table(rows: Sequence[dict[str, Any]], layer: int, k_prime: int, paper: dict | None) -> list[str]:
    index = _index(rows)
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    lines = [
        f"| predictor | exact match | over-provisioning hit (k'={k_prime}) | top-1 | recall@k | coverage |",
        "|---|---|---|---|---|---|",
    ]
    for name in predictors:
        cells = [
            _with_interval(index.get((name, layer, "exact_match", 0))),
            _with_interval(index.get((name, layer, "overprovision_hit", k_prime))),
            _with_interval(index.get((name, layer, "top1", 0))),
            _with_interval(index.get((name, layer, "recall_at_k", 0))),
        ]
        any_row = index.get((name, layer, "exact_match", 0))
        coverage = _percent(any_row["coverage"]) if any_row else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {coverage} |")
    if paper is not None:
        lines.append(
            f"| paper: {paper['model']} (reported; its own model and data, not re-run here; "
            f"k'={paper['k_prime']}) | {_percent(paper['exact_match'])} | "
            f"{_percent(paper['overprovision_hit'])} | {_percent(paper['top1'])} | – | – |"
        )
    return lines


def _per_layer_table(rows: Sequence[dict[str, Any]], metric: str, k_prime: int) -> list[str]:
    index = _index(rows)
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    layers = [*sorted({r["layer"] for r in rows if r["layer"] != MEAN_LAYER}), MEAN_LAYER]
    lines = ["| layer | " + " | ".join(predictors) + " |", "|---" * (len(predictors) + 1) + "|"]
    for layer in layers:
        label = "mean" if layer == MEAN_LAYER else str(layer)
        cells = []
        for name in predictors:
            row = index.get((name, layer, metric, k_prime))
            cells.append("–" if row is None or math.isnan(row["value"]) else f"{100 * row['value']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _confidence_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Mean over layers: hit rate and mean extra experts fetched per confidence threshold and predictor."""
    index = _index(rows)
    prefix = "confidence_hit@"
    thresholds = list(
        dict.fromkeys(r["metric"][len(prefix) :] for r in rows if r["metric"].startswith(prefix))
    )
    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    lines = ["| threshold | " + " | ".join(predictors) + " |", "|---" * (len(predictors) + 1) + "|"]
    for threshold in thresholds:
        cells = []
        for name in predictors:
            hit = index.get((name, MEAN_LAYER, f"confidence_hit@{threshold}", 0))
            extra = index.get((name, MEAN_LAYER, f"confidence_extra@{threshold}", 0))
            if hit is None or extra is None or math.isnan(hit["value"]):
                cells.append("–")
            else:
                cells.append(f"{100 * hit['value']:.2f}% (+{extra['value']:.2f})")
        lines.append(f"| {threshold} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(rows: Sequence[dict[str, Any]], model: ModelShape, k_prime: int, heading: str) -> str:
    """The first-MoE-layer table next to the paper's numbers, the mean over layers, per-layer tables and
    the confidence-driven over-provisioning curve."""
    first = model.moe_layers[0]
    widest = max((r["k_prime"] for r in rows), default=model.top_k)
    paper = PAPER_FIRST_LAYER.get((model.num_experts, model.top_k))
    parts = [
        f"# Predictor accuracy: {model.name} ({model.num_experts} experts, top-{model.top_k})",
        "",
        heading,
        "",
        "Percentages with 95% bootstrap intervals over sequences in brackets. Tokens without a prediction",
        "are left out of a predictor's numbers; coverage says what fraction had one.",
        "",
        f"## First MoE layer (decoder layer {first})",
        "",
        *_summary_table(rows, first, k_prime, paper),
        "",
        "## Mean over all MoE layers",
        "",
        *_summary_table(rows, MEAN_LAYER, k_prime, None),
        "",
        "## Per layer: exact match (%)",
        "",
        *_per_layer_table(rows, "exact_match", 0),
        "",
        f"## Per layer: over-provisioning hit at k'={k_prime} (%)",
        "",
        *_per_layer_table(rows, "overprovision_hit", k_prime),
        "",
        "## Per layer: top-1 in the true set (%)",
        "",
        *_per_layer_table(rows, "top1", 0),
        "",
        "## Confidence-driven over-provisioning (mean over layers)",
        "",
        "Fetch the top-k, then further ranked experts while their score is at least the threshold (at most",
        f"{widest} experts in all). Cells: hit rate (all k true experts fetched) and, in brackets, the mean",
        "number of experts fetched beyond k. Scores mean different things per predictor (trace metadata).",
        "",
        *_confidence_table(rows),
        "",
    ]
    return "\n".join(parts)
