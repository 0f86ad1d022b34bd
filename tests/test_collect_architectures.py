"""The collector on tiny random-weight models of all eight supported architectures (CPU).

Each test checks the recorded data against an independent forward pass with our own hooks: the trace's
top-k is the router's own choice, stored activations are the norm outputs, dense layers are absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from traces.activations import ActivationStore
from traces.collect import collect, load_model, make_provenance
from traces.trace import read_trace, write_trace

VOCAB = 64
COMMON = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    num_experts_per_tok=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
DEEPSEEK = dict(
    n_routed_experts=6,
    moe_intermediate_size=16,
    first_k_dense_replace=1,
    n_shared_experts=1,
    kv_lora_rank=8,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=8,
    n_group=1,
    topk_group=1,
    num_key_value_heads=4,
)
#: model_type -> (extra config, decoder layers expected to route)
TINY: dict[str, tuple[dict, tuple[int, ...]]] = {
    "mixtral": (dict(num_local_experts=6), (0, 1, 2)),
    "qwen2_moe": (
        dict(
            num_experts=6, moe_intermediate_size=16, shared_expert_intermediate_size=16, mlp_only_layers=[1]
        ),
        (0, 2),
    ),
    "qwen3_moe": (dict(num_experts=6, moe_intermediate_size=16, mlp_only_layers=[0]), (1, 2)),
    "deepseek_v2": ({**DEEPSEEK, "q_lora_rank": None, "topk_method": "greedy"}, (1, 2)),
    "deepseek_v3": ({**DEEPSEEK, "q_lora_rank": 8}, (1, 2)),
    "olmoe": (dict(num_experts=6), (0, 1, 2)),
    "phimoe": (dict(num_local_experts=6), (0, 1, 2)),
    "gpt_oss": (dict(num_local_experts=6, head_dim=8, layer_types=["full_attention"] * 3), (0, 1, 2)),
}


def tiny_config_dict(model_type: str) -> dict:
    extra, _ = TINY[model_type]
    return {"model_type": model_type, **COMMON, **extra}


def write_config(tmp_path, model_type: str):
    path = tmp_path / f"{model_type}.json"
    path.write_text(json.dumps(tiny_config_dict(model_type)))
    return path


def reference_pass(model, input_ids, batch_size):
    """Our own hooks: router input/outputs and norm outputs of every layer, [rows, ...] each, computed in
    the collector's batches (matmul results depend on the batch shape in the last bits)."""
    parts = [_hooked_pass(model, input_ids[i : i + batch_size]) for i in range(0, len(input_ids), batch_size)]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _hooked_pass(model, input_ids):
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        router = getattr(layer.mlp, "gate", None) or getattr(layer.mlp, "router", None)
        if router is not None and hasattr(router, "weight") and router.weight.ndim == 2:

            def on_router(_m, inputs, output, i=i):
                seen[f"in{i}"] = inputs[0].reshape(-1, inputs[0].shape[-1])
                seen[f"w{i}"], seen[f"ids{i}"] = output[1], output[2]

            handles.append(router.register_forward_hook(on_router))
        for kind in ("input_layernorm", "post_attention_layernorm"):

            def on_norm(_m, _inputs, output, key=f"{kind}{i}"):
                seen[key] = output.reshape(-1, output.shape[-1])

            handles.append(getattr(layer, kind).register_forward_hook(on_norm))
    with torch.inference_mode():
        model.model(input_ids=torch.as_tensor(input_ids), use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_collector_records_the_routers_own_choice_and_the_norm_outputs(tmp_path, model_type):
    loaded = load_model(write_config(tmp_path, model_type), torch.device("cpu"))
    expected_moe = TINY[model_type][1]
    assert loaded.shape.moe_layers == expected_moe
    assert loaded.random_weights
    rng = np.random.default_rng(1)
    sequences = rng.integers(3, VOCAB, size=(5, 7))
    provenance = make_provenance(loaded, torch.device("cpu"), corpus="random ids")
    trace = collect(
        loaded,
        sequences,
        provenance,
        torch.device("cpu"),
        batch_size=2,
        activations_dir=tmp_path / "acts",
        keep_logits=True,
        shard_tokens=8,
    )
    write_trace(trace, tmp_path / "t.parquet")
    trace = read_trace(tmp_path / "t.parquet")
    assert trace.metadata.provenance.origin == "synthetic"
    assert "RANDOM WEIGHTS" in trace.metadata.provenance.notes
    assert trace.experts.shape == (35, len(expected_moe), 2)
    np.testing.assert_array_equal(trace.seq_id, np.repeat(np.arange(5), 7))
    np.testing.assert_array_equal(trace.pos, np.tile(np.arange(7), 5))

    seen = reference_pass(loaded.model, sequences, batch_size=2)
    store = ActivationStore(tmp_path / "acts")
    assert store.num_tokens == 35 and len(store.shards) == 5
    for j, layer in enumerate(expected_moe):
        ids, w = seen[f"ids{layer}"], seen[f"w{layer}"].float()
        order = torch.sort(w, dim=-1, descending=True, stable=True).indices
        np.testing.assert_array_equal(trace.experts[:, j], ids.gather(1, order).numpy())
        np.testing.assert_array_equal(trace.weights[:, j], w.gather(1, order).numpy())
        assert set(map(tuple, np.sort(trace.experts[:, j], axis=1))) == set(
            map(tuple, np.sort(ids.numpy(), axis=1))
        )
        np.testing.assert_array_equal(store.load(f"L{layer:03d}.topk"), trace.experts[:, j])
        router_input = seen[f"in{layer}"].to(torch.float16).numpy()
        np.testing.assert_array_equal(store.load(f"L{layer:03d}.postattn"), router_input)
        weight, _bias = store.router(layer)
        assert weight.shape == (6, 32)
    for layer in range(3):
        for kind, module in (("preattn", "input_layernorm"), ("postattn", "post_attention_layernorm")):
            expected = seen[f"{module}{layer}"].to(torch.float16).numpy()
            np.testing.assert_array_equal(store.load(f"L{layer:03d}.{kind}"), expected)
    for layer in set(range(3)) - set(expected_moe):
        assert not store.has(f"L{layer:03d}.topk")
    embed = loaded.model.get_input_embeddings()(torch.as_tensor(sequences)).reshape(35, -1)
    np.testing.assert_array_equal(store.load("embed"), embed.detach().to(torch.float16).numpy())


def test_gpt_oss_router_bias_is_stored(tmp_path):
    loaded = load_model(write_config(tmp_path, "gpt_oss"), torch.device("cpu"))
    with torch.no_grad():
        loaded.model.model.layers[1].mlp.router.bias.copy_(torch.arange(6.0))
    provenance = make_provenance(loaded, torch.device("cpu"), corpus="random ids")
    collect(loaded, np.full((1, 4), 5), provenance, torch.device("cpu"), activations_dir=tmp_path / "a")
    _weight, bias = ActivationStore(tmp_path / "a").router(1)
    np.testing.assert_array_equal(bias, np.arange(6.0, dtype=np.float32))


def test_checkpoint_directory_loads_its_trained_weights_and_recipe(tmp_path):
    config = AutoConfig.for_model(**tiny_config_dict("qwen3_moe"))
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "moe_prefetch_recipe.json").write_text(json.dumps({"seed": 7}))
    loaded = load_model(tmp_path / "ckpt", torch.device("cpu"))
    assert not loaded.random_weights
    assert loaded.recipe == {"seed": 7}
    for ours, theirs in zip(loaded.model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    provenance = make_provenance(loaded, torch.device("cpu"), corpus="c")
    assert provenance.origin == "gpu-collected"
    assert provenance.gpu.startswith("cpu")
    assert "CPU" in provenance.notes


def test_dense_only_config_is_rejected_with_one_line(tmp_path):
    from traces.fileio import InputError

    path = tmp_path / "llama.json"
    path.write_text(json.dumps({"model_type": "llama", **COMMON}))
    with pytest.raises(InputError, match="not supported"):
        load_model(path, torch.device("cpu"))
