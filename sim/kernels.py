"""The real decode kernels of one MoE decoder layer, in PyTorch, shared by calibration and the live executor.

Calibration times exactly these functions and the live executor runs exactly these functions, so the op
times in a calibrated hardware profile are the op times the live run sees. torch is imported at the top:
this module is GPU-side only and is never imported by ``import sim``.

Shapes follow ``traces.schema.ModelShape``. Simplifications, all documented because they change timing a
little: attention is plain grouped-query attention (no rotary embedding, DeepSeek's MLA is modelled as
multi-head attention of the same head count and head dim); a routed expert is SwiGLU stored as ONE flat
bf16 buffer of ``3*h*i`` elements (fused gate/up rows then down), so a transfer moves exactly
``bytes_per_expert`` bytes and a GPU slot is a row of one big tensor.
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


def attention(x: torch.Tensor, layer: AttentionWeights, shape: ModelShape, context: int) -> torch.Tensor:
    """Decode attention for one new position per sequence at ``context`` tokens (the new one included).

    QKV projection, write the new key/value at position ``context - 1``, SDPA over the first ``context``
    cached positions, output projection. ``x`` is ``[B, h]`` (already normalised); the cache may hold
    more sequences than ``B`` (the first ``B`` are used).
    """
    heads, kv_heads, head_dim = attention_dims(shape)
    b = x.shape[0]
    qkv = x @ layer.wqkv.t()
    q, k, v = qkv.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    pos = context - 1
    layer.k_cache[:b, :, pos] = k.view(b, kv_heads, head_dim)
    layer.v_cache[:b, :, pos] = v.view(b, kv_heads, head_dim)
    o = F.scaled_dot_product_attention(
        q.view(b, heads, 1, head_dim),
        layer.k_cache[:b, :, :context],
        layer.v_cache[:b, :, :context],
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


class GraphedCall:
    """``fn(x)`` for inputs shaped like ``example``, replayed from one CUDA graph: a single launch instead
    of one per kernel, so a small op such as the predictor MLP costs the host almost nothing (a real
    engine would fuse or graph it too). On the CPU, or for other input shapes, ``fn`` is called directly.

    Replays run on the current stream; the output tensor is reused by every call.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], example: torch.Tensor, pool: Any = None) -> None:
        self.fn = fn
        self.graph: Any = None
        if not example.is_cuda:
            return
        self.static_in = example.clone()
        warm = torch.cuda.Stream(example.device)
        warm.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(warm):
            for _ in range(3):
                fn(self.static_in)
        torch.cuda.current_stream(example.device).wait_stream(warm)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> Any:
        if self.graph is None or x.shape != self.static_in.shape:
            return self.fn(x)
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out
