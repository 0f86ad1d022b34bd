"""Hardware profiles: what a GPU host does per copy and per op, as dataclasses stored in TOML.

File format (every number has its unit in its name; ``moe-prefetch calibrate`` writes this from GPU
measurements, presets live in ``sim/profiles/*.toml``)::

    [meta]
    name = "h200"
    source = "measured"          # "measured..." or "datasheet..." (free text may follow)
    gpu = "NVIDIA H200"
    driver = ""                  # driver, torch, date: where the numbers were measured
    torch = ""
    date = "2026-11-28"
    notes = "what was measured, what was assumed"

    [copy]                       # host-to-device expert transfers
    latency_s = 3e-06            # fixed cost per transfer (does not use link bandwidth)
    pinned_gbps = 55.5           # one transfer alone, from pinned host memory (1 GB/s = 1e9 bytes/s)
    pageable_gbps = 20.0         # one transfer alone, from pageable host memory
    engines = 3                  # copies that can be in flight at once
    link_gbps = 55.5             # capacity that concurrent copies share (PCIe link)
    concurrency_factor = 1.0     # optional: measured aggregate bandwidth of concurrent copies over one
                                 # copy's; when present, shared capacity = factor x one copy's rate
    serial = false               # optional: copies move one at a time in start order (FIFO) instead of
                                 # sharing the link; engines then = copies committed to the hardware
    issue_s = 0.0                # optional: host time to issue one copy; it delays the compute stream
                                 # (a host-bound executor launches kernels and copies from one thread)
    gate_delay_s = 0.0           # optional: a copy waiting for a GPU marker (its gate) lands this long
                                 # after the marker plus its time alone (the copy stream's wake-up)
    gap_s = 0.0                  # optional, serial links: idle time between two copies committed back to
                                 # back (the next starts this long after the one ahead landed)
    landing_delay_s = 0.0        # optional: an op waiting for a copy ends this long after the landing
                                 # plus its GPU time alone (the compute stream's wake-up)
    [copy.curve]                 # optional measured single-copy times (linear interpolation in size)
    sizes_bytes = [262144, 1048576]
    pinned_s = [7.8e-06, 2.4e-05]
    pageable_s = [2.2e-05, 6.4e-05]   # optional

    [compute]                    # roofline fallback for ops without a measured curve
    launch_overhead_s = 1e-05    # host cost of one eager kernel launch
    peak_tflops = 700.0          # achievable dense bf16 matmul rate
    hbm_gbps = 4000.0            # achievable device memory bandwidth
    cpu_gflops = 200.0           # achievable CPU rate (a predictor on the CPU)

    [[compute.curves]]           # optional measured op times, one table per op and model shape
    op = "expert"                # attention, norm, router, add, expert, shared, dense,
                                 # predictor_gpu, predictor_cpu, host_layer (host time per MoE layer
                                 # outside the ops: the executor's decisions, events and polling),
                                 # gpu_layer (GPU time per MoE layer outside the ops: the gaps
                                 # between its launches, charged as an equal gap before each op),
                                 # <op>_gpu and <op>_host (below)
    shape = "Qwen/Qwen3-30B-A3B" # ModelShape.name the op was measured for (curves apply to it only)
    tokens = [1, 2, 4, 8, 16]    # tokens in the call (batch x positions)
    seconds = [5e-05, 5e-05, 5e-05, 5e-05, 5.1e-05]

    [[compute.curves]]
    op = "attention"             # attention is a grid: seconds[i][c] for tokens[i] sequences of
    shape = "Qwen/Qwen3-30B-A3B" # context[c] cached positions each
    tokens = [1, 2]
    context = [1, 1024]
    seconds = [[6e-05, 7e-05], [6.2e-05, 8e-05]]
"""

from __future__ import annotations

import dataclasses
import math
import os
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from traces.fileio import InputError, write_text_atomic

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

OPS = (
    "attention",
    "norm",
    "router",
    "add",
    "expert",
    "shared",
    "dense",
    "predictor_gpu",
    "predictor_cpu",
    "host_layer",
    "gpu_layer",
    # the share of a side-stream predictor's GPU time that the compute stream loses while it runs beside
    "predictor_share",
)
#: ops whose GPU time alone and host launch time alone calibration measures too, as curves named
#: ``<op>_gpu`` and ``<op>_host`` (the calls queued behind a sleeping kernel: the host launches them while
#: the GPU is held, then the GPU runs them back to back)
GPU_TIMED_OPS = ("attention", "norm", "router", "add", "expert", "shared", "dense")
OPS += tuple(f"{op}_gpu" for op in GPU_TIMED_OPS) + tuple(f"{op}_host" for op in GPU_TIMED_OPS)
#: ... and ``<op>_copying``: their GPU time while host-to-device copies are in flight (the same queued
#: calls beside a chain of expert-sized copies; session 5 saw a routed expert 27% slower so)
OPS += tuple(f"{op}_copying" for op in GPU_TIMED_OPS)


