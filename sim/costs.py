"""Op times of one model shape on one hardware profile: the compute side of the simulator.

Each op of a decoder layer (the ops ``sim.kernels`` runs and ``moe-prefetch calibrate`` measures) has two
times, because one host thread launches the ops that the GPU then runs:

- its *op time* (``norm_s``, ``attention_s``, ...): the profile's measured curve for this shape when
  there is one (ops called back to back: the slower of launching and running them, which at batch 1 is
  the host), otherwise the roofline ``max(kernels x launch_overhead_s, flops / peak + bytes / bandwidth)``
  (launch-bound for small decode ops, bandwidth- or compute-bound for big ones);
- its *GPU time* (``gpu_s``): the profile's ``<op>_gpu`` curve (calibration times the op queued behind
  a sleeping kernel, so its launches are hidden), else ``flops / peak + bytes / bandwidth``; never more
  than the op time. The engine (sim.engine) lets the host run ahead of the GPU, as the live executor
  does, so this is the time the GPU still needs for an op launched before its input copy landed;
- its *GPU time beside copies* (``gpu_copying_s``): the profile's ``<op>_copying`` curve, the GPU time
  while host-to-device copies are in flight (they slow the GPU's own work: DMA writes share its memory
  system), else the GPU time; the engine weighs the two by the share of the op's time with a copy in
  flight;
- its *launch time* (``launch_s``): what launching it costs the host thread, the profile's ``<op>_host``
  curve (the same queued calls, timed on the host), else the op time. An executor that replays ops from
  CUDA graphs launches in microseconds what runs for tens: there the op time is the GPU's, and the host
  runs ahead.

Kernel counts follow ``sim.kernels``' PyTorch code run eagerly (the roofline of a profile without
measured curves; the live executor replays each op from a CUDA graph, which calibration measures).

A decoder layer runs, on one compute stream::

    norm -> attention -> add -> norm -> [router] -> shared experts, routed experts | dense MLP -> add

``compute_scale`` multiplies every compute op (what-if: a faster or slower GPU); copies are not scaled.
"""

from __future__ import annotations

from functools import lru_cache

from sim.hardware import GPU_TIMED_OPS, HardwareProfile, OpCurve
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
#: GPU ops of a MoE layer besides its routed experts, as the live executor launches them: input norm,
#: attention, residual add, post-attention norm, router, shared experts (or zeroing the MoE sum), add
MOE_LAYER_OPS = 7
#: hidden width of the paper's predictor MLP (d -> 2048 -> E)
PREDICTOR_HIDDEN = 2048
#: host overhead of one CPU predictor call (framework dispatch), on top of its FLOPs
CPU_CALL_OVERHEAD_S = 20e-6


