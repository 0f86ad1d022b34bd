"""Model shapes: the six reference MoE models, and reading a shape from a Hugging Face ``config.json``.

A ``ModelShape`` is what the simulator and the live executor need to know about a model (layers that
route, experts, sizes, bytes per expert). ``KNOWN_SHAPES`` holds the published configurations of six
public MoE models (the numbers of /work/shared/FACTS.md, "Model shapes"); ``shape_from_hf_config`` reads
the same from any config of a supported architecture, so a user's own checkpoint works too.

Conventions:

- ``architecture`` is the config's ``model_type`` (``mixtral``, ``qwen3_moe``, ...).
- ``moe_layers`` follows the layer rules of the transformers modelling code: DeepSeek keeps dense MLPs
  below ``first_k_dense_replace``; Qwen2-MoE/Qwen3-MoE route on layer ``i`` when ``i`` is not in
  ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``; the others route on every layer.
- ``bytes_per_expert`` = 3 * hidden * expert_intermediate * bytes of ``dtype`` (a SwiGLU expert has three
  matrices; biases, as in GPT-OSS, are ignored).
- ``shared_intermediate_size`` is the total intermediate size of all shared experts together
  (DeepSeek: ``n_shared_experts * moe_intermediate_size``; Qwen2-MoE: ``shared_expert_intermediate_size``,
  one fused MLP, whose ``num_shared_experts`` is counted in routed-expert units, e.g. 4 for Qwen1.5-MoE).
- ``dense_intermediate_size`` is the MLP width of layers that do not route, 0 when the architecture has no
  such MLP (Mixtral, OLMoE, PhiMoE, GPT-OSS).
- ``head_dim`` for DeepSeek (multi-head latent attention) is the query/key head size,
  ``qk_nope_head_dim + qk_rope_head_dim``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traces.fileio import InputError
from traces.schema import ModelShape

#: Architectures (``model_type``) that ``shape_from_hf_config`` understands.
SUPPORTED_ARCHITECTURES = (
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "olmoe",
    "phimoe",
    "gpt_oss",
)
_EXPERT_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "fp8": 1}


class ConfigError(ValueError):
    """A config dict that does not describe a supported MoE model (message says which field)."""


def shape_from_hf_config(
    config: str | os.PathLike[str] | Mapping[str, Any], name: str | None = None, dtype: str = "bfloat16"
) -> ModelShape:
    """The ModelShape of a Hugging Face MoE config: a dict, a ``config.json`` file or a folder holding one.

    ``name`` defaults to the config's ``_name_or_path`` or the folder name; ``dtype`` is the dtype the
    experts are moved in (bfloat16 by default, whatever the checkpoint was saved in). A file that cannot
    be read or does not describe a supported model raises InputError; a bad dict raises ConfigError.
    """
    if isinstance(config, Mapping):
        return _shape_from_dict(config, name, dtype)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(path, "no such config file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable JSON config ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise InputError(path, "config is not a JSON object")
    default_name = doc.get("_name_or_path") or path.parent.name
    try:
        return _shape_from_dict(doc, name or default_name, dtype)
    except ConfigError as exc:
        raise InputError(path, str(exc)) from None


def resolve_shape(spec: str | os.PathLike[str]) -> ModelShape:
    """A KNOWN_SHAPES key (case-insensitive) or the path of a ``config.json`` (or its folder)."""
    key = str(spec).strip().lower()
    if key in KNOWN_SHAPES:
        return KNOWN_SHAPES[key]
    if os.path.exists(spec):
        return shape_from_hf_config(spec)
    raise InputError(
        spec, f"neither a known model ({', '.join(sorted(KNOWN_SHAPES))}) nor an existing config.json path"
    )


# ---------------------------------------------------------------------------------------------- parsing


def _shape_from_dict(cfg: Mapping[str, Any], name: str | None, dtype: str) -> ModelShape:
    arch = cfg.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"model_type {arch!r} is not a supported MoE architecture ({', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if dtype not in _DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(_DTYPE_BYTES)}")
    hidden = _positive_int(cfg, "hidden_size")
    num_layers = _positive_int(cfg, "num_hidden_layers")
    num_heads = _positive_int(cfg, "num_attention_heads")
    num_experts = _expert_count(cfg)
    top_k = _positive_int(cfg, "num_experts_per_tok")
    if top_k > num_experts:
        raise ConfigError(f"num_experts_per_tok={top_k} exceeds the {num_experts} routed experts")

    uses_moe_width = arch in ("qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")
    expert_i = _positive_int(cfg, "moe_intermediate_size" if uses_moe_width else "intermediate_size")
    dense_i = _positive_int(cfg, "intermediate_size") if uses_moe_width else 0

    num_shared, shared_i = 0, 0
    if arch.startswith("deepseek"):
        num_shared = int(cfg.get("n_shared_experts") or 0)
        shared_i = num_shared * expert_i
    elif arch == "qwen2_moe":
        shared_i = int(cfg.get("shared_expert_intermediate_size") or 0)
        num_shared = max(1, round(shared_i / expert_i)) if shared_i else 0

    if arch.startswith("deepseek"):
        head_dim = int(cfg.get("qk_nope_head_dim") or 0) + int(cfg.get("qk_rope_head_dim") or 0)
    else:
        head_dim = int(cfg.get("head_dim") or hidden // num_heads)

    return ModelShape(
        name=name or str(cfg.get("_name_or_path") or arch),
        architecture=arch,
        num_layers=num_layers,
        moe_layers=_moe_layers(cfg, arch, num_layers),
        num_experts=num_experts,
        top_k=top_k,
        hidden_size=hidden,
        expert_intermediate_size=expert_i,
        bytes_per_expert=3 * hidden * expert_i * _DTYPE_BYTES[dtype],
        num_shared_experts=num_shared,
        shared_intermediate_size=shared_i,
        dense_intermediate_size=dense_i,
        num_attention_heads=num_heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        dtype=dtype,
    )


def _moe_layers(cfg: Mapping[str, Any], arch: str, num_layers: int) -> tuple[int, ...]:
    """Decoder layers whose MLP routes, by the rules of the transformers modelling code."""
    if arch.startswith("deepseek"):
        first_moe = int(cfg.get("first_k_dense_replace") or 0)
        layers = tuple(range(first_moe, num_layers))
    elif arch in ("qwen2_moe", "qwen3_moe"):
        dense = {int(x) for x in cfg.get("mlp_only_layers") or ()}
        step = int(cfg.get("decoder_sparse_step") or 1)
        layers = tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)
    else:
        layers = tuple(range(num_layers))
    if not layers:
        raise ConfigError("no layer routes to experts (check first_k_dense_replace / mlp_only_layers)")
    return layers


def _expert_count(cfg: Mapping[str, Any]) -> int:
    for field_name in _EXPERT_COUNT_FIELDS:
        if cfg.get(field_name):
            return _positive_int(cfg, field_name)
    raise ConfigError(f"no routed expert count (none of {', '.join(_EXPERT_COUNT_FIELDS)} is set)")


def _positive_int(cfg: Mapping[str, Any], field_name: str) -> int:
    value = cfg.get(field_name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config field {field_name!r} is {value!r}, expected a positive integer")
    return value


# ---------------------------------------------------------------------------------------------- known models

#: The fields of the published config.json files of six public MoE models that shapes depend on.
_PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "mixtral-8x7b": {
        "_name_or_path": "mistralai/Mixtral-8x7B-v0.1",
        "model_type": "mixtral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    },
    "qwen3-30b-a3b": {
        "_name_or_path": "Qwen/Qwen3-30B-A3B",
        "model_type": "qwen3_moe",
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "deepseek-v2-lite": {
        "_name_or_path": "deepseek-ai/DeepSeek-V2-Lite",
        "model_type": "deepseek_v2",
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
    },
    "olmoe-1b-7b": {
        "_name_or_path": "allenai/OLMoE-1B-7B-0924",
        "model_type": "olmoe",
        "hidden_size": 2048,
        "intermediate_size": 1024,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": 64,
        "num_experts_per_tok": 8,
    },
    "phi-3.5-moe": {
        "_name_or_path": "microsoft/Phi-3.5-MoE-instruct",
        "model_type": "phimoe",
        "hidden_size": 4096,
        "intermediate_size": 6400,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 16,
        "num_experts_per_tok": 2,
    },
    "qwen1.5-moe-a2.7b": {
        "_name_or_path": "Qwen/Qwen1.5-MoE-A2.7B",
        "model_type": "qwen2_moe",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
}

#: Shapes of six public MoE models, keyed by a short lower-case name ("qwen3-30b-a3b", ...).
KNOWN_SHAPES: dict[str, ModelShape] = {
    key: shape_from_hf_config(cfg, name=cfg["_name_or_path"]) for key, cfg in _PUBLISHED_CONFIGS.items()
}
