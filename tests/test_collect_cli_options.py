"""``moe-prefetch collect`` refuses bad devices in one line before it loads anything (bad sizes are usage
errors: tests/test_cli_argtypes.py)."""

from __future__ import annotations

import pytest
import torch

from moe_prefetch.cli import main


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--device", "nonsense"], "--device: unknown device 'nonsense'"),
    ],
)
def test_bad_option_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, problem) -> None:
    out = tmp_path / "trace.parquet"
    code = main(["collect", "--model", str(tmp_path / "model"), "--corpus", str(tmp_path / "c.tar.xz"),
                 "--out", str(out), "--activations", str(tmp_path / "acts"), *extra])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err
    assert not out.exists() and not (tmp_path / "acts").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_on_a_machine_without_a_gpu_is_one_line_exit_2(tmp_path, capsys) -> None:
    code = main(["collect", "--model", str(tmp_path / "model"), "--corpus", str(tmp_path / "c.tar.xz"),
                 "--out", str(tmp_path / "t.parquet"), "--device", "cuda"])  # fmt: skip
    assert code == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err
