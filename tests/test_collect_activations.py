"""Activation store v1: what the writer streams out the store reads back exactly, across shard boundaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from traces.activations import MANIFEST, ActivationStore, ActivationWriter, layer_name
from traces.fileio import InputError
from traces.schema import ModelShape, Provenance

MODEL = ModelShape(
    name="tiny",
    architecture="DeepseekV2ForCausalLM",
    num_layers=3,
    moe_layers=(1, 2),
    num_experts=6,
    top_k=2,
    hidden_size=4,
    expert_intermediate_size=8,
    bytes_per_expert=3 * 4 * 8 * 2,
)
PROV = Provenance(origin="synthetic", source="unit test")


def batch(rng: np.random.Generator, n: int, start: int, logits: bool = True) -> tuple[np.ndarray, dict]:
    tokens = np.stack([np.full(n, start // 10), np.arange(start, start + n)], axis=1).astype(np.int32)
    tensors = {"embed": rng.standard_normal((n, 4)).astype(np.float32)}
    for layer in range(3):
        tensors[layer_name(layer, "preattn")] = rng.standard_normal((n, 4))
        tensors[layer_name(layer, "postattn")] = rng.standard_normal((n, 4))
    for layer in (1, 2):
        if logits:
            tensors[layer_name(layer, "logits")] = rng.standard_normal((n, 6))
        tensors[layer_name(layer, "topk")] = np.argsort(-rng.standard_normal((n, 6)), axis=1)[:, :2]
        tensors[layer_name(layer, "topk_weights")] = rng.random((n, 2))
    return tokens, tensors


def write_store(path, sizes: list[int], shard_tokens: int, seed: int = 0, logits: bool = True):
    rng = np.random.default_rng(seed)
    written: list[tuple[np.ndarray, dict]] = []
    with ActivationWriter(path, MODEL, PROV, shard_tokens=shard_tokens) as writer:
        start = 0
        for n in sizes:
            written.append(batch(rng, n, start, logits))
            writer.add(*written[-1])
            start += n
        for layer in (1, 2):
            writer.set_router(
                layer, rng.standard_normal((6, 4)), rng.standard_normal(6) if layer == 2 else None
            )
    return written


def concatenated(written, name: str) -> np.ndarray:
    return np.concatenate([tensors[name] for _, tensors in written])


def test_store_reads_back_every_array_across_shard_boundaries(tmp_path):
    written = write_store(tmp_path / "acts", [5, 7, 3, 9], shard_tokens=4)
    store = ActivationStore(tmp_path / "acts")
    assert store.num_tokens == 24
    assert [s["num_tokens"] for s in store.shards] == [4] * 6
    np.testing.assert_array_equal(store.tokens(), np.concatenate([t for t, _ in written]))
    for name in written[0][1]:
        loaded = store.load(name)
        expected = concatenated(written, name).astype(loaded.dtype)
        np.testing.assert_array_equal(loaded, expected)
    assert store.load("L001.preattn").dtype == np.float16
    assert store.load("L002.topk").dtype == np.int16
    assert store.load("L002.topk_weights").dtype == np.float32
    assert store.model == MODEL
    assert store.provenance == PROV
    assert store.moe_layers == (1, 2)


def test_load_with_rows_returns_those_rows_in_the_order_asked(tmp_path):
    written = write_store(tmp_path / "acts", [10, 10], shard_tokens=6)
    store = ActivationStore(tmp_path / "acts")
    rows = np.array([19, 0, 7, 6, 5, 12])
    full = concatenated(written, "L002.postattn").astype(np.float16)
    np.testing.assert_array_equal(store.load("L002.postattn", rows), full[rows])
    with pytest.raises(IndexError):
        store.load("embed", np.array([20]))


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=13), min_size=1, max_size=6),
    shard_tokens=st.integers(min_value=1, max_value=17),
)
def test_sharding_never_changes_the_data(tmp_path_factory, sizes, shard_tokens):
    path = tmp_path_factory.mktemp("acts")
    written = write_store(path, sizes, shard_tokens)
    store = ActivationStore(path)
    assert store.num_tokens == sum(sizes)
    assert all(s["num_tokens"] <= shard_tokens for s in store.shards)
    np.testing.assert_array_equal(store.load("L001.topk"), concatenated(written, "L001.topk"))


def test_router_weights_round_trip_with_and_without_bias(tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((6, 4))
    with ActivationWriter(tmp_path / "acts", MODEL, PROV) as writer:
        writer.add(*batch(rng, 3, 0))
        writer.set_router(1, weight)
        writer.set_router(2, weight * 2, np.arange(6.0))
    store = ActivationStore(tmp_path / "acts")
    w1, b1 = store.router(1)
    np.testing.assert_array_equal(w1, weight.astype(np.float32))
    assert b1 is None
    w2, b2 = store.router(2)
    np.testing.assert_array_equal(w2, (weight * 2).astype(np.float32))
    np.testing.assert_array_equal(b2, np.arange(6.0, dtype=np.float32))
    with pytest.raises(InputError, match="not an MoE layer"):
        store.router(0)


def test_logits_are_optional(tmp_path):
    write_store(tmp_path / "acts", [4], shard_tokens=8, logits=False)
    store = ActivationStore(tmp_path / "acts")
    assert not store.has("L001.logits")
    assert store.has("L001.topk")
    with pytest.raises(InputError, match=r"no array 'L001\.logits'"):
        store.load("L001.logits")


def test_store_without_manifest_is_rejected_as_incomplete(tmp_path):
    rng = np.random.default_rng(0)
    writer = ActivationWriter(tmp_path / "acts", MODEL, PROV, shard_tokens=2)
    writer.add(*batch(rng, 5, 0))  # two full shards are on disk already
    assert (tmp_path / "acts" / "shard-00001").is_dir()
    with pytest.raises(InputError, match="incomplete"):
        ActivationStore(tmp_path / "acts")


def test_missing_or_wrong_shard_file_names_the_file(tmp_path):
    write_store(tmp_path / "acts", [6], shard_tokens=3)
    (tmp_path / "acts" / "shard-00001" / "L002.preattn.npy").unlink()
    store = ActivationStore(tmp_path / "acts")
    with pytest.raises(InputError, match=r"shard-00001/L002\.preattn\.npy: missing file"):
        store.load("L002.preattn")
    np.save(tmp_path / "acts" / "shard-00000" / "embed.npy", np.zeros((3, 5), dtype=np.float16))
    with pytest.raises(InputError, match=r"embed\.npy: holds float16 \(3, 5\), expected float16 \(3, 4\)"):
        store.load("embed")


def test_malformed_manifest_is_one_input_error(tmp_path):
    write_store(tmp_path / "acts", [2], shard_tokens=3)
    manifest = tmp_path / "acts" / MANIFEST
    doc = json.loads(manifest.read_text())
    doc["version"] = 9
    manifest.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="unknown version 9"):
        ActivationStore(tmp_path / "acts")
    manifest.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        ActivationStore(tmp_path / "acts")


def test_writer_rejects_inconsistent_batches(tmp_path):
    rng = np.random.default_rng(0)
    writer = ActivationWriter(tmp_path / "acts", MODEL, PROV)
    tokens, tensors = batch(rng, 3, 0)
    writer.add(tokens, tensors)
    with pytest.raises(ValueError, match="names changed"):
        writer.add(tokens, {k: v for k, v in tensors.items() if k != "embed"})
    with pytest.raises(ValueError, match="expected"):
        writer.add(tokens, {**tensors, "embed": np.zeros((3, 5))})
    with pytest.raises(ValueError, match="dense"):
        ActivationWriter(tmp_path / "other", MODEL, PROV).add(tokens, {"L000.topk": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="router weights missing"):
        writer.close()


def test_writer_refuses_a_non_empty_directory_unless_told_to_overwrite(tmp_path):
    write_store(tmp_path / "acts", [4], shard_tokens=2)
    with pytest.raises(InputError, match="not empty"):
        ActivationWriter(tmp_path / "acts", MODEL, PROV)
    written = write_store_overwrite(tmp_path / "acts")
    store = ActivationStore(tmp_path / "acts")
    assert store.num_tokens == 1
    assert [s["name"] for s in store.shards] == ["shard-00000"]
    np.testing.assert_array_equal(store.load("L001.topk"), written["L001.topk"])


def write_store_overwrite(path):
    rng = np.random.default_rng(9)
    tokens, tensors = batch(rng, 1, 0)
    with ActivationWriter(path, MODEL, PROV, overwrite=True) as writer:
        writer.add(tokens, tensors)
        writer.set_router(1, np.zeros((6, 4)))
        writer.set_router(2, np.zeros((6, 4)))
    return tensors
