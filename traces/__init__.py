"""Trace format v1: routing of every token at every MoE layer, stored as Parquet with provenance."""

from traces.fileio import InputError, atomic_write
from traces.schema import SCHEMA_VERSION, ModelShape, PredictorInfo, Provenance, TraceMetadata
from traces.trace import NO_PREDICTION, Trace, read_trace, write_trace

__all__ = [
    "NO_PREDICTION",
    "SCHEMA_VERSION",
    "InputError",
    "ModelShape",
    "PredictorInfo",
    "Provenance",
    "Trace",
    "TraceMetadata",
    "atomic_write",
    "read_trace",
    "write_trace",
]
