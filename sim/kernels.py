"""The real decode kernels of one MoE decoder layer, in PyTorch, shared by calibration and the live executor.

Calibration times exactly these functions and the live executor runs exactly these functions, so the op
times in a calibrated hardware profile are the op times the live run sees. torch is imported at the top:
this module is GPU-side only and is never imported by ``import sim``.

Shapes follow ``traces.schema.ModelShape``. Simplifications, all documented because they change timing a
little: attention is plain grouped-query attention (no rotary embedding, DeepSeek's MLA is modelled as
multi-head attention of the same head count and head dim); a routed expert is SwiGLU stored as ONE flat
bf16 buffer of ``3*h*i`` elements (fused gate/up rows then down), so a transfer moves exactly
``bytes_per_expert`` bytes and a GPU slot is a row of one big tensor.

Every multi-kernel op runs from a CUDA graph on a GPU (``GraphPool``), as serving engines decode: at
batch 1 an eager Python executor spends 4-5x the GPU's time launching kernels (sim/live.py measured
760-870 us of host against 410-530 us of GPU per Qwen3/DeepSeek layer;
``benchmarks/bench_graphed_layer.py``), so its step time would be the host's, and the lent VMs' host
speed moves by up to 2x. A graph needs fixed shapes and addresses: ops read and write tensors that stay
in place, and attention takes its step's position from device tensors (``Positions``) and attends over
the context rounded up to a power of two, masked (``attention_length``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from traces.schema import ModelShape

#: Hidden width of the paper's predictor MLP.
PREDICTOR_HIDDEN = 2048
RMS_EPS = 1e-6


def torch_dtype(shape: ModelShape) -> torch.dtype:
    """The torch dtype of a model's weights (bf16 unless the shape says otherwise)."""
    return {"float32": torch.float32, "float16": torch.float16}.get(shape.dtype, torch.bfloat16)


def attention_dims(shape: ModelShape) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim), with defaults for shapes that leave them unset."""
    heads = shape.num_attention_heads or max(1, shape.hidden_size // 128)
    kv_heads = shape.num_key_value_heads or heads
    head_dim = shape.head_dim or shape.hidden_size // heads
    return heads, kv_heads, head_dim


def expert_elements(hidden: int, intermediate: int) -> int:
    """Elements of one SwiGLU expert (gate, up and down matrices)."""
    return 3 * hidden * intermediate


def swiglu(x: torch.Tensor, flat_weights: torch.Tensor, hidden: int, intermediate: int) -> torch.Tensor:
    """One SwiGLU FFN whose weights sit in a flat buffer: ``down(silu(gate x) * up x)``.

    ``flat_weights`` holds ``2*i`` rows of gate/up (``[2i, h]``) followed by down (``[h, i]``).
    """
    gate_up = flat_weights[: 2 * intermediate * hidden].view(2 * intermediate, hidden)
    down = flat_weights[2 * intermediate * hidden :].view(hidden, intermediate)
    gu = x @ gate_up.t()
    gate, up = gu.split(intermediate, dim=-1)
    return (F.silu(gate) * up) @ down.t()


def expert_into(
    out: torch.Tensor, x: torch.Tensor, flat_weights: torch.Tensor, hidden: int, intermediate: int, w: float
) -> None:
    """``out += w * expert(x)``: a routed expert's contribution with its router weight (a host float)."""
    out.add_(swiglu(x, flat_weights, hidden, intermediate), alpha=w)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, RMS_EPS)


def norm_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """``out = rms_norm(x)``, in place (a graph's output must stay where it is)."""
    out.copy_(rms_norm(x, weight))


@dataclass
class AttentionWeights:
    """One layer's attention: fused QKV and output projections, its KV cache and its two norms."""

    wqkv: torch.Tensor
    wo: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    input_norm: torch.Tensor
    post_norm: torch.Tensor


def new_attention(
    shape: ModelShape, batch: int, max_context: int, device: torch.device, generator: torch.Generator
) -> AttentionWeights:
    """Random attention weights and an (uninitialised, then random) KV cache of ``max_context`` positions."""
    heads, kv_heads, head_dim = attention_dims(shape)
    h = shape.hidden_size
    dt = torch_dtype(shape)
    scale = h**-0.5

    def rand(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=generator, device=device, dtype=torch.float32) * scale).to(dt)

    return AttentionWeights(
        wqkv=rand((heads + 2 * kv_heads) * head_dim, h),
        wo=rand(h, heads * head_dim),
        k_cache=rand(batch, kv_heads, max_context, head_dim),
        v_cache=rand(batch, kv_heads, max_context, head_dim),
        input_norm=torch.ones(h, device=device, dtype=dt),
        post_norm=torch.ones(h, device=device, dtype=dt),
    )


