"""Activation store format v1: per-token hidden states written by the collector, read by predictor training.

Layout of a store directory::

    manifest.json                      written last: a directory without it is an incomplete store
    router/L{l:03d}.npz                router weight float32 [E, d] (+ optional bias [E]) of MoE layer l
    shard-00000/tokens.npy             int32 [N, 2] (seq_id, pos), same row order in every file of the shard
    shard-00000/embed.npy              fp16 [N, d] embedding output (input of decoder layer 0)
    shard-00000/L{l:03d}.preattn.npy   fp16 [N, d] input_layernorm output of decoder layer l (every layer)
    shard-00000/L{l:03d}.postattn.npy  fp16 [N, d] post_attention_layernorm output (every layer)
    shard-00000/L{l:03d}.logits.npy    fp16 [N, E] router logits (MoE layers, optional)
    shard-00000/L{l:03d}.topk.npy      int16 [N, k] router top-k ids in router order (MoE layers)
    shard-00000/L{l:03d}.topk_weights.npy  float32 [N, k] (MoE layers)

The writer buffers rows in preallocated arrays and flushes a shard whenever ``shard_tokens`` rows are
buffered, so memory stays bounded however many tokens are collected. Each shard is written to a temporary
directory and renamed into place; the manifest is written atomically after the last shard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from traces.fileio import InputError, read_versioned_json, write_text_atomic
from traces.schema import ModelShape, Provenance

FORMAT_NAME = "moe-prefetch-activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROUTER_DIR = "router"
TOKENS_FILE = "tokens.npy"
DEFAULT_SHARD_TOKENS = 16384

#: Storage dtype of every kind of array, by the part of its name after ``L{l:03d}.``.
LAYER_KINDS: dict[str, np.dtype] = {
    "preattn": np.dtype(np.float16),
    "postattn": np.dtype(np.float16),
    "logits": np.dtype(np.float16),
    "topk": np.dtype(np.int16),
    "topk_weights": np.dtype(np.float32),
}
EMBED = "embed"
_LAYER_NAME = re.compile(r"^L(\d{3})\.([a-z_]+)$")
_MOE_ONLY_KINDS = ("logits", "topk", "topk_weights")


def layer_name(layer: int, kind: str) -> str:
    """The array name of ``kind`` ("preattn", "topk", ...) at decoder layer ``layer``, e.g. ``L003.topk``."""
    return f"L{layer:03d}.{kind}"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def expected_width(name: str, model: ModelShape) -> int:
    """Columns of array ``name`` for ``model``; raises ValueError for a name the format does not know."""
    if name == EMBED:
        return model.hidden_size
    match = _LAYER_NAME.match(name)
    if not match or match.group(2) not in LAYER_KINDS:
        raise ValueError(f"unknown activation array name {name!r}")
    layer, kind = int(match.group(1)), match.group(2)
    if not 0 <= layer < model.num_layers:
        raise ValueError(f"{name!r}: layer {layer} outside the model's {model.num_layers} decoder layers")
    if kind in _MOE_ONLY_KINDS and layer not in model.moe_layers:
        raise ValueError(f"{name!r}: layer {layer} is dense, it has no router")
    if kind in ("preattn", "postattn"):
        return model.hidden_size
    return model.num_experts if kind == "logits" else model.top_k


def storage_dtype(name: str) -> np.dtype:
    """The dtype an array called ``name`` is stored in."""
    if name == EMBED:
        return np.dtype(np.float16)
    match = _LAYER_NAME.match(name)
    if not match or match.group(2) not in LAYER_KINDS:
        raise ValueError(f"unknown activation array name {name!r}")
    return LAYER_KINDS[match.group(2)]


class ActivationWriter:
    """Streams per-token activations into a store directory, one shard every ``shard_tokens`` rows.

    Call :meth:`add` with each batch (the same array names every time), :meth:`set_router` once per MoE
    layer, then :meth:`close`. Arrays are cast to their storage dtype (fp16 hidden states, int16 ids).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        model: ModelShape,
        provenance: Provenance,
        shard_tokens: int = DEFAULT_SHARD_TOKENS,
        overwrite: bool = False,
    ) -> None:
        if shard_tokens < 1:
            raise ValueError("shard_tokens must be positive")
        self.directory = Path(directory)
        self.model = model
        self.provenance = provenance
        self.shard_tokens = shard_tokens
        self._prepare_directory(overwrite)
        self._names: tuple[str, ...] | None = None
        self._buffers: dict[str, np.ndarray] = {}
        self._tokens = np.empty((shard_tokens, 2), dtype=np.int32)
        self._filled = 0
        self._shards: list[dict[str, Any]] = []
        self._routers: set[int] = set()
        self._closed = False

    def _prepare_directory(self, overwrite: bool) -> None:
        if self.directory.exists() and any(self.directory.iterdir()):
            if not overwrite:
                raise InputError(self.directory, "directory is not empty (pass overwrite to replace a store)")
            # the manifest goes first so that a crash mid-way leaves a directory readers reject
            (self.directory / MANIFEST).unlink(missing_ok=True)
            for child in self.directory.iterdir():
                if child.name.startswith("shard-") or child.name == ROUTER_DIR:
                    shutil.rmtree(child)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def num_tokens(self) -> int:
        return sum(s["num_tokens"] for s in self._shards) + self._filled

    def set_router(self, layer: int, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
        """Store MoE layer ``layer``'s router weight [E, d] (and bias [E]) as float32."""
        if layer not in self.model.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer of {self.model.name}")
        expected = (self.model.num_experts, self.model.hidden_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f"router weight of layer {layer} has shape {weight.shape}, expected {expected}")
        arrays = {"weight": np.asarray(weight, dtype=np.float32)}
        if bias is not None:
            if tuple(bias.shape) != (self.model.num_experts,):
                raise ValueError(f"router bias of layer {layer} has shape {bias.shape}")
            arrays["bias"] = np.asarray(bias, dtype=np.float32)
        path = self.directory / ROUTER_DIR / f"L{layer:03d}.npz"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        self._routers.add(layer)

    def add(self, tokens: np.ndarray, tensors: dict[str, np.ndarray]) -> None:
        """Append ``n`` rows: ``tokens`` [n, 2] (seq_id, pos) and one [n, width] array per name."""
        if self._closed:
            raise RuntimeError("writer is closed")
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != 2:
            raise ValueError(f"tokens must be [n, 2], got {tokens.shape}")
        n = tokens.shape[0]
        self._check_batch(n, tensors)
        start = 0
        while start < n:
            take = min(n - start, self.shard_tokens - self._filled)
            rows = slice(self._filled, self._filled + take)
            self._tokens[rows] = tokens[start : start + take]
            for name, array in tensors.items():
                self._buffers[name][rows] = array[start : start + take]
            self._filled += take
            start += take
            if self._filled == self.shard_tokens:
                self._flush()

    def _check_batch(self, n: int, tensors: dict[str, np.ndarray]) -> None:
        names = tuple(sorted(tensors))
        if self._names is None:
            for name in names:
                width = expected_width(name, self.model)
                self._buffers[name] = np.empty((self.shard_tokens, width), dtype=storage_dtype(name))
            self._names = names
        elif names != self._names:
            raise ValueError(f"array names changed between batches: {names} vs {self._names}")
        for name, array in tensors.items():
            width = self._buffers[name].shape[1]
            if tuple(array.shape) != (n, width):
                raise ValueError(f"array {name!r} has shape {tuple(array.shape)}, expected ({n}, {width})")

    def _flush(self) -> None:
        if self._filled == 0:
            return
        name = shard_name(len(self._shards))
        final = self.directory / name
        tmp = self.directory / (name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        np.save(tmp / TOKENS_FILE, self._tokens[: self._filled])
        for array_name, buffer in self._buffers.items():
            np.save(tmp / f"{array_name}.npy", buffer[: self._filled])
        os.replace(tmp, final)
        self._shards.append({"name": name, "num_tokens": self._filled})
        self._filled = 0

    def close(self) -> None:
        """Flush the last partial shard and write the manifest (which marks the store complete)."""
        if self._closed:
            return
        self._flush()
        missing = sorted(set(self.model.moe_layers) - self._routers)
        if missing:
            raise ValueError(f"router weights missing for MoE layers {missing}: call set_router first")
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": dataclasses.asdict(self.model),
            "dtype": "float16",
            "num_tokens": self.num_tokens,
            "decoder_layers": self.model.num_layers,
            "moe_layers": list(self.model.moe_layers),
            "arrays": list(self._names or ()),
            "shards": self._shards,
            "provenance": dataclasses.asdict(self.provenance),
        }
        write_text_atomic(self.directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        self._closed = True

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()


class ActivationStore:
    """Read access to a complete activation store. Arrays are memory-mapped shard by shard."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.manifest = self._read_manifest()
        try:
            self.model = ModelShape(**self.manifest["model"])
            self.provenance = Provenance(**self.manifest["provenance"])
            self.shards: list[dict[str, Any]] = [
                {"name": str(s["name"]), "num_tokens": int(s["num_tokens"])} for s in self.manifest["shards"]
            ]
            self.names: tuple[str, ...] = tuple(self.manifest.get("arrays", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(self.fail_path, f"manifest is malformed ({type(exc).__name__}: {exc})") from None
        if sum(s["num_tokens"] for s in self.shards) != self.num_tokens:
            raise InputError(self.fail_path, "manifest num_tokens differs from the sum over its shards")
        self._offsets = np.cumsum([0] + [s["num_tokens"] for s in self.shards])

    @property
    def fail_path(self) -> Path:
        return self.directory / MANIFEST

    def _read_manifest(self) -> dict[str, Any]:
        path = self.directory / MANIFEST
        if not self.directory.is_dir():
            raise InputError(self.directory, "no such activation store directory")
        if not path.exists():
            raise InputError(
                self.directory, "no manifest.json: not an activation store, or an incomplete one"
            )
        return read_versioned_json(path, FORMAT_NAME, FORMAT_VERSION)

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return self.model.moe_layers

    def has(self, name: str) -> bool:
        """Whether the store holds array ``name`` (for example ``L003.logits``, which is optional)."""
        return name in self.names

    def tokens(self) -> np.ndarray:
        """(seq_id, pos) of every row, int32 [N, 2], in store order."""
        return self._concat(TOKENS_FILE, 2, np.dtype(np.int32), None)

    def load(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Array ``name`` over all shards ([N, width]), or only the given row indices (in the given order)."""
        try:
            width = expected_width(name, self.model)
            dtype = storage_dtype(name)
        except ValueError as exc:
            raise InputError(self.directory, str(exc)) from None
        if self.names and name not in self.names:
            raise InputError(self.directory, f"store has no array {name!r}")
        return self._concat(f"{name}.npy", width, dtype, rows)

    def router(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Router weight float32 [E, d] and bias [E] (or None) of MoE layer ``layer``."""
        path = self.directory / ROUTER_DIR / f"L{layer:03d}.npz"
        if layer not in self.model.moe_layers:
            raise InputError(self.directory, f"layer {layer} is not an MoE layer ({list(self.moe_layers)})")
        if not path.exists():
            raise InputError(path, "missing router weights")
        with np.load(path) as data:
            weight = np.asarray(data["weight"], dtype=np.float32)
            bias = np.asarray(data["bias"], dtype=np.float32) if "bias" in data.files else None
        expected = (self.model.num_experts, self.model.hidden_size)
        if weight.shape != expected:
            raise InputError(path, f"router weight has shape {weight.shape}, expected {expected}")
        return weight, bias

    def _open(self, shard: dict[str, Any], file_name: str, width: int, dtype: np.dtype) -> np.ndarray:
        path = self.directory / shard["name"] / file_name
        if not path.exists():
            raise InputError(path, "missing file")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise InputError(path, f"not a readable .npy file ({exc})") from None
        expected = (shard["num_tokens"], width)
        if array.shape != expected or array.dtype != dtype:
            raise InputError(path, f"holds {array.dtype} {array.shape}, expected {dtype} {expected}")
        return array

    def _concat(self, file_name: str, width: int, dtype: np.dtype, rows: np.ndarray | None) -> np.ndarray:
        if rows is None:
            out = np.empty((self.num_tokens, width), dtype=dtype)
            for shard, start in zip(self.shards, self._offsets[:-1], strict=True):
                out[start : start + shard["num_tokens"]] = self._open(shard, file_name, width, dtype)
            return out
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_tokens):
            raise IndexError(f"row index outside [0, {self.num_tokens})")
        out = np.empty((len(rows), width), dtype=dtype)
        which = np.searchsorted(self._offsets, rows, side="right") - 1
        for index in np.unique(which):
            shard = self.shards[int(index)]
            picked = np.flatnonzero(which == index)
            array = self._open(shard, file_name, width, dtype)
            out[picked] = array[rows[picked] - self._offsets[index]]
        return out
