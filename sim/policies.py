"""Prefetch policies: plain objects that react to decode events and answer with prefetch actions.

No clock lives here. The controller (sim/controller.py) calls the hooks in a fixed logical order, the same
in the simulator and in the live executor; a hook returns the experts to prefetch, best first. Demand
loads are not a policy's business: the controller issues them for every needed expert that is absent.

Event order for MoE layer ``j`` of a step (see ``sim.controller``):

    on_step_start (once per step, before layer 0)
    on_layer_start(j)          pre-attention norm output of layer j exists
    on_prediction_ready(j)     only for policies with issue_point == "layer-start": the predictor that
                               started at layer j's start has finished
    on_router(j)               layer j's router chose its experts (demand loads are issued)
    on_prediction_ready(j + 1) only for policies with issue_point == "router": a prediction of layer
                               j + 1, made from layer j's router input, has finished
    on_layer_end(j)            layer j's experts finished (they may now be evicted)

How long a prediction takes (between its start event and ``on_prediction_ready``) is the clock's job: it
reads ``predictor_kind`` ("mlp": the paper's 2-layer MLP, "gate": one router-sized matmul, None: free)
and the hardware profile. Actions must depend only on the step's data, the cache's logical state
(``cache.contains``) and the static ``TimingEstimates``, never on measured time: that keeps the two clocks'
decisions identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from sim.workload import ORACLE, PREVIOUS_TOKEN, Step, Workload

#: Transfer priorities: smaller runs first. Demand loads always go ahead of prefetches.
DEMAND: Final = 0
PREFETCH: Final = 1

#: Issue points: when a policy's prediction for a layer starts.
NO_ISSUE = "none"
LAYER_START = "layer-start"  # at the same layer's start (pre-attention)
ROUTER = "router"  # at the previous MoE layer's router (cross-layer, FATE)
ISSUE_POINTS = (NO_ISSUE, LAYER_START, ROUTER)


class PrefetchAction(NamedTuple):
    """Fetch ``experts`` (best first) of MoE layer ``layer`` for its next execution, at ``priority``.

    ``layer`` at or after the current layer means this step; a smaller one means the next step.
    """

    layer: int
    experts: Sequence[int]
    priority: int = PREFETCH


Actions = Sequence[PrefetchAction]
NO_ACTIONS: Actions = ()


@dataclass(frozen=True)
class TimingEstimates:
    """Static numbers from the hardware profile that a policy may plan with (never measurements).

    ``copy_s``: one expert's transfer alone on an idle link; ``predictor_s``: this policy's prediction
    time; ``attention_s(context_total, tokens)``: one layer's self-attention for a step.
    """

    copy_s: float
    predictor_s: float
    attention_s: Callable[[int, int], float]

    def window_s(self, step: Step) -> float:
        """Time between a pre-attention prediction and the router: the window a prefetch can hide in."""
        return max(0.0, self.attention_s(step.context_total, step.num_tokens) - self.predictor_s)


class CacheView:
    """What a policy may ask the cache: logical presence only (no arrival times)."""

    def __init__(self, contains: Callable[[int], bool], num_experts: int) -> None:
        self._contains = contains
        self._num_experts = num_experts

    def present(self, layer: int, expert: int) -> bool:
        return self._contains(layer * self._num_experts + expert)


class Policy:
    """Base class. Subclasses override the hooks they need; unused hooks cost nothing (the controller
    skips hooks a class does not override)."""

    name = "base"
    #: when this policy's predictions start; the clock times ``on_prediction_ready`` from it
    issue_point = NO_ISSUE
    #: what the prediction costs: "mlp", "gate" or None (free)
    predictor_kind: str | None = None
    #: every expert lives on the GPU (no transfers at all)
    resident = False
    #: prediction sources the workload must provide (``pred.<name>`` columns, "oracle", "previous-token")
    sources: tuple[str, ...] = ()

    def bind(self, workload: Workload, cache: CacheView, estimates: TimingEstimates | None) -> None:
        """Called once before the first step."""
        self.workload = workload
        self.cache = cache
        self.estimates = estimates

    def on_step_start(self, step: Step) -> Actions:
        return NO_ACTIONS

    def on_layer_start(self, step: Step, j: int) -> Actions:
        return NO_ACTIONS

    def on_prediction_ready(self, step: Step, j: int) -> Actions:
        return NO_ACTIONS

    def on_router(self, step: Step, j: int) -> Actions:
        return NO_ACTIONS

    def on_layer_end(self, step: Step, j: int) -> Actions:
        return NO_ACTIONS


class OnDemand(Policy):
    """No prefetch: load an expert when the router asks for it (the LRU offloading baseline)."""

    name = "on-demand"


class Resident(Policy):
    """Every expert on the GPU: the no-offload ideal."""

    name = "resident"
    resident = True


class RankedPrefetch(Policy):
    """Prefetch the top ``m`` experts of a ranked prediction source when its prediction is ready.

    Covers pre-attention (the paper), cross-layer (FATE), previous-token and oracle, and over-provisioning
    (``m > top_k``) for any of them. With several tokens per step, top-m is taken per token (union).
    """

    def __init__(self, name: str, source: str, m: int, issue_point: str, predictor_kind: str | None) -> None:
        self.name = name
        self.source = source
        self.sources = (source,)
        self.m = m
        self.issue_point = issue_point
        self.predictor_kind = predictor_kind

    def on_prediction_ready(self, step: Step, j: int) -> Actions:
        experts = step.top(self.source, j, self.m)
        if not experts:
            return NO_ACTIONS
        # PrefetchAction(j, experts) without the generated Python __new__ (this runs at every layer)
        return (tuple.__new__(PrefetchAction, (j, experts, PREFETCH)),)


class ConfidencePrefetch(RankedPrefetch):
    """Confidence-driven over-provisioning (the paper's future work): always the top ``k``, then further
    candidates in rank order while their score is at least ``threshold``, at most ``max_m`` in all, and
    only as many *absent* ones as fit in the prefetch window (attention time minus predictor time, over
    one expert's copy time, from the static profile estimates). Needs ``conf.<source>`` scores."""

    def __init__(self, name: str, source: str, k: int, max_m: int, threshold: float) -> None:
        super().__init__(name, source, max_m, LAYER_START, "mlp")
        self.k = k
        self.threshold = threshold

    def bind(self, workload: Workload, cache: CacheView, estimates: TimingEstimates | None) -> None:
        super().bind(workload, cache, estimates)
        if estimates is None:
            raise ValueError(f"policy '{self.name}' needs timing estimates from a hardware profile")
        if self.source not in workload.trace.confidences and self.source != ORACLE:
            raise ValueError(
                f"policy '{self.name}' needs scores: the trace has no 'conf.{self.source}' column"
            )

    def on_prediction_ready(self, step: Step, j: int) -> Actions:
        ranked = step.top(self.source, j, self.m)
        if not ranked:
            return NO_ACTIONS
        base = step.top(self.source, j, self.k)
        scores = step.scores.get(self.source)
        estimates = self.estimates
        assert estimates is not None  # bind() refuses a run without them
        budget = int(estimates.window_s(step) / estimates.copy_s) if estimates.copy_s else 1 << 30
        chosen = list(base)
        transfers = sum(1 for e in base if not self.cache.present(j, e))
        for i in range(len(base), len(ranked)):
            if scores is not None and scores[j][i] < self.threshold:
                break
            absent = not self.cache.present(j, ranked[i])
            if absent and transfers >= budget:
                break
            chosen.append(ranked[i])
            transfers += absent
        return (PrefetchAction(j, chosen),)


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PolicySpec:
    """A policy by name plus its knobs; hashable, serialisable, parseable from ``NAME[:key=value...]``.

    ``source``: prediction source (a ``pred.<name>`` column, "oracle" or "previous-token"); ``m``: how
    many ranked experts to prefetch (default top_k; over-provisioning when larger); ``point``: issue point
    override for ranked policies; ``threshold``/``max_m``: the confidence policy's knobs.
    """

    name: str
    source: str | None = None
    m: int | None = None
    point: str | None = None
    threshold: float | None = None
    max_m: int | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy '{self.name}' (choose from {', '.join(POLICIES)})")
        if self.m is not None and self.m < 1:
            raise ValueError(f"policy {self.name}: m must be >= 1, got {self.m}")
        if self.point is not None and self.point not in ISSUE_POINTS:
            raise ValueError(f"policy {self.name}: point must be one of {', '.join(ISSUE_POINTS)}")

    def label(self) -> str:
        """Canonical text form, e.g. ``pre-attention:m=12``; ``PolicySpec.parse(spec.label()) == spec``."""
        knobs = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)[1:]
            if getattr(self, f.name) is not None
        ]
        return ":".join([self.name, *knobs])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, text: str) -> PolicySpec:
        """``pre-attention``, ``pre-attention:m=12``, ``confidence:threshold=0.2:max_m=16``, ..."""
        name, *knobs = text.strip().split(":")
        values: dict[str, Any] = {}
        types = {"source": str, "point": str, "m": int, "max_m": int, "threshold": float}
        for knob in knobs:
            key, sep, value = knob.partition("=")
            if not sep or key not in types:
                raise ValueError(f"policy '{text}': bad knob '{knob}' (known: {', '.join(types)})")
            try:
                values[key] = types[key](value)
            except ValueError:
                raise ValueError(f"policy '{text}': {key} must be a {types[key].__name__}") from None
        return cls(name, **values)


