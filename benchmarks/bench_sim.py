"""Benchmark: simulated token-layers per second, per policy, next to SimPy's bare event rate.

Target (issue 3): at least 50,000 token-layers/s for the pre-attention policy on one core, i.e. a
10k-token trace shaped like Qwen3-30B-A3B (48 MoE layers, 128 experts, top-8, batch 1) in under 10 s.
The trace is synthetic (traces.synthetic: pre-attention predictor 95% exact, cross-layer 79%, 16 ranks);
the hardware is the h200 preset; the cache holds ``--cache-fraction`` of all experts (LRU).

    python benchmarks/bench_sim.py [--tokens 10000] [--cache-fraction 0.25] [--policy NAME,...] [--json F]

Each policy's time covers the whole ``simulate`` call (workload, controller, engine, result). CPU time
of this process is reported beside wall time because wall time depends on what else the machine runs;
SimPy's bare rate (empty timeouts in one process) is measured in the same run for the same reason: the
ratio of the two is the machine-independent figure. The build that ran (``sim.COMPILED``: pure Python, or
the opt-in compiled core of setup.py) is printed beside the figure.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import simpy

import sim
from sim.cache import CacheConfig
from sim.hardware import load_profile
from sim.policies import PolicySpec
from sim.simulation import simulate
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace

TARGET_TOKEN_LAYERS_PER_S = 50_000


def simpy_bare_rate(events: int = 500_000) -> float:
    """Empty timeouts per CPU second in one SimPy process."""
    env = simpy.Environment()

    def ticker(env: simpy.Environment) -> Iterator[simpy.Event]:
        for _ in range(events):
            yield env.timeout(1)

    env.process(ticker(env))
    started = time.process_time()
    env.run()
    return events / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=10_000, help="trace tokens (sequences of 500)")
    parser.add_argument("--cache-fraction", type=float, default=0.25)
    parser.add_argument(
        "--policy",
        default="pre-attention,on-demand,cross-layer,previous-token,oracle,pre-attention:m=12,resident",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()

    shape = KNOWN_SHAPES["qwen3-30b-a3b"]
    per_seq = min(500, args.tokens)
    spec = SyntheticSpec(
        shape,
        num_sequences=max(1, args.tokens // per_seq),
        tokens_per_sequence=per_seq,
        predictor_accuracy={"pre-attention": 0.95, "cross-layer": 0.79},
        prediction_width=16,
        seed=0,
    )
    trace = generate_trace(spec)
    token_layers = trace.num_tokens * trace.num_layers
    hardware = load_profile("h200")
    cache = CacheConfig(fraction=args.cache_fraction)
    bare = simpy_bare_rate()
    build = "compiled (mypyc)" if sim.COMPILED else "pure Python"
    print(f"simulator build: {build} (sim.COMPILED = {sim.COMPILED})")
    print(
        f"trace: synthetic Qwen3-30B-A3B shape, {trace.num_tokens} tokens x {trace.num_layers} MoE layers "
        f"= {token_layers} token-layers; cache {args.cache_fraction:g} of experts (LRU); hardware h200"
    )
    print(f"SimPy bare event rate: {bare:,.0f} timeouts per CPU second")
    print(
        f"{'policy':22s} {'wall s':>7s} {'cpu s':>7s} {'token-layers/s':>15s} {'per SimPy event':>16s} "
        f"{'events/tl':>9s} {'copies/tl':>9s} {'sim ms/token':>12s}"
    )
    rows = []
    for text in args.policy.split(","):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = simulate(trace, shape, hardware, cache, PolicySpec.parse(text))
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        rate = token_layers / cpu
        row = {
            "policy": text,
            "wall_s": wall,
            "cpu_s": cpu,
            "token_layers_per_cpu_s": rate,
            "token_layers_per_bare_simpy_event": rate / bare,
            "simpy_events_per_token_layer": result.counters["sim_events"] / token_layers,
            "copies_per_token_layer": result.counters["transfers"] / token_layers,
            "mean_latency_s": result.summary()["mean_latency_s"],
        }
        rows.append(row)
        print(
            f"{text:22s} {wall:7.2f} {cpu:7.2f} {rate:15,.0f} {rate / bare:16.4f} "
            f"{row['simpy_events_per_token_layer']:9.2f} {row['copies_per_token_layer']:9.2f} "
            f"{row['mean_latency_s'] * 1e3:12.2f}"
        )
    pre = next((r for r in rows if r["policy"] == "pre-attention"), None)
    if pre is not None:
        verdict = "meets" if pre["token_layers_per_cpu_s"] >= TARGET_TOKEN_LAYERS_PER_S else "MISSES"
        print(
            f"pre-attention: {pre['token_layers_per_cpu_s']:,.0f} token-layers per CPU second {verdict} the "
            f"target of {TARGET_TOKEN_LAYERS_PER_S:,} ({build}; SimPy bare rate here: {bare:,.0f}/s)"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            doc = {"compiled": sim.COMPILED, "simpy_bare_rate": bare, "token_layers": token_layers}
            json.dump({**doc, "runs": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
