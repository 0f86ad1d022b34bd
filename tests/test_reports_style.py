"""Figure colours: a name keeps its colour across figures, and two lines of one legend never look alike."""

from __future__ import annotations

from reports.style import KNOWN_COLOURS, colour, distinct_colours

#: the predictors of the committed accuracy tables, in their order
PREDICTORS = ["pre-attention", "pre-attention-arch2", "pre-attention-linear", "cross-layer",
              "cross-layer-embed", "previous-token", "frequency", "oracle", "random"]  # fmt: skip


def test_known_policies_keep_their_colour_and_variants_share_the_base() -> None:
    assert colour("pre-attention") == KNOWN_COLOURS["pre-attention"]
    assert colour("pre-attention:m=12") == KNOWN_COLOURS["pre-attention"]


def test_other_names_never_take_a_known_policy_colour() -> None:
    for name in [*PREDICTORS, "deepseek-v2-lite-like", "phi-mini-moe-like", "qwen3-30b-a3b-like"]:
        if name not in KNOWN_COLOURS:
            assert colour(name) not in KNOWN_COLOURS.values(), name


def test_lines_of_one_figure_get_distinct_colours() -> None:
    chosen = distinct_colours(PREDICTORS)
    assert list(chosen) == PREDICTORS
    assert len(set(chosen.values())) == len(PREDICTORS)
    assert all(chosen[n] == KNOWN_COLOURS[n] for n in PREDICTORS if n in KNOWN_COLOURS)
