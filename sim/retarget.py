"""Drive a model shape with a trace of another model: map layers and experts modulo, documented and exact.

Validation runs big public shapes (Qwen3-30B-A3B, DeepSeek-V2-Lite, Mixtral-8x7B) on routing recorded
from the project's small reference models, which have fewer layers and sometimes more experts. The
mapping, applied identically to routing and to every prediction column so live and simulated runs see
the same decisions:

- MoE layer ``j`` of the target takes the routing of trace MoE layer ``j mod L_trace``;
- expert ``e`` becomes ``e mod E_target``; where two of one token-layer's experts then coincide, the
  later one (in router order) is replaced by the smallest expert id not yet used there, so a token-layer
  still needs ``k`` distinct experts. Predictions are mapped the same way and deduplicated, keeping rank
  order (a repeated id becomes the smallest unused id, like the routing);
- a trace routing more experts per token than the target keeps the first ``top_k`` of the target in
  router order (the highest-weighted ones); a trace routing fewer is refused. Prediction lists keep
  their width (policies take their top-k from them).

The result is a new Trace whose metadata names the target shape and records the mapping in
``provenance.notes``; origin and everything else of the provenance are kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from traces.schema import ModelShape
from traces.trace import NO_PREDICTION, Trace


def dedupe_rows(ids: np.ndarray, num_experts: int, keep_missing: bool = False) -> np.ndarray:
    """Per row of ``ids`` ([N, w]), replace repeated ids (after the first) by the smallest unused ids.

    With ``keep_missing``, entries equal to NO_PREDICTION stay as they are and block nothing.
    """
    out = ids.copy()
    width = out.shape[1]
    if width > num_experts:
        raise ValueError(f"rows of {width} ids cannot be distinct among {num_experts} experts")
    sorted_ids = np.sort(np.where(out < 0, num_experts, out), axis=1)
    has_dup = (np.diff(sorted_ids, axis=1) == 0) & (sorted_ids[:, 1:] < num_experts)
    for r in np.flatnonzero(has_dup.any(axis=1)):
        row = out[r]
        seen: set[int] = set()
        for c in range(width):
            value = int(row[c])
            if keep_missing and value == NO_PREDICTION:
                continue
            if value in seen:
                value = min(set(range(num_experts)) - seen - set(int(v) for v in row[c + 1 :]))
                row[c] = value
            seen.add(value)
    return out


def retarget_trace(trace: Trace, shape: ModelShape) -> Trace:
    """The trace's routing and predictions mapped onto ``shape`` (see the module docstring)."""
    src = trace.metadata.model
    if trace.num_layers == 0:
        raise ValueError("trace has no MoE layers")
    if trace.top_k < shape.top_k:
        raise ValueError(f"trace routes top-{trace.top_k}, fewer than the target's top-{shape.top_k}")
    k = shape.top_k
    layer_map = np.arange(shape.num_moe_layers) % trace.num_layers
    t, n_layers = trace.num_tokens, shape.num_moe_layers

    def remap(ids: np.ndarray, keep_missing: bool) -> np.ndarray:
        picked = ids[:, layer_map, :]
        mapped = np.where(picked < 0, picked, picked % shape.num_experts).astype(np.int16)
        width = mapped.shape[2]
        if width > shape.num_experts:
            mapped = mapped[:, :, : shape.num_experts]
            width = shape.num_experts
        flat = dedupe_rows(mapped.reshape(t * n_layers, width), shape.num_experts, keep_missing)
        return flat.reshape(t, n_layers, width)

    def take_layers(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[:, layer_map]

    note = (
        f"retargeted from {src.name} ({trace.num_layers} MoE layers, {src.num_experts} experts) onto "
        f"{shape.name}: layer j <- trace layer j mod {trace.num_layers}, expert e -> e mod "
        f"{shape.num_experts}, duplicates replaced by the smallest unused id, first {k} of "
        f"{trace.top_k} routed experts kept"
    )
    provenance = dataclasses.replace(
        trace.metadata.provenance, notes="; ".join(x for x in (trace.metadata.provenance.notes, note) if x)
    )
    metadata = dataclasses.replace(trace.metadata, model=shape, provenance=provenance)
    predictions = {name: remap(p, keep_missing=True) for name, p in trace.predictions.items()}
    confidences = {
        name: c[:, layer_map, : predictions[name].shape[2]] for name, c in trace.confidences.items()
    }
    same_experts = src.num_experts == shape.num_experts
    return dataclasses.replace(
        trace,
        metadata=metadata,
        experts=remap(trace.experts[:, :, :k], keep_missing=False),
        weights=take_layers(trace.weights[:, :, :k]),
        logits=take_layers(trace.logits) if same_experts else None,
        predictions=predictions,
        confidences=confidences,
    )
