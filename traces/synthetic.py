"""Synthetic routing traces with controllable structure, for tests and benchmarks (never for findings).

The generator works layer by layer, vectorised over tokens. Each token-layer has ``k`` slots:

- **Popularity**: a fresh slot draws an expert from a Zipf law of exponent ``popularity_skew`` over a
  per-layer permutation of the experts, so each layer has its own hot experts.
- **Reuse**: within a sequence, each slot keeps the previous token's expert with probability
  ``reuse_prob`` (so each of the previous token's experts is kept with at least that probability).
- **Cross-layer correlation**: a fresh slot copies, with probability ``cross_layer_corr``, the image of
  the previous layer's expert in the same slot under a fixed map that sends the r-th most popular expert
  of layer l-1 to the r-th most popular of layer l (the map preserves each layer's popularity).
- Experts of one token-layer are distinct; a fresh draw that collides is redrawn among the free experts.
- **Router order and weights**: experts are ordered by a noisy score (log popularity + Gumbel noise) and
  weighted by the softmax of those scores over the k chosen, so weights are positive, sum to 1 and
  descend in router order.
- **Predictors**: for a requested accuracy ``a``, a fraction ``a`` of token-layers gets the true top-k
  set (router order) as its first k ranks; the others get 1..k of the true experts (1 with probability
  1/2, 2 with 1/4, ...) swapped for wrong ones at random ranks. Ranks k..m-1 hold the displaced true
  experts first, then wrong ones (as a well-ranked real predictor would), so over-provisioning helps.
  ``include_oracle`` adds ``pred.oracle``, the true set in router order.

Output is marked ``origin="synthetic"`` with the full recipe in the provenance, and is deterministic per
seed. Adding a predictor does not change the routing (each predictor draws from its own stream).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

import numpy as np

from traces.schema import ModelShape, PredictorInfo, Provenance, TraceMetadata
from traces.trace import Trace

ORACLE = "oracle"


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic trace. Probabilities are in [0, 1]."""

    shape: ModelShape
    num_sequences: int = 4
    tokens_per_sequence: int = 256
    popularity_skew: float = 1.0
    reuse_prob: float = 0.3
    cross_layer_corr: float = 0.2
    predictor_accuracy: dict[str, float] = field(default_factory=dict)
    prediction_width: int | None = None
    include_oracle: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        k, e = self.shape.top_k, self.shape.num_experts
        if self.num_sequences < 1 or self.tokens_per_sequence < 1:
            raise ValueError("num_sequences and tokens_per_sequence must be >= 1")
        if not 1 <= k <= e:
            raise ValueError(f"shape top_k={k} does not fit num_experts={e}")
        if self.popularity_skew < 0:
            raise ValueError(f"popularity_skew={self.popularity_skew} must be >= 0")
        probabilities = {"reuse_prob": self.reuse_prob, "cross_layer_corr": self.cross_layer_corr}
        probabilities.update({f"predictor_accuracy[{n!r}]": a for n, a in self.predictor_accuracy.items()})
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a probability")
        if not k <= self.width <= e:
            raise ValueError(f"prediction_width={self.width} must lie in [top_k={k}, num_experts={e}]")
        if k == e and any(a < 1 for a in self.predictor_accuracy.values()):
            raise ValueError("with top_k == num_experts every prediction is exact; accuracy must be 1")
        if ORACLE in self.predictor_accuracy and self.include_oracle:
            raise ValueError(f"predictor name {ORACLE!r} is reserved for include_oracle")

    @property
    def width(self) -> int:
        """Prediction width m (top_k unless set)."""
        return self.prediction_width or self.shape.top_k

    def recipe(self) -> dict[str, object]:
        """The knobs as plain data, stored in the trace's provenance so the trace can be rebuilt."""
        doc = dataclasses.asdict(self)
        doc["shape"] = self.shape.name
        return doc


