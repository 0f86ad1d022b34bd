"""Collect routing traces and activations from a transformers MoE model (torch is imported here only).

Teacher-forced batched forward passes over fixed-length token sequences. Forward hooks record, per token:
the embedding output, every decoder layer's ``input_layernorm`` and ``post_attention_layernorm`` outputs,
and every MoE layer's router output ``(logits, topk_weights, topk_indices)``. Routing goes into a v1 trace
(dense layers absent); hidden states stream into an activation store shard by shard, so memory stays
bounded by one shard whatever the number of tokens.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traces.activations import EMBED, ActivationWriter, layer_name
from traces.architectures import (
    DecoderLayer,
    decoder_layers,
    embedding_module,
    model_shape,
    router_parameters,
)
from traces.fileio import InputError
from traces.refmodels import RECIPE_FILE
from traces.schema import ModelShape, Provenance, TraceMetadata
from traces.shapes import ConfigError
from traces.trace import Trace, write_trace


@dataclass
class LoadedModel:
    """A model ready for collection plus what provenance needs to say about it."""

    model: torch.nn.Module
    shape: ModelShape
    source: str
    random_weights: bool
    recipe: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """The torch device a ``--device`` option names; ``auto`` picks the GPU when there is one.

    InputError (one line, exit 2) for a name torch does not know or a CUDA device on a machine without one,
    instead of a traceback from deep inside the first tensor copy.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError("--device", f"unknown device {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", f"{name} asked for, but torch sees no CUDA device")
    return device


def load_model(
    spec: str | os.PathLike[str], device: torch.device, dtype: torch.dtype | None = None
) -> LoadedModel:
    """A checkpoint directory (config.json + weights), or a config (file or weight-less directory) built with
    random weights. ``dtype`` defaults to bf16 on a GPU and float32 on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(spec)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise InputError(spec, "no config.json: expected a checkpoint directory or a config file")
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    has_weights = path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))
    try:
        doc = json.loads(config_path.read_text(encoding="utf-8"))
        model_type = doc.pop("model_type")
        for key in ("architectures", "transformers_version", "dtype", "torch_dtype"):
            doc.pop(key, None)
        config = AutoConfig.for_model(model_type, **doc)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            config_path, f"not a usable transformers config ({type(exc).__name__}: {exc})"
        ) from None
    if has_weights:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.to(device).eval()
    name = path.name if path.is_dir() else path.stem
    try:
        shape = model_shape(model, name)
    except ConfigError as exc:
        raise InputError(config_path, str(exc)) from None
    recipe_path = path / RECIPE_FILE if path.is_dir() else None
    recipe = json.loads(recipe_path.read_text()) if recipe_path and recipe_path.is_file() else {}
    source = f"checkpoint {path}" if has_weights else f"random weights (seed 0) from config {config_path}"
    return LoadedModel(model, shape, source, not has_weights, recipe)


class RoutingRecorder:
    """Forward hooks that capture one batch's norm outputs, embedding output and router decisions.

    After each forward pass, :meth:`take` returns numpy arrays with rows in (sequence, position) order:
    activations (fp16) by activation-store name, and per MoE layer the top-k ids and weights sorted by
    weight (descending, ties keep the router's order) plus the logits.
    """

    def __init__(self, model: torch.nn.Module, shape: ModelShape, record_activations: bool) -> None:
        self.shape = shape
        self.layers: list[DecoderLayer] = decoder_layers(model)
        self._captured: dict[str, Any] = {}
        self._handles: list[Any] = []
        if record_activations:
            self._hook(embedding_module(model), EMBED)
            for layer in self.layers:
                self._hook(layer.input_layernorm, layer_name(layer.index, "preattn"))
                self._hook(layer.post_attention_layernorm, layer_name(layer.index, "postattn"))
        for layer in self.layers:
            if layer.router is not None:
                self._hook(layer.router, f"router.{layer.index}")

    def _hook(self, module: torch.nn.Module, key: str) -> None:
        def capture(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            self._captured[key] = output

        self._handles.append(module.register_forward_hook(capture))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def take(self) -> tuple[dict[str, np.ndarray], dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Activations by name and {layer: (top-k ids int16, top-k weights float32, logits fp16)}."""
        activations: dict[str, np.ndarray] = {}
        routing: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        d, e = self.shape.hidden_size, self.shape.num_experts
        for key, value in self._captured.items():
            if key.startswith("router."):
                logits, weights, ids = value
                weights = weights.reshape(-1, weights.shape[-1]).float()
                ids = ids.reshape(-1, ids.shape[-1])
                order = torch.sort(weights, dim=-1, descending=True, stable=True).indices
                routing[int(key.split(".")[1])] = (
                    ids.gather(1, order).to(torch.int16).cpu().numpy(),
                    weights.gather(1, order).cpu().numpy(),
                    logits.reshape(-1, e).to(torch.float16).cpu().numpy(),
                )
            else:
                activations[key] = value.reshape(-1, d).to(torch.float16).cpu().numpy()
        self._captured.clear()
        return activations, routing


def _software() -> dict[str, str]:
    import transformers

    from moe_prefetch import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "moe-prefetch": __version__,
    }


