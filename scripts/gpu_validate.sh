#!/usr/bin/env bash
# Calibration + the live half of the simulator validation on the GPU machine, in one command; results
# land in $OUT. The simulated half and the comparison need no GPU: run them where the files come back,
#   moe-prefetch validate --grid GRID.toml --hardware OUT/h200.toml --out OUT/validation --resimulate
#
#   scripts/gpu_validate.sh [GRID.toml]        (default: reports/validation/grid.toml)
#
# Environment: OUT (default ./gpu-out), SHAPES (the grid's shapes to calibrate and run, default all),
# CALIBRATE_SHAPES (the shapes to calibrate, default SHAPES: a profile may cover more shapes than run),
# HOST_BUDGET_GIB (pinned host memory for routed experts, default 8), PROFILE (a profile this machine
# calibrated already, e.g. by an earlier run of this script: calibration is skipped and the grid runs with
# it; h200.toml and calibration.json are then not written). simpy is not installed on the GPU
# machine: carry its wheel in .whl/ (pip download --no-deps -d .whl simpy==4.1.2) and it is installed
# into /tmp/site here (calibration's host-cost step compares a live run with the simulator).
# The live executor replays its ops from CUDA graphs (since session 5), but its host still decides and
# issues every copy, and calibration times host launches: the H200 VM's vCPUs differed by 40% and an
# unpinned process wandered between them, so calibration and validation are pinned to the same fastest
# pair of CPUs (CPUS overrides: a taskset list, or "none"). Even a pinned vCPU switched between two speeds
# 2x apart for seconds at a time, so calibration waits for the fast level before each host-dependent
# measurement (HOST_GATE_S, default 30 s per wait; 0: never) and a grid with host_gate_timeout_s does the
# same before each live run (sim/host_speed.py).
# The GPU's clocks, power and utilisation are sampled every 200 ms throughout (the validate log's lines
# carry times to line them up with the runs; session 6 found the SM clock at its 1980 MHz maximum through
# every run: the ops that session 5 saw 25% slower were slowed by copies in flight, not by the clock).
# Leaves 6 files in $OUT: h200.toml, calibration.json, log.txt, gpu_clocks.csv, validation/live.parquet and
# validation/instance_runs.json (4 with PROFILE). The last holds calibration's resident runs (alone and
# beside a chain of copies) decoded on each shape's validation model; to fit a profile to that very model
# (models built one after the other decoded up to 10% apart, session 9):
#   moe-prefetch calibrate --model-shape ... --refit OUT/calibration.json \
#       --instance-runs OUT/validation/instance_runs.json --out OUT/h200_instance.toml
set -euo pipefail
cd "$(dirname "$0")/.."
GRID=${1:-reports/validation/grid.toml}
OUT=${OUT:-gpu-out}
HOST_BUDGET_GIB=${HOST_BUDGET_GIB:-8}
mkdir -p "$OUT/validation"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
SHAPES=${SHAPES:-$(python3 -c "import sys; from sim.validate import load_grid
print(' '.join(run.shape for run in load_grid(sys.argv[1]).shapes))" "$GRID")}
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu,temperature.gpu \
        --format=csv -lms 200 >"$OUT/gpu_clocks.csv" &
    sampler=$!
    trap 'kill "$sampler" 2>/dev/null || true' EXIT
fi
CPUS=${CPUS:-$(python3 benchmarks/bench_host_stability.py --fastest 2)}
PIN=()
[ "$CPUS" = none ] || PIN=(taskset -c "$CPUS")
{
    echo "pinned to CPUs: $CPUS"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
    SECONDS=0
    shape_args=() grid_shapes=()
    for s in ${CALIBRATE_SHAPES:-$SHAPES}; do shape_args+=(--model-shape "$s"); done
    for s in $SHAPES; do grid_shapes+=(--shape "$s"); done
    if [ -z "${PROFILE:-}" ]; then
        PROFILE="$OUT/h200.toml"
        "${PIN[@]}" python3 -m moe_prefetch calibrate "${shape_args[@]}" --name h200 \
            --out "$PROFILE" --raw "$OUT/calibration.json" --host-gate-timeout "${HOST_GATE_S:-30}"
        echo "calibration took ${SECONDS}s"
    else
        echo "calibration skipped: the grid runs with $PROFILE"
    fi
    SECONDS=0
    "${PIN[@]}" python3 -m moe_prefetch validate --grid "$GRID" --hardware "$PROFILE" --out "$OUT/validation" \
        "${grid_shapes[@]}" --host-budget-gib "$HOST_BUDGET_GIB" --live-only
    echo "validation took ${SECONDS}s"
} 2>&1 | tee "$OUT/log.txt"
