"""Benchmark (GPU): can a host-speed probe track the live executor's speed from run to run?

At batch 1 the live executor is host-bound, and on the H200 VMs its speed moved by 15-50% between
minutes (reports/validation/session3/). If a cheap probe of the host's speed moved with it, the
simulator could take the host's speed as a measured input per run (as it takes the link's bandwidth).
This script decodes one shape's configurations again and again on CPU A while

- a background process runs fixed pure-Python work (``sim.host_speed.work``) in 10 ms chunks on
  CPU B for the whole time (does the machine slow down as a whole?), and
- the decoding process times the same work for 0.2 s on CPU A right before each run (does the core it
  runs on predict the run?),

then reports, per policy, the spread of the runs and the Pearson correlation of each run's mean step
time with both probes (a probe that tracks the host gives r near 1).

    python benchmarks/bench_host_tracking.py --grid reports/validation/grid.toml --shape 0 \\
        --policies resident,on-demand --fraction 0.25 --repeats 15 --cpus 3,11 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

from sim.host_speed import work

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_host_stability import calibrate_iterations, time_chunks

CHUNK_S = 0.01


def background_probe(cpu: int, seconds: float, queue: multiprocessing.Queue) -> None:
    """Chunks of fixed work on ``cpu`` for ``seconds``; puts [(wall time at end, chunk seconds)]."""
    os.sched_setaffinity(0, {cpu})
    n = calibrate_iterations(CHUNK_S)
    samples = []
    end = time.time() + seconds
    while time.time() < end:
        t0 = time.perf_counter()
        work(n)
        samples.append((time.time(), time.perf_counter() - t0))
    queue.put((n, samples))


def probe_here(n: int, seconds: float = 0.2) -> float:
    """Median seconds of one chunk of fixed work on this process's CPU."""
    return statistics.median(time_chunks(n, seconds))


def pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", default="reports/validation/grid.toml")
    parser.add_argument("--shape", type=int, default=0, help="index of the grid's shape")
    parser.add_argument("--policies", default="resident,on-demand")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cpus", default="", help="A,B: decode on A, background probe on B")
    parser.add_argument("--budget-seconds", type=float, default=150.0, help="background probe duration")
    parser.add_argument("--json", help="also write every run and both probes' series here")
    args = parser.parse_args()

    allowed = sorted(os.sched_getaffinity(0))
    cpu_a, cpu_b = (int(c) for c in args.cpus.split(",")) if args.cpus else (allowed[0], allowed[-1])
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    background = multiprocessing.get_context("spawn").Process(
        target=background_probe, args=(cpu_b, args.budget_seconds, queue)
    )
    background.start()
    os.sched_setaffinity(0, {cpu_a})

    from sim import live
    from sim.policies import PolicySpec
    from sim.validate import load_grid, profile_for, shape_trace

    grid = load_grid(args.grid)
    hardware = profile_for(grid)
    shape, trace = shape_trace(grid.shapes[args.shape])
    options = grid.options()
    specs = [PolicySpec(p) for p in args.policies.split(",")]
    plans = [live.prepare(trace, shape, s, grid.cache(args.fraction), options) for s in specs]
    model = live.open_model(
        shape,
        max(p[2] for p in plans),
        any(not p[1].resident for p in plans),
        options.batch_size,
        int(trace.pos.max()) + 1,
        any(p[1].predictor_kind == "mlp" for p in plans),
        hardware.copy.engines,
        live.LiveOptions(),
        serial_link=hardware.copy.serial,
    )
    n = calibrate_iterations(CHUNK_S)
    runs = []
    live.run_live(model, trace, hardware, grid.cache(args.fraction), specs[0], options)  # burn-in
    for r in range(args.repeats):
        for spec in specs:
            before = probe_here(n)
            t0 = time.time()
            result = live.run_live(model, trace, hardware, grid.cache(args.fraction), spec, options)
            runs.append(
                {
                    "repeat": r,
                    "policy": spec.label(),
                    "start": t0,
                    "end": time.time(),
                    "mean_ms": result.summary()["mean_latency_s"] * 1e3,
                    "probe_here_ms": before * 1e3,
                }
            )
            mean_ms = runs[-1]["mean_ms"]
            print(f"{r:3d} {spec.label():16s} {mean_ms:8.2f} ms  probe {before * 1e3:.3f} ms", flush=True)
    _bn, samples = queue.get()
    background.join()
    for run in runs:
        inside = [c for t, c in samples if run["start"] <= t <= run["end"]]
        run["probe_background_ms"] = statistics.fmean(inside) * 1e3 if inside else float("nan")

    print(f"\n{shape.name}, cache {args.fraction}, decode on CPU {cpu_a}, background probe on CPU {cpu_b}")
    for spec in specs:
        mine = [r for r in runs if r["policy"] == spec.label()]
        means = [r["mean_ms"] for r in mine]
        spread = (max(means) - min(means)) / statistics.fmean(means)
        print(
            f"{spec.label():16s} runs {len(mine)}: mean {statistics.fmean(means):.2f} ms, "
            f"min {min(means):.2f}, max {max(means):.2f} ({spread:.0%}); "
            f"r(probe on A before) {pearson(means, [r['probe_here_ms'] for r in mine]):+.2f}, "
            f"r(background on B) {pearson(means, [r['probe_background_ms'] for r in mine]):+.2f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"cpus": [cpu_a, cpu_b], "shape": shape.name, "runs": runs, "background": samples})
        )


if __name__ == "__main__":
    main()