def _program_name() -> str:
    name = Path(sys.argv[0]).name
    return "moe-prefetch" if name in ("__main__.py", "moe-prefetch") else name


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def make_provenance(loaded: LoadedModel, device: torch.device, corpus: str, notes: str = "") -> Provenance:
    """Provenance of a collection: routing of a random-weight model is labelled ``synthetic``."""
    where = "GPU" if device.type == "cuda" else "CPU"
    remarks = [f"collected on the {where} with moe-prefetch collect (teacher-forced forward passes)"]
    if loaded.random_weights:
        remarks.append("RANDOM WEIGHTS: the routing of an untrained model, not a finding")
    if notes:
        remarks.append(notes)
    return Provenance(
        origin="synthetic" if loaded.random_weights else "gpu-collected",
        source=loaded.source,
        gpu=device_description(device),
        software=_software(),
        corpus=corpus,
        command=" ".join([_program_name(), *sys.argv[1:]]),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes="; ".join(remarks),
        recipe=loaded.recipe,
    )


@torch.inference_mode()
def collect(
    loaded: LoadedModel,
    sequences: np.ndarray,
    provenance: Provenance,
    device: torch.device,
    batch_size: int = 16,
    activations_dir: str | os.PathLike[str] | None = None,
    keep_logits: bool = False,
    shard_tokens: int = 16384,
    progress: Callable[[int], None] | None = None,
) -> Trace:
    """Run ``sequences`` ([num_sequences, seq_len] token ids; seq_id = row index) through the model.

    Returns the trace of every MoE layer; when ``activations_dir`` is given also writes the activation
    store there (router logits included in it only with ``keep_logits``). ``progress(n)`` is called with
    the number of tokens done after each batch.
    """
    shape = loaded.shape
    num_seq, seq_len = sequences.shape
    moe_layers = shape.moe_layers
    experts = np.empty((num_seq * seq_len, len(moe_layers), shape.top_k), dtype=np.int16)
    weights = np.empty((num_seq * seq_len, len(moe_layers), shape.top_k), dtype=np.float32)
    logits = (
        np.empty((num_seq * seq_len, len(moe_layers), shape.num_experts), np.float16) if keep_logits else None
    )
    writer = None
    if activations_dir is not None:
        writer = ActivationWriter(
            activations_dir, shape, provenance, shard_tokens=shard_tokens, overwrite=True
        )
        for layer in decoder_layers(loaded.model):
            if layer.router is not None:
                weight, bias = router_parameters(layer.router)
                writer.set_router(
                    layer.index,
                    weight.detach().float().cpu().numpy(),
                    None if bias is None else bias.detach().float().cpu().numpy(),
                )
    recorder = RoutingRecorder(loaded.model, shape, record_activations=writer is not None)
    try:
        for start in range(0, num_seq, batch_size):
            batch = sequences[start : start + batch_size]
            input_ids = torch.as_tensor(batch.astype(np.int64), device=device)
            loaded.model.model(input_ids=input_ids, use_cache=False)
            activations, routing = recorder.take()
            rows = slice(start * seq_len, (start + len(batch)) * seq_len)
            for j, layer in enumerate(moe_layers):
                ids, w, lg = routing[layer]
                experts[rows, j], weights[rows, j] = ids, w
                if logits is not None:
                    logits[rows, j] = lg
            if writer is not None:
                seq_ids = np.repeat(np.arange(start, start + len(batch), dtype=np.int32), seq_len)
                positions = np.tile(np.arange(seq_len, dtype=np.int32), len(batch))
                for layer in moe_layers:
                    ids, w, lg = routing[layer]
                    activations[layer_name(layer, "topk")] = ids
                    activations[layer_name(layer, "topk_weights")] = w
                    if keep_logits:
                        activations[layer_name(layer, "logits")] = lg
                writer.add(np.stack([seq_ids, positions], axis=1), activations)
            if progress is not None:
                progress(len(batch) * seq_len)
    finally:
        recorder.remove()
    if writer is not None:
        writer.close()
    return Trace(
        metadata=TraceMetadata(model=shape, provenance=provenance),
        seq_id=np.repeat(np.arange(num_seq, dtype=np.int32), seq_len),
        pos=np.tile(np.arange(seq_len, dtype=np.int32), num_seq),
        experts=experts,
        weights=weights,
        logits=logits,
    )


def collect_to_files(
    loaded: LoadedModel,
    sequences: np.ndarray,
    provenance: Provenance,
    device: torch.device,
    out: str | os.PathLike[str],
    **kwargs: Any,
) -> Trace:
    """:func:`collect`, then write the trace to ``out`` atomically."""
    trace = collect(loaded, sequences, provenance, device, **kwargs)
    write_trace(trace, out)
    return trace


def provenance_with_recipe(provenance: Provenance, **extra: Any) -> Provenance:
    """A copy whose recipe also holds ``extra`` (for example the collection settings)."""
    return dataclasses.replace(provenance, recipe={**provenance.recipe, **extra})
