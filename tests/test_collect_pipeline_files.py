"""The GPU pipeline and shipping scripts' result files: never half-written, never from an earlier run."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(file_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{Path(file_name).stem}_under_test", SCRIPTS / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_archive_cut_short_leaves_the_previous_archive_intact(tmp_path, monkeypatch):
    pipeline = load_script("gpu_pipeline.py")
    work = tmp_path / "work"
    work.mkdir()
    (work / "pipeline.log").write_text("log\n")
    (work / "summary.json").write_text("{}")
    out = tmp_path / "out" / "m.results.tar.gz"
    pipeline.pack_results("m", work, tmp_path / "checkpoint", out)
    before = out.read_bytes()

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "add", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.pack_results("m", work, tmp_path / "checkpoint", out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.results.tar.gz"]


def test_parallel_child_that_dies_early_is_reported_failed_not_by_a_stale_summary(tmp_path, monkeypatch):
    pipeline = load_script("gpu_pipeline.py")
    stale = tmp_path / "work" / "m"
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text(json.dumps({"model": "m", "status": "ok", "seconds": {}}))

    class DiesAtOnce:
        def __init__(self, *_args, **_kwargs) -> None:
            pass

        def wait(self) -> int:
            return 1

    monkeypatch.setattr(pipeline.subprocess, "Popen", DiesAtOnce)
    summaries = pipeline.run_parallel(["m"], SimpleNamespace(work=tmp_path / "work"), ["--models", "m"])
    assert summaries == [{"model": "m", "status": "failed: exited with 1 before its summary"}]


def test_shipping_a_trace_cut_short_leaves_the_shipped_trace_intact(tmp_path, monkeypatch):
    ship = load_script("ship_traces.py")
    source = Path(__file__).resolve().parent.parent / "traces" / "data" / "phi-mini-moe-like.parquet"
    target = tmp_path / "data" / "m.parquet"
    target.parent.mkdir()
    target.write_bytes(b"the trace shipped before")

    def half_copy(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(ship.shutil, "copyfile", half_copy)
    with pytest.raises(KeyboardInterrupt):
        ship.copy_trace(source, target)
    assert target.read_bytes() == b"the trace shipped before"
    assert [p.name for p in target.parent.iterdir()] == ["m.parquet"]
