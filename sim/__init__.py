"""Offloaded MoE decode: shared decision objects (workload, cache, policies, controller), the SimPy
simulator, hardware profiles, and the live GPU executor. See ``sim/README.md``.

The main names are importable from ``sim`` directly and load their module on first use, so
``import sim`` stays light (no torch, no SimPy until a simulation is asked for).

``sim.COMPILED`` says whether the simulator's hot loop runs compiled: True when every module of
``COMPILED_CORE`` was loaded (or would be loaded) from an extension module built by the opt-in mypyc build
(``MOE_PREFETCH_COMPILE=1``, see setup.py); False for the default pure-Python install. Both builds give
bit-identical results; the compiled one is about 2.5x faster (benchmarks/NOTES_sim_speed.md).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
from typing import Any

#: modules the opt-in build compiles with mypyc (setup.py reads this list): the per-copy and per-layer
#: work of a simulation. They import each other's classes, so they are compiled together or not at all.
COMPILED_CORE = ("sim.cache", "sim.controller", "sim.engine", "sim.eviction", "sim.link", "sim.workload")

_EXPORTS = {
    "simulate": "sim.simulation",
    "SimOptions": "sim.config",
    "RunConfig": "sim.config",
    "CacheConfig": "sim.cache",
    "PolicySpec": "sim.policies",
    "SimResult": "sim.results",
    "HardwareProfile": "sim.hardware",
    "load_profile": "sim.hardware",
    "DecodeController": "sim.controller",
    "Workload": "sim.workload",
}

__all__ = sorted(_EXPORTS)


def compiled_modules() -> tuple[str, ...]:
    """The modules of ``COMPILED_CORE`` that load from an extension module (without importing them)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    compiled = []
    for module in COMPILED_CORE:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            compiled.append(module)
    return tuple(compiled)


def __getattr__(name: str) -> Any:
    if name == "COMPILED":
        return compiled_modules() == COMPILED_CORE
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