@dataclass(frozen=True)
class ProfileMeta:
    name: str
    source: str
    gpu: str = ""
    driver: str = ""
    torch: str = ""
    date: str = ""
    notes: str = ""
    #: the host core's fast-level probe time at calibration (sim.host_speed; 0: not measured)
    host_probe_s: float = 0.0


@dataclass(frozen=True)
class CopyCurve:
    """Measured time of one copy alone, by size. ``pageable_s`` may be empty."""

    sizes_bytes: tuple[int, ...]
    pinned_s: tuple[float, ...]
    pageable_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes_bytes", tuple(int(x) for x in self.sizes_bytes))
        object.__setattr__(self, "pinned_s", tuple(float(x) for x in self.pinned_s))
        object.__setattr__(self, "pageable_s", tuple(float(x) for x in self.pageable_s))
        n = len(self.sizes_bytes)
        if n < 1 or len(self.pinned_s) != n or (self.pageable_s and len(self.pageable_s) != n):
            raise ValueError("copy curve: sizes_bytes, pinned_s (and pageable_s) must have equal length >= 1")
        if list(self.sizes_bytes) != sorted(set(self.sizes_bytes)):
            raise ValueError("copy curve: sizes_bytes must be strictly increasing")


#: the [copy] latencies that may not be negative; all but the first are optional (omitted when 0)
DELAYS = ("latency_s", "gate_delay_s", "gap_s", "landing_delay_s")


@dataclass(frozen=True)
class CopyProfile:
    latency_s: float
    pinned_gbps: float
    pageable_gbps: float
    engines: int
    link_gbps: float
    concurrency_factor: float | None = None
    curve: CopyCurve | None = None
    serial: bool = False
    issue_s: float = 0.0
    gate_delay_s: float = 0.0
    gap_s: float = 0.0
    landing_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.engines < 1:
            raise ValueError(f"copy.engines must be >= 1, got {self.engines}")
        for name in ("pinned_gbps", "pageable_gbps", "link_gbps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"copy.{name} must be > 0, got {getattr(self, name)}")
        for name in DELAYS:
            if getattr(self, name) < 0:
                raise ValueError(f"copy.{name} must be >= 0, got {getattr(self, name)}")

    def transfer_s(self, size_bytes: int, pinned: bool = True) -> float:
        """Time of one copy of ``size_bytes`` alone on an idle link (curve if measured, else the line)."""
        curve = self.curve
        times = None if curve is None else (curve.pinned_s if pinned else curve.pageable_s)
        if times:
            sizes = curve.sizes_bytes
            i = bisect_left(sizes, size_bytes)
            if i < len(sizes) and sizes[i] == size_bytes:
                return times[i]
            if 0 < i < len(sizes):
                lo, hi = sizes[i - 1], sizes[i]
                w = (size_bytes - lo) / (hi - lo)
                return times[i - 1] + w * (times[i] - times[i - 1])
            # outside the measured range: keep the nearest point's rate beyond the fixed latency
            edge = 0 if i == 0 else len(sizes) - 1
            wire = max(times[edge] - self.latency_s, 1e-12)
            return self.latency_s + wire * size_bytes / sizes[edge]
        gbps = self.pinned_gbps if pinned else self.pageable_gbps
        return self.latency_s + size_bytes / (gbps * 1e9)

    def shared_capacity_bps(self, size_bytes: int, pinned: bool = True) -> float:
        """Bytes per second that all copies in flight share."""
        if self.concurrency_factor is not None:
            wire = max(self.transfer_s(size_bytes, pinned) - self.latency_s, 1e-12)
            return self.concurrency_factor * size_bytes / wire
        return self.link_gbps * 1e9


@dataclass(frozen=True)
class OpCurve:
    """Measured times of one op for one model shape: ``seconds[i]`` at ``tokens[i]``; for attention a grid
    ``seconds[i][c]`` at ``tokens[i]`` sequences of ``context[c]`` cached positions each."""

    op: str
    shape: str
    tokens: tuple[int, ...]
    seconds: tuple[Any, ...]
    context: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"curve op '{self.op}' is unknown (choose from {', '.join(OPS)})")
        object.__setattr__(self, "tokens", tuple(int(x) for x in self.tokens))
        object.__setattr__(self, "context", tuple(int(x) for x in self.context))
        if list(self.tokens) != sorted(set(self.tokens)) or not self.tokens:
            raise ValueError(
                f"curve {self.op}/{self.shape}: tokens must be strictly increasing and non-empty"
            )
        if self.op.startswith("attention"):
            rows = tuple(tuple(float(x) for x in row) for row in self.seconds)
            if not self.context or list(self.context) != sorted(set(self.context)):
                raise ValueError(f"curve {self.op}/{self.shape}: context must be strictly increasing")
            if len(rows) != len(self.tokens) or any(len(r) != len(self.context) for r in rows):
                raise ValueError(f"curve {self.op}/{self.shape}: seconds must be [len(tokens)][len(context)]")
            object.__setattr__(self, "seconds", rows)
        else:
            values = tuple(float(x) for x in self.seconds)
            if len(values) != len(self.tokens):
                raise ValueError(f"curve {self.op}/{self.shape}: seconds and tokens differ in length")
            object.__setattr__(self, "seconds", values)

    def at(self, tokens: float, context: float = 0.0) -> float:
        """Piecewise-linear interpolation; beyond the last point, linear extrapolation from the last two."""
        if not self.context:
            return _interp(self.tokens, self.seconds, tokens)
        column = [_interp(self.context, row, context) for row in self.seconds]
        return _interp(self.tokens, column, tokens)