class Positions:
    """Where a decode step writes its new key and value and how far its attention reaches, as device
    tensors that graphs read at replay (``set`` before each step: two small launches)."""

    def __init__(self, max_context: int, device: torch.device) -> None:
        self.max_context = max_context
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.context = torch.ones((), dtype=torch.long, device=device)
        self.indices = torch.arange(max_context, device=device)

    def set(self, context: int) -> None:
        """The step's tokens sit at position ``context - 1`` and attend to ``context`` positions."""
        self.position.fill_(context - 1)
        self.context.fill_(context)


def attention_length(context: int, max_context: int) -> int:
    """Key positions attention reads at ``context``: the next power of two (capped at the cache's
    length), so one graph per power of two serves every context."""
    return min(max_context, 1 << max(0, context - 1).bit_length())


def attention_lengths(max_context: int) -> list[int]:
    """Every ``attention_length`` a cache of ``max_context`` positions can meet."""
    return sorted({attention_length(c, max_context) for c in range(1, max_context + 1)})


def attention(
    x: torch.Tensor, layer: AttentionWeights, shape: ModelShape, at: Positions, length: int
) -> torch.Tensor:
    """Decode attention for one new position per sequence: QKV projection, write the new key/value at
    ``at.position``, SDPA over the first ``length`` cached positions with those at or beyond
    ``at.context`` masked out, output projection. ``x`` is ``[B, h]`` (already normalised); the cache
    may hold more sequences than ``B`` (the first ``B`` are used)."""
    heads, kv_heads, head_dim = attention_dims(shape)
    b = x.shape[0]
    qkv = x @ layer.wqkv.t()
    q, k, v = qkv.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    layer.k_cache[:b].index_copy_(2, at.position, k.view(b, kv_heads, 1, head_dim))
    layer.v_cache[:b].index_copy_(2, at.position, v.view(b, kv_heads, 1, head_dim))
    mask = (at.indices[:length] < at.context).view(1, 1, 1, length)
    o = F.scaled_dot_product_attention(
        q.view(b, heads, 1, head_dim),
        layer.k_cache[:b, :, :length],
        layer.v_cache[:b, :, :length],
        attn_mask=mask,
        enable_gqa=kv_heads != heads,
    )
    return o.reshape(b, heads * head_dim) @ layer.wo.t()


def router_scores(x: torch.Tensor, gate: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router and top-k, as the models compute it (the live run takes routing from the trace,
    but still pays for this kernel)."""
    probs = torch.softmax((x @ gate.t()).float(), dim=-1)
    return probs.topk(top_k, dim=-1)


def new_predictor(
    shape: ModelShape, device: torch.device, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """The paper's Arch-1 predictor MLP (Linear-BatchNorm-GELU-Dropout-Linear) in eval mode.

    Weights keep PyTorch's default random initialisation: timing does not depend on their values. Runs in
    ``dtype`` (default: the model's dtype)."""
    model = torch.nn.Sequential(
        torch.nn.Linear(shape.hidden_size, PREDICTOR_HIDDEN),
        torch.nn.BatchNorm1d(PREDICTOR_HIDDEN),
        torch.nn.GELU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(PREDICTOR_HIDDEN, shape.num_experts),
    )
    return model.to(device=device, dtype=dtype or torch_dtype(shape)).eval().requires_grad_(False)


class GraphPool:
    """Captures calls over tensors that stay in place into CUDA graphs sharing one memory pool, so that
    a call of many kernels costs the host one launch. The graphs' temporaries share the pool, so their
    replays must not overlap (one stream); their outputs live in tensors the caller keeps. On the CPU
    ``capture`` returns the call itself: the same code runs eagerly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream(device)

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` as a replayable graph (called once first: lazy set-up such as cuBLAS handles or SDPA's
        kernel choice cannot happen inside a capture). Replays run on the current stream."""
        if not self.cuda:
            return fn
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            fn()
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(pool=self.pool)
            try:
                fn()
            finally:
                graph.capture_end()
        current.wait_stream(self.stream)
        return _Replay(graph, fn)


class _Replay:
    """A captured graph with the call it was captured from. The graph holds the addresses of the call's
    tensors, so the call (which references them) must live as long as the graph: dropped, its tensors
    were freed and reused while the graph still read them (an ``index_copy_`` assert on the H200)."""

    __slots__ = ("call", "graph")

    def __init__(self, graph: Any, call: Callable[[], Any]) -> None:
        self.graph = graph
        self.call = call

    def __call__(self) -> None:
        self.graph.replay()