def _ranked(
    name: str, source: str, point: str, predictor_kind: str | None
) -> Callable[[PolicySpec, int], Policy]:
    def build(spec: PolicySpec, top_k: int) -> Policy:
        return RankedPrefetch(
            spec.label(), spec.source or source, spec.m or top_k, spec.point or point, predictor_kind
        )

    return build


def _confidence(spec: PolicySpec, top_k: int) -> Policy:
    return ConfidencePrefetch(
        spec.label(),
        spec.source or "pre-attention",
        top_k,
        spec.max_m or 2 * top_k,
        0.05 if spec.threshold is None else spec.threshold,
    )


#: name -> (builder(spec, top_k), one-line description)
POLICIES: dict[str, tuple[Callable[[PolicySpec, int], Policy], str]] = {
    "on-demand": (lambda spec, k: OnDemand(), "no prefetch; load each expert when the router asks for it"),
    "pre-attention": (
        _ranked("pre-attention", "pre-attention", LAYER_START, "mlp"),
        "the paper: predict layer l from its pre-attention state, prefetch during attention",
    ),
    "cross-layer": (
        _ranked("cross-layer", "cross-layer", ROUTER, "gate"),
        "FATE: predict layer l+1 at layer l's router (one layer of lead time)",
    ),
    "previous-token": (
        _ranked("previous-token", PREVIOUS_TOKEN, LAYER_START, None),
        "prefetch what this layer used for the previous token, at the layer's start",
    ),
    "oracle": (
        _ranked("oracle", ORACLE, LAYER_START, "mlp"),
        "perfect prediction issued when the pre-attention predictor would finish (bound for that point)",
    ),
    "confidence": (
        _confidence,
        "pre-attention with m chosen per token from scores and the time left in the window",
    ),
    "resident": (lambda spec, k: Resident(), "every expert on the GPU (no offloading; the ideal)"),
}


def make_policy(spec: PolicySpec, top_k: int) -> Policy:
    """A fresh policy object for ``spec`` on a model routing ``top_k`` experts per token."""
    builder, _ = POLICIES[spec.name]
    return builder(spec, top_k)
