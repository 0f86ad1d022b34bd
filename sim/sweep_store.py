"""The results table of a sweep: ONE Parquet table keyed by ``run_key``, made crash-safe by part files.

Each finished run is written at once, atomically, as a one-row part file in ``<table>.parts/``. ``merge``
folds the parts into the table with an atomic rewrite (rows sorted by key, one per key) and deletes them.
So a killed sweep loses nothing that finished, a reader never sees a half-written table, and the keys of
the table plus those of the parts are exactly the runs already done. One sweep at a time per table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from traces.fileio import InputError, atomic_write

KEY_COLUMN = "run_key"
SWEEP_METADATA_KEY = b"moe_prefetch_sweep"
PARTS_SUFFIX = ".parts"

Row = dict[str, Any]


class ResultStore:
    """One Parquet table of run results keyed by ``run_key``, made crash-safe by per-run part files."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.parts_dir = self.path.with_name(self.path.name + PARTS_SUFFIX)

    def done_keys(self) -> set[str]:
        """Keys of every finished run: those in the table and those still waiting in part files."""
        keys = {p.stem for p in self._part_files()}
        if self.path.exists():
            keys.update(self._read_table().column(KEY_COLUMN).to_pylist())
        return keys

    def has_parts(self) -> bool:
        """Whether finished runs are waiting to be merged into the table."""
        return bool(self._part_files())

    def read(self) -> pa.Table:
        """The merged table (without runs still waiting in part files)."""
        return self._read_table()

    def add(self, row: Row) -> None:
        """Record one finished run at once (atomically), so that a crash right after loses nothing."""
        table = pa.Table.from_pylist([row])
        with atomic_write(self.parts_dir / f"{row[KEY_COLUMN]}.parquet", suffix=".parquet") as tmp:
            pq.write_table(table, tmp)

    def merge(self, metadata: Mapping[str, Any] | None = None) -> pa.Table:
        """Fold the part files into the table (atomic rewrite, rows sorted by key) and delete the parts.

        ``metadata`` (JSON-able) is stored in the table's schema under ``SWEEP_METADATA_KEY``; without it
        the table keeps the metadata it had.
        """
        parts = self._part_files()
        tables = [self._read_table()] if self.path.exists() else []
        tables += [pq.read_table(p) for p in parts]
        if not tables:
            raise ValueError(f"{self.path}: nothing to merge")
        merged = _unique_by_key(pa.concat_tables(tables, promote_options="permissive"))
        old_meta = (tables[0].schema.metadata or {}) if self.path.exists() else {}
        meta_bytes = (
            json.dumps(metadata).encode() if metadata is not None else old_meta.get(SWEEP_METADATA_KEY)
        )
        if meta_bytes is not None:
            merged = merged.replace_schema_metadata({SWEEP_METADATA_KEY: meta_bytes})
        with atomic_write(self.path, suffix=".parquet") as tmp:
            pq.write_table(merged, tmp, compression="zstd")
        for part in parts:
            part.unlink()
        # temporary files of writers killed mid-write hold no finished run (one sweep per table at a time)
        for stale in self.parts_dir.glob(".*.tmp") if self.parts_dir.exists() else ():
            stale.unlink()
        if self.parts_dir.exists() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()
        return merged

    def _part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(self.parts_dir.glob("*.parquet"))

    def _read_table(self) -> pa.Table:
        try:
            table = pq.read_table(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(self.path, f"existing results table is unreadable ({exc})") from None
        if KEY_COLUMN not in table.column_names:
            raise InputError(self.path, f"not a sweep results table (no '{KEY_COLUMN}' column)")
        return table


def _unique_by_key(table: pa.Table) -> pa.Table:
    """Rows sorted by key, one per key (a run finished twice gives the same row; keep the first)."""
    keys = table.column(KEY_COLUMN).to_pylist()
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    order = sorted(first.values(), key=lambda i: keys[i])
    return table.take(pa.array(order, type=pa.int64()))


def read_sweep_metadata(table: pa.Table) -> dict[str, Any]:
    """The sweep description stored with a results table ({} when absent)."""
    raw = (table.schema.metadata or {}).get(SWEEP_METADATA_KEY)
    return json.loads(raw) if raw else {}
