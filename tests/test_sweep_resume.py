"""A sweep killed midway keeps every finished run, never leaves a half-written table, and resumes to the
same table an uninterrupted sweep writes; the local pool and Ray give identical tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest

from moe_prefetch.cli import main
from sim.sweep import load_sweep, run_sweep
from sim.sweep_store import KEY_COLUMN, ResultStore
from traces.shapes import KNOWN_SHAPES
from traces.synthetic import SyntheticSpec, generate_trace
from traces.trace import write_trace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_sweep(tmp_path, tokens_per_sequence: int, policies: list[str], pcie: list[float]):
    spec = SyntheticSpec(
        KNOWN_SHAPES["olmoe-1b-7b"],
        num_sequences=2,
        tokens_per_sequence=tokens_per_sequence,
        predictor_accuracy={"pre-attention": 0.9, "cross-layer": 0.7},
        prediction_width=10,
        include_oracle=True,
    )
    write_trace(generate_trace(spec), tmp_path / "trace.parquet")
    path = tmp_path / "sweep.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [sweep]
            name = "test"
            traces = ["trace.parquet"]
            policies = {policies!r}
            cache_fractions = [0.1, 0.25]
            [hardware]
            pcie_gbps = {pcie!r}
            """
        ).replace("'", '"')
    )
    return path


def _rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.mark.slow
def test_sweep_killed_midway_resumes_to_the_uninterrupted_table(tmp_path, capsys) -> None:
    sweep = _write_sweep(
        tmp_path, 150, ["on-demand", "pre-attention", "cross-layer", "oracle"], [16.0, 32.0, 64.0]
    )
    total = load_sweep(sweep).num_runs  # 4 policies x 2 caches x 3 bandwidths = 24
    out = tmp_path / "results.parquet"
    store = ResultStore(out)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moe_prefetch",
            "sweep",
            str(sweep),
            "--out",
            str(out),
            "--workers",
            "2",
            "--quiet",
        ],
        cwd=REPO,
        start_new_session=True,  # its pool workers share its process group: kill them all at once
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(list(store.parts_dir.glob("*.parquet"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    finished = {p.stem for p in store.parts_dir.glob("*.parquet")}
    assert 3 <= len(finished) < total, f"the kill should land midway, not after {len(finished)} runs"
    assert not out.exists()  # the table is written only by a merge, never half-way
    assert store.done_keys() == finished

    assert main(["sweep", str(sweep), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    assert (
        f"{total - len(finished)} run(s) done, {len(finished)} already in the table"
        in capsys.readouterr().out
    )
    resumed = _rows(out)
    assert len(resumed) == total and finished <= {r[KEY_COLUMN] for r in resumed}
    assert not store.parts_dir.exists()

    clean = tmp_path / "clean.parquet"
    run_sweep(load_sweep(sweep), clean, workers=1, progress=False)
    assert resumed == _rows(clean)

    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0  # nothing left to do
    assert f"0 run(s) done, {total} already in the table" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.ray
def test_ray_tasks_give_the_same_table_as_the_local_pool(tmp_path) -> None:
    sweep = _write_sweep(tmp_path, 30, ["on-demand", "pre-attention", "oracle"], [16.0])
    spec = load_sweep(sweep)
    local = run_sweep(spec, tmp_path / "local.parquet", workers=2, progress=False)
    assert (
        main(["sweep", str(sweep), "--out", str(tmp_path / "ray.parquet"), "--ray", "local", "--quiet"]) == 0
    )
    assert local.table.num_rows == spec.num_runs == 6
    assert _rows(tmp_path / "ray.parquet") == local.table.to_pylist()


def test_run_key_names_the_simulator_model_version(tmp_path) -> None:
    from sim.config import SIM_MODEL_VERSION
    from sim.sweep import expand, run_key

    config = expand(load_sweep(_write_sweep(tmp_path, 8, ["on-demand"], [16.0])))[0].config
    assert run_key(config) == run_key(config, SIM_MODEL_VERSION)  # stable: no clock, no git hash
    assert run_key(config, SIM_MODEL_VERSION + 1) != run_key(config)


def test_a_resumed_sweep_after_a_model_change_reruns_every_point(tmp_path, monkeypatch) -> None:
    import sim.sweep

    sweep = _write_sweep(tmp_path, 8, ["on-demand"], [16.0])
    out = tmp_path / "r.parquet"
    first = run_sweep(load_sweep(sweep), out, workers=1, progress=False)
    assert first.ran == 2 and run_sweep(load_sweep(sweep), out, workers=1, progress=False).ran == 0
    monkeypatch.setattr(sim.sweep, "SIM_MODEL_VERSION", sim.sweep.SIM_MODEL_VERSION + 1)
    again = run_sweep(load_sweep(sweep), out, workers=1, progress=False)
    assert again.ran == 2 and again.skipped == 0  # old rows are not taken for results of the new model
    versions = [r["sim_model_version"] for r in _rows(out)]
    assert (
        sorted(versions)
        == [first.table.column("sim_model_version")[0].as_py()] * 2 + [sim.sweep.SIM_MODEL_VERSION] * 2
    )
    assert {r["sim_model_version"] for r in again.grid_table().to_pylist()} == {sim.sweep.SIM_MODEL_VERSION}
