"""Hardware sweeps: a grid of simulator runs described in TOML, run locally or on Ray, kept in one table.

A sweep file names traces, policies, cache sizes, hardware (presets and what-if overrides of PCIe
bandwidth and latency, pinned or pageable memory, copy engines, compute speed, predictor cost) and batch
sizes; the grid is their product (``expand``). Every run is a pure function of its ``RunConfig`` (the
trace enters by a fingerprint of its contents) and of the simulator's model (``SIM_MODEL_VERSION``), so a
run is named by ``run_key``, a hash of both: its ``run_key`` in the results table (``sim.sweep_store``).
Re-running a sweep skips every run the table (or its part files) already holds; an interrupted sweep
loses nothing that finished; after a change of the simulator's numbers every run is done again.

Runs execute on a local process pool (one run per core) or as Ray tasks (``sim.sweep_exec``); both call
the very same ``run_point``, so both produce identical tables.

Example (``examples/sweeps/``)::

    [sweep]
    name = "PCIe bandwidth x cache size"
    traces = ["../../traces/data/*.parquet"]     # relative to this file; globs allowed
    max_tokens = 2000
    policies = ["on-demand", "pre-attention", "oracle"]
    cache_fractions = [0.1, 0.25, 0.5]

    [hardware]
    presets = ["h200"]
    pcie_gbps = [16, 32, 64]
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sim.cache import CacheConfig
from sim.config import HOST_MEMORY, SIM_MODEL_VERSION, RunConfig, SimOptions, trace_fingerprint
from sim.eviction import EVICTION_RULES
from sim.hardware import HardwareProfile, load_profile, preset_names
from sim.policies import ConfidencePrefetch, PolicySpec, make_policy
from sim.results import SimResult
from sim.simulation import simulate
from sim.sweep_exec import execute_local, execute_ray, materialise, resolve_shared
from sim.sweep_store import KEY_COLUMN, ResultStore, Row
from sim.workload import DERIVED_SOURCES
from traces.fileio import InputError
from traces.trace import Trace, read_trace

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: [sweep] keys (lists unless noted) and [hardware] keys of a sweep file, with what each means.
SWEEP_KEYS = {
    "name": "title of the sweep (string)",
    "traces": "trace files, relative to the sweep file; glob patterns allowed",
    "max_tokens": "replay only the first N tokens of each trace (integer; default: all)",
    "policies": "policy specs, e.g. on-demand, pre-attention, pre-attention:m=12, oracle",
    "cache_fractions": "GPU expert slots as a fraction of all routed experts",
    "cache_slots": "GPU expert slots as a count (instead of cache_fractions)",
    "eviction": "eviction rules: lru, lfu, fifo, belady",
    "per_layer": "true: each MoE layer gets its own share of the slots",
    "batch_sizes": "sequences decoded side by side",
    "warmup_steps": "leading decode steps left out of the latency summary (integer; default 0)",
}
HARDWARE_KEYS = {
    "presets": "named hardware presets (h200, a100-pcie-gen4, ...) or profile TOML files",
    "pcie_gbps": "host-to-device bandwidth; replaces the measured copy curve by latency + bytes / bandwidth",
    "copy_latency_s": "fixed cost per copy (also replaces a measured curve)",
    "host_memory": "pinned or pageable host memory for the experts",
    "copy_engines": "copies in flight at once",
    "copy_issue_s": "host time per copy issued (delays the compute stream; 0 = a free host path)",
    "compute_scale": "multiplies every compute op's time (0.5 = a GPU computing twice as fast)",
    "predictor_s": "fixed prediction time per layer (default: from the profile)",
}


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: every axis of the grid as a tuple (the grid is their product)."""

    name: str
    source: str
    traces: tuple[Path, ...]
    policies: tuple[str, ...]
    cache: tuple[tuple[str, float], ...]  # ("fraction", 0.25) or ("slots", 64.0)
    eviction: tuple[str, ...] = ("lru",)
    per_layer: tuple[bool, ...] = (False,)
    batch_sizes: tuple[int, ...] = (1,)
    max_tokens: int | None = None
    warmup_steps: int = 0
    presets: tuple[str, ...] = ("h200",)
    pcie_gbps: tuple[float | None, ...] = (None,)
    copy_latency_s: tuple[float | None, ...] = (None,)
    host_memory: tuple[str, ...] = ("pinned",)
    copy_engines: tuple[int | None, ...] = (None,)
    copy_issue_s: tuple[float | None, ...] = (None,)
    compute_scale: tuple[float, ...] = (1.0,)
    predictor_s: tuple[float | None, ...] = (None,)

    @property
    def num_runs(self) -> int:
        sizes = [
            self.traces, self.policies, self.cache, self.eviction, self.per_layer, self.batch_sizes,
            self.presets, self.pcie_gbps, self.copy_latency_s, self.host_memory, self.copy_engines,
            self.copy_issue_s, self.compute_scale, self.predictor_s,
        ]  # fmt: skip
        return math.prod(len(axis) for axis in sizes)

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["traces"] = [str(p) for p in self.traces]
        return doc


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """Parse and check a sweep file; any problem is an InputError naming the file and the key."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid TOML ({exc})") from None
    return parse_sweep(doc, path)


def parse_sweep(doc: Mapping[str, Any], path: Path) -> SweepSpec:
    """A SweepSpec from a decoded sweep document; ``path`` anchors relative trace paths and errors."""
    unknown_tables = set(doc) - {"sweep", "hardware"}
    if unknown_tables or "sweep" not in doc:
        what = f"unknown table [{sorted(unknown_tables)[0]}]" if unknown_tables else "no [sweep] table"
        raise InputError(path, f"{what} (a sweep file has [sweep] and optional [hardware])")
    sweep, hardware = dict(doc["sweep"]), dict(doc.get("hardware", {}))
    _reject_unknown(path, "sweep", sweep, SWEEP_KEYS)
    _reject_unknown(path, "hardware", hardware, HARDWARE_KEYS)
    reader = _AxisReader(path)
    sweep_axis, hardware_axis = reader.bind(sweep), reader.bind(hardware)
    if ("cache_fractions" in sweep) == ("cache_slots" in sweep):
        raise InputError(path, "[sweep] needs exactly one of cache_fractions or cache_slots")
    if "cache_fractions" in sweep:
        cache = tuple(("fraction", v) for v in sweep_axis.numbers("cache_fractions", low=0.0, high=1.0))
    else:
        cache = tuple(("slots", float(v)) for v in sweep_axis.integers("cache_slots", low=0))
    max_tokens = sweep.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InputError(path, f"[sweep] max_tokens must be a positive integer, got {max_tokens!r}")
    warmup_steps = sweep.get("warmup_steps", 0)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise InputError(path, f"[sweep] warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    return SweepSpec(
        name=str(sweep.get("name", path.stem)),
        source=str(path),
        traces=_trace_paths(path, sweep_axis.strings("traces")),
        policies=tuple(_checked_policy(path, p) for p in sweep_axis.strings("policies")),
        cache=cache,
        eviction=sweep_axis.strings("eviction", default=("lru",), choices=EVICTION_RULES),
        per_layer=sweep_axis.booleans("per_layer", default=(False,)),
        batch_sizes=sweep_axis.integers("batch_sizes", low=1, default=(1,)),
        max_tokens=max_tokens,
        warmup_steps=warmup_steps,
        presets=tuple(_checked_preset(path, p) for p in hardware_axis.strings("presets", default=("h200",))),
        pcie_gbps=hardware_axis.numbers("pcie_gbps", low=1e-6, default=(None,)),
        copy_latency_s=hardware_axis.numbers("copy_latency_s", low=0.0, default=(None,)),
        host_memory=hardware_axis.strings("host_memory", default=("pinned",), choices=HOST_MEMORY),
        copy_engines=hardware_axis.integers("copy_engines", low=1, default=(None,)),
        copy_issue_s=hardware_axis.numbers("copy_issue_s", low=0.0, default=(None,)),
        compute_scale=hardware_axis.numbers("compute_scale", low=1e-6, default=(1.0,)),
        predictor_s=hardware_axis.numbers("predictor_s", low=0.0, default=(None,)),
    )


class _AxisReader:
    """Reads one axis (a non-empty list of values of one type) of a sweep table, or fails naming the key."""

    def __init__(self, path: Path, table: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.table = table or {}

    def bind(self, table: Mapping[str, Any]) -> _AxisReader:
        return _AxisReader(self.path, table)

    def _values(self, key: str, default: tuple[Any, ...] | None) -> list[Any]:
        if key not in self.table:
            if default is None:
                raise InputError(self.path, f"missing key '{key}'")
            return list(default)
        value = self.table[key]
        values = value if isinstance(value, list) else [value]
        if not values:
            raise InputError(self.path, f"'{key}' is an empty list")
        return values

    def strings(
        self, key: str, default: tuple[str, ...] | None = None, choices: Iterable[str] | None = None
    ) -> tuple:
        values = self._values(key, default)
        if not all(isinstance(v, str) and v for v in values):
            raise InputError(self.path, f"'{key}' must be a list of non-empty strings")
        allowed = tuple(choices) if choices is not None else None
        for v in values:
            if allowed is not None and v not in allowed:
                raise InputError(self.path, f"'{key}' value '{v}' is not one of {', '.join(allowed)}")
        return tuple(dict.fromkeys(values))

    def numbers(self, key: str, low: float, high: float = math.inf, default: tuple | None = None) -> tuple:
        values = self._values(key, default)
        if key not in self.table:
            return tuple(values)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
                raise InputError(self.path, f"'{key}' value {v!r} must be a number in [{low:g}, {high:g}]")
        return tuple(dict.fromkeys(float(v) for v in values))

    def integers(self, key: str, low: int, default: tuple | None = None) -> tuple:
        values = self._values(key, default)
        if key not in self.table:
            return tuple(values)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(self.path, f"'{key}' value {v!r} must be an integer >= {low}")
        return tuple(dict.fromkeys(values))

    def booleans(self, key: str, default: tuple[bool, ...]) -> tuple[bool, ...]:
        values = self._values(key, default)
        if not all(isinstance(v, bool) for v in values):
            raise InputError(self.path, f"'{key}' must be true, false or a list of them")
        return tuple(dict.fromkeys(values))


def _reject_unknown(path: Path, table: str, body: Mapping[str, Any], known: Mapping[str, str]) -> None:
    for key in body:
        if key not in known:
            raise InputError(path, f"unknown key '{key}' in [{table}] (known: {', '.join(known)})")


def _trace_paths(sweep_file: Path, patterns: Sequence[str]) -> tuple[Path, ...]:
    found: list[Path] = []
    for pattern in patterns:
        anchored = pattern if os.path.isabs(pattern) else str(sweep_file.parent / pattern)
        matches = sorted(Path(p) for p in glob.glob(anchored))
        if not matches:
            raise InputError(sweep_file, f"trace '{pattern}' matches no file")
        found += matches
    return tuple(dict.fromkeys(p.resolve() for p in found))


def _checked_policy(path: Path, text: str) -> str:
    try:
        return PolicySpec.parse(text).label()
    except ValueError as exc:
        raise InputError(path, f"policy '{text}': {exc}") from None


def _checked_preset(path: Path, name: str) -> str:
    if name.endswith(".toml"):
        profile = Path(name) if os.path.isabs(name) else path.parent / name
        if not profile.exists():
            raise InputError(path, f"hardware profile '{name}' does not exist")
        return str(profile.resolve())
    if name not in preset_names():
        raise InputError(path, f"unknown hardware preset '{name}' (known: {', '.join(preset_names())})")
    return name


# ------------------------------------------------------------------------------------------------ grid


@dataclass(frozen=True)
class RunPoint:
    """One run of a sweep: its configuration, where its trace lives, and the columns that describe it."""

    config: RunConfig
    trace_path: str
    max_tokens: int | None
    labels: Mapping[str, Any]

    @property
    def key(self) -> str:
        return run_key(self.config)


def run_key(config: RunConfig, model_version: int | None = None) -> str:
    """A sweep run's key: 16 hex digits of a hash of the configuration and of the simulator model's version
    (``SIM_MODEL_VERSION`` unless given), so results of another model version never count as done."""
    version = SIM_MODEL_VERSION if model_version is None else model_version
    return hashlib.sha256(f"{version}:{config.to_json()}".encode()).hexdigest()[:16]


def load_sweep_trace(path: str | os.PathLike[str], max_tokens: int | None) -> Trace:
    """The trace a sweep replays: the file's first ``max_tokens`` tokens (all when None)."""
    trace = read_trace(path)
    if max_tokens is not None and max_tokens < trace.num_tokens:
        trace = trace.select_tokens(np.arange(max_tokens))
    return trace


