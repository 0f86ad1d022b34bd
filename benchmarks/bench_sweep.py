"""Benchmark: wall time of a 200-run sweep of a 48-layer trace, on the local process pool and on Ray.

The trace is synthetic, shaped like Qwen3-30B-A3B (48 MoE layers, 128 experts, top-8; pre-attention
predictor 95% exact, cross-layer 79%, 12 ranks). The grid: 5 policies x 4 cache sizes x 10 PCIe
bandwidths = 200 runs on the h200 preset. Each executor writes its own table into a temporary folder
(no run is skipped); the two tables must be identical, which the script checks.

    python benchmarks/bench_sweep.py [--tokens-per-sequence 64] [--workers N] [--no-ray] [--json F]

Ray runs as a private single-machine instance started by the sweep (``--ray local``), so its figure
includes Ray's start-up; the local figure includes the process pool's start-up. Both are end-to-end
times a user would see. CPU count and load average are printed because wall time depends on them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path

from sim.sweep import load_sweep, run_sweep
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import write_trace

POLICIES = ["on-demand", "previous-token", "cross-layer", "pre-attention", "oracle"]
CACHE_FRACTIONS = [0.05, 0.1, 0.25, 0.5]
PCIE_GBPS = [4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 40.0, 48.0, 56.0, 64.0]


def write_inputs(folder: Path, tokens_per_sequence: int) -> Path:
    """The synthetic 48-layer trace and the 200-run sweep file; returns the sweep file."""
    spec = SyntheticSpec(
        KNOWN_SHAPES["qwen3-30b-a3b"],
        num_sequences=4,
        tokens_per_sequence=tokens_per_sequence,
        predictor_accuracy={"pre-attention": 0.95, "cross-layer": 0.79},
        prediction_width=12,
        seed=0,
    )
    write_trace(generate_trace(spec), folder / "qwen3-like.parquet")
    sweep = folder / "bench.toml"
    sweep.write_text(
        textwrap.dedent(
            f"""
            [sweep]
            name = "bench: 200 runs, 48 layers"
            traces = ["qwen3-like.parquet"]
            policies = {json.dumps(POLICIES)}
            cache_fractions = {json.dumps(CACHE_FRACTIONS)}
            [hardware]
            presets = ["h200"]
            pcie_gbps = {json.dumps(PCIE_GBPS)}
            """
        )
    )
    return sweep


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens-per-sequence", type=int, default=64, help="4 sequences of this many tokens")
    parser.add_argument("--workers", type=int, default=None, help="local processes (default: one per core)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        folder = Path(tmp)
        spec = load_sweep(write_inputs(folder, args.tokens_per_sequence))
        tokens = 4 * args.tokens_per_sequence
        print(f"sweep: {spec.num_runs} runs x {tokens} tokens x 48 layers; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        figures: dict[str, float | int | bool] = {"runs": spec.num_runs, "tokens": tokens, "layers": 48}

        started = time.perf_counter()
        local = run_sweep(spec, folder / "local.parquet", workers=args.workers, progress=False)
        figures["local_wall_s"] = time.perf_counter() - started
        print(f"local pool ({args.workers or os.cpu_count()} workers): {figures['local_wall_s']:.1f} s, "
              f"{spec.num_runs / figures['local_wall_s']:.2f} runs/s")  # fmt: skip

        if not args.no_ray:
            started = time.perf_counter()
            ray = run_sweep(spec, folder / "ray.parquet", ray_address="local", progress=False)
            figures["ray_wall_s"] = time.perf_counter() - started
            figures["identical_tables"] = ray.table.to_pylist() == local.table.to_pylist()
            print(f"ray (local instance, start-up included): {figures['ray_wall_s']:.1f} s, "
                  f"{spec.num_runs / figures['ray_wall_s']:.2f} runs/s; identical table: "
                  f"{figures['identical_tables']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
