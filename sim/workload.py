"""The decode workload a trace implies: which experts every step needs at every MoE layer.

A *step* is one forward pass of the model. With batch size ``B`` it runs the current token of up to ``B``
trace sequences side by side (continuous batching: a lane that finishes its sequence takes the next one in
trace order), so a layer needs the *union* of its tokens' experts. With ``prompt_tokens > 0`` the first
``prompt_tokens`` positions of every sequence are prefill: a lane in its prompt consumes up to
``prefill_chunk`` consecutive positions in one step, and the layer needs the union over them.

Everything here is derived from the trace alone, so the simulator and the live executor see the very same
steps. Layer index ``j`` always means the MoE-layer axis of the trace (decoder layer ``moe_layers[j]``).

Prediction *sources* are ranked expert lists per (step, layer): every ``pred.<name>`` column of the trace,
plus two derived from the routing itself:

- ``oracle``: the experts the layer really needs (perfect prediction);
- ``previous-token``: what this layer used for the previous token of the same sequence.

For a step with several tokens a source's list is the union of the tokens' ranked lists ordered by rank
(all rank-0 experts first, then rank 1, ...), so "top-m for every token" is always a prefix of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from traces.trace import NO_PREDICTION, Trace

ORACLE = "oracle"
PREVIOUS_TOKEN = "previous-token"
DERIVED_SOURCES = (ORACLE, PREVIOUS_TOKEN)


@dataclass(frozen=True)
class BatchingOptions:
    """How trace tokens are grouped into decode steps.

    ``batch_size``: sequences decoded side by side. ``prompt_tokens``: leading positions of every sequence
    treated as prompt (prefill), processed ``prefill_chunk`` positions per step; 0 = pure decode.
    """

    batch_size: int = 1
    prompt_tokens: int = 0
    prefill_chunk: int = 256

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0, got {self.prompt_tokens}")
        if self.prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {self.prefill_chunk}")


class Step:
    """One forward pass: its tokens and, per MoE layer, the experts it needs and the predictions it has.

    ``needed[j]``: union of the tokens' experts at layer ``j`` (router order for a single token).
    ``tokens_per_expert[j]``: how many of the step's tokens each expert of ``needed[j]`` serves.
    ``predictions[source][j]``: ranked union (best first); empty when the source has no prediction.
    ``ranks[source][j]``: best rank of each listed expert, or None for a single-token step (rank = index).
    ``scores[source][j]``: probability-like score per listed expert, only for sources with confidences.
    """

    __slots__ = (
        "context_total",
        "index",
        "needed",
        "num_tokens",
        "predictions",
        "ranks",
        "scores",
        "tokens",
        "tokens_per_expert",
    )

    def __init__(
        self,
        index: int,
        tokens: np.ndarray,
        context_total: int,
        needed: list[list[int]],
        tokens_per_expert: list[list[int]],
    ) -> None:
        self.index = index
        self.tokens = tokens
        self.num_tokens = len(tokens)
        self.context_total = context_total
        self.needed = needed
        self.tokens_per_expert = tokens_per_expert
        self.predictions: dict[str, list[list[int]]] = {}
        self.ranks: dict[str, list[list[int]] | None] = {}
        self.scores: dict[str, list[list[float]]] = {}

    def top(self, source: str, j: int, m: int) -> list[int]:
        """The experts ranked ``< m`` for at least one of the step's tokens, best first."""
        ranked = self.predictions[source][j]
        ranks = self.ranks[source]
        if ranks is None:
            return ranked[:m]
        return ranked[: bisect_left(ranks[j], m)]


