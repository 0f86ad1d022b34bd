"""``moe-prefetch corpus``: build the text bundle that reference models train on and traces are collected on.

``build`` reads real documents (kernel documentation, Python documentation, the Python standard library,
or your own files and folders), strips markup, splits them by document into train/validation/test (by a
hash of each document's name), trains a byte-level BPE tokenizer on the train split and writes one
compressed bundle. ``info`` prints a bundle's manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moe_prefetch.argtypes import fraction, int_in_range, non_negative_int
from traces.corpus import DEFAULT_SOURCES, NAMED_SOURCES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "corpus", help="build or inspect a tokenized text corpus bundle", description=__doc__
    )
    actions = parser.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="clean, split and tokenize documents into one bundle",
        description="Clean, split and tokenize documents into one .tar.xz bundle (keep it out of git).",
    )
    build.add_argument(
        "--source",
        action="append",
        metavar="NAME_OR_PATH",
        help=f"{', '.join(NAMED_SOURCES)} or a file/folder; repeatable "
        f"(default: {' '.join(DEFAULT_SOURCES)})",
    )
    build.add_argument("--out", required=True, type=Path, help="bundle to write (.tar.xz)")
    build.add_argument(
        "--vocab-size", type=int_in_range(257, 65535), default=16384, help="BPE vocabulary (default: 16384)"
    )
    build.add_argument("--validation-fraction", type=fraction, default=0.05, help="default: 0.05")
    build.add_argument("--test-fraction", type=fraction, default=0.05, help="default: 0.05")
    build.add_argument(
        "--min-chars", type=non_negative_int, default=200, help="skip shorter documents (default: 200)"
    )
    build.set_defaults(handler=_build)
    info = actions.add_parser(
        "info", help="print a bundle's manifest", description="Print a bundle's manifest."
    )
    info.add_argument("bundle", type=Path)
    info.set_defaults(handler=_info)


def _build(args: argparse.Namespace) -> int:
    from traces.corpus import build_bundle
    from traces.fileio import InputError

    if args.validation_fraction + args.test_fraction >= 1:
        raise InputError(args.out, "--validation-fraction and --test-fraction must sum below 1")
    manifest = build_bundle(
        args.source or DEFAULT_SOURCES,
        args.out,
        vocab_size=args.vocab_size,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        min_chars=args.min_chars,
    )
    sizes = ", ".join(
        f"{s} {v['tokens']:,} tokens / {v['documents']} docs" for s, v in manifest["splits"].items()
    )
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB; {sizes}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from traces.corpus import CorpusBundle

    bundle = CorpusBundle(args.bundle)
    print(json.dumps(bundle.manifest, indent=1, sort_keys=True))
    print(f"sha256 {bundle.sha256}")
    return 0
