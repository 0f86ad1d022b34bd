"""``moe-prefetch calibrate``: measure a GPU's copy and compute costs and write a hardware profile.

Runs on a GPU (CUDA events, warm-up, repetitions, medians): host-to-device copies over sizes from pinned
and pageable memory, concurrent copies on several streams, and for every model shape given the decode
ops the live executor runs (attention against context length and batch, norms, router, expert SwiGLU
against token count, shared experts, dense MLP, predictor MLP on GPU and CPU), plus launch overhead.
Live decodes of each shape with every expert resident, alone and with a chain of copies keeping the link
busy, fit what the ops timed one at a time miss: the host's and the GPU's time per layer outside the ops,
and the factor on the ops' GPU times beside copies (a model instance's own; see sim/calibrate.py's
fit_host_costs). The profile (TOML) is what ``moe-prefetch simulate --hardware FILE`` reads; ``--raw``
also keeps every measured number as JSON, including those live runs, so that ``--refit RAW.json`` can
fit them again with a changed simulator, without a GPU. ``--device cpu --effort
smoke`` checks the code path on a machine without a GPU (the numbers are then meaningless and the profile
says so).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from moe_prefetch.argtypes import non_negative_float
from traces.fileio import InputError, write_text_atomic

if TYPE_CHECKING:
    from sim.calibrate import Calibration, HostRun
    from traces.schema import ModelShape


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure copy and compute costs on a GPU and write a hardware profile (TOML)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model-shape",
        action="append",
        required=True,
        metavar="KEY|CONFIG",
        help="model whose decode ops to time: a known key (e.g. qwen3-30b-a3b, deepseek-v2-lite, "
        "mixtral-8x7b) or an HF config.json; repeat for several",
    )
    parser.add_argument("--out", required=True, metavar="PROFILE.toml", help="hardware profile to write")
    parser.add_argument("--raw", metavar="FILE.json", help="also write every measurement as JSON")
    parser.add_argument("--name", default="", help="profile name (default: derived from the GPU name)")
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (cuda if available), cuda, cuda:1, cpu"
    )
    parser.add_argument(
        "--effort",
        choices=("full", "smoke"),
        default="full",
        help="full: the real sweep (about a minute per shape on an H200); smoke: tiny sizes, seconds",
    )
    parser.add_argument(
        "--no-host-costs",
        action="store_true",
        help="skip the live executor's host costs (per-copy issue time, per-layer loop time); these need "
        "the simulator (simpy) on the GPU machine",
    )
    parser.add_argument(
        "--host-gate-timeout",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="before each host-bound measurement wait up to SECONDS for the host core's fast level "
        "(on VMs whose vCPUs switch speed; see sim/host_speed.py); 0, the default, never waits",
    )
    parser.add_argument(
        "--refit",
        metavar="RAW.json",
        help="no measuring: re-fit the host costs of an earlier calibration (its --raw file) with the "
        "current simulator and write the profile (after a change to the simulator's model; no GPU)",
    )
    parser.add_argument(
        "--instance-runs",
        metavar="FILE.json",
        help="with --refit: fit each shape's costs per layer (and its ops' time beside copies) to these "
        "resident runs instead of the calibration's own (a validation's instance_runs.json: the model the "
        "grid ran on)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from sim import calibrate as cal
    from traces.shapes import resolve_shape

    shapes = [resolve_shape(spec) for spec in args.model_shape]
    names = [s.name for s in shapes]
    if len(set(names)) != len(names):
        raise InputError(args.model_shape[0], "the same model shape is given twice")
    if args.instance_runs and not args.refit:
        raise InputError(args.instance_runs, "--instance-runs needs --refit (the calibration they replace)")
    if args.refit:
        result = _read_raw(args.refit, names)
        if args.instance_runs:
            cal.use_instance_runs(result, _read_instance_runs(args.instance_runs, names))
        slow = cal.fit_host_costs(result, shapes)
        if slow:
            print(f"WARNING: {', '.join(slow)}: no step at the host core's fast level (fitted at the slow)")
    else:
        result = _measure(args, shapes)
    if args.raw:
        write_text_atomic(args.raw, json.dumps(result.to_dict(), indent=1) + "\n")
    cal.write_profile(result, shapes, args.out, name=args.name, smoke=args.effort == "smoke")
    print(cal.summary_text(result))
    print(f"profile written to {args.out}")
    return 0


def _measure(args: argparse.Namespace, shapes: list[ModelShape]) -> Calibration:
    from sim import calibrate as cal

    effort = cal.Effort.smoke() if args.effort == "smoke" else cal.Effort()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(args.device, "no CUDA device is available (use --device cpu for a smoke run)")
    return cal.calibrate(
        shapes,
        device=args.device,
        effort=effort,
        host_costs=not args.no_host_costs,
        host_gate_timeout_s=args.host_gate_timeout,
        progress=_say,
    )


def _say(message: str) -> None:
    """A progress line, with the time (a GPU log then shows where a calibration spent its minutes)."""
    print(f"calibrate {datetime.datetime.now():%H:%M:%S}: {message}", file=sys.stderr, flush=True)


def _read_instance_runs(path: str, names: list[str]) -> list[HostRun]:
    """A validation's instance_runs.json: resident host-cost runs, at least one of the given shapes."""
    from sim import calibrate as cal

    try:
        runs = [cal.HostRun(**r) for r in json.loads(Path(path).read_text(encoding="utf-8"))]
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise InputError(path, f"not an instance_runs.json ({type(exc).__name__}: {exc})") from None
    runs = [r for r in runs if r.shape in names and r.kind in cal.RESIDENT_RUN_KINDS]
    if not runs:
        raise InputError(path, f"has no resident run of {', '.join(names)}")
    return runs


def _read_raw(path: str, names: list[str]) -> Calibration:
    """An earlier calibration's --raw file, checked to hold the given shapes and its host-cost runs."""
    from sim import calibrate as cal

    try:
        result = cal.Calibration.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"not a calibration --raw file ({type(exc).__name__}: {exc})") from None
    missing = [n for n in names if n not in result.shapes]
    if missing:
        raise InputError(path, f"has no op timings of {', '.join(missing)}")
    if not result.host_runs:
        raise InputError(path, "holds no host-cost runs to fit (calibrated before they were kept)")
    return result
