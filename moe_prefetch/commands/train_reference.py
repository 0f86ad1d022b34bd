"""``moe-prefetch train-reference``: train one of the project's reference MoE models from scratch.

Recipes mirror the routing geometry of public models at small scale (see traces/refmodels.py):
deepseek-v2-lite-like (first layer dense, 64 experts top-6 + 2 shared), qwen3-30b-a3b-like (128 experts
top-8) and phi-mini-moe-like (16 experts top-2). Training runs for a wall-clock budget on the corpus's
train split; the checkpoint directory gets the weights plus moe_prefetch_recipe.json (sizes, tokens seen,
minutes, seed, validation loss against a unigram baseline, router balance per layer), which the collector
copies into every trace's provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moe_prefetch.argtypes import positive_float, positive_int
from traces.refmodels import RECIPES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-reference",
        help="train a reference MoE model from scratch on a corpus bundle (GPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    parser.add_argument(
        "--corpus", required=True, type=Path, metavar="BUNDLE", help="corpus bundle (.tar.xz)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="checkpoint directory to write"
    )
    parser.add_argument(
        "--minutes", type=positive_float, default=4.0, help="training wall-clock budget (default: 4)"
    )
    parser.add_argument(
        "--max-steps", type=positive_int, help="fixed number of steps instead of the time budget"
    )
    parser.add_argument(
        "--eval-tokens", type=positive_int, default=131072, help="validation tokens (default: 131072)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--smoke", action="store_true", help="tiny widths for a CPU check of the pipeline")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import math

    from traces.collect import resolve_device
    from traces.corpus import CorpusBundle
    from traces.refmodels import TrainingDiverged, evaluate, save, train

    device = str(resolve_device(args.device))
    bundle = CorpusBundle(args.corpus)
    recipe = RECIPES[args.recipe]
    try:
        result = train(recipe, bundle, device, args.minutes, smoke=args.smoke, max_steps=args.max_steps)
    except TrainingDiverged as exc:
        print(f"moe-prefetch: error: training diverged ({exc}); nothing saved", file=sys.stderr)
        return 1
    seq_len = result.report["seq_len"]
    quality = evaluate(result.model, bundle, device, args.eval_tokens, seq_len=seq_len)
    if not math.isfinite(quality["validation_loss"]):
        print("moe-prefetch: error: validation loss is not finite; nothing saved", file=sys.stderr)
        return 1
    save(result, quality, args.out)
    summary = {k: v for k, v in quality.items() if k != "router_balance"}
    print(json.dumps({"checkpoint": str(args.out), **summary, "tokens_seen": result.report["tokens_seen"]}))
    return 0
