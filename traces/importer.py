"""Import routing logs that others recorded (JSON lines, optionally .xz/.gz/.bz2) into trace format v1.

Two row layouts are understood (``layout="auto"`` tells them apart by the first row):

- **flat** (one object per token and layer, e.g. Mixtral logs):
  ``{"dataset", "problem_id", "layer", "token_idx", "experts": [...], "gating_probs": [...]}``.
  A sequence is one (dataset, problem_id); ``pos`` is ``token_idx``.
- **typed** (vLLM-style logs): an optional ``{"type": "meta", ...}`` line (model_id, top_k, num_experts,
  versions, device), then ``{"type": "route", "req_id", "token_idx", "layer", "topk_ids", "topk_weights"}``.
  ``token_idx`` counts tokens inside one forward pass and restarts at the next pass, so a sequence is one
  (req_id, forward pass): a restart of ``token_idx`` for the same request and layer opens a new sequence.
  In batched decode one pass holds one token of every request in the batch, so these sequences are passes,
  not requests (the logs here carry a single req_id for everything). ``pos`` is ``token_idx``.

Several files are merged by (sequence, pos, layer): per-layer logs of the same run (rows align across
files) become one multi-layer trace; a single file of one layer becomes a one-layer trace. The trace's
``model.moe_layers`` lists the layers that were logged.

Warm-up: engines run dummy forward passes before serving. ``drop_warmup="auto"`` drops, per file and
layer, the leading runs of rows that repeat one expert list, each run at least ``MIN_WARMUP_RUN`` rows
long (a dummy pass routes every token identically; real text does not for that long; consecutive dummy
passes may differ, e.g. 8,192 then 256 rows in the Qwen logs); an integer drops that many leading rows per
file and layer.

Nothing is dropped silently: malformed rows (bad JSON, missing or mistyped fields, wrong list length,
expert id outside [0, E), an expert twice, duplicate keys) and tokens that lack some logged layer are
counted by reason in the ``ImportReport``.
"""

from __future__ import annotations

import bz2
import dataclasses
import datetime
import gzip
import io
import json
import lzma
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from traces.fileio import InputError
from traces.schema import ModelShape, Provenance, TraceMetadata
from traces.shapes import KNOWN_SHAPES
from traces.trace import Trace

LAYOUTS = ("auto", "flat", "typed")
#: A leading run of identically routed rows at least this long counts as engine warm-up.
MIN_WARMUP_RUN = 16

_INT = {int}  # exact types: JSON true/false decode to bool, which is not a number here
_NUMBER = {int, float}
_FLAT_FIELDS = {"problem_id": "problem id", "layer": "layer", "token_idx": "token index"}
_TYPED_FIELDS = {"req_id": "request id", "layer": "layer", "token_idx": "token index"}


@dataclass(frozen=True)
class ImportOptions:
    """How to read the logs. ``None`` for ``num_experts``/``top_k`` means infer from the data (or the
    model); ``model`` fills the sizes the simulator needs; ``drop_warmup`` is ``"auto"`` or a row count."""

    layout: str = "auto"
    num_experts: int | None = None
    top_k: int | None = None
    drop_warmup: str | int = "auto"
    model: ModelShape | None = None
    model_name: str | None = None
    command: str = ""


@dataclass
class ImportReport:
    """What the import did, for the printed summary."""

    files: list[str] = field(default_factory=list)
    layouts: dict[str, str] = field(default_factory=dict)
    rows_read: int = 0
    rows_kept: int = 0
    warmup_dropped: dict[str, int] = field(default_factory=dict)
    malformed: Counter[str] = field(default_factory=Counter)
    other_row_types: Counter[str] = field(default_factory=Counter)
    incomplete_tokens: int = 0
    incomplete_rows: int = 0
    decisions: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"read {self.rows_read:,} routing rows from {len(self.files)} file(s)"]
        out += [f"  {name}: {self.layouts[name]} layout" for name in self.files]
        for where, count in self.warmup_dropped.items():
            out.append(f"  warm-up: dropped {count:,} leading rows of {where}")
        for reason, count in sorted(self.malformed.items()):
            out.append(f"  malformed: {count:,} rows dropped ({reason})")
        for kind, count in sorted(self.other_row_types.items()):
            out.append(f"  skipped: {count:,} rows of type {kind!r}")
        if self.incomplete_tokens:
            out.append(
                f"  incomplete: {self.incomplete_tokens:,} tokens lack some logged layer; their "
                f"{self.incomplete_rows:,} rows dropped"
            )
        out += [f"  {text}" for text in self.decisions]
        out.append(f"kept {self.rows_kept:,} rows")
        return out


