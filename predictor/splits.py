"""Train/validation/test splits by sequence, deterministic from the sequence id alone.

Neighbouring tokens of one sequence share context, so splitting by token would leak; every token of a
sequence lands in the same split. The split of a sequence depends only on its ``seq_id`` (a fixed 64-bit
mix, SplitMix64's finaliser, mapped to [0, 1)), so the collector, training, evaluation and any later tool
agree without storing a split file, and adding sequences never moves existing ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of sequences per split; they must be non-negative and sum to 1."""

    train: float = 0.7
    val: float = 0.1
    test: float = 0.2

    def __post_init__(self) -> None:
        values = (self.train, self.val, self.test)
        if min(values) < 0 or abs(sum(values) - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {values}")


DEFAULT_FRACTIONS = SplitFractions()


def sequence_unit_interval(seq_id: np.ndarray) -> np.ndarray:
    """A uniform-looking number in [0, 1) per sequence id (SplitMix64 finaliser of the id)."""
    with np.errstate(over="ignore"):
        z = np.asarray(seq_id, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_of(seq_id: np.ndarray, fractions: SplitFractions = DEFAULT_FRACTIONS) -> np.ndarray:
    """Split index per entry of ``seq_id`` (0 = train, 1 = val, 2 = test; index into ``SPLITS``)."""
    u = sequence_unit_interval(seq_id)
    edges = np.array([fractions.train, fractions.train + fractions.val])
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def split_mask(seq_id: np.ndarray, split: str, fractions: SplitFractions = DEFAULT_FRACTIONS) -> np.ndarray:
    """Boolean mask of the entries of ``seq_id`` that belong to ``split`` ("train", "val" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split_of(seq_id, fractions) == SPLITS.index(split)
