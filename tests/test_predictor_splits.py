"""Splits are by sequence, deterministic from the sequence id, and close to the asked fractions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from predictor.data import ActivationView, split_view
from predictor.splits import SPLITS, SplitFractions, split_mask, split_of
from predictor.synthetic import planted_model, planted_source


@given(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=50))
def test_split_of_a_sequence_depends_only_on_its_id(ids: list[int]) -> None:
    ids_array = np.array(ids)
    alone = np.array([split_of(np.array([i]))[0] for i in ids])
    np.testing.assert_array_equal(split_of(ids_array), alone)
    np.testing.assert_array_equal(split_of(ids_array[::-1]), alone[::-1])


def test_split_sizes_follow_the_fractions() -> None:
    counts = np.bincount(split_of(np.arange(20000)), minlength=3) / 20000
    np.testing.assert_allclose(counts, [0.7, 0.1, 0.2], atol=0.015)
    counts = np.bincount(split_of(np.arange(20000), SplitFractions(0.5, 0.5, 0.0)), minlength=3) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.5, 0.0], atol=0.015)


def test_the_three_splits_partition_the_sequences() -> None:
    seq = np.arange(1000)
    masks = [split_mask(seq, s) for s in SPLITS]
    assert (sum(m.astype(int) for m in masks) == 1).all()
    with pytest.raises(ValueError, match="unknown split"):
        split_mask(seq, "dev")


def test_fractions_must_sum_to_one() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(0.5, 0.1, 0.1)


def test_split_views_never_share_a_sequence_and_cover_every_token() -> None:
    source = planted_source(planted_model(), num_sequences=30, seq_len=7)
    views = [split_view(source, s) for s in SPLITS]
    seqs = [set(v.seq_id.tolist()) for v in views]
    assert not (seqs[0] & seqs[1]) and not (seqs[0] & seqs[2]) and not (seqs[1] & seqs[2])
    assert sum(v.num_tokens for v in views) == ActivationView(source).num_tokens == 210


def test_numpy_side_of_predictor_imports_without_torch() -> None:
    code = (
        "import sys; import predictor.base, predictor.baselines, predictor.data, predictor.evaluate, "
        "predictor.metrics, predictor.ranking, predictor.splits, predictor.synthetic, predictor.tables; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
