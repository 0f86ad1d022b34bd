"""Op times of one model shape on one hardware profile: the compute side of the simulator.

Each op of a decoder layer (the ops ``sim.kernels`` runs and ``moe-prefetch calibrate`` measures) takes
its time from the profile's measured curve for this shape when there is one, otherwise from a roofline:
``max(kernels x launch_overhead_s, flops / peak + bytes / bandwidth)`` (launch-bound for small decode
ops, bandwidth- or compute-bound for big ones). Kernel counts follow ``sim.kernels``' eager PyTorch code.

A decoder layer runs, on one compute stream::

    norm -> attention -> add -> norm -> [router] -> shared experts, routed experts | dense MLP -> add

``compute_scale`` multiplies every compute op (what-if: a faster or slower GPU); copies are not scaled.
"""

from __future__ import annotations

from functools import lru_cache

from sim.hardware import HardwareProfile
from traces.schema import ModelShape

#: eager kernels per op (matches sim.kernels: e.g. an expert is matmul, silu, mul, matmul, add)
KERNELS = {
    "norm": 1,
    "add": 1,
    "attention": 6,
    "router": 4,
    "expert": 5,
    "shared": 5,
    "dense": 5,
    "predictor_gpu": 5,
}
#: hidden width of the paper's predictor MLP (d -> 2048 -> E)
PREDICTOR_HIDDEN = 2048
#: host overhead of one CPU predictor call (framework dispatch), on top of its FLOPs
CPU_CALL_OVERHEAD_S = 20e-6


