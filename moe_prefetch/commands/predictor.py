"""``moe-prefetch predictor``: train the pre-attention expert predictors and score every predictor.

``train`` fits the paper's predictor (one small network per MoE layer, all layers trained together) on
the training split of an activation store and saves it into a predictor directory. ``evaluate`` scores
the trained predictors and the baselines (cross-layer/FATE, previous-token, frequency, oracle, random)
on one split, writes the accuracy tables, and writes a trace restricted to that split with the ranked
predictions as ``pred.<name>`` columns. Splits are by sequence, deterministic from the sequence id.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

from moe_prefetch.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from predictor.splits import SPLITS, SplitFractions
from traces.fileio import InputError

TRACE_PREDICTORS_DEFAULT = "pre-attention,cross-layer,previous-token,frequency,oracle"
SCORED_PREDICTORS_DEFAULT = "pre-attention"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predictor", help="train expert predictors and score them against baselines", description=__doc__
    )
    actions = parser.add_subparsers(dest="predictor_command", metavar="ACTION", required=True)
    _register_train(actions)
    _register_evaluate(actions)


def _split_fractions(text: str) -> SplitFractions:
    try:
        train, val, test = (float(x) for x in text.split(","))
        return SplitFractions(train, val, test)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST fractions summing to 1 ({exc})") from None


def _register_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "train",
        help="train the pre-attention predictor(s) on an activation store",
        description="Train the paper's pre-attention predictor for every MoE layer of the store's model "
        "on its training split, early-stopping each layer on the validation split, and save the weights "
        "(float32 .pt, not for git) with a predictors.json manifest into --out. Uses the GPU when there "
        "is one (--device auto).",
    )
    p.add_argument(
        "--activations", required=True, type=Path, metavar="DIR", help="activation store directory"
    )
    p.add_argument("--out", required=True, type=Path, metavar="PRED_DIR", help="predictor directory to write")
    p.add_argument(
        "--arch",
        choices=("1", "2", "linear", "all"),
        default="1",
        help="1: Linear-BatchNorm-GELU-Dropout-Linear (the paper's headline); 2: Linear-SiLU-Linear; "
        "linear: one Linear layer (ablation); all: the three (default: 1)",
    )
    p.add_argument(
        "--hidden", type=positive_int, default=2048, help="hidden width of archs 1 and 2 (default: 2048)"
    )
    p.add_argument("--epochs", type=positive_int, default=30, help="maximum epochs (default: 30)")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="tokens per step (default: 1024)")
    p.add_argument(
        "--lr", type=positive_float, default=1e-3, help="AdamW learning rate, cosine-decayed (default: 1e-3)"
    )
    p.add_argument(
        "--weight-decay", type=non_negative_float, default=0.01, help="AdamW weight decay (default: 0.01)"
    )
    p.add_argument(
        "--patience", type=positive_int, default=5, help="epochs without validation gain before a layer stops"
    )
    p.add_argument(
        "--loss-tiers",
        choices=("relative", "paper"),
        default="relative",
        help="rank tiers of the loss: relative to k and E (default) or the paper's fixed 10/30",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order (default: 0)")
    p.add_argument(
        "--split-fractions",
        type=_split_fractions,
        default=SplitFractions(),
        metavar="TRAIN,VAL,TEST",
        help="fractions of sequences per split (default: 0.7,0.1,0.2); evaluate reuses them",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_train)


def _register_evaluate(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "evaluate",
        help="score every predictor on a split; write accuracy tables and a trace with predictions",
        description="Score the trained pre-attention predictor(s) and the baselines (cross-layer/FATE, "
        "previous-token, frequency, oracle, random) on one split of the activation store, write the "
        "accuracy tables (accuracy.csv, accuracy.parquet, accuracy_<model>.md) into --table, and, with "
        "--trace, write that trace restricted to the split's sequences with pred.<name> columns to --out.",
    )
    p.add_argument(
        "--activations", required=True, type=Path, metavar="DIR", help="activation store directory"
    )
    p.add_argument(
        "--predictors", required=True, type=Path, metavar="PRED_DIR", help="from 'predictor train'"
    )
    p.add_argument("--trace", type=Path, metavar="IN.parquet", help="trace of the same collection run")
    p.add_argument("--out", type=Path, metavar="OUT.parquet", help="trace to write (needs --trace)")
    p.add_argument("--table", required=True, type=Path, metavar="TABLE_DIR", help="directory for the tables")
    p.add_argument("--split", choices=SPLITS, default="test", help="split to score (default: test)")
    p.add_argument(
        "--m",
        type=non_negative_int,
        default=0,
        help="width of the ranked lists written into the trace; 0 = the paper's over-provisioning k' "
        "for the model's top-k (3 of 2, 10 of 6, 12 of 8, else ceil(1.5 k))",
    )
    p.add_argument(
        "--k-prime",
        type=positive_int,
        action="append",
        default=[],
        help="extra over-provisioning width to report",
    )
    p.add_argument(
        "--trace-predictors",
        default=TRACE_PREDICTORS_DEFAULT,
        help=f"predictors written into the trace, comma-separated (default: {TRACE_PREDICTORS_DEFAULT})",
    )
    p.add_argument(
        "--trace-scores",
        default=SCORED_PREDICTORS_DEFAULT,
        help=f"predictors whose scores also go in as conf.<name> (default: {SCORED_PREDICTORS_DEFAULT})",
    )
    p.add_argument(
        "--frequency-window",
        type=positive_int,
        default=32,
        help="tokens in the frequency window (default: 32)",
    )
    p.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=1000,
        help="bootstrap resamples of sequences (default: 1000)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the random predictor and the bootstrap")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_evaluate)


# ---------------------------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    import torch

    from predictor.data import split_view
    from predictor.loss import RankTiers
    from predictor.preattention import MANIFEST, PreAttentionPredictor, read_manifest, write_manifest
    from predictor.stacked import ARCHS
    from predictor.train import TrainConfig, prepare_data, resolve_device
    from traces.activations import ActivationStore, layer_name

    store = ActivationStore(args.activations)
    model = store.model
    fractions: SplitFractions = args.split_fractions
    train_view = split_view(store, "train", fractions)
    val_view = split_view(store, "val", fractions)
    for name, view in (("train", train_view), ("val", val_view)):
        if view.num_tokens == 0:
            raise InputError(args.activations, f"the {name} split has no tokens (too few sequences?)")
    device = resolve_device(args.device)
    tiers = RankTiers.named(args.loss_tiers, model.top_k, model.num_experts)
    started = time.perf_counter()
    train_data = prepare_data(train_view, tiers, device)
    val_data = prepare_data(val_view, tiers, device)
    load_s = time.perf_counter() - started
    print(
        f"{model.name}: {train_view.num_tokens} train / {val_view.num_tokens} val tokens, "
        f"{model.num_moe_layers} MoE layers, d={model.hidden_size}, E={model.num_experts}, k={model.top_k}; "
        f"loaded onto {device} in {load_s:.1f} s"
    )
    full_ranking = all(store.has(layer_name(layer, "logits")) for layer in model.moe_layers)
    if not full_ranking:
        print(
            "warning: the store has no router logits, so the loss knows the router's ranking only inside "
            "the top-k (tiers beyond k and the hinge pairs beyond k are lost); collect with --logits for "
            "the paper's loss"
        )
    archs = ARCHS if args.arch == "all" else (args.arch,)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for arch in archs:
        config = TrainConfig(
            arch=arch,
            hidden_size=args.hidden,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            patience=args.patience,
            seed=args.seed,
        )
        predictor = PreAttentionPredictor(config, tiers, str(device), progress=not args.quiet)
        result = predictor.fit_prepared(train_data, val_data, model)
        entries.append(predictor.save(out))
        exact = result.best_val_exact_match
        print(
            f"  {predictor.name}: val exact match mean {sum(exact) / len(exact):.4f} "
            f"(min {min(exact):.4f}), {result.epochs_run} epochs, {result.seconds:.1f} s"
        )
    doc = {
        "model": dataclasses.asdict(model) | {"moe_layers": list(model.moe_layers)},
        "activations": str(args.activations),
        "activations_provenance": dataclasses.asdict(store.provenance),
        "split_fractions": dataclasses.asdict(fractions),
        "loss_tiers": args.loss_tiers,
        "labels": "full router ranking (logits)"
        if full_ranking
        else "router top-k only (no logits in store)",
        "device": str(device),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
        "predictors": entries,
    }
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        same_data = old.get("model") == doc["model"] and old.get("split_fractions") == doc["split_fractions"]
        if same_data:
            names = {e["name"] for e in entries}
            doc["predictors"] = [e for e in old["predictors"] if e["name"] not in names] + entries
    write_manifest(out, doc)
    print(f"wrote {len(entries)} predictor(s) to {out} in {time.perf_counter() - started:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate


def _evaluate(args: argparse.Namespace) -> int:
    from predictor.baselines import (
        CrossLayerPredictor,
        FrequencyPredictor,
        OraclePredictor,
        PreviousTokenPredictor,
        RandomPredictor,
    )
    from predictor.data import split_view
    from predictor.evaluate import (
        EvaluationSettings,
        attach_to_trace,
        default_k_primes,
        evaluate_predictors,
        headline_metrics,
    )
    from predictor.metrics import paper_overprovision
    from predictor.preattention import load_predictors
    from predictor.tables import write_tables
    from traces.activations import ActivationStore
    from traces.schema import PredictorInfo
    from traces.trace import read_trace, write_trace

    if (args.trace is None) != (args.out is None):
        raise InputError(args.trace or args.out, "--trace and --out go together")
    store = ActivationStore(args.activations)
    model = store.model
    learned, manifest = load_predictors(args.predictors, model, args.device)
    fractions = SplitFractions(**manifest["split_fractions"])
    view = split_view(store, args.split, fractions)
    if view.num_tokens == 0:
        raise InputError(args.activations, f"the {args.split} split has no tokens")
    train_view = split_view(store, "train", fractions)
    frequency = FrequencyPredictor(args.frequency_window)
    frequency.fit(train_view)
    baselines = [CrossLayerPredictor()]
    if model.moe_layers[0] == 0:  # otherwise the first MoE layer has a previous layer and both agree
        baselines.append(CrossLayerPredictor(embed_at_first_layer=True))
    baselines += [PreviousTokenPredictor(), frequency, OraclePredictor(), RandomPredictor(args.seed)]
    predictors = [*learned, *baselines]
    wanted = _names(args.trace_predictors)
    scored = _names(args.trace_scores)
    if args.trace is not None:  # before the scoring, which takes minutes on a real store
        have = sorted(p.name for p in predictors)
        for flag, names in (("--trace-predictors", wanted), ("--trace-scores", scored)):
            unknown = sorted(set(names) - set(have))
            if unknown:
                raise InputError(args.predictors, f"{flag}: no predictor named {unknown} (have {have})")

    k_prime = paper_overprovision(model.top_k, model.num_experts)
    m = args.m or k_prime
    if not model.top_k <= m <= model.num_experts:
        raise InputError(args.activations, f"--m {m} outside [top_k={model.top_k}, E={model.num_experts}]")
    settings = EvaluationSettings(
        default_k_primes(model.top_k, model.num_experts, args.k_prime),
        num_resamples=args.bootstrap,
        seed=args.seed,
    )
    rows, kept = evaluate_predictors(view, predictors, settings, m, progress=not args.quiet)
    sequences = len(set(view.seq_id.tolist()))
    heading = (
        f"Split `{args.split}` ({view.num_tokens} tokens, {sequences} sequences) of the activation store "
        f"`{args.activations}` (origin: {store.provenance.origin}; {store.provenance.source}); predictors "
        f"from `{args.predictors}`, trained on the `train` split."
    )
    if store.provenance.origin == "synthetic":
        heading += "\n\n**Synthetic activations: a check of the tooling, not a finding.**"
    provenance = {
        "origin": store.provenance.origin,
        "source": store.provenance.source,
        "activations": str(args.activations),
        "predictors": str(args.predictors),
        "split": args.split,
        "num_tokens": view.num_tokens,
        "num_sequences": sequences,
    }
    for path in write_tables(args.table, rows, model, k_prime, heading, provenance):
        print(f"wrote {path}")
    for p in predictors:
        h = headline_metrics(rows, p.name, model.moe_layers[0], k_prime)["first_moe_layer"]
        print(
            f"  {p.name:22s} first MoE layer: exact {_fmt(h.get('exact_match'))}  "
            f"hit@{k_prime} {_fmt(h.get(f'overprovision_hit@{k_prime}'))}  top-1 {_fmt(h.get('top1'))}  "
            f"coverage {_fmt(h.get('coverage'))}"
        )
    if args.trace is None:
        return 0
    infos = {}
    for p in predictors:
        if p.name not in wanted:
            continue
        trained_on = p.kind == "learned" or p.name == "frequency"
        infos[p.name] = PredictorInfo(
            name=p.name,
            kind=p.kind,
            training_data=(
                f"{store.provenance.origin} activations of {model.name} ({args.activations}), split train "
                f"({train_view.num_tokens} tokens)"
                if trained_on
                else ""
            ),
            metrics={"split": args.split, "num_tokens": view.num_tokens, "k_prime": k_prime}
            | headline_metrics(rows, p.name, model.moe_layers[0], k_prime),
            config=p.config() | {"m": m},
        )
    trace = read_trace(args.trace)
    out = attach_to_trace(trace, view, {n: kept[n] for n in wanted}, infos, scored, args.trace)
    write_trace(out, args.out)
    print(f"wrote {args.out}: {out.num_tokens} tokens x {out.num_layers} MoE layers, predictions {wanted}")
    return 0


def _names(text: str) -> list[str]:
    """The names of a comma-separated list option, blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _fmt(value: float | None) -> str:
    return "   –   " if value is None else f"{100 * value:6.2f}%"
