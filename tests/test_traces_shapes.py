"""Model shapes: the six known models match the published numbers, and HF configs parse by the layer rules."""

from __future__ import annotations

import json

import pytest
import transformers

from traces.fileio import InputError
from traces.shapes import KNOWN_SHAPES, ConfigError, resolve_shape, shape_from_hf_config

# (layers, MoE layers, experts, top-k, shared, hidden, expert i, bytes/expert) from FACTS.md
PUBLISHED = {
    "mixtral-8x7b": (32, 32, 8, 2, 0, 4096, 14336, 352_321_536),
    "qwen3-30b-a3b": (48, 48, 128, 8, 0, 2048, 768, 9_437_184),
    "deepseek-v2-lite": (27, 26, 64, 6, 2, 2048, 1408, 17_301_504),
    "olmoe-1b-7b": (16, 16, 64, 8, 0, 2048, 1024, 12_582_912),
    "phi-3.5-moe": (32, 32, 16, 2, 0, 4096, 6400, 157_286_400),
    "qwen1.5-moe-a2.7b": (24, 24, 60, 4, 4, 2048, 1408, 17_301_504),
}


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_known_shape_matches_published_table(key):
    s = KNOWN_SHAPES[key]
    got = (
        s.num_layers,
        s.num_moe_layers,
        s.num_experts,
        s.top_k,
        s.num_shared_experts,
        s.hidden_size,
        s.expert_intermediate_size,
        s.bytes_per_expert,
    )
    assert got == PUBLISHED[key]
    assert s.num_attention_heads > 0 and s.num_key_value_heads > 0 and s.head_dim > 0


def test_deepseek_v2_lite_first_layer_is_dense_and_shared_experts_are_sized():
    s = KNOWN_SHAPES["deepseek-v2-lite"]
    assert s.dense_layers == (0,)
    assert s.moe_layers[0] == 1
    assert s.shared_intermediate_size == 2 * 1408
    assert s.dense_intermediate_size == 10944
    assert s.head_dim == 192


def test_qwen15_shared_expert_is_fused_width():
    s = KNOWN_SHAPES["qwen1.5-moe-a2.7b"]
    assert s.shared_intermediate_size == 5632
    assert s.architecture == "qwen2_moe"


def _base(model_type, **extra):
    cfg = {
        "model_type": model_type,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_experts_per_tok": 2,
    }
    cfg.update(extra)
    return cfg


def test_deepseek_first_k_dense_replace_makes_leading_layers_dense():
    cfg = _base("deepseek_v3", moe_intermediate_size=32, n_routed_experts=16, first_k_dense_replace=3)
    s = shape_from_hf_config(cfg)
    assert s.moe_layers == (3, 4, 5)
    assert s.expert_intermediate_size == 32
    assert s.bytes_per_expert == 3 * 64 * 32 * 2


def test_qwen_mlp_only_layers_and_sparse_step_select_moe_layers():
    cfg = _base(
        "qwen3_moe", moe_intermediate_size=32, num_experts=8, decoder_sparse_step=2, mlp_only_layers=[3]
    )
    assert shape_from_hf_config(cfg).moe_layers == (1, 5)


def test_qwen2_moe_shared_expert_width_comes_from_its_own_field():
    cfg = _base("qwen2_moe", moe_intermediate_size=32, num_experts=8, shared_expert_intermediate_size=64)
    s = shape_from_hf_config(cfg)
    assert (s.num_shared_experts, s.shared_intermediate_size) == (2, 64)


@pytest.mark.parametrize(
    ("model_type", "count_field"),
    [
        ("mixtral", "num_local_experts"),
        ("phimoe", "num_local_experts"),
        ("gpt_oss", "num_local_experts"),
        ("olmoe", "num_experts"),
    ],
)
def test_all_layers_route_and_expert_width_is_intermediate_size(model_type, count_field):
    s = shape_from_hf_config(_base(model_type, **{count_field: 8}))
    assert s.moe_layers == tuple(range(6))
    assert s.num_experts == 8
    assert s.expert_intermediate_size == 128
    assert s.dense_intermediate_size == 0
    assert s.head_dim == 16


@pytest.mark.parametrize(
    "config_class",
    [
        "MixtralConfig",
        "Qwen2MoeConfig",
        "Qwen3MoeConfig",
        "DeepseekV2Config",
        "DeepseekV3Config",
        "OlmoeConfig",
        "PhimoeConfig",
        "GptOssConfig",
    ],
)
def test_transformers_saved_configs_parse(config_class, tmp_path):
    config = getattr(transformers, config_class)(num_hidden_layers=4, num_experts_per_tok=2)
    config.save_pretrained(tmp_path)
    s = shape_from_hf_config(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert s.architecture == saved["model_type"]
    assert s.num_layers == 4
    assert s.top_k == 2
    assert s.num_experts >= 2
    assert 1 <= s.num_moe_layers <= 4


def test_missing_expert_count_is_a_config_error():
    with pytest.raises(ConfigError, match="routed expert count"):
        shape_from_hf_config(_base("mixtral"))


def test_dense_architecture_is_rejected_in_a_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_base("llama")))
    with pytest.raises(InputError, match="model_type 'llama'") as info:
        shape_from_hf_config(path)
    assert str(path) in str(info.value)


def test_resolve_shape_accepts_key_and_config_path_and_rejects_other(tmp_path):
    assert resolve_shape("Qwen3-30B-A3B") is KNOWN_SHAPES["qwen3-30b-a3b"]
    (tmp_path / "config.json").write_text(json.dumps(_base("olmoe", num_experts=8)))
    assert resolve_shape(str(tmp_path)).num_experts == 8
    with pytest.raises(InputError, match="neither a known model") as info:
        resolve_shape("gpt-5")
    assert "\n" not in str(info.value)