@dataclass
class _Rows:
    """Parsed rows of one file, in file order."""

    seq_key: list[tuple[Any, ...]] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    layer: list[int] = field(default_factory=list)
    experts: list[list[int]] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def take(self, keep: list[int]) -> _Rows:
        return _Rows(
            [self.seq_key[i] for i in keep],
            [self.pos[i] for i in keep],
            [self.layer[i] for i in keep],
            [self.experts[i] for i in keep],
            [self.weights[i] for i in keep],
            self.meta,
        )


def import_logs(
    paths: Sequence[str | os.PathLike[str]], options: ImportOptions, progress: bool = True
) -> tuple[Trace, ImportReport]:
    """Read routing logs into one Trace; the report says what was dropped, inferred and why."""
    if options.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    report = ImportReport()
    per_file = []
    for path in paths:
        rows = _read_file(Path(path), options.layout, report, progress)
        rows = _drop_warmup(Path(path), rows, options.drop_warmup, report)
        per_file.append(rows)
    merged = _merge(per_file)
    if not merged.pos:
        raise InputError(paths[0], "no routing rows left to import")
    metas = [rows.meta for rows in per_file if rows.meta]
    top_k = _decide_top_k(merged, options, metas, report)
    merged = _drop_wrong_length(merged, top_k, report)
    num_experts = _decide_num_experts(paths[0], merged, options, metas, report)
    merged = _drop_bad_ids(merged, num_experts, report)
    trace = _build_trace(paths, merged, num_experts, top_k, options, metas, report)
    return trace, report


# ---------------------------------------------------------------------------------------------- reading


def _read_file(path: Path, layout: str, report: ImportReport, progress: bool) -> _Rows:
    report.files.append(path.name)
    rows = _Rows()
    passes: dict[tuple[Any, int], int] = {}
    last_token: dict[tuple[Any, int], int] = {}
    file_layout = None if layout == "auto" else layout
    for line_no, text in _lines(path, progress):
        if not text.strip():
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            report.malformed["not valid JSON"] += 1
            continue
        if not isinstance(doc, dict):
            report.malformed["not a JSON object"] += 1
            continue
        if file_layout is None:
            file_layout = _detect_layout(path, line_no, doc)
        if file_layout == "typed":
            kind = doc.get("type")
            if kind == "meta":
                rows.meta.update(doc)
                continue
            if kind != "route":
                report.other_row_types[str(kind)] += 1
                continue
        report.rows_read += 1
        parsed = _parse_row(doc, file_layout)
        if isinstance(parsed, str):
            report.malformed[parsed] += 1
            continue
        key, token, layer, experts, weights = parsed
        if file_layout == "typed":
            stream = (key, layer)
            if token <= last_token.get(stream, -1):
                passes[stream] = passes.get(stream, 0) + 1
            last_token[stream] = token
            key = (key, passes.get(stream, 0))
        rows.seq_key.append(key)
        rows.pos.append(token)
        rows.layer.append(layer)
        rows.experts.append(experts)
        rows.weights.append(weights)
    report.layouts[path.name] = file_layout or "empty"
    return rows


def _detect_layout(path: Path, line_no: int, doc: dict[str, Any]) -> str:
    if "type" in doc:
        return "typed"
    if "problem_id" in doc or "gating_probs" in doc:
        return "flat"
    raise InputError(
        path,
        f"line {line_no}: cannot tell the row layout (expected a 'type' field (typed) or "
        f"'problem_id'/'gating_probs' (flat)); pass --layout",
    )


