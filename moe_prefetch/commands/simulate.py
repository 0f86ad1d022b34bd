"""``moe-prefetch simulate``: replay a trace through the simulator, one run per prefetch policy.

Each run decodes the trace token by token on a model shape (from the trace's metadata, or --shape) and a
hardware profile (a preset name or a profile TOML), with GPU expert slots (--cache-slots or
--cache-fraction) and one prefetch policy; it prints one row per policy. Policies take knobs after a
colon, e.g. ``pre-attention:m=12`` (over-provisioning), ``cross-layer:source=fate``,
``confidence:threshold=0.2:max_m=16``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

from moe_prefetch.argtypes import fraction_or_zero, non_negative_int, positive_int
from traces.fileio import InputError

if TYPE_CHECKING:
    from sim.cache import CacheConfig
    from sim.config import SimOptions
    from sim.hardware import HardwareProfile
    from sim.results import SimResult
    from traces.schema import ModelShape
    from traces.trace import Trace

COLUMNS = (
    ("policy", "{}", "policy"),
    ("mean ms", "{:.3f}", "mean_latency_s"),
    ("p50 ms", "{:.3f}", "p50_latency_s"),
    ("p99 ms", "{:.3f}", "p99_latency_s"),
    ("tok/s", "{:.1f}", "tokens_per_s"),
    ("hit %", "{:.1f}", "hit_rate"),
    ("late %", "{:.1f}", "late_rate"),
    ("miss %", "{:.1f}", "miss_rate"),
    ("wasted", "{}", "wasted"),
    ("GB moved", "{:.2f}", "gb_moved"),
    ("link %", "{:.0f}", "link_utilisation"),
    ("stall s", "{:.3f}", "stall_s"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from sim.eviction import EVICTION_RULES
    from sim.policies import POLICIES

    parser = subparsers.add_parser(
        "simulate",
        help="simulate prefetch policies on a trace and print latency, hits and bytes per policy",
        description=__doc__,
        epilog="policies: "
        + "; ".join(f"{name}: {doc}" for name, (_, doc) in POLICIES.items())
        + ". Hardware presets: h200 (measured), a100-pcie-gen4, rtx4090, v100-gen3, t4-gen3 (datasheet).",
    )
    parser.add_argument("trace", metavar="TRACE", help="trace Parquet file")
    parser.add_argument("--hardware", default="h200", help="preset name or profile TOML (default: h200)")
    parser.add_argument(
        "--shape",
        metavar="KEY|CONFIG",
        help="model shape: a known key (e.g. qwen3-30b-a3b) or an HF config.json (default: the trace's "
        "own); a different shape gets the trace's routing mapped onto it (layers and experts modulo)",
    )
    parser.add_argument(
        "--policy",
        default="on-demand,pre-attention,cross-layer,previous-token,oracle,resident",
        help="comma-separated policies (default: on-demand,pre-attention,cross-layer,previous-token,oracle,"
        "resident)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--cache-slots", type=non_negative_int, metavar="N", help="GPU expert slots (0: no cache)"
    )
    size.add_argument(
        "--cache-fraction",
        type=fraction_or_zero,
        metavar="F",
        help="GPU slots as a fraction of all experts (default 0.25)",
    )
    parser.add_argument("--per-layer", action="store_true", help="split the slots evenly over MoE layers")
    parser.add_argument(
        "--eviction", default="lru", choices=EVICTION_RULES, help="eviction rule (default lru)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, metavar="B", help="sequences decoded side by side"
    )
    parser.add_argument(
        "--host-memory",
        default="pinned",
        choices=("pinned", "pageable"),
        help="where experts live on the host",
    )
    parser.add_argument(
        "--predictor-device",
        default="gpu",
        choices=("gpu", "gpu-side", "cpu"),  # sim.config.PREDICTOR_DEVICES
        help="where the predictor runs: on the GPU in line (default; its whole time on the compute "
        "stream), on a GPU side stream (a calibrated share of it), or the MLP on the CPU",
    )
    parser.add_argument(
        "--warmup-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="leave the first N steps out of the latency summary",
    )
    parser.add_argument(
        "--timeline",
        type=non_negative_int,
        nargs="?",
        const=8,
        default=0,
        metavar="STEPS",
        help="record compute and copy intervals of the first STEPS steps (default 8 when given)",
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="simulate only the first N tokens of the trace"
    )
    parser.add_argument("--out", metavar="FILE", help="write the results (.parquet, or .json for one policy)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sim.cache import CacheConfig, CacheTooSmall
    from sim.config import SimOptions
    from sim.hardware import load_profile
    from sim.policies import PolicySpec
    from sim.results import write_results
    from sim.simulation import simulate
    from traces.trace import read_trace

    trace = read_trace(args.trace)
    if args.max_tokens is not None:
        trace = trace.select_tokens(slice(0, args.max_tokens))
    hardware = load_profile(args.hardware)
    shape = trace.metadata.model
    if args.shape:
        trace, shape = _on_shape(trace, args.shape)
    policies = []
    for text in args.policy.split(","):
        try:
            policies.append(PolicySpec.parse(text))
        except ValueError as exc:
            raise InputError("--policy", str(exc)) from None
    try:
        if args.cache_slots is not None:
            cache = CacheConfig(slots=args.cache_slots, per_layer=args.per_layer, eviction=args.eviction)
        else:
            fraction = 0.25 if args.cache_fraction is None else args.cache_fraction
            cache = CacheConfig(fraction=fraction, per_layer=args.per_layer, eviction=args.eviction)
        options = SimOptions(
            batch_size=args.batch_size,
            host_memory=args.host_memory,
            predictor_device=args.predictor_device,
            warmup_steps=args.warmup_steps,
            timeline_steps=args.timeline,
        )
    except ValueError as exc:
        raise InputError("options", str(exc)) from None
    if args.out and args.out.endswith(".json") and len(policies) != 1:
        raise InputError(args.out, "a .json result holds one run; use .parquet for several policies")
    results = []
    bar = tqdm(
        policies, desc="simulate", unit="policy", file=sys.stderr, disable=True if len(policies) < 2 else None
    )
    for spec in bar:
        try:
            results.append(simulate(trace, shape, hardware, cache, spec, options))
        except CacheTooSmall as exc:
            raise InputError(
                "--cache-slots" if args.cache_slots is not None else "--cache-fraction", str(exc)
            ) from None
        except (KeyError, ValueError) as exc:
            raise InputError(
                args.trace, f"policy {spec.label()}: {exc.args[0] if exc.args else exc}"
            ) from None
    print(_header(args.trace, trace, shape, hardware, cache, results[0], options))
    print(format_table([r.summary_row() for r in results]))
    if args.out:
        try:
            if args.out.endswith(".json"):
                results[0].to_json(args.out)
            else:
                write_results(results, args.out)
        except OSError as exc:
            raise InputError(args.out, f"cannot write the results ({exc.strerror or exc})") from None
        print(f"results written to {args.out}")
    return 0


def _on_shape(trace: Trace, spec: str) -> tuple[Trace, ModelShape]:
    """``trace`` on the shape ``spec``; a shape with other layers or experts gets the routing mapped."""
    from sim.simulation import check_compatible
    from traces.shapes import resolve_shape

    shape = resolve_shape(spec)
    try:
        check_compatible(trace, shape)
        return trace, shape
    except ValueError:
        pass
    from sim.retarget import retarget_trace

    try:
        mapped = retarget_trace(trace, shape)
    except ValueError as exc:
        raise InputError(spec, f"cannot map the trace onto this shape ({exc})") from None
    print(f"note: {mapped.metadata.provenance.notes.split('; ')[-1]}", file=sys.stderr)
    return mapped, mapped.metadata.model


def _header(
    path: str,
    trace: Trace,
    shape: ModelShape,
    hardware: HardwareProfile,
    cache: CacheConfig,
    result: SimResult,
    options: SimOptions,
) -> str:
    origin = trace.metadata.provenance.origin
    slots = result.counters.get("cache_slots", 0)
    total = len(shape.moe_layers) * shape.num_experts
    return (
        f"trace {path} ({origin}, {trace.num_tokens} tokens, {trace.num_layers} MoE layers) | "
        f"shape {shape.name} ({shape.bytes_per_expert / 2**20:.1f} MiB/expert) | "
        f"hardware {hardware.meta.name} [{hardware.meta.source}] | "
        f"cache {slots}/{total} slots ({cache.eviction}"
        f"{', per layer' if cache.per_layer else ''}) | batch {options.batch_size}, {options.host_memory}"
    )


def format_table(rows: list[dict]) -> str:
    """One line per run with the columns of COLUMNS (times in ms, rates in %; n/a: not measured, e.g. the
    latency of a run with no decode token after its warm-up)."""
    cells = [[title for title, _, _ in COLUMNS]]
    for row in rows:
        needed = max(row["hits"] + row["late"] + row["misses"], 1)
        values = dict(row)
        values["late_rate"] = row["late"] / needed
        values["gb_moved"] = row["bytes_moved"] / 1e9
        line = []
        for _, fmt, key in COLUMNS:
            value = values[key]
            if isinstance(value, float) and math.isnan(value):
                line.append("n/a")
                continue
            if key.endswith("_latency_s"):
                value *= 1e3
            elif key in ("hit_rate", "late_rate", "miss_rate", "link_utilisation"):
                value *= 100
            line.append(fmt.format(value))
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
