"""The in-memory trace: dense numpy views over a v1 Parquet trace, and its reader and writer.

Tokens are the (seq_id, pos) pairs in file order; ``T`` tokens, ``L`` MoE layers, ``k`` experts per
token-layer, ``m`` ranked predictions. Layer axis index ``j`` refers to decoder layer
``metadata.model.moe_layers[j]``. A prediction of ``-1`` means "no prediction" (for example the
cross-layer predictor at the first MoE layer).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from traces.fileio import InputError, atomic_write
from traces.schema import (
    CONF_PREFIX,
    CONF_TYPE,
    METADATA_KEY,
    OPTIONAL_COLUMNS,
    PRED_PREFIX,
    PRED_TYPE,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    PredictorInfo,
    TraceMetadata,
)

NO_PREDICTION = -1


@dataclass
class Trace:
    """Routing of every token at every MoE layer, plus optional ranked predictions.

    Arrays: ``seq_id``/``pos`` ``[T]`` int32; ``experts`` ``[T, L, k]`` int16 in router order;
    ``weights`` ``[T, L, k]`` float32; ``logits`` ``[T, L, E]`` float16 or None;
    ``predictions[name]`` ``[T, L, m]`` int16 ranked best first; ``confidences[name]`` float16, same shape.
    """

    metadata: TraceMetadata
    seq_id: np.ndarray
    pos: np.ndarray
    experts: np.ndarray
    weights: np.ndarray
    logits: np.ndarray | None = None
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    confidences: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        """Number of MoE layers (the L axis)."""
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def num_experts(self) -> int:
        return self.metadata.model.num_experts

    @property
    def seq_starts(self) -> np.ndarray:
        """Index of the first token of every sequence, plus ``T`` at the end (like CSR offsets)."""
        if self.num_tokens == 0:
            return np.zeros(1, dtype=np.int64)
        change = np.flatnonzero(np.diff(self.seq_id)) + 1
        return np.concatenate(([0], change, [self.num_tokens])).astype(np.int64)

    def with_prediction(
        self, info: PredictorInfo, ranked: np.ndarray, scores: np.ndarray | None = None
    ) -> Trace:
        """A copy carrying ``ranked`` ([T, L, m] int16) as ``pred.<info.name>`` and its scores."""
        if ranked.shape[:2] != self.experts.shape[:2] or ranked.shape[2] < 1:
            raise ValueError(f"prediction shape {ranked.shape} does not match trace {self.experts.shape}")
        predictions = {**self.predictions, info.name: ranked.astype(np.int16)}
        confidences = dict(self.confidences)
        if scores is not None:
            confidences[info.name] = scores.astype(np.float16)
        else:
            confidences.pop(info.name, None)
        return dataclasses.replace(
            self,
            metadata=self.metadata.with_predictor(info),
            predictions=predictions,
            confidences=confidences,
        )

    def select_tokens(self, mask_or_index: np.ndarray) -> Trace:
        """A trace restricted to some tokens (for example one split or the first N sequences)."""

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[mask_or_index]

        return dataclasses.replace(
            self,
            seq_id=self.seq_id[mask_or_index],
            pos=self.pos[mask_or_index],
            experts=self.experts[mask_or_index],
            weights=self.weights[mask_or_index],
            logits=take(self.logits),
            predictions={k: v[mask_or_index] for k, v in self.predictions.items()},
            confidences={k: v[mask_or_index] for k, v in self.confidences.items()},
        )


# ---------------------------------------------------------------------------------------------- writing


def _list_column(dense: np.ndarray, value_type: pa.DataType, null_rows: np.ndarray | None = None) -> pa.Array:
    """[N, w] array -> Arrow list array of width w, with optional null entries."""
    n, width = dense.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    values = pa.array(dense.reshape(-1), type=value_type)
    mask = None if null_rows is None or not null_rows.any() else pa.array(null_rows)
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def to_table(trace: Trace) -> pa.Table:
    """The long-format Arrow table (one row per token and MoE layer) with metadata attached."""
    t, num_layers, _ = trace.experts.shape
    layer_ids = np.asarray(trace.metadata.model.moe_layers, dtype=np.int16)
    columns: dict[str, pa.Array] = {
        "seq_id": pa.array(np.repeat(trace.seq_id.astype(np.int32), num_layers)),
        "pos": pa.array(np.repeat(trace.pos.astype(np.int32), num_layers)),
        "layer": pa.array(np.tile(layer_ids, t)),
        "experts": _list_column(trace.experts.reshape(t * num_layers, -1), pa.int16()),
        "weights": _list_column(trace.weights.reshape(t * num_layers, -1), pa.float32()),
    }
    if trace.logits is not None:
        columns["logits"] = _list_column(trace.logits.reshape(t * num_layers, -1), pa.float16())
    for name in sorted(trace.predictions):
        ranked = trace.predictions[name].reshape(t * num_layers, -1)
        missing = (ranked == NO_PREDICTION).all(axis=1)
        columns[PRED_PREFIX + name] = _list_column(np.where(missing[:, None], 0, ranked), pa.int16(), missing)
        if name in trace.confidences:
            conf = trace.confidences[name].reshape(t * num_layers, -1)
            columns[CONF_PREFIX + name] = _list_column(conf, pa.float16(), missing)
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: trace.metadata.to_json().encode()})


def write_trace(
    trace: Trace, path: str | os.PathLike[str], compression: str = "zstd", compact: bool = False
) -> None:
    """Write ``trace`` as a v1 Parquet file, atomically.

    ``compact=True`` is for traces that ship inside the repository: router weights and confidences are
    rounded to bfloat16 precision (8 significant bits; the column types stay float32/float16, so every
    reader works unchanged), float columns use byte-stream-split encoding and zstd runs at level 19.
    """
    if compact:
        trace = _rounded_to_bf16(trace)
    table = to_table(trace)
    options: dict[str, object] = {"compression": compression, "use_dictionary": False}
    if compact:
        floats = [n for n in table.column_names if n in ("weights", "logits") or n.startswith(CONF_PREFIX)]
        options["use_byte_stream_split"] = [
            f"{n}.list.{leaf}" for n in floats for leaf in ("element", "item")
        ]
        options["compression_level"] = 19 if compression == "zstd" else None
    with atomic_write(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, **options)


def _bf16_round(values: np.ndarray) -> np.ndarray:
    """float32 copy of ``values`` rounded to the nearest bfloat16 (ties to even)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def _rounded_to_bf16(trace: Trace) -> Trace:
    return dataclasses.replace(
        trace,
        weights=_bf16_round(trace.weights),
        confidences={k: _bf16_round(v).astype(np.float16) for k, v in trace.confidences.items()},
    )


