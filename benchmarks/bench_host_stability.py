"""Benchmark: how steady is this host's single-thread speed over time?

A live decode at batch 1 is host-bound (every eager kernel costs the host more than the GPU), so the
host's speed is the decode's speed. On the H200 VM the live step times switched between levels ~20%
apart for seconds at a time. This script times a fixed piece of pure-Python work (no CUDA) in
back-to-back chunks for ``--seconds`` and reports the chunk-time distribution, how often the speed
changed level, and the hypervisor's steal time over the run (``/proc/stat``), so the cause can be told
apart: steal (other tenants), frequency, or the process itself.

    python benchmarks/bench_host_stability.py [--seconds 20] [--chunk-ms 10] [--json out.json]
    python benchmarks/bench_host_stability.py --fastest 2      # prints e.g. "3,11"

Run it under ``taskset -c N`` to compare a pinned process with an unpinned one. ``--fastest N`` times
the same work on every CPU this process may use (rounds over all CPUs, median per CPU) and prints the N
fastest as a taskset list: on the H200 VM single vCPUs differed by 40% in speed, and an unpinned decode
wandered between them (scripts/gpu_validate.sh pins calibration and validation to the fastest pair).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

from sim.host_speed import work


def cpu_times() -> dict[str, int]:
    """The aggregate CPU line of /proc/stat (jiffies): user, system, idle, steal."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = handle.readline().split()[1:]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {name: int(value) for name, value in zip(names, fields, strict=False)}


def calibrate_iterations(chunk_s: float) -> int:
    n = 1000
    while True:
        t0 = time.perf_counter()
        work(n)
        if time.perf_counter() - t0 >= chunk_s / 4:
            return max(1, int(n * chunk_s / (time.perf_counter() - t0)))
        n *= 2


def time_chunks(n: int, seconds: float) -> list[float]:
    """Seconds of each back-to-back chunk of ``work(n)`` over ``seconds``."""
    chunks = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        work(n)
        chunks.append(time.perf_counter() - t0)
    return chunks


def measure(seconds: float, chunk_s: float) -> dict:
    n = calibrate_iterations(chunk_s)
    before = cpu_times()
    chunks = time_chunks(n, seconds)
    after = cpu_times()
    busy = sum(after[k] - before[k] for k in after)
    median = statistics.median(chunks)
    slow = [c > 1.1 * median for c in chunks]
    switches = sum(1 for a, b in itertools.pairwise(slow) if a != b)
    deciles = statistics.quantiles(chunks, n=10)
    return {
        "affinity": sorted(os.sched_getaffinity(0)),
        "chunks": len(chunks),
        "iterations_per_chunk": n,
        "median_ms": median * 1e3,
        "p10_ms": deciles[0] * 1e3,
        "p90_ms": deciles[-1] * 1e3,
        "max_ms": max(chunks) * 1e3,
        "share_slower_than_1.1x_median": sum(slow) / len(slow),
        "level_switches": switches,
        "steal_share_of_all_cpus": (after["steal"] - before["steal"]) / busy if busy else 0.0,
        "series_ms": [round(c * 1e3, 3) for c in chunks[:: max(1, len(chunks) // 400)]],
    }


def fastest_cpus(count: int, rounds: int = 5, chunk_s: float = 0.02) -> list[int]:
    """The ``count`` CPUs of this process's affinity set that ran the fixed work fastest (median over
    ``rounds`` interleaved rounds); restores the affinity set afterwards."""
    allowed = sorted(os.sched_getaffinity(0))
    n = calibrate_iterations(chunk_s)
    samples: dict[int, list[float]] = {cpu: [] for cpu in allowed}
    try:
        for _ in range(rounds):
            for cpu in allowed:
                os.sched_setaffinity(0, {cpu})
                t0 = time.perf_counter()
                work(n)
                samples[cpu].append(time.perf_counter() - t0)
    finally:
        os.sched_setaffinity(0, allowed)
    return sorted(allowed, key=lambda cpu: statistics.median(samples[cpu]))[:count]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chunk-ms", type=float, default=10.0)
    parser.add_argument("--json", help="also write the result (with a thinned series) to this path")
    parser.add_argument("--fastest", type=int, metavar="N", help="print the N fastest CPUs and stop")
    args = parser.parse_args()
    if args.fastest:
        print(",".join(str(cpu) for cpu in fastest_cpus(args.fastest)))
        return
    result = measure(args.seconds, args.chunk_ms / 1e3)
    print(
        f"cpus {result['affinity']}: chunk median {result['median_ms']:.2f} ms, p10 {result['p10_ms']:.2f}, "
        f"p90 {result['p90_ms']:.2f}, max {result['max_ms']:.2f}; "
        f"{result['share_slower_than_1.1x_median']:.1%} of chunks >1.1x median, "
        f"{result['level_switches']} level switches; steal {result['steal_share_of_all_cpus']:.2%}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
