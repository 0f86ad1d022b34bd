"""Where the routing lives inside transformers' MoE models (torch imported lazily by the caller's objects).

Every supported architecture (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3, OLMoE, PhiMoE, GPT-OSS) has
decoder layers ``model.model.layers[i]`` with ``input_layernorm``, ``self_attn``,
``post_attention_layernorm`` and ``mlp``. A routing layer's ``mlp`` holds its router as ``mlp.gate``
(Mixtral, Qwen, DeepSeek, OLMoE) or ``mlp.router`` (PhiMoE, GPT-OSS); the router's forward returns
``(router_logits [T, E], topk_weights [T, k], topk_indices [T, k])`` and its input is the
``post_attention_layernorm`` output. Dense layers (DeepSeek below ``first_k_dense_replace``, Qwen's
``mlp_only_layers``) have an ordinary MLP whose gate is a ``gate_proj`` linear, never ``gate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from traces.schema import ModelShape
from traces.shapes import SUPPORTED_ARCHITECTURES, ConfigError, shape_from_hf_config

_ROUTER_ATTRIBUTES = ("gate", "router")


@dataclass(frozen=True)
class DecoderLayer:
    """The modules of one decoder layer the collector hooks; ``router`` is None on a dense layer."""

    index: int
    input_layernorm: Any
    post_attention_layernorm: Any
    router: Any | None


def decoder_layers(model: Any) -> list[DecoderLayer]:
    """The decoder layers of a transformers causal-LM MoE model, in order."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__} has no model.layers: not a supported decoder model")
    found = []
    for index, layer in enumerate(layers):
        for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
            if not hasattr(layer, name):
                raise ConfigError(f"decoder layer {index} of {type(model).__name__} has no {name}")
        found.append(
            DecoderLayer(index, layer.input_layernorm, layer.post_attention_layernorm, router_of(layer.mlp))
        )
    return found


def router_of(mlp: Any) -> Any | None:
    """The router module of an MoE block, or None for a dense MLP."""
    for name in _ROUTER_ATTRIBUTES:
        module = getattr(mlp, name, None)
        weight = getattr(module, "weight", None)
        if module is not None and weight is not None and getattr(weight, "ndim", 0) == 2:
            return module
    return None


def embedding_module(model: Any) -> Any:
    """The token embedding whose output is decoder layer 0's input."""
    return model.get_input_embeddings()


def router_parameters(router: Any) -> tuple[Any, Any | None]:
    """(weight [E, d], additive bias [E] or None) of a router, as torch tensors.

    Only a bias added to the logits counts (GPT-OSS); DeepSeek-V3's ``e_score_correction_bias`` shifts the
    choice after the sigmoid, not the logits, and is not returned.
    """
    bias = getattr(router, "bias", None)
    return router.weight, bias


def model_shape(model: Any, name: str) -> ModelShape:
    """The ModelShape of a loaded model, checked against the layers that really carry a router."""
    config = model.config.to_dict()
    if config.get("model_type") not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"model_type {config.get('model_type')!r} is not supported ({', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    shape = shape_from_hf_config(config, name=name)
    routed = tuple(layer.index for layer in decoder_layers(model) if layer.router is not None)
    if routed != shape.moe_layers:
        raise ConfigError(f"config says MoE layers {shape.moe_layers} but the modules route on {routed}")
    return shape
