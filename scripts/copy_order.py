"""Live against simulated copies, one by one: order, duration, the gaps between them.

A grid run with ``timeline_compute = false`` (reports/validation/session9/copy_timeline_grid.toml)
records every live copy's start and landing without events around the ops, which made the live host
4-14% slower (session 8). Re-simulated with the same grid (``moe-prefetch validate --resimulate``), the
simulator records its copies too. Copies are matched by (MoE layer, expert, occurrence); per live pass
this prints where the two orders first differ, how far copies sit from their simulated place on
average, the median copy time, the median gap between copies that follow each other within 20 us, and
the idle time of the link beyond that:

    python scripts/copy_order.py reports/validation/session9/c/validation deepseek cross-layer 0.5
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.results import SimResult, read_results
from traces.fileio import InputError

#: copies closer than this follow each other back to back; longer gaps are idle link
BACK_TO_BACK_S = 20e-6

Copy = tuple[tuple[int, int, int], float, float]


def copies(result: SimResult) -> list[Copy]:
    """``((layer, expert, occurrence), start_s, end_s)`` of every recorded copy, in start order."""
    seen: Counter[tuple[int, int]] = Counter()
    out = []
    for lane, _kind, start, end, layer, expert in sorted(result.timeline or (), key=lambda i: i[2]):
        if lane.startswith("copy"):
            seen[layer, expert] += 1
            out.append(((layer, expert, seen[layer, expert]), start, end))
    return out


def compare(live: list[Copy], sim: list[Copy]) -> dict[str, float]:
    """Order and timing of ``live`` against ``sim`` (see the module docstring)."""
    where = {key: i for i, (key, _, _) in enumerate(sim)}
    first = next((i for i, (a, b) in enumerate(zip(live, sim, strict=False)) if a[0] != b[0]), -1)

    def timing(cs: list[Copy]) -> tuple[float, float, float]:
        gaps = np.array([b[1] - a[2] for a, b in itertools.pairwise(cs)])
        back_to_back = gaps[gaps < BACK_TO_BACK_S]
        return (
            float(np.median([end - start for _, start, end in cs])),
            float(np.median(back_to_back)) if back_to_back.size else float("nan"),
            float(gaps[gaps >= BACK_TO_BACK_S].sum()),
        )

    (live_copy, live_gap, live_idle), (sim_copy, sim_gap, sim_idle) = timing(live), timing(sim)
    return {
        "copies": len(live),
        "first_order_difference": first,
        "mean_shift": float(np.mean([abs(where.get(key, i) - i) for i, (key, _, _) in enumerate(live)])),
        "live_copy_us": live_copy * 1e6,
        "sim_copy_us": sim_copy * 1e6,
        "live_gap_us": live_gap * 1e6,
        "sim_gap_us": sim_gap * 1e6,
        "live_idle_ms": live_idle * 1e3,
        "sim_idle_ms": sim_idle * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="a validation output folder with live.parquet and sim.parquet")
    parser.add_argument("shape", help="part of the shape's name, e.g. deepseek or qwen3 (any case)")
    parser.add_argument("policy", help="policy label, e.g. cross-layer")
    parser.add_argument("cache", type=float, help="cache fraction, e.g. 0.5")
    args = parser.parse_args(argv)
    folder = Path(args.folder)

    def pick(path: Path) -> list[SimResult]:
        return [
            r
            for r in read_results(path)
            if args.shape.lower() in r.config.shape.name.lower()
            and r.config.policy.label() == args.policy
            and r.config.cache.fraction == args.cache
            and r.timeline
        ]

    try:
        live, sim = pick(folder / "live.parquet"), pick(folder / "sim.parquet")
    except InputError as exc:
        print(f"copy_order: {exc}", file=sys.stderr)
        return 1
    if not live or not sim:
        print(f"copy_order: {folder}: no run of that configuration with a timeline", file=sys.stderr)
        return 1
    simulated = copies(sim[0])
    for run in live:
        c = compare(copies(run), simulated)
        first = c["first_order_difference"]
        differ = "the same order" if first < 0 else f"orders differ from copy #{first} on"
        print(
            f"pass {run.counters.get('live_pass')}: {c['copies']} copies; {differ}, "
            f"{c['mean_shift']:.1f} places apart on average; copy "
            f"{c['live_copy_us']:.1f} us live, {c['sim_copy_us']:.1f} simulated; back to back "
            f"{c['live_gap_us']:.2f} us apart live, {c['sim_gap_us']:.2f} simulated; idle link "
            f"{c['live_idle_ms']:.1f} ms live, {c['sim_idle_ms']:.1f} simulated"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