class Workload:
    """Steps of a trace for one batching choice, with the prediction sources a policy asked for.

    Steps are built on demand (``step(s)``); building is cheap and needs no state, so the live executor and
    the simulator may each build them. ``next_use`` supports Belady's eviction rule.
    """

    def __init__(
        self, trace: Trace, batching: BatchingOptions | None = None, sources: Sequence[str] = ()
    ) -> None:
        self.trace = trace
        self.batching = batching or BatchingOptions()
        self.num_layers = trace.num_layers
        self.num_experts = trace.num_experts
        self.top_k = trace.top_k
        for name in sources:
            if name not in DERIVED_SOURCES and name not in trace.predictions:
                have = sorted(set(trace.predictions) | set(DERIVED_SOURCES))
                raise KeyError(f"prediction source '{name}' is not in the trace (have: {', '.join(have)})")
        self.sources = tuple(dict.fromkeys(sources))
        self._source_arrays = {name: self._source_array(name) for name in self.sources}
        self._score_arrays = {
            name: trace.confidences[name].astype(np.float32)
            for name in self.sources
            if name in trace.confidences
        }
        self.step_tokens, self.step_of_token = _schedule(trace, self.batching)
        self._context = (trace.pos.astype(np.int64) + 1) if trace.num_tokens else np.zeros(0, np.int64)
        self._next_use: NextUse | None = None

    # -- steps

    def __len__(self) -> int:
        return len(self.step_tokens)

    @property
    def num_steps(self) -> int:
        return len(self.step_tokens)

    def decode_token_mask(self) -> np.ndarray:
        """True for tokens that are decoded one per step (not part of a prefill prompt)."""
        return self.trace.pos >= self.batching.prompt_tokens

    def step(self, s: int) -> Step:
        tokens = self.step_tokens[s]
        experts = self.trace.experts
        if len(tokens) == 1:  # (no numpy reduction for one token: this runs once per decode step)
            t = int(tokens[0])
            context_total = int(self._context[t])
            needed = experts[t].tolist()
            counts = [[1] * len(row) for row in needed]
            step = Step(s, tokens, context_total, needed, counts)
            for name, array in self._source_arrays.items():
                rows = array[t].tolist()
                step.predictions[name] = [row if row[0] >= 0 else [] for row in rows]
                step.ranks[name] = None
                if name in self._score_arrays:
                    step.scores[name] = self._score_arrays[name][t].tolist()
            return step
        context_total = int(self._context[tokens].sum())
        needed, counts = _union_with_counts(experts[tokens])
        step = Step(s, tokens, context_total, needed, counts)
        for name, array in self._source_arrays.items():
            scores = self._score_arrays.get(name)
            ranked, ranks, union_scores = _ranked_union(
                array[tokens], None if scores is None else scores[tokens]
            )
            step.predictions[name] = ranked
            step.ranks[name] = ranks
            if union_scores is not None:
                step.scores[name] = union_scores
        return step

    def max_needed(self) -> list[int]:
        """Per MoE layer: the most experts one step needs at once (the cache's demand reserve)."""
        most = np.zeros(self.num_layers, dtype=np.int64)
        experts = self.trace.experts
        for tokens in self.step_tokens:
            if len(tokens) == 1:
                np.maximum(most, self.top_k, out=most)
                continue
            flat = np.sort(np.swapaxes(experts[tokens], 0, 1).reshape(self.num_layers, -1), axis=1)
            np.maximum(most, 1 + (np.diff(flat, axis=1) != 0).sum(axis=1), out=most)
        return most.tolist()

    def steps(self) -> list[Step]:
        return [self.step(s) for s in range(self.num_steps)]

    # -- derived sources

    def _source_array(self, name: str) -> np.ndarray:
        if name == ORACLE:
            return self.trace.experts
        if name == PREVIOUS_TOKEN:
            previous = np.full_like(self.trace.experts, NO_PREDICTION)
            if self.trace.num_tokens > 1:
                same_seq = self.trace.seq_id[1:] == self.trace.seq_id[:-1]
                previous[1:][same_seq] = self.trace.experts[:-1][same_seq]
            return previous
        return self.trace.predictions[name]

    # -- Belady

    @property
    def next_use(self) -> NextUse:
        if self._next_use is None:
            self._next_use = NextUse(self)
        return self._next_use


class NextUse:
    """For every cache key ``j * E + e``: the steps that need expert ``e`` at layer ``j``, ascending.

    Logical positions are ``step * L + j``; ``after(key, pos)`` is the first position strictly after
    ``pos`` at which ``key`` is needed (``NEVER`` if none): the information Belady's rule evicts by.
    """

    NEVER = 1 << 62

    def __init__(self, workload: Workload) -> None:
        trace = workload.trace
        num_layers, num_experts = workload.num_layers, workload.num_experts
        steps = np.repeat(workload.step_of_token[:, None], num_layers, axis=1)  # [T, L]
        layers = np.broadcast_to(np.arange(num_layers)[None, :], steps.shape)
        keys = layers[:, :, None] * num_experts + trace.experts.astype(np.int64)  # [T, L, k]
        step_keys = np.broadcast_to(steps[:, :, None], keys.shape)
        pairs = np.unique(np.stack([keys.reshape(-1), step_keys.reshape(-1)], axis=1), axis=0)
        self._num_layers = num_layers
        self._num_experts = num_experts
        bounds = np.searchsorted(pairs[:, 0], np.arange(num_layers * num_experts + 1))
        self._uses: list[list[int]] = [
            pairs[bounds[key] : bounds[key + 1], 1].tolist() for key in range(num_layers * num_experts)
        ]

    def after(self, key: int, pos: int) -> int:
        """First position > ``pos`` at which ``key`` is needed."""
        uses = self._uses[key]
        num_layers = self._num_layers
        j = key // self._num_experts
        first_step = (pos - j) // num_layers + 1  # use at step s sits at position s * L + j
        i = bisect_left(uses, first_step)
        return uses[i] * num_layers + j if i < len(uses) else self.NEVER


