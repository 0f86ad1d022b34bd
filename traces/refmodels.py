"""Reference MoE models: three routing geometries of the paper's models, trained from scratch on the corpus.

No pretrained MoE checkpoint can be downloaded here, so real routing comes from small models this project
trains itself with transformers' own classes (the collector then works unchanged on a real checkpoint):

- ``deepseek-v2-lite-like``: DeepSeek-V2 classes, first layer dense, 64 routed experts top-6 + 2 shared;
- ``qwen3-30b-a3b-like``: Qwen3-MoE classes, 128 experts top-8;
- ``phi-mini-moe-like``: PhiMoE classes, 16 experts top-2.

Training: bf16 model with fp32 master weights (AdamW), a Switch-style load-balancing loss computed from
every router's logits (the same for all three architectures; DeepSeek-V2's transformers class has none),
random windows of the corpus's train split, a wall-clock budget that sets the number of steps after a
short measurement, warm-up then cosine decay. Evaluation: validation cross-entropy next to a unigram
model fitted on the train split, and per-layer router load balance on the validation split.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Recipe file written next to the weights; the collector copies it into the trace's provenance.
RECIPE_FILE = "moe_prefetch_recipe.json"


@dataclass(frozen=True)
class Recipe:
    """A model geometry and its training settings. ``config`` holds transformers config fields."""

    name: str
    mirrors: str
    model_type: str
    config: dict[str, Any]
    batch_sequences: int = 64
    seq_len: int = 512
    peak_lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    aux_loss_coef: float = 0.02
    grad_clip: float = 1.0
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


_COMMON = dict(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    attention_dropout=0.0,
    tie_word_embeddings=False,
    initializer_range=0.02,
)

RECIPES: dict[str, Recipe] = {
    "deepseek-v2-lite-like": Recipe(
        name="deepseek-v2-lite-like",
        mirrors="DeepSeek-V2-Lite (27 layers, first dense, 64 routed experts top-6 + 2 shared, h 2048)",
        model_type="deepseek_v2",
        peak_lr=1e-3,  # 2e-3 diverged (NaN after ~180 steps) on the H200, 2026-11-28
        config=dict(
            _COMMON,
            num_key_value_heads=8,
            intermediate_size=1536,
            moe_intermediate_size=352,
            n_routed_experts=64,
            n_shared_experts=2,
            num_experts_per_tok=6,
            first_k_dense_replace=1,
            kv_lora_rank=128,
            q_lora_rank=None,
            qk_nope_head_dim=64,
            qk_rope_head_dim=32,
            v_head_dim=64,
            topk_method="greedy",
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
        ),
    ),
    "qwen3-30b-a3b-like": Recipe(
        name="qwen3-30b-a3b-like",
        mirrors="Qwen3-30B-A3B (48 layers, 128 experts top-8, h 2048, i 768)",
        model_type="qwen3_moe",
        config=dict(
            _COMMON,
            num_key_value_heads=4,
            head_dim=64,
            intermediate_size=1536,
            moe_intermediate_size=192,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        ),
    ),
    "phi-mini-moe-like": Recipe(
        name="phi-mini-moe-like",
        mirrors="Phi-mini-MoE / Phi-3.5-MoE routing (16 experts top-2, LayerNorm, sparsemixer router)",
        model_type="phimoe",
        config=dict(
            _COMMON,
            num_key_value_heads=4,
            intermediate_size=768,
            num_local_experts=16,
            num_experts_per_tok=2,
            router_jitter_noise=0.01,
            input_jitter_noise=0.0,
        ),
    ),
}

#: Tiny sizes for CPU smoke runs: the same routing geometry (experts, top-k, dense layers), tiny widths.
SMOKE_OVERRIDES = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=8,
    intermediate_size=48,
    moe_intermediate_size=16,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=8,
    max_position_embeddings=128,
)


def recipe_config(recipe: Recipe, vocab_size: int, eos_id: int, smoke: bool = False) -> dict[str, Any]:
    """The transformers config fields of ``recipe`` for a tokenizer of ``vocab_size`` tokens."""
    config = dict(recipe.config)
    if smoke:
        config.update({k: v for k, v in SMOKE_OVERRIDES.items() if k in config or k == "head_dim"})
        if recipe.model_type != "qwen3_moe":
            config.pop("head_dim", None)
    config.update(vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=eos_id, pad_token_id=eos_id)
    return config


def build_model(recipe: Recipe, vocab_size: int, eos_id: int, smoke: bool = False) -> Any:
    """A freshly initialised model of ``recipe`` (float32, CPU), seeded by the recipe's seed."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(recipe.model_type, **recipe_config(recipe, vocab_size, eos_id, smoke))
    torch.manual_seed(recipe.seed)
    return AutoModelForCausalLM.from_config(config)


# ---------------------------------------------------------------------------------------------- losses


