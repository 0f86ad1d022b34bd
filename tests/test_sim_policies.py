"""Prefetch policies: the registry, spec parsing, and what each policy asks to fetch and when."""

from __future__ import annotations

import pytest

from sim.cache import CacheConfig
from sim.controller import DecodeController
from sim.policies import (
    LAYER_START,
    POLICIES,
    ROUTER,
    CacheView,
    Policy,
    PolicySpec,
    TimingEstimates,
    make_policy,
)
from sim.testing import tiny_shape, tiny_trace
from sim.workload import Workload
from traces.trace import Trace


@pytest.mark.parametrize(
    "text",
    [
        "on-demand",
        "pre-attention:m=12",
        "cross-layer:source=fate:point=layer-start",
        "confidence:threshold=0.2:max_m=9",
    ],
)
def test_policy_specs_round_trip_through_their_label(text: str) -> None:
    spec = PolicySpec.parse(text)
    assert PolicySpec.parse(spec.label()) == spec
    assert PolicySpec(**spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prescient", "unknown policy"),
        ("pre-attention:m=x", "m must be a int"),
        ("oracle:k=3", "bad knob"),
        ("oracle:point=later", "point must be one of"),
    ],
)
def test_bad_policy_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicySpec.parse(text)


def test_every_registered_policy_builds() -> None:
    for name in POLICIES:
        policy = make_policy(PolicySpec(name), top_k=2)
        assert policy.issue_point in ("none", LAYER_START, ROUTER)


def bound(spec: str, trace: Trace, slots: int = 12) -> tuple[Policy, DecodeController]:
    policy = make_policy(PolicySpec.parse(spec), trace.top_k)
    estimates = TimingEstimates(copy_s=1e-4, predictor_s=2e-5, attention_s=lambda ctx, tokens: 3.2e-4)
    controller = DecodeController(
        Workload(trace, sources=policy.sources), policy, CacheConfig(slots=slots), estimates
    )
    return policy, controller


def test_pre_attention_prefetches_the_top_m_of_its_layer() -> None:
    trace = tiny_trace(tiny_shape(), accuracy=0.5, width=4)
    policy, controller = bound("pre-attention:m=3", trace)
    step = controller.workload.step(4)
    actions = policy.on_prediction_ready(step, 1)
    assert [(a.layer, list(a.experts)) for a in actions] == [
        (1, trace.predictions["pre-attention"][4, 1, :3].tolist())
    ]


def test_cross_layer_prediction_targets_the_next_layer_after_the_router() -> None:
    trace = tiny_trace(tiny_shape(), width=2)
    policy, controller = bound("cross-layer", trace)
    assert policy.issue_point == ROUTER and policy.predictor_kind == "gate"
    controller.begin_step(3)
    controller.layer_start(0)
    controller.router(0)
    requests = controller.prediction_ready(1)
    issued = {r.expert for r in requests if r.layer == 1}
    present = {
        e for e in trace.predictions["cross-layer"][3, 1].tolist() if controller.cache.contains(1 * 8 + e)
    }
    assert issued <= present and all(r.target == 3 * 3 + 1 for r in requests)


def test_previous_token_prefetches_what_the_layer_used_one_token_earlier() -> None:
    trace = tiny_trace(tiny_shape())
    policy, controller = bound("previous-token", trace)
    assert policy.predictor_kind is None
    step = controller.workload.step(2)
    (action,) = policy.on_prediction_ready(step, 0)
    assert list(action.experts) == trace.experts[1, 0].tolist()


def test_confidence_policy_adds_candidates_while_they_are_likely_and_fit_the_window() -> None:
    shape = tiny_shape(num_experts=8, top_k=2)
    trace = tiny_trace(shape, width=6, with_scores=True)
    policy, controller = bound("confidence:threshold=0.0:max_m=6", trace)
    step = controller.workload.step(0)
    # window: 3.2e-4 - 2e-5 = 3e-4 s, one copy 1e-4 s: three absent experts fit (the cache is empty)
    (action,) = policy.on_prediction_ready(step, 0)
    assert list(action.experts) == step.top("pre-attention", 0, 3)
    strict, _ = bound("confidence:threshold=1.1:max_m=6", trace)
    (action,) = strict.on_prediction_ready(step, 0)
    assert list(action.experts) == step.top("pre-attention", 0, 2)  # only the top k


def test_confidence_policy_needs_scores() -> None:
    trace = tiny_trace(tiny_shape())
    with pytest.raises(ValueError, match=r"conf\.pre-attention"):
        bound("confidence", trace)


def test_cache_view_exposes_presence_only() -> None:
    view = CacheView(lambda key: key == 9, num_experts=8)
    assert view.present(1, 1) and not view.present(0, 1)
