"""Assemble a report: run every section builder over the inputs and write one HTML file atomically."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from reports.inputs import ReportInputs
from reports.page import Omitted, PageMeta, Section, render_page
from reports.sections import (
    accuracy,
    glance,
    policies,
    provenance,
    sweeps,
    timeline,
    trace_overview,
    validation,
)
from traces.fileio import InputError, write_text_atomic

DEFAULT_TITLE = "moe-prefetch report"
#: reading order: the answer, the data, the predictors, the policies, the hardware, the check, the sources
SECTIONS = (glance, trace_overview, accuracy, policies, timeline, sweeps, validation, provenance)


def build_sections(inputs: ReportInputs) -> list[Section | Omitted]:
    """Every section in reading order; those without inputs come back as ``Omitted``."""
    return [module.build(inputs) for module in SECTIONS]


def render_report(inputs: ReportInputs, title: str = DEFAULT_TITLE) -> str:
    """The report as one self-contained HTML document."""
    synthetic = inputs.synthetic_sources()
    banners = []
    if synthetic:
        banners.append(
            "SYNTHETIC INPUTS: " + "; ".join(synthetic) + ". Figures built on them illustrate the tool; "
            "they are not findings about any real model."
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = PageMeta(title=title, subtitle=f"Generated {stamp} by moe-prefetch", banners=banners)
    return render_page(meta, build_sections(inputs))


def prepare_output(out: str | os.PathLike[str]) -> Path:
    """``out`` as a Path whose folder exists. Commands call it before any work, so a bad ``--out`` (a
    folder, or a path under a file) costs one line and exit 2, not a traceback after the simulations."""
    path = Path(out)
    if path.is_dir():
        raise InputError(path, "is a directory; give the report's file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(path, f"cannot create its folder ({exc.strerror})") from None
    return path


def write_report(inputs: ReportInputs, out: str | os.PathLike[str], title: str = DEFAULT_TITLE) -> Path:
    """Write the report to ``out`` (atomically: a reader never sees half a file)."""
    path = Path(out)
    write_text_atomic(path, render_report(inputs, title))
    return path
