"""``moe-prefetch trace``: inspect, validate and import routing traces."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from moe_prefetch.argtypes import non_negative_int, positive_int
from traces.trace import Trace, read_trace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace", help="inspect, validate and import routing traces", description=__doc__
    )
    actions = parser.add_subparsers(dest="trace_command", metavar="ACTION", required=True)

    info = actions.add_parser(
        "info",
        help="summarise a trace: size, model, provenance, predictors, popularity skew, reuse",
        description="Print what a trace holds and where it came from, with routing statistics: expert "
        "popularity skew per layer (share of the busiest 10% of experts, Gini), previous-token overlap "
        "and reuse distance quantiles (tokens since the same layer last used the expert).",
    )
    info.add_argument("files", nargs="+", metavar="FILE", help="trace Parquet file(s)")
    info.add_argument(
        "--cache-slots",
        type=positive_int,
        metavar="N",
        help="also print the hit rate of an optimal (Belady) cache of N experts per layer: the best any "
        "eviction policy can do without prefetching (slow on big traces: about 1 s per million routed slots)",
    )
    info.set_defaults(handler=_info)

    importer = actions.add_parser(
        "import",
        help="convert routing logs recorded by others (JSON lines, .xz/.gz) into a trace",
        description="Convert JSON-lines routing logs (vLLM or transformers hooks) into trace format v1. "
        "Layouts: 'flat' rows {dataset, problem_id, layer, token_idx, experts, gating_probs} (one sequence "
        "per problem) and 'typed' rows {type: meta|route, req_id, token_idx, layer, topk_ids, topk_weights} "
        "(one sequence per request and forward pass). Several files are merged by (sequence, token, layer), "
        "e.g. per-layer logs of one run; the trace holds the layers that were logged. Malformed rows and "
        "tokens missing a logged layer are dropped and counted in the printed summary.",
    )
    importer.add_argument("logs", nargs="+", metavar="LOG", help="JSON-lines log(s), optionally .xz/.gz/.bz2")
    importer.add_argument("--out", required=True, metavar="TRACE", help="trace Parquet file to write")
    importer.add_argument("--layout", choices=("auto", "flat", "typed"), default="auto", help="row layout")
    importer.add_argument(
        "--num-experts",
        type=positive_int,
        metavar="E",
        help="routed experts (default: the log's meta line, else --model, else the largest id + 1)",
    )
    importer.add_argument(
        "--top-k",
        type=positive_int,
        metavar="K",
        help="experts per token "
        "(default: the log's meta line, else --model, else the most common list length)",
    )
    importer.add_argument(
        "--drop-warmup",
        type=_drop_warmup,
        default="auto",
        metavar="auto|N",
        help="drop engine warm-up: 'auto' drops the leading runs of identically routed rows (each at "
        "least 16 long, one per dummy pass) per file and layer; N drops the first N rows per file and "
        "layer (0 keeps everything)",
    )
    importer.add_argument(
        "--model",
        metavar="SPEC",
        help="model shape: a known name (e.g. mixtral-8x7b, qwen1.5-moe-a2.7b) or a config.json path; "
        "fills the sizes the simulator needs (default: matched from the log's model_id when known)",
    )
    importer.add_argument("--model-name", metavar="NAME", help="name recorded in the trace metadata")
    importer.set_defaults(handler=_import)

    validate = actions.add_parser(
        "validate",
        help="check a trace file against format v1; exit 0 if valid, 2 otherwise",
        description="Check every rule of trace format v1 (columns, types, row grid, expert ids, "
        "metadata). Prints 'ok' and exits 0, or prints the first problem and exits 2.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="trace Parquet file(s)")
    validate.set_defaults(handler=_validate)


def _validate(args: argparse.Namespace) -> int:
    for path in args.files:
        trace = read_trace(path)
        print(f"{path}: ok ({trace.num_tokens} tokens x {trace.num_layers} MoE layers)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from traces.importer import ImportOptions, import_logs
    from traces.shapes import resolve_shape
    from traces.trace import write_trace

    options = ImportOptions(
        layout=args.layout,
        num_experts=args.num_experts,
        top_k=args.top_k,
        drop_warmup=args.drop_warmup,
        model=resolve_shape(args.model) if args.model else None,
        model_name=args.model_name,
        command=_import_command(args),
    )
    trace, report = import_logs(args.logs, options)
    write_trace(trace, args.out)
    for line in report.lines():
        print(line)
    print(
        f"wrote {args.out}: {trace.num_tokens:,} tokens x {trace.num_layers} layers "
        f"{list(trace.metadata.model.moe_layers)} in {len(trace.seq_starts) - 1:,} sequences, "
        f"E={trace.num_experts}, k={trace.top_k}"
    )
    return 0


def _drop_warmup(text: str) -> str | int:
    """``--drop-warmup``: 'auto' or a row count >= 0."""
    if text == "auto":
        return text
    try:
        return non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer >= 0, got {text!r}") from None


def _import_command(args: argparse.Namespace) -> str:
    """The ``trace import`` command line that reproduces this import (recorded in the provenance)."""
    import shlex

    words = ["moe-prefetch", "trace", "import", *args.logs, "--out", args.out, "--layout", args.layout]
    words += ["--drop-warmup", str(args.drop_warmup)]
    for flag in ("num_experts", "top_k", "model", "model_name"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(words)


def _info(args: argparse.Namespace) -> int:
    for path in args.files:
        trace = read_trace(path)
        print(path)
        for label, text in describe_trace(trace, cache_slots=args.cache_slots):
            print(f"  {label:<12} {text}")
    return 0


def describe_trace(trace: Trace, cache_slots: int | None = None) -> list[tuple[str, str]]:
    """(label, text) lines summarising ``trace`` (what ``trace info`` prints)."""
    from traces import stats

    model, prov = trace.metadata.model, trace.metadata.provenance
    starts = trace.seq_starts
    lengths = np.diff(starts) if trace.num_tokens else np.zeros(1, np.int64)
    lines = [
        (
            "tokens",
            f"{trace.num_tokens:,} in {len(starts) - 1:,} sequences "
            f"(length {int(lengths.min())}-{int(lengths.max())})",
        ),
        (
            "model",
            f"{model.name} ({model.architecture}): {model.num_moe_layers} MoE of {model.num_layers} layers, "
            f"{model.num_experts} experts, top-{model.top_k}, "
            f"{model.bytes_per_expert / 1e6:.1f} MB/expert in {model.dtype}",
        ),
        ("origin", prov.origin + (" (NOT measured on a model)" if prov.origin == "synthetic" else "")),
    ]
    for field in ("source", "gpu", "corpus", "command", "date", "notes"):
        value = getattr(prov, field)
        if value:
            lines.append((f"  {field}", str(value)))
    if prov.recipe:
        lines.append(("  recipe", _format_metrics(prov.recipe)))
    if prov.software:
        lines.append(("  software", ", ".join(f"{k} {v}" for k, v in sorted(prov.software.items()))))
    for info in trace.metadata.predictors:
        width = trace.predictions[info.name].shape[2]
        metrics = _format_metrics(info.metrics)
        lines.append(("predictor", f"{info.name} ({info.kind}, {width} ranked): {metrics or 'no metrics'}"))

    skew = stats.popularity_skew(stats.expert_counts(trace))
    share = skew.top_decile_share
    lines.append(
        (
            "popularity",
            f"busiest 10% of experts take {100 * share.mean():.1f}% of routed slots "
            f"(per layer {100 * share.min():.1f}-{100 * share.max():.1f}%; uniform = "
            f"{100 * max(1, -(-model.num_experts // 10)) / model.num_experts:.1f}%), "
            f"Gini {skew.gini.mean():.2f}, CV {skew.cv.mean():.2f}",
        )
    )
    overlap = stats.previous_token_overlap(trace)
    reuse = stats.reuse_distance_summary(trace)
    quantiles = ", ".join(f"p{round(100 * q)} {v:g}" for q, v in reuse.quantiles.items())
    lines.append(
        (
            "reuse",
            f"previous-token overlap {100 * np.nanmean(overlap):.1f}%; reuse distance {quantiles} tokens; "
            f"first uses {100 * reuse.first_use_share:.2f}% of routed slots",
        )
    )
    if cache_slots is not None:
        try:
            hit_rate = stats.oracle_cache_hit_rate(trace, cache_slots)
        except ValueError as exc:
            lines.append(("cache bound", str(exc)))
        else:
            lines.append(
                ("cache bound", f"Belady hit rate {100 * hit_rate:.1f}% with {cache_slots} slots per layer")
            )
    return lines


def _format_metrics(metrics: dict[str, Any], prefix: str = "") -> str:
    """``a=0.930, b.c=12`` from a (possibly nested) metrics dict."""
    parts = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            nested = _format_metrics(value, prefix=f"{name}.")
            if nested:
                parts.append(nested)
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            parts.append(f"{name}=[{len(value)} records]")
        elif isinstance(value, float):
            parts.append(f"{name}={value:.4g}")
        else:
            parts.append(f"{name}={value}")
    return ", ".join(parts)
