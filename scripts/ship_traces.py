#!/usr/bin/env python3
"""Put GPU pipeline results into ``traces/data/``: the traces and a provenance README made from them.

    python3 scripts/ship_traces.py RESULTS_DIR [RESULTS_DIR ...] [--dest traces/data] [--note TEXT]

It also merges the models' predictor accuracy tables into ``reports/accuracy/`` (``--tables``).

Each RESULTS_DIR is what ``scripts/gpu_pipeline.py`` left in ``$OUT`` (``<model>.parquet`` and
``<model>.results.tar.gz`` per model); for a model found in several, the last directory wins. A model whose
training did not reach a finite validation loss is left out. A model with results but no trace file gets a
README section that says so. Every shipped trace is validated with the project's reader first. The README
states what each number is and where it came from; nothing in it is typed by hand except ``--note``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from predictor.tables import read_metadata, write_combined  # noqa: E402
from traces.fileio import atomic_write, write_text_atomic  # noqa: E402
from traces.refmodels import RECIPE_FILE  # noqa: E402
from traces.trace import Trace, read_trace  # noqa: E402

INTRO = (
    "These traces are **gpu-collected**: real expert choices of real MoE language models on real text, "
    "recorded on an NVIDIA GPU with `moe-prefetch collect`. No pretrained MoE weights could be "
    "downloaded, so the models are small ones this project trained from scratch (`moe-prefetch "
    "train-reference`) with transformers' own model classes, mirroring the routing geometry (experts, "
    "top-k, shared experts, dense first layer) of DeepSeek-V2-Lite, Qwen3-30B-A3B and Phi-mini-MoE at a "
    "small scale. They are not those public models, and their routing is not theirs. The text is held-out "
    "documents (the corpus bundle's test split, never trained on) of Linux kernel documentation, Python "
    "documentation and Python standard-library source."
)
SUBSET = (
    "Each trace keeps the first whole test-split sequences that reach 20,480 tokens (the collection has "
    "more; predictor metrics in the metadata and the tables below are over every test-split token of the "
    "collection). Router weights and confidences are rounded to bfloat16 precision; expert ids are exact; "
    "router logits are left out. `moe-prefetch trace info traces/data/<model>.parquet` prints the full "
    "provenance and recipe."
)
REGENERATE = (
    "Regenerate: `moe-prefetch corpus build --out .bundle/corpus.tar.xz`, then on the GPU machine "
    "`python3 scripts/gpu_pipeline.py --bundle .bundle/corpus.tar.xz --out OUT --parallel`, then `python3 "
    "scripts/ship_traces.py OUT`. Weights, activations and the corpus stay out of git."
)


def read_results(archive: Path) -> dict[str, str]:
    """The text files of one ``<model>.results.tar.gz`` by base name."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith((".md", ".json", ".log"))]
        return {Path(m.name).name: tar.extractfile(m).read().decode() for m in members}  # type: ignore[union-attr]


def recipe_rows(recipe: dict) -> list[str]:
    quality = recipe["quality"]
    return [
        f"| parameters | {recipe['parameters']:,} |",
        f"| training | {recipe['tokens_seen']:,} tokens ({recipe['steps']} steps of "
        f"{recipe['batch_sequences']} x {recipe['seq_len']} tokens) in {recipe['train_minutes']} min "
        f"at {recipe['tokens_per_s']:,} tokens/s on {recipe['device']}; seed {recipe['seed']} |",
        f"| optimizer | {recipe['optimizer']}; {recipe['aux_loss']} |",
        f"| validation loss | {quality['validation_loss']} nats/token (perplexity "
        f"{quality['validation_perplexity']}) on {quality['validation_tokens']:,} tokens |",
        f"| unigram baseline | {quality['unigram_loss']} nats/token "
        f"(perplexity {quality['unigram_perplexity']}) |",
    ]


def balance_rows(recipe: dict) -> list[str]:
    lines = [
        "Router load balance per MoE layer on the validation split (share of routed slots per expert; "
        "1.0 = uniform):",
        "",
        "| layer | max / mean | min / mean | CV | normalized entropy | unused experts |",
        "|---|---|---|---|---|---|",
    ]
    for layer, b in recipe["quality"]["router_balance"].items():
        lines.append(
            f"| {layer} | {b['max_over_mean']:.2f} | {b['min_over_mean']:.2f} | {b['cv']:.2f} | "
            f"{b['normalized_entropy']:.3f} | {b['unused_experts']} |"
        )
    return lines