def expand(spec: SweepSpec, traces: Mapping[Path, Trace] | None = None) -> list[RunPoint]:
    """Every run of the grid, in a fixed order (trace, hardware, then the remaining axes).

    ``traces`` maps each of the spec's trace paths to its (already truncated) trace; it is loaded when
    not given. Runs that would duplicate another (same configuration) appear once.
    """
    if traces is None:
        traces = {path: load_sweep_trace(path, spec.max_tokens) for path in spec.traces}
    profiles = {name: load_profile(name) for name in spec.presets}
    points: dict[str, RunPoint] = {}
    for path in spec.traces:
        trace = traces[path]
        for policy in spec.policies:
            problem = policy_problem(trace, PolicySpec.parse(policy))
            if problem:
                raise InputError(spec.source, f"policy '{policy}' cannot replay {path.name}: {problem}")
        fingerprint = trace_fingerprint(trace)
        trace_labels = {
            "trace": path.stem,
            "trace_origin": trace.metadata.provenance.origin,
            "model": trace.metadata.model.name,
            "num_tokens": trace.num_tokens,
        }
        hardware_axes = itertools.product(
            spec.presets, spec.pcie_gbps, spec.copy_latency_s, spec.copy_engines, spec.copy_issue_s
        )
        for preset, pcie_gbps, latency_s, engines, issue_s in hardware_axes:
            hardware = what_if_hardware(profiles[preset], pcie_gbps, latency_s, engines, issue_s)
            hardware_labels = {
                "pcie_gbps": hardware.copy.link_gbps,
                "copy_latency_s": hardware.copy.latency_s,
                "copy_engines": hardware.copy.engines,
                "copy_issue_s": hardware.copy.issue_s,
                "measured_copy_curve": hardware.copy.curve is not None,
            }
            run_axes = itertools.product(
                spec.policies, spec.cache, spec.eviction, spec.per_layer, spec.batch_sizes,
                spec.host_memory, spec.compute_scale, spec.predictor_s,
            )  # fmt: skip
            for policy, (
                cache_kind,
                size,
            ), eviction, per_layer, batch, memory, scale, predictor_s in run_axes:
                cache = CacheConfig(
                    slots=int(size) if cache_kind == "slots" else None,
                    fraction=size if cache_kind == "fraction" else None,
                    per_layer=per_layer,
                    eviction=eviction,
                )
                options = SimOptions(
                    batch_size=batch,
                    host_memory=memory,
                    compute_scale=scale,
                    predictor_s=predictor_s,
                    warmup_steps=spec.warmup_steps,
                )
                config = RunConfig(
                    fingerprint, trace.metadata.model, hardware, cache, PolicySpec.parse(policy), options
                )
                labels = {
                    **trace_labels,
                    **hardware_labels,
                    "policy": policy,
                    "cache_fraction": size if cache_kind == "fraction" else None,
                    "eviction": eviction,
                    "per_layer": per_layer,
                    "batch_size": batch,
                    "host_memory": memory,
                    "compute_scale": scale,
                    "predictor_s": predictor_s,
                }
                point = RunPoint(config, str(path), spec.max_tokens, labels)
                points.setdefault(point.key, point)
    return list(points.values())


