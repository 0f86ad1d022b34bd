"""``moe-prefetch simulate`` end to end: the table, result files, and one-line errors on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moe_prefetch.cli import main
from sim.results import read_results
from sim.testing import tiny_shape, tiny_trace
from traces.trace import write_trace


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "trace.parquet"
    write_trace(tiny_trace(tiny_shape(), tokens_per_sequence=16), path)
    return path


def test_simulate_prints_one_row_per_policy_and_writes_results(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.parquet"
    code = main(
        [
            "simulate",
            str(trace_file),
            "--hardware",
            "a100-pcie-gen4",
            "--policy",
            "on-demand,pre-attention:m=3,resident",
            "--cache-slots",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "synthetic" in lines[0] and "datasheet" in lines[0]
    rows = [line.split()[0] for line in lines[3:6]]
    assert rows == ["on-demand", "pre-attention:m=3", "resident"]
    assert [r.config.policy.label() for r in read_results(out)] == rows


def test_simulate_on_another_shape_maps_the_routing(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(trace_file), "--shape", "mixtral-8x7b", "--policy", "oracle"]) == 0
    captured = capsys.readouterr()
    assert "Mixtral" in captured.out and "retargeted" in captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policy", "clairvoyant"], "unknown policy"),
        (["--cache-slots", "1"], "cannot hold"),
        (["--hardware", "missing.toml"], "missing.toml: no such file"),
        (["--policy", "pre-attention:source=nothing"], "'nothing' is not in the trace"),
        (["--warmup-steps", "1000"], "warmup_steps 1000 leaves no decode step to measure"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    trace_file: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(trace_file), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unwritable_out_is_named_without_a_traceback(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "r.parquet"
    assert main(["simulate", str(trace_file), "--policy", "on-demand", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{out}: cannot write the results" in err and len(err.splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def test_missing_trace_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(tmp_path / "none.parquet")]) == 2
    assert "none.parquet: no such file" in capsys.readouterr().err


def test_importing_sim_loads_neither_torch_nor_simpy() -> None:
    code = "import sys, sim; sim.PolicySpec; print('torch' in sys.modules, 'simpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_table_shows_an_unmeasured_latency_as_n_a() -> None:
    from moe_prefetch.commands.simulate import COLUMNS, format_table

    row = {key: 0.0 for _, _, key in COLUMNS} | {"policy": "on-demand", "hits": 1, "late": 0, "misses": 0}
    row |= {"wasted": 0, "bytes_moved": 0.0, "mean_latency_s": float("nan"), "p99_latency_s": 0.002}
    cells = format_table([row]).splitlines()[2].split()
    assert cells[:4] == ["on-demand", "n/a", "0.000", "2.000"]
