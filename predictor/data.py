"""What predictors read: a set of tokens of one model and their per-layer arrays, from a store or from memory.

``ActivationSource`` is the part of ``traces.activations.ActivationStore`` that predictors use; the store
satisfies it, and ``ArraySource`` does the same for arrays held in memory (tests, small experiments).
``ActivationView`` is a source restricted to some rows (for example the test split), always sorted by
(seq_id, pos) so that "the previous token of the same sequence" is simply the previous row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from predictor.splits import DEFAULT_FRACTIONS, SplitFractions, split_mask
from traces.activations import layer_name
from traces.schema import ModelShape


class ActivationSource(Protocol):
    """Read access to activations by name (``embed``, ``L003.preattn``, ``L003.topk``, ...)."""

    model: ModelShape

    def tokens(self) -> np.ndarray: ...

    def has(self, name: str) -> bool: ...

    def load(self, name: str, rows: np.ndarray | None = None) -> np.ndarray: ...

    def router(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]: ...


@dataclass
class ArraySource:
    """An activation source held in memory: ``arrays`` by store name, ``routers`` by decoder layer."""

    model: ModelShape
    token_ids: np.ndarray
    arrays: dict[str, np.ndarray]
    routers: dict[int, tuple[np.ndarray, np.ndarray | None]]

    def tokens(self) -> np.ndarray:
        return np.asarray(self.token_ids, dtype=np.int32)

    def has(self, name: str) -> bool:
        return name in self.arrays

    def load(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        array = self.arrays[name]
        return np.asarray(array if rows is None else array[rows])

    def router(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.routers[layer]


class ActivationView:
    """Some tokens of a source, sorted by (seq_id, pos), with per-layer accessors for predictors."""

    def __init__(self, source: ActivationSource, rows: np.ndarray | None = None) -> None:
        all_tokens = source.tokens()
        rows = np.arange(len(all_tokens)) if rows is None else np.asarray(rows, dtype=np.int64)
        tokens = all_tokens[rows]
        order = np.lexsort((tokens[:, 1], tokens[:, 0]))
        self.source = source
        self.rows = rows[order]
        self.tokens = np.ascontiguousarray(tokens[order])

    @property
    def model(self) -> ModelShape:
        return self.source.model

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return self.source.model.moe_layers

    @property
    def num_tokens(self) -> int:
        return len(self.rows)

    @property
    def seq_id(self) -> np.ndarray:
        return self.tokens[:, 0]

    @property
    def pos(self) -> np.ndarray:
        return self.tokens[:, 1]

    def has(self, name: str) -> bool:
        return self.source.has(name)

    def load(self, name: str) -> np.ndarray:
        """Array ``name`` for this view's tokens, in view order."""
        return self.source.load(name, self.rows)

    def topk(self, layer: int) -> np.ndarray:
        """Router top-k ids of decoder layer ``layer`` in router order, int64 [N, k]."""
        return self.load(layer_name(layer, "topk")).astype(np.int64)

    def logits(self, layer: int) -> np.ndarray | None:
        """Router logits of decoder layer ``layer`` as float32 [N, E], or None when the store has none."""
        name = layer_name(layer, "logits")
        return self.load(name).astype(np.float32) if self.has(name) else None

    def router(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.source.router(layer)

    def previous_row(self) -> np.ndarray:
        """Index (in this view) of the same sequence's previous position, or -1 where there is none."""
        prev = np.full(self.num_tokens, -1, dtype=np.int64)
        if self.num_tokens > 1:
            follows = (self.seq_id[1:] == self.seq_id[:-1]) & (self.pos[1:] == self.pos[:-1] + 1)
            prev[1:][follows] = np.flatnonzero(follows)
        return prev

    def sequence_start_row(self) -> np.ndarray:
        """Index (in this view) of the first row of each row's sequence."""
        if self.num_tokens == 0:
            return np.zeros(0, dtype=np.int64)
        new = np.r_[True, self.seq_id[1:] != self.seq_id[:-1]]
        starts = np.flatnonzero(new)
        return starts[np.cumsum(new) - 1]


def split_view(
    source: ActivationSource, split: str, fractions: SplitFractions = DEFAULT_FRACTIONS
) -> ActivationView:
    """The tokens of ``source`` whose sequence falls into ``split`` (see predictor.splits)."""
    rows = np.flatnonzero(split_mask(source.tokens()[:, 0], split, fractions))
    return ActivationView(source, rows)