def generate_trace(spec: SyntheticSpec) -> Trace:
    """A synthetic trace following ``spec`` (see the module docstring for the model)."""
    shape = spec.shape
    num_tokens = spec.num_sequences * spec.tokens_per_sequence
    rng = np.random.default_rng([spec.seed, 0])
    log_popularity = _layer_log_popularity(rng, shape.num_moe_layers, shape.num_experts, spec.popularity_skew)
    seq_start = np.zeros(num_tokens, dtype=bool)
    seq_start[:: spec.tokens_per_sequence] = True

    slots = np.empty((num_tokens, shape.num_moe_layers, shape.top_k), dtype=np.int64)
    for layer in range(shape.num_moe_layers):
        previous = slots[:, layer - 1] if layer else None
        cross_map = _rank_preserving_map(log_popularity[layer - 1], log_popularity[layer]) if layer else None
        slots[:, layer] = _route_layer(rng, spec, log_popularity[layer], seq_start, previous, cross_map)

    experts, weights = _router_order(rng, slots, log_popularity)
    metadata = TraceMetadata(
        model=shape,
        provenance=Provenance(
            origin="synthetic",
            source="traces.synthetic.generate_trace",
            notes="synthetic routing drawn from a parametric model; not measured on any model",
            recipe=spec.recipe(),
        ),
    )
    trace = Trace(
        metadata=metadata,
        seq_id=np.repeat(np.arange(spec.num_sequences, dtype=np.int32), spec.tokens_per_sequence),
        pos=np.tile(np.arange(spec.tokens_per_sequence, dtype=np.int32), spec.num_sequences),
        experts=experts.astype(np.int16),
        weights=weights,
    )
    for name, accuracy in spec.predictor_accuracy.items():
        pred_rng = np.random.default_rng([spec.seed, 1, zlib.crc32(name.encode())])
        ranked = _synthetic_predictions(pred_rng, experts, shape.num_experts, accuracy, spec.width)
        exact = float(np.mean(np.all(np.sort(ranked[..., : shape.top_k], -1) == np.sort(experts, -1), -1)))
        info = PredictorInfo(
            name=name,
            kind="synthetic",
            training_data="none: synthetic predictions with a requested exact-match rate",
            metrics={"requested_exact_match": accuracy, "exact_match": exact},
            config={"width": spec.width},
        )
        trace = trace.with_prediction(info, ranked)
    if spec.include_oracle:
        info = PredictorInfo(name=ORACLE, kind="oracle", training_data="the trace's own routing")
        trace = trace.with_prediction(info, experts.astype(np.int16))
    return trace


# ---------------------------------------------------------------------------------------------- routing


def _layer_log_popularity(
    rng: np.random.Generator, num_layers: int, num_experts: int, skew: float
) -> np.ndarray:
    """[L, E] log-probabilities: Zipf(skew) over ranks, ranks permuted independently per layer."""
    zipf = -skew * np.log(np.arange(1, num_experts + 1, dtype=np.float64))
    zipf -= np.logaddexp.reduce(zipf)
    return np.stack([zipf[np.argsort(rng.permutation(num_experts))] for _ in range(num_layers)])


def _rank_preserving_map(log_p_from: np.ndarray, log_p_to: np.ndarray) -> np.ndarray:
    """Maps the r-th most popular expert of one layer to the r-th most popular of the next."""
    by_rank_from = np.argsort(-log_p_from, kind="stable")
    by_rank_to = np.argsort(-log_p_to, kind="stable")
    mapping = np.empty_like(by_rank_from)
    mapping[by_rank_from] = by_rank_to
    return mapping


