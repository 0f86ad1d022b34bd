"""``moe-prefetch report``: one self-contained HTML report from result files.

Give any mix of files and directories: traces, simulation results (``moe-prefetch simulate --out``),
sweep tables (``moe-prefetch sweep``), predictor accuracy tables (``moe-prefetch predictor evaluate``)
and validation tables (``moe-prefetch validate``). Files are recognised by their content. The report
embeds plotly.js and every figure's data, works offline and opens in any browser; sections whose inputs
are missing are listed with the reason, and synthetic inputs are flagged on the page.
"""

from __future__ import annotations

import argparse
import shlex


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write one self-contained, offline HTML report from traces and result tables",
        description=__doc__,
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="result files or directories")
    parser.add_argument("--out", required=True, metavar="REPORT.html", help="where to write the report")
    parser.add_argument("--title", default=None, help="page title (default: 'moe-prefetch report')")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from reports.build import DEFAULT_TITLE, prepare_output, write_report
    from reports.inputs import load_inputs

    prepare_output(args.out)
    inputs = load_inputs(args.results)
    inputs.commands.append(shlex.join(["moe-prefetch", "report", *args.results, "--out", args.out]))
    path = write_report(inputs, args.out, title=args.title or DEFAULT_TITLE)
    print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
