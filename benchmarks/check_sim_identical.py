"""Check that the simulator's outputs on the benchmark-sized trace did not change (bit for bit).

The unit-test net (tests/test_sim_regression.py) uses a tiny model; this script uses the benchmark's
Qwen3-30B-A3B-shaped synthetic trace (48 layers, 128 experts, top-8), where the cache, the link and the
policies see realistic loads. ``--record F`` writes every run's summary row and SHA-256 digests of its
per-token latencies and per-layer stall (plus the hardware profiles used, so a later edit of a preset does
not move the baseline); ``--check F`` reruns the same configurations on the recorded profiles and lists
every difference (exit 1 if any).

    python benchmarks/check_sim_identical.py --record /tmp/sim_outputs.json [--tokens 1000]
    python benchmarks/check_sim_identical.py --check /tmp/sim_outputs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim.cache import CacheConfig
from sim.config import SimOptions
from sim.hardware import HardwareProfile, load_profile, parse_profile
from sim.policies import PolicySpec
from sim.simulation import simulate
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace

POLICIES = (
    "pre-attention",
    "on-demand",
    "cross-layer",
    "previous-token",
    "oracle",
    "pre-attention:m=12",
    "resident",
)


def _hosts() -> dict[str, HardwareProfile]:
    """The h200 preset as committed in git (fair sharing) and as in the working tree (may differ)."""
    hosts = {"h200": load_profile("h200")}
    root = Path(__file__).resolve().parents[1]
    committed = subprocess.run(
        ["git", "show", "HEAD:sim/profiles/h200.toml"], cwd=root, capture_output=True, text=True
    )
    if committed.returncode == 0:
        hosts["h200-head"] = parse_profile(committed.stdout, "HEAD:sim/profiles/h200.toml")
    return hosts


def _cases(hosts: list[str]) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    cases = [(host, {"fraction": 0.25}, policy, {}) for host in hosts for policy in POLICIES]
    cases += [
        (hosts[0], {"fraction": 0.25, "eviction": "lfu"}, "pre-attention", {}),
        (hosts[0], {"fraction": 0.25, "eviction": "belady"}, "pre-attention", {}),
        (hosts[0], {"fraction": 0.25, "per_layer": True}, "cross-layer", {}),
        (hosts[0], {"fraction": 0.4}, "pre-attention", {"batch_size": 4}),
        (hosts[0], {"fraction": 0.25}, "confidence", {}),
    ]
    return cases


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float64).tobytes()).hexdigest()


def _trace(tokens: int):
    shape = KNOWN_SHAPES["qwen3-30b-a3b"]
    per_seq = min(500, tokens)
    spec = SyntheticSpec(
        shape,
        num_sequences=max(1, tokens // per_seq),
        tokens_per_sequence=per_seq,
        predictor_accuracy={"pre-attention": 0.95, "cross-layer": 0.79},
        prediction_width=16,
        seed=0,
    )
    trace = generate_trace(spec)
    scores = np.sort(np.random.default_rng(0).random(trace.predictions["pre-attention"].shape), axis=-1)
    info = next(p for p in trace.metadata.predictors if p.name == "pre-attention")
    return shape, trace.with_prediction(info, trace.predictions["pre-attention"], scores[..., ::-1])


def _run_all(tokens: int, hosts: dict[str, HardwareProfile]) -> dict[str, Any]:
    shape, trace = _trace(tokens)
    runs = {}
    for host, cache, policy, options in _cases(list(hosts)):
        name = f"{host}|{json.dumps(cache, sort_keys=True)}|{policy}|{json.dumps(options, sort_keys=True)}"
        started = time.process_time()
        result = simulate(
            trace, shape, hosts[host], CacheConfig(**cache), PolicySpec.parse(policy), SimOptions(**options)
        )
        runs[name] = {
            "row": result.summary_row(),
            "token_latency_s": _digest(result.token_latency_s),
            "stall_s": _digest(result.stall_s),
            "hits": result.hits.tolist(),
            "late": result.late.tolist(),
            "misses": result.misses.tolist(),
        }
        print(f"{name:80s} {time.process_time() - started:6.2f} cpu s", file=sys.stderr)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", metavar="FILE")
    mode.add_argument("--check", metavar="FILE")
    parser.add_argument("--tokens", type=int, default=1000, help="trace tokens when recording")
    args = parser.parse_args()
    if args.record:
        hosts = _hosts()
        doc = {
            "tokens": args.tokens,
            "hosts": {name: host.to_dict() for name, host in hosts.items()},
            "runs": _run_all(args.tokens, hosts),
        }
        Path(args.record).write_text(json.dumps(doc, indent=1))
        print(f"recorded {len(doc['runs'])} runs in {args.record}")
        return 0
    doc = json.loads(Path(args.check).read_text())
    hosts = {name: HardwareProfile.from_dict(h) for name, h in doc["hosts"].items()}
    got = _run_all(doc["tokens"], hosts)
    bad = [
        f"{name}: {field}"
        for name, want in doc["runs"].items()
        for field in want
        if got.get(name, {}).get(field) != want[field]
    ]
    for line in bad:
        print("DIFFERS", line)
    print(f"{len(doc['runs']) - len({b.split(': ')[0] for b in bad})}/{len(doc['runs'])} runs identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
