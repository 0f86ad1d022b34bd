"""``moe-prefetch validate``: run a grid live on the GPU and in the simulator, and compare the two.

The grid (TOML, see sim/validate.py) names the hardware profile (use the calibrated one), the policies,
cache fractions and, per model shape, the trace that drives it. Writes to DIR: live.parquet and
sim.parquet (full results, the simulator's record format), validation.md (the table: mean/p50/p99 per
configuration, both clocks, errors, hit/miss counts, bytes moved), validation.csv and validation.json
(with policy rankings, live findings and provenance).

A grid with ``host_gate_timeout_s`` > 0 makes every live run wait for the host core's fast level first
(sim/host_speed.py: on the H200 VMs a vCPU switched between two speeds 2x apart); a shape with
``host_gate = false`` runs without it (a copy-bound shape, whose steps the host's speed does not set).
The live results are saved after every pass, so a run stopped by a time limit keeps its finished passes.

Live runs also leave instance_runs.json: each shape's live model, where it holds every expert, decodes
calibration's resident host-cost runs too (alone, and with a chain of copies keeping the link busy), so
that ``moe-prefetch calibrate --refit RAW.json --instance-runs DIR/instance_runs.json`` can fit the GPU's
and the host's costs per layer and the ops' time beside copies to the very model the grid ran on (models
built one after the other ran up to 10% apart).

--live-only stops after the live runs (for a GPU machine without simpy); --resimulate skips them and
re-simulates the live results already in DIR, for instance with an improved profile (--hardware):
checking a model change costs no GPU time. --shape runs part of a grid (a grid too long for one session
on the GPU machine runs shape by shape, each calibrated on the machine it runs on).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from moe_prefetch.argtypes import positive_float
from traces.fileio import InputError, write_text_atomic

GIB = 1 << 30


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="compare the simulator with the live GPU executor over a grid of policies and cache sizes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--grid", required=True, metavar="GRID.toml", help="validation grid")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--hardware", help="hardware profile overriding the grid's (preset name or TOML)")
    parser.add_argument(
        "--shape",
        action="append",
        metavar="KEY",
        help="only this shape of the grid, as the grid names it (repeatable; default: every shape)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--live-only", action="store_true", help="run the live grid only (no simulator)")
    mode.add_argument(
        "--resimulate", action="store_true", help="re-simulate DIR/live.parquet instead of running live"
    )
    parser.add_argument("--device", default="auto", help="live device: auto, cuda, cuda:N or cpu")
    parser.add_argument(
        "--host-budget-gib",
        type=positive_float,
        default=8.0,
        help="pinned host memory for routed experts; beyond it layers share host buffers (default 8)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from sim import validate as v
    from sim.results import read_results, write_results

    grid = v.load_grid(args.grid)
    if args.shape:
        grid = v.only_shapes(grid, args.shape, args.grid)
    hardware = v.profile_for(grid, args.hardware)
    out = Path(args.out)
    live_path = out / "live.parquet"

    def say(message: str) -> None:  # time-stamped: a GPU clock log (gpu_validate.sh) lines up with the runs
        print(f"validate {datetime.datetime.now():%H:%M:%S}: {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    if args.resimulate:
        live = read_results(live_path)
        live_meta = {"live_results": str(live_path)}
    else:
        from sim.live import LiveOptions

        options = LiveOptions(device=args.device, host_budget_bytes=int(args.host_budget_gib * GIB))
        instance_runs: list[Any] = []

        def save(results: list[Any]) -> None:  # after each pass: a time limit loses the pass under way
            write_results(results, live_path)
            runs = [dataclasses.asdict(r) for r in instance_runs]
            write_text_atomic(out / "instance_runs.json", json.dumps(runs, indent=1) + "\n")

        live = v.run_live_grid(
            grid, hardware, options, progress=say, checkpoint=save, instance_runs=instance_runs
        )
        save(live)
        live_meta = _live_environment(args.device) | {"live_wall_s": time.perf_counter() - started}
        say(f"live results written to {live_path}")
        if args.live_only:
            return 0
    sim = v.simulate_grid(grid, hardware, progress=say)
    write_results(sim, out / "sim.parquet")
    rows = v.expand_resident(v.compare(live, sim), grid.cache_fractions)
    if not rows:
        raise InputError(live_path, "no live result matches a grid configuration")
    ranks = v.rankings(rows)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "grid": str(args.grid),
        "hardware": hardware.meta.__dict__,
        "traces": {run.shape: run.trace for run in grid.shapes},
        **live_meta,
    }
    gates = v.gate_summary(live)
    if gates:
        meta["host_gate"] = gates
    summary = v.write_outputs(out, rows, ranks, v.live_findings(rows), meta)
    print(v.markdown_table(rows))
    print(
        f"{summary['mean_within_5pct']}/{summary['configurations']} configurations with mean within 5%, "
        f"{summary['p99_within_10pct']} with p99 within 10% (worst mean {summary['max_abs_mean_err']:.1%}, "
        f"worst p99 {summary['max_abs_p99_err']:.1%}); misses identical: "
        f"{summary['misses_identical_everywhere']}; rankings identical in {summary['rankings_identical']}/"
        f"{summary['ranking_groups']}, agreeing on every pair the live passes order alike in "
        f"{summary['rankings_agree_where_live_passes_agree']}; live passes spread by "
        f"{summary['median_live_spread']:.1%} (median)"
    )
    if "rows_all_runs_fast" in summary:
        print(
            f"{summary['rows_all_runs_fast']} configurations had every live run end at the host's fast "
            f"level; {summary['mean_within_5pct_all_runs_fast']} of them with mean within 5%"
        )
    if "rows_with_fast_steps" in summary:
        print(
            f"over the steps the host core ran at its fast level (per-step probes; median share "
            f"{summary['median_fast_step_share']:.0%}): {summary['mean_within_5pct_fast_steps']}/"
            f"{summary['rows_with_fast_steps']} configurations with mean within 5%"
        )
    if gates:
        print(
            f"host gate: {gates['gated_runs']} live runs waited {gates['gate_wait_s']:.1f} s in all for the "
            f"host's fast level ({gates['gate_timeouts']} gave up); {gates['repeated']} repeated for "
            f"ending on the slow level, {gates['slow_after']} still did"
        )
    return 0


def _live_environment(device: str) -> dict[str, str]:
    import torch

    env = {"torch": torch.__version__, "device": device}
    if torch.cuda.is_available() and device != "cpu":
        env["gpu"] = torch.cuda.get_device_name()
    return env
