"""Keep only the first steps of every run's timeline in a results Parquet file (a smaller file to commit).

A validation grid that records every step's intervals (``timeline_steps`` as long as the run) writes
7 MB per grid; the copy and op statistics need a few steps. Per-token latencies and counts stay whole.

    python scripts/trim_timelines.py reports/validation/session7/placement/validation/live.parquet --steps 6
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.results import SimResult, read_results, write_results
from traces.fileio import InputError


def trimmed(result: SimResult, steps: int) -> SimResult:
    """``result`` with the intervals that start in its first ``steps`` steps only."""
    if result.timeline is None:
        return result
    end_s = float(np.sum(result.step_latency_s[:steps]))
    return dataclasses.replace(result, timeline=[i for i in result.timeline if i[2] < end_s])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", help="results Parquet files, rewritten in place")
    parser.add_argument("--steps", type=int, default=6, help="steps of timeline to keep (default 6)")
    args = parser.parse_args(argv)
    for path in args.results:
        try:
            write_results([trimmed(r, args.steps) for r in read_results(path)], path)
        except InputError as exc:
            print(f"trim_timelines: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
