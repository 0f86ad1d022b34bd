"""``moe-prefetch trace``: inspect, validate and import routing traces."""

from __future__ import annotations

import argparse

from traces.trace import read_trace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace", help="inspect, validate and import routing traces", description=__doc__
    )
    actions = parser.add_subparsers(dest="trace_command", metavar="ACTION", required=True)

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