def _parse_row(
    doc: dict[str, Any], layout: str
) -> tuple[tuple[Any, ...], int, int, list[int], list[float]] | str:
    """(sequence key, token index, layer, experts, weights), or the reason the row is malformed."""
    if layout == "flat":
        fields, ids_name, weights_name = _FLAT_FIELDS, "experts", "gating_probs"
    else:
        fields, ids_name, weights_name = _TYPED_FIELDS, "topk_ids", "topk_weights"
    for name in (*fields, ids_name, weights_name):
        if name not in doc:
            return f"missing field '{name}'"
    token, layer = doc["token_idx"], doc["layer"]
    if not _is_int(token) or token < 0:
        return "token_idx is not a non-negative integer"
    if not _is_int(layer) or not 0 <= layer < 2**15:
        return "layer is not a small non-negative integer"
    experts, weights = doc[ids_name], doc[weights_name]
    if not isinstance(experts, list) or not experts or not set(map(type, experts)) <= _INT:
        return f"'{ids_name}' is not a non-empty list of integers"
    if not isinstance(weights, list) or not set(map(type, weights)) <= _NUMBER:
        return f"'{weights_name}' is not a list of numbers"
    if len(weights) != len(experts):
        return f"'{weights_name}' and '{ids_name}' differ in length"
    if len(set(experts)) != len(experts):
        return f"an expert appears twice in '{ids_name}'"
    if layout == "flat":
        key: tuple[Any, ...] = ("flat", str(doc.get("dataset", "")), str(doc["problem_id"]))
    else:
        key = ("typed", str(doc["req_id"]))
    return key, token, layer, experts, [float(w) for w in weights]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _lines(path: Path, progress: bool) -> Iterator[tuple[int, str]]:
    """(line number, text) of a plain, .xz, .gz or .bz2 file, with a byte progress bar on a terminal."""
    from tqdm import tqdm

    if not path.is_file():
        raise InputError(path, "no such file")
    opener = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix)
    size = path.stat().st_size
    with (
        open(path, "rb") as raw,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=path.name,
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):
        stream: BinaryIO = opener(raw) if opener else raw  # type: ignore[assignment]
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="strict")
        line_no = 0
        try:
            for line_no, line in enumerate(text, start=1):
                if line_no % 8192 == 0:
                    bar.update(raw.tell() - bar.n)
                yield line_no, line
        except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
            raise InputError(path, f"unreadable after line {line_no} ({type(exc).__name__}: {exc})") from None
        bar.update(size - bar.n)


# ---------------------------------------------------------------------------------------------- cleaning


def _drop_warmup(path: Path, rows: _Rows, drop: str | int, report: ImportReport) -> _Rows:
    """Drop leading warm-up rows per layer (see the module docstring)."""
    by_layer: dict[int, list[int]] = {}
    for index, layer in enumerate(rows.layer):
        by_layer.setdefault(layer, []).append(index)
    dropped: set[int] = set()
    for layer, indices in sorted(by_layer.items()):
        if drop == "auto":
            count = _leading_identical_runs([rows.experts[i] for i in indices])
        else:
            count = min(int(drop), len(indices))
        if count:
            dropped.update(indices[:count])
            report.warmup_dropped[f"{path.name} layer {layer}"] = count
    if not dropped:
        return rows
    return rows.take([i for i in range(len(rows.pos)) if i not in dropped])


def _leading_identical_runs(experts: list[list[int]]) -> int:
    """Rows covered by the leading runs of identical expert lists that are each >= MIN_WARMUP_RUN long
    (one run per dummy forward pass; consecutive dummy passes may route differently)."""
    start = 0
    while start < len(experts):
        end = start + 1
        while end < len(experts) and experts[end] == experts[start]:
            end += 1
        if end - start < MIN_WARMUP_RUN:
            break
        start = end
    return start


def _merge(per_file: list[_Rows]) -> _Rows:
    merged = _Rows()
    for rows in per_file:
        merged.seq_key += rows.seq_key
        merged.pos += rows.pos
        merged.layer += rows.layer
        merged.experts += rows.experts
        merged.weights += rows.weights
    return merged


def _decide_top_k(rows: _Rows, options: ImportOptions, metas: list[dict], report: ImportReport) -> int:
    model_k = None if options.model is None else options.model.top_k
    given = _given_size("top_k", "k", options.top_k, metas, model_k, report)
    if given is not None:
        return given
    k, _ = Counter(len(e) for e in rows.experts).most_common(1)[0]
    report.decisions.append(f"k={k} inferred: the most common list length (pass --top-k to set it)")
    return k


