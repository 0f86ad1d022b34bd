"""The paper's predictor networks for all MoE layers of a model at once, as one stacked torch module.

Each MoE layer has its own small network; stacking their weights ([L, d, h] tensors, batched matmuls)
trains and evaluates every layer in one kernel per matmul instead of L small ones. Layer ``j`` of the
stack is exactly the per-layer network of the paper:

- arch "1": Linear(d->h) -> BatchNorm1d(h) -> GELU -> Dropout(0.1) -> Linear(h->E)
- arch "2": Linear(d->h) -> SiLU -> Linear(h->E)
- arch "linear": Linear(d->E) (the ablation: is the hidden layer needed?)

BatchNorm is per layer and per feature: a BatchNorm1d over L*h features of the [B, L*h] activation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ARCHS = ("1", "2", "linear")
#: Predictor name (table row, trace column ``pred.<name>``) of each architecture.
ARCH_PREDICTOR_NAMES = {"1": "pre-attention", "2": "pre-attention-arch2", "linear": "pre-attention-linear"}


def _uniform_like_linear(tensor: torch.Tensor, fan_in: int) -> None:
    """The default init of ``nn.Linear`` (uniform in +-1/sqrt(fan_in)) for weights and biases alike."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(tensor, -bound, bound)


class StackedPredictorNet(nn.Module):
    """L independent per-layer predictors evaluated together: ``[L, B, d] -> [L, B, E]`` logits."""

    def __init__(
        self,
        arch: str,
        num_layers: int,
        input_size: int,
        hidden_size: int,
        num_experts: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown predictor architecture {arch!r}; expected one of {ARCHS}")
        self.arch = arch
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        first_out = num_experts if arch == "linear" else hidden_size
        self.w1 = nn.Parameter(torch.empty(num_layers, input_size, first_out))
        self.b1 = nn.Parameter(torch.empty(num_layers, 1, first_out))
        for p in (self.w1, self.b1):
            _uniform_like_linear(p, input_size)
        if arch != "linear":
            self.w2 = nn.Parameter(torch.empty(num_layers, hidden_size, num_experts))
            self.b2 = nn.Parameter(torch.empty(num_layers, 1, num_experts))
            for p in (self.w2, self.b2):
                _uniform_like_linear(p, hidden_size)
        self.norm = nn.BatchNorm1d(num_layers * hidden_size) if arch == "1" else None
        self.dropout = nn.Dropout(dropout) if arch == "1" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.baddbmm(self.b1, x, self.w1)
        if self.arch == "linear":
            return h
        if self.norm is not None:
            num_layers, batch, hidden = h.shape
            flat = h.permute(1, 0, 2).reshape(batch, num_layers * hidden)
            h = self.norm(flat).reshape(batch, num_layers, hidden).permute(1, 0, 2)
            h = self.dropout(F.gelu(h))
        else:
            h = F.silu(h)
        return torch.baddbmm(self.b2, h, self.w2)

    def per_layer_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and running statistic as a view with the layer as its first axis."""
        tensors: dict[str, torch.Tensor] = {name: p.data for name, p in self.named_parameters()}
        if self.norm is not None:
            for name in ("weight", "bias"):
                tensors[f"norm.{name}"] = getattr(self.norm, name).data.view(self.num_layers, -1)
            tensors["norm.running_mean"] = self.norm.running_mean.view(self.num_layers, -1)
            tensors["norm.running_var"] = self.norm.running_var.view(self.num_layers, -1)
        return tensors
