"""Tiny shapes, traces and hardware for tests of the simulator and of anything that drives its objects.

Traces come from ``traces.synthetic`` (marked synthetic); numbers are chosen so that copies, compute and
predictor times are all of the same order, which makes every code path of the engine matter.
"""

from __future__ import annotations

import numpy as np

from sim.hardware import ComputeProfile, CopyProfile, HardwareProfile, ProfileMeta
from traces.schema import ModelShape, PredictorInfo
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import Trace


def tiny_shape(
    num_moe_layers: int = 3,
    num_experts: int = 8,
    top_k: int = 2,
    num_shared_experts: int = 0,
    dense_first: bool = False,
    name: str = "tiny-moe",
) -> ModelShape:
    """A small MoE shape (hidden 64, expert 32, 12 KiB experts); ``dense_first`` adds a dense layer 0."""
    hidden, inter = 64, 32
    first = 1 if dense_first else 0
    return ModelShape(
        name=name,
        architecture="tiny",
        num_layers=num_moe_layers + first,
        moe_layers=tuple(range(first, num_moe_layers + first)),
        num_experts=num_experts,
        top_k=top_k,
        hidden_size=hidden,
        expert_intermediate_size=inter,
        bytes_per_expert=3 * hidden * inter * 2,
        num_shared_experts=num_shared_experts,
        shared_intermediate_size=2 * inter if num_shared_experts else 0,
        dense_intermediate_size=4 * inter if dense_first else 0,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )


def tiny_trace(
    shape: ModelShape,
    num_sequences: int = 2,
    tokens_per_sequence: int = 24,
    seed: int = 0,
    accuracy: float = 0.7,
    width: int | None = None,
    with_scores: bool = False,
) -> Trace:
    """A synthetic trace with predictors ``pre-attention`` (``accuracy``) and ``cross-layer`` (lower),
    ranked ``width`` deep; ``with_scores`` adds decreasing pseudo-probabilities as ``conf.pre-attention``."""
    width = width or min(shape.num_experts, 2 * shape.top_k)
    trace = generate_trace(
        SyntheticSpec(
            shape=shape,
            num_sequences=num_sequences,
            tokens_per_sequence=tokens_per_sequence,
            predictor_accuracy={"pre-attention": accuracy, "cross-layer": accuracy * 0.7},
            prediction_width=width,
            seed=seed,
        )
    )
    if with_scores:
        ranked = trace.predictions["pre-attention"]
        rng = np.random.default_rng(seed)
        scores = np.sort(rng.random(ranked.shape), axis=-1)[..., ::-1]
        info = next(p for p in trace.metadata.predictors if p.name == "pre-attention")
        trace = trace.with_prediction(PredictorInfo(info.name, info.kind), ranked, scores)
    return trace


def tiny_hardware(
    engines: int = 2,
    latency_s: float = 2e-6,
    gbps: float = 1.0,
    link_gbps: float | None = None,
    launch_overhead_s: float = 5e-6,
) -> HardwareProfile:
    """A made-up host whose 12 KiB expert copies take about as long as a layer's compute."""
    return HardwareProfile(
        meta=ProfileMeta("tiny", "made up for tests", notes="not a real machine"),
        copy=CopyProfile(
            latency_s=latency_s,
            pinned_gbps=gbps,
            pageable_gbps=gbps / 2,
            engines=engines,
            link_gbps=link_gbps if link_gbps is not None else gbps,
        ),
        compute=ComputeProfile(launch_overhead_s=launch_overhead_s, peak_tflops=10.0, hbm_gbps=100.0),
    )