def _given_size(
    name: str,
    symbol: str,
    option: int | None,
    metas: list[dict],
    model_value: int | None,
    report: ImportReport,
) -> int | None:
    """Size ``name`` from the command line, else the logs' meta lines, else the model shape (recording
    which in the report); None when none of them gives it and it must be inferred from the rows."""
    if option is not None:
        return option
    meta = _meta_value(metas, name, report)
    if len(meta) == 1:
        value = meta.pop()
        report.decisions.append(f"{symbol}={value} from the log's meta line")
        return value
    if model_value is not None:
        report.decisions.append(f"{symbol}={model_value} from the model shape")
    return model_value


def _meta_value(metas: list[dict], name: str, report: ImportReport) -> set[int]:
    """The values the log files' meta lines give for ``name``; they must agree."""
    values = {m[name] for m in metas if _is_int(m.get(name))}
    if len(values) > 1:
        raise InputError(", ".join(report.files), f"meta lines disagree on {name}: {sorted(values)}")
    return values


def _drop_wrong_length(rows: _Rows, top_k: int, report: ImportReport) -> _Rows:
    keep = [i for i, e in enumerate(rows.experts) if len(e) == top_k]
    if len(keep) < len(rows.experts):
        report.malformed[f"list length is not top-k={top_k}"] += len(rows.experts) - len(keep)
        rows = rows.take(keep)
    return rows


def _decide_num_experts(
    path: str | os.PathLike[str], rows: _Rows, options: ImportOptions, metas: list[dict], report: ImportReport
) -> int:
    model_e = None if options.model is None else options.model.num_experts
    given = _given_size("num_experts", "E", options.num_experts, metas, model_e, report)
    if given is not None:
        return given
    if not rows.experts:
        raise InputError(path, "no well-formed routing rows")
    e = max(max(ids) for ids in rows.experts) + 1
    report.decisions.append(
        f"E={e} inferred from the largest expert id (pass --num-experts if some experts never appear)"
    )
    return e


def _drop_bad_ids(rows: _Rows, num_experts: int, report: ImportReport) -> _Rows:
    keep = [i for i, ids in enumerate(rows.experts) if min(ids) >= 0 and max(ids) < num_experts]
    if len(keep) < len(rows.experts):
        report.malformed[f"expert id outside [0, {num_experts})"] += len(rows.experts) - len(keep)
        rows = rows.take(keep)
    return rows


# ---------------------------------------------------------------------------------------------- building


def _build_trace(
    paths: Sequence[str | os.PathLike[str]],
    rows: _Rows,
    num_experts: int,
    top_k: int,
    options: ImportOptions,
    metas: list[dict],
    report: ImportReport,
) -> Trace:
    if not rows.pos:
        raise InputError(paths[0], "no well-formed routing rows")
    seq_ids: dict[tuple[Any, ...], int] = {}
    seq = np.array([seq_ids.setdefault(key, len(seq_ids)) for key in rows.seq_key], dtype=np.int64)
    pos = np.asarray(rows.pos, dtype=np.int64)
    layer = np.asarray(rows.layer, dtype=np.int64)
    experts = np.asarray(rows.experts, dtype=np.int16)
    weights = np.asarray(rows.weights, dtype=np.float32)

    order = np.lexsort((layer, pos, seq))
    seq, pos, layer, experts, weights = seq[order], pos[order], layer[order], experts[order], weights[order]
    repeat = np.r_[False, (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1]) & (layer[1:] == layer[:-1])]
    if repeat.any():
        report.malformed["duplicate (sequence, token, layer) row; first kept"] += int(repeat.sum())
        keep = ~repeat
        seq, pos, layer, experts, weights = seq[keep], pos[keep], layer[keep], experts[keep], weights[keep]

    moe_layers = np.unique(layer)
    token_start = np.flatnonzero(np.r_[True, (seq[1:] != seq[:-1]) | (pos[1:] != pos[:-1])])
    rows_per_token = np.diff(np.r_[token_start, len(seq)])
    complete = np.repeat(rows_per_token == len(moe_layers), rows_per_token)
    if not complete.all():
        report.incomplete_tokens = int((rows_per_token != len(moe_layers)).sum())
        report.incomplete_rows = int((~complete).sum())
        seq, pos, layer, experts, weights = (a[complete] for a in (seq, pos, layer, experts, weights))
    if not len(seq):
        raise InputError(paths[0], "no token has a row for every logged layer")
    report.rows_kept = len(seq)

    num_layers = len(moe_layers)
    num_tokens = len(seq) // num_layers
    _, dense_seq = np.unique(seq, return_inverse=True)
    shape = _model_shape(paths, moe_layers, num_experts, top_k, options, metas, report)
    metadata = TraceMetadata(model=shape, provenance=_provenance(paths, options, metas, report))
    return Trace(
        metadata=metadata,
        seq_id=dense_seq[::num_layers].astype(np.int32),
        pos=pos[::num_layers].astype(np.int32),
        experts=experts.reshape(num_tokens, num_layers, top_k),
        weights=weights.reshape(num_tokens, num_layers, top_k),
    )


