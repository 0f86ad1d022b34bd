#!/usr/bin/env bash
# A/B of the live executor's copy handling in one machine session (issue 6, session 3):
#   A = sim/live.py as committed in 259f19c (a copy the MoE block needs is committed behind a busy engine),
#   B = the executor before it (4c703d5: the host spins until an engine is free).
# Same calibration (A's), same pinned CPUs; the resident rows are the drift control (no copies, so the
# same code path in A and B). The GPU machine has no git: extract B's executor first and carry it:
#   mkdir -p .ab && git show 4c703d5:sim/live.py > .ab/live_blocking.py      (then carry .ab and .whl)
#   bash reports/validation/session3/ab/ab.sh
# Tables (no GPU): moe-prefetch validate --grid reports/validation/session3/ab/grid.toml \
#   --hardware reports/validation/session3/ab/h200_as_calibrated.toml --out DIR --resimulate
set -euo pipefail
GRID=reports/validation/session3/ab/grid.toml
SHAPES="qwen3-30b-a3b deepseek-v2-lite" OUT=$OUT/A HOST_BUDGET_GIB=4 scripts/gpu_validate.sh $GRID >/dev/null 2>&1
CPUS=$(head -1 "$OUT/A/log.txt" | sed 's/pinned to CPUs: //')
rm -rf /tmp/old && mkdir /tmp/old && cp -r . /tmp/old/ && cp .ab/live_blocking.py /tmp/old/sim/live.py
cd /tmp/old && mkdir -p "$OUT/B/validation"
SECONDS=0
PYTHONPATH=/tmp/site:/tmp/old taskset -c "$CPUS" python3 -m moe_prefetch validate --grid $GRID \
    --hardware "$OUT/A/h200.toml" --out "$OUT/B/validation" --host-budget-gib 4 --live-only >"$OUT/B/log.txt" 2>&1
echo "B took ${SECONDS}s" >>"$OUT/B/log.txt"
tail -n 2 "$OUT/A/log.txt" "$OUT/B/log.txt"
