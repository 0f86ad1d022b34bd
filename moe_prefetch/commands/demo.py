"""``moe-prefetch demo``: the main job on the embedded default data.

Replays the real traces shipped in traces/data/ (routing of the project's reference MoE models, with
their predictors' predictions), at their own size and on the shape of the public model each mirrors, on
the measured H200 profile: compares every prefetch policy, runs a small PCIe-bandwidth x cache-size
sweep, and writes one offline HTML report. About a minute on a 2-core laptop; no GPU and no network.
Without shipped traces it runs on a clearly labelled synthetic trace.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_prefetch.argtypes import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="compare prefetch policies on the shipped traces and write reports/out/demo.html",
        description=__doc__,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/out/demo.html"), metavar="REPORT.html", help="report path"
    )
    parser.add_argument(
        "--fast", action="store_true", help="tiny sizes (a few seconds; for tests and a first look)"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=None, metavar="N", help="processes (default: one per core)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import time

    from reports.build import prepare_output
    from reports.demo import DemoSettings, format_summary, run_demo

    prepare_output(args.out)
    started = time.perf_counter()
    settings = DemoSettings.fast(args.workers) if args.fast else DemoSettings(workers=args.workers)
    outcome = run_demo(settings, args.out, progress=not args.quiet)
    print()
    print(format_summary(outcome.summary))
    print()
    if outcome.synthetic:
        print("NOTE: these numbers come from a SYNTHETIC trace (no real trace in traces/data/ yet).")
    print(f"report: {outcome.report.resolve()}  ({time.perf_counter() - started:.0f} s)")
    return 0