# ---------------------------------------------------------------------------------------------- reading


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and fully validate a v1 trace. Any problem raises InputError naming the file and the first
    offending row or field."""
    table = _read_table(path)
    metadata = _read_metadata(path, table.schema)
    return _TraceDecoder(path, table, metadata).decode()


def _read_table(path: str | os.PathLike[str]) -> pa.Table:
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"not a readable Parquet file ({first_line})") from None


def _read_metadata(path: str | os.PathLike[str], schema: pa.Schema) -> TraceMetadata:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(path, f"no '{METADATA_KEY.decode()}' metadata: not a moe-prefetch trace")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"metadata is not valid JSON ({exc.msg})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise InputError(path, f"unknown schema version {version!r} (this tool reads {SCHEMA_VERSION})")
    try:
        metadata = TraceMetadata.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"metadata is malformed ({type(exc).__name__}: {exc})") from None
    if metadata.provenance.origin not in ("gpu-collected", "imported", "synthetic"):
        raise InputError(path, f"metadata field provenance.origin={metadata.provenance.origin!r} is unknown")
    return metadata


class _TraceDecoder:
    """Turns a long table into a Trace, checking every rule of the format on the way."""

    def __init__(self, path: str | os.PathLike[str], table: pa.Table, metadata: TraceMetadata) -> None:
        self.path = path
        self.table = table
        self.meta = metadata
        self.model = metadata.model
        self.sorted_on_disk = False  # set by _row_order; sorted files need no reordering copy

    def fail(self, problem: str) -> InputError:
        return InputError(self.path, problem)

    def decode(self) -> Trace:
        self._check_columns()
        seq = self._int_column("seq_id")
        pos = self._int_column("pos")
        layer = self._int_column("layer")
        order = self._row_order(seq, pos, layer)
        num_layers = len(self.model.moe_layers)
        num_tokens = len(seq) // num_layers
        self._check_grid(seq[order], pos[order], layer[order], num_layers, order)
        tokens = order[::num_layers]
        k, e = self.model.top_k, self.model.num_experts
        experts = self._dense_list("experts", order, k, np.int16).reshape(num_tokens, num_layers, k)
        self._check_expert_ids("experts", experts, order, num_layers)
        weights = self._dense_list("weights", order, k, np.float32).reshape(num_tokens, num_layers, k)
        logits = None
        if "logits" in self.table.column_names:
            logits = self._dense_list("logits", order, e, np.float16).reshape(num_tokens, num_layers, e)
        predictions, confidences = self._predictions(order, num_tokens, num_layers)
        return Trace(
            metadata=self.meta,
            seq_id=seq[tokens].astype(np.int32),
            pos=pos[tokens].astype(np.int32),
            experts=experts,
            weights=weights,
            logits=logits,
            predictions=predictions,
            confidences=confidences,
        )

    # -- columns and types

    def _check_columns(self) -> None:
        schema = self.table.schema
        for name, dtype in REQUIRED_COLUMNS.items():
            if name not in schema.names:
                raise self.fail(f"missing column '{name}'")
            self._check_type(name, dtype)
        for name, dtype in OPTIONAL_COLUMNS.items():
            if name in schema.names:
                self._check_type(name, dtype)
        listed = {p.name for p in self.meta.predictors}
        for name in schema.names:
            if name.startswith(PRED_PREFIX):
                self._check_type(name, PRED_TYPE)
                if name[len(PRED_PREFIX) :] not in listed:
                    raise self.fail(f"column '{name}' has no entry in metadata.predictors")
            elif name.startswith(CONF_PREFIX):
                self._check_type(name, CONF_TYPE)
                if PRED_PREFIX + name[len(CONF_PREFIX) :] not in schema.names:
                    raise self.fail(f"column '{name}' has no matching '{PRED_PREFIX}' column")
        for info in self.meta.predictors:
            if PRED_PREFIX + info.name not in schema.names:
                raise self.fail(f"metadata lists predictor '{info.name}' but its column is absent")
        if self.table.num_rows == 0:
            raise self.fail("trace has no rows")
        if self.model.top_k < 1 or self.model.num_experts < self.model.top_k:
            raise self.fail(f"metadata model.top_k={self.model.top_k} does not fit num_experts")
        if not self.model.moe_layers:
            raise self.fail("metadata model.moe_layers is empty")

    def _check_type(self, name: str, expected: pa.DataType) -> None:
        actual = self.table.schema.field(name).type
        if not actual.equals(expected) and not _same_list_type(actual, expected):
            raise self.fail(f"column '{name}' has type {actual}, expected {expected}")

    def _int_column(self, name: str) -> np.ndarray:
        column = self.table.column(name)
        if column.null_count:
            raise self.fail(f"column '{name}' row {_first_null(column)}: null value")
        return column.to_numpy()

    # -- row grid

    def _row_order(self, seq: np.ndarray, pos: np.ndarray, layer: np.ndarray) -> np.ndarray:
        """Row permutation into (seq_id, pos, layer) order; the identity when the file is already sorted."""
        key_seq, key_pos, key_layer = seq.astype(np.int64), pos.astype(np.int64), layer.astype(np.int64)
        ascending = (np.diff(key_seq) > 0) | (
            (np.diff(key_seq) == 0)
            & ((np.diff(key_pos) > 0) | ((np.diff(key_pos) == 0) & (np.diff(key_layer) >= 0)))
        )
        self.sorted_on_disk = bool(ascending.all())
        if self.sorted_on_disk:
            return np.arange(len(seq))
        return np.lexsort((key_layer, key_pos, key_seq))

    def _check_grid(
        self, seq: np.ndarray, pos: np.ndarray, layer: np.ndarray, num_layers: int, order: np.ndarray
    ) -> None:
        """Every token has exactly one row for each MoE layer named in the metadata, and nothing else."""
        known = np.asarray(self.model.moe_layers, dtype=np.int64)
        unknown = ~np.isin(layer, known)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise self.fail(
                f"row {int(order[row])}: layer {int(layer[row])} is not in metadata model.moe_layers "
                f"{known.tolist()}"
            )
        same_as_next = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1]) & (layer[1:] == layer[:-1])
        if same_as_next.any():
            row = int(np.flatnonzero(same_as_next)[0]) + 1
            raise self.fail(
                f"duplicate row for (seq_id={int(seq[row])}, pos={int(pos[row])}, layer={int(layer[row])})"
            )
        if len(seq) % num_layers == 0:
            grid = layer.reshape(-1, num_layers)
            token_ok = (grid == known[None, :]).all(axis=1)
            if token_ok.all():
                return
            token = int(np.flatnonzero(~token_ok)[0])
        else:
            token = 0
        # locate the first token whose set of layers is incomplete
        starts = np.flatnonzero(np.r_[True, (seq[1:] != seq[:-1]) | (pos[1:] != pos[:-1])])
        counts = np.diff(np.r_[starts, len(seq)])
        bad = np.flatnonzero(counts != num_layers)
        row = int(starts[bad[0]]) if len(bad) else int(token * num_layers)
        have = sorted(set(layer[row : row + (counts[bad[0]] if len(bad) else num_layers)].tolist()))
        missing = sorted(set(known.tolist()) - set(have))
        raise self.fail(f"(seq_id={int(seq[row])}, pos={int(pos[row])}) is missing rows for layers {missing}")

    # -- list columns

    def _dense_list(
        self, name: str, order: np.ndarray, width: int, dtype: type, allow_null: bool = False
    ) -> np.ndarray:
        """A list column as a [rows, width] array in ``order``; raises on a null or a wrong length."""
        column = self.table.column(name).combine_chunks()
        if column.null_count and not allow_null:
            raise self.fail(f"column '{name}' row {_first_null(column)}: null list")
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets)
        valid = ~np.asarray(column.is_null()) if column.null_count else np.ones(len(column), dtype=bool)
        wrong = valid & (lengths != width)
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            field_name = {"experts": "top_k", "weights": "top_k", "logits": "num_experts"}.get(name, "width")
            raise self.fail(
                f"column '{name}' row {row}: list has {int(lengths[row])} entries, expected {width} "
                f"(metadata model.{field_name})"
            )
        values = column.values.to_numpy(zero_copy_only=False)
        if column.null_count:
            dense = np.full((len(column), width), NO_PREDICTION, dtype=values.dtype)
            rows = np.flatnonzero(valid)
            dense[rows] = values[(offsets[rows][:, None] + np.arange(width)[None, :])]
        else:
            start = int(offsets[0])
            dense = values[start : start + len(column) * width].reshape(len(column), width)
        if not self.sorted_on_disk:
            dense = dense[order]
        return np.ascontiguousarray(dense.astype(dtype, copy=False))

    def _check_expert_ids(self, name: str, ids: np.ndarray, order: np.ndarray, num_layers: int) -> None:
        """Ids inside [0, E) (or -1 in prediction columns); routed experts distinct within a row."""
        flat = ids.reshape(len(order), -1)
        is_prediction = name.startswith(PRED_PREFIX)
        lowest = NO_PREDICTION if is_prediction else 0
        if flat.size and (int(flat.min()) < lowest or int(flat.max()) >= self.model.num_experts):
            valid = flat != NO_PREDICTION if is_prediction else np.ones_like(flat, dtype=bool)
            bad = valid & ((flat < 0) | (flat >= self.model.num_experts))
            sorted_row = int(np.flatnonzero(bad.any(axis=1))[0])
            value = int(flat[sorted_row][bad[sorted_row]][0])
            raise self.fail(
                f"column '{name}' row {int(order[sorted_row])}: expert id {value} outside "
                f"[0, {self.model.num_experts}) (metadata model.num_experts)"
            )
        if is_prediction:
            return
        width = flat.shape[1]
        repeated = np.zeros(len(flat), dtype=bool)
        for i in range(width):  # k(k-1)/2 vectorised comparisons beat a row-wise sort for small k
            for j in range(i + 1, width):
                repeated |= flat[:, i] == flat[:, j]
        if repeated.any():
            row = int(order[np.flatnonzero(repeated)[0]])
            raise self.fail(f"column '{name}' row {row}: an expert appears twice")

    def _predictions(
        self, order: np.ndarray, num_tokens: int, num_layers: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        predictions: dict[str, np.ndarray] = {}
        confidences: dict[str, np.ndarray] = {}
        for info in self.meta.predictors:
            column = self.table.column(PRED_PREFIX + info.name).combine_chunks()
            lengths = np.diff(column.offsets.to_numpy())
            valid = ~np.asarray(column.is_null()) if column.null_count else np.ones(len(column), bool)
            if not valid.any():
                raise self.fail(f"column 'pred.{info.name}' has no predictions at all")
            width = int(lengths[valid][0])
            if width < self.model.top_k:
                raise self.fail(
                    f"column 'pred.{info.name}': lists of {width} experts, "
                    f"fewer than top_k={self.model.top_k}"
                )
            ranked = self._dense_list(PRED_PREFIX + info.name, order, width, np.int16, allow_null=True)
            self._check_expert_ids(PRED_PREFIX + info.name, ranked, order, num_layers)
            predictions[info.name] = ranked.reshape(num_tokens, num_layers, width)
            if CONF_PREFIX + info.name in self.table.column_names:
                conf = self._dense_list(CONF_PREFIX + info.name, order, width, np.float16, allow_null=True)
                confidences[info.name] = conf.reshape(num_tokens, num_layers, width)
        return predictions, confidences


def _same_list_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Accept large_list/list_view spellings of the same list type (pandas and duckdb write those)."""
    if not pa.types.is_list(expected):
        return False
    is_list_like = pa.types.is_list(actual) or pa.types.is_large_list(actual)
    return is_list_like and actual.value_type.equals(expected.value_type)


def _first_null(column: pa.ChunkedArray | pa.Array) -> int:
    nulls = np.asarray(column.is_null())
    return int(np.flatnonzero(nulls)[0])