class RouterTap:
    """Forward hooks on every router that keep this pass's (logits, top-k ids) for the balance loss."""

    def __init__(self, model: Any) -> None:
        from traces.architectures import decoder_layers

        self.outputs: dict[int, tuple[Any, Any]] = {}
        self._handles = [
            layer.router.register_forward_hook(self._capture(layer.index))
            for layer in decoder_layers(model)
            if layer.router is not None
        ]

    def _capture(self, index: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            self.outputs[index] = (output[0], output[2])

        return hook

    def take(self) -> dict[int, tuple[Any, Any]]:
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def load_balancing_loss(logits: Any, topk_ids: Any, num_experts: int) -> Any:
    """Switch-Transformer balance loss ``E * sum_e f_e * P_e`` (1.0 when perfectly balanced):
    ``f_e`` is the share of routed slots given to expert e, ``P_e`` its mean router probability."""
    import torch

    probs = torch.softmax(logits.float().reshape(-1, num_experts), dim=-1)
    counts = torch.bincount(topk_ids.reshape(-1), minlength=num_experts).float()
    share = counts / counts.sum()
    return num_experts * (share * probs.mean(dim=0)).sum()


def balance_stats(counts: np.ndarray) -> dict[str, float]:
    """Load balance of one layer from per-expert assignment counts."""
    share = counts / max(counts.sum(), 1)
    nonzero = share[share > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / math.log(len(counts)))
    mean = share.mean()
    return {
        "max_over_mean": float(share.max() / mean),
        "min_over_mean": float(share.min() / mean),
        "cv": float(share.std() / mean),
        "normalized_entropy": entropy,
        "unused_experts": int((counts == 0).sum()),
    }


def unigram_baseline(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of an add-one unigram model of the train split on ``eval_tokens``."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_tokens.astype(np.int64)].mean())


# ---------------------------------------------------------------------------------------------- training


#: Batches with a non-finite gradient that training tolerates (skipping them) before it gives up.
MAX_SKIPPED_STEPS = 20


class TrainingDiverged(RuntimeError):
    """Training produced non-finite gradients again and again: the recipe is unstable."""


@dataclass
class TrainResult:
    model: Any
    report: dict[str, Any]


def _lr_at(step: int, total: int, recipe: Recipe, warmup: int) -> float:
    if step < warmup:
        return recipe.peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return recipe.peak_lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def train(
    recipe: Recipe,
    bundle: Any,
    device: str,
    minutes: float,
    smoke: bool = False,
    max_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``recipe`` on ``bundle``'s train split for about ``minutes`` of wall-clock time."""
    import torch

    torch.manual_seed(recipe.seed)
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model = build_model(recipe, bundle.vocab_size, bundle.eos_id, smoke).to(dev, dtype)
    if dev.type == "cuda":
        _use_grouped_experts(model, log)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    master = [p.detach().float().clone() for p in params]
    decay = [m for m, p in zip(master, params, strict=True) if p.ndim >= 2]
    no_decay = [m for m, p in zip(master, params, strict=True) if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.peak_lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=dev.type == "cuda",
    )
    num_experts = model.config.to_dict().get("n_routed_experts") or _expert_count(model)
    tap = RouterTap(model)
    tokens = torch.as_tensor(bundle.tokens("train").astype(np.int64), device=dev)
    generator = torch.Generator(device=dev).manual_seed(recipe.seed)
    seq_len = min(recipe.seq_len, 64) if smoke else recipe.seq_len
    batch = min(recipe.batch_sequences, 4) if smoke else recipe.batch_sequences
    offsets = torch.arange(seq_len, device=dev)

    def sample() -> Any:
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch, 1), device=dev, generator=generator)
        return tokens[starts + offsets]

    budget_s = minutes * 60
    total_steps = max_steps or 10**9
    warmup = min(recipe.warmup_steps, max(1, total_steps // 10))
    losses: list[tuple[int, float, float]] = []
    skipped = 0
    start = time.perf_counter()
    measured_at = None
    step = 0
    while step < total_steps:
        if measured_at is None and step == 10:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            measured_at = (time.perf_counter(), step)
        if measured_at is not None and step == 30 and max_steps is None:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            step_s = (time.perf_counter() - measured_at[0]) / (step - measured_at[1])
            total_steps = max(step + 1, int((budget_s - (time.perf_counter() - start)) / step_s) + step)
            warmup = min(recipe.warmup_steps, max(1, total_steps // 10))
            log(f"{recipe.name}: {step_s * 1e3:.0f} ms/step, {batch * seq_len / step_s:,.0f} tokens/s "
                f"-> {total_steps} steps in {minutes} min")  # fmt: skip
        lr = _lr_at(step, total_steps, recipe, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        input_ids = sample()
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        routed = tap.take()
        aux = torch.stack([load_balancing_loss(lg, ids, num_experts) for lg, ids in routed.values()]).mean()
        loss = out.loss + recipe.aux_loss_coef * aux
        loss.backward()
        for p, m in zip(params, master, strict=True):
            m.grad = p.grad.float() if p.grad is not None else torch.zeros_like(m)
            p.grad = None
        grad_norm = torch.nn.utils.clip_grad_norm_(master, recipe.grad_clip)
        if torch.isfinite(grad_norm):
            optimizer.step()
            with torch.no_grad():
                torch._foreach_copy_(params, master)
        else:  # a non-finite gradient would poison the weights: drop this batch
            skipped += 1
            if skipped > MAX_SKIPPED_STEPS:
                raise TrainingDiverged(f"{recipe.name}: {skipped} non-finite gradients by step {step}")
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == total_steps - 1:
            losses.append((step, float(out.loss.detach()), float(aux.detach())))
            _, lm, balance = losses[-1]
            log(f"{recipe.name} step {step}/{total_steps} lm {lm:.3f} aux {balance:.3f} lr {lr:.2e}")
        step += 1
        if max_steps is None and time.perf_counter() - start > budget_s * 1.15:
            log(f"{recipe.name}: stopping at step {step}, over the time budget")
            break
    torch.cuda.synchronize() if dev.type == "cuda" else None
    train_s = time.perf_counter() - start
    tap.remove()
    model.eval()
    report = {
        "recipe": recipe.name,
        "mirrors": recipe.mirrors,
        "model_type": recipe.model_type,
        "smoke": smoke,
        "config": recipe_config(recipe, bundle.vocab_size, bundle.eos_id, smoke),
        "parameters": int(sum(p.numel() for p in params)),
        "seed": recipe.seed,
        "steps": step,
        "skipped_steps": skipped,
        "batch_sequences": batch,
        "seq_len": seq_len,
        "tokens_seen": int(step * batch * seq_len),
        "train_minutes": round(train_s / 60, 2),
        "tokens_per_s": round(step * batch * seq_len / train_s),
        "optimizer": f"AdamW(betas 0.9/0.95, wd {recipe.weight_decay}) fp32 master weights, bf16 model, "
        f"peak lr {recipe.peak_lr}, warmup {warmup}, cosine to {recipe.min_lr_ratio}",
        "aux_loss": f"Switch load balancing over all routers, coefficient {recipe.aux_loss_coef}",
        "loss_curve": losses,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})",
        "corpus": bundle.describe("train"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return TrainResult(model, report)


def _use_grouped_experts(model: Any, log: Callable[[str], None]) -> None:
    """Run experts with one grouped GEMM per projection (transformers' ``grouped_mm``) when available."""
    try:
        model.set_experts_implementation("grouped_mm")
        log(f"experts implementation: {model.get_experts_implementation()}")
    except (AttributeError, ValueError, NotImplementedError) as exc:
        log(f"experts implementation: default ({type(exc).__name__}: {exc})")


def _expert_count(model: Any) -> int:
    from traces.architectures import decoder_layers

    router = next(layer.router for layer in decoder_layers(model) if layer.router is not None)
    return int(router.weight.shape[0])


def evaluate(
    model: Any, bundle: Any, device: str, max_tokens: int, batch_sequences: int = 32, seq_len: int = 512
) -> dict[str, Any]:
    """Validation cross-entropy and perplexity, the unigram baseline, and router balance per MoE layer."""
    import torch

    dev = torch.device(device)
    sequences = bundle.sequences("validation", seq_len, max_tokens)
    num_experts = _expert_count(model)
    tap = RouterTap(model)
    counts: dict[int, np.ndarray] = {}
    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_sequences):
            ids = torch.as_tensor(sequences[start : start + batch_sequences], device=dev)
            out = model(input_ids=ids, labels=ids, use_cache=False)
            n = ids.shape[0] * (ids.shape[1] - 1)
            total_loss += float(out.loss) * n
            total_tokens += n
            for layer, (_logits, topk) in tap.take().items():
                c = torch.bincount(topk.reshape(-1), minlength=num_experts).cpu().numpy()
                counts[layer] = counts.get(layer, 0) + c
    tap.remove()
    loss = total_loss / total_tokens
    unigram = unigram_baseline(bundle.tokens("train"), sequences.reshape(-1), bundle.vocab_size)
    return {
        "validation_tokens": int(total_tokens),
        "validation_loss": round(loss, 4),
        "validation_perplexity": round(math.exp(loss), 2),
        "unigram_loss": round(unigram, 4),
        "unigram_perplexity": round(math.exp(unigram), 2),
        "router_balance": {str(layer): balance_stats(c) for layer, c in sorted(counts.items())},
    }


def save(result: TrainResult, quality: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Save weights (safetensors) and the recipe + quality report the collector puts into traces."""
    out = Path(out_dir)
    result.model.save_pretrained(out)
    report = {**result.report, "quality": quality}
    (out / RECIPE_FILE).write_text(json.dumps(report, indent=1))
    return out
