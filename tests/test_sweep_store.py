"""The sweep result store: finished runs survive a crash, the table is rewritten atomically, keys unique."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sim.sweep_store import KEY_COLUMN, ResultStore, read_sweep_metadata
from traces.fileio import InputError


def _row(key: str, value: float) -> dict:
    return {KEY_COLUMN: key, "policy": "p", "mean_latency_s": value}


def test_added_runs_are_done_before_and_after_merge(tmp_path) -> None:
    store = ResultStore(tmp_path / "r.parquet")
    store.add(_row("b", 2.0))
    store.add(_row("a", 1.0))
    assert store.done_keys() == {"a", "b"}
    assert not store.path.exists()  # nothing merged yet: only part files
    table = store.merge({"name": "sweep"})
    assert table.column(KEY_COLUMN).to_pylist() == ["a", "b"]
    assert store.done_keys() == {"a", "b"}
    assert not store.parts_dir.exists()
    assert read_sweep_metadata(pq.read_table(store.path)) == {"name": "sweep"}


def test_merge_keeps_earlier_rows_and_metadata(tmp_path) -> None:
    store = ResultStore(tmp_path / "r.parquet")
    store.add(_row("a", 1.0))
    store.merge({"name": "first"})
    store.add(_row("c", 3.0))
    store.add(_row("a", 9.0))  # the same run again: the recorded row wins
    table = store.merge()
    assert table.to_pylist() == [_row("a", 1.0), _row("c", 3.0)]
    assert read_sweep_metadata(table) == {"name": "first"}


def test_a_crash_during_merge_leaves_the_old_table_and_the_parts(tmp_path, monkeypatch) -> None:
    store = ResultStore(tmp_path / "r.parquet")
    store.add(_row("a", 1.0))
    store.merge()
    store.add(_row("b", 2.0))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError):
        store.merge()
    monkeypatch.undo()
    assert pq.read_table(store.path).column(KEY_COLUMN).to_pylist() == ["a"]
    assert store.done_keys() == {"a", "b"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_table_without_run_keys_is_refused(tmp_path) -> None:
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="not a sweep results table"):
        ResultStore(tmp_path / "other.parquet").done_keys()


def test_merge_removes_temporary_files_of_writers_killed_mid_write(tmp_path) -> None:
    store = ResultStore(tmp_path / "r.parquet")
    store.add(_row("a", 1.0))
    (store.parts_dir / ".b.parquet.x1y2.parquet.tmp").write_bytes(b"half a row")
    assert store.done_keys() == {"a"}
    store.merge()
    assert not store.parts_dir.exists()