def policy_problem(trace: Trace, spec: PolicySpec) -> str | None:
    """Why ``spec`` cannot replay ``trace`` (a missing or too narrow prediction column), or None."""
    policy = make_policy(spec, trace.top_k)
    for source in policy.sources:
        if source in DERIVED_SOURCES:
            continue
        if source not in trace.predictions:
            return f"the trace has no 'pred.{source}' column"
        width = trace.predictions[source].shape[2]
        if spec.m is not None and width < spec.m:
            return f"'pred.{source}' ranks {width} experts, fewer than m={spec.m}"
        if isinstance(policy, ConfidencePrefetch) and source not in trace.confidences:
            return f"the trace has no 'conf.{source}' scores"
    return None


def what_if_hardware(
    profile: HardwareProfile,
    pcie_gbps: float | None,
    latency_s: float | None,
    engines: int | None,
    issue_s: float | None = None,
) -> HardwareProfile:
    """``profile`` with the sweep's copy overrides applied.

    A bandwidth or latency override replaces a measured copy curve by the line ``latency + bytes /
    bandwidth`` (the curve describes the measured link only). Pageable copies keep the profile's ratio of
    pageable to pinned bandwidth; the shared link capacity becomes the new bandwidth.
    """
    changes: dict[str, Any] = {}
    if pcie_gbps is not None:
        ratio = profile.copy.pageable_gbps / profile.copy.pinned_gbps
        changes.update(
            pinned_gbps=pcie_gbps, link_gbps=pcie_gbps, pageable_gbps=pcie_gbps * ratio, curve=None
        )
    if latency_s is not None:
        changes.update(latency_s=latency_s, curve=None)
    if engines is not None:
        changes["engines"] = engines
    if issue_s is not None:
        changes["issue_s"] = issue_s
    return profile.with_copy(**changes) if changes else profile


