"""``moe-prefetch demo``: the main job on the embedded default data."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="compare prefetch policies on the shipped traces and write reports/out/demo.html",
        description=__doc__,
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    raise NotImplementedError("demo is being built (issue 7)")
