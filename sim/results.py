"""The result record of one simulated run, its flat summary row, and its Parquet/JSON files.

Parquet layout (``write_results``): one row per run. Scalar columns are ``summary_row()`` (the flat view
sweeps and tables use); list columns hold per-token latencies, per-layer stall and hit/late/miss
counts; ``config`` holds the run's ``RunConfig`` as JSON and ``timeline`` the optional intervals as JSON.
The live executor (issue 6) writes the same record with ``clock="live"``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sim.config import RunConfig
from traces.fileio import InputError, atomic_write, write_text_atomic

RESULTS_VERSION = 1
RESULTS_METADATA_KEY = b"moe_prefetch_results"
TIMELINE_FIELDS = ("lane", "kind", "start_s", "end_s", "layer", "expert")


@dataclass
class SimResult:
    """Outcome of one run.

    ``token_latency_s[t]``: latency of the step that produced trace token ``t`` (time between that
    sequence's successive tokens); ``decode_token``: tokens that count in the latency summary (decode
    tokens after the warm-up steps). Per MoE layer: ``stall_s`` (compute stream idle), ``hits``,
    ``late`` (copy issued, not landed at the router), ``misses`` (absent, demand-loaded).
    ``host_probe_s`` (live runs): per token, how fast the host core ran in the step that produced it
    (``sim.host_speed.step_probe_s``: seconds of a fixed piece of interpreter work; None if not taken).
    """

    config: RunConfig
    clock: str  # "sim" or "live"
    token_latency_s: np.ndarray
    decode_token: np.ndarray
    step_latency_s: np.ndarray
    stall_s: np.ndarray
    hits: np.ndarray
    late: np.ndarray
    misses: np.ndarray
    total_s: float
    compute_s: float
    bytes_moved: float
    link_busy_s: float
    link_capacity_bps: float
    counters: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple] | None = None
    wall_s: float = 0.0
    host_probe_s: np.ndarray | None = None

    # -- summary

    @property
    def measured_tokens(self) -> int:
        """Tokens the latency summary covers: decode tokens after the warm-up steps."""
        return int(np.count_nonzero(self.decode_token))

    def summary(self) -> dict[str, float]:
        """Latency quantiles over the measured tokens only (``decode_token``); throughput, hits and bytes
        over the whole run. A run with no measured token (prompts only, or warm-up as long as the run) has
        NaN latencies: nothing was measured, and no prefill or warm-up step stands in for it."""
        latency = self.token_latency_s[self.decode_token]
        tokens = int(self.token_latency_s.size)
        hits, late, misses = int(self.hits.sum()), int(self.late.sum()), int(self.misses.sum())
        needed = max(hits + late + misses, 1)
        return {
            "mean_latency_s": float(latency.mean()) if latency.size else math.nan,
            "p50_latency_s": float(np.percentile(latency, 50)) if latency.size else math.nan,
            "p99_latency_s": float(np.percentile(latency, 99)) if latency.size else math.nan,
            "tokens": tokens,
            "steps": int(self.step_latency_s.size),
            "total_s": self.total_s,
            "tokens_per_s": tokens / self.total_s if self.total_s > 0 else 0.0,
            "compute_s": self.compute_s,
            "stall_s": float(self.stall_s.sum()),
            "hits": hits,
            "late": late,
            "misses": misses,
            "hit_rate": hits / needed,
            "miss_rate": misses / needed,
            "wasted": int(self.counters.get("wasted", 0)),
            "transfers": int(self.counters.get("transfers", 0)),
            "bytes_moved": self.bytes_moved,
            "link_busy_s": self.link_busy_s,
            "link_utilisation": (
                self.bytes_moved / (self.link_capacity_bps * self.total_s) if self.total_s > 0 else 0.0
            ),
        }

    def summary_row(self) -> dict[str, Any]:
        """Flat dict for tables: the run's key and labels, then every summary number and counter.
        Deterministic (no wall-clock time), so reruns give identical rows."""
        cfg = self.config
        row: dict[str, Any] = {
            "key": cfg.key(),
            "clock": self.clock,
            "trace": cfg.trace,
            "shape": cfg.shape.name,
            "hardware": cfg.hardware.meta.name,
            "policy": cfg.policy.label(),
            "cache": cfg.cache.label(),
            "cache_slots": self.counters.get("cache_slots", 0),
            "eviction": cfg.cache.eviction,
            "batch_size": cfg.options.batch_size,
            "host_memory": cfg.options.host_memory,
        }
        row.update(self.summary())
        for name, value in sorted(self.counters.items()):
            row.setdefault(name, value)
        return row

    # -- files

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RESULTS_VERSION,
            "config": self.config.to_dict(),
            "key": self.config.key(),
            "clock": self.clock,
            "summary": self.summary(),
            "counters": dict(self.counters),
            "token_latency_s": self.token_latency_s.tolist(),
            "decode_token": self.decode_token.tolist(),
            "step_latency_s": self.step_latency_s.tolist(),
            "stall_s": self.stall_s.tolist(),
            "hits": self.hits.tolist(),
            "late": self.late.tolist(),
            "misses": self.misses.tolist(),
            "total_s": self.total_s,
            "compute_s": self.compute_s,
            "bytes_moved": self.bytes_moved,
            "link_busy_s": self.link_busy_s,
            "link_capacity_bps": self.link_capacity_bps,
            "wall_s": self.wall_s,
            "timeline": None if self.timeline is None else [list(i) for i in self.timeline],
            "host_probe_s": None if self.host_probe_s is None else self.host_probe_s.tolist(),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SimResult:
        timeline = doc.get("timeline")
        probes = doc.get("host_probe_s")
        return cls(
            config=RunConfig.from_dict(doc["config"]),
            clock=doc["clock"],
            token_latency_s=np.asarray(doc["token_latency_s"], dtype=np.float64),
            decode_token=np.asarray(doc["decode_token"], dtype=bool),
            step_latency_s=np.asarray(doc["step_latency_s"], dtype=np.float64),
            stall_s=np.asarray(doc["stall_s"], dtype=np.float64),
            hits=np.asarray(doc["hits"], dtype=np.int64),
            late=np.asarray(doc["late"], dtype=np.int64),
            misses=np.asarray(doc["misses"], dtype=np.int64),
            total_s=float(doc["total_s"]),
            compute_s=float(doc["compute_s"]),
            bytes_moved=float(doc["bytes_moved"]),
            link_busy_s=float(doc["link_busy_s"]),
            link_capacity_bps=float(doc["link_capacity_bps"]),
            counters={k: int(v) for k, v in doc.get("counters", {}).items()},
            timeline=None if timeline is None else [tuple(i) for i in timeline],
            wall_s=float(doc.get("wall_s", 0.0)),
            host_probe_s=None if probes is None else np.asarray(probes, dtype=np.float64),
        )

    def to_json(self, path: str | os.PathLike[str]) -> None:
        write_text_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def read_json(cls, path: str | os.PathLike[str]) -> SimResult:
        try:
            with open(path, encoding="utf-8") as handle:
                return cls.from_dict(json.load(handle))
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"not a simulation result ({type(exc).__name__}: {exc})") from None

    def to_parquet(self, path: str | os.PathLike[str]) -> None:
        write_results([self], path)


_LIST_COLUMNS = ("token_latency_s", "decode_token", "step_latency_s", "stall_s", "hits", "late", "misses")
#: SimResult's scalar fields, kept exactly in ``raw_<name>`` columns (the summary columns are derived)
_RAW_SCALARS = ("total_s", "compute_s", "bytes_moved", "link_busy_s", "link_capacity_bps")


def results_table(results: list[SimResult]) -> pa.Table:
    """One row per run: summary columns, per-token/per-layer lists, config and timeline as JSON."""
    rows = [r.summary_row() for r in results]
    columns: dict[str, list[Any]] = {name: [row.get(name) for row in rows] for name in _ordered_keys(rows)}
    for name in _LIST_COLUMNS:
        columns[name] = [getattr(r, name).tolist() for r in results]
    for name in _RAW_SCALARS:
        columns[f"raw_{name}"] = [float(getattr(r, name)) for r in results]
    columns["wall_s"] = [r.wall_s for r in results]
    columns["host_probe_s"] = [None if r.host_probe_s is None else r.host_probe_s.tolist() for r in results]
    columns["counters"] = [json.dumps(r.counters, sort_keys=True) for r in results]
    columns["config"] = [r.config.to_json() for r in results]
    columns["timeline"] = [
        None if r.timeline is None else json.dumps([list(i) for i in r.timeline]) for r in results
    ]
    table = pa.table(columns)
    return table.replace_schema_metadata(
        {RESULTS_METADATA_KEY: json.dumps({"version": RESULTS_VERSION}).encode()}
    )


def write_results(results: list[SimResult], path: str | os.PathLike[str]) -> None:
    """Write results as one Parquet table (atomically)."""
    table = results_table(results)
    with atomic_write(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_results(path: str | os.PathLike[str]) -> list[SimResult]:
    """Read a table written by ``write_results``."""
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({exc})") from None
    raw_meta = (table.schema.metadata or {}).get(RESULTS_METADATA_KEY)
    if raw_meta is None:
        raise InputError(path, "not a moe-prefetch results table")
    try:
        version = json.loads(raw_meta).get("version")
    except (json.JSONDecodeError, AttributeError):
        version = None
    if version != RESULTS_VERSION:
        raise InputError(path, f"unknown results version {version!r} (this tool reads {RESULTS_VERSION})")
    raw_columns = [f"raw_{name}" for name in _RAW_SCALARS]
    required = ["config", "clock", "counters", "timeline", *_LIST_COLUMNS, *raw_columns]
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise InputError(path, f"results table lacks column {missing[0]!r}")
    out = []
    for row in table.to_pylist():
        doc = {name: row[name] for name in _LIST_COLUMNS}
        doc.update({name: row[f"raw_{name}"] for name in _RAW_SCALARS})
        doc.update(
            config=json.loads(row["config"]),
            clock=row["clock"],
            counters=json.loads(row["counters"]),
            timeline=None if row["timeline"] is None else json.loads(row["timeline"]),
            wall_s=row.get("wall_s", 0.0),
            host_probe_s=row.get("host_probe_s"),  # optional: tables written before it lack the column
        )
        out.append(SimResult.from_dict(doc))
    return out


def _ordered_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return list(keys)
