"""Build script: pure Python by default; ``MOE_PREFETCH_COMPILE=1`` compiles the simulator's hot loop.

The package metadata lives in pyproject.toml; this file only adds the opt-in compiled core:

    pip install .                                    # pure Python: needs neither a C compiler nor mypy
    pip install "mypy>=1.11" "setuptools>=77" wheel  # the opt-in build's tools, then:
    MOE_PREFETCH_COMPILE=1 pip install --no-build-isolation .
    MOE_PREFETCH_COMPILE=1 python setup.py build_ext --inplace   # a checkout (an editable install)

The modules of ``sim.COMPILED_CORE`` (sim/__init__.py) are compiled to C extension modules with mypyc,
from the very same source files; ``sim.COMPILED`` tells which build runs. Floating-point contraction is
switched off (``-ffp-contract=off``) so that a compiler targeting FMA hardware rounds every product and
sum as Python does: the compiled build's outputs are bit-identical to the pure build's
(benchmarks/check_sim_identical.py, tests/test_sim_regression.py; scripts/test.sh checks both).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def compiled_core() -> list[str]:
    """``sim.COMPILED_CORE`` read from sim/__init__.py without importing the package."""
    tree = ast.parse((ROOT / "sim" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMPILED_CORE" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("sim/__init__.py defines no COMPILED_CORE")


def compiled_extensions() -> list:
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.exit(
            "MOE_PREFETCH_COMPILE=1 needs mypy (mypyc) and a C compiler in the build environment: "
            "pip install 'mypy>=1.11' 'setuptools>=77' wheel, then pip install --no-build-isolation ."
        )
    paths = [module.replace(".", "/") + ".py" for module in compiled_core()]
    # the modules they import but that stay interpreted (traces, numpy, simpy...) are only read for types
    options = ["--follow-imports=silent", "--ignore-missing-imports"]
    extensions = mypycify(options + paths, opt_level="3", group_name="sim_core")
    if os.name != "nt":
        for extension in extensions:
            extension.extra_compile_args = [*extension.extra_compile_args, "-ffp-contract=off"]
    return extensions


os.chdir(ROOT)  # mypyc names modules after their paths relative to the project root
setup(ext_modules=compiled_extensions() if os.environ.get("MOE_PREFETCH_COMPILE") == "1" else [])