# ---------------------------------------------------------------------------------------------- helpers


def _schedule(trace: Trace, batching: BatchingOptions) -> tuple[list[np.ndarray], np.ndarray]:
    """Group tokens into steps: ``batch_size`` lanes, each walking one sequence, refilled in trace order."""
    starts = trace.seq_starts
    num_seqs = len(starts) - 1
    step_of_token = np.zeros(trace.num_tokens, dtype=np.int64)
    if batching.batch_size == 1 and batching.prompt_tokens == 0:
        return [np.array([t]) for t in range(trace.num_tokens)], np.arange(trace.num_tokens, dtype=np.int64)
    prompt, chunk = batching.prompt_tokens, batching.prefill_chunk
    lanes: list[list[int]] = []  # [next token, end token] per active lane
    next_seq = 0
    steps: list[np.ndarray] = []
    while True:
        while len(lanes) < batching.batch_size and next_seq < num_seqs:
            lanes.append([int(starts[next_seq]), int(starts[next_seq + 1])])
            next_seq += 1
        if not lanes:
            break
        tokens: list[int] = []
        for lane in lanes:
            t, end = lane
            width = 1
            if prompt and trace.pos[t] < prompt:
                prompt_end = t + (prompt - int(trace.pos[t]))
                width = max(1, min(chunk, prompt_end - t, end - t))
            tokens.extend(range(t, t + width))
            lane[0] = t + width
        step_of_token[tokens] = len(steps)
        steps.append(np.asarray(tokens, dtype=np.int64))
        lanes = [lane for lane in lanes if lane[0] < lane[1]]
    return steps, step_of_token


def _union_with_counts(experts: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """[B, L, k] -> per layer: experts in first-seen order (token-major) and how many tokens use each."""
    needed: list[list[int]] = []
    counts: list[list[int]] = []
    for layer_rows in np.swapaxes(experts, 0, 1).tolist():
        seen: dict[int, int] = {}
        for row in layer_rows:
            for e in row:
                seen[e] = seen.get(e, 0) + 1
        needed.append(list(seen))
        counts.append(list(seen.values()))
    return needed, counts


def _ranked_union(
    ranked: np.ndarray, scores: np.ndarray | None
) -> tuple[list[list[int]], list[list[int]], list[list[float]] | None]:
    """[B, L, m] ranked lists -> per layer: union ordered by (rank, token), best rank of each, and the
    probability that at least one token needs the expert (1 - prod(1 - score)) when scores are given."""
    batch, num_layers, width = ranked.shape
    out_experts: list[list[int]] = []
    out_ranks: list[list[int]] = []
    out_scores: list[list[float]] | None = [] if scores is not None else None
    by_rank = np.swapaxes(np.swapaxes(ranked, 0, 1), 1, 2).tolist()  # [L, m, B]
    score_rows = np.swapaxes(np.swapaxes(scores, 0, 1), 1, 2).tolist() if scores is not None else None
    for j in range(num_layers):
        order: dict[int, int] = {}
        miss_prob: dict[int, float] = {}
        for r in range(width):
            row = by_rank[j][r]
            for b in range(batch):
                e = row[b]
                if e < 0:
                    continue
                if e not in order:
                    order[e] = r
                if score_rows is not None:
                    p = min(max(float(score_rows[j][r][b]), 0.0), 1.0)
                    miss_prob[e] = miss_prob.get(e, 1.0) * (1.0 - p)
        out_experts.append(list(order))
        out_ranks.append(list(order.values()))
        if out_scores is not None:
            out_scores.append([1.0 - miss_prob[e] for e in order])
    return out_experts, out_ranks, out_scores


__all__ = [
    "DERIVED_SOURCES",
    "ORACLE",
    "PREVIOUS_TOKEN",
    "BatchingOptions",
    "NextUse",
    "Step",
    "Workload",
]