def _curve_at(curve: OpCurve, tokens: int, context_total: int) -> float:
    """A measured curve at ``tokens``; attention grids are looked up at the mean context per token."""
    return curve.at(tokens, context_total / max(tokens, 1)) if curve.context else curve.at(tokens)


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
            "gpu_layer": c.curve("gpu_layer", shape.name),
            "predictor_share": c.curve("predictor_share", shape.name),
        }
        self._gpu_curves = {op: c.curve(f"{op}_gpu", shape.name) for op in GPU_TIMED_OPS}
        self._host_curves = {op: c.curve(f"{op}_host", shape.name) for op in GPU_TIMED_OPS}
        self._copying_curves = {op: c.curve(f"{op}_copying", shape.name) for op in GPU_TIMED_OPS}
        #: whether copies in flight slow any op (the engine only tracks the link's busy periods if so)
        self.slowed_by_copies = any(curve is not None for curve in self._copying_curves.values())
        #: host time to issue one copy (delays the compute stream of a host-bound executor)
        self.issue_s = hardware.copy.issue_s
        #: the compute stream's wake-up after a copy it waits for has landed
        self.landing_delay_s = hardware.copy.landing_delay_s
        # bind memoised versions per instance
        self.norm_s = lru_cache(maxsize=None)(self._norm_s)
        self.add_s = lru_cache(maxsize=None)(self._add_s)
        self.router_s = lru_cache(maxsize=None)(self._router_s)
        self.expert_s = lru_cache(maxsize=None)(self._expert_s)
        self.shared_s = lru_cache(maxsize=None)(self._shared_s)
        self.dense_s = lru_cache(maxsize=None)(self._dense_s)
        self.predictor_s = lru_cache(maxsize=None)(self._predictor_s)
        self.attention_s = lru_cache(maxsize=4096)(self._attention_s)
        self.gpu_s = lru_cache(maxsize=4096)(self._gpu_s)
        self.gpu_copying_s = lru_cache(maxsize=4096)(self._gpu_copying_s)
        self.launch_s = lru_cache(maxsize=4096)(self._launch_s)
        self.gpu_gap_s = lru_cache(maxsize=None)(self._gpu_gap_s)  # read per MoE block that waits

    # -- roofline

    def _roofline(self, op: str, flops: float, nbytes: float) -> float:
        return max(KERNELS[op] * self._launch, self._work_s(flops, nbytes))

    def _work_s(self, flops: float, nbytes: float) -> float:
        return flops / self._flops + nbytes / self._bytes

    def _work(self, op: str, tokens: int, context_total: int = 0) -> tuple[float, float]:
        """(flops, bytes) of one call of ``op`` on ``tokens`` tokens (attention: attending
        ``context_total`` cached positions in all)."""
        h, d = self.shape.hidden_size, self._dtype
        if op == "norm":
            return 4.0 * tokens * h, 2 * tokens * h * d
        if op == "add":
            return tokens * h, 3 * tokens * h * d
        if op == "router":
            e = self.shape.num_experts
            return 2.0 * tokens * h * e, (h * e + tokens * h) * d
        if op == "attention":
            heads, kv, hd = self._heads, self._kv_heads, self._head_dim
            proj = h * (heads + 2 * kv) * hd + heads * hd * h
            flops = 2.0 * tokens * proj + 4.0 * heads * hd * context_total
            return flops, (proj + 2 * kv * hd * context_total + 2 * tokens * h) * d
        if op == "predictor_gpu":
            weights = h * PREDICTOR_HIDDEN + PREDICTOR_HIDDEN * self.shape.num_experts
            return 2.0 * tokens * weights, weights * d
        intermediate = {
            "expert": self.shape.expert_intermediate_size,
            "shared": self.shape.shared_intermediate_size,
            "dense": self.shape.dense_intermediate_size or self.shape.expert_intermediate_size,
        }[op]
        weights = 3 * h * intermediate
        return 2.0 * tokens * weights, weights * d + 2 * tokens * h * d

    def _op(self, op: str, tokens: int, context_total: int = 0) -> float:
        curve = self._curves.get(op)
        if curve is None:
            return self._roofline(op, *self._work(op, tokens, context_total)) * self.scale
        return _curve_at(curve, tokens, context_total) * self.scale

    # -- ops (``tokens``: tokens processed by the call)

    def _norm_s(self, tokens: int) -> float:
        return self._op("norm", tokens)

    def _add_s(self, tokens: int) -> float:
        return self._op("add", tokens)

    def _router_s(self, tokens: int) -> float:
        return self._op("router", tokens)

    def _expert_s(self, tokens: int) -> float:
        """One routed expert serving ``tokens`` tokens."""
        return self._op("expert", tokens)

    def _shared_s(self, tokens: int) -> float:
        """All shared experts of a layer (0 when the model has none)."""
        return self._op("shared", tokens) if self.shape.num_shared_experts else 0.0

    def _dense_s(self, tokens: int) -> float:
        """The MLP of a dense (non-MoE) decoder layer."""
        return self._op("dense", tokens)

    def _attention_s(self, tokens: int, context_total: int) -> float:
        """Self-attention of one layer for ``tokens`` new positions attending ``context_total`` cached
        positions in all."""
        return self._op("attention", tokens, context_total)

    def _gpu_s(self, op: str, tokens: int, context_total: int = 0) -> float:
        """GPU time of one call of ``op`` (an op of ``KERNELS``): its roofline work, never more than its op
        time (a measured curve bounds it from above); 0 for shared experts of a model without them."""
        if op == "shared" and not self.shape.num_shared_experts:
            return 0.0
        curve = self._gpu_curves.get(op)
        if curve is None:
            seconds = self._work_s(*self._work(op, tokens, context_total))
        else:
            seconds = _curve_at(curve, tokens, context_total)
        return min(seconds * self.scale, self._op(op, tokens, context_total))

    def _gpu_copying_s(self, op: str, tokens: int, context_total: int = 0) -> float:
        """GPU time of one call of ``op`` while copies are in flight: its measured ``<op>_copying`` curve
        (never less than its GPU time), else its GPU time."""
        alone = self.gpu_s(op, tokens, context_total)
        curve = self._copying_curves.get(op)
        if curve is None or alone == 0.0:
            return alone
        return max(alone, _curve_at(curve, tokens, context_total) * self.scale)

    def _launch_s(self, op: str, tokens: int, context_total: int = 0) -> float:
        """Host time to launch one call of ``op`` (an op of ``GPU_TIMED_OPS``): its measured launch time,
        else its op time; 0 for shared experts of a model without them."""
        if op == "shared" and not self.shape.num_shared_experts:
            return 0.0
        curve = self._host_curves.get(op)
        if curve is None:
            return self._op(op, tokens, context_total)
        return _curve_at(curve, tokens, context_total) * self.scale

    def _predictor_s(self, kind: str | None, tokens: int, device: str = "gpu") -> float:
        """Time of one prediction for ``tokens`` tokens: "mlp" (the paper's d->2048->E MLP, on ``device``:
        "gpu", "gpu-side" or "cpu"), "gate" (one router-sized matmul on the GPU), None (free)."""
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
        if device not in ("gpu", "gpu-side"):
            raise ValueError(f"predictor device must be gpu, gpu-side or cpu, got '{device}'")
        return self._op("predictor_gpu", tokens)

    def host_layer_s(self, tokens: int) -> float:
        """Host time per MoE layer outside the ops (the executor's decisions, events, polling), measured
        by calibration; 0 when the profile has no such curve for this shape."""
        curve = self._curves["host_layer"]
        return curve.at(tokens) * self.scale if curve is not None else 0.0

    def gpu_layer_s(self, tokens: int) -> float:
        """GPU time per MoE layer outside the ops (the gaps between its launches on the stream, which
        ops timed one at a time do not show), measured by calibration; 0 without such a curve."""
        curve = self._curves["gpu_layer"]
        return curve.at(tokens) * self.scale if curve is not None else 0.0

    def _gpu_gap_s(self, tokens: int) -> float:
        """The GPU's idle time before each op of a MoE layer: ``gpu_layer_s`` spread evenly over the
        ``MOE_LAYER_OPS + top_k`` ops of a layer at one token per expert. The live executor's timelines
        put the gaps there, before every op (session 8: about 9-10 us before each router decision in
        every shape, and the rest in the MoE block, more with more experts), not in one place: a lump
        before the router delayed on-demand loads and left prefetches' critical path short."""
        layer_s = self.gpu_layer_s(tokens)
        return layer_s / (MOE_LAYER_OPS + self.shape.top_k) if layer_s else 0.0

    def predictor_share(self, device: str = "gpu") -> float:
        """The share of a GPU predictor's time that the compute stream loses: all of it in line ("gpu";
        also a cross-layer gate predictor's when the MLP runs on the "cpu"); on a side stream
        ("gpu-side") the share calibration measured with it running beside, 0 without a measurement
        (the streams overlap freely)."""
        if device != "gpu-side":
            return 1.0
        curve = self._curves["predictor_share"]
        return curve.at(1) if curve is not None else 0.0

    # -- copies

    def copy_s(self, pinned: bool = True) -> float:
        """One expert's transfer alone on an idle link."""
        return self.hardware.copy.transfer_s(self.shape.bytes_per_expert, pinned)