# ----------------------------------------------------------------------------------------------- one run

#: traces a worker process has loaded, by fingerprint (a sweep touches few traces; keep the last four)
_TRACES: dict[str, Trace] = {}
_TRACES_KEPT = 4


def simulate_point(point: RunPoint, shared: tuple[Mapping[str, Any]] | None = None) -> SimResult:
    """Simulate one point of a grid: the full result (per-token latencies, timeline, ...)."""
    config = point.config
    trace = _trace_of(point, shared)
    try:
        result = simulate(trace, config.shape, config.hardware, config.cache, config.policy, config.options)
    except ValueError as exc:  # a configuration the simulator refuses, e.g. a cache too small for a layer
        raise RunRefused(f"run {describe(point)}: {exc}") from None
    if result.config.key() != config.key():
        raise RuntimeError(f"{point.trace_path}: the trace changed while the sweep was running")
    return result


class RunRefused(ValueError):
    """The simulator refused a point of the grid (its message says which point and why)."""


def describe(point: RunPoint) -> str:
    """A short human name of a point: its trace, policy, cache and non-default what-ifs."""
    labels = point.labels
    parts = [labels["trace"], labels["policy"], point.config.cache.label(), point.config.hardware.meta.name]
    return " / ".join(str(p) for p in parts)