def _route_layer(
    rng: np.random.Generator,
    spec: SyntheticSpec,
    log_p: np.ndarray,
    seq_start: np.ndarray,
    previous: np.ndarray | None,
    cross_map: np.ndarray | None,
) -> np.ndarray:
    """[T, k] distinct experts per token for one layer, in slot order."""
    num_tokens, k = len(seq_start), spec.shape.top_k
    p = np.exp(log_p)
    fresh_value = rng.choice(len(p), size=(num_tokens, k), p=p / p.sum())
    if previous is not None and cross_map is not None and spec.cross_layer_corr > 0:
        follow = rng.random((num_tokens, k)) < spec.cross_layer_corr
        fresh_value = np.where(follow, cross_map[previous], fresh_value)
    fresh = (rng.random((num_tokens, k)) >= spec.reuse_prob) | seq_start[:, None]

    # Slot j of token t holds the value drawn at the last fresh token of its chain.
    token_index = np.arange(num_tokens)[:, None]
    last_fresh = np.maximum.accumulate(np.where(fresh, token_index, 0), axis=0)
    fresh_now = last_fresh == token_index
    slot = np.arange(k)[None, :]
    rows = np.arange(num_tokens)
    while len(rows):
        values = fresh_value[last_fresh[rows], slot]
        redraw = _clashing_fresh_draws(values, fresh_now[rows])
        bad_rows, bad_slots = np.nonzero(redraw)
        if not len(bad_rows):
            break
        fresh_value[rows[bad_rows], bad_slots] = _draw_excluding(rng, log_p, values[bad_rows])
        # only tokens whose chains start at a redrawn entry can have changed
        changed = np.zeros((num_tokens, k), dtype=bool)
        changed[rows[bad_rows], bad_slots] = True
        rows = np.flatnonzero(np.take_along_axis(changed, last_fresh, axis=0).any(axis=1))
    return fresh_value[last_fresh, slot]


def _clashing_fresh_draws(values: np.ndarray, fresh_now: np.ndarray) -> np.ndarray:
    """[T, k] mask of fresh draws that repeat another expert of their row (the later slot if both are fresh).

    Copied slots were distinct one token earlier, so the earliest duplicate of every row that has one
    involves a fresh draw; redrawing those among the free experts removes every duplicate in a few rounds.
    """
    k = values.shape[1]
    equal = values[:, :, None] == values[:, None, :]
    later = np.tri(k, k, -1, dtype=bool)[None]  # [j, j'] true when j > j'
    other_is_copy = ~fresh_now[:, None, :]
    return (equal & fresh_now[:, :, None] & (other_is_copy | later)).any(axis=2)


