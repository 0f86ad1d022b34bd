"""What a report is built from, and how files given on the command line are recognised.

``moe-prefetch report`` accepts any mix of files and directories; every Parquet file found is classified
by its content (schema metadata and columns), never by its name: a trace, simulation results (simulated
or live, e.g. the ``sim.parquet`` and ``live.parquet`` of ``moe-prefetch validate``), a sweep table or a
predictor accuracy table. The demo builds the same ``ReportInputs`` in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from predictor.tables import COLUMNS as ACCURACY_COLUMNS
from predictor.tables import read_metadata as read_accuracy_metadata
from sim.config import trace_fingerprint
from sim.results import RESULTS_METADATA_KEY, SimResult, read_results
from sim.sweep_store import KEY_COLUMN, PARTS_SUFFIX, SWEEP_METADATA_KEY, read_sweep_metadata
from traces.fileio import InputError
from traces.schema import METADATA_KEY as TRACE_METADATA_KEY
from traces.trace import Trace, read_trace

#: the folder holding the ``reports`` package: paths under it are shown relative to it
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TraceInput:
    """A routing trace, the name the report uses for it, and what a reader should know about it (for
    example that it is another trace replayed on a different model shape)."""

    name: str
    source: str
    trace: Trace
    description: str = ""

    @property
    def synthetic(self) -> bool:
        return self.trace.metadata.provenance.origin == "synthetic"


@dataclass(frozen=True)
class TableInput:
    """A results table read from ``source`` (a path, or a description for in-memory tables)."""

    source: str
    table: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False


@dataclass(frozen=True)
class RunInput:
    """One simulated (or live) run and the trace it replayed, as far as the inputs tell.

    ``synthetic`` is None when the run's trace is not among the inputs (its origin is then unknown).
    ``validation_only``: the run is there to check the simulator against the GPU (the validation
    section) and stays out of the policy comparison.
    """

    result: SimResult
    trace_name: str
    source: str
    synthetic: bool | None
    trace_description: str = ""
    validation_only: bool = False

    @property
    def policy(self) -> str:
        return self.result.config.policy.label()

    @property
    def setting(self) -> str:
        """Everything but the policy: runs with the same setting are compared with each other."""
        config = self.result.config
        options = config.options
        parts = [self.trace_name, config.hardware.meta.name, config.cache.label()]
        if options.batch_size != 1:
            parts.append(f"batch {options.batch_size}")
        if options.host_memory != "pinned":
            parts.append(f"{options.host_memory} host memory")
        if options.compute_scale != 1.0:
            parts.append(f"compute x{options.compute_scale:g}")
        if self.result.clock != "sim":
            parts.append(f"{self.result.clock} clock")
        return " · ".join(parts)

    @property
    def label(self) -> str:
        return f"{self.policy} ({self.setting})"


def run_inputs(
    results: Sequence[SimResult],
    traces: Sequence[TraceInput],
    source: str,
    replayed: Mapping[str, TraceInput] | None = None,
) -> list[RunInput]:
    """Wrap results, naming each run's trace by matching its fingerprint against the known traces.

    ``replayed`` maps further fingerprints to traces, e.g. those of the first N tokens of a trace that
    the runs replayed.
    """
    by_fingerprint = {trace_fingerprint(t.trace): t for t in traces} | dict(replayed or {})
    runs = []
    for result in results:
        trace = by_fingerprint.get(result.config.trace)
        if trace is None:
            name = f"{result.config.shape.name} trace {result.config.trace[:6]}"
            runs.append(RunInput(result, name, source, None))
        else:
            runs.append(RunInput(result, trace.name, source, trace.synthetic, trace.description))
    return runs


@dataclass
class ReportInputs:
    """Everything one report shows; each list may be empty (its sections are then omitted).

    ``replayed_traces``: traces the runs replayed that were made from the input traces (e.g. the demo's
    replays on public model shapes); the provenance lists them, the trace sections do not analyse them.
    """

    traces: list[TraceInput] = field(default_factory=list)
    replayed_traces: list[TraceInput] = field(default_factory=list)
    runs: list[RunInput] = field(default_factory=list)
    sweeps: list[TableInput] = field(default_factory=list)
    accuracy: list[TableInput] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def comparison_runs(self) -> list[RunInput]:
        """The runs the policy sections compare (all but validation-only runs)."""
        return [r for r in self.runs if not r.validation_only]

    def shape_of(self, model: str) -> tuple[int, int] | None:
        """(experts, top-k) of a model known from the input traces, or None."""
        for item in self.traces:
            shape = item.trace.metadata.model
            if shape.name == model:
                return shape.num_experts, shape.top_k
        return None

    def synthetic_sources(self) -> list[str]:
        """Every input that is synthetic, for the page's banner."""
        names = [f"trace {t.name}" for t in self.traces if t.synthetic]
        for kind, tables in (("sweep", self.sweeps), ("accuracy", self.accuracy)):
            names += [f"{kind} table {t.source}" for t in tables if t.synthetic]
        names += sorted(
            {
                f"runs on trace {r.trace_name}"
                for r in self.runs
                if r.synthetic and not any(t.name == r.trace_name for t in self.traces)
            }
        )
        return names


