"""``moe-prefetch sweep``: run a grid of simulations described in a TOML file into one results table.

The grid is the product of every list in the file (traces, policies, cache sizes, hardware presets and
what-if overrides, batch sizes). Each run is keyed by a hash of its configuration; running the same
command again skips the runs the table already has, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import shlex

from moe_prefetch.argtypes import positive_int
from sim.sweep_store import PARTS_SUFFIX

EPILOG = """\
sweep file (TOML):
  [sweep]
  name = "PCIe bandwidth x cache size"
  traces = ["../../traces/data/*.parquet"]   # relative to the sweep file; globs allowed
  max_tokens = 2000                          # optional: first N tokens of each trace
  policies = ["on-demand", "pre-attention", "pre-attention:m=12", "oracle"]
  cache_fractions = [0.1, 0.25, 0.5]         # or cache_slots = [64, 128]
  eviction = ["lru"]                         # optional; lru, lfu, fifo, belady
  batch_sizes = [1]                          # optional

  [hardware]                                 # optional
  presets = ["h200"]                         # presets or profile TOML files
  pcie_gbps = [16, 32, 55.5]                 # what-if overrides, each a list
  copy_latency_s = [3e-6]
  host_memory = ["pinned", "pageable"]
  copy_engines = [1, 3]
  copy_issue_s = [0.0, 7.3e-5]               # host time per copy (0: a free host path)
  compute_scale = [1.0]
  predictor_s = [1.5e-4]

examples: examples/sweeps/*.toml
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of simulations (TOML sweep file) into one keyed Parquet table; resumable",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_file", metavar="SWEEP.toml", help="the sweep description")
    parser.add_argument(
        "--out",
        required=True,
        metavar="RESULTS.parquet",
        help=f"results table (created or extended; finished runs wait in RESULTS.parquet{PARTS_SUFFIX}/ "
        "until merged)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="local processes (default: one per core)",
    )
    where.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run the runs as Ray tasks: a cluster address, 'auto' (this machine's cluster) or 'local' "
        "(start a private single-machine Ray instance)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from sim.sweep import load_sweep, run_sweep

    spec = load_sweep(args.sweep_file)
    command = shlex.join(["moe-prefetch", "sweep", args.sweep_file, "--out", args.out])
    command += f" --ray {shlex.quote(args.ray)}" if args.ray else ""
    where = f"Ray ({args.ray})" if args.ray else f"{args.workers or 'one per core'} local worker(s)"
    print(f"sweep '{spec.name}': {spec.num_runs} grid points on {where}", flush=True)
    outcome = run_sweep(
        spec, args.out, workers=args.workers, ray_address=args.ray, progress=not args.quiet, command=command
    )
    print(
        f"{outcome.ran} run(s) done, {outcome.skipped} already in the table, {outcome.table.num_rows} rows "
        f"in {outcome.path} ({outcome.wall_s:.1f} s)"
    )
    return 0
