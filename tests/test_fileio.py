"""Shared file helpers: versioned JSON manifests are checked in one place for every reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor.preattention import read_manifest
from traces.fileio import InputError, read_versioned_json


def test_manifest_of_the_right_format_and_version_is_returned(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"format": "x", "version": 2, "payload": 7}')
    assert read_versioned_json(path, "x", 2)["payload"] == 7


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{broken", "not valid JSON"),
        ('["x", 2]', "format is not 'x'"),
        ('{"format": "y", "version": 2}', "format is not 'x'"),
        ('{"format": "x", "version": 3}', "unknown version 3 (this tool reads 2)"),
    ],
)
def test_bad_manifest_is_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        read_versioned_json(path, "x", 2)
    message = str(error.value)
    assert message.startswith(f"{path}: {problem}")
    assert "\n" not in message


def test_predictor_directory_with_a_foreign_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "predictors.json").write_text('{"format": "something-else", "version": 1}')
    with pytest.raises(InputError, match="format is not"):
        read_manifest(tmp_path)
