#!/usr/bin/env python3
"""The GPU pipeline: reference model -> trace + activations -> predictors -> small result files.

For each model named: train the reference recipe on the corpus bundle (``moe-prefetch train-reference``),
collect a trace and activations on the bundle's held-out test split (``moe-prefetch collect``), train and
evaluate the predictors (``moe-prefetch predictor train`` / ``evaluate``), and leave in ``--out`` only
small files: ``<model>.parquet`` (the test-split trace with predictor columns, written compactly) and
``<model>.results.tar.gz`` (accuracy tables, the recipe with quality numbers, the step log). Weights and
activations stay in ``--work``.

Every step runs the project's own CLI in a subprocess, exactly as a user would. ``--parallel`` runs the
models side by side (one process each, sharing the GPU). ``--smoke`` runs everything on the CPU with tiny
widths in about a minute: run it before every GPU call.

    python3 scripts/gpu_pipeline.py --bundle .bundle/corpus.tar.xz --out $OUT --train-minutes 4 --parallel
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from traces.fileio import atomic_write, write_text_atomic  # noqa: E402
from traces.refmodels import RECIPE_FILE, RECIPES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", required=True, type=Path, help="corpus bundle (.tar.xz)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the small result files")
    parser.add_argument("--work", type=Path, default=Path("/tmp/moe-prefetch-work"), help="scratch folder")
    parser.add_argument("--models", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--train-minutes", type=float, default=4.0, help="training budget per model")
    parser.add_argument(
        "--collect-tokens", type=int, default=163840, help="tokens of the test split to collect"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per collection forward pass")
    parser.add_argument("--predictor-args", default="--arch all", help="extra args of 'predictor train'")
    parser.add_argument(
        "--evaluate-args",
        default="--trace-predictors pre-attention,cross-layer,previous-token,oracle",
        help="extra args of 'predictor evaluate' (default: the predictor columns the shipped traces keep)",
    )
    parser.add_argument(
        "--ship-tokens",
        type=int,
        default=20480,
        help="the shipped trace keeps the first test sequences that reach this many tokens (default: 20480)",
    )
    parser.add_argument("--skip-predictors", action="store_true", help="stop after collection")
    parser.add_argument("--parallel", action="store_true", help="one process per model, side by side")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny widths, a few steps: a check")
    return parser.parse_args(argv)


class StepFailed(RuntimeError):
    pass


def run_cli(args: list[str], log_path: Path, label: str, device_args: list[str]) -> float:
    """Run ``python -m moe_prefetch ARGS``; output goes to the log and, prefixed, to stdout."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "moe_prefetch", *args, *device_args]
    started = time.perf_counter()
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if "\r" not in line and "it/s]" not in line and "tok/s]" not in line:
                print(f"[{label}] {line}", end="", flush=True)
        code = proc.wait()
        seconds = time.perf_counter() - started
        log.write(f"# exit {code} after {seconds:.1f} s\n")
    if code != 0:
        raise StepFailed(f"{label}: '{args[0]} {args[1] if len(args) > 1 else ''}' exited with {code}")
    return seconds


def run_model(name: str, args: argparse.Namespace) -> dict:
    """The whole pipeline for one recipe; returns the step timings and what was produced."""
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    log = work / "pipeline.log"
    log.write_text("")
    device = ["--device", "cpu"] if args.smoke else []
    checkpoint, trace, acts = args.work / "models" / name, work / "trace.parquet", work / "acts"
    predictors, tables, final = work / "predictors", work / "tables", work / "trace_predictions.parquet"
    timings: dict[str, float] = {}
    status = "ok"
    train = ["train-reference", "--recipe", name, "--corpus", str(args.bundle), "--out", str(checkpoint)]
    train += ["--smoke", "--max-steps", "10", "--eval-tokens", "2048"] if args.smoke else []
    train += ["--minutes", str(args.train_minutes)]
    collect = ["collect", "--model", str(checkpoint), "--corpus", str(args.bundle), "--split", "test"]
    tokens = min(args.collect_tokens, 8192) if args.smoke else args.collect_tokens
    # router logits: the ranking-aware loss needs the router's full ranking, not only its top-k
    collect += ["--out", str(trace), "--activations", str(acts), "--max-tokens", str(tokens), "--logits"]
    collect += ["--batch-size", str(args.batch_size)] + (["--seq-len", "64"] if args.smoke else [])
    fit = ["predictor", "train", "--activations", str(acts), "--out", str(predictors), "--quiet"]
    fit += args.predictor_args.split() + (["--epochs", "2", "--hidden", "64"] if args.smoke else [])
    score = ["predictor", "evaluate", "--activations", str(acts), "--predictors", str(predictors), "--quiet"]
    score += ["--trace", str(trace), "--out", str(final), "--table", str(tables), *args.evaluate_args.split()]
    score += ["--bootstrap", "50"] if args.smoke else []
    steps = [("train", train), ("collect", collect)]
    if not args.skip_predictors:
        steps += [("predictor-train", fit), ("predictor-evaluate", score)]
    for step, cli_args in steps:
        try:
            timings[step] = round(run_cli(cli_args, log, f"{name} {step}", device), 1)
        except StepFailed as exc:
            print(f"[{name}] FAILED: {exc}", flush=True)
            status = f"failed at {step}"
            break
    shipped = final if final.exists() else trace
    summary = {"model": name, "status": status, "seconds": timings}
    if shipped.exists():
        summary["trace"] = ship(shipped, args.out / f"{name}.parquet", timings, args.ship_tokens)
    write_text_atomic(work / "summary.json", json.dumps(summary, indent=1))
    pack_results(name, work, checkpoint, args.out / f"{name}.results.tar.gz")
    return summary


