"""``moe-prefetch`` command line: one parser, one module per subcommand under ``moe_prefetch.commands``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``handler`` to a
function taking the parsed namespace and returning an exit code. Command modules import heavy packages
(torch, ray) inside their handlers so that ``--help`` and the simulator stay light.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from moe_prefetch import __version__
from traces.fileio import InputError

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "demo",
    "report",
    "sweep",
    "trace",
    "predictor",
    "corpus",
    "train_reference",
    "collect",
    "calibrate",
    "validate",
    "simulate",
)

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-prefetch",
        description=(
            "Measure what expert prefetching buys offloaded Mixture-of-Experts decode: collect routing "
            "traces on a GPU, train expert predictors, simulate prefetch policies over PCIe, validate the "
            "simulator on hardware and write HTML reports."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"moe_prefetch.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input prints one line to stderr and returns exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as error:
        print(f"moe-prefetch: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("moe-prefetch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
