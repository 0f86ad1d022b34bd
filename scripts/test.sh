#!/usr/bin/env bash
# Fresh-machine test run: a new virtual environment with every extra, headless Chromium for the report
# tests, then lint and the whole test suite. CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing Debian's chromium (browser tests of the HTML report)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
fi

VENV=${VENV:-.venv}
echo "== setting up $VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The CPU build of torch keeps the test environment small; set TORCH_SPEC to override.
"$VENV/bin/pip" install -q "${TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/pip" install -q -e '.[torch,cluster,dev,compile]'

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "== pytest"
"$VENV/bin/pytest" "$@"

# The opt-in compiled core (setup.py) must match the pure build bit for bit; about 2-3 minutes.
# It needs a C compiler and Python's headers (python3-dev); without them it is skipped, saying so.
has_headers='import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))'
if command -v cc >/dev/null 2>&1 && "$VENV/bin/python" -c "import mypyc.build; $has_headers" 2>/dev/null; then
    bash scripts/check_compiled.sh "$VENV/bin/python"
else
    echo "== compiled core: skipped (needs a C compiler, Python's headers and mypy: pip install '.[compile]')"
fi