def ship(trace_path: Path, out: Path, timings: dict[str, float], ship_tokens: int) -> dict:
    """Write the first whole sequences reaching ``ship_tokens`` tokens compactly (see
    traces.trace.write_trace), recording the pipeline's timings and what was kept."""
    import dataclasses

    import numpy as np

    from traces.trace import read_trace, write_trace

    trace = read_trace(trace_path)
    starts = trace.seq_starts
    sequences = int(np.searchsorted(starts[1:], ship_tokens, side="left")) + 1
    kept = trace.select_tokens(np.arange(int(starts[min(sequences, len(starts) - 1)])))
    provenance = trace.metadata.provenance
    shipped = {
        "sequences": f"first {kept.seq_starts.size - 1} of {starts.size - 1} sequences of the trace",
        "tokens": f"{kept.num_tokens} of {trace.num_tokens}",
        "predictor_metrics": "computed by 'predictor evaluate' over all tokens of the trace",
        "precision": "router weights and confidences rounded to bfloat16 precision; router logits left out",
    }
    recipe = {**provenance.recipe, "pipeline_seconds": timings, "shipped": shipped}
    metadata = dataclasses.replace(trace.metadata, provenance=dataclasses.replace(provenance, recipe=recipe))
    write_trace(dataclasses.replace(kept, metadata=metadata, logits=None), out, compact=True)
    return {"tokens": kept.num_tokens, "of_tokens": trace.num_tokens, "bytes": out.stat().st_size}


def pack_results(name: str, work: Path, checkpoint: Path, out: Path) -> None:
    """tables/*, the recipe (quality numbers), the summary and the log, in one small archive.

    Written atomically: a run cut short by a time limit leaves no truncated archive for ship_traces.py.
    """
    files = [work / "pipeline.log", work / "summary.json", checkpoint / RECIPE_FILE]
    files += sorted((work / "tables").glob("*")) if (work / "tables").is_dir() else []
    files += [work / "predictors" / "predictors.json"]
    with atomic_write(out, suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in files:
            if path.is_file():
                tar.add(path, arcname=f"{name}/{path.name}")


def run_parallel(names: list[str], args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """One child process per model, each running this script for its model alone (CPU threads shared out).

    A child that dies before writing its summary is reported as failed with its exit code, never by the
    summary an earlier run left in ``--work``.
    """
    children = []
    threads = str(max(1, (os.cpu_count() or 1) // len(names)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    for name in names:
        (args.work / name / "summary.json").unlink(missing_ok=True)
        child_argv = [a for a in argv if a != "--parallel"]
        index = child_argv.index("--models") if "--models" in child_argv else None
        if index is not None:
            del child_argv[index : index + 2]
        command = [sys.executable, __file__, *child_argv, "--models", name]
        children.append((name, subprocess.Popen(command, env=env)))
    summaries = []
    for name, proc in children:
        code = proc.wait()
        summary_path = args.work / name / "summary.json"
        if summary_path.is_file():
            summaries.append(json.loads(summary_path.read_text()))
        else:
            summaries.append({"model": name, "status": f"failed: exited with {code} before its summary"})
    return summaries


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        print(f"unknown recipe(s) {unknown}; have {sorted(RECIPES)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.parallel and len(names) > 1:
        summaries = run_parallel(names, args, argv)
    else:
        summaries = [run_model(name, args) for name in names]
    print(f"\n=== pipeline finished in {time.perf_counter() - started:.0f} s")
    for summary in summaries:
        print(json.dumps(summary))
        print_quality(args.work / summary["model"], args.work / "models" / summary["model"])
    return 0 if all(s["status"] == "ok" for s in summaries) else 1


def print_quality(work: Path, checkpoint: Path) -> None:
    recipe_path = checkpoint / RECIPE_FILE
    if recipe_path.is_file():
        report = json.loads(recipe_path.read_text())
        quality = report.get("quality", {})
        balance = quality.get("router_balance", {})
        worst = max((b["max_over_mean"] for b in balance.values()), default=float("nan"))
        print(
            f"  {report['recipe']}: {report['tokens_seen']:,} tokens in {report['train_minutes']} min "
            f"({report['tokens_per_s']:,} tok/s); val loss {quality.get('validation_loss')} "
            f"(ppl {quality.get('validation_perplexity')}) vs unigram {quality.get('unigram_loss')} "
            f"(ppl {quality.get('unigram_perplexity')}); worst layer max/mean load {worst:.2f}"
        )
    for md in sorted((work / "tables").glob("*.md")) if (work / "tables").is_dir() else []:
        print(md.read_text()[:1500])


if __name__ == "__main__":
    sys.exit(main())
