"""Does a model's resident decode speed belong to the model instance or to the machine?

DeepSeek-V2-Lite decoded resident at 5.8-5.9 ms or 6.4-6.5 ms per token on the H200 VMs (sessions 7-9),
and on session 9's second VM calibration's model ran at the slow level while the validation's model,
built a minute later in another process, ran at the fast one. This builds the live model of a shape
several times in one process, decodes the calibration's synthetic trace resident a few times on each, and
prints each run's median step time with where the expert weights landed in GPU memory. On a GPU each run
is followed by the same decode beside a chain of copies that keeps the link busy (calibration's "copying"
run): does a model's slowdown beside copies belong to the instance too?

    python scripts/resident_levels.py deepseek-v2-lite --builds 4 --runs 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from sim import calibrate, live
from traces.shapes import resolve_shape

TWO_MIB = 2 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shape", help="a known shape key or an HF config.json")
    parser.add_argument("--builds", type=int, default=4, help="models built one after the other")
    parser.add_argument("--runs", type=int, default=3, help="resident decodes per model")
    parser.add_argument("--hardware", default="h200", help="profile the runs are labelled with")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a test vehicle)")
    args = parser.parse_args(argv)
    import torch

    from sim.hardware import load_profile

    shape = resolve_shape(args.shape)
    profile = load_profile(args.hardware)
    small = calibrate.truncated_shape(shape, shape.num_moe_layers)
    slots = small.num_moe_layers * small.num_experts  # every expert resident
    live_options = live.LiveOptions(device=args.device, host_budget_bytes=small.bytes_per_expert)
    for build in range(args.builds):
        model = live.open_model(small, slots, False, 1, calibrate.HOST_RUN_CONTEXT, False, 1, live_options)
        where = model.slots.data_ptr()
        reserved_gib = torch.cuda.memory_reserved() >> 30 if torch.cuda.is_available() else 0
        medians: dict[str, list[float]] = {kind: [] for kind in calibrate.instance_run_kinds(model)}
        for _ in range(args.runs):
            for kind, found in medians.items():
                run = calibrate.host_run_on(model, kind, profile, live_options)
                found.append(float(np.median(run.step_latency_s[calibrate.HOST_WARMUP_STEPS :])) * 1e3)
        alone = medians["layer"]
        beside = medians.get("copying")
        print(
            f"build {build}: slots at {where:#x} ({where % TWO_MIB:#x} into a 2 MiB page), "
            f"reserved {reserved_gib} GiB: median step "
            + ", ".join(f"{m:.3f}" for m in alone)
            + " ms"
            + (
                "; beside copies " + ", ".join(f"{m:.3f}" for m in beside) + " ms"
                f" ({np.median(beside) / np.median(alone):.4f}x)"
                if beside
                else ""
            ),
            flush=True,
        )
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