def _draw_excluding(rng: np.random.Generator, log_p: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """One expert per row, drawn by popularity among those not in that row of ``taken``.

    Rejection sampling against the popularity CDF; rows still unlucky after a few tries fall back to a
    Gumbel-max draw over the free experts (exact, but costs E numbers per row).
    """
    cdf = np.cumsum(np.exp(log_p))
    chosen = np.empty(len(taken), dtype=np.int64)
    pending = np.arange(len(taken))
    for _ in range(8):
        draw = np.minimum(np.searchsorted(cdf, rng.random(len(pending)) * cdf[-1]), len(cdf) - 1)
        ok = ~(draw[:, None] == taken[pending]).any(axis=1)
        chosen[pending[ok]] = draw[ok]
        pending = pending[~ok]
        if not len(pending):
            return chosen
    scores = log_p[None, :] + rng.gumbel(size=(len(pending), len(log_p)))
    np.put_along_axis(scores, taken[pending], -np.inf, axis=1)
    chosen[pending] = np.argmax(scores, axis=1)
    return chosen


def _router_order(
    rng: np.random.Generator, slots: np.ndarray, log_popularity: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sort each token-layer's experts by a noisy router score; weights = softmax of the sorted scores."""
    layer_index = np.arange(slots.shape[1])[None, :, None]
    scores = log_popularity[layer_index, slots] + rng.gumbel(size=slots.shape)
    order = np.argsort(-scores, axis=-1)
    experts = np.take_along_axis(slots, order, axis=-1)
    sorted_scores = np.take_along_axis(scores, order, axis=-1)
    weights = np.exp(sorted_scores - sorted_scores[..., :1])
    weights /= weights.sum(axis=-1, keepdims=True)
    return experts, weights.astype(np.float32)


# ---------------------------------------------------------------------------------------------- predictions


def _synthetic_predictions(
    rng: np.random.Generator, experts: np.ndarray, num_experts: int, accuracy: float, width: int
) -> np.ndarray:
    """[T, L, width] ranked predictions whose top-k equals the true set for a fraction ``accuracy``."""
    num_tokens, num_layers, k = experts.shape
    truth = experts.reshape(-1, k).astype(np.int64)
    ranked = np.empty((len(truth), width), dtype=np.int16)
    ranked[:, :k] = truth
    max_swap = min(k, num_experts - k)
    if max_swap == 0:  # every expert is routed: the full set is always exact
        return ranked.reshape(num_tokens, num_layers, width)
    if width > k:
        ranked[:, k:] = _wrong_candidates(rng, truth, num_experts, width - k)

    wrong_rows = np.flatnonzero(rng.random(len(truth)) >= accuracy)
    true_set = truth[wrong_rows]
    num_swapped = np.minimum(rng.geometric(0.5, len(wrong_rows)), max_swap)
    swapped = np.argsort(np.argsort(rng.random(true_set.shape), axis=1), axis=1) < num_swapped[:, None]
    wrong = _wrong_candidates(rng, true_set, num_experts, min(width, num_experts - k))
    top = true_set.copy()
    use = np.maximum(np.cumsum(swapped, axis=1) - 1, 0)
    top[swapped] = np.take_along_axis(wrong, use, axis=1)[swapped]
    ranked[wrong_rows, :k] = top
    if width > k:
        # tail: the displaced true experts (in rank order), then wrong candidates unused in the top k
        pool = np.concatenate([true_set, wrong], axis=1)
        unused = np.arange(wrong.shape[1])[None, :] >= num_swapped[:, None]
        key = np.concatenate(
            [
                np.where(swapped, np.arange(k)[None, :], np.inf),
                np.where(unused, k + np.arange(wrong.shape[1])[None, :], np.inf),
            ],
            axis=1,
        )
        order = np.argsort(key, axis=1, kind="stable")[:, : width - k]
        ranked[wrong_rows, k:] = np.take_along_axis(pool, order, axis=1)
    return ranked.reshape(num_tokens, num_layers, width)


def _wrong_candidates(
    rng: np.random.Generator, truth: np.ndarray, num_experts: int, count: int
) -> np.ndarray:
    """[rows, count] distinct experts outside each row's true set, uniformly at random, in random order.

    Each candidate is drawn uniformly and redrawn while it hits an excluded expert; rows still unlucky
    after a few tries take the s-th free expert directly (s uniform), found from the sorted excluded set
    as s plus the number of excluded ids x_i with x_i - i <= s.
    """
    rows = len(truth)
    excluded = np.empty((rows, truth.shape[1] + count), dtype=np.int64)
    excluded[:, : truth.shape[1]] = truth
    for j in range(count):
        used = excluded[:, : truth.shape[1] + j]
        pick = np.empty(rows, dtype=np.int64)
        pending = np.arange(rows)
        for _ in range(4):
            draw = rng.integers(0, num_experts, len(pending))
            ok = ~(used[pending] == draw[:, None]).any(axis=1)
            pick[pending[ok]] = draw[ok]
            pending = pending[~ok]
        if len(pending):
            ordered = np.sort(used[pending], axis=1)
            s = (rng.random(len(pending)) * (num_experts - used.shape[1])).astype(np.int64)
            shifted = ordered - np.arange(used.shape[1])[None, :]
            pick[pending] = s + (shifted <= s[:, None]).sum(axis=1)
        excluded[:, truth.shape[1] + j] = pick
    return excluded[:, truth.shape[1] :]
