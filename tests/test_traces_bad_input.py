"""Every kind of broken trace gets exit code 2 and exactly one stderr line naming the file and the problem,
never a traceback; an interrupted write leaves no file behind."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moe_prefetch.cli import main
from traces.schema import METADATA_KEY, ModelShape
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import to_table, write_trace

SHAPE = ModelShape(
    name="tiny",
    architecture="mixtral",
    num_layers=3,
    moe_layers=(0, 1, 2),
    num_experts=8,
    top_k=2,
    hidden_size=16,
    expert_intermediate_size=32,
    bytes_per_expert=3 * 16 * 32 * 2,
)


def good_table() -> pa.Table:
    spec = SyntheticSpec(SHAPE, num_sequences=2, tokens_per_sequence=5, predictor_accuracy={"p": 0.8}, seed=1)
    return to_table(generate_trace(spec))


def metadata_doc(table: pa.Table) -> dict:
    return json.loads(table.schema.metadata[METADATA_KEY])


def with_metadata(table: pa.Table, doc: dict) -> pa.Table:
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(doc).encode()})


def replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def edit_list(table: pa.Table, name: str, row: int, new: list) -> pa.Table:
    values = table.column(name).to_pylist()
    values[row] = new
    return replace_column(table, name, pa.array(values, type=table.schema.field(name).type))


def drop_row(table: pa.Table, row: int) -> pa.Table:
    keep = np.ones(table.num_rows, dtype=bool)
    keep[row] = False
    return table.filter(pa.array(keep))


def set_model(table: pa.Table, **fields) -> pa.Table:
    doc = metadata_doc(table)
    doc["model"].update(fields)
    return with_metadata(table, doc)


def write_table(table: pa.Table) -> Callable[[Path], None]:
    return lambda path: pq.write_table(table, path)


def not_parquet(path: Path) -> None:
    path.write_text("seq_id,pos,layer\n0,0,0\n")


def truncated(path: Path) -> None:
    pq.write_table(good_table(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


# (case id, how to make the broken file, words the single error line must contain)
CASES = [
    ("not-parquet", not_parquet, "not a readable Parquet file"),
    ("truncated", truncated, "not a readable Parquet file"),
    ("empty", empty_file, "not a readable Parquet file"),
    ("missing-column", lambda p: pq.write_table(good_table().drop_columns(["weights"]), p), "'weights'"),
    (
        "mistyped-column",
        lambda p: pq.write_table(
            replace_column(
                good_table(), "seq_id", pa.array(good_table().column("seq_id").to_numpy(), pa.int64())
            ),
            p,
        ),
        "column 'seq_id' has type int64, expected int32",
    ),
    (
        "mistyped-list-column",
        lambda p: pq.write_table(
            replace_column(
                good_table(),
                "experts",
                pa.array(good_table().column("experts").to_pylist(), pa.list_(pa.int32())),
            ),
            p,
        ),
        "column 'experts' has type list<element: int32>, expected list<item: int16>",
    ),
    (
        "expert-out-of-range",
        lambda p: pq.write_table(edit_list(good_table(), "experts", 4, [1, 8]), p),
        "expert id 8",
    ),
    (
        "negative-expert",
        lambda p: pq.write_table(edit_list(good_table(), "experts", 4, [-3, 1]), p),
        "expert id -3",
    ),
    (
        "wrong-k",
        lambda p: pq.write_table(edit_list(good_table(), "experts", 7, [1, 2, 3]), p),
        "3 entries, expected 2",
    ),
    (
        "expert-twice",
        lambda p: pq.write_table(edit_list(good_table(), "experts", 2, [5, 5]), p),
        "appears twice",
    ),
    (
        "duplicate-row",
        lambda p: pq.write_table(pa.concat_tables([good_table(), good_table().slice(3, 1)]), p),
        "duplicate row",
    ),
    ("missing-row", lambda p: pq.write_table(drop_row(good_table(), 4), p), "missing rows for layers [1]"),
    (
        "unknown-schema-version",
        lambda p: pq.write_table(
            with_metadata(good_table(), metadata_doc(good_table()) | {"schema_version": 7}), p
        ),
        "unknown schema version 7",
    ),
    (
        "no-metadata",
        lambda p: pq.write_table(good_table().replace_schema_metadata({}), p),
        "not a moe-prefetch trace",
    ),
    (
        "metadata-not-json",
        lambda p: pq.write_table(good_table().replace_schema_metadata({METADATA_KEY: b"{oops"}), p),
        "metadata is not valid JSON",
    ),
    (
        "metadata-missing-field",
        lambda p: pq.write_table(
            with_metadata(
                good_table(), {k: v for k, v in metadata_doc(good_table()).items() if k != "model"}
            ),
            p,
        ),
        "metadata is malformed",
    ),
    (
        "metadata-layers-contradict-rows",
        lambda p: pq.write_table(set_model(good_table(), moe_layers=[0, 1, 2, 3], num_layers=4), p),
        "missing rows for layers [3]",
    ),
    (
        "metadata-layer-absent",
        lambda p: pq.write_table(set_model(good_table(), moe_layers=[0, 1]), p),
        "layer 2 is not in metadata model.moe_layers",
    ),
    (
        "metadata-top-k-contradicts-rows",
        lambda p: pq.write_table(set_model(good_table(), top_k=3), p),
        "expected 3 (metadata model.top_k)",
    ),
    (
        "metadata-num-experts-contradicts-rows",
        lambda p: pq.write_table(set_model(good_table(), num_experts=2), p),
        "(metadata model.num_experts)",
    ),
    (
        "metadata-unknown-origin",
        lambda p: pq.write_table(
            with_metadata(
                good_table(),
                metadata_doc(good_table())
                | {"provenance": metadata_doc(good_table())["provenance"] | {"origin": "dreamt"}},
            ),
            p,
        ),
        "provenance.origin='dreamt' is unknown",
    ),
    (
        "prediction-without-metadata",
        lambda p: pq.write_table(
            with_metadata(good_table(), metadata_doc(good_table()) | {"predictors": []}), p
        ),
        "column 'pred.p' has no entry in metadata.predictors",
    ),
    (
        "predictor-without-column",
        lambda p: pq.write_table(good_table().drop_columns(["pred.p"]), p),
        "metadata lists predictor 'p' but its column is absent",
    ),
    (
        "prediction-out-of-range",
        lambda p: pq.write_table(edit_list(good_table(), "pred.p", 1, [0, 9]), p),
        "expert id 9",
    ),
    (
        "null-seq-id",
        lambda p: pq.write_table(
            replace_column(good_table(), "seq_id", pa.array([None] * 30, pa.int32())), p
        ),
        "null value",
    ),
]


@pytest.mark.parametrize("command", ["validate", "info"])
@pytest.mark.parametrize(("make", "problem"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_trace_is_one_line_exit_2(tmp_path, capsys, command, make, problem):
    path = tmp_path / "broken.parquet"
    make(path)
    assert main(["trace", command, str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"moe-prefetch: error: {path}: ")
    assert problem in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_good_table_of_these_tests_is_valid(tmp_path, capsys):
    """The broken files above differ from a valid one only by the named defect."""
    path = tmp_path / "good.parquet"
    pq.write_table(good_table(), path)
    assert main(["trace", "validate", str(path)]) == 0
    assert "ok (10 tokens x 3 MoE layers)" in capsys.readouterr().out


def test_missing_file_is_one_line_exit_2(tmp_path, capsys):
    assert main(["trace", "validate", str(tmp_path / "absent.parquet")]) == 2
    assert capsys.readouterr().err == f"moe-prefetch: error: {tmp_path / 'absent.parquet'}: no such file\n"


@pytest.mark.parametrize("case", ["truncated", "duplicate-row"])
def test_installed_command_reports_bad_input_without_traceback(tmp_path, case):
    _, make, problem = next(c for c in CASES if c[0] == case)
    path = tmp_path / "broken.parquet"
    make(path)
    result = subprocess.run(
        [sys.executable, "-m", "moe_prefetch", "trace", "validate", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr and problem in result.stderr
    assert "Traceback" not in result.stderr


class Interrupted(Exception):
    pass


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    trace = generate_trace(SyntheticSpec(SHAPE, num_sequences=1, tokens_per_sequence=4))

    def write_half_then_fail(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise Interrupted

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(Interrupted):
        write_trace(trace, tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    trace = generate_trace(SyntheticSpec(SHAPE, num_sequences=1, tokens_per_sequence=4))
    write_trace(trace, path)
    before = path.read_bytes()

    def fail(table, where, **kwargs):
        Path(where).write_bytes(b"garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", fail)
    with pytest.raises(KeyboardInterrupt):
        write_trace(trace, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
