"""Run configuration: everything a simulation depends on, hashable and serialisable.

``RunConfig.key()`` is a stable hash of the canonical JSON of the configuration; sweeps key results by it.
The trace enters by its content fingerprint (``trace_fingerprint``), so renaming a file changes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.cache import CacheConfig
from sim.hardware import HardwareProfile
from sim.policies import PolicySpec
from sim.workload import BatchingOptions
from traces.schema import ModelShape
from traces.trace import Trace

#: Version of the simulator's model of decode (engine, link, cache, controller, cost model). BUMP IT in the
#: commit that changes simulated numbers for an unchanged configuration (e.g. when
#: tests/data/sim_regression.json has to be regenerated): sweep run keys include it (``sim.sweep.run_key``),
#: so a resumed sweep re-runs every point instead of mixing rows of the old and the new model in one
#: table. Not the git hash: clones differ, and most commits leave the numbers alone.
SIM_MODEL_VERSION = 1

HOST_MEMORY = ("pinned", "pageable")
#: where the predictor runs (SimOptions.predictor_device)
PREDICTOR_DEVICES = ("gpu", "gpu-side", "cpu")


@dataclass(frozen=True)
class SimOptions:
    """Knobs of one simulated run besides trace, shape, hardware, cache and policy.

    - ``batch_size``, ``prompt_tokens``, ``prefill_chunk``: how trace tokens form steps (sim.workload);
    - ``host_memory``: where experts live on the host, "pinned" or "pageable";
    - ``predictor_device``: where the predictor runs: "gpu" (in line on the compute stream, before the
      attention or right after the router: the compute stream pays its whole time), "gpu-side" (a
      stream of its own beside the compute stream, which loses the calibrated ``predictor_share`` of
      its time) or "cpu" (the paper's MLP on the host, the router decision waits for it; a cross-layer
      gate predictor stays on the GPU, in line). "gpu" is the default: on the H200 a side-stream
      predictor made every expert copy about 3% slower and the decode 3-9% slower than in line
      (reports/validation/session7/);
    - ``predictor_s``: fixed prediction time overriding the profile (None: from the profile; the live
      executor takes only 0, a predictor that costs nothing: it runs no predictor kernel);
    - ``compute_scale``: multiplies every compute op (a faster or slower GPU); copies are unchanged;
    - ``step_overhead_s``: per-step time outside the decoder layers (embedding, LM head, sampling);
    - ``warmup_steps``: leading steps left out of the latency summary (the cache starts empty);
    - ``timeline_steps``: record compute and copy intervals of the first N steps (0: none), at most
      ``max_timeline_intervals`` of them.
    """

    batch_size: int = 1
    prompt_tokens: int = 0
    prefill_chunk: int = 256
    host_memory: str = "pinned"
    predictor_device: str = "gpu"
    predictor_s: float | None = None
    compute_scale: float = 1.0
    step_overhead_s: float = 0.0
    warmup_steps: int = 0
    timeline_steps: int = 0
    max_timeline_intervals: int = 100_000

    def __post_init__(self) -> None:
        self.batching()  # validates batch_size, prompt_tokens, prefill_chunk
        if self.host_memory not in HOST_MEMORY:
            raise ValueError(f"host_memory must be one of {', '.join(HOST_MEMORY)}, got '{self.host_memory}'")
        if self.predictor_device not in PREDICTOR_DEVICES:
            devices = ", ".join(PREDICTOR_DEVICES)
            raise ValueError(f"predictor_device must be one of {devices}, got '{self.predictor_device}'")
        if self.predictor_s is not None and self.predictor_s < 0:
            raise ValueError(f"predictor_s must be >= 0, got {self.predictor_s}")
        if self.compute_scale <= 0:
            raise ValueError(f"compute_scale must be > 0, got {self.compute_scale}")
        if self.step_overhead_s < 0 or self.warmup_steps < 0 or self.timeline_steps < 0:
            raise ValueError("step_overhead_s, warmup_steps and timeline_steps must be >= 0")

    def batching(self) -> BatchingOptions:
        return BatchingOptions(self.batch_size, self.prompt_tokens, self.prefill_chunk)

    @property
    def pinned(self) -> bool:
        return self.host_memory == "pinned"


@dataclass(frozen=True)
class RunConfig:
    """One simulation's complete configuration. ``trace`` is the trace's content fingerprint."""

    trace: str
    shape: ModelShape
    hardware: HardwareProfile
    cache: CacheConfig
    policy: PolicySpec
    options: SimOptions = SimOptions()

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace": self.trace,
            "shape": dataclasses.asdict(self.shape),
            "hardware": self.hardware.to_dict(),
            "cache": dataclasses.asdict(self.cache),
            "policy": self.policy.to_dict(),
            "options": dataclasses.asdict(self.options),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Stable 16-hex-digit hash of the configuration."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RunConfig:
        return cls(
            trace=doc["trace"],
            shape=ModelShape(**doc["shape"]),
            hardware=HardwareProfile.from_dict(doc["hardware"]),
            cache=CacheConfig(**doc["cache"]),
            policy=PolicySpec(**doc["policy"]),
            options=SimOptions(**doc["options"]),
        )


def trace_fingerprint(trace: Trace) -> str:
    """Hash of everything in a trace that a simulation can read (routing, predictions, metadata)."""
    digest = hashlib.sha256()
    digest.update(trace.metadata.to_json().encode())
    arrays = [trace.seq_id, trace.pos, trace.experts]
    for name in sorted(trace.predictions):
        digest.update(name.encode())
        arrays.append(trace.predictions[name])
        if name in trace.confidences:
            arrays.append(trace.confidences[name])
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(str(contiguous.dtype).encode() + str(contiguous.shape).encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()[:16]
