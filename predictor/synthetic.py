"""Planted-structure activations: synthetic data where a known map decides every token's experts.

At every MoE layer each token belongs to one of ``num_clusters`` clusters; its pre-attention activation is
the cluster's centroid plus small noise, its router input equals the pre-attention activation (as if
attention changed nothing), and the router weights are built so that every cluster's centroid has a clear
top-k with a wide margin. A working pre-attention predictor must therefore recover the routing almost
perfectly, while a random ranking stays at chance. Used by tests and for dry runs of the CLI; everything
written here says ``synthetic`` in its provenance and must never feed a figure presented as a finding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictor.data import ArraySource, layer_name
from traces.schema import ModelShape, Provenance, TraceMetadata
from traces.trace import Trace, write_trace

PROVENANCE = Provenance(
    origin="synthetic",
    source="predictor.synthetic planted clusters",
    notes="synthetic: a known cluster map decides the experts; for tests and dry runs only",
)


def planted_model(
    num_layers: int = 3, first_moe_layer: int = 0, num_experts: int = 8, top_k: int = 2, hidden_size: int = 16
) -> ModelShape:
    """A tiny model shape for planted data (decoder layers below ``first_moe_layer`` are dense)."""
    return ModelShape(
        name=f"planted-e{num_experts}-k{top_k}",
        architecture="synthetic",
        num_layers=num_layers,
        moe_layers=tuple(range(first_moe_layer, num_layers)),
        num_experts=num_experts,
        top_k=top_k,
        hidden_size=hidden_size,
        expert_intermediate_size=4 * hidden_size,
        bytes_per_expert=3 * hidden_size * 4 * hidden_size * 2,
    )


def planted_source(
    model: ModelShape,
    num_sequences: int = 40,
    seq_len: int = 50,
    num_clusters: int = 6,
    noise: float = 0.05,
    seed: int = 0,
) -> ArraySource:
    """Activations of ``num_sequences`` x ``seq_len`` tokens with planted routing (see module docstring)."""
    rng = np.random.default_rng(seed)
    d, num_experts, k = model.hidden_size, model.num_experts, model.top_k
    n = num_sequences * seq_len
    seq = np.repeat(np.arange(num_sequences), seq_len)
    pos = np.tile(np.arange(seq_len), num_sequences)
    arrays: dict[str, np.ndarray] = {"embed": rng.standard_normal((n, d)).astype(np.float16)}
    routers: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for layer in range(model.num_layers):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        centroids = 3.0 * q[:num_clusters]  # orthogonal, so any target logits are reachable exactly
        cluster = rng.integers(num_clusters, size=n)
        x = (centroids[cluster] + noise * rng.standard_normal((n, d))).astype(np.float16)
        arrays[layer_name(layer, "preattn")] = x
        arrays[layer_name(layer, "postattn")] = x
        if layer not in model.moe_layers:
            continue
        target = rng.uniform(-1.0, 0.0, size=(num_clusters, num_experts))
        for c in range(num_clusters):
            chosen = rng.choice(num_experts, size=k, replace=False)
            target[c, chosen] = 3.0 + np.arange(k, 0, -1)  # distinct, far above the rest
        weight = np.linalg.lstsq(centroids, target, rcond=None)[0].T.astype(np.float32)  # [E, d]
        logits = x.astype(np.float32) @ weight.T
        topk = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        arrays[layer_name(layer, "logits")] = logits.astype(np.float16)
        arrays[layer_name(layer, "topk")] = topk.astype(np.int16)
        arrays[layer_name(layer, "topk_weights")] = np.take_along_axis(probs, topk, axis=1).astype(np.float32)
        routers[layer] = (weight, None)
    return ArraySource(model, np.stack([seq, pos], axis=1).astype(np.int32), arrays, routers)


def write_planted_store(directory: Path, source: ArraySource, shard_tokens: int = 1000) -> None:
    """Write ``source`` as an activation store (format v1) with synthetic provenance."""
    from traces.activations import ActivationWriter

    with ActivationWriter(directory, source.model, PROVENANCE, shard_tokens=shard_tokens) as writer:
        writer.add(source.tokens(), source.arrays)
        for layer, (weight, bias) in source.routers.items():
            writer.set_router(layer, weight, bias)


def planted_trace(source: ArraySource) -> Trace:
    """The routing of ``source`` as a v1 trace (no predictions), synthetic provenance."""
    tokens = source.tokens()
    layers = source.model.moe_layers
    experts = np.stack([source.arrays[layer_name(j, "topk")] for j in layers], axis=1)
    weights = np.stack([source.arrays[layer_name(j, "topk_weights")] for j in layers], axis=1)
    return Trace(TraceMetadata(source.model, PROVENANCE), tokens[:, 0], tokens[:, 1], experts, weights)


def write_planted_trace(path: Path, source: ArraySource) -> None:
    write_trace(planted_trace(source), path)