class CostModel:
    """Seconds per op for ``shape`` on ``hardware``; memoised per argument, cheap to call in loops."""

    def __init__(self, shape: ModelShape, hardware: HardwareProfile, compute_scale: float = 1.0) -> None:
        if compute_scale <= 0:
            raise ValueError(f"compute_scale must be > 0, got {compute_scale}")
        self.shape = shape
        self.hardware = hardware
        self.scale = compute_scale
        c = hardware.compute
        self._launch = c.launch_overhead_s
        self._flops = c.peak_tflops * 1e12
        self._bytes = c.hbm_gbps * 1e9
        self._dtype = shape.dtype_bytes
        heads = shape.num_attention_heads or max(1, shape.hidden_size // 128)
        self._heads = heads
        self._kv_heads = shape.num_key_value_heads or heads
        self._head_dim = shape.head_dim or shape.hidden_size // heads
        self._curves = {op: c.curve(op, shape.name) for op in KERNELS} | {
            "predictor_cpu": c.curve("predictor_cpu", shape.name),
            "host_layer": c.curve("host_layer", shape.name),
        }
        #: host time to issue one copy (delays the compute stream of a host-bound executor)
        self.issue_s = hardware.copy.issue_s
        # bind memoised versions per instance
        self.norm_s = lru_cache(maxsize=None)(self._norm_s)
        self.add_s = lru_cache(maxsize=None)(self._add_s)
        self.router_s = lru_cache(maxsize=None)(self._router_s)
        self.expert_s = lru_cache(maxsize=None)(self._expert_s)
        self.shared_s = lru_cache(maxsize=None)(self._shared_s)
        self.dense_s = lru_cache(maxsize=None)(self._dense_s)
        self.predictor_s = lru_cache(maxsize=None)(self._predictor_s)
        self.attention_s = lru_cache(maxsize=4096)(self._attention_s)

    # -- roofline

    def _roofline(self, op: str, flops: float, nbytes: float) -> float:
        return max(KERNELS[op] * self._launch, flops / self._flops + nbytes / self._bytes)

    def _op(self, op: str, tokens: int, flops: float, nbytes: float) -> float:
        curve = self._curves.get(op)
        seconds = curve.at(tokens) if curve is not None else self._roofline(op, flops, nbytes)
        return seconds * self.scale

    def _ffn(self, op: str, tokens: int, intermediate: int) -> float:
        h = self.shape.hidden_size
        weights = 3 * h * intermediate
        return self._op(
            op, tokens, 2.0 * tokens * weights, weights * self._dtype + 2 * tokens * h * self._dtype
        )

    # -- ops (``tokens``: tokens processed by the call)

    def _norm_s(self, tokens: int) -> float:
        h = self.shape.hidden_size
        return self._op("norm", tokens, 4.0 * tokens * h, 2 * tokens * h * self._dtype)

    def _add_s(self, tokens: int) -> float:
        h = self.shape.hidden_size
        return self._op("add", tokens, tokens * h, 3 * tokens * h * self._dtype)

    def _router_s(self, tokens: int) -> float:
        h, e = self.shape.hidden_size, self.shape.num_experts
        return self._op("router", tokens, 2.0 * tokens * h * e, (h * e + tokens * h) * self._dtype)

    def _expert_s(self, tokens: int) -> float:
        """One routed expert serving ``tokens`` tokens."""
        return self._ffn("expert", tokens, self.shape.expert_intermediate_size)

    def _shared_s(self, tokens: int) -> float:
        """All shared experts of a layer (0 when the model has none)."""
        if not self.shape.num_shared_experts:
            return 0.0
        return self._ffn("shared", tokens, self.shape.shared_intermediate_size)

    def _dense_s(self, tokens: int) -> float:
        """The MLP of a dense (non-MoE) decoder layer."""
        return self._ffn(
            "dense", tokens, self.shape.dense_intermediate_size or self.shape.expert_intermediate_size
        )

    def _attention_s(self, tokens: int, context_total: int) -> float:
        """Self-attention of one layer for ``tokens`` new positions attending ``context_total`` cached
        positions in all (measured grids are looked up at the mean context per token)."""
        curve = self._curves.get("attention")
        if curve is not None:
            return curve.at(tokens, context_total / max(tokens, 1)) * self.scale
        h, heads, kv, hd = self.shape.hidden_size, self._heads, self._kv_heads, self._head_dim
        proj = h * (heads + 2 * kv) * hd + heads * hd * h
        flops = 2.0 * tokens * proj + 4.0 * heads * hd * context_total
        nbytes = (proj + 2 * kv * hd * context_total + 2 * tokens * h) * self._dtype
        return self._roofline("attention", flops, nbytes) * self.scale

    def _predictor_s(self, kind: str | None, tokens: int, device: str = "gpu") -> float:
        """Time of one prediction for ``tokens`` tokens: "mlp" (the paper's d->2048->E MLP, on the GPU side
        stream or the CPU), "gate" (one router-sized matmul), None (free)."""
        if kind is None:
            return 0.0
        if kind == "gate":
            return self.router_s(tokens)
        if kind != "mlp":
            raise ValueError(f"unknown predictor kind '{kind}'")
        h, e = self.shape.hidden_size, self.shape.num_experts
        flops = 2.0 * tokens * (h * PREDICTOR_HIDDEN + PREDICTOR_HIDDEN * e)
        if device == "cpu":
            curve = self._curves.get("predictor_cpu")
            if curve is not None:
                return curve.at(tokens)
            return CPU_CALL_OVERHEAD_S + flops / (self.hardware.compute.cpu_gflops * 1e9)
        if device != "gpu":
            raise ValueError(f"predictor device must be gpu or cpu, got '{device}'")
        nbytes = (h * PREDICTOR_HIDDEN + PREDICTOR_HIDDEN * e) * self._dtype
        return self._op("predictor_gpu", tokens, flops, nbytes)

    def host_layer_s(self, tokens: int) -> float:
        """Host time per MoE layer outside the ops (the executor's decisions, events, polling), measured
        by calibration; 0 when the profile has no such curve for this shape."""
        curve = self._curves["host_layer"]
        return curve.at(tokens) * self.scale if curve is not None else 0.0

    # -- copies

    def copy_s(self, pinned: bool = True) -> float:
        """One expert's transfer alone on an idle link."""
        return self.hardware.copy.transfer_s(self.shape.bytes_per_expert, pinned)
