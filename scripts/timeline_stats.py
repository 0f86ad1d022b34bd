"""What the recorded timelines of live (or simulated) runs say: per run, the median duration of each kind of
compute interval and of the copies, and how many there were.

The live executor records its first ``timeline_steps`` steps between CUDA events (sim/live.py); the
session-5 validation README reads its numbers from here (a routed expert 20.8 us in Qwen3's resident run,
26.2 us in its on-demand run; copies 175-181 us):

    python scripts/timeline_stats.py reports/validation/session5/graphed/live.parquet --pass 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.results import SimResult, read_results
from traces.fileio import InputError


def interval_medians_us(result: SimResult) -> dict[str, tuple[int, float]]:
    """Per interval kind ("expert", "attention", ..., "copy" for every copy lane): (count, median us)."""
    durations: dict[str, list[float]] = defaultdict(list)
    for lane, kind, start_s, end_s, _layer, _expert in result.timeline or ():
        durations["copy" if lane.startswith("copy") else kind].append((end_s - start_s) * 1e6)
    return {kind: (len(d), statistics.median(d)) for kind, d in sorted(durations.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", help="a results Parquet file (live.parquet, sim.parquet)")
    parser.add_argument("--pass", dest="live_pass", type=int, help="only this live pass")
    args = parser.parse_args(argv)
    try:
        results = read_results(args.results)
    except InputError as exc:
        print(f"timeline_stats: {exc}", file=sys.stderr)
        return 1
    for r in results:
        if r.timeline is None or (
            args.live_pass is not None and r.counters.get("live_pass") != args.live_pass
        ):
            continue
        cfg = r.config
        stats = ", ".join(f"{kind} {n} x {us:.1f}" for kind, (n, us) in interval_medians_us(r).items())
        print(f"{cfg.shape.name} | {cfg.policy.label()} | {cfg.cache.fraction} | {r.clock}: {stats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