def accuracy_rows(results: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for file, text in sorted(results.items()):
        if file.startswith("accuracy") and file.endswith(".md"):
            body = text.split("\n", 1)[1] if text.startswith("# ") else text
            lines += ["### Predictor accuracy", "", body.replace("\n## ", "\n#### ").strip(), ""]
    return lines


def model_section(name: str, results: dict[str, str], trace_path: Path | None) -> list[str]:
    recipe = json.loads(results[RECIPE_FILE])
    lines = [
        f"## {name}",
        "",
        f"Mirrors {recipe['mirrors']}; transformers model type `{recipe['model_type']}`, trained from "
        "scratch by this project.",
        "",
        "| | |",
        "|---|---|",
    ]
    if trace_path is None:
        lines.insert(2, "**No trace shipped for this model** (see the note above); its numbers follow.\n")
    else:
        trace = read_trace(trace_path)
        shape, prov = trace.metadata.model, trace.metadata.provenance
        shipped = prov.recipe.get("shipped", {})
        seconds = prov.recipe.get("pipeline_seconds", {})
        columns = [f"pred.{p.name}" for p in trace.metadata.predictors] + [
            f"conf.{n}" for n in trace.confidences
        ]
        lines += [
            f"| file | `{trace_path.name}`, {trace_path.stat().st_size / 1e6:.2f} MB |",
            f"| tokens | {trace.num_tokens:,} ({shipped.get('sequences', '')}) |",
            f"| layers | {shape.num_layers} decoder layers, MoE layers {list(shape.moe_layers)} |",
            f"| experts | {shape.num_experts} routed, top-{shape.top_k}, {shape.num_shared_experts} shared; "
            f"expert intermediate {shape.expert_intermediate_size}, hidden {shape.hidden_size} |",
            f"| predictor columns | {', '.join(columns)} |",
            f"| collected | {prov.date} on {prov.gpu} |",
            f"| pipeline seconds | {', '.join(f'{k} {v}' for k, v in seconds.items())} |",
        ]
    lines += [*recipe_rows(recipe), "", *balance_rows(recipe)]
    config = ", ".join(f"{k}={v}" for k, v in sorted(recipe["config"].items()))
    return [*lines, "", f"transformers config: `{config}`", "", *accuracy_rows(results)]


def write_accuracy_tables(found: dict[str, tuple[Path, Path | None]], folder: Path) -> None:
    """Merge every model's accuracy table into ``folder`` (Parquet + CSV + per-model markdown), the form
    ``moe-prefetch report`` reads, keeping each model's provenance in the Parquet metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    tables, models = [], {}
    for name, (archive, _trace) in sorted(found.items()):
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                base = Path(member.name).name
                if base == "accuracy.parquet":
                    table = pq.read_table(io.BytesIO(tar.extractfile(member).read()))  # type: ignore[union-attr]
                    # tables written before evaluate recorded provenance: the activations were collected
                    # by this same pipeline run, on the GPU
                    models[name] = read_metadata(table)["models"].get(name, {"origin": "gpu-collected"})
                    tables.append(table)
                elif base.startswith("accuracy_") and base.endswith(".md"):
                    write_text_atomic(folder / base, tar.extractfile(member).read().decode())  # type: ignore[union-attr]
    if not tables:
        return
    write_combined(folder, pa.concat_tables([t.replace_schema_metadata(None) for t in tables]), models)
    print(f"wrote {folder}/accuracy.parquet and accuracy.csv for {sorted(models)}")


def collect_results(dirs: list[Path]) -> dict[str, tuple[Path, Path | None]]:
    """model -> (results archive, trace or None), the last directory that has the model winning."""
    found: dict[str, tuple[Path, Path | None]] = {}
    for folder in dirs:
        for archive in sorted(folder.glob("*.results.tar.gz")):
            name = archive.name.removesuffix(".results.tar.gz")
            recipe = json.loads(read_results(archive).get(RECIPE_FILE, "{}") or "{}")
            loss = recipe.get("quality", {}).get("validation_loss", float("nan"))
            if not math.isfinite(loss):
                print(
                    f"{archive}: training did not reach a finite validation loss; left out", file=sys.stderr
                )
                continue
            trace = folder / f"{name}.parquet"
            found[name] = (archive, trace if trace.exists() else None)
    return found


def copy_trace(source: Path, target: Path) -> Trace:
    """Copy a trace that the project's reader accepts to ``target`` atomically; return it as read back."""
    read_trace(source)
    with atomic_write(target, suffix=".parquet") as tmp:
        shutil.copyfile(source, tmp)
    return read_trace(target)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--dest", type=Path, default=REPO / "traces" / "data")
    parser.add_argument(
        "--tables", type=Path, default=REPO / "reports" / "accuracy", help="folder for the accuracy tables"
    )
    parser.add_argument(
        "--note", default="", help="a paragraph for the README (for example device time used)"
    )
    args = parser.parse_args()
    found = collect_results(args.results)
    if not found:
        print("no usable results", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    software = ""
    for name, (archive, trace) in sorted(found.items()):
        target = None
        if trace is not None:
            target = args.dest / f"{name}.parquet"
            prov = copy_trace(trace, target).metadata.provenance
            software = software or ", ".join(f"{k} {v}" for k, v in sorted(prov.software.items()))
        sections += model_section(name, read_results(archive), target)
    total_mb = sum(p.stat().st_size for p in args.dest.glob("*.parquet")) / 1e6
    header = [
        "# Shipped traces: real routing of reference MoE models trained by this project",
        "",
        INTRO,
        "",
        f"Software on the GPU machine: {software}. All shipped traces together: {total_mb:.1f} MB.",
        "",
        SUBSET,
        "",
        *([args.note, ""] if args.note else []),
        REGENERATE,
        "",
    ]
    write_text_atomic(args.dest / "README.md", "\n".join(header + sections) + "\n")
    write_accuracy_tables(found, args.tables)
    print(f"wrote {args.dest / 'README.md'}; {total_mb:.1f} MB of traces for {sorted(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