def display_path(source: str) -> str:
    """``source`` as a report shows it: an absolute path inside the repository (or the working directory)
    relative to it, any other absolute path as its file name; relative paths and descriptions unchanged.
    A report is shared: it should not show the local folders of the machine that wrote it."""
    path = Path(source)
    if not path.is_absolute():
        return source
    for root in (REPO_ROOT, Path.cwd().resolve()):
        if path.resolve().is_relative_to(root):
            return path.resolve().relative_to(root).as_posix()
    return path.name


def find_result_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The Parquet files named, and those under the directories named (sorted, recursively)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.parquet") if not _is_scratch(p))
        elif path.exists():
            found.append(path)
        else:
            raise InputError(path, "no such file or directory")
    return found


def load_inputs(paths: Sequence[str | os.PathLike[str]]) -> ReportInputs:
    """Read and classify every result file under ``paths``; an unrecognised file is an InputError."""
    inputs = ReportInputs()
    files = find_result_files(paths)
    if not files:
        raise InputError(", ".join(str(p) for p in paths), "no Parquet result files found")
    results: list[tuple[Path, list[SimResult]]] = []
    for path in files:
        schema = _read_schema(path)
        if RESULTS_METADATA_KEY in (schema.metadata or {}):
            results.append((path, read_results(path)))  # named after the traces are all known
            continue
        for recognises, load in _KINDS:
            if recognises(schema):
                load(path, inputs)
                break
        else:
            raise InputError(path, "not a trace, simulation result, sweep or accuracy table of moe-prefetch")
    for path, batch in results:
        inputs.runs += run_inputs(batch, inputs.traces, str(path))
    return inputs


# ------------------------------------------------------------------------------------- kinds of file


def _is_trace(schema: pa.Schema) -> bool:
    return TRACE_METADATA_KEY in (schema.metadata or {})


def _load_trace(path: Path, inputs: ReportInputs) -> None:
    inputs.traces.append(TraceInput(name=path.stem, source=str(path), trace=read_trace(path)))


def _is_sweep(schema: pa.Schema) -> bool:
    return SWEEP_METADATA_KEY in (schema.metadata or {}) or KEY_COLUMN in schema.names


def _load_sweep(path: Path, inputs: ReportInputs) -> None:
    table = _read_table(path)
    synthetic = (
        "trace_origin" in table.column_names and "synthetic" in table.column("trace_origin").to_pylist()
    )
    inputs.sweeps.append(TableInput(str(path), table, read_sweep_metadata(table), synthetic))


def _is_accuracy(schema: pa.Schema) -> bool:
    return set(ACCURACY_COLUMNS) <= set(schema.names)


def _load_accuracy(path: Path, inputs: ReportInputs) -> None:
    table = _read_table(path)
    metadata = read_accuracy_metadata(table)
    synthetic = any(m.get("origin") == "synthetic" for m in metadata.get("models", {}).values())
    inputs.accuracy.append(TableInput(str(path), table, metadata, synthetic))


_KINDS = (
    (_is_trace, _load_trace),
    (_is_sweep, _load_sweep),
    (_is_accuracy, _load_accuracy),
)


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def _is_scratch(path: Path) -> bool:
    """Temporary files of atomic writes and unmerged sweep parts are not results."""
    return path.name.startswith(".") or any(part.endswith(PARTS_SUFFIX) for part in path.parts)