def run_point(point: RunPoint, shared: tuple[Mapping[str, Any]] | None = None) -> Row:
    """Simulate one point of a sweep and return its table row (the same on any machine, any executor)."""
    result = simulate_point(point, shared)
    row = {KEY_COLUMN: point.key, **point.labels, "sim_model_version": SIM_MODEL_VERSION}
    for name, value in result.summary_row().items():
        if name == "key":
            continue
        row.setdefault("trace_fingerprint" if name == "trace" else name, value)
    row["config"] = point.config.to_json()
    return row


def _trace_of(point: RunPoint, shared: tuple[Mapping[str, Any]] | None) -> Trace:
    fingerprint = point.config.trace
    trace = _TRACES.get(fingerprint)
    if trace is None:
        blob = resolve_shared(fingerprint, shared)
        path = point.trace_path if blob is None else materialise(blob, f"{fingerprint}.parquet")
        trace = load_sweep_trace(path, point.max_tokens)
        while len(_TRACES) >= _TRACES_KEPT:
            _TRACES.pop(next(iter(_TRACES)))
        _TRACES[fingerprint] = trace
    return trace


# -------------------------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class SweepOutcome:
    """What one invocation did: ``total`` runs in the grid, ``skipped`` already done, ``ran`` now.

    ``table`` is the whole results table, which may also hold runs of earlier, different sweeps;
    ``grid_table()`` is restricted to this sweep's grid.
    """

    path: Path
    total: int
    skipped: int
    ran: int
    wall_s: float
    table: pa.Table
    grid_keys: frozenset[str]

    def grid_table(self) -> pa.Table:
        keys = self.table.column(KEY_COLUMN).to_pylist()
        return self.table.take([i for i, key in enumerate(keys) if key in self.grid_keys])


