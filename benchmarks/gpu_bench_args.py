"""What the per-shape GPU benchmarks share: their command line and their refusal to run without a GPU."""

from __future__ import annotations

import argparse
import sys

import torch

#: the shapes a GPU benchmark measures when given none
DEFAULT_SHAPES = ("qwen3-30b-a3b", "deepseek-v2-lite")


def shape_benchmark_parser(doc: str, reps: int) -> argparse.ArgumentParser:
    """A parser with ``--shape`` (repeatable; ``DEFAULT_SHAPES`` if none), ``--reps`` and ``--json``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = " and ".join(DEFAULT_SHAPES)
    parser.add_argument("--shape", action="append", help=f"model shape key (repeatable; default {default})")
    parser.add_argument("--reps", type=int, default=reps, help="interleaved repetitions")
    parser.add_argument("--json", help="write the results here")
    return parser


def parse_on_gpu(
    parser: argparse.ArgumentParser, argv: list[str] | None, program: str
) -> tuple[argparse.Namespace, torch.device | None]:
    """The parsed arguments and the GPU, or None after saying on stderr that ``program`` needs one."""
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        return args, torch.device("cuda")
    print(f"{program}: needs a CUDA GPU", file=sys.stderr)
    return args, None