def _model_shape(
    paths: Sequence[str | os.PathLike[str]],
    moe_layers: np.ndarray,
    num_experts: int,
    top_k: int,
    options: ImportOptions,
    metas: list[dict],
    report: ImportReport,
) -> ModelShape:
    """The model's shape with ``moe_layers`` set to the logged layers."""
    model_id = next((str(m["model_id"]) for m in metas if m.get("model_id")), "")
    shape = options.model or _known_shape_for(model_id)
    if shape is not None and options.model is None:
        report.decisions.append(
            f"model sizes from the known shape {shape.name!r} (meta model_id {model_id!r})"
        )
    name = options.model_name or model_id or (shape.name if shape else Path(paths[0]).name.split(".")[0])
    layers = tuple(int(x) for x in moe_layers)
    if shape is None:
        report.decisions.append(
            "model sizes unknown (hidden size, bytes per expert = 0): pass --model to fill them"
        )
        return ModelShape(
            name=name,
            architecture="unknown",
            num_layers=max(layers) + 1,
            moe_layers=layers,
            num_experts=num_experts,
            top_k=top_k,
            hidden_size=0,
            expert_intermediate_size=0,
            bytes_per_expert=0,
        )
    if (shape.num_experts, shape.top_k) != (num_experts, top_k):
        raise InputError(
            paths[0],
            f"the logs have E={num_experts}, k={top_k} but model {shape.name!r} has "
            f"E={shape.num_experts}, k={shape.top_k}",
        )
    if max(layers) >= shape.num_layers:
        raise InputError(
            paths[0], f"layer {max(layers)} logged but model {shape.name!r} has {shape.num_layers}"
        )
    if len(layers) < shape.num_moe_layers:
        report.decisions.append(f"partial trace: {len(layers)} of {shape.num_moe_layers} MoE layers logged")
    return dataclasses.replace(shape, name=name, moe_layers=layers)


def _known_shape_for(model_id: str) -> ModelShape | None:
    """The KNOWN_SHAPES entry whose key starts the model id's last part (``OLMoE-1B-7B-0924``)."""
    tail = model_id.rsplit("/", 1)[-1].lower()
    matches = [key for key in KNOWN_SHAPES if tail.startswith(key)]
    return KNOWN_SHAPES[max(matches, key=len)] if matches else None


def _provenance(
    paths: Sequence[str | os.PathLike[str]], options: ImportOptions, metas: list[dict], report: ImportReport
) -> Provenance:
    software: dict[str, str] = {}
    for meta in metas:
        for key, value in meta.items():
            if key.endswith("_version"):
                software[key.removesuffix("_version")] = str(value)
    recorder = ", ".join(f"{k} {v}" for k, v in sorted(software.items())) or "unknown (no meta line)"
    layouts = sorted(set(report.layouts.values()))
    notes = [
        f"routing logged by a third party and imported from JSON lines ({'/'.join(layouts)} layout); "
        f"recorder: {recorder}; weights as logged."
    ]
    if "typed" in layouts:
        notes.append(
            "Sequences are (request, forward pass): in batched decode a pass holds one token per request."
        )
    if report.malformed or report.incomplete_tokens:
        notes.append("Malformed rows and tokens lacking a logged layer were dropped (counts in the recipe).")
    return Provenance(
        origin="imported",
        source=", ".join(Path(p).name for p in paths),
        gpu=next((str(m["device"]) for m in metas if m.get("device")), ""),
        software=software,
        command=options.command,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        notes=" ".join(notes),
        recipe={
            "layout": options.layout,
            "drop_warmup": options.drop_warmup,
            "warmup_rows_dropped": dict(report.warmup_dropped),
            "malformed_rows": dict(report.malformed),
            "incomplete_tokens": report.incomplete_tokens,
            "meta": metas,
        },
    )
