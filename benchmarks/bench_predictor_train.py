"""Benchmark: training time of the stacked pre-attention predictors for one model.

Target (issue 4 / the GPU pipeline): every MoE layer of a reference model (8-16 layers, ~100k-200k
training tokens, d = 512-1024, E up to 128), Arch 1, Arch 2 and the linear ablation, in well under two
minutes per model on an H200. Builds random inputs and router logits of that size directly on the
device (no activation store: this measures training, not disk), then trains each architecture for a
fixed number of epochs with early stopping disabled, and prints seconds per epoch and the time that
``--full-epochs`` epochs would take.

    python benchmarks/bench_predictor_train.py [--layers 16] [--tokens 115000] [--hidden-size 1024]
        [--experts 128] [--top-k 8] [--epochs 3] [--full-epochs 30] [--device auto] [--archs 1,2,linear]

Random labels cannot be learned, so the loss numbers printed mean nothing; only the times do.
"""

from __future__ import annotations

import argparse
import time

import torch

from predictor.loss import RankTiers, top_order, true_ranks
from predictor.train import StackedData, TrainConfig, input_dtype, resolve_device, train_stacked


def random_data(layers: int, tokens: int, d: int, num_experts: int, top_k: int, tiers: RankTiers, device):
    generator = torch.Generator(device="cpu").manual_seed(0)
    xs, ranks, orders = [], [], []
    for _ in range(layers):
        logits = torch.randn(tokens, num_experts, generator=generator).to(device)
        rank = true_ranks(logits.topk(top_k, dim=1).indices, logits)
        xs.append(torch.randn(tokens, d, generator=generator).to(device, input_dtype(device)))
        ranks.append(rank)
        orders.append(top_order(rank, tiers.hinge_top))
    return StackedData(torch.stack(xs), torch.stack(ranks), torch.stack(orders))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16, help="MoE layers")
    parser.add_argument("--tokens", type=int, default=115_000, help="training tokens")
    parser.add_argument("--val-tokens", type=int, default=16_000)
    parser.add_argument("--hidden-size", type=int, default=1024, help="model hidden size d")
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--predictor-hidden", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed")
    parser.add_argument("--full-epochs", type=int, default=30, help="epochs to extrapolate to")
    parser.add_argument("--archs", default="1,2,linear")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    tiers = RankTiers.relative(args.top_k, args.experts)
    started = time.perf_counter()
    train = random_data(args.layers, args.tokens, args.hidden_size, args.experts, args.top_k, tiers, device)
    val = random_data(args.layers, args.val_tokens, args.hidden_size, args.experts, args.top_k, tiers, device)
    print(
        f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
        f"torch {torch.__version__}; L={args.layers} N={args.tokens} d={args.hidden_size} E={args.experts} "
        f"k={args.top_k} h={args.predictor_hidden} batch={args.batch_size}; data built in "
        f"{time.perf_counter() - started:.1f} s"
    )
    # warm-up: lazy imports, CUDA context and kernel selection are not part of the per-epoch cost
    tiny = StackedData(train.x[:, :2048], train.ranks[:, :2048], train.hinge_order[:, :2048])
    for arch in args.archs.split(","):
        warm = TrainConfig(arch=arch, hidden_size=args.predictor_hidden, epochs=1, batch_size=args.batch_size)
        train_stacked(tiny, tiny, args.experts, args.top_k, tiers, warm, progress=False)
    total = 0.0
    for arch in args.archs.split(","):
        config = TrainConfig(
            arch=arch,
            hidden_size=args.predictor_hidden,
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=args.epochs + 1,
        )
        result = train_stacked(train, val, args.experts, args.top_k, tiers, config, progress=False)
        per_epoch = result.seconds / max(1, result.epochs_run)
        total += per_epoch * args.full_epochs
        print(
            f"arch {arch:6s}: {result.seconds:6.1f} s for {result.epochs_run} epochs = "
            f"{per_epoch:.2f} s/epoch -> {per_epoch * args.full_epochs:6.1f} s for {args.full_epochs} epochs"
        )
    print(f"all archs, {args.full_epochs} epochs each (no early stop): {total:.1f} s")


if __name__ == "__main__":
    main()
