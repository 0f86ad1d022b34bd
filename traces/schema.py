"""Trace format v1: column names, Arrow types and the provenance metadata stored with every trace.

A trace is one Parquet file in long format, one row per (sequence, position, MoE layer). The file's
key-value metadata holds one JSON document under ``METADATA_KEY`` describing the model, where the
routing came from and which predictors filled the ``pred.<name>`` columns.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"moe_prefetch"

PRED_PREFIX = "pred."
CONF_PREFIX = "conf."

#: Columns every trace has, with their exact Arrow types.
REQUIRED_COLUMNS: dict[str, pa.DataType] = {
    "seq_id": pa.int32(),
    "pos": pa.int32(),
    "layer": pa.int16(),
    "experts": pa.list_(pa.int16()),
    "weights": pa.list_(pa.float32()),
}
#: Optional columns with fixed names.
OPTIONAL_COLUMNS: dict[str, pa.DataType] = {"logits": pa.list_(pa.float16())}
PRED_TYPE = pa.list_(pa.int16())
CONF_TYPE = pa.list_(pa.float16())

Origin = Literal["gpu-collected", "imported", "synthetic"]
ORIGINS: tuple[str, ...] = ("gpu-collected", "imported", "synthetic")


@dataclass(frozen=True)
class ModelShape:
    """What the simulator and the live executor need to know about an MoE model.

    ``moe_layers`` lists the decoder layers that route (dense layers such as DeepSeek's first are absent).
    Sizes are per expert; ``bytes_per_expert`` is what one expert's weights occupy on the wire.
    """

    name: str
    architecture: str
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    hidden_size: int
    expert_intermediate_size: int
    bytes_per_expert: int
    num_shared_experts: int = 0
    shared_intermediate_size: int = 0
    dense_intermediate_size: int = 0
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    head_dim: int = 0
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "moe_layers", tuple(int(x) for x in self.moe_layers))

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def dense_layers(self) -> tuple[int, ...]:
        moe = set(self.moe_layers)
        return tuple(i for i in range(self.num_layers) if i not in moe)

    @property
    def dtype_bytes(self) -> int:
        return {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "fp8": 1}.get(self.dtype, 2)


@dataclass(frozen=True)
class Provenance:
    """Where a trace came from. ``origin`` is one of ORIGINS; everything else is free-form but recorded."""

    origin: Origin
    source: str = ""
    gpu: str = ""
    software: dict[str, str] = field(default_factory=dict)
    corpus: str = ""
    command: str = ""
    date: str = ""
    notes: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictorInfo:
    """A predictor whose ranked predictions sit in the ``pred.<name>`` / ``conf.<name>`` columns."""

    name: str
    kind: str
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TraceMetadata:
    model: ModelShape
    provenance: Provenance
    predictors: tuple[PredictorInfo, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TraceMetadata:
        """Build from a decoded JSON document; raises KeyError/TypeError/ValueError on a malformed one."""
        model = ModelShape(**doc["model"])
        provenance = Provenance(**doc["provenance"])
        predictors = tuple(PredictorInfo(**p) for p in doc.get("predictors", ()))
        return cls(model, provenance, predictors, int(doc["schema_version"]))

    def with_predictor(self, info: PredictorInfo) -> TraceMetadata:
        """A copy that lists ``info``, replacing an earlier predictor of the same name."""
        others = tuple(p for p in self.predictors if p.name != info.name)
        return dataclasses.replace(self, predictors=(*others, info))
