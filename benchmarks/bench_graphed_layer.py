"""Benchmark (GPU): how much host time per MoE layer would CUDA graphs take off the live executor?

Until session 5 the live executor (sim/live.py) launched every kernel eagerly from Python, so its step
time was the host's (the H200 VMs' host cores changed speed by up to 2x, and with them every host-bound
validation row). This script decodes the same MoE layers two ways, with the live executor's kernels
(sim/kernels.py) and random weights of a real shape:

- eager: norm, attention, add, norm, router, the top-k routed experts (each from its GPU slot), add, as
  the executor ran them then;
- graphed: attention + add + norm + router replayed from one CUDA graph per layer, each routed expert
  from one graph per slot, the norm and the final add eager.

For each it reports, per layer, the host's issue time (launching ``--layers`` layers back to back,
without waiting), the wall time (issue + waiting for the GPU: the larger of host and GPU) and the GPU
time alone (the layers queued behind a sleeping kernel, then timed with CUDA events), as medians over
``--reps`` interleaved repetitions. A mode whose host time exceeds its GPU time is host-bound.

    python benchmarks/bench_graphed_layer.py --shape qwen3-30b-a3b --json out.json

Both decode at one fixed context. (Its session-5 run, reports/validation/session5/graphed_layer.json,
predates the masked attention of sim.kernels: attention then read exactly the context.)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sim import kernels
from sim.host_speed import step_probe_s
from sim.stream_delays import sleep_cycles_per_s
from traces.shapes import resolve_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench_args import DEFAULT_SHAPES, parse_on_gpu, shape_benchmark_parser

CONTEXT = 40


class Layers:
    """``layers`` MoE layers of ``shape``: attention, router, and ``top_k`` distinct expert slots each."""

    def __init__(self, shape_key: str, layers: int, device: torch.device) -> None:
        self.shape = shape = resolve_shape(shape_key)
        gen = torch.Generator(device=device).manual_seed(0)
        h, inter = shape.hidden_size, shape.expert_intermediate_size
        dt = kernels.torch_dtype(shape)
        elems = kernels.expert_elements(h, inter)
        self.attention = [kernels.new_attention(shape, 1, CONTEXT, device, gen) for _ in range(layers)]
        self.at = kernels.Positions(CONTEXT, device)
        self.at.set(CONTEXT)
        self.gates = [
            (torch.randn(shape.num_experts, h, generator=gen, device=device) * h**-0.5).to(dt)
            for _ in range(layers)
        ]
        self.slots = (torch.randn(layers * shape.top_k, elems, generator=gen, device=device) * 0.01).to(dt)
        self.views = list(self.slots.unbind(0))
        self.x = torch.zeros(1, h, device=device, dtype=dt)
        self.hn = torch.zeros_like(self.x)
        self.out = torch.zeros_like(self.x)
        self.h, self.inter, self.k = h, inter, shape.top_k

    def eager_layer(self, j: int) -> None:
        att, x = self.attention[j], self.x
        xn = kernels.rms_norm(x, att.input_norm)
        x.add_(kernels.attention(xn, att, self.shape, self.at, CONTEXT))
        hn = kernels.rms_norm(x, att.post_norm)
        kernels.router_scores(hn, self.gates[j], self.k)
        out = torch.zeros_like(hn)
        for e in range(self.k):
            kernels.expert_into(out, hn, self.views[j * self.k + e], self.h, self.inter, 1.0)
        x.add_(out)

    def pre_block(self, j: int) -> None:
        """What one graph per layer replays: attention, add, norm (into ``hn``), router."""
        att, x = self.attention[j], self.x
        xn = kernels.rms_norm(x, att.input_norm)
        x.add_(kernels.attention(xn, att, self.shape, self.at, CONTEXT))
        self.hn.copy_(kernels.rms_norm(x, att.post_norm))
        kernels.router_scores(self.hn, self.gates[j], self.k)

    def expert(self, slot: int) -> None:
        """What one graph per slot replays: ``out += expert(hn)``."""
        kernels.expert_into(self.out, self.hn, self.views[slot], self.h, self.inter, 1.0)


def capture(fn: Callable[[], None], pool: object) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph


def graphed(layers: Layers) -> Callable[[int], None]:
    """The graphed layer: the norm-attention-router graph, the eager zeroing, one graph per expert slot,
    the eager residual add."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (cuBLAS handles, allocator) before capture, as torch asks
        for j in range(len(layers.attention)):
            layers.pre_block(j)
            layers.expert(j * layers.k)
    torch.cuda.current_stream().wait_stream(side)
    pool = torch.cuda.graph_pool_handle()
    pre = [capture(lambda j=j: layers.pre_block(j), pool) for j in range(len(layers.attention))]
    experts = [capture(lambda s=s: layers.expert(s), pool) for s in range(len(layers.views))]

    def layer(j: int) -> None:
        pre[j].replay()
        layers.out.zero_()
        for e in range(layers.k):
            experts[j * layers.k + e].replay()
        layers.x.add_(layers.out)

    return layer


def time_mode(layer: Callable[[int], None], n_layers: int, count: int, sleep_cycles: int) -> dict[str, float]:
    """One repetition: host issue time, wall time and queued GPU time of ``count`` layers (seconds per
    layer), and the host probe right before."""
    probe = step_probe_s()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(count):
        layer(i % n_layers)
    issue = time.perf_counter() - t0
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(sleep_cycles)  # hold the stream while the launches queue up behind it
    start.record()
    t1 = time.perf_counter()
    for i in range(count):
        layer(i % n_layers)
    end.record()
    held = time.perf_counter() - t1
    torch.cuda.synchronize()
    gpu = start.elapsed_time(end) / 1e3
    return {
        "host_s": issue / count,
        "wall_s": wall / count,
        "gpu_s": gpu / count,
        "probe_s": probe,
        "queue_outlasted_sleep": float(held > gpu),
    }


def main(argv: list[str] | None = None) -> int:
    parser = shape_benchmark_parser(__doc__, reps=15)
    parser.add_argument("--layers", type=int, default=8, help="distinct layers built and cycled through")
    parser.add_argument("--count", type=int, default=48, help="layers issued per repetition")
    args, device = parse_on_gpu(parser, argv, "bench_graphed_layer")
    if device is None:
        return 1
    results = {}
    for key in args.shape or DEFAULT_SHAPES:
        layers = Layers(key, args.layers, device)
        modes = {"eager": layers.eager_layer, "graphed": graphed(layers)}
        for layer in modes.values():  # warm-up
            for j in range(args.layers):
                layer(j)
        torch.cuda.synchronize()
        sleep = int(0.2 * sleep_cycles_per_s(device))
        reps: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        for _ in range(args.reps):
            for name, layer in modes.items():
                reps[name].append(time_mode(layer, args.layers, args.count, sleep))
        summary = {
            name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"reps": rs}
            for name, rs in reps.items()
        }
        results[layers.shape.name] = summary
        for name, s in summary.items():
            print(
                f"{layers.shape.name:32} {name:8} per layer: host {s['host_s'] * 1e6:7.1f} us  wall "
                f"{s['wall_s'] * 1e6:7.1f} us  GPU {s['gpu_s'] * 1e6:7.1f} us  "
                f"(probe {s['probe_s'] * 1e6:.1f} us)"
            )
        del layers, modes
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
