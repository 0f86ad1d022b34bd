"""Offloaded MoE decode: shared decision objects (workload, cache, policies, controller), the SimPy
simulator, hardware profiles, and the live GPU executor. See ``sim/README.md``.

The main names are importable from ``sim`` directly and load their module on first use, so
``import sim`` stays light (no torch, no SimPy until a simulation is asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
