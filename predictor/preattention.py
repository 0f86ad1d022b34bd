"""The paper's pre-attention predictor: each MoE layer's experts from that same layer's ``input_layernorm``
output, with a small network per layer trained on the ranking-aware loss.

``PreAttentionPredictor`` wraps a ``StackedPredictorNet`` (all layers at once) behind the common
``ExpertPredictor`` interface, and saves to / loads from a predictor directory::

    PRED_DIR/predictors.json      manifest: model, activations it was trained on, split, loss tiers, and one
                                  entry per trained architecture (config, per-layer training summary)
    PRED_DIR/<name>.pt            the network's state dict (float32)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor.base import ExpertPredictor, Prediction
from predictor.data import ActivationView, layer_name
from predictor.loss import RankTiers
from predictor.ranking import top_m
from predictor.stacked import ARCH_PREDICTOR_NAMES, StackedPredictorNet
from predictor.train import (
    StackedData,
    TrainConfig,
    TrainResult,
    input_dtype,
    prepare_data,
    resolve_device,
    stacked_logits,
    train_stacked,
)
from traces.fileio import InputError, atomic_write, read_versioned_json, write_text_atomic
from traces.schema import ModelShape

MANIFEST = "predictors.json"
MANIFEST_FORMAT = "moe-prefetch-predictors"
MANIFEST_VERSION = 1


class PreAttentionPredictor(ExpertPredictor):
    """One trained (or loaded) stacked network for every MoE layer of a model."""

    kind = "learned"
    score_meaning = "sigmoid of the predictor's logit: estimated probability that the expert is in the top-k"

    def __init__(
        self,
        config: TrainConfig,
        tiers: RankTiers,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        self.name = ARCH_PREDICTOR_NAMES[config.arch]
        self.train_config = config
        self.tiers = tiers
        self.device = resolve_device(device)
        self.progress = progress
        self.net: StackedPredictorNet | None = None
        self.training: dict[str, Any] = {}

    # -- training

    def fit(self, train: ActivationView, val: ActivationView | None = None) -> None:
        """Train on ``train``, early-stopping on ``val`` (required)."""
        if val is None or val.num_tokens == 0:
            raise ValueError("pre-attention training needs a non-empty validation split")
        train_data = prepare_data(train, self.tiers, self.device)
        val_data = prepare_data(val, self.tiers, self.device)
        self.fit_prepared(train_data, val_data, train.model)

    def fit_prepared(self, train: StackedData, val: StackedData, model: ModelShape) -> TrainResult:
        """Train on data already on the device (lets several architectures share one upload)."""
        result = train_stacked(
            train,
            val,
            model.num_experts,
            model.top_k,
            self.tiers,
            self.train_config,
            progress=self.progress,
            description=self.name,
        )
        self.net = result.net
        self.training = result.summary() | {"train_tokens": train.num_tokens, "val_tokens": val.num_tokens}
        return result

    # -- prediction

    def logits(self, view: ActivationView) -> np.ndarray:
        """Predictor logits for every token and MoE layer, float32 [N, L, E]."""
        if self.net is None:
            raise RuntimeError(f"predictor {self.name} is neither trained nor loaded")
        x = torch.stack(
            [
                torch.from_numpy(view.load(layer_name(layer, "preattn"))).to(
                    self.device, input_dtype(self.device)
                )
                for layer in view.moe_layers
            ]
        )
        return stacked_logits(self.net, x).permute(1, 0, 2).cpu().numpy()

    def predict(self, view: ActivationView, m: int) -> Prediction:
        logits = self.logits(view)
        n, num_layers, num_experts = logits.shape
        ranked, picked = top_m(logits.reshape(n * num_layers, num_experts), m)  # rank by logit: no saturation
        scores = 1.0 / (1.0 + np.exp(-picked.astype(np.float64)))
        return Prediction(
            ranked.reshape(n, num_layers, m), scores.astype(np.float32).reshape(n, num_layers, m)
        )

    def predict_layer(self, view: ActivationView, layer: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        j = view.moe_layers.index(layer)
        prediction = self.predict(view, m)
        return prediction.ranked[:, j], prediction.scores[:, j]

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "input": "same layer's input_layernorm output (pre-attention)",
            "arch": self.train_config.arch,
            "train": dataclasses.asdict(self.train_config),
            "loss_tiers": self.tiers.as_dict(),
        }

    # -- files

    def save(self, directory: Path) -> dict[str, Any]:
        """Write ``<name>.pt`` into ``directory``; returns the manifest entry describing it."""
        if self.net is None:
            raise RuntimeError(f"predictor {self.name} has not been trained")
        file_name = f"{self.name}.pt"
        state = {k: v.detach().float().cpu() for k, v in self.net.state_dict().items()}
        with atomic_write(directory / file_name, suffix=".pt") as tmp:
            torch.save(state, tmp)
        return {
            "name": self.name,
            "file": file_name,
            "config": dataclasses.asdict(self.train_config),
            "loss_tiers": self.tiers.as_dict(),
            "training": self.training,
        }

    @classmethod
    def load(
        cls, directory: Path, entry: dict[str, Any], model: ModelShape, device: str = "auto"
    ) -> PreAttentionPredictor:
        """The predictor described by manifest ``entry`` of predictor directory ``directory``."""
        path = directory / entry["file"]
        if not path.exists():
            raise InputError(path, "missing predictor weights listed in predictors.json")
        predictor = cls(TrainConfig(**entry["config"]), RankTiers(**_tiers_args(entry["loss_tiers"])), device)
        config = predictor.train_config
        net = StackedPredictorNet(
            config.arch, model.num_moe_layers, model.hidden_size, config.hidden_size, model.num_experts
        )
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, EOFError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(path, f"cannot load predictor weights ({first})") from None
        predictor.net = net.to(predictor.device).eval()
        predictor.training = entry.get("training", {})
        return predictor


def _tiers_args(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "weights": tuple(doc["weights"])}


def read_manifest(directory: Path) -> dict[str, Any]:
    """The predictor directory's manifest; InputError when it is missing or not ours."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise InputError(directory, f"no {MANIFEST}: not a predictor directory (run 'predictor train')")
    return read_versioned_json(path, MANIFEST_FORMAT, MANIFEST_VERSION)


def write_manifest(directory: Path, doc: dict[str, Any]) -> None:
    body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **doc}
    write_text_atomic(Path(directory) / MANIFEST, json.dumps(body, indent=1, sort_keys=True))


def load_predictors(
    directory: Path, model: ModelShape, device: str = "auto"
) -> tuple[list[PreAttentionPredictor], dict[str, Any]]:
    """Every predictor saved in ``directory`` for ``model``, and the manifest."""
    doc = read_manifest(directory)
    saved = ModelShape(**doc["model"])
    if saved != model:
        raise InputError(
            Path(directory) / MANIFEST,
            f"predictors were trained for model {saved.name!r} ({saved.num_experts} experts, layers "
            f"{list(saved.moe_layers)}), not for {model.name!r}",
        )
    predictors = [PreAttentionPredictor.load(Path(directory), e, model, device) for e in doc["predictors"]]
    return predictors, doc
