"""``moe-prefetch collect``: record routing (and optionally activations) of a transformers MoE model.

Runs teacher-forced forward passes over a split of a corpus bundle and writes a v1 trace with the top-k
experts and weights of every MoE layer (dense layers are skipped). With ``--activations`` it also writes
an activation store (embedding output, every layer's input_layernorm and post_attention_layernorm
outputs, router top-k) for predictor training, streamed to disk in shards.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_prefetch.argtypes import int_in_range, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="record routing traces (and activations) of an MoE model over a corpus split",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR_OR_CONFIG",
        help="checkpoint directory (config.json + weights), or a config.json (random weights, labelled "
        "synthetic)",
    )
    parser.add_argument(
        "--corpus", required=True, type=Path, metavar="BUNDLE", help="corpus bundle (.tar.xz)"
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "validation", "test"),
        help="corpus split (default: test)",
    )
    parser.add_argument("--out", required=True, type=Path, help="trace file to write (.parquet)")
    parser.add_argument("--activations", type=Path, metavar="DIR", help="also write an activation store here")
    parser.add_argument("--logits", action="store_true", help="keep all router logits (trace and store)")
    parser.add_argument(
        "--max-tokens", type=positive_int, help="stop after this many tokens (default: whole split)"
    )
    parser.add_argument(
        "--seq-len", type=int_in_range(2), default=512, help="tokens per sequence (default: 512)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="sequences per forward pass (default: 16)"
    )
    parser.add_argument("--shard-tokens", type=positive_int, default=16384, help="rows per activation shard")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from traces.collect import collect, load_model, make_provenance, resolve_device
    from traces.corpus import CorpusBundle
    from traces.fileio import InputError
    from traces.trace import write_trace

    device = resolve_device(args.device)
    bundle = CorpusBundle(args.corpus)
    loaded = load_model(args.model, device)
    vocab = loaded.model.config.vocab_size
    if bundle.vocab_size > vocab:
        raise InputError(args.corpus, f"tokenizer has {bundle.vocab_size} tokens, the model only {vocab}")
    sequences = bundle.sequences(args.split, args.seq_len, args.max_tokens)
    provenance = make_provenance(loaded, device, bundle.describe(args.split))
    with tqdm(total=sequences.size, unit="tok", desc="collect", unit_scale=True) as bar:
        trace = collect(
            loaded,
            sequences,
            provenance,
            device,
            batch_size=args.batch_size,
            activations_dir=args.activations,
            keep_logits=args.logits,
            shard_tokens=args.shard_tokens,
            progress=bar.update,
        )
    write_trace(trace, args.out)
    print(
        f"{args.out}: {trace.num_tokens} tokens x {trace.num_layers} MoE layers, origin "
        f"{provenance.origin}" + (f"; activations in {args.activations}" if args.activations else "")
    )
    return 0
