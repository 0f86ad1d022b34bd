"""argparse ``type=`` callables for numeric options: one rule per range, one wording of the error.

Give them as ``type=`` to ``add_argument``; argparse then refuses a bad value before any handler runs, with
its usual two lines (``usage: ...`` and ``...: error: argument --x: must be an integer >= 1, got '0'``) and
exit code 2. A check that involves two options at once (e.g. two fractions that must sum below 1) stays in
the command's handler.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """A ``type=`` accepting integers in [low, high] (no upper bound when ``high`` is None)."""
    wanted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = f"int_in_range({low}, {high})"
    return parse


#: integers >= 1: counts of things that must exist (tokens, steps, workers, epochs, slots)
positive_int = int_in_range(1)
#: integers >= 0: counts where 0 means none (warm-up steps, "0: no cache")
non_negative_int = int_in_range(0)


def _float_type(name: str, wanted: str, accepts: Callable[[float], bool]) -> Callable[[str], float]:
    """A ``type=`` accepting finite floats for which ``accepts`` holds."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not math.isfinite(value) or not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


#: finite numbers > 0 (durations, learning rates)
positive_float = _float_type("positive_float", "a number > 0", lambda v: v > 0)
#: finite numbers >= 0 (weights that may be switched off)
non_negative_float = _float_type("non_negative_float", "a number >= 0", lambda v: v >= 0)
#: shares in (0, 1]: a part of something that must not be empty
fraction = _float_type("fraction", "a fraction in (0, 1]", lambda v: 0 < v <= 1)
#: shares in [0, 1], where 0 means none (e.g. of the experts cached on the GPU)
fraction_or_zero = _float_type("fraction_or_zero", "a fraction in [0, 1]", lambda v: 0 <= v <= 1)
