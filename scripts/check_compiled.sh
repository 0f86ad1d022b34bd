#!/usr/bin/env bash
# The opt-in compiled core (MOE_PREFETCH_COMPILE=1, mypyc; see setup.py) must give bit-identical results:
# build it from this checkout's sources in a temporary directory (the checkout itself stays pure Python),
# then compare it with the pure build on the benchmark-sized trace (benchmarks/check_sim_identical.py,
# recorded by the pure code of this checkout) and run the simulator's tests against it.
# Needs a C compiler and mypy, setuptools>=77 and wheel in the Python given (pip install '.[compile]').
#
#     bash scripts/check_compiled.sh [PYTHON]       # default: python3; about 2-3 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
case $PYTHON in  # a relative path must survive the cd into the build directory (no symlink resolving:
    /*) ;;       # a virtual environment's python is a link to the base interpreter)
    */*) PYTHON="$PWD/$PYTHON" ;;
esac
TOKENS=${CHECK_COMPILED_TOKENS:-1000}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== compiled core: building in $work"
# this checkout's sources as they are (tracked and new files, nothing ignored: no build outputs)
git ls-files -z --cached --others --exclude-standard | xargs -0 tar --ignore-failed-read -cf - 2>/dev/null |
    tar -xf - -C "$work"
(cd "$work" && MOE_PREFETCH_COMPILE=1 "$PYTHON" setup.py -q build_ext --inplace >"$work/build.log" 2>&1) || {
    tail -n 30 "$work/build.log"
    echo "compiled core: the build failed"
    exit 1
}

build_is() {  # $1: tree, $2: True/False expected for sim.COMPILED
    (cd "$1" && PYTHONPATH="$1" "$PYTHON" -c "import sim, sys; sys.exit(0 if sim.COMPILED is $2 else 1)") || {
        echo "compiled core: sim.COMPILED is not $2 under $1"
        exit 1
    }
}
build_is "$PWD" False
build_is "$work" True

echo "== compiled core: outputs against the pure build ($TOKENS tokens)"
PYTHONPATH="$PWD" "$PYTHON" benchmarks/check_sim_identical.py --tokens "$TOKENS" --record "$work/pure.json" >/dev/null
(cd "$work" && PYTHONPATH="$work" "$PYTHON" benchmarks/check_sim_identical.py --check "$work/pure.json" | tail -n 1)

echo "== compiled core: simulator tests"
(cd "$work" && PYTHONPATH="$work" "$PYTHON" -m pytest -p no:cacheprovider tests/test_sim_*.py)
