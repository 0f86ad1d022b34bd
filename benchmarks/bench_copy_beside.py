"""Benchmark (GPU): does what the GPU computes meanwhile change how long a host-to-device copy takes?

Session 6's live runs copied a 9 MiB Qwen3 expert in 174.6 us in on-demand runs and in 178.7-180.2 us in
runs with a pre-attention or cross-layer predictor on a side stream (sim/live.py), which the simulator
does not model (reports/validation/session6/README.md). This script times a chain of expert-sized
copies from pinned memory on a copy stream, each between two events as the live executor times them,
while the GPU does, meanwhile:

- ``alone``: nothing;
- ``compute``: routed experts replayed back to back on the compute stream (one graph each);
- ``side``: the predictor MLP replayed on a side stream, each call behind an event of the compute stream
  (as the live executor starts it at a layer's start);
- ``layers``: both as a layer decodes: attention, the predictor beside it, then the layer's experts;
- ``gated-compute`` / ``gated-side``: each copy waits first for an event recorded just before on the
  compute stream behind a layer's experts, or on the side stream behind the predictor (as the live
  executor gates demand and predicted copies).

For each it reports the median copy duration and the median gap between consecutive copies, over
``--reps`` interleaved repetitions of ``--copies`` copies, and whether the work covered the chain.

    python benchmarks/bench_copy_beside.py --shape qwen3-30b-a3b --json out.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from sim import kernels
from traces.shapes import resolve_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench_args import DEFAULT_SHAPES, parse_on_gpu, shape_benchmark_parser

CONTEXT = 64


class Work:
    """Graph-replayed decode ops of one shape: experts, attention, the predictor on a side stream."""

    def __init__(self, shape_key: str, device: torch.device) -> None:
        self.shape = shape = resolve_shape(shape_key)
        gen = torch.Generator(device=device).manual_seed(0)
        h, inter, dt = shape.hidden_size, shape.expert_intermediate_size, kernels.torch_dtype(shape)
        graphs, side_graphs = kernels.GraphPool(device), kernels.GraphPool(device)
        x = (torch.randn(1, h, generator=gen, device=device) * h**-0.5).to(dt)
        out = torch.zeros_like(x)
        elems = kernels.expert_elements(h, inter)
        weights = (torch.randn(32, elems, generator=gen, device=device) * 0.01).to(dt)
        self.experts = [
            graphs.capture(lambda w=w: kernels.expert_into(out, x, w, h, inter, 1.0))
            for w in weights.unbind(0)
        ]
        layer = kernels.new_attention(shape, 1, CONTEXT, device, gen)
        at = kernels.Positions(CONTEXT, device)
        at.set(CONTEXT)
        self.attention = graphs.capture(lambda: out.copy_(kernels.attention(x, layer, shape, at, CONTEXT)))
        self.side = torch.cuda.Stream(device)
        predictor = kernels.new_predictor(shape, device)
        self.predict = side_graphs.capture(lambda: predictor(x))

    def expert_run(self, n: int) -> None:
        for i in range(n):
            self.experts[i % len(self.experts)]()

    def predictor_beside(self) -> None:
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            self.predict()

    def gate_on_compute(self) -> torch.cuda.Event:
        """An event recorded on the compute stream behind a layer's worth of experts (the live executor
        gates a demand copy on its layer's router)."""
        self.expert_run(self.shape.top_k)
        event = torch.cuda.Event()
        event.record()
        return event

    def gate_on_side(self) -> torch.cuda.Event:
        """An event recorded on the side stream behind the predictor (the live executor gates a predicted
        copy on the predictor that chose it), the compute stream busy with experts meanwhile."""
        self.predictor_beside()
        event = torch.cuda.Event()
        event.record(self.side)
        self.expert_run(self.shape.top_k)
        return event

    def predictor_run(self, n: int) -> None:
        for _ in range(n):
            self.predictor_beside()

    def layer_run(self, n: int) -> None:
        """``n`` layers: the predictor beside the attention, then the layer's experts."""
        for _ in range(n):
            self.predictor_beside()
            self.attention()
            self.expert_run(self.shape.top_k)


def copy_chain(
    work: Work,
    copies: int,
    chunk_bytes: int,
    meanwhile: Callable[[], None] | None,
    device: torch.device,
    gate: Callable[[], torch.cuda.Event] | None = None,
) -> dict[str, float]:
    """Median copy duration and gap (seconds) of ``copies`` chained copies while ``meanwhile`` runs; with
    ``gate``, each copy first waits for the event it returns (recorded on another stream just then)."""
    stream = torch.cuda.Stream(device)
    src = torch.empty(chunk_bytes // 2, dtype=torch.bfloat16).pin_memory()
    dst = torch.empty(chunk_bytes // 2, dtype=torch.bfloat16, device=device)
    marks = []
    torch.cuda.synchronize()
    for _ in range(copies):
        if gate is not None:
            stream.wait_event(gate())
        with torch.cuda.stream(stream):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            dst.copy_(src, non_blocking=True)
            end.record(stream)
            marks.append((start, end))
    work_end = None
    if meanwhile is not None:
        meanwhile()
        work_end = torch.cuda.Event(enable_timing=True)
        work_end.record()
    torch.cuda.synchronize()
    durations = [a.elapsed_time(b) / 1e3 for a, b in marks]
    gaps = [marks[i][1].elapsed_time(marks[i + 1][0]) / 1e3 for i in range(copies - 1)]
    covered = work_end is None or marks[-1][1].elapsed_time(work_end) >= 0
    return {
        "copy_s": statistics.median(durations),
        "gap_s": statistics.median(gaps),
        "covered": float(covered),
    }


def main(argv: list[str] | None = None) -> int:
    parser = shape_benchmark_parser(__doc__, reps=10)
    parser.add_argument("--copies", type=int, default=40, help="copies per chain")
    args, device = parse_on_gpu(parser, argv, "bench_copy_beside")
    if device is None:
        return 1
    results = {}
    for key in args.shape or DEFAULT_SHAPES:
        work = Work(key, device)
        chunk = work.shape.bytes_per_expert
        # enough work to outlast the chain (each copy about chunk / 55 GB/s)
        chain_s = args.copies * chunk / 55e9
        experts = int(1.5 * chain_s / 20e-6)
        layers = int(1.5 * chain_s / (60e-6 + work.shape.top_k * 20e-6))
        predictions = int(1.5 * chain_s / 27e-6)
        conditions: dict[str, Callable[[], None] | None] = {
            "alone": None,
            "compute": lambda w=work, n=experts: w.expert_run(n),
            "side": lambda w=work, n=predictions: w.predictor_run(n),
            "layers": lambda w=work, n=layers: w.layer_run(n),
        }
        gates = {"gated-compute": work.gate_on_compute, "gated-side": work.gate_on_side}
        runs = {name: (fn, None) for name, fn in conditions.items()} | {
            n: (None, g) for n, g in gates.items()
        }
        for fn, gate in runs.values():  # warm-up
            copy_chain(work, 4, chunk, fn, device, gate)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        for _ in range(args.reps):
            for name, (fn, gate) in runs.items():
                samples[name].append(copy_chain(work, args.copies, chunk, fn, device, gate))
        summary = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in samples.items()
        }
        results[work.shape.name] = summary
        for name, s in summary.items():
            print(
                f"{work.shape.name:32} {name:8} copy {s['copy_s'] * 1e6:7.1f} us  "
                f"gap {s['gap_s'] * 1e6:5.1f} us  covered {s['covered']:.1f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "gpu": torch.cuda.get_device_name(), "results": results}, f, indent=1
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
