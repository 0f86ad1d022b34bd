"""Numeric options are checked by argparse, by one set of rules (``moe_prefetch.argtypes``), before any
work: a value out of range is a usage error naming the option, exit code 2, nothing written."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_prefetch.argtypes import (
    fraction,
    fraction_or_zero,
    int_in_range,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from moe_prefetch.cli import main


@given(st.integers(-(10**6), 10**6))
def test_integer_types_accept_exactly_their_range(value: int) -> None:
    for parse, low, high in (
        (positive_int, 1, None),
        (non_negative_int, 0, None),
        (int_in_range(2, 9), 2, 9),
    ):
        inside = value >= low and (high is None or value <= high)
        if inside:
            assert parse(str(value)) == value
        else:
            with pytest.raises(argparse.ArgumentTypeError, match=f"got '{value}'"):
                parse(str(value))


@pytest.mark.parametrize(
    ("parse", "accepted", "refused"),
    [
        (positive_float, ["1e-9", "4", "0.5"], ["0", "-1", "nan", "inf", "x"]),
        (non_negative_float, ["0", "0.01"], ["-0.1", "nan", "-inf"]),
        (fraction, ["1", "0.05", "1e-3"], ["0", "1.01", "-0.2", "nan"]),
        (fraction_or_zero, ["0", "1", "0.25"], ["-0.01", "1.5", "nan"]),
    ],
)
def test_float_types_accept_finite_numbers_in_their_range(parse, accepted, refused) -> None:
    for text in accepted:
        assert parse(text) == float(text)
    for text in refused:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(text)


def test_a_non_number_is_refused_with_the_range_it_needed() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer >= 1, got '3\.5'"):
        positive_int("3.5")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ["trace", "info", "t.parquet", "--cache-slots", "-1"],
            "argument --cache-slots: must be an integer >= 1",
        ),
        (["trace", "import", "a.jsonl", "--out", "t.parquet", "--top-k", "0"], "argument --top-k"),
        (
            ["trace", "import", "a.jsonl", "--out", "t.parquet", "--num-experts", "-2"],
            "argument --num-experts",
        ),
        (
            ["trace", "import", "a.jsonl", "--out", "t.parquet", "--drop-warmup", "some"],
            "argument --drop-warmup: must be 'auto' or an integer >= 0, got 'some'",
        ),
        (
            [
                "train-reference",
                "--recipe",
                "phi-mini-moe-like",
                "--corpus",
                "c",
                "--out",
                "o",
                "--max-steps",
                "0",
            ],
            "argument --max-steps: must be an integer >= 1, got '0'",
        ),
        (["train-reference", "--minutes", "0"], "argument --minutes: must be a number > 0"),
        (["train-reference", "--eval-tokens", "-1"], "argument --eval-tokens"),
        (["collect", "--max-tokens", "0"], "argument --max-tokens: must be an integer >= 1"),
        (["collect", "--max-tokens", "-5"], "argument --max-tokens"),
        (["collect", "--shard-tokens", "0"], "argument --shard-tokens"),
        (["collect", "--seq-len", "1"], "argument --seq-len: must be an integer >= 2, got '1'"),
        (["collect", "--batch-size", "0"], "argument --batch-size"),
        (
            ["corpus", "build", "--out", "b", "--vocab-size", "256"],
            "argument --vocab-size: must be an integer in",
        ),
        (
            ["corpus", "build", "--out", "b", "--test-fraction", "0"],
            "argument --test-fraction: must be a fraction",
        ),
        (["corpus", "build", "--out", "b", "--min-chars", "-1"], "argument --min-chars"),
        (["simulate", "t.parquet", "--cache-slots", "-1"], "argument --cache-slots: must be an integer >= 0"),
        (
            ["simulate", "t.parquet", "--cache-fraction", "1.5"],
            "argument --cache-fraction: must be a fraction",
        ),
        (["simulate", "t.parquet", "--batch-size", "0"], "argument --batch-size"),
        (["simulate", "t.parquet", "--warmup-steps", "-1"], "argument --warmup-steps"),
        (["simulate", "t.parquet", "--timeline", "-3"], "argument --timeline"),
        (["simulate", "t.parquet", "--max-tokens", "0"], "argument --max-tokens"),
        (
            ["sweep", "s.toml", "--out", "r.parquet", "--workers", "0"],
            "argument --workers: must be an integer >= 1",
        ),
        (["predictor", "train", "--hidden", "0"], "argument --hidden"),
        (["predictor", "train", "--epochs", "0"], "argument --epochs"),
        (["predictor", "train", "--batch-size", "0"], "argument --batch-size"),
        (["predictor", "train", "--patience", "0"], "argument --patience"),
        (["predictor", "train", "--lr", "0"], "argument --lr: must be a number > 0"),
        (["predictor", "train", "--weight-decay", "-0.1"], "argument --weight-decay: must be a number >= 0"),
        (["predictor", "evaluate", "--frequency-window", "0"], "argument --frequency-window"),
        (["predictor", "evaluate", "--k-prime", "0"], "argument --k-prime"),
        (["predictor", "evaluate", "--m", "-1"], "argument --m"),
        (["predictor", "evaluate", "--bootstrap", "-1"], "argument --bootstrap"),
    ],
)
def test_an_out_of_range_number_is_a_usage_error_naming_the_option(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # whatever the command would write lands here: nothing may appear
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("usage: moe-prefetch ")
    assert lines[-1].startswith("moe-prefetch ") and f"error: {error}" in lines[-1]
    assert not any(tmp_path.iterdir())
