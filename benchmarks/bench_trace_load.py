"""Benchmark: how fast ``read_trace`` loads (and fully validates) a trace of about a million rows.

Target (issue 2): well under one second for 1M rows. Builds a synthetic Qwen3-30B-A3B-shaped trace
(48 MoE layers, 128 experts, top-8) with one 12-wide prediction column, writes it to a temporary file,
then times ``read_trace`` several times and prints the median.

    python benchmarks/bench_trace_load.py [--rows 1000000] [--repeats 5] [--no-predictions]
                                           [--compression zstd|lz4|snappy|none]

Wall time depends on machine load; the CPU time of this process is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import read_trace, write_trace


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="approximate row count (tokens x layers)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-predictions", action="store_true", help="routing columns only")
    parser.add_argument(
        "--compression", default="zstd", help="Parquet codec for the file (write_trace default zstd)"
    )
    args = parser.parse_args()

    shape = KNOWN_SHAPES["qwen3-30b-a3b"]
    tokens_per_sequence = 512
    num_sequences = max(1, round(args.rows / shape.num_moe_layers / tokens_per_sequence))
    spec = SyntheticSpec(
        shape,
        num_sequences=num_sequences,
        tokens_per_sequence=tokens_per_sequence,
        predictor_accuracy={} if args.no_predictions else {"pre_attn": 0.93},
        prediction_width=12,
    )
    started = time.perf_counter()
    trace = generate_trace(spec)
    generated_s = time.perf_counter() - started
    rows = trace.num_tokens * trace.num_layers
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.parquet"
        started = time.perf_counter()
        write_trace(trace, path, compression=args.compression)
        written_s = time.perf_counter() - started
        size_mb = path.stat().st_size / 1e6
        timings, cpu = [], []
        for _ in range(args.repeats):
            started, started_cpu = time.perf_counter(), time.process_time()
            loaded = read_trace(path)
            timings.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        assert loaded.experts.shape == trace.experts.shape
    median_s = statistics.median(timings)
    print(
        f"trace: {rows:,} rows ({trace.num_tokens:,} tokens x {trace.num_layers} layers, k={trace.top_k}), "
        f"{'no' if args.no_predictions else 'one 12-wide'} prediction column, {size_mb:.1f} MB on disk "
        f"({args.compression})"
    )
    print(f"generate {generated_s:.2f} s, write {written_s:.2f} s")
    print(
        f"read_trace: median {median_s:.3f} s over {args.repeats} runs (min {min(timings):.3f} s) "
        f"= {rows / median_s / 1e6:.2f} M rows/s; CPU time median {statistics.median(cpu):.3f} s"
    )


if __name__ == "__main__":
    main()