def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike[str],
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    command: str = "",
) -> SweepOutcome:
    """Run every point of ``spec`` that ``out`` does not hold yet, then merge all results into ``out``.

    ``workers``: local processes (default: one per core). ``ray_address``: run as Ray tasks instead
    (an address, ``auto`` or ``local``). Finished runs are recorded as they finish; the table is merged
    at the end, also when the sweep is interrupted or a run fails.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    traces = {path: load_sweep_trace(path, spec.max_tokens) for path in spec.traces}
    points = expand(spec, traces)
    store = ResultStore(out)
    done = store.done_keys()
    todo = [p for p in points if p.key not in done]
    metadata = _table_metadata(spec, command, ray_address, workers)
    bar = tqdm(total=len(todo), unit="run", desc=spec.name, disable=not progress or not todo, file=sys.stderr)

    def record(row: Row) -> None:
        store.add(row)
        bar.update()

    try:
        if ray_address:
            blobs = {p.config.trace: p.trace_path for p in todo}
            shared = {name: Path(path).read_bytes() for name, path in blobs.items()}
            execute_ray(todo, run_point, ray_address, record, shared)
        else:
            execute_local(todo, run_point, workers or os.cpu_count() or 1, record)
    except RunRefused as exc:  # under Ray the message carries the remote traceback: keep its last line
        message = str(exc).strip().splitlines()[-1].split("RunRefused: ")[-1]
        raise InputError(spec.source, message) from None
    finally:
        bar.close()
        if store.has_parts():
            store.merge(metadata)
    wall_s = time.perf_counter() - started
    keys = frozenset(p.key for p in points)
    return SweepOutcome(
        Path(out), len(points), len(points) - len(todo), len(todo), wall_s, store.read(), keys
    )


def _table_metadata(spec: SweepSpec, command: str, ray_address: str | None, workers: int | None) -> dict:
    return {
        "name": spec.name,
        "spec": spec.to_dict(),
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "moe_prefetch": _version(),
        "executor": f"ray {ray_address}" if ray_address else f"local, {workers or os.cpu_count()} workers",
    }


def _version() -> str:
    try:
        return metadata.version("moe-prefetch")
    except metadata.PackageNotFoundError:
        return "source tree"
