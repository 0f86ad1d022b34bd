"""Training the stacked pre-attention predictors: AdamW, large batches, data resident on the device,
early stopping per layer on the validation split.

All MoE layers of a model train together (``StackedPredictorNet``); every layer keeps the state of its
own best validation epoch, and a layer whose validation loss has not improved for ``patience`` epochs
stops contributing gradient. Training ends when every layer has stopped or after ``epochs`` epochs.
On CUDA the matmuls run under bf16 autocast (the loss is computed in float32; remaining float32 matmuls
may use TF32); on CPU everything is float32.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from predictor.data import ActivationView, layer_name
from predictor.loss import RankTiers, ranking_aware_loss, top_order, true_ranks, true_ranks_from_topk
from predictor.stacked import StackedPredictorNet
from traces.collect import resolve_device as resolve_device  # one --device rule for every command


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (recorded with the saved predictor)."""

    arch: str = "1"
    hidden_size: int = 2048
    epochs: int = 30
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 5
    dropout: float = 0.1
    seed: int = 0


@dataclass
class StackedData:
    """Inputs and labels of all MoE layers, on the device: ``x`` [L, N, d], ``ranks`` int16 [L, N, E],
    ``hinge_order`` int16 [L, N, t] (experts at true ranks 0..t-1, -1 unknown)."""

    x: torch.Tensor
    ranks: torch.Tensor
    hinge_order: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.x.shape[1])


def input_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (autocast consumes it directly), float32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def prepare_data(view: ActivationView, tiers: RankTiers, device: torch.device) -> StackedData:
    """Load every MoE layer's pre-attention input and true ranking of ``view`` onto ``device``."""
    num_experts = view.model.num_experts
    xs, ranks, orders = [], [], []
    for layer in view.moe_layers:
        topk = torch.from_numpy(view.topk(layer)).to(device)
        logits = view.logits(layer)
        if logits is not None:
            rank = true_ranks(topk, torch.from_numpy(logits).to(device))
        else:
            rank = true_ranks_from_topk(topk, num_experts)
        xs.append(torch.from_numpy(view.load(layer_name(layer, "preattn"))).to(device, input_dtype(device)))
        ranks.append(rank)
        orders.append(top_order(rank, tiers.hinge_top))
    return StackedData(torch.stack(xs), torch.stack(ranks), torch.stack(orders))


@dataclass
class TrainResult:
    """The trained network (best state per layer) and what happened on the way."""

    net: StackedPredictorNet
    best_epoch: list[int]
    best_val_loss: list[float]
    best_val_exact_match: list[float]
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "net"} | {"history": self.history}


def _batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    order = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def stacked_logits(net: StackedPredictorNet, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Logits [L, N, E] (float32) of ``net`` in eval mode, computed in token chunks."""
    net.eval()
    chunks = []
    for start in range(0, x.shape[1], batch_size):
        with _autocast(x.device):
            chunks.append(net(x[:, start : start + batch_size]).float())
    return torch.cat(chunks, dim=1)


@torch.no_grad()
def validate(
    net: StackedPredictorNet, data: StackedData, top_k: int, tiers: RankTiers, batch_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer validation loss and exact-match rate, both [L]."""
    net.eval()
    num_layers, n = data.x.shape[0], data.num_tokens
    loss_sum = torch.zeros(num_layers, device=data.x.device)
    exact_sum = torch.zeros(num_layers, device=data.x.device)
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        with _autocast(data.x.device):
            scores = net(data.x[:, rows]).float()
        ranks = data.ranks[:, rows].long()
        loss = ranking_aware_loss(scores, ranks, data.hinge_order[:, rows], top_k, tiers)
        picked = scores.topk(top_k, dim=-1).indices
        exact = (torch.gather(ranks, -1, picked) < top_k).all(dim=-1).float()
        width = ranks.shape[1]
        loss_sum += loss * width
        exact_sum += exact.sum(dim=1)
    return loss_sum / n, exact_sum / n


def train_stacked(
    train: StackedData,
    val: StackedData,
    num_experts: int,
    top_k: int,
    tiers: RankTiers,
    config: TrainConfig,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train one stacked network on ``train``, early-stopping each layer on ``val``."""
    started = time.perf_counter()
    device = train.x.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    num_layers, n, input_size = train.x.shape
    net = StackedPredictorNet(
        config.arch, num_layers, input_size, config.hidden_size, num_experts, config.dropout
    ).to(device)
    optimizer = torch.optim.AdamW(
        net.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda",  # one kernel for all parameters: steps are launch-bound
    )
    steps_per_epoch = -(-n // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.epochs * steps_per_epoch)
    )

    best_loss = torch.full((num_layers,), float("inf"), device=device)
    best_exact = torch.zeros(num_layers, device=device)
    best_epoch = [0] * num_layers
    stale = torch.zeros(num_layers, dtype=torch.long, device=device)
    best_state = {name: t.clone() for name, t in net.per_layer_tensors().items()}
    history: list[dict[str, Any]] = []
    epochs_run = 0
    bar = tqdm(range(config.epochs), desc=description, disable=not progress, unit="epoch", leave=False)
    for epoch in bar:
        active = (stale < config.patience).float()
        if active.sum() == 0:
            break
        net.train()
        train_loss = torch.zeros(num_layers, device=device)
        for index in _batches(n, config.batch_size, generator, device):
            with _autocast(device):
                scores = net(train.x[:, index])
            loss = ranking_aware_loss(
                scores, train.ranks[:, index], train.hinge_order[:, index], top_k, tiers
            )
            optimizer.zero_grad(set_to_none=True)
            (loss * active).sum().backward()
            optimizer.step()
            scheduler.step()
            train_loss += loss.detach() * len(index)
        val_loss, val_exact = validate(net, val, top_k, tiers)
        improved = (val_loss < best_loss) & (active > 0)
        for name, tensor in net.per_layer_tensors().items():
            best_state[name][improved] = tensor[improved]
        best_loss = torch.where(improved, val_loss, best_loss)
        best_exact = torch.where(improved, val_exact, best_exact)
        stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
        for j in improved.nonzero().flatten().tolist():
            best_epoch[j] = epoch + 1
        epochs_run = epoch + 1
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": (train_loss / n).tolist(),
                "val_loss": val_loss.tolist(),
                "val_exact_match": val_exact.tolist(),
                "active_layers": int(active.sum().item()),
            }
        )
        bar.set_postfix(val_loss=f"{val_loss.mean().item():.4f}", val_exact=f"{val_exact.mean().item():.3f}")
    with torch.no_grad():
        for name, tensor in net.per_layer_tensors().items():
            tensor.copy_(best_state[name])
    net.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TrainResult(
        net=net,
        best_epoch=best_epoch,
        best_val_loss=best_loss.tolist(),
        best_val_exact_match=best_exact.tolist(),
        epochs_run=epochs_run,
        seconds=time.perf_counter() - started,
        history=history,
    )