@dataclass(frozen=True)
class ComputeProfile:
    launch_overhead_s: float
    peak_tflops: float
    hbm_gbps: float
    cpu_gflops: float = 200.0
    curves: tuple[OpCurve, ...] = ()

    def curve(self, op: str, shape_name: str) -> OpCurve | None:
        for c in self.curves:
            if c.op == op and c.shape == shape_name:
                return c
        return None


@dataclass(frozen=True)
class HardwareProfile:
    """A GPU host: copy behaviour and compute speed. Load with ``load_profile``; save with ``save``."""

    meta: ProfileMeta
    copy: CopyProfile
    compute: ComputeProfile

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        if self.copy.curve is None:
            del doc["copy"]["curve"]
        if self.copy.concurrency_factor is None:
            del doc["copy"]["concurrency_factor"]
        if not self.copy.serial:
            del doc["copy"]["serial"]  # keeps run keys of profiles without the field unchanged
        for name in ("issue_s", *DELAYS[1:]):  # optional: absent when 0 (run keys stay unchanged)
            if not getattr(self.copy, name):
                del doc["copy"][name]
        if not self.meta.host_probe_s:
            del doc["meta"]["host_probe_s"]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> HardwareProfile:
        """Raises KeyError/TypeError/ValueError on a malformed document."""
        copy_doc = dict(doc["copy"])
        curve = copy_doc.pop("curve", None)
        compute_doc = dict(doc["compute"])
        curves = tuple(OpCurve(**c) for c in compute_doc.pop("curves", ()))
        return cls(
            meta=ProfileMeta(**doc["meta"]),
            copy=CopyProfile(**copy_doc, curve=CopyCurve(**curve) if curve else None),
            compute=ComputeProfile(**compute_doc, curves=curves),
        )

    def to_toml(self) -> str:
        return _dump_toml(self.to_dict())

    def save(self, path: str | os.PathLike[str]) -> None:
        write_text_atomic(path, self.to_toml())

    def with_copy(self, **changes: Any) -> HardwareProfile:
        """A copy with some [copy] fields changed (what-if questions, sweeps)."""
        return dataclasses.replace(self, copy=dataclasses.replace(self.copy, **changes))

    def with_compute(self, **changes: Any) -> HardwareProfile:
        return dataclasses.replace(self, compute=dataclasses.replace(self.compute, **changes))


# ---------------------------------------------------------------------------------------------- loading


def _presets() -> Any:
    return resources.files("sim").joinpath("profiles")


def preset_names() -> list[str]:
    """Names of the profiles shipped in ``sim/profiles``."""
    return sorted(p.name[: -len(".toml")] for p in _presets().iterdir() if p.name.endswith(".toml"))


def load_profile(spec: str | os.PathLike[str]) -> HardwareProfile:
    """A preset name (``h200``, ``a100-pcie-gen4``, ...) or the path of a profile TOML file."""
    name = str(spec)
    if not name.endswith(".toml") and name in preset_names():
        text = _presets().joinpath(f"{name}.toml").read_text(encoding="utf-8")
        return parse_profile(text, f"preset {name}")
    path = Path(name)
    if not path.exists():
        raise InputError(path, f"no such file, and not a preset ({', '.join(preset_names())})")
    return parse_profile(path.read_text(encoding="utf-8"), path)


def parse_profile(text: str, origin: str | os.PathLike[str]) -> HardwareProfile:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(origin, f"not valid TOML ({exc})") from None
    for section in ("meta", "copy", "compute"):
        if section not in doc:
            raise InputError(origin, f"hardware profile has no [{section}] table")
    try:
        return HardwareProfile.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(origin, f"hardware profile is malformed ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------- helpers


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if len(xs) == 1:
        return float(ys[0])
    i = bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return float(ys[i])
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    y = y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    return max(float(y), 0.0) if x > xs[-1] or x < xs[0] else float(y)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"cannot store {value} in a profile")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot store {type(value).__name__} in a profile")


def _dump_toml(doc: dict[str, Any]) -> str:
    """The small TOML subset profiles use: tables of scalars/arrays, sub-tables, arrays of tables."""
    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) and not _is_table_array(v)}
        lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}", v)
            elif _is_table_array(v):
                for item in v:
                    lines.append(f"[[{prefix}.{k}]]")
                    lines.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items() if iv != ())
                    lines.append("")

    for name, body in doc.items():
        table(name, body)
    return "\n".join(lines).rstrip() + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, dict) for v in value)
