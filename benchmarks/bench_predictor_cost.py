"""Benchmark: inference cost of one layer's expert predictor for one decode token (batch 1), next to
that layer's attention time.

The simulator charges this cost before a prediction can start prefetches (hardware profile), so it is
measured, not guessed; and the paper's method only hides copies if the prediction is ready well before
attention ends. For each shape (hidden size d, experts E, predictor width h) and architecture (arch 1:
Linear-BatchNorm-GELU-Dropout-Linear, arch 2: Linear-SiLU-Linear, linear: one Linear, which is also what
the cross-layer/FATE predictor computes, d x E), on each device and dtype, it times single forward passes
of a token (eval mode, no grad, synchronised after each call) and prints the median and 90th percentile
in microseconds. On CUDA it also times the same forward replayed as a CUDA graph, which removes most of
the kernel-launch cost that dominates at batch 1, and the layer's decode attention (``sim.kernels``,
the live executor's code, model dtype bfloat16, eager) at ``--contexts`` cached positions, timed the
same way; the table then gives the predictor's time as a fraction of attention's.

Shapes: the project's reference models (read from the shipped traces in traces/data/: hidden 512; 64,
128 and 16 experts) and the paper's models (DeepSeek-V2-Lite, Qwen3-30B-A3B, Phi-3.5-MoE from
traces.shapes), h = 2048.

    python benchmarks/bench_predictor_cost.py [--devices cpu,cuda] [--dtypes float32,float16]
        [--archs 1,2,linear] [--contexts 512,4096] [--repeats 200] [--threads N] [--json out.json]

CPU timings depend on machine load and thread count (printed); CPU float16 matmuls are often not
vectorised and are reported as measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from traces.schema import ModelShape
from traces.shapes import resolve_shape
from traces.trace import read_trace

REPO = Path(__file__).resolve().parent.parent
#: the reference models' traces (their metadata holds the model shape) and the paper's model shapes
REFERENCE_TRACES = ("deepseek-v2-lite-like", "qwen3-30b-a3b-like", "phi-mini-moe-like")
PAPER_SHAPES = ("deepseek-v2-lite", "qwen3-30b-a3b", "phi-3.5-moe")


def shapes() -> list[tuple[str, ModelShape]]:
    """(label, shape) of every model the table covers."""
    out = []
    for name in REFERENCE_TRACES:
        path = REPO / "traces" / "data" / f"{name}.parquet"
        out.append((f"reference {name}", read_trace(path).metadata.model))
    out.extend((f"paper {name}", resolve_shape(name)) for name in PAPER_SHAPES)
    return out


def layer_predictor(arch: str, d: int, h: int, num_experts: int) -> nn.Module:
    """One MoE layer's predictor as it would be deployed (the per-layer form of StackedPredictorNet)."""
    if arch == "1":
        return nn.Sequential(
            nn.Linear(d, h), nn.BatchNorm1d(h), nn.GELU(), nn.Dropout(0.1), nn.Linear(h, num_experts)
        )
    if arch == "2":
        return nn.Sequential(nn.Linear(d, h), nn.SiLU(), nn.Linear(h, num_experts))
    if arch == "linear":
        return nn.Linear(d, num_experts)
    raise ValueError(f"unknown arch {arch!r}")


def time_calls(call: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall time of each of ``repeats`` synchronised calls, in microseconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - started) * 1e6)
    return times


def graphed(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A CUDA-graph replay of ``module(x)`` (static input and output buffers)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(x)
    return graph.replay


def attention_rows(
    label: str, shape: ModelShape, device: torch.device, args: argparse.Namespace
) -> list[dict]:
    """One row per context length: the layer's eager decode attention (``sim.kernels.attention``) for one
    token, timed like the predictor."""
    from sim import kernels

    gen = torch.Generator(device=device).manual_seed(0)
    contexts = [int(c) for c in args.contexts.split(",")]
    layer = kernels.new_attention(shape, 1, max(contexts), device, gen)
    x = torch.randn(1, shape.hidden_size, device=device, dtype=kernels.torch_dtype(shape))
    at = kernels.Positions(max(contexts), device)
    rows = []
    for context in contexts:
        at.set(context)
        length = kernels.attention_length(context, at.max_context)
        with torch.no_grad():
            times = time_calls(
                lambda n=length: kernels.attention(x, layer, shape, at, n), device, args.repeats, args.warmup
            )
        rows.append(
            {
                "shape": label,
                "hidden_size": shape.hidden_size,
                "num_experts": shape.num_experts,
                "op": "attention",
                "context": context,
                "device": device.type,
                "dtype": str(kernels.torch_dtype(shape)).removeprefix("torch."),
                "mode": "eager",
                "median_us": statistics.median(times),
                "p90_us": statistics.quantiles(times, n=10)[-1],
            }
        )
    return rows


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    for device_name in args.devices.split(","):
        if device_name == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        device = torch.device(device_name)
        for label, shape in shapes():
            d, num_experts = shape.hidden_size, shape.num_experts
            if device.type == "cuda":
                rows.extend(attention_rows(label, shape, device, args))
            for arch in args.archs.split(","):
                for dtype_name in args.dtypes.split(","):
                    dtype = getattr(torch, dtype_name)
                    torch.manual_seed(0)
                    module = layer_predictor(arch, d, args.hidden, num_experts).to(device, dtype).eval()
                    x = torch.randn(1, d, device=device, dtype=dtype)
                    modes: list[tuple[str, Callable[[], object]]] = [("eager", lambda m=module, x=x: m(x))]
                    if device.type == "cuda":
                        modes.append(("cuda-graph", graphed(module, x)))
                    for mode, call in modes:
                        with torch.no_grad():
                            try:
                                times = time_calls(call, device, args.repeats, args.warmup)
                            except RuntimeError as exc:  # e.g. an op without a float16 CPU kernel
                                print(
                                    f"{label} arch {arch} {device_name} {dtype_name}: not supported ({exc})"
                                )
                                continue
                        rows.append(
                            {
                                "shape": label,
                                "hidden_size": d,
                                "num_experts": num_experts,
                                "op": "predictor",
                                "predictor_hidden": 0 if arch == "linear" else args.hidden,
                                "arch": arch,
                                "device": device_name,
                                "dtype": dtype_name,
                                "mode": mode,
                                "median_us": statistics.median(times),
                                "p90_us": statistics.quantiles(times, n=10)[-1],
                            }
                        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: one line per predictor timing, with its median over the same shape's attention
    median (GPU rows; at each timed context length)."""
    attention = {}
    for r in rows:
        if r["op"] == "attention":
            attention.setdefault((r["shape"], r["device"]), []).append((r["context"], r["median_us"]))
    head = "| shape | d | E | arch | device | dtype | mode | median us | p90 us | vs attention |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if r["op"] == "attention":
            arch, ratio = f"attention (context {r['context']})", ""
        else:
            arch = r["arch"]
            ratio = ", ".join(
                f"{r['median_us'] / t:.2f}x at {c}" for c, t in attention.get((r["shape"], r["device"]), [])
            )
        lines.append(
            f"| {r['shape']} | {r['hidden_size']} | {r['num_experts']} | {arch} | {r['device']} | "
            f"{r['dtype']} | {r['mode']} | {r['median_us']:.1f} | {r['p90_us']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated: cpu, cuda")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--archs", default="1,2,linear")
    parser.add_argument("--hidden", type=int, default=2048, help="predictor width h (paper: 2048)")
    parser.add_argument(
        "--contexts", default="512,4096", help="cached positions at which attention is timed (GPU only)"
    )
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}", end="")
    print(f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    rows = measure(args)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
